//! One physical transaction: its connection, lent to one user at a time; lazy BEGIN and
//! SAVEPOINT; the stack of open savepoints and the cleanup of abandoned ones; COMMIT, with a
//! check that the server had not already rolled back, and ROLLBACK.
//!
//! Every change of state follows the statement it depends on, and every control statement
//! runs to completion even if its caller is dropped (see `detach`). The rules are in
//! docs/ARCHITECTURE.md ("The transaction's connection").

mod level;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

pub(crate) use level::{Frame, Level, Role};

use crate::data_source::DataSource;
use crate::detach::Detachable;
use crate::dialect::{AbortCheck, Dialect};
use crate::driver::{Conn, TxConnection};
use crate::error::Error;
use crate::hooks::RollbackCause;
use crate::options::TxOptions;

/// How long cleanup after a cancellation (a ROLLBACK, a ROLLBACK TO SAVEPOINT, draining a
/// statement that was cut off) may take before the connection is closed instead. Closing is
/// always correct: the server rolls back what was open.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long sending a statement cancel to the server may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// One physical transaction on one connection, taken from the pool at its first use.
pub(crate) struct Transaction {
    pub(crate) data_source: Arc<DataSource>,
    pub(crate) options: TxOptions,
    /// Began while another transaction of the same data source was suspended (REQUIRES_NEW):
    /// it needs a second connection.
    suspends: bool,
    state: Mutex<State>,
    changed: Notify,
    /// The owner is ending it: nothing new is lent.
    ended: AtomicBool,
    /// SQLite: set to stop the running statement (see `Driver::arm_interrupt`).
    interrupt: Arc<AtomicBool>,
    savepoints: AtomicU32,
}

#[derive(Default)]
struct State {
    slot: Slot,
    begun: bool,
    /// Open savepoints, outermost first.
    savepoints: Vec<Open>,
    /// The server session, to cancel a statement from another connection.
    session: Option<i64>,
    interrupt_armed: bool,
    interrupt_fired: bool,
    reset: Option<&'static str>,
    /// Its connection was lost or closed half-way: nothing more runs in it.
    broken: bool,
    /// The owner has ended it: a connection given back is cleaned up and released.
    closing: bool,
}

#[derive(Default)]
enum Slot {
    /// No connection: not begun yet, or released.
    #[default]
    Empty,
    Idle(Conn),
    /// Lent to a guard of this frame.
    Lent(Arc<Frame>),
    /// A control statement runs on it.
    Busy,
}

struct Open {
    level: u64,
    /// Weak: a level whose scope has gone leaves its savepoint abandoned.
    scope: Weak<Level>,
    name: String,
    /// Its scope was dropped: roll back to it before the next statement.
    abandoned: bool,
}

impl Open {
    /// Its scope was dropped, or ended without closing it (the scope of a savepoint opened on
    /// its behalf after it was dropped): roll back to it before the next statement.
    fn is_abandoned(&self) -> bool {
        self.abandoned || self.scope.upgrade().is_none_or(|level| level.is_ended())
    }
}

/// What to send before lending the connection.
#[derive(Default)]
struct Prepare {
    begin: bool,
    settle: bool,
    session: bool,
    arm: bool,
    /// The lowest abandoned savepoint: where it is in the stack, and its name.
    cleanup: Option<(usize, String)>,
    /// Savepoints of the borrower's NESTED levels not opened yet, outermost first.
    open: Vec<(Weak<Level>, u64, String)>,
}

/// How the owner's end went.
pub(crate) enum Finished {
    Committed,
    RolledBack,
    /// COMMIT was asked for, but the transaction rolled back instead.
    NotCommitted(Error, RollbackCause),
    /// The deadline passed before COMMIT was sent: rolled back.
    TimedOut,
    /// A connection guard still held the connection: rolled back once it is given back.
    GuardOutlived,
    /// COMMIT was sent and no answer came: it may or may not have happened.
    Unknown(Error),
    /// The scope was dropped before COMMIT was sent: rolled back.
    Abandoned,
}

