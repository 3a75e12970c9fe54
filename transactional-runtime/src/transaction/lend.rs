//! Lending the transaction's connection: lazy acquire and BEGIN, the cleanup of abandoned
//! savepoints, lazy SAVEPOINTs, and the turn-taking of concurrent NESTED scopes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::state::{first_abandoned, Interrupt, Life, Open, Owed, Slot, State};
use super::{Frame, Lease, Level, SavepointFailure, Transaction, Underneath};
use crate::data_source::Replica;
use crate::detach::Detachable;
use crate::dialect::Dialect;
use crate::driver::{Conn, Watch};
use crate::error::Error;
use crate::options::Isolation;
use crate::status::{acquire_hint, counted_wait, Counted};

/// What one look at the slot gives a borrower.
enum Turn {
    /// Someone else has the connection, a statement cancel is landing, or a concurrent NESTED
    /// scope's savepoint is open: wait for a change.
    Wait,
    /// Lent at once: nothing to send first.
    Lent(Lease),
    /// Lent once `Prepare`'s statements have run, on the idle connection or (`None`) on one
    /// taken from the pool.
    Prepare(Option<Conn>, Prepare),
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
impl Transaction {
    /// The connection for `frame`'s scope: begins the transaction and opens the savepoints
    /// of its NESTED levels first, if not done yet. Waits while another user has it, or
    /// while a concurrent NESTED scope's savepoint is open, for at most the pool's acquire
    /// timeout.
    pub(crate) async fn lend(self: &Arc<Self>, frame: &Arc<Frame>) -> Result<Lease, Error> {
        let waited = self.source().acquire_timeout();
        let limit = Instant::now() + waited;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_lend(frame)? {
                Turn::Wait => {}
                Turn::Lent(lease) => return Ok(lease),
                Turn::Prepare(conn, plan) => {
                    // The statements run to completion even if this waiter goes away; only a
                    // waiter still here turns the connection into a lease.
                    let work = self.clone().prepare(conn, plan);
                    let prepared = Detachable::new(work).await?;
                    return prepared.lend_to(frame);
                }
            }
            if tokio::time::timeout_at(limit, notified).await.is_err() {
                return Err(self.busy(waited));
            }
        }
    }

    fn busy(&self, waited: Duration) -> Error {
        let reason = match self.lock().slot {
            Slot::Idle(_) | Slot::Empty => {
                "a concurrent NESTED scope of this transaction kept its savepoint open"
            }
            Slot::Acquiring => "the transaction's first connection is still awaited from the pool",
            Slot::Lent(_) | Slot::Busy => "a connection guard of this transaction is still held",
        };
        Error::ConnectionBusy {
            data_source: self.data_source.name.to_string(),
            waited,
            reason,
        }
    }

    /// One look at the slot on `frame`'s behalf.
    fn try_lend(self: &Arc<Self>, frame: &Arc<Frame>) -> Result<Turn, Error> {
        if self.is_ended() || frame.level.is_ended() {
            return Err(Error::TransactionFinished);
        }
        let mut st = self.lock();
        if st.life == Life::Broken {
            return Err(self.broken());
        }
        let underneath = self.underneath(&st);
        if underneath != Underneath::Intact {
            // Whatever would run now would not be part of the transaction: MySQL would run it
            // in a new one, SQLite in autocommit (its watch refuses that commit).
            drop(st);
            return Err(self.underneath_error(underneath, None));
        }
        if st.cancels.in_flight() > 0 {
            // A statement cancel is on its way: nothing else may run before it lands.
            return Ok(Turn::Wait);
        }
        match st.slot {
            Slot::Lent(_) | Slot::Busy | Slot::Acquiring => return Ok(Turn::Wait),
            Slot::Empty if st.life.is_open() => return Err(Error::TransactionFinished),
            Slot::Empty | Slot::Idle(_) => {}
        }
        let chain = frame.level.savepoint_chain();
        let Some(opened) = eligible(&st.savepoints, &chain) else {
            return Ok(Turn::Wait);
        };
        let plan = self.plan(&st, frame, &chain[opened..]);
        let conn = match std::mem::replace(&mut st.slot, Slot::Busy) {
            Slot::Idle(conn) => Some(conn),
            _ => {
                st.slot = Slot::Acquiring;
                None
            }
        };
        if plan.is_empty() {
            if let Some(conn) = conn {
                st.slot = Slot::Lent(frame.clone());
                return Ok(Turn::Lent(self.lease(conn, frame)));
            }
        }
        Ok(Turn::Prepare(conn, plan))
    }

