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

    /// Makes `interrupt` stop the statement running on this connection when it is set (SQLite's
    /// progress handler); `false` where statements are cancelled from another connection.
    fn arm_interrupt(
        &mut self,
        interrupt: Arc<AtomicBool>,
    ) -> BoxFuture<'_, Result<bool, sqlx::Error>>;

    /// Undoes [`TxConnection::arm_interrupt`].
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

    fn arm_interrupt(
        &mut self,
        interrupt: Arc<AtomicBool>,
    ) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
        concrete::arm_interrupt(self, interrupt)
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
                        .map(|row| sqlx::Row::try_get::<i64, _>(row, 0))
                        .transpose()
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
    /// writer's lock is not interrupted: `busy_timeout` bounds it.)
    #[allow(unused_variables)]
    pub(super) fn arm_interrupt(
        conn: &mut dyn Any,
        interrupt: Arc<AtomicBool>,
    ) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
        #[cfg(feature = "sqlite")]
        if let Some(conn) = sqlite(conn) {
            return Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                handle.set_progress_handler(256, move || {
                    !interrupt.load(std::sync::atomic::Ordering::Acquire)
                });
                Ok(true)
            });
        }
        Box::pin(async { Ok(false) })
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

/// A connection held by the runtime. Dropped while not [clean](Conn::set_clean), it is closed
/// rather than returned to its pool.
pub(crate) struct Conn {
    inner: Option<Box<dyn TxConnection>>,
    clean: bool,
    /// Counts it as a transaction's while it lives (see `status`).
    counted: Option<Counted>,
}

impl Conn {
    /// A connection just taken from its pool: clean.
    pub(crate) fn new(inner: Box<dyn TxConnection>) -> Conn {
        Conn {
            inner: Some(inner),
            clean: true,
            counted: None,
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
        if let Some(inner) = self.inner.take() {
            if !self.clean {
                inner.close();
            }
        }
    }
}