/// How a NESTED scope's end went.
pub(crate) enum SavepointEnd {
    Done,
    /// Its scope was dropped before `RELEASE` was sent: rolled back to instead.
    Abandoned,
    GuardOutlived,
    /// `RELEASE` failed (PostgreSQL: a statement inside had failed), so it was rolled back to.
    RolledBackInstead(sqlx::Error),
    Failed(Error),
}

impl Transaction {
    pub(crate) fn new(
        data_source: Arc<DataSource>,
        options: TxOptions,
        suspends: bool,
    ) -> Transaction {
        Transaction {
            data_source,
            options,
            suspends,
            state: Mutex::default(),
            changed: Notify::new(),
            ended: AtomicBool::new(false),
            interrupt: Arc::new(AtomicBool::new(false)),
            savepoints: AtomicU32::new(0),
        }
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

    /// The connection for `frame`'s scope: begins the transaction and opens the savepoints
    /// of its NESTED levels first, if not done yet. Waits while another user has it, or
    /// while a concurrent NESTED scope's savepoint is open, for at most the pool's acquire
    /// timeout.
    pub(crate) async fn lend(self: &Arc<Self>, frame: &Arc<Frame>) -> Result<Lease, Error> {
        let waited = self.data_source.source.acquire_timeout();
        let limit = Instant::now() + waited;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(ready) = self.try_lend(frame)? {
                return match ready {
                    Ok(lease) => Ok(lease),
                    Err((conn, plan)) => {
                        Detachable::new(self.clone().prepare(frame.clone(), conn, plan)).await
                    }
                };
            }
            if tokio::time::timeout_at(limit, notified).await.is_err() {
                return Err(self.busy(waited));
            }
        }
    }

    fn busy(&self, waited: Duration) -> Error {
        let nested = matches!(self.lock().slot, Slot::Idle(_) | Slot::Empty);
        Error::ConnectionBusy {
            data_source: self.data_source.name.to_string(),
            waited,
            reason: if nested {
                "a concurrent NESTED scope of this transaction kept its savepoint open"
            } else {
                "a connection guard of this transaction is still held"
            },
        }
    }

    /// `Ok(None)`: wait. `Ok(Some(Ok(lease)))`: lent. `Ok(Some(Err(..)))`: lent once these
    /// statements have run.
    #[allow(clippy::type_complexity)]
    fn try_lend(
        self: &Arc<Self>,
        frame: &Arc<Frame>,
    ) -> Result<Option<Result<Lease, (Option<Conn>, Prepare)>>, Error> {
        if self.is_ended() || frame.level.is_ended() {
            return Err(Error::TransactionFinished);
        }
        let mut st = self.lock();
        if st.broken {
            return Err(self.broken());
        }
        match st.slot {
            Slot::Lent(_) | Slot::Busy => return Ok(None),
            Slot::Empty if st.begun => return Err(Error::TransactionFinished),
            Slot::Empty | Slot::Idle(_) => {}
        }
        let chain = frame.level.savepoint_chain();
        let Some(opened) = eligible(&st.savepoints, &chain) else {
            return Ok(None);
        };
        let timed = frame.deadline.is_some();
        let dialect = self.dialect();
        let mut plan = Prepare {
            begin: !st.begun,
            settle: st.interrupt_fired,
            session: timed && st.session.is_none() && dialect.session_id().is_some(),
            arm: timed && !st.interrupt_armed && dialect == Dialect::Sqlite,
            cleanup: first_abandoned(&st.savepoints),
            open: Vec::new(),
        };
        for level in &chain[opened..] {
            let name = level.savepoint.clone().unwrap_or_default();
            plan.open.push((Arc::downgrade(level), level.id, name));
        }
        let conn = match std::mem::replace(&mut st.slot, Slot::Busy) {
            Slot::Idle(conn) => Some(conn),
            _ => None,
        };
        let needs_work = plan.begin
            || plan.settle
            || plan.session
            || plan.arm
            || plan.cleanup.is_some()
            || !plan.open.is_empty();
        if !needs_work {
            if let Some(conn) = conn {
                st.slot = Slot::Lent(frame.clone());
                return Ok(Some(Ok(self.lease(conn, frame))));
            }
        }
        Ok(Some(Err((conn, plan))))
    }