    /// What to send before lending to `frame`, whose savepoints `to_open` are not open yet.
    fn plan(&self, st: &State, frame: &Frame, to_open: &[Arc<Level>]) -> Prepare {
        let timed = frame.deadline.is_some();
        let nests = !to_open.is_empty();
        let dialect = self.dialect();
        Prepare {
            begin: !st.life.is_open(),
            settle: st.owed != Owed::Nothing,
            // To cancel a statement at a deadline, or one of a NESTED scope that is dropped.
            session: (timed || nests) && st.session.is_none() && dialect.session_id().is_some(),
            arm: timed && st.interrupt == Interrupt::Unarmed && dialect == Dialect::Sqlite,
            cleanup: first_abandoned(&st.savepoints),
            open: to_open
                .iter()
                .map(|level| {
                    let name = level.savepoint.clone().unwrap_or_default();
                    (Arc::downgrade(level), level.id, name)
                })
                .collect(),
        }
    }

    fn lease(self: &Arc<Self>, conn: Conn, holder: &Arc<Frame>) -> Lease {
        Lease {
            tx: self.clone(),
            conn: Some(conn),
            holder: holder.clone(),
        }
    }

    /// Runs what must precede lending. Runs to completion even if the borrower is dropped:
    /// the connection then goes straight back to the slot.
    async fn prepare(
        self: Arc<Self>,
        conn: Option<Conn>,
        plan: Prepare,
    ) -> Result<Prepared, Error> {
        let mut conn = match conn {
            Some(conn) => conn,
            None => self.acquire_first().await?,
        };
        let batch = Batch::new(self.dialect(), &plan, plan.session && conn.reads_ints());
        if plan.begin {
            while let Err(error) = self.send_begin(&mut conn, &batch, &plan).await {
                // Its state is unknown: `conn` is closed as it is dropped.
                drop(conn);
                let replica = self
                    .replica
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                let Some(replica) = replica else {
                    self.give_back(None);
                    return Err(error);
                };
                // A replica that failed BEGIN: nothing ran, so the primary takes over.
                replica.mark_down();
                tracing::warn!(target: crate::trace::TARGET, data_source = %self.data_source.name, replica = replica.index, %error, "a replica failed BEGIN; the transaction goes to the primary");
                conn = self.acquire_first().await?;
            }
        }
        if plan.settle {
            if let Err(error) = self.settle(&mut conn).await {
                return Err(self.fail(conn, error));
            }
        }
        if let Err(error) = self.arm(&mut conn, &plan).await {
            return Err(self.fail(conn, error));
        }
        if let Some((at, name)) = &plan.cleanup {
            match self.roll_back_to(&mut conn, *at, name).await {
                Ok(()) => {}
                Err(SavepointFailure::Gone(error)) => {
                    self.give_back(Some(conn));
                    return Err(error);
                }
                Err(SavepointFailure::Broken(error)) => return Err(self.fail(conn, error)),
            }
        }
        if !plan.begin && batch.has_work() {
            if let Err(error) = self.open_savepoints(&mut conn, &batch, &plan).await {
                // The savepoints' state is unknown: the connection goes back as it is, and
                // the scope that asked gets the error.
                self.give_back(Some(conn));
                return Err(error);
            }
        }
        Ok(Prepared {
            tx: self.clone(),
            conn: Some(conn),
        })
    }

