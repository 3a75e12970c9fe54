//! sqlx's `Any` driver (the `any` feature): a pool whose database is chosen by its URL at run
//! time works as the typed pools do, on all three databases: commit, rollback, savepoints,
//! a second transaction, the commit check of PostgreSQL and a deadline that cancels the
//! running statement on the server.

mod common;

use std::time::{Duration, Instant};

use common::{AppError, AppResult, Env, Lite, My, Pg, TestDb};
use sqlx::{AnyPool, Executor};
use transactional::{Propagation, Transactional};

/// An `Any` pool on the same database as `env`, run as the `"default"` data source.
async fn any_pool<D: TestDb>(env: &Env<D>, dir: &std::path::Path) -> AnyPool
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    sqlx::any::install_default_drivers();
    let url = match D::NAME {
        // The test's own SQLite file is in its `Env`'s directory: share it through a URL.
        "sqlite" => format!("sqlite://{}?mode=rwc", dir.join("any.db").display()),
        _ => D::url(dir, "any_driver"),
    };
    let pool = sqlx::pool::PoolOptions::<sqlx::Any>::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    pool.execute(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {}",
        env.table
    )))
    .await
    .unwrap();
    pool.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {} (id BIGINT PRIMARY KEY)",
        env.table
    )))
    .await
    .unwrap();
    pool
}

async fn insert(table: &str, id: i64) -> AppResult<()> {
    let mut conn = transactional::connection::<sqlx::Any>().await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id) VALUES ({id})"
    )))
    .await?;
    Ok(())
}

async fn ids(pool: &AnyPool, table: &str) -> Vec<i64> {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM {table} ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn scenario<D: TestDb>()
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let Some(env) = Env::<D>::new("any_driver").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool = any_pool(&env, dir.path()).await;
    let table = env.table.as_str();
    macro_rules! run {
        ($fut:expr $(,)?) => {
            transactional::with_data_source::<sqlx::Any, _>("default", pool.clone(), $fut)
        };
    }

    // Commit, with a NESTED scope rolled back inside and a REQUIRES_NEW one committed.
    let r: AppResult<()> = run!(Transactional::new().run(async {
        // REQUIRES_NEW first: SQLite has one writer at a time.
        Transactional::new()
            .propagation(Propagation::RequiresNew)
            .run(insert(table, 1))
            .await?;
        insert(table, 2).await?;
        let nested: AppResult<()> = Transactional::new()
            .propagation(Propagation::Nested)
            .run(async {
                insert(table, 3).await?;
                Err(AppError::Boom("undo the savepoint"))
            })
            .await;
        assert!(nested.unwrap_err().is_boom());
        assert_eq!(
            transactional::pool_status("default").unwrap().database,
            match D::NAME {
                "postgres" => "PostgreSQL",
                "mysql" => "MySQL",
                _ => "SQLite",
            }
        );
        Ok(())
    }))
    .await
    .unwrap();
    r.unwrap();
    assert_eq!(ids(&pool, table).await, [1, 2]);

    // An error rolls back.
    let r: AppResult<()> = run!(Transactional::new().run(async {
        insert(table, 4).await?;
        Err(AppError::Boom("roll back"))
    }))
    .await
    .unwrap();
    assert!(r.unwrap_err().is_boom());
    assert_eq!(ids(&pool, table).await, [1, 2]);

    if D::NAME == "postgres" {
        // A swallowed failure aborts the transaction: reported, not taken for a commit.
        let r: AppResult<()> = run!(Transactional::new().run(async {
            insert(table, 5).await?;
            let _ = insert(table, 5).await;
            Ok(())
        }))
        .await
        .unwrap();
        assert!(
            matches!(r, Err(AppError::Tx(transactional::Error::Aborted { .. }))),
            "{r:?}"
        );
    }
    if D::NAME != "sqlite" {
        // A deadline cancels the statement on the server (its session id is read through
        // `Any` too).
        let started = Instant::now();
        let r: AppResult<()> = run!(Transactional::new()
            .timeout(Duration::from_millis(200))
            .run(async {
                insert(table, 6).await?;
                let mut conn = transactional::connection::<sqlx::Any>().await?;
                conn.execute(sqlx::AssertSqlSafe(D::slow_statement(10)))
                    .await?;
                Ok(())
            }),)
        .await
        .unwrap();
        assert!(r.unwrap_err().is_timeout());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(ids(&pool, table).await, [1, 2]);
    let status = run!(async { transactional::pool_status("default").unwrap() })
        .await
        .unwrap();
    assert_eq!((status.transactions, status.waiting), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_pool_on_postgres() {
    scenario::<Pg>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_pool_on_mysql() {
    scenario::<My>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_pool_on_sqlite() {
    scenario::<Lite>().await;
}
