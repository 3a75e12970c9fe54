//! A template to copy into your own `tests/`: one service, tested three ways.
//!
//! 1. A unit test with transactions mocked out (no database at all).
//! 2. A unit test over the recording mock: which transactions the call began and how they ended.
//! 3. An integration test on a real database, inside a transaction that is always rolled back.

use transactional::testing::{self, MockDataSource};
use transactional::{transactional, Dialect};

#[derive(Debug)]
#[allow(dead_code)] // the payloads show in test failures through Debug
enum AppError {
    Tx(transactional::Error),
    Db(sqlx::Error),
    PaymentDeclined,
}

impl From<transactional::Error> for AppError {
    fn from(e: transactional::Error) -> Self {
        AppError::Tx(e)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Db(e)
    }
}

// ---- the code under test (in your crate, this lives in src/) -------------------------------

/// A payment gateway, so that tests can make it fail.
trait Payments {
    fn charge(&self, cents: i64) -> bool;
}

async fn save_order(cents: i64) -> Result<i64, AppError> {
    let mut conn = transactional::connection::<sqlx::Sqlite>().await?;
    let id = sqlx::query_scalar("INSERT INTO orders (cents) VALUES (?) RETURNING id")
        .bind(cents)
        .fetch_one(&mut *conn)
        .await?;
    Ok(id)
}

#[transactional(isolation = "SERIALIZABLE")]
async fn place_order(payments: &impl Payments, cents: i64, save: bool) -> Result<i64, AppError> {
    let id = if save { save_order(cents).await? } else { 0 };
    if !payments.charge(cents) {
        return Err(AppError::PaymentDeclined);
    }
    transactional::after_commit(move || async move { println!("order {id} confirmed") }).await;
    Ok(id)
}

struct Accepts;
impl Payments for Accepts {
    fn charge(&self, _: i64) -> bool {
        true
    }
}

struct Declines;
impl Payments for Declines {
    fn charge(&self, _: i64) -> bool {
        false
    }
}

// ---- 1. mocked out: no database, no pool --------------------------------------------------

#[tokio::test]
async fn declined_payment_is_reported() {
    let result = testing::mocked(place_order(&Declines, 500, false)).await;
    assert!(matches!(result, Err(AppError::PaymentDeclined)));
}

// ---- 2. recording mock: what the runtime would send -----------------------------------------

#[tokio::test]
async fn declined_payment_rolls_back_a_serializable_transaction() {
    let mock = MockDataSource::new(Dialect::Sqlite);
    let result = mock
        .run("default", place_order(&Declines, 500, false))
        .await;
    assert!(matches!(result, Err(AppError::PaymentDeclined)));
    assert_eq!(mock.connections(), 1);
    assert_eq!(mock.statements_on(1), ["BEGIN DEFERRED", "ROLLBACK"]);
}

// ---- 3. a real database, rolled back after the test -----------------------------------------

async fn database() -> sqlx::SqlitePool {
    // Each test gets its own database and registers it for its own task only, so tests can run
    // in parallel. With one shared database at start-up, use `transactional::register_default`.
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, cents INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

#[tokio::test]
async fn an_accepted_order_is_saved() {
    let pool = database().await;
    transactional::with_data_source("default", pool.clone(), async {
        let (saved, hooks) = testing::capture_after_commit(testing::rollback_after(async {
            let id = place_order(&Accepts, 500, true).await.unwrap();
            let mut conn = transactional::connection::<sqlx::Sqlite>().await.unwrap();
            let cents: i64 = sqlx::query_scalar("SELECT cents FROM orders WHERE id = ?")
                .bind(id)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            cents
        }))
        .await;
        assert_eq!(saved.unwrap(), 500, "seen inside the test's transaction");
        assert_eq!(hooks.len(), 1, "one confirmation would be sent on commit");
    })
    .await
    .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "rolled back after the test");
}