    /// The transaction's first connection: from a replica that may serve it (a read-only
    /// transaction of a data source with replicas), else from the data source's pool.
    async fn acquire_first(&self) -> Result<Conn, Error> {
        let ds = &self.data_source;
        if self.may_use_replica() {
            for replica in ds.replicas.candidates(self.read_after) {
                let timeout = replica.settings.acquire_timeout;
                match tokio::time::timeout(timeout, replica.source.acquire()).await {
                    Ok(Ok(conn)) => return self.took(conn, Some(replica)),
                    failed => {
                        replica.mark_down();
                        let error = match failed {
                            Ok(Err(error)) => error.to_string(),
                            _ => format!("no connection within {timeout:?}"),
                        };
                        tracing::warn!(target: crate::trace::TARGET, data_source = %ds.name, replica = replica.index, %error, "a replica did not give a connection; trying the next, or the primary");
                    }
                }
            }
        }
        let source = self.source();
        match counted_wait(&ds.usage, source.acquire()).await {
            (Ok(conn), _) => self.took(conn, None),
            (Err(source), starved) => {
                self.give_back(None);
                let exhausted = matches!(source, sqlx::Error::PoolTimedOut);
                Err(Error::Acquire {
                    data_source: ds.name.to_string(),
                    hint: acquire_hint(starved, self.suspends, exhausted),
                    source,
                })
            }
        }
    }

    /// Whether this transaction may run on a replica: read-only, not serializable (a hot
    /// standby refuses it), on a data source with replicas, and not already placed.
    fn may_use_replica(&self) -> bool {
        self.options.read_only
            && self.options.isolation != Isolation::Serializable
            && !self.data_source.replicas.is_empty()
            && !self.on_replica()
    }

    /// The first connection is here (from `replica`, if any): the transaction runs on it,
    /// unless it ended while it waited.
    fn took(&self, mut conn: Conn, replica: Option<&Arc<Replica>>) -> Result<Conn, Error> {
        conn.count_as(Counted::transaction(&self.data_source.usage));
        let mut st = self.lock();
        if self.is_ended() {
            // The transaction ended while this waited (its body gave up on the connection):
            // nothing was sent, and the connection, clean, goes back to the pool as it is
            // dropped.
            st.slot = Slot::Empty;
            drop(st);
            self.changed.notify_waiters();
            return Err(Error::TransactionFinished);
        }
        st.slot = Slot::Busy;
        if let Some(replica) = replica {
            *self.replica.lock().unwrap_or_else(|e| e.into_inner()) = Some(replica.clone());
            tracing::debug!(target: crate::trace::TARGET, data_source = %self.data_source.name, replica = replica.index, "a read-only transaction runs on a replica");
        }
        Ok(conn)
    }

    /// BEGIN, in one round trip with the savepoints to open and the session id.
    async fn send_begin(
        &self,
        conn: &mut Conn,
        batch: &Batch,
        plan: &Prepare,
    ) -> Result<(), Error> {
        let ds = &self.data_source;
        let begin = ds.dialect.begin(
            self.options.isolation,
            self.options.read_only,
            ds.settings.sqlite_begin_immediate,
        );
        let sql = batch.sql(Some(&begin.sql));
        conn.set_clean(false);
        let begun = match batch.session_query {
            Some(_) => conn.query_int(&sql).await,
            None => conn.run(&sql).await.map(|()| None),
        };
        let session = begun.map_err(|source| Error::Begin {
            data_source: ds.name.to_string(),
            source,
        })?;
        let mut st = self.lock();
        st.life = Life::Begun;
        st.reset = begin.reset;
        if batch.session_query.is_some() {
            st.session = session;
        }
        push_opened(&mut st, &plan.open);
        Ok(())
    }

