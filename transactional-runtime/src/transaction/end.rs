//! Ending: a NESTED scope's RELEASE or ROLLBACK TO, the owner's COMMIT (with the check that
//! the server had not already rolled back) or ROLLBACK, and the cleanup of a connection whose
//! transaction is over.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::time::Instant;

use super::{first_abandoned, Frame, Slot, State, Transaction, CLEANUP_TIMEOUT};
use crate::dialect::{AbortCheck, Dialect};
use crate::driver::Conn;
use crate::error::Error;
use crate::hooks::RollbackCause;

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
    /// The transaction was over before the savepoint could be ended: rolled back with it.
    Gone,
    GuardOutlived,
    /// `RELEASE` failed (PostgreSQL: a statement inside had failed), so it was rolled back to.
    RolledBackInstead(sqlx::Error),
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
                    return Some(None);
                };
                match &st.slot {
                    Slot::Busy | Slot::Acquiring => None,
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
                // Never opened: nothing to send. Or the transaction is already over (its
                // owner ended first): the savepoint went with it.
                return if self.is_ended() {
                    SavepointEnd::Gone
                } else {
                    SavepointEnd::Done
                };
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
        committing: impl FnMut(bool),
    ) -> Finished {
        self.ended.store(true, Ordering::Release);
        let taken = self
            .when_settled(|st| match std::mem::replace(&mut st.slot, Slot::Busy) {
                Slot::Busy => None,
                Slot::Idle(conn) => Some(Ok(Some(conn))),
                // Nothing was begun; a connection still on its way is sent back by whoever
                // awaits it (see `lend`).
                empty @ (Slot::Empty | Slot::Acquiring) => {
                    st.slot = empty;
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
        mut committing: impl FnMut(bool),
    ) -> Result<(Finished, bool), Error> {
        let dialect = self.dialect();
        let (settle, still_open) = {
            let st = self.lock();
            let first = st.savepoints.first().map(|open| open.name.clone());
            (st.interrupt_fired, first)
        };
        if settle {
            self.settle(conn).await?;
        }
        // The owner's body is over, so a savepoint still open belongs to a NESTED scope that
        // was dropped, or whose rollback has not run yet: its work is undone before anything
        // is committed.
        if let Some(name) = still_open {
            self.roll_back_to(conn, 0, &name).await?;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok((Finished::TimedOut, true));
        }
        if abandoned.load(Ordering::Acquire) {
            return Ok((Finished::Abandoned, true));
        }
        let (sql, check) = dialect.commit();
        committing(true);
        let committed = conn.run(sql).await;
        committing(false);
        let error = match committed {
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
            AbortCheck::ProbeFails {
                states,
                not_open,
                mentions,
            } => {
                let aborted = code.as_deref().is_some_and(|c| states.contains(&c))
                    && mentions.is_none_or(|m| error.message().contains(m));
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

/// What a connection needs once its transaction is over, before it can go back to the pool.
pub(super) struct Cleanup {
    rollback: Option<&'static str>,
    reset: Option<&'static str>,
    disarm: bool,
}

impl Cleanup {
    pub(super) fn of(st: &State, dialect: Dialect) -> Cleanup {
        Cleanup {
            rollback: st.begun.then(|| dialect.rollback()),
            reset: st.reset,
            disarm: st.interrupt_armed,
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
