//! The state of one physical transaction: its connection, savepoint levels, rollback-only
//! marks, hooks, and what happens to the connection when it is abandoned.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::conn::{Control, TxConnection};
use crate::data_source::DataSource;
use crate::dialect::Dialect;
use crate::error::Error;
use crate::hooks::HookList;
use crate::options::{Isolation, TxOptions};

/// How long a connection abandoned inside a transaction may take to roll back before it is
/// closed instead. Short: a statement cancelled half-way can leave the driver waiting for an
/// answer that never comes, and closing is always correct (the server rolls back).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the connection stands, for deciding what to do with it when it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Autocommit: may go back to the pool as it is.
    Idle,
    /// Inside the transaction, between statements.
    Open,
    /// A control statement was sent and its answer not read: the state is unknown.
    InFlight,
}

/// The connection of a transaction, behind the transaction's lock.
pub(crate) struct Slot {
    conn: Option<Box<dyn TxConnection>>,
    state: ConnState,
    reset: Option<&'static str>,
    dialect: Dialect,
    /// Set when the transaction was abandoned while a guard held the connection: a statement
    /// may be half-way, so the connection is closed rather than reused.
    poisoned: Arc<AtomicBool>,
}

impl Slot {
    pub(crate) fn conn(&self) -> Option<&(dyn TxConnection + 'static)> {
        self.conn.as_deref()
    }

    pub(crate) fn conn_mut(&mut self) -> Option<&mut (dyn TxConnection + 'static)> {
        self.conn.as_deref_mut()
    }

    /// Runs a statement inside the open transaction; the transaction stays open either way.
    async fn run_in_transaction(&mut self, control: Control<'_>) -> Result<(), sqlx::Error> {
        let dialect = self.dialect;
        let conn = self.conn.as_deref_mut().ok_or_else(closed)?;
        self.state = ConnState::InFlight;
        let result = conn.run(dialect, control).await;
        self.state = ConnState::Open;
        result
    }

    /// Runs COMMIT or ROLLBACK. On success the connection is clean again; on failure its state
    /// is unknown, and it is closed rather than reused.
    pub(crate) async fn end(&mut self, control: Control<'_>) -> Result<(), sqlx::Error> {
        let dialect = self.dialect;
        let conn = self.conn.as_deref_mut().ok_or_else(closed)?;
        self.state = ConnState::InFlight;
        conn.run(dialect, control).await?;
        self.state = ConnState::Idle;
        if let Some(reset) = self.reset {
            conn.run(dialect, Control::Reset(reset)).await?;
            self.reset = None;
        }
        Ok(())
    }

    /// Takes the connection out, with what is needed to clean it up.
    pub(crate) fn take(&mut self) -> Option<Abandoned> {
        let conn = self.conn.take()?;
        let state = if self.poisoned.load(Ordering::Acquire) {
            ConnState::InFlight
        } else {
            self.state
        };
        Some(Abandoned {
            conn,
            state,
            reset: self.reset.take(),
            dialect: self.dialect,
        })
    }

