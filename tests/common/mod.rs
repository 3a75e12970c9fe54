//! Test harness: one suite, three real databases.
//!
//! Every test gets its own pool, registered as the data source `"default"` for its task only
//! (`transactional::with_data_source`), and its own table, so tests run in parallel safely.
//! Observations go through a separate observer connection, which sees only committed rows.
//!
//! Servers: `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//! `TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`). A server that cannot be reached
//! fails the test, unless `TRANSACTIONAL_TEST_SKIP` names it (`postgres`, `mysql`), for a local
//! machine without it. CI never sets it.
#![allow(dead_code)]
// The trait spells its futures out to require `Send`; the impls keep the same shape.
#![allow(clippy::manual_async_fn)]

pub mod hook_support;
pub mod underneath;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::{Database, Executor, Pool};

/// The error type of test service code.
#[derive(Debug)]
pub enum AppError {
    Tx(transactional::Error),
    Db(sqlx::Error),
    Boom(&'static str),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Tx(e) => write!(f, "transaction: {e}"),
            AppError::Db(e) => write!(f, "database: {e}"),
            AppError::Boom(what) => write!(f, "boom: {what}"),
        }
    }
}

/// The library and the database are reached through `source()`, as `retry` looks for them.
impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AppError::Tx(e) => Some(e),
            AppError::Db(e) => Some(e),
            AppError::Boom(_) => None,
        }
    }
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

