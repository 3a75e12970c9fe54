//! Ending: a NESTED scope's RELEASE or ROLLBACK TO, the owner's COMMIT or ROLLBACK (each sent
//! with the check that the database had not ended or aborted the transaction already, and with
//! what gives the session its settings back), and the cleanup of a connection whose transaction
//! is over.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::Instant;

use super::state::{first_abandoned, Interrupt, Life, Owed, Slot, State};
use super::underneath::Underneath;
use super::{Cleaning, Frame, SavepointFailure, Transaction, CLEANUP_TIMEOUT};
use crate::dialect::Dialect;
use crate::driver::Conn;
use crate::error::Error;
use crate::hooks::RollbackCause;

/// What an end finds in the slot once no control statement runs on it.
enum Taken {
    /// The connection, for the end's statements (and where the savepoint is in the stack).
    Conn(Conn, usize),
    /// No connection, or no savepoint open: nothing to send.
    Nothing,
    /// A connection guard of the scope still holds it: it is rolled back when given back.
    GuardHolds,
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
    /// The database had ended the transaction before its end, and whether it committed what
    /// ran until then cannot be known (MySQL commits implicitly before DDL); what ran after was
    /// rolled back.
    EndedUnderneath(Error),
    /// The scope was dropped before COMMIT was sent: rolled back.
    Abandoned,
}