    fn lease(self: &Arc<Self>, conn: Conn, holder: &Arc<Frame>) -> Lease {
        Lease {
            tx: self.clone(),
            conn: Some(conn),
            holder: holder.clone(),
        }
    }

    /// Runs what must precede lending, then lends. Runs to completion even if the borrower
    /// is dropped: the lease it returns then gives the connection straight back.
    async fn prepare(
        self: Arc<Self>,
        frame: Arc<Frame>,
        conn: Option<Conn>,
        plan: Prepare,
    ) -> Result<Lease, Error> {
        let ds = &self.data_source;
        let dialect = ds.dialect;
        let mut conn = match conn {
            Some(conn) => conn,
            None => match ds.source.acquire().await {
                Ok(conn) => conn,
                Err(source) => {
                    self.give_back(None);
                    let exhausted = matches!(source, sqlx::Error::PoolTimedOut);
                    return Err(Error::Acquire {
                        data_source: ds.name.to_string(),
                        hint: if self.suspends && exhausted {
                            " (a REQUIRES_NEW scope needs a second connection while the suspended transaction holds one: give the pool more connections than concurrent nested scopes)"
                        } else {
                            ""
                        },
                        source,
                    });
                }
            },
        };
        let session = plan.session && conn.reads_ints();
        if plan.begin {
            let begin = dialect.begin(
                self.options.isolation,
                self.options.read_only,
                ds.settings.sqlite_begin_immediate,
                session,
            );
            conn.set_clean(false);
            let begun = match begin.returns_session {
                true => conn.query_int(&begin.sql).await,
                false => conn.run(&begin.sql).await.map(|()| None),
            };
            match begun {
                Ok(session) => {
                    let mut st = self.lock();
                    st.begun = true;
                    st.reset = begin.reset;
                    if begin.returns_session {
                        st.session = session;
                    }
                }
                Err(source) => {
                    // Its state is unknown: `conn` is closed as it is dropped.
                    drop(conn);
                    self.give_back(None);
                    return Err(Error::Begin {
                        data_source: ds.name.to_string(),
                        source,
                    });
                }
            }
        }
        if plan.settle {
            if let Err(error) = self.settle(&mut conn).await {
                return Err(self.fail(conn, error));
            }
        }
        if session && !plan.begin {
            let query = dialect.session_id().unwrap_or_default();
            match conn.query_int(query).await {
                Ok(session) => self.lock().session = session,
                Err(source) => return Err(self.fail(conn, self.statement_error(source))),
            }
        }
        if plan.arm {
            match conn.get_mut().arm_interrupt(self.interrupt.clone()).await {
                Ok(armed) => self.lock().interrupt_armed = armed,
                Err(source) => return Err(self.fail(conn, self.statement_error(source))),
            }
        }
        if let Some((at, name)) = plan.cleanup {
            if let Err(error) = self.roll_back_to(&mut conn, at, &name).await {
                return Err(self.fail(conn, error));
            }
        }
        for (scope, level, name) in plan.open {
            match conn.run_control(&dialect.savepoint(&name)).await {
                Ok(_) => self.lock().savepoints.push(Open {
                    level,
                    scope,
                    name,
                    abandoned: false,
                }),
                Err(source) => {
                    self.give_back(Some(conn));
                    return Err(Error::Savepoint {
                        data_source: ds.name.to_string(),
                        source,
                    });
                }
            }
        }
        let mut st = self.lock();
        if self.is_ended() || frame.level.is_ended() {
            drop(st);
            self.give_back(Some(conn));
            return Err(Error::TransactionFinished);
        }
        st.slot = Slot::Lent(frame.clone());
        Ok(self.lease(conn, &frame))
    }