    /// Gives the connection up now: back to the pool if clean, else rolled back in the
    /// background or closed. Never back to the pool inside a transaction.
    pub(crate) fn release(&mut self) {
        if let Some(abandoned) = self.take() {
            abandoned.dispose();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

fn closed() -> sqlx::Error {
    sqlx::Error::PoolClosed
}

/// A connection given up by its transaction, not yet known to be clean.
pub(crate) struct Abandoned {
    conn: Box<dyn TxConnection>,
    state: ConnState,
    reset: Option<&'static str>,
    dialect: Dialect,
}

impl Abandoned {
    /// Rolls back and resets the connection, then returns it to its pool; closes it instead if
    /// that fails, takes too long, or its state is unknown.
    pub(crate) async fn clean(mut self) {
        let (state, dialect, reset) = (self.state, self.dialect, self.reset);
        if state == ConnState::InFlight {
            self.conn.discard();
            return;
        }
        let cleaned = tokio::time::timeout(CLEANUP_TIMEOUT, async {
            if state == ConnState::Open {
                self.conn.run(dialect, Control::Rollback).await?;
            }
            if let Some(reset) = reset {
                self.conn.run(dialect, Control::Reset(reset)).await?;
            }
            Ok::<_, sqlx::Error>(())
        })
        .await;
        match cleaned {
            Ok(Ok(())) => drop(self.conn),
            Ok(Err(error)) => {
                tracing::warn!(%error, "rollback of an abandoned transaction failed; closing its connection");
                self.conn.discard();
            }
            Err(_) => {
                tracing::warn!(
                    "rollback of an abandoned transaction timed out; closing its connection"
                );
                self.conn.discard();
            }
        }
    }

    /// Cleans up without waiting: at once if nothing needs a round trip, else in a task.
    pub(crate) fn dispose(self) {
        match self.state {
            ConnState::Idle if self.reset.is_none() => drop(self.conn),
            ConnState::InFlight => self.conn.discard(),
            ConnState::Idle | ConnState::Open => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(self.clean());
                }
                Err(_) => self.conn.discard(),
            },
        }
    }
}

/// One physical transaction on one connection.
pub(crate) struct Transaction {
    pub(crate) data_source: Arc<DataSource>,
    pub(crate) isolation: Isolation,
    pub(crate) read_only: bool,
    slot: Arc<tokio::sync::Mutex<Slot>>,
    poisoned: Arc<AtomicBool>,
    finished: AtomicBool,
    /// Savepoints of scopes that were cancelled, to roll back before the next statement.
    abandoned_savepoints: Mutex<Vec<String>>,
    savepoint_seq: AtomicU32,
}

impl Transaction {
    /// Takes a connection and begins a transaction on it. Cancel-safe: if this future is
    /// dropped half-way the connection is closed, never returned inside a transaction.
    pub(crate) async fn begin(
        data_source: Arc<DataSource>,
        options: &TxOptions,
        conn: Box<dyn TxConnection>,
    ) -> Result<Transaction, Error> {
        let dialect = data_source.dialect;
        let plan = dialect.begin(
            options.isolation,
            options.read_only,
            data_source.settings.sqlite_begin_immediate,
        );
        let poisoned = Arc::new(AtomicBool::new(false));
        let mut slot = Slot {
            conn: Some(conn),
            state: ConnState::InFlight,
            reset: plan.reset,
            dialect,
            poisoned: poisoned.clone(),
        };
        let begun = match slot.conn.as_deref_mut() {
            Some(conn) => conn.run(dialect, Control::Begin(&plan)).await,
            None => Err(closed()),
        };
        if let Err(source) = begun {
            // Dropping the slot closes the connection: its state is unknown.
            return Err(Error::Begin {
                data_source: data_source.name.to_string(),
                source,
            });
        }
        slot.state = ConnState::Open;
        Ok(Transaction {
            data_source,
            isolation: options.isolation,
            read_only: options.read_only,
            slot: Arc::new(tokio::sync::Mutex::new(slot)),
            poisoned,
            finished: AtomicBool::new(false),
            abandoned_savepoints: Mutex::new(Vec::new()),
            savepoint_seq: AtomicU32::new(0),
        })
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::Release);
    }

    /// Locks the connection for a statement, waiting while another guard of this transaction
    /// uses it, for at most the pool's acquire timeout.
    pub(crate) async fn lock(&self) -> Result<OwnedMutexGuard<Slot>, Error> {
        if self.is_finished() {
            return Err(Error::TransactionFinished);
        }
        let waited = self.data_source.source.acquire_timeout();
        let mut slot = tokio::time::timeout(waited, self.slot.clone().lock_owned())
            .await
            .map_err(|_| Error::ConnectionBusy {
                data_source: self.data_source.name.to_string(),
                waited,
            })?;
        if self.is_finished() || slot.conn.is_none() {
            return Err(Error::TransactionFinished);
        }
        self.roll_back_abandoned_savepoints(&mut slot).await?;
        Ok(slot)
    }

    /// Ends the transaction: from now on nobody gets its connection. Returns the connection,
    /// or `None` if a guard still holds it (it outlived its scope), in which case the guard
    /// rolls back and releases the connection when it is dropped.
    pub(crate) async fn take_for_end(&self) -> Result<Option<OwnedMutexGuard<Slot>>, Error> {
        let slot = self.slot.clone().try_lock_owned();
        self.finish();
        match slot {
            Ok(mut slot) => {
                self.roll_back_abandoned_savepoints(&mut slot).await?;
                Ok(Some(slot))
            }
            Err(_) => Ok(None),
        }
    }