impl AppError {
    pub fn is_boom(&self) -> bool {
        matches!(self, AppError::Boom(_))
    }
    pub fn is_unexpected_rollback(&self) -> bool {
        matches!(self, AppError::Tx(e) if e.is_unexpected_rollback())
    }
    pub fn is_timeout(&self) -> bool {
        matches!(self, AppError::Tx(e) if e.is_timeout())
    }
    pub fn tx(&self) -> &transactional::Error {
        match self {
            AppError::Tx(e) => e,
            other => panic!("expected a transactional error, got {other:?}"),
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;

mod databases;
#[allow(unused_imports)] // each test binary uses some of them
pub use databases::{Lite, My, Pg, TestDb};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's world: its pool (the `"default"` data source inside [`Env::run`]), its table,
/// and an observer connection that sees only what is committed.
pub struct Env<D: TestDb> {
    pub pool: Pool<D::DB>,
    pub observer: Pool<D::DB>,
    pub table: String,
    _dir: tempfile::TempDir,
}

fn skipped(db: &str) -> bool {
    std::env::var("TRANSACTIONAL_TEST_SKIP")
        .map(|v| v.split(',').any(|s| s.trim() == db))
        .unwrap_or(false)
}

impl<D: TestDb> Env<D>
where
    for<'c> &'c mut <D::DB as Database>::Connection: Executor<'c, Database = D::DB>,
{
    /// A pool of 5 connections. `None` when this database is skipped by `TRANSACTIONAL_TEST_SKIP`.
    pub async fn new(test: &str) -> Option<Self> {
        Self::with_pool(test, 5, Duration::from_secs(5)).await
    }

    /// A second world for a test whose first one exists (so its database is not skipped).
    pub async fn also(test: &str) -> Self {
        Self::new(test)
            .await
            .expect("the test's database is not skipped")
    }

    pub async fn with_pool(
        test: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Option<Self> {
        Self::with_session(test, max_connections, acquire_timeout, None).await
    }

    /// [`Env::with_pool`], with `setup` run on each of the pool's connections as it opens.
    pub async fn with_session(
        test: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        setup: Option<&'static str>,
    ) -> Option<Self> {
        if skipped(D::NAME) {
            eprintln!("skipping {test} on {}: TRANSACTIONAL_TEST_SKIP", D::NAME);
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let short: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(24)
            .collect();
        let table = format!("t_{short}_{}_{n}", std::process::id());
        let url = D::url(dir.path(), &table);
        let pool = PoolOptions::<D::DB>::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if let Some(setup) = setup {
                        D::exec(conn, setup.to_owned()).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await.unwrap_or_else(|e| {
            panic!(
                "{} is not reachable at {url}: {e}. Start it, or set TRANSACTIONAL_TEST_SKIP={} to skip it locally",
                D::NAME,
                D::NAME
            )
        });
        let observer = PoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("observer connection");
        let env = Env {
            pool,
            observer,
            table,
            _dir: dir,
        };
        env.observe(format!("DROP TABLE IF EXISTS {}", env.table))
            .await;
        env.observe(format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, note VARCHAR(100))",
            env.table
        ))
        .await;
        Some(env)
    }

    /// The URL of this test's database (for a second process to reach it).
    pub fn url(&self) -> String {
        D::url(self._dir.path(), &self.table)
    }

    /// Runs a statement on the observer connection (outside the library).
    pub async fn observe(&self, sql: String) {
        let mut conn = self.observer.acquire().await.expect("observer");
        D::exec(&mut conn, sql).await.expect("observer statement");
    }

    /// Runs `fut` with this test's pool as the `"default"` data source.
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        transactional::with_data_source("default", self.pool.clone(), fut)
            .await
            .expect("supported database")
    }

    /// Runs `fut` with this test's pool as the `"default"` data source, with `settings`.
    pub async fn run_with<F: Future>(
        &self,
        settings: transactional::DataSourceSettings,
        fut: F,
    ) -> F::Output {
        transactional::with_data_source_settings("default", self.pool.clone(), settings, fut)
            .await
            .expect("supported database")
    }

    /// The isolation level of the current transaction (see [`TestDb::transaction_isolation`]),
    /// once it reads `expected`, or whatever it reads after 3 s. (MySQL's `innodb_trx` is a
    /// cache refreshed only once it has not been read for 100 ms: it can miss the transaction
    /// or show the previous one until then.)
    pub async fn isolation(&self, expected: &str) -> AppResult<Option<String>> {
        let mut conn = transactional::connection::<D::DB>().await?;
        let mut last = None;
        for _ in 0..15 {
            match D::transaction_isolation(&mut conn).await {
                Ok(level) if level.as_deref().is_none_or(|l| l == expected) => return Ok(level),
                Ok(level) => last = level,
                Err(sqlx::Error::RowNotFound) => {}
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(last)
    }

    /// The committed ids, sorted, as a second connection sees them.
    pub async fn ids(&self) -> Vec<i64> {
        let mut conn = self.observer.acquire().await.expect("observer");
        D::column(
            &mut conn,
            format!("SELECT id FROM {} ORDER BY id", self.table),
        )
        .await
        .expect("ids")
    }

    /// Inserts `id` through the current connection (the "repository").
    pub async fn insert(&self, id: i64) -> AppResult<()> {
        let mut conn = transactional::connection::<D::DB>().await?;
        D::exec(
            &mut conn,
            format!("INSERT INTO {} (id) VALUES ({id})", self.table),
        )
        .await?;
        Ok(())
    }

    /// Inserts `id` with a note through the current connection.
    pub async fn insert_note(&self, id: i64, note: &str) -> AppResult<()> {
        let mut conn = transactional::connection::<D::DB>().await?;
        D::exec(
            &mut conn,
            format!(
                "INSERT INTO {} (id, note) VALUES ({id}, '{note}')",
                self.table
            ),
        )
        .await?;
        Ok(())
    }

    /// Counts the rows the current connection sees.
    pub async fn visible(&self) -> AppResult<i64> {
        let mut conn = transactional::connection::<D::DB>().await?;
        Ok(D::scalar(&mut conn, format!("SELECT COUNT(*) FROM {}", self.table)).await?)
    }

    /// The ids the current connection sees, sorted.
    pub async fn ids_visible(&self) -> AppResult<Vec<i64>> {
        let mut conn = transactional::connection::<D::DB>().await?;
        let sql = format!("SELECT id FROM {} ORDER BY id", self.table);
        Ok(D::column(&mut conn, sql).await?)
    }

    /// The session behind the current connection.
    pub async fn session(&self) -> AppResult<i64> {
        let mut conn = transactional::connection::<D::DB>().await?;
        Ok(D::session_id(&mut conn).await?)
    }

    /// A connection straight from the pool, bypassing the library.
    pub async fn raw(&self) -> sqlx::pool::PoolConnection<D::DB> {
        self.pool.acquire().await.expect("raw connection")
    }

    /// Runs a statement through the current connection, ignoring what it returns.
    pub async fn exec_current(&self, sql: String) -> AppResult<()> {
        let mut conn = transactional::connection::<D::DB>().await?;
        D::exec(&mut conn, sql).await?;
        Ok(())
    }

    /// The committed ids in `from..from + 100`, as a second connection sees them.
    pub async fn ids_from(&self, from: i64) -> Vec<i64> {
        let ids = self.ids().await;
        ids.into_iter()
            .filter(|id| (from..from + 100).contains(id))
            .collect()
    }

    /// Every connection of the pool is idle in it (none held, none being cleaned up).
    pub fn pool_is_idle(&self) -> bool {
        self.pool.num_idle() == self.pool.size() as usize
    }

    /// Waits (up to 5 s) for `check` to hold, for effects that happen in the background.
    pub async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        for _ in 0..100 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: did not happen within 5 s");
    }

    /// No connection of this test's pool sits inside a transaction: every connection that can
    /// be taken from the pool is asked (sqlx may briefly count a connection that a cancelled
    /// acquire was opening), and where the server can tell (PostgreSQL), no session of this
    /// test is idle in a transaction.
    pub async fn pool_is_clean(&self) -> bool {
        let mut conns = Vec::new();
        for _ in 0..self.pool.size().max(1) {
            match tokio::time::timeout(Duration::from_millis(300), self.pool.acquire()).await {
                Ok(Ok(c)) => conns.push(c),
                _ => break,
            }
        }
        if conns.is_empty() {
            return false;
        }
        for conn in conns.iter_mut() {
            if D::in_transaction(conn).await.unwrap_or(true) {
                return false;
            }
        }
        drop(conns);
        let mut observer = self.observer.acquire().await.expect("observer");
        D::leaked_transactions(&mut observer, &self.table)
            .await
            .is_none_or(|n| n == 0)
    }
}

impl<D: TestDb> Drop for Env<D> {
    fn drop(&mut self) {
        let observer = self.observer.clone();
        // `_lk`: the lock table of `underneath::ended_by_the_database`.
        let tables = [self.table.clone(), format!("{}_lk", self.table)];
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(mut conn) = observer.acquire().await {
                    for table in tables {
                        let _ = D::exec(&mut conn, format!("DROP TABLE IF EXISTS {table}")).await;
                    }
                }
            });
        }
    }
}

/// The server's address in `url`, and `url` pointing at `127.0.0.1:{port}` instead, without
/// TLS (the proxy passes bytes through, but a restart test needs no TLS).
pub fn through_proxy(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host) = authority.rsplit_once('@').unwrap_or(("", authority));
    let default_port = if scheme.starts_with("postgres") {
        5432
    } else {
        3306
    };
    let upstream = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    let user = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    let tls = if scheme.starts_with("postgres") {
        "sslmode=disable"
    } else {
        "ssl-mode=disabled"
    };
    let sep = if path.contains('?') { '&' } else { '?' };
    (
        upstream,
        format!("{scheme}://{user}127.0.0.1:{{port}}/{path}{sep}{tls}"),
    )
}