    fn statement_error(&self, source: sqlx::Error) -> Error {
        Error::Savepoint {
            data_source: self.data_source.name.to_string(),
            source,
        }
    }

    /// Rolls back to the savepoint at `at` (and releases it), closing the savepoints above it.
    async fn roll_back_to(&self, conn: &mut Conn, at: usize, name: &str) -> Result<(), Error> {
        let sql = self.dialect().rollback_to_savepoint(name);
        match tokio::time::timeout(CLEANUP_TIMEOUT, conn.run_control(&sql)).await {
            Ok(Ok(_)) => {
                self.lock().savepoints.truncate(at);
                Ok(())
            }
            Ok(Err(source)) => Err(self.statement_error(source)),
            Err(_) => Err(self.broken()),
        }
    }

    /// SQLite, after a statement was interrupted: waits for it to end, clears the interrupt,
    /// and checks that SQLite did not roll the whole transaction back (it does when an
    /// interrupted statement was writing): then nothing more may run in it, or it would
    /// autocommit.
    async fn settle(&self, conn: &mut Conn) -> Result<(), Error> {
        let waited = tokio::time::timeout(CLEANUP_TIMEOUT, conn.get_mut().settle_interrupt()).await;
        self.interrupt.store(false, Ordering::Release);
        self.lock().interrupt_fired = false;
        if !matches!(waited, Ok(Ok(_))) {
            return Err(self.broken());
        }
        // BEGIN fails inside a transaction; outside one it starts a transaction we undo.
        if conn.run("BEGIN").await.is_ok() {
            let _ = conn.run_control("ROLLBACK").await;
            return Err(self.broken());
        }
        Ok(())
    }