    /// Ends the transaction without a round trip (its owner was cancelled): the connection is
    /// rolled back in the background, or closed.
    pub(crate) fn abandon(&self) -> Option<Abandoned> {
        self.finish();
        match self.slot.clone().try_lock_owned() {
            Ok(mut slot) => slot.take(),
            Err(_) => {
                // A guard holds the connection, maybe in the middle of a statement: whoever
                // releases it last closes it.
                self.poisoned.store(true, Ordering::Release);
                None
            }
        }
    }

    pub(crate) fn next_savepoint_name(&self) -> String {
        let n = self.savepoint_seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!("tx_sp_{n}")
    }

    pub(crate) async fn savepoint(&self, control: Control<'_>) -> Result<(), Error> {
        let mut slot = self.lock().await?;
        slot.run_in_transaction(control)
            .await
            .map_err(|source| Error::Savepoint {
                data_source: self.data_source.name.to_string(),
                source,
            })
    }

    /// A NESTED scope was cancelled: its savepoint is rolled back before the next statement.
    pub(crate) fn abandon_savepoint(&self, name: String) {
        self.abandoned_savepoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name);
    }

    async fn roll_back_abandoned_savepoints(&self, slot: &mut Slot) -> Result<(), Error> {
        let names = std::mem::take(
            &mut *self
                .abandoned_savepoints
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        // Innermost first: a later savepoint lies inside an earlier one.
        for name in names.iter().rev() {
            for control in [
                Control::RollbackToSavepoint(name),
                Control::ReleaseSavepoint(name),
            ] {
                slot.run_in_transaction(control)
                    .await
                    .map_err(|source| Error::Savepoint {
                        data_source: self.data_source.name.to_string(),
                        source,
                    })?;
            }
        }
        Ok(())
    }
}

/// One level of a transaction: the transaction itself, or a savepoint inside it. Rollback-only
/// marks and hooks belong to a level, so rolling back to a savepoint forgets both.
pub(crate) struct Level {
    pub(crate) tx: Arc<Transaction>,
    pub(crate) parent: Option<Arc<Level>>,
    rollback_only: AtomicBool,
    pub(crate) hooks: HookList,
}

impl Level {
    pub(crate) fn root(tx: Arc<Transaction>) -> Level {
        Level {
            tx,
            parent: None,
            rollback_only: AtomicBool::new(false),
            hooks: HookList::default(),
        }
    }

    pub(crate) fn savepoint(parent: Arc<Level>) -> Level {
        Level {
            tx: parent.tx.clone(),
            parent: Some(parent),
            rollback_only: AtomicBool::new(false),
            hooks: HookList::default(),
        }
    }

    pub(crate) fn is_rollback_only(&self) -> bool {
        self.rollback_only.load(Ordering::Acquire)
            || self.parent.as_ref().is_some_and(|p| p.is_rollback_only())
    }

    pub(crate) fn mark_rollback_only(&self) {
        self.rollback_only.store(true, Ordering::Release);
    }
}

/// What a scope did with the transaction it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Began the physical transaction.
    Owner,
    /// Created a savepoint (NESTED).
    Savepoint,
    /// Joined an existing transaction.
    Participant,
}

/// One scope's view of the current transaction, as carried in the task-local context.
pub(crate) struct Frame {
    pub(crate) level: Arc<Level>,
    pub(crate) role: Role,
    /// The options of the scope this frame belongs to.
    pub(crate) options: TxOptions,
    local_rollback_only: AtomicBool,
}

impl Frame {
    pub(crate) fn new(level: Arc<Level>, role: Role, options: TxOptions) -> Frame {
        Frame {
            level,
            role,
            options,
            local_rollback_only: AtomicBool::new(false),
        }
    }

    pub(crate) fn tx(&self) -> &Arc<Transaction> {
        &self.level.tx
    }

    /// `set_rollback_only()` from this scope's body: the owner of a transaction or savepoint
    /// asks for its own rollback; a participant marks the level it joined.
    pub(crate) fn set_rollback_only(&self) {
        match self.role {
            Role::Participant => self.level.mark_rollback_only(),
            Role::Owner | Role::Savepoint => {
                self.local_rollback_only.store(true, Ordering::Release)
            }
        }
    }

    pub(crate) fn rollback_requested(&self) -> bool {
        self.local_rollback_only.load(Ordering::Acquire)
    }

    pub(crate) fn is_rollback_only(&self) -> bool {
        self.rollback_requested() || self.level.is_rollback_only()
    }
}
