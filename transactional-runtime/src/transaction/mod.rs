//! One physical transaction: its connection, lent to one user at a time, and the stack of its
//! open savepoints. `lend` gives the connection out (lazy BEGIN and SAVEPOINT, the cleanup of
//! abandoned savepoints); `end` takes it back for RELEASE, ROLLBACK TO, COMMIT and ROLLBACK;
//! `level` holds the levels (transaction, savepoints) and the frames scopes see.
//!
//! Every change of state follows the statement it depends on, and every control statement
//! runs to completion even if its caller is dropped (see `detach`). The rules are in
//! docs/ARCHITECTURE.md ("The transaction's connection").

mod cleanup;
mod close;
mod lend;
mod level;
mod state;
mod underneath;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use cleanup::Cleanup;
pub(crate) use close::{Intent, SavepointClosed, TxClosed};
pub(crate) use level::{Frame, Level, Role};
use state::{Interrupt, Life, Owed, Slot, State};

use crate::data_source::{DataSource, Replica, Source};
use crate::dialect::Dialect;
use crate::driver::{Conn, TxConnection};
use crate::error::Error;
use crate::options::TxOptions;
use underneath::{forget_failures, Underneath};

/// How long cleanup after a cancellation (a ROLLBACK, a ROLLBACK TO SAVEPOINT, draining a
/// statement that was cut off) may take before the connection is closed instead. Closing is
/// always correct: the server rolls back what was open.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long sending a statement cancel to the server may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// While a cleanup waits for a cancelled statement, how often the cancel is sent again: the
/// first one can land before the statement started running on the server, and miss it.
const CANCEL_AGAIN: Duration = Duration::from_millis(250);

/// How long the end of a transaction waits for a cancelled statement before its session is
/// ended from another connection (the server then rolls back): a statement that ignores the
/// cancel (or a server that does) never holds a transaction's locks for long after its
/// deadline. (Where the transaction goes on after the cleanup, a savepoint's, it is given
/// [`CLEANUP_TIMEOUT`]: ending the session ends the whole transaction.)
const STUCK_AFTER_CANCEL: Duration = Duration::from_millis(800);

/// What a cleanup is for: it decides how long a cancelled statement may hold it up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cleaning {
    /// The transaction's end: ending the session does what the ROLLBACK would.
    Transaction,
    /// A savepoint, or the connection before its next use: the transaction goes on.
    WithinTransaction,
}

/// One physical transaction on one connection, taken from the pool at its first use.
pub(crate) struct Transaction {
    /// What the spans of its scopes share (see `trace`).
    pub(crate) id: u64,
    pub(crate) data_source: Arc<DataSource>,
    pub(crate) options: TxOptions,
    /// Began while another transaction of the same data source was suspended (REQUIRES_NEW):
    /// it needs a second connection.
    suspends: bool,
    state: Mutex<State>,
    changed: Notify,
    /// The owner is ending it: nothing new is lent.
    ended: AtomicBool,
    /// SQLite: set to stop the running statement (see `TxConnection::arm`).
    interrupt: Arc<AtomicBool>,
    savepoints: AtomicU32,
    /// The replica a read-only transaction runs on (set with its first connection); none: the
    /// data source's own pool. Cancels go where the transaction runs.
    replica: Mutex<Option<Arc<Replica>>>,
    /// The commit position the task that began it asked replicas to have replayed.
    read_after: Option<i64>,
}

impl Transaction {
    pub(crate) fn new(
        data_source: Arc<DataSource>,
        options: TxOptions,
        suspends: bool,
    ) -> Transaction {
        Transaction {
            id: crate::trace::next_tx_id(),
            data_source,
            options,
            suspends,
            state: Mutex::default(),
            changed: Notify::new(),
            ended: AtomicBool::new(false),
            interrupt: Arc::new(AtomicBool::new(false)),
            savepoints: AtomicU32::new(0),
            replica: Mutex::new(None),
            read_after: None,
        }
    }

    /// This transaction, for a task whose reads must find `position` replayed.
    pub(crate) fn reading_after(mut self, position: Option<i64>) -> Transaction {
        self.read_after = position;
        self
    }