    /// Closes the connection after a cleanup that could not finish: the transaction is over
    /// (the server rolls it back) and nothing more runs in it.
    fn fail(&self, conn: Conn, error: Error) -> Error {
        conn.close();
        let mut st = self.lock();
        st.broken = true;
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
            Some(conn) if st.broken => {
                conn.close();
                None
            }
            Some(conn) if st.closing => Some(conn),
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
        let limit = Instant::now() + self.data_source.source.acquire_timeout() + CLEANUP_TIMEOUT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(taken) = take(&mut self.lock()) {
                return Ok(taken);
            }
            if tokio::time::timeout_at(limit, notified).await.is_err() {
                return Err(self.broken());
            }
        }
    }

    /// A statement of `scope`'s may be running: stop it. SQLite's is stopped at once; for the
    /// others, the returned future sends the cancel from another connection.
    pub(crate) fn interrupt(&self, scope: &Frame) -> Option<BoxFuture<'static, ()>> {
        let mut st = self.lock();
        let Slot::Lent(holder) = &st.slot else {
            return None;
        };
        if !holder.is_within(scope) {
            return None;
        }
        if st.interrupt_armed {
            self.interrupt.store(true, Ordering::Release);
            st.interrupt_fired = true;
            return None;
        }
        let sql = self.dialect().cancel(st.session?)?;
        let source = self.data_source.source.clone();
        Some(Box::pin(async move {
            if let Ok(Err(error)) =
                tokio::time::timeout(CANCEL_TIMEOUT, source.run_aside(sql)).await
            {
                tracing::warn!(target: "transactional", %error, "could not cancel a statement at its deadline");
            }
        }))
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

    /// Ends a NESTED scope's savepoint: `RELEASE` (keep its work) or `ROLLBACK TO` (undo it).
    /// A savepoint never opened (the scope never used the connection) needs no statement.
    ///
    /// `abandoned` is read just before `RELEASE` is sent: a scope dropped by then is rolled
    /// back to instead.
    pub(crate) async fn end_savepoint(
        &self,
        frame: &Frame,
        release: bool,
        abandoned: &AtomicBool,
    ) -> SavepointEnd {
        let level = &frame.level;
        let taken = self
            .when_settled(|st| {
                let Some(at) = st.savepoints.iter().position(|o| o.level == level.id) else {
                    return Some(None);
                };
                match &st.slot {
                    Slot::Busy => None,
                    Slot::Lent(holder) if holder.is_within(frame) => {
                        st.savepoints[at].abandoned = true;
                        Some(Some(Err(())))
                    }
                    Slot::Lent(_) => None,
                    Slot::Empty => Some(None),
                    Slot::Idle(_) => match std::mem::replace(&mut st.slot, Slot::Busy) {
                        Slot::Idle(conn) => Some(Some(Ok((conn, at)))),
                        _ => unreachable!(),
                    },
                }
            })
            .await;
        let (mut conn, at) = match taken {
            Err(error) => {
                level.end();
                return SavepointEnd::Failed(error);
            }
            Ok(None) => {
                level.end();
                return SavepointEnd::Done;
            }
            Ok(Some(Err(()))) => {
                level.end();
                self.changed.notify_waiters();
                return SavepointEnd::GuardOutlived;
            }
            Ok(Some(Ok(taken))) => taken,
        };
        let ended = self
            .close_savepoint(&mut conn, at, release, abandoned)
            .await;
        level.end();
        match ended {
            Ok(end) => {
                self.give_back(Some(conn));
                end
            }
            Err(error) => SavepointEnd::Failed(self.fail(conn, error)),
        }
    }

    async fn close_savepoint(
        &self,
        conn: &mut Conn,
        at: usize,
        release: bool,
        abandoned: &AtomicBool,
    ) -> Result<SavepointEnd, Error> {
        let dialect = self.dialect();
        let (settle, name, abandoned_above) = {
            let st = self.lock();
            let above = first_abandoned(&st.savepoints[at + 1..]).map(|(i, n)| (at + 1 + i, n));
            (st.interrupt_fired, st.savepoints[at].name.clone(), above)
        };
        if settle {
            self.settle(conn).await?;
        }
        if !release || abandoned.load(Ordering::Acquire) {
            self.roll_back_to(conn, at, &name).await?;
            return Ok(if release {
                SavepointEnd::Abandoned
            } else {
                SavepointEnd::Done
            });
        }
        // A NESTED scope inside this one was dropped: its work goes before this one's is kept.
        if let Some((above, inner)) = abandoned_above {
            self.roll_back_to(conn, above, &inner).await?;
        }
        match conn.run_control(&dialect.release_savepoint(&name)).await {
            Ok(_) => {
                self.lock().savepoints.truncate(at);
                Ok(SavepointEnd::Done)
            }
            Err(source @ sqlx::Error::Database(_)) => {
                // PostgreSQL refuses RELEASE once a statement inside failed: undo the
                // savepoint's work, which also leaves the outer transaction usable.
                match self.roll_back_to(conn, at, &name).await {
                    Ok(()) => Ok(SavepointEnd::RolledBackInstead(source)),
                    Err(_) => Err(self.statement_error(source)),
                }
            }
            Err(source) => Err(self.statement_error(source)),
        }
    }

    /// Ends the transaction: COMMIT (unless the deadline has passed, or the scope was dropped
    /// before COMMIT could be sent: `abandoned`) or ROLLBACK, then returns the connection to its
    /// pool. Nothing is lent from now on.
    pub(crate) async fn finish(
        &self,
        commit: bool,
        deadline: Option<Instant>,
        abandoned: &AtomicBool,
        committing: impl FnOnce(),
    ) -> Finished {
        self.ended.store(true, Ordering::Release);
        let taken = self
            .when_settled(|st| match std::mem::replace(&mut st.slot, Slot::Busy) {
                Slot::Busy => None,
                Slot::Idle(conn) => Some(Ok(Some(conn))),
                Slot::Empty => {
                    st.slot = Slot::Empty;
                    Some(Ok(None))
                }
                lent @ Slot::Lent(_) => {
                    st.slot = lent;
                    st.closing = true;
                    Some(Err(()))
                }
            })
            .await;
        let mut conn = match taken {
            Ok(Ok(Some(conn))) => conn,
            Ok(Ok(None)) => {
                let st = self.lock();
                return match (st.begun || st.broken, commit) {
                    // Never began: nothing to send.
                    (false, true) => Finished::Committed,
                    (false, false) => Finished::RolledBack,
                    // Its connection was closed: the server rolled it back.
                    (true, true) => {
                        Finished::NotCommitted(self.broken(), RollbackCause::CommitFailed)
                    }
                    (true, false) => Finished::RolledBack,
                };
            }
            Ok(Err(())) => return Finished::GuardOutlived,
            Err(error) => {
                self.lock().closing = true;
                return if commit {
                    Finished::NotCommitted(error, RollbackCause::CommitFailed)
                } else {
                    Finished::RolledBack
                };
            }
        };
        let (finished, still_open) = if commit {
            match self
                .commit(&mut conn, deadline, abandoned, committing)
                .await
            {
                Ok(committed) => committed,
                Err(error) => (
                    Finished::NotCommitted(error, RollbackCause::CommitFailed),
                    true,
                ),
            }
        } else {
            (Finished::RolledBack, true)
        };
        if let Finished::Unknown(_) = finished {
            // The connection's state is unknown: closed, never reused.
            conn.close();
            self.release(None);
            return finished;
        }
        if still_open {
            self.roll_back(&mut conn).await;
        }
        self.release(Some(conn));
        finished
    }

    /// COMMIT; also says whether the transaction is still open (and needs a ROLLBACK).
    async fn commit(
        &self,
        conn: &mut Conn,
        deadline: Option<Instant>,
        abandoned: &AtomicBool,
        committing: impl FnOnce(),
    ) -> Result<(Finished, bool), Error> {
        let dialect = self.dialect();
        let (settle, cleanup) = {
            let st = self.lock();
            (st.interrupt_fired, first_abandoned(&st.savepoints))
        };
        if settle {
            self.settle(conn).await?;
        }
        // A dropped NESTED scope's work is undone before anything is committed.
        if let Some((at, name)) = cleanup {
            self.roll_back_to(conn, at, &name).await?;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok((Finished::TimedOut, true));
        }
        if abandoned.load(Ordering::Acquire) {
            return Ok((Finished::Abandoned, true));
        }
        let (sql, check) = dialect.commit();
        committing();
        let error = match conn.run(sql).await {
            Ok(_) => return Ok((Finished::Committed, false)),
            Err(sqlx::Error::Database(error)) => error,
            Err(source) => {
                let unknown = Error::Commit {
                    outcome_unknown: true,
                    source,
                };
                return Ok((Finished::Unknown(unknown), false));
            }
        };
        let code = error.code().map(|c| c.into_owned());
        let (aborted, still_open) = match check {
            // The probe failed, so COMMIT did not run: an aborted transaction is still open.
            AbortCheck::ProbeFails { states, not_open } => {
                let aborted = code.as_deref().is_some_and(|c| states.contains(&c));
                (aborted, code.as_deref() != Some(not_open))
            }
            AbortCheck::CommitFails(message) => (error.message().contains(message), false),
        };
        let source = sqlx::Error::Database(error);
        Ok(if aborted {
            let data_source = self.data_source.name.to_string();
            let error = Error::Aborted {
                data_source,
                source,
            };
            (
                Finished::NotCommitted(error, RollbackCause::Aborted),
                still_open,
            )
        } else {
            let error = Error::Commit {
                outcome_unknown: false,
                source,
            };
            // A COMMIT that failed on its own ended the transaction (PostgreSQL, MySQL) or left
            // it open (SQLite busy); an error left by a statement cut off earlier means COMMIT
            // was never sent. ROLLBACK either way: it is harmless when nothing is open.
            (
                Finished::NotCommitted(error, RollbackCause::CommitFailed),
                true,
            )
        })
    }

    /// ROLLBACK; if it fails or takes too long, the connection is closed instead.
    async fn roll_back(&self, conn: &mut Conn) {
        let begun = self.lock().begun;
        if !begun {
            return;
        }
        let sql = self.dialect().rollback();
        match tokio::time::timeout(CLEANUP_TIMEOUT, conn.run_control(sql)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(target: "transactional", %error, "ROLLBACK failed; closing the connection instead");
                conn.set_clean(false);
                self.lock().broken = true;
            }
            Err(_) => {
                tracing::warn!(target: "transactional", "ROLLBACK did not finish in time; closing the connection instead");
                conn.set_clean(false);
                self.lock().broken = true;
            }
        }
    }

    /// Returns a connection whose transaction is over to its pool, clean, or closes it.
    fn release(&self, conn: Option<Conn>) {
        let mut st = self.lock();
        st.slot = Slot::Empty;
        st.closing = true;
        let cleanup = Cleanup {
            rollback: None,
            ..Cleanup::of(&st, self.dialect())
        };
        let broken = st.broken;
        drop(st);
        self.changed.notify_waiters();
        if let Some(conn) = conn {
            if broken {
                conn.close();
            } else {
                cleanup.spawn(conn);
            }
        }
    }
}

