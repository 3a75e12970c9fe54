//! Read replicas (docs/SEMANTICS.md, "Replicas") on real replication, each test on both:
//! - PostgreSQL streaming replication: the primary at `TEST_POSTGRES_URL`, its replica at
//!   `TEST_POSTGRES_REPLICA_URL` (default `postgres://postgres@127.0.0.1:5433/test`;
//!   `.ci/pg-replica` makes one by `pg_basebackup`);
//! - MariaDB GTID replication: the primary at `TEST_MARIADB_PRIMARY_URL` (default
//!   `mysql://root@127.0.0.1:3308/test`, its binary log on) and its replica at
//!   `TEST_MARIADB_REPLICA_URL` (default port 3307; `.ci/mariadb-replica` starts both).
//!
//! Which server ran a transaction: `pg_is_in_recovery()`, MariaDB's `@@read_only`. The tests
//! of one server take turns (some pause the replica's replay).

#[path = "../common/mod.rs"]
mod common;

mod cut;
mod tests;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::Pool;
use transactional::{ReplicaSettings, Transactional};

use crate::common::{My, Pg, TestDb};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A primary with a replica: where they are, and what differs between the servers.
pub trait Replicated: TestDb {
    /// `TRANSACTIONAL_TEST_SKIP` names that skip these tests.
    const SKIP: &'static [&'static str];
    /// How the replica is made, for the message when it is missing.
    const SCRIPT: &'static str;
    /// 1 on the replica, 0 on the primary.
    const ON_REPLICA: &'static str;
    /// How long the server's view of its sessions' transactions takes to be fresh: MariaDB
    /// refreshes `INNODB_TRX` only once it has not been read for 100 ms.
    const VIEW_REFRESH: Duration;
    /// Stops the replica applying what the primary sends.
    const PAUSE: &'static str;
    /// Lets it apply again.
    const RESUME: &'static str;
    fn primary_url() -> String;
    fn replica_url() -> String;
    /// One test's tests take turns on this server.
    fn turn() -> &'static tokio::sync::Mutex<()>;
    /// `url` with its sessions named `app` where the server can (to count them).
    fn named(url: &str, app: &str) -> String;
    /// Sessions on the replica (named `app` where the server can) inside a transaction.
    fn in_transaction_sql(app: &str) -> String;
    /// `transactional::register_with_replicas` (whose bounds a generic `D::DB` cannot show).
    fn register(
        name: &str,
        primary: Pool<Self::DB>,
        replica: Pool<Self::DB>,
        settings: ReplicaSettings,
    );
}

macro_rules! register_impl {
    () => {
        fn register(
            name: &str,
            primary: Pool<Self::DB>,
            replica: Pool<Self::DB>,
            settings: ReplicaSettings,
        ) {
            transactional::register_with_replicas(name, primary, vec![replica], settings).unwrap();
        }
    };
}

static PG_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static MARIADB_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Replicated for Pg {
    register_impl!();
    const SKIP: &'static [&'static str] = &["postgres", "replica"];
    const SCRIPT: &'static str = ".ci/pg-replica";
    const ON_REPLICA: &'static str = "SELECT pg_is_in_recovery()::int::int8";
    const VIEW_REFRESH: Duration = Duration::ZERO;
    const PAUSE: &'static str = "SELECT pg_wal_replay_pause()";
    const RESUME: &'static str = "SELECT pg_wal_replay_resume()";

    fn primary_url() -> String {
        url(
            "TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        )
    }

    fn replica_url() -> String {
        url(
            "TEST_POSTGRES_REPLICA_URL",
            "postgres://postgres@127.0.0.1:5433/test",
        )
    }

    fn turn() -> &'static tokio::sync::Mutex<()> {
        &PG_TURN
    }

    fn named(url: &str, app: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={app}")
    }

    fn in_transaction_sql(app: &str) -> String {
        format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{app}' \
             AND state LIKE 'idle in transaction%'"
        )
    }
}