/// Polls `fut` at most `polls` times (each poll after it woke up, so that its I/O progresses
/// in between), then drops it; `None` when it was dropped before it completed.
pub async fn poll_at_most<F: Future>(fut: F, polls: usize) -> Option<F::Output> {
    let mut fut = Box::pin(fut);
    let mut polled = 0;
    std::future::poll_fn(|cx| {
        polled += 1;
        match fut.as_mut().poll(cx) {
            std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
            std::task::Poll::Pending if polled >= polls => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}

/// What hooks did, in order.
#[derive(Clone, Default)]
pub struct Log(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, event: impl Into<String>) {
        self.0.lock().unwrap().push(event.into());
    }

    pub fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The events of `tag`'s hooks.
    pub fn of(&self, tag: &str) -> Vec<String> {
        let prefix = format!("{tag} ");
        self.events()
            .into_iter()
            .filter_map(|e| e.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// Registers after-commit, after-rollback and after-completion hooks on the current data
    /// source that record `tag`, the rollback cause and the outcome.
    pub async fn record(&self, tag: &str) {
        let (l, t) = (self.clone(), tag.to_owned());
        transactional::after_commit(move || async move { l.push(format!("{t} after_commit")) })
            .await;
        let (l, t) = (self.clone(), tag.to_owned());
        transactional::after_rollback(move |cause| async move {
            l.push(format!("{t} after_rollback {cause:?}"))
        })
        .await;
        let (l, t) = (self.clone(), tag.to_owned());
        transactional::after_completion(move |outcome| async move {
            l.push(format!("{t} after_completion {outcome:?}"))
        })
        .await;
    }
}

/// A scope with propagation `p`, as tests spell it: `scope(RequiresNew).run(...)`.
pub fn scope(p: transactional::Propagation) -> transactional::Transactional {
    transactional::Transactional::new().propagation(p)
}

/// Declares a test written once for every database, and runs it on PostgreSQL, MariaDB/MySQL
/// and SQLite, each with its own pool registered as `"default"` and its own table:
///
/// ```ignore
/// conformance! {
///     /// What the test shows.
///     async fn name(env: Env<D>) { /* body, generic over `D: TestDb` */ }
/// }
/// conformance! {
///     async fn small_pool(env: Env<D>, pool(1, Duration::from_millis(500))) { /* … */ }
/// }
/// ```
#[macro_export]
macro_rules! conformance {
    ($(#[$meta:meta])* async fn $name:ident($env:ident: Env<D> $(, pool($max:expr, $wait:expr))?) $body:block) => {
        $(#[$meta])*
        async fn $name<D: $crate::common::TestDb>()
        where
            for<'c> &'c mut <D::DB as sqlx::Database>::Connection:
                sqlx::Executor<'c, Database = D::DB>,
        {
            let Some($env) = $crate::conformance!(@env D, $name $(, $max, $wait)?) else {
                return;
            };
            $body
        }

        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name::<$crate::common::Pg>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$name::<$crate::common::My>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name::<$crate::common::Lite>().await
            }
        }
    };
    (@env $d:ident, $name:ident) => {
        $crate::common::Env::<$d>::new(stringify!($name)).await
    };
    (@env $d:ident, $name:ident, $max:expr, $wait:expr) => {
        $crate::common::Env::<$d>::with_pool(stringify!($name), $max, $wait).await
    };
}
