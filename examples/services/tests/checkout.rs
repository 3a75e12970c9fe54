//! `examples/checkout.rs`, run on SQLite, PostgreSQL and MariaDB: the tables it ends with say
//! that the first and third checkouts committed (the third without its loyalty points), the
//! declined one left nothing, and only committed orders were confirmed.

#[path = "../../checkout.rs"]
#[allow(dead_code)]
mod checkout;

/// The tables at the end, with `{alice}` and `{guest}` for the ids of their orders (the
/// declined order's id is not given out again by PostgreSQL and MySQL; SQLite reuses it).
const EXPECTED: &str = "\
products:
  gadget | 4999 | 3
  widget | 1250 | 8
orders:
  {alice} | alice | 7499
  {guest} | guest | 4999
order_lines:
  alice | gadget | 1 | 4999
  alice | widget | 2 | 1250
  guest | gadget | 1 | 4999
payments:
  alice | 4242-4242-4242-4242 | 7499
  guest | 5555-5555-5555-4444 | 4999
loyalty:
  alice | 74
  bob | 0
loyalty_events:
  alice | 74
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkout_example_on_every_database() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![(
        "sqlite",
        format!("sqlite://{}?mode=rwc", dir.path().join("shop.db").display()),
    )];
    if !skipped("postgres") {
        urls.push((
            "postgres",
            std::env::var("TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        ));
    }
    if !skipped("mysql") {
        urls.push((
            "mysql",
            std::env::var("TEST_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
        ));
    }
    // The example registers the default data source: one database after the other.
    for (name, url) in urls {
        checkout::CONFIRMED.lock().unwrap().clear();
        let tables = checkout::run(&url).await.unwrap();
        let confirmed = checkout::CONFIRMED.lock().unwrap().clone();
        assert_eq!(
            confirmed.len(),
            2,
            "{name}: only the committed orders are confirmed"
        );
        let expected = EXPECTED
            .replace("{alice}", &confirmed[0].to_string())
            .replace("{guest}", &confirmed[1].to_string());
        assert_eq!(tables, expected, "{name}");
    }
}

fn skipped(database: &str) -> bool {
    std::env::var("TRANSACTIONAL_TEST_SKIP")
        .is_ok_and(|skip| skip.split(',').any(|s| s.trim() == database))
}
