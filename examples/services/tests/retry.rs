//! `TransactionLayer::retry` over HTTP: concurrent SERIALIZABLE transfers between three
//! accounts, served on 127.0.0.1 by an axum app on SQLite, PostgreSQL and MariaDB. Without
//! retry, some requests are refused for a concurrent transaction, and answered `409`, never
//! `500`; with it, the layer runs them again until every one commits, and the total balance
//! is what it was.

// The todo service's error type: the library's answer for a database's error (`409`, and
// `web::Refused`, for a refusal).
#[path = "../../web.rs"]
#[allow(dead_code)]
mod web;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use sqlx::{Any, AnyPool};
use transactional::web::TransactionLayer;
use transactional::Isolation;
use transactional_service_examples::db::{self, sql};
use web::AppError;

const ACCOUNTS: i64 = 3;
const OPENING: i64 = 10_000;
const REQUESTS: i64 = 60;

/// Moves 7 from one account to the other, reading both balances first, so that concurrent
/// transfers on the same accounts conflict.
async fn transfer(Path((from, to)): Path<(i64, i64)>) -> Result<StatusCode, AppError> {
    let mut conn = transactional::connection::<Any>().await?;
    for id in [from, to] {
        let read = sql(&conn, "SELECT balance FROM accounts WHERE id = $1");
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(read))
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    }
    drop(conn);
    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut conn = transactional::connection::<Any>().await?;
    for (id, delta) in [(from, -7), (to, 7)] {
        let write = sql(
            &conn,
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
        );
        sqlx::query(sqlx::AssertSqlSafe(write))
            .bind(delta)
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(StatusCode::OK)
}

fn app() -> Router {
    let serializable = || TransactionLayer::new().isolation(Isolation::Serializable);
    Router::new()
        .nest(
            "/once",
            Router::new()
                .route("/transfer/{from}/{to}", post(transfer))
                .layer(serializable()),
        )
        .nest(
            "/retry",
            Router::new()
                .route("/transfer/{from}/{to}", post(transfer))
                .layer(serializable().retry(30)),
        )
}

/// Sends the transfers at once; returns how many requests got each status.
async fn transfers(
    client: &reqwest::Client,
    addr: SocketAddr,
    prefix: &str,
) -> std::collections::BTreeMap<u16, usize> {
    let requests = (0..REQUESTS).map(|n| {
        let (from, to) = (n % ACCOUNTS, (n + 1) % ACCOUNTS);
        let url = format!("http://{addr}/{prefix}/transfer/{from}/{to}");
        async move { client.post(url).send().await.unwrap().status().as_u16() }
    });
    let mut statuses = std::collections::BTreeMap::new();
    for status in futures_util::future::join_all(requests).await {
        *statuses.entry(status).or_default() += 1;
    }
    statuses
}

async fn total(pool: &AnyPool) -> i64 {
    let balances: Vec<i64> = sqlx::query_scalar("SELECT balance FROM accounts")
        .fetch_all(pool)
        .await
        .unwrap();
    balances.iter().sum()
}

async fn scenario(name: &str, url: &str) {
    let pool = db::connect(url, 8).await.unwrap();
    sqlx::raw_sql("DROP TABLE IF EXISTS accounts")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    for id in 0..ACCOUNTS {
        let insert = format!("INSERT INTO accounts (id, balance) VALUES ({id}, {OPENING})");
        sqlx::raw_sql(sqlx::AssertSqlSafe(insert))
            .execute(&pool)
            .await
            .unwrap();
    }
    transactional::register_default(pool.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app()).await });
    let client = reqwest::Client::new();

    let once = transfers(&client, addr, "once").await;
    eprintln!("{name}: without retry: {once:?}");
    assert!(
        once.get(&409).is_some_and(|&n| n > 0),
        "{name}: some refused without retry: {once:?}"
    );
    assert_eq!(
        once.get(&500),
        None,
        "{name}: a refusal is never a 500: {once:?}"
    );
    assert_eq!(total(&pool).await, ACCOUNTS * OPENING, "{name}");

    let retried = transfers(&client, addr, "retry").await;
    eprintln!("{name}: with retry: {retried:?}");
    assert_eq!(
        retried.get(&200),
        Some(&(REQUESTS as usize)),
        "{name}: all committed: {retried:?}"
    );
    assert_eq!(
        total(&pool).await,
        ACCOUNTS * OPENING,
        "{name}: the total is conserved"
    );

    server.abort();
    transactional::deregister("default");
    sqlx::raw_sql("DROP TABLE accounts")
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_runs_refused_requests_again_on_every_database() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("bank.db").display());
    scenario("sqlite", &sqlite).await;
    if !skipped("postgres") {
        let postgres = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        scenario("postgres", &postgres).await;
    }
    if !skipped("mysql") {
        let mysql = std::env::var("TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
        scenario("mysql", &mysql).await;
    }
}

/// `TRANSACTIONAL_TEST_SKIP=postgres,mysql` skips those servers, as in the library's tests.
fn skipped(database: &str) -> bool {
    std::env::var("TRANSACTIONAL_TEST_SKIP")
        .is_ok_and(|skip| skip.split(',').any(|s| s.trim() == database))
}
