//! The driver seam: what the runtime needs of a database connection, implemented by sqlx's
//! `PoolConnection<DB>` and by the recording mock.
//!
//! The runtime never sees anything but [`Conn`]: a connection that is closed when dropped,
//! unless the runtime marked it clean (autocommit, nothing pending). So a connection whose
//! cleanup could not finish is never returned to its pool inside a transaction.
//!
//! Everything is generic over sqlx's `Database`, except two extras reached by downcasting to
//! the concrete driver, when this crate's feature for it is on: reading the server session id
//! (to cancel a statement at a deadline), and SQLite's in-process interrupt.

use std::any::Any;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Database, Executor};

use crate::status::Counted;

/// A connection the runtime can run a transaction on.
pub(crate) trait TxConnection: Send + 'static {
    /// Runs `sql`: one or more statements, over the text protocol.
    fn run<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Runs `sql` and returns the first column of its last row as an integer; `None` where
    /// this build cannot read rows of this database.
    fn query_int<'a>(
        &'a mut self,
        sql: &'a str,
    ) -> Option<BoxFuture<'a, Result<Option<i64>, sqlx::Error>>>;

    /// Whether [`TxConnection::query_int`] can read rows here.
    fn reads_ints(&self) -> bool;

    /// Where the database runs in process (SQLite): makes `watch` see the commits and rollbacks
    /// of this connection, and `interrupt` stop the statement running on it when it is set
    /// (SQLite's progress handler). Says which of the two it could do: neither where
    /// statements are cancelled from another connection and the server is asked instead.
    fn arm(
        &mut self,
        watch: Option<Arc<Watch>>,
        interrupt: Option<Arc<AtomicBool>>,
    ) -> BoxFuture<'_, Result<Armed, sqlx::Error>>;

    /// Undoes the interrupt of [`TxConnection::arm`].
    fn disarm_interrupt(&mut self) -> BoxFuture<'_, Result<(), sqlx::Error>>;

    /// Waits until an interrupted statement has ended.
    fn settle_interrupt(&mut self) -> BoxFuture<'_, Result<(), sqlx::Error>>;

    /// For handing the typed sqlx connection to user code.
    fn as_any(&self) -> &dyn Any;

    /// For handing the typed sqlx connection to user code.
    fn as_any_mut(&mut self) -> &mut dyn Any;

    /// Never reuse this connection: close it instead of returning it to its pool (the server
    /// rolls back whatever it had open).
    fn close(self: Box<Self>);
}