/// Whether a level whose savepoint chain is `chain` may use the connection: `Some(n)` when the
/// live open savepoints (those below the first abandoned one) are the first `n` of `chain`, so
/// it may once the rest of its chain is opened; `None` while another scope's savepoint is open
/// (a concurrent NESTED scope: savepoints are a stack, so they take turns).
fn eligible(open: &[Open], chain: &[Arc<Level>]) -> Option<usize> {
    let mut n = 0;
    for open in open.iter().take_while(|o| !o.is_abandoned()) {
        match chain.get(n) {
            Some(level) if level.id == open.level => n += 1,
            _ => return None,
        }
    }
    Some(n)
}

fn first_abandoned(open: &[Open]) -> Option<(usize, String)> {
    open.iter()
        .position(|o| o.is_abandoned())
        .map(|at| (at, open[at].name.clone()))
}

/// What a connection needs once its transaction is over, before it can go back to the pool.
struct Cleanup {
    rollback: Option<&'static str>,
    reset: Option<&'static str>,
    disarm: bool,
}

impl Cleanup {
    fn of(st: &State, dialect: Dialect) -> Cleanup {
        Cleanup {
            rollback: st.begun.then(|| dialect.rollback()),
            reset: st.reset,
            disarm: st.interrupt_armed,
        }
    }

    /// Cleans `conn` up and returns it to its pool: at once if nothing needs a round trip,
    /// else in a task; closes it if that fails or takes too long.
    fn spawn(self, mut conn: Conn) {
        if self.rollback.is_none() && self.reset.is_none() && !self.disarm {
            conn.set_clean(true);
            return;
        }
        conn.set_clean(false);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let cleaned = tokio::time::timeout(CLEANUP_TIMEOUT, async {
                    for sql in self.rollback.into_iter().chain(self.reset) {
                        conn.run_control(sql).await?;
                    }
                    if self.disarm {
                        conn.get_mut().disarm_interrupt().await?;
                    }
                    Ok::<_, sqlx::Error>(())
                })
                .await;
                match cleaned {
                    Ok(Ok(())) => conn.set_clean(true),
                    Ok(Err(error)) => {
                        tracing::warn!(target: "transactional", %error, "cleaning up a connection failed; closing it");
                    }
                    Err(_) => {
                        tracing::warn!(target: "transactional", "cleaning up a connection took too long; closing it");
                    }
                }
            });
        }
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