impl Replicated for My {
    register_impl!();
    const SKIP: &'static [&'static str] = &["mysql", "replica"];
    const SCRIPT: &'static str = ".ci/mariadb-replica";
    const ON_REPLICA: &'static str = "SELECT CAST(@@read_only AS SIGNED)";
    const VIEW_REFRESH: Duration = Duration::from_millis(150);
    const PAUSE: &'static str = "STOP SLAVE SQL_THREAD";
    const RESUME: &'static str = "START SLAVE SQL_THREAD";

    fn primary_url() -> String {
        url(
            "TEST_MARIADB_PRIMARY_URL",
            "mysql://root@127.0.0.1:3308/test",
        )
    }

    fn replica_url() -> String {
        url(
            "TEST_MARIADB_REPLICA_URL",
            "mysql://root@127.0.0.1:3307/test",
        )
    }

    fn turn() -> &'static tokio::sync::Mutex<()> {
        &MARIADB_TURN
    }

    fn named(url: &str, _: &str) -> String {
        url.to_owned()
    }

    /// No session names: every client session but this one (the replica serves only these
    /// tests, one at a time), the replication threads left out.
    fn in_transaction_sql(_: &str) -> String {
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX t \
         JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
         WHERE p.USER <> 'system user' AND p.ID <> CONNECTION_ID()"
            .to_owned()
    }
}

/// Whether `TRANSACTIONAL_TEST_SKIP` skips the tests on `D` (a local machine without the
/// replica; CI never sets it).
fn skipped<D: Replicated>(test: &str) -> bool {
    let skipped = std::env::var("TRANSACTIONAL_TEST_SKIP")
        .is_ok_and(|v| v.split(',').any(|s| D::SKIP.contains(&s.trim())));
    if skipped {
        eprintln!("skipping {test} on {}: TRANSACTIONAL_TEST_SKIP", D::NAME);
    }
    skipped
}

/// Runs one statement on a connection of `pool`.
pub async fn exec<D: TestDb>(pool: &Pool<D::DB>, sql: impl Into<String>) {
    let mut conn = pool.acquire().await.expect("a connection");
    D::exec(&mut conn, sql.into()).await.expect("the statement");
}

/// One integer from `pool`.
pub async fn scalar<D: TestDb>(pool: &Pool<D::DB>, sql: impl Into<String>) -> i64 {
    let mut conn = pool.acquire().await.expect("a connection");
    D::scalar(&mut conn, sql.into()).await.expect("the query")
}

/// A data source of its own over the primary and `replica`, and a table of its own.
pub struct World<D: Replicated> {
    pub name: &'static str,
    pub table: String,
    pub primary: Pool<D::DB>,
    pub replica: Pool<D::DB>,
}