impl<DB> TxConnection for PoolConnection<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    fn run<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        // The text protocol: session statements such as MySQL's `SET TRANSACTION` have no
        // effect as prepared statements, several statements ride in one round trip, and
        // savepoint names would only churn the statement cache.
        Box::pin(async move {
            let conn: &mut DB::Connection = self;
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(conn)
                .await
                .map(drop)
        })
    }

    fn query_int<'a>(
        &'a mut self,
        sql: &'a str,
    ) -> Option<BoxFuture<'a, Result<Option<i64>, sqlx::Error>>> {
        concrete::query_int(self, sql)
    }

    fn reads_ints(&self) -> bool {
        concrete::reads_ints(self)
    }

    fn arm(
        &mut self,
        watch: Option<Arc<Watch>>,
        interrupt: Option<Arc<AtomicBool>>,
    ) -> BoxFuture<'_, Result<Armed, sqlx::Error>> {
        concrete::arm(self, watch, interrupt)
    }

    fn disarm_interrupt(&mut self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        concrete::disarm_interrupt(self)
    }

    fn settle_interrupt(&mut self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        concrete::settle_interrupt(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn close(mut self: Box<Self>) {
        if tokio::runtime::Handle::try_current().is_ok() {
            // sqlx closes it gracefully in a task and frees its place in the pool.
            self.close_on_drop();
            drop(self);
        } else {
            // No runtime to close it on: dropping the raw connection closes the socket.
            drop(self.detach());
        }
    }
}

/// What needs the concrete driver type.
mod concrete {
    use super::*;

    type Int<'a> = Option<BoxFuture<'a, Result<Option<i64>, sqlx::Error>>>;

    /// Runs `sql` on a connection of a concrete database and decodes an integer.
    #[allow(unused_macros)] // used for the databases whose features are on
    macro_rules! query_int_on {
        ($conn:expr, $sql:expr, $db:ty) => {
            if $conn.is::<PoolConnection<$db>>() {
                let conn = $conn
                    .downcast_mut::<PoolConnection<$db>>()
                    .expect("checked just above");
                return Some(Box::pin(async move {
                    let conn: &mut <$db as Database>::Connection = conn;
                    let rows = sqlx::raw_sql(AssertSqlSafe($sql)).fetch_all(conn).await?;
                    rows.last()
                        .map(|row| sqlx::Row::try_get::<Option<i64>, _>(row, 0))
                        .transpose()
                        .map(Option::flatten)
                }));
            }
        };
    }

    #[allow(unused_variables)]
    pub(super) fn query_int<'a>(conn: &'a mut dyn Any, sql: &'a str) -> Int<'a> {
        #[cfg(feature = "postgres")]
        query_int_on!(conn, sql, sqlx::Postgres);
        #[cfg(feature = "mysql")]
        query_int_on!(conn, sql, sqlx::MySql);
        #[cfg(feature = "sqlite")]
        query_int_on!(conn, sql, sqlx::Sqlite);
        #[cfg(feature = "any")]
        query_int_on!(conn, sql, sqlx::Any);
        None
    }

    #[allow(unused_variables)]
    pub(super) fn reads_ints(conn: &dyn Any) -> bool {
        #[cfg(feature = "postgres")]
        if conn.is::<PoolConnection<sqlx::Postgres>>() {
            return true;
        }
        #[cfg(feature = "mysql")]
        if conn.is::<PoolConnection<sqlx::MySql>>() {
            return true;
        }
        #[cfg(feature = "sqlite")]
        if conn.is::<PoolConnection<sqlx::Sqlite>>() {
            return true;
        }
        #[cfg(feature = "any")]
        if conn.is::<PoolConnection<sqlx::Any>>() {
            return true;
        }
        false
    }

    #[cfg(feature = "sqlite")]
    fn sqlite(conn: &mut dyn Any) -> Option<&mut sqlx::SqliteConnection> {
        conn.downcast_mut::<PoolConnection<sqlx::Sqlite>>()
            .map(|conn| &mut **conn)
    }

    /// SQLite has no statement that cancels another connection's statement; a progress
    /// handler checked every few hundred VM instructions stops it instead. (A wait for another
    /// writer's lock is not interrupted: `busy_timeout` bounds it.) Its commit and rollback
    /// hooks tell the watch what the transaction goes through; they stay on the connection,
    /// harmless once the watch is over, until the next transaction's replace them.
    #[allow(unused_variables)]
    pub(super) fn arm(
        conn: &mut dyn Any,
        watch: Option<Arc<Watch>>,
        interrupt: Option<Arc<AtomicBool>>,
    ) -> BoxFuture<'_, Result<Armed, sqlx::Error>> {
        #[cfg(feature = "sqlite")]
        if let Some(conn) = sqlite(conn) {
            return Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                let armed = Armed {
                    watching: watch.is_some(),
                    interrupting: interrupt.is_some(),
                };
                if let Some(watch) = watch {
                    let on_rollback = watch.clone();
                    handle.set_commit_hook(move || watch.allows_commit());
                    handle.set_rollback_hook(move || on_rollback.saw_rollback());
                }
                if let Some(interrupt) = interrupt {
                    handle.set_progress_handler(256, move || {
                        !interrupt.load(std::sync::atomic::Ordering::Acquire)
                    });
                }
                Ok(armed)
            });
        }
        Box::pin(async { Ok(Armed::default()) })
    }

    #[allow(unused_variables)]
    pub(super) fn disarm_interrupt(conn: &mut dyn Any) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        #[cfg(feature = "sqlite")]
        if let Some(conn) = sqlite(conn) {
            return Box::pin(async move {
                conn.lock_handle().await?.remove_progress_handler();
                Ok(())
            });
        }
        Box::pin(async { Ok(()) })
    }

    /// The connection's worker runs one command at a time: its lock is had once the
    /// interrupted statement has ended.
    #[allow(unused_variables)]
    pub(super) fn settle_interrupt(conn: &mut dyn Any) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        #[cfg(feature = "sqlite")]
        if let Some(conn) = sqlite(conn) {
            return Box::pin(async move { conn.lock_handle().await.map(drop) });
        }
        Box::pin(async { Ok(()) })
    }
}

/// What [`TxConnection::arm`] could do on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Armed {
    /// Its commits and rollbacks are watched.
    pub(crate) watching: bool,
    /// A statement running on it can be interrupted in process.
    pub(crate) interrupting: bool,
}

/// What the database does to a transaction by itself, seen where it runs in process (SQLite's
/// commit and rollback hooks): a rollback nobody asked for (an `INSERT OR ROLLBACK`, an
/// interrupted write, a full disk), and any commit the runtime did not send, which it refuses
/// while the transaction is open (SQLite then rolls back instead). So once SQLite rolled the
/// transaction back underneath its scope, a later write fails rather than commit on its own.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) struct Watch {
    phase: WatchPhase,
    rolled_back: AtomicBool,
}