    /// SQLite's hooks watch every transaction from its BEGIN; its progress handler is armed for
    /// a deadline. Both in one visit to the connection's worker.
    async fn arm(&self, conn: &mut Conn, plan: &Prepare) -> Result<(), Error> {
        let sqlite = self.dialect() == Dialect::Sqlite;
        let watch = (plan.begin && sqlite).then(|| Arc::new(Watch::default()));
        if !plan.arm && watch.is_none() {
            return Ok(());
        }
        let interrupt = plan.arm.then(|| self.interrupt.clone());
        let armed = conn
            .get_mut()
            .arm(watch.clone(), interrupt)
            .await
            .map_err(|source| self.statement_error(source))?;
        let mut st = self.lock();
        if armed.interrupting {
            st.interrupt = Interrupt::Armed;
        }
        if let (true, Some(watch)) = (armed.watching, watch) {
            conn.watched_by(watch.clone());
            st.watch = Some(watch);
        }
        Ok(())
    }

    /// The savepoints to open (and the session id), in one round trip, when BEGIN did not
    /// carry them.
    async fn open_savepoints(
        &self,
        conn: &mut Conn,
        batch: &Batch,
        plan: &Prepare,
    ) -> Result<(), Error> {
        let sql = batch.sql(None);
        let done = match batch.session_query {
            Some(_) => conn.query_int_control(&sql).await,
            None => conn.run_control(&sql).await.map(|()| None),
        };
        let session = done.map_err(|source| Error::Savepoint {
            data_source: self.data_source.name.to_string(),
            source,
        })?;
        let mut st = self.lock();
        if batch.session_query.is_some() {
            st.session = session;
        }
        push_opened(&mut st, &plan.open);
        Ok(())
    }
}

/// Everything sent before lending, in as few round trips as it can: BEGIN with the
/// savepoints to open and the session id; otherwise the savepoints with the session id.
struct Batch {
    opens: Vec<String>,
    session_query: Option<&'static str>,
}

impl Batch {
    fn new(dialect: Dialect, plan: &Prepare, session: bool) -> Batch {
        Batch {
            opens: plan
                .open
                .iter()
                .map(|(_, _, name)| dialect.savepoint(name))
                .collect(),
            session_query: session.then(|| dialect.session_id()).flatten(),
        }
    }

    fn has_work(&self) -> bool {
        !self.opens.is_empty() || self.session_query.is_some()
    }

    fn sql(&self, first: Option<&str>) -> String {
        first
            .into_iter()
            .map(str::to_owned)
            .chain(self.opens.iter().cloned())
            .chain(self.session_query.map(str::to_owned))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Prepare {
    /// Nothing to send: the connection is lent as it is.
    fn is_empty(&self) -> bool {
        !(self.begin || self.settle || self.session || self.arm)
            && self.cleanup.is_none()
            && self.open.is_empty()
    }
}

/// Records the savepoints a batch opened.
fn push_opened(st: &mut State, open: &[(Weak<Level>, u64, String)]) {
    for (scope, level, name) in open {
        st.savepoints.push(Open {
            level: *level,
            scope: scope.clone(),
            name: name.clone(),
            abandoned: false,
        });
    }
}

/// A connection made ready for a borrower; the slot stays busy until it is lent, or given
/// back when no borrower is left to take it.
pub(super) struct Prepared {
    tx: Arc<Transaction>,
    conn: Option<Conn>,
}

impl Prepared {
    fn lend_to(mut self, frame: &Arc<Frame>) -> Result<Lease, Error> {
        let conn = self.conn.take().expect("lent once");
        let tx = self.tx.clone();
        let mut st = tx.lock();
        if tx.is_ended() || frame.level.is_ended() {
            drop(st);
            tx.give_back(Some(conn));
            return Err(Error::TransactionFinished);
        }
        st.slot = Slot::Lent(frame.clone());
        drop(st);
        Ok(tx.lease(conn, frame))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.tx.give_back(Some(conn));
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