    /// Where its connection comes from: the replica it runs on, or the data source's pool.
    pub(crate) fn source(&self) -> Arc<dyn Source> {
        match &*self.replica.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(replica) => replica.source.clone(),
            None => self.data_source.source.clone(),
        }
    }

    /// Whether it runs on a replica.
    pub(crate) fn on_replica(&self) -> bool {
        self.replica
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Savepoints are numbered per transaction: `tx_sp_1`, `tx_sp_2`, …
    pub(crate) fn next_savepoint_name(&self) -> String {
        let n = self.savepoints.fetch_add(1, Ordering::Relaxed) + 1;
        format!("tx_sp_{n}")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dialect(&self) -> Dialect {
        self.data_source.dialect
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Whether it has begun and holds its connection.
    pub(crate) fn holds_connection(&self) -> bool {
        let st = self.lock();
        st.life.is_open() && !matches!(st.slot, Slot::Empty)
    }

    fn statement_error(&self, source: sqlx::Error) -> Error {
        Error::Savepoint {
            data_source: self.data_source.name.to_string(),
            source,
        }
    }

    /// Rolls back to the savepoint at `at` (and releases it), closing the savepoints above it.
    async fn roll_back_to(
        &self,
        conn: &mut Conn,
        at: usize,
        name: &str,
    ) -> Result<(), SavepointFailure> {
        let sql = self.dialect().rollback_to_savepoint(name);
        match self.clean_up(conn, &sql, Cleaning::WithinTransaction).await {
            Ok(Ok(())) => {
                let mut st = self.lock();
                forget_failures(&mut st, at);
                st.savepoints.truncate(at);
                Ok(())
            }
            Ok(Err(source)) => Err(self.savepoint_failure(source, name)),
            Err(error) => Err(SavepointFailure::Broken(error)),
        }
    }

    /// Runs a cleanup statement (a ROLLBACK, a ROLLBACK TO, a drain), which first waits for
    /// any statement cut off before it. After a cancel, the cancel is sent again while it
    /// waits (the first may have reached the server before the statement did); a statement
    /// that still holds the connection after [`STUCK_AFTER_CANCEL`] (the transaction's end) or
    /// [`CLEANUP_TIMEOUT`] (within the transaction), as a cleanup without a cancel after
    /// [`CLEANUP_TIMEOUT`], gives the connection up: `Err`, the transaction broken.
    async fn clean_up(
        &self,
        conn: &mut Conn,
        sql: &str,
        cleaning: Cleaning,
    ) -> Result<Result<(), sqlx::Error>, Error> {
        let again = {
            let st = self.lock();
            st.session
                .filter(|_| st.cancels.sent())
                .and_then(|session| self.dialect().cancel(session))
        };
        let limit = match (&again, cleaning) {
            (Some(_), Cleaning::Transaction) => STUCK_AFTER_CANCEL,
            _ => CLEANUP_TIMEOUT,
        };
        let give_up = tokio::time::sleep(limit);
        let run = conn.run_control(sql);
        tokio::pin!(give_up, run);
        let mut resend = tokio::time::interval_at(Instant::now() + CANCEL_AGAIN, CANCEL_AGAIN);
        // Cancels sent again land before this returns: a late one would hit the next statement.
        let mut landing = futures_util::stream::FuturesUnordered::new();
        let ran = loop {
            tokio::select! {
                ran = &mut run => break Some(ran),
                () = &mut give_up => break None,
                _ = resend.tick(), if again.is_some() => {
                    let source = self.source();
                    let sql = again.clone().expect("checked by the branch's condition");
                    landing.push(async move {
                        let _ = tokio::time::timeout(CANCEL_TIMEOUT, source.run_aside(sql)).await;
                    });
                }
                Some(()) = futures_util::StreamExt::next(&mut landing), if !landing.is_empty() => {}
            }
        };
        while futures_util::StreamExt::next(&mut landing).await.is_some() {}
        match ran {
            Some(ran) => Ok(ran),
            None => Err(self.stuck().await),
        }
    }

    /// A cleanup did not finish in time: after a cancel, the statement that ignores it is
    /// stopped by ending its session from another connection (PostgreSQL
    /// `pg_terminate_backend`, MySQL `KILL CONNECTION`); the server rolls the transaction back.
    /// The connection is given up either way.
    async fn stuck(&self) -> Error {
        let (session, cancelled) = {
            let mut st = self.lock();
            st.life = Life::Broken;
            (st.session, st.cancels.sent())
        };
        let terminate = session
            .filter(|_| cancelled)
            .and_then(|session| self.dialect().terminate(session));
        if let Some(sql) = terminate {
            tracing::warn!(target: crate::trace::TARGET, "a cancelled statement is still running; ending its session");
            let source = self.source();
            match tokio::time::timeout(CANCEL_TIMEOUT, source.run_aside(sql)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(target: crate::trace::TARGET, %error, "could not end the session of a cancelled statement")
                }
                Err(_) => {
                    tracing::warn!(target: crate::trace::TARGET, "ending the session of a cancelled statement took too long")
                }
            }
        }
        self.broken()
    }

    /// Before the connection serves anyone after a statement was cut off: takes the answer
    /// it left (see [`Transaction::cut`]); on SQLite, after an interrupt, waits for the
    /// statement to end, clears the interrupt, and checks that SQLite did not roll the whole
    /// transaction back (it does when an interrupted statement was writing): then nothing more
    /// may run in it, or it would autocommit.
    async fn settle(&self, conn: &mut Conn) -> Result<(), Error> {
        let owed = std::mem::take(&mut self.lock().owed);
        match owed {
            Owed::Nothing => return Ok(()),
            Owed::Answer => return self.drain(conn).await,
            Owed::Interrupted => {}
        }
        let waited = tokio::time::timeout(CLEANUP_TIMEOUT, conn.get_mut().settle_interrupt()).await;
        self.interrupt.store(false, Ordering::Release);
        let watch = self.lock().watch.clone();
        if !matches!(waited, Ok(Ok(_))) {
            return Err(self.broken());
        }
        if let Some(watch) = watch {
            return match watch.rolled_back() {
                true => Err(self.broken()),
                false => Ok(()),
            };
        }
        // Unwatched (sqlx's Any driver): BEGIN fails inside a transaction; outside one it
        // starts a transaction we undo.
        if conn.run("BEGIN").await.is_ok() {
            let _ = conn.run_control("ROLLBACK").await;
            return Err(self.broken());
        }
        Ok(())
    }

    /// A statement cut off (its scope timed out or was dropped while it ran) leaves its answer,
    /// maybe an error such as MySQL's "query execution was interrupted", to the next command
    /// sent on the connection: a statement that answers at once takes it, so that it reaches no
    /// other statement. (On PostgreSQL a cancelled statement has aborted the transaction: the
    /// next statement is refused, and told so.)
    async fn drain(&self, conn: &mut Conn) -> Result<(), Error> {
        match self
            .clean_up(conn, "SELECT 1", Cleaning::WithinTransaction)
            .await?
        {
            Ok(()) | Err(sqlx::Error::Database(_)) => Ok(()),
            Err(_) => Err(self.broken()),
        }
    }

    /// The scope of `scope` is cut short (its deadline, or its future dropped) while the
    /// connection may be running a statement for it: the next user of the connection takes
    /// that statement's answer first (see [`Transaction::drain`]).
    pub(crate) fn cut(&self, scope: &Frame) {
        let mut st = self.lock();
        let holds = matches!(&st.slot, Slot::Lent(holder) if holder.is_within(scope));
        if holds && self.dialect() != Dialect::Sqlite {
            st.owed = Owed::Answer;
        }
    }

    /// Closes the connection after a cleanup that could not finish: the transaction is over
    /// (the server rolls it back) and nothing more runs in it.
    fn fail(&self, conn: Conn, error: Error) -> Error {
        conn.close();
        let mut st = self.lock();
        st.life = Life::Broken;
        st.slot = Slot::Empty;
        drop(st);
        self.changed.notify_waiters();
        error
    }

    fn broken(&self) -> Error {
        Error::TransactionBroken {
            data_source: self.data_source.name.to_string(),
        }
    }

    /// Takes a connection back from a lease or a control statement.
    fn give_back(&self, conn: Option<Conn>) {
        let mut st = self.lock();
        let dispose = match conn {
            Some(conn) if st.life == Life::Broken => {
                conn.close();
                None
            }
            Some(conn) if matches!(st.life, Life::Closing { .. }) => Some(conn),
            Some(conn) => {
                st.slot = Slot::Idle(conn);
                None
            }
            None => {
                st.slot = Slot::Empty;
                None
            }
        };
        if dispose.is_some() {
            st.slot = Slot::Empty;
        }
        let cleanup = Cleanup::of(&st, self.dialect());
        drop(st);
        self.changed.notify_waiters();
        if let Some(conn) = dispose {
            cleanup.spawn(conn);
        }
    }

    /// Waits until no control statement runs on the connection, then applies `take`.
    async fn when_settled<T>(
        &self,
        mut take: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<T, Error> {
        let limit = Instant::now() + self.source().acquire_timeout() + CLEANUP_TIMEOUT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.cancels.in_flight() == 0 {
                    if let Some(taken) = take(&mut st) {
                        return Ok(taken);
                    }
                }
            }
            if tokio::time::timeout_at(limit, notified).await.is_err() {
                return Err(self.broken());
            }
        }
    }

    /// A statement of `scope`'s may be running: stop it. SQLite's is stopped at once; for the
    /// others, a task sends the cancel from another connection, and until it has (or has given
    /// up), nothing else uses the connection: a lend waits, and so does the end of the
    /// transaction or of a savepoint (see `when_settled`).
    pub(crate) fn interrupt(self: &Arc<Self>, scope: &Frame) {
        let mut st = self.lock();
        let Slot::Lent(holder) = &st.slot else {
            return;
        };
        if !holder.is_within(scope) {
            return;
        }
        if st.interrupt == Interrupt::Armed {
            self.interrupt.store(true, Ordering::Release);
            st.owed = Owed::Interrupted;
            return;
        }
        let Some(sql) = st
            .session
            .and_then(|session| self.dialect().cancel(session))
        else {
            return;
        };
        let source = self.source();
        st.cancels.start();
        drop(st);
        // Counted until it lands, or is dropped unsent (no runtime to send it on).
        let landed = CancelLanded(self.clone());
        let send = async move {
            if let Ok(Err(error)) =
                tokio::time::timeout(CANCEL_TIMEOUT, source.run_aside(sql)).await
            {
                tracing::warn!(target: crate::trace::TARGET, %error, "could not cancel a running statement");
            }
            drop(landed);
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(send.instrument(tracing::Span::current()));
        }
    }

    /// The scope of a NESTED `level` is rolling back (its body failed, or timed out): its
    /// savepoint is rolled back to before anything else runs at the levels around it, even if
    /// its own end is delayed (a cancel on its way) or never comes.
    pub(crate) fn doom_savepoint(&self, level: &Level) {
        let mut st = self.lock();
        if let Some(open) = st.savepoints.iter_mut().find(|o| o.level == level.id) {
            open.abandoned = true;
        }
    }

    /// The scope of `level` was dropped: roll back to its savepoint before the next statement;
    /// its hooks go with it.
    pub(crate) fn abandon_savepoint(&self, level: &Level) {
        level.end();
        drop(level.hooks.take());
        let mut st = self.lock();
        if let Some(open) = st.savepoints.iter_mut().find(|o| o.level == level.id) {
            open.abandoned = true;
        }
        drop(st);
        self.changed.notify_waiters();
    }
}