impl<D: Replicated> World<D> {
    /// `replica_url` instead of the replica's own (a proxy in front of it, named sessions).
    pub async fn new(test: &str, replica_url: Option<String>) -> Option<World<D>> {
        if skipped::<D>(test) {
            return None;
        }
        let replica_url = replica_url.unwrap_or_else(D::replica_url);
        let primary = sqlx::pool::PoolOptions::<D::DB>::new()
            .connect(&D::primary_url())
            .await
            .unwrap_or_else(|e| panic!("no primary at {}: {e}; `{}`", D::primary_url(), D::SCRIPT));
        let replica = sqlx::pool::PoolOptions::<D::DB>::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(1))
            .connect(&replica_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no replica at {replica_url}: {e}; `{}` makes one",
                    D::SCRIPT
                )
            });
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let table = format!("replica_{test}_{}_{n}", std::process::id());
        exec::<D>(
            &primary,
            format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY)"),
        )
        .await;
        let name: &'static str = Box::leak(table.clone().into_boxed_str());
        World::<D>::register(name, &primary, &replica, None);
        Some(World {
            name,
            table,
            primary,
            replica,
        })
    }

    /// Registers another data source `name` over the same servers.
    pub fn register(
        name: &str,
        primary: &Pool<D::DB>,
        replica: &Pool<D::DB>,
        max_lag: Option<Duration>,
    ) {
        let mut settings = ReplicaSettings::new().check_every(Duration::from_millis(20));
        if max_lag.is_some() {
            settings = settings.max_lag(max_lag);
        }
        D::register(name, primary.clone(), replica.clone(), settings);
    }

    pub fn scope(&self, read_only: bool) -> Transactional {
        Transactional::new()
            .data_source(self.name)
            .read_only(read_only)
    }

    /// Inserts `id` on data source `name`, in its current transaction.
    pub async fn insert_on(&self, name: &str, id: i64) -> Result<(), transactional::Error> {
        let mut conn = transactional::data_source(name)
            .connection::<D::DB>()
            .await?;
        D::exec(
            &mut conn,
            format!("INSERT INTO {} VALUES ({id})", self.table),
        )
        .await?;
        Ok(())
    }

    pub async fn insert(&self, id: i64) -> Result<(), transactional::Error> {
        self.insert_on(self.name, id).await
    }

    /// Whether the current transaction on data source `name` runs on the replica, and the
    /// rows it sees.
    pub async fn look_on(&self, name: &str) -> Result<(bool, i64), transactional::Error> {
        let mut conn = transactional::data_source(name)
            .connection::<D::DB>()
            .await?;
        let on_replica = D::scalar(&mut conn, D::ON_REPLICA.to_owned()).await?;
        let rows = D::scalar(&mut conn, format!("SELECT COUNT(*) FROM {}", self.table)).await?;
        Ok((on_replica == 1, rows))
    }

    pub async fn look(&self) -> Result<(bool, i64), transactional::Error> {
        self.look_on(self.name).await
    }

    /// A read-only transaction's look.
    pub async fn read(&self) -> (bool, i64) {
        self.scope(true).run(self.look()).await.unwrap()
    }

    /// Commits `id`.
    pub async fn write(&self, id: i64) {
        self.scope(false).run(self.insert(id)).await.unwrap();
    }

    /// Reads until one runs on the replica (within 10 s); every read sees `rows`.
    pub async fn read_on_replica(&self, rows: i64) {
        for _ in 0..500 {
            let (on_replica, seen) = self.read().await;
            assert_eq!(
                seen, rows,
                "never a stale read (on the replica: {on_replica})"
            );
            if on_replica {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no read-only transaction reached the replica within 10 s");
    }

    /// Runs `fut` with the replica's replay paused, and resumes replay whatever `fut` did
    /// (its panic is returned, for the caller to resume after its own clean-up).
    pub async fn paused_replay<T>(&self, fut: impl Future<Output = T>) -> std::thread::Result<T> {
        exec::<D>(&self.replica, D::PAUSE).await;
        let ran = AssertUnwindSafe(fut).catch_unwind().await;
        exec::<D>(&self.replica, D::RESUME).await;
        ran
    }
}

impl<D: Replicated> Drop for World<D> {
    fn drop(&mut self) {
        transactional::deregister(self.name);
        let (primary, table) = (self.primary.clone(), self.table.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(mut conn) = primary.acquire().await {
                    let _ = D::exec(&mut conn, format!("DROP TABLE IF EXISTS {table}")).await;
                }
            });
        }
    }
}

/// Each test, on PostgreSQL and on MariaDB.
macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let _turn = <crate::common::Pg as crate::Replicated>::turn().lock().await;
                    crate::tests::$test::<crate::common::Pg>().await;
                }
            )*
        }
        mod mariadb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let _turn = <crate::common::My as crate::Replicated>::turn().lock().await;
                    crate::tests::$test::<crate::common::My>().await;
                }
            )*
        }
    };
}

on_both!(
    routing,
    read_your_writes_with_replay_paused,
    read_after_a_position_from_another_instance,
    a_lagging_replica_is_skipped,
    dropped_at_every_poll,
    replica_down_reads_keep_succeeding,
);