/// Where a watched transaction is, as the hooks read it (a typed atomic).
#[derive(Debug, Default)]
struct WatchPhase(std::sync::atomic::AtomicU8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
enum Phase {
    /// The runtime's transaction is open: nothing else may commit, a rollback is the
    /// database's own.
    Open = 0,
    /// The runtime sends COMMIT or ROLLBACK.
    Ending = 1,
    /// The transaction is over; the connection serves others (the hooks stay until replaced).
    Over = 2,
}

impl WatchPhase {
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    fn get(&self) -> Phase {
        match self.0.load(std::sync::atomic::Ordering::Acquire) {
            0 => Phase::Open,
            1 => Phase::Ending,
            _ => Phase::Over,
        }
    }

    fn set(&self, phase: Phase) {
        self.0
            .store(phase as u8, std::sync::atomic::Ordering::Release);
    }
}

#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
impl Watch {
    /// The commit hook: only the runtime's own COMMIT may commit while the transaction is
    /// open; refusing any other turns it into a rollback.
    fn allows_commit(&self) -> bool {
        match self.phase.get() {
            Phase::Open => {
                self.rolled_back
                    .store(true, std::sync::atomic::Ordering::Release);
                false
            }
            Phase::Ending | Phase::Over => true,
        }
    }

    /// The rollback hook: one the runtime did not send is the database's own.
    fn saw_rollback(&self) {
        if self.phase.get() == Phase::Open {
            self.rolled_back
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// The database rolled the transaction back by itself (or refused a commit it was not
    /// asked for, which rolled it back).
    pub(crate) fn rolled_back(&self) -> bool {
        self.rolled_back.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The runtime is about to send COMMIT or ROLLBACK.
    pub(crate) fn ending(&self) {
        self.phase.set(Phase::Ending);
    }

    /// The transaction is over.
    pub(crate) fn over(&self) {
        self.phase.set(Phase::Over);
    }
}

/// A connection held by the runtime. Dropped while not [clean](Conn::set_clean), it is closed
/// rather than returned to its pool.
pub(crate) struct Conn {
    inner: Option<Box<dyn TxConnection>>,
    clean: bool,
    /// Counts it as a transaction's while it lives (see `status`).
    counted: Option<Counted>,
    /// Watches its transaction (SQLite): over once the connection leaves the transaction, so
    /// that its hooks let others commit again.
    watch: Option<Arc<Watch>>,
}

impl Conn {
    /// A connection just taken from its pool: clean.
    pub(crate) fn new(inner: Box<dyn TxConnection>) -> Conn {
        Conn {
            inner: Some(inner),
            clean: true,
            counted: None,
            watch: None,
        }
    }

    /// Its commits and rollbacks are watched by `watch` until it is dropped.
    pub(crate) fn watched_by(&mut self, watch: Arc<Watch>) {
        self.watch = Some(watch);
    }

    /// About to send COMMIT or ROLLBACK: its watch lets them through.
    pub(crate) fn ending(&self) {
        if let Some(watch) = &self.watch {
            watch.ending();
        }
    }

    /// Counts it as held by a transaction until it is dropped.
    pub(crate) fn count_as(&mut self, counted: Counted) {
        self.counted = Some(counted);
    }

    /// Whether dropping it returns it to the pool (`true`) or closes it.
    pub(crate) fn set_clean(&mut self, clean: bool) {
        self.clean = clean;
    }

    /// Runs SQL; if this is dropped while it runs, the connection is closed.
    pub(crate) async fn run(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        let was_clean = std::mem::replace(&mut self.clean, false);
        let result = self.get_mut().run(sql).await;
        self.clean = was_clean;
        result
    }

    /// Runs a control statement that is harmless to send twice (ROLLBACK, ROLLBACK TO,
    /// RELEASE, SAVEPOINT), once more if it fails with a database error: a statement cut off
    /// earlier (a dropped query, a cancelled one) leaves its error to the next command, which
    /// then fails before it is even sent. Its own failure repeats.
    pub(crate) async fn run_control(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self.run(sql).await {
            Err(sqlx::Error::Database(_)) => self.run(sql).await,
            done => done,
        }
    }

    /// [`Conn::query_int`] for a control statement that is harmless to send twice: see
    /// [`Conn::run_control`].
    pub(crate) async fn query_int_control(
        &mut self,
        sql: &str,
    ) -> Result<Option<i64>, sqlx::Error> {
        match self.query_int(sql).await {
            Err(sqlx::Error::Database(_)) => self.query_int(sql).await,
            done => done,
        }
    }

    /// Runs SQL that returns an integer, where this build can read it; else runs it.
    pub(crate) async fn query_int(&mut self, sql: &str) -> Result<Option<i64>, sqlx::Error> {
        let was_clean = std::mem::replace(&mut self.clean, false);
        let result = if self.get().reads_ints() {
            match self.get_mut().query_int(sql) {
                Some(query) => query.await,
                None => Ok(None),
            }
        } else {
            self.get_mut().run(sql).await.map(|()| None)
        };
        self.clean = was_clean;
        result
    }

    /// Whether [`Conn::query_int`] can read an integer here.
    pub(crate) fn reads_ints(&self) -> bool {
        self.get().reads_ints()
    }

    pub(crate) fn get(&self) -> &dyn TxConnection {
        self.inner
            .as_deref()
            .expect("connection present until dropped")
    }

    pub(crate) fn get_mut(&mut self) -> &mut dyn TxConnection {
        self.inner
            .as_deref_mut()
            .expect("connection present until dropped")
    }

    /// Closes it now, whatever its state.
    pub(crate) fn close(mut self) {
        self.clean = false;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.over();
        }
        if let Some(inner) = self.inner.take() {
            if !self.clean {
                inner.close();
            }
        }
    }
}