/// How a NESTED scope's end went.
pub(crate) enum SavepointEnd {
    Done,
    /// Its scope was dropped before `RELEASE` was sent: rolled back to instead.
    Abandoned,
    /// The transaction was over before the savepoint could be ended: rolled back with it.
    Gone,
    GuardOutlived,
    /// `RELEASE` failed (PostgreSQL: a statement inside had failed), so it was rolled back to.
    RolledBackInstead {
        source: sqlx::Error,
        /// The error of the statement that failed first inside it, where a scope returned it.
        cause: Option<String>,
    },
    /// The database had ended the whole transaction (a deadlock rolled it back, DDL committed
    /// it): the savepoint went with it. The error says which, where it is known.
    Underneath(Error),
    Failed(Error),
}
impl Transaction {
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
                    return Some(Taken::Nothing);
                };
                match &st.slot {
                    Slot::Busy | Slot::Acquiring => None,
                    Slot::Lent(holder) if holder.is_within(frame) => {
                        st.savepoints[at].abandoned = true;
                        Some(Taken::GuardHolds)
                    }
                    Slot::Lent(_) => None,
                    Slot::Empty => Some(Taken::Nothing),
                    Slot::Idle(_) => match std::mem::replace(&mut st.slot, Slot::Busy) {
                        Slot::Idle(conn) => Some(Taken::Conn(conn, at)),
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
            Ok(Taken::Nothing) => {
                level.end();
                // Never opened: nothing to send. Or the transaction is already over (its
                // owner ended first): the savepoint went with it.
                return if self.is_ended() {
                    SavepointEnd::Gone
                } else {
                    SavepointEnd::Done
                };
            }
            Ok(Taken::GuardHolds) => {
                level.end();
                self.changed.notify_waiters();
                return SavepointEnd::GuardOutlived;
            }
            Ok(Taken::Conn(conn, at)) => (conn, at),
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
            let settle = st.owed != Owed::Nothing;
            (settle, st.savepoints[at].name.clone(), above)
        };
        if settle {
            self.settle(conn).await?;
        }
        let rolled_back = |end| match end {
            Ok(()) => Ok(SavepointEnd::Done),
            Err(SavepointFailure::Gone(error)) => Ok(SavepointEnd::Underneath(error)),
            Err(SavepointFailure::Broken(error)) => Err(error),
        };
        if !release || abandoned.load(Ordering::Acquire) {
            return match rolled_back(self.roll_back_to(conn, at, &name).await)? {
                SavepointEnd::Done if release => Ok(SavepointEnd::Abandoned),
                end => Ok(end),
            };
        }
        // A NESTED scope inside this one was dropped: its work goes before this one's is kept.
        if let Some((above, inner)) = abandoned_above {
            if let end @ SavepointEnd::Underneath(_) =
                rolled_back(self.roll_back_to(conn, above, &inner).await)?
            {
                return Ok(end);
            }
        }
        match conn.run_control(&dialect.release_savepoint(&name)).await {
            Ok(_) => {
                self.lock().savepoints.truncate(at);
                Ok(SavepointEnd::Done)
            }
            Err(source @ sqlx::Error::Database(_)) => match self.savepoint_failure(source, &name) {
                SavepointFailure::Gone(error) => Ok(SavepointEnd::Underneath(error)),
                // PostgreSQL refuses RELEASE once a statement inside failed: undo the
                // savepoint's work, which also leaves the outer transaction usable.
                SavepointFailure::Broken(error) => {
                    let cause = self.failure_within(at);
                    match self.roll_back_to(conn, at, &name).await {
                        Ok(()) => Ok(SavepointEnd::RolledBackInstead {
                            source: match error {
                                Error::Savepoint { source, .. } => source,
                                _ => unreachable!("a savepoint statement's failure"),
                            },
                            cause,
                        }),
                        Err(SavepointFailure::Gone(error)) => Ok(SavepointEnd::Underneath(error)),
                        Err(SavepointFailure::Broken(_)) => Err(error),
                    }
                }
            },
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
        committing: impl FnMut(bool),
    ) -> Finished {
        self.ended.store(true, Ordering::Release);
        let taken = self
            .when_settled(|st| match std::mem::replace(&mut st.slot, Slot::Busy) {
                Slot::Busy => None,
                Slot::Idle(conn) => Some(Taken::Conn(conn, 0)),
                // Nothing was begun; a connection still on its way is sent back by whoever
                // awaits it (see `lend`).
                empty @ (Slot::Empty | Slot::Acquiring) => {
                    st.slot = empty;
                    Some(Taken::Nothing)
                }
                lent @ Slot::Lent(_) => {
                    st.slot = lent;
                    st.life.close();
                    Some(Taken::GuardHolds)
                }
            })
            .await;
        let mut conn = match taken {
            Ok(Taken::Conn(conn, _)) => conn,
            Ok(Taken::Nothing) => {
                let st = self.lock();
                let began = matches!(st.life, Life::Begun | Life::Broken);
                return match (began, commit) {
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
            Ok(Taken::GuardHolds) => return Finished::GuardOutlived,
            Err(error) => {
                self.lock().life.close();
                return if commit {
                    Finished::NotCommitted(error, RollbackCause::CommitFailed)
                } else {
                    Finished::RolledBack
                };
            }
        };
        let finished = match self
            .close(&mut conn, commit, deadline, abandoned, committing)
            .await
        {
            Ok(finished) => finished,
            Err(error) if commit => Finished::NotCommitted(error, RollbackCause::CommitFailed),
            Err(_) => Finished::RolledBack,
        };
        if let Finished::Unknown(_) = finished {
            // The connection's state is unknown: closed, never reused.
            conn.close();
            self.release(None);
            return finished;
        }
        self.release(Some(conn));
        finished
    }

    /// The statements that end the transaction: the cleanup its savepoints need, then COMMIT
    /// or ROLLBACK with the dialect's check and the session's reset, and what its answer says.
    async fn close(
        &self,
        conn: &mut Conn,
        commit: bool,
        deadline: Option<Instant>,
        abandoned: &AtomicBool,
        mut committing: impl FnMut(bool),
    ) -> Result<Finished, Error> {
        let (settle, still_open, reset) = {
            let st = self.lock();
            let first = st.savepoints.first().map(|open| open.name.clone());
            (st.owed != Owed::Nothing, first, st.reset)
        };
        if self.lock().life != Life::Begun {
            return Ok(if commit {
                Finished::Committed
            } else {
                Finished::RolledBack
            });
        }
        if settle {
            if let Err(error) = self.settle(conn).await {
                // Its state is unknown: closed, never pooled.
                self.rollback_failed(conn, None);
                return Err(error);
            }
        }
        let mut intent = if commit {
            Finished::Committed
        } else {
            Finished::RolledBack
        };
        if commit {
            // The owner's body is over, so a savepoint still open belongs to a NESTED scope
            // that was dropped, or whose rollback has not run yet: its work is undone before
            // anything is committed. (If the transaction is gone, the end finds it so.)
            if let Some(name) = still_open {
                if let Err(SavepointFailure::Broken(error)) =
                    self.roll_back_to(conn, 0, &name).await
                {
                    return Err(error);
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                intent = Finished::TimedOut;
            } else if abandoned.load(Ordering::Acquire) {
                intent = Finished::Abandoned;
            }
        }
        let commit = matches!(intent, Finished::Committed);
        let dialect = self.dialect();
        let end = dialect.end(commit, reset);
        conn.ending();
        let ended = if commit {
            committing(true);
            let ended = conn.run(&end.sql).await;
            committing(false);
            ended
        } else {
            match self.clean_up(conn, &end.sql, Cleaning::Transaction).await {
                Ok(ended) => ended,
                Err(error) => {
                    self.rollback_failed(conn, None);
                    return Err(error);
                }
            }
        };
        let error = match ended {
            Ok(()) => {
                self.closed(None);
                return Ok(intent);
            }
            Err(sqlx::Error::Database(error)) => error,
            Err(source) if commit => {
                return Ok(Finished::Unknown(Error::Commit {
                    outcome_unknown: true,
                    source,
                }))
            }
            Err(source) => return Err(self.rollback_failed(conn, Some(source))),
        };
        let found = dialect.found(end.check, &*error);
        let underneath = self.found(found);
        // Roll back what is open (an aborted transaction, one MySQL began after ending ours, a
        // COMMIT refused), and give the session its settings back.
        match dialect.roll_back_after(found, reset) {
            Some(sql) => match self.clean_up(conn, &sql, Cleaning::Transaction).await {
                Ok(Ok(())) => self.closed(None),
                Ok(Err(source)) => {
                    self.rollback_failed(conn, Some(source));
                }
                Err(_) => {
                    self.rollback_failed(conn, None);
                }
            },
            // Nothing open, nothing to reset (SQLite, after it rolled back by itself).
            None => self.closed(None),
        }
        let source = sqlx::Error::Database(error);
        Ok(match (underneath, commit) {
            (Underneath::Ended, _) => {
                Finished::EndedUnderneath(self.underneath_error(underneath, Some(source)))
            }
            (Underneath::RolledBack, true) => Finished::NotCommitted(
                self.underneath_error(underneath, Some(source)),
                RollbackCause::Aborted,
            ),
            // A COMMIT that failed on its own ended the transaction (PostgreSQL, MySQL) or left
            // it open (SQLite busy); an error left by a statement cut off earlier means COMMIT
            // was never sent. Rolled back either way.
            (Underneath::Intact, true) => Finished::NotCommitted(
                Error::Commit {
                    outcome_unknown: false,
                    source,
                },
                RollbackCause::CommitFailed,
            ),
            (_, false) => intent,
        })
    }

    /// A ROLLBACK that failed or took too long: the connection is closed instead (the server
    /// rolls back what was open).
    fn rollback_failed(&self, conn: &mut Conn, error: Option<sqlx::Error>) -> Error {
        match &error {
            Some(error) => {
                tracing::warn!(target: "transactional", %error, "ROLLBACK failed; closing the connection instead")
            }
            None => {
                tracing::warn!(target: "transactional", "ROLLBACK did not finish in time; closing the connection instead")
            }
        }
        conn.set_clean(false);
        self.lock().life = Life::Broken;
        self.broken()
    }

    /// The transaction's end statements ran: nothing is open on its connection, and the
    /// session has its settings back (`reset`: what is still to send, if anything).
    fn closed(&self, reset: Option<&'static str>) {
        let mut st = self.lock();
        st.life = Life::Closing { open: false };
        st.reset = reset;
    }

    /// Returns a connection whose transaction is over to its pool, clean, or closes it: what
    /// its end could not send (a ROLLBACK, a reset) is sent first, in a task.
    fn release(&self, conn: Option<Conn>) {
        let mut st = self.lock();
        st.slot = Slot::Empty;
        st.life.close();
        let cleanup = Cleanup::of(&st, self.dialect());
        let broken = st.life == Life::Broken;
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

/// What a connection needs once its transaction is over, before it can go back to the pool.
pub(super) struct Cleanup {
    rollback: Option<&'static str>,
    reset: Option<&'static str>,
    disarm: bool,
}

impl Cleanup {
    pub(super) fn of(st: &State, dialect: Dialect) -> Cleanup {
        Cleanup {
            rollback: st.life.is_open().then(|| dialect.rollback()),
            reset: st.reset,
            disarm: st.interrupt == Interrupt::Armed,
        }
    }

    /// Cleans `conn` up and returns it to its pool: at once if nothing needs a round trip,
    /// else in a task; closes it if that fails or takes too long.
    pub(super) fn spawn(self, mut conn: Conn) {
        if self.rollback.is_none() && self.reset.is_none() && !self.disarm {
            conn.set_clean(true);
            return;
        }
        conn.set_clean(false);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let cleaned = tokio::time::timeout(CLEANUP_TIMEOUT, async {
                    if let Some(rollback) = self.rollback {
                        conn.ending();
                        conn.run_control(rollback).await?;
                    }
                    if let Some(reset) = self.reset {
                        conn.run_control(reset).await?;
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