/// How a statement on a savepoint failed.
pub(crate) enum SavepointFailure {
    /// The database had ended the whole transaction: the connection is usable (the end of the
    /// transaction rolls back what ran since and gives the session its settings back), the
    /// transaction is not.
    Gone(Error),
    /// The connection's state is unknown: it is closed.
    Broken(Error),
}

/// Counts a statement cancel as landed when dropped.
struct CancelLanded(Arc<Transaction>);

impl Drop for CancelLanded {
    fn drop(&mut self) {
        self.0.lock().cancels.landed();
        self.0.changed.notify_waiters();
    }
}

/// The transaction's connection, lent to a guard or a control statement. Dropping it gives
/// the connection back.
pub(crate) struct Lease {
    tx: Arc<Transaction>,
    conn: Option<Conn>,
    holder: Arc<Frame>,
}

impl Lease {
    pub(crate) fn conn(&self) -> &dyn TxConnection {
        self.conn.as_ref().expect("present until dropped").get()
    }

    pub(crate) fn conn_mut(&mut self) -> &mut dyn TxConnection {
        self.conn.as_mut().expect("present until dropped").get_mut()
    }

    /// The scope that borrowed it has ended (the guard outlived it).
    pub(crate) fn is_finished(&self) -> bool {
        self.tx.is_ended() || self.holder.level.is_ended()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.tx.give_back(self.conn.take());
    }
}
