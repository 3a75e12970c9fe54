//! Closing: a NESTED scope's RELEASE or ROLLBACK TO, the owner's COMMIT or ROLLBACK, each sent
//! with the check that the database had not ended or aborted the transaction already, and with
//! what gives the session its settings back. What the statements found is returned as a value
//! ([`TxClosed`], [`SavepointClosed`]) for the scope's end to turn into its outcome.

use tokio::time::Instant;

use super::state::{first_abandoned, Life, Owed, Slot};
use super::underneath::Underneath;
use super::{Cleaning, Cleanup, Frame, SavepointFailure, Transaction};
use crate::detach::Detached;
use crate::driver::Conn;
use crate::error::Error;
use crate::hooks::RollbackCause;
use crate::trace;

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
pub(crate) enum TxClosed {
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
pub(crate) enum SavepointClosed {
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

/// What the owner's end asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    /// COMMIT, unless the deadline has passed or the caller has gone by the time it would be
    /// sent.
    Commit {
        deadline: Option<Instant>,
    },
    Rollback,
}

impl Transaction {
    /// Ends a NESTED scope's savepoint: `RELEASE` (keep its work) or `ROLLBACK TO` (undo it).
    /// A savepoint never opened (the scope never used the connection) needs no statement.
    ///
    /// `detached` is read just before `RELEASE` is sent: a scope whose caller has gone by then
    /// is rolled back to instead.
    pub(crate) async fn end_savepoint(
        &self,
        frame: &Frame,
        release: bool,
        detached: &Detached,
    ) -> SavepointClosed {
        let level = &frame.level;
        let (mut conn, at) = match self.take_for_savepoint(frame).await {
            Ok(Taken::Conn(conn, at)) => (conn, at),
            Ok(Taken::Nothing) => {
                level.end();
                // Never opened: nothing to send. Or the transaction is already over (its
                // owner ended first): the savepoint went with it.
                return if self.is_ended() {
                    SavepointClosed::Gone
                } else {
                    SavepointClosed::Done
                };
            }
            Ok(Taken::GuardHolds) => {
                level.end();
                self.changed.notify_waiters();
                return SavepointClosed::GuardOutlived;
            }
            Err(error) => {
                level.end();
                return SavepointClosed::Failed(error);
            }
        };
        let closed = self.close_savepoint(&mut conn, at, release, detached).await;
        level.end();
        match closed {
            Ok(closed) => {
                self.give_back(Some(conn));
                closed
            }
            Err(error) => SavepointClosed::Failed(self.fail(conn, error)),
        }
    }

    /// Takes the connection for the end of `frame`'s savepoint, once no control statement
    /// runs on it.
    async fn take_for_savepoint(&self, frame: &Frame) -> Result<Taken, Error> {
        let level = &frame.level;
        self.when_settled(|st| {
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
                    _ => unreachable!("matched as idle under the same lock"),
                },
            }
        })
        .await
    }

    async fn close_savepoint(
        &self,
        conn: &mut Conn,
        at: usize,
        release: bool,
        detached: &Detached,
    ) -> Result<SavepointClosed, Error> {
        let (owed, name, abandoned_above) = {
            let st = self.lock();
            let above = first_abandoned(&st.savepoints[at + 1..]).map(|(i, n)| (at + 1 + i, n));
            (st.owed, st.savepoints[at].name.clone(), above)
        };
        if owed != Owed::Nothing {
            self.settle(conn).await?;
        }
        if !release || detached.is_set() {
            return match rolled_back(self.roll_back_to(conn, at, &name).await)? {
                SavepointClosed::Done if release => Ok(SavepointClosed::Abandoned),
                closed => Ok(closed),
            };
        }
        // A NESTED scope inside this one was dropped: its work goes before this one's is kept.
        if let Some((above, inner)) = abandoned_above {
            if let closed @ SavepointClosed::Underneath(_) =
                rolled_back(self.roll_back_to(conn, above, &inner).await)?
            {
                return Ok(closed);
            }
        }
        match conn
            .run_control(&self.dialect().release_savepoint(&name))
            .await
        {
            Ok(_) => {
                self.lock().savepoints.truncate(at);
                Ok(SavepointClosed::Done)
            }
            Err(source @ sqlx::Error::Database(_)) => {
                self.release_refused(conn, at, &name, source).await
            }
            Err(source) => Err(self.statement_error(source)),
        }
    }

    /// RELEASE was refused: the transaction is gone, or (PostgreSQL, once a statement inside
    /// failed) the savepoint's work is undone, which also leaves the outer transaction usable.
    async fn release_refused(
        &self,
        conn: &mut Conn,
        at: usize,
        name: &str,
        source: sqlx::Error,
    ) -> Result<SavepointClosed, Error> {
        let source = match self.savepoint_failure(source, name) {
            SavepointFailure::Gone(error) => return Ok(SavepointClosed::Underneath(error)),
            SavepointFailure::Broken(Error::Savepoint { source, .. }) => source,
            SavepointFailure::Broken(error) => return Err(error),
        };
        let cause = self.failure_within(at);
        match self.roll_back_to(conn, at, name).await {
            Ok(()) => Ok(SavepointClosed::RolledBackInstead { source, cause }),
            Err(SavepointFailure::Gone(error)) => Ok(SavepointClosed::Underneath(error)),
            Err(SavepointFailure::Broken(_)) => Err(self.statement_error(source)),
        }
    }

    /// Ends the transaction as `intent` asks (COMMIT unless its deadline has passed or its
    /// caller has gone: `detached`), then returns the connection to its pool. Nothing is lent
    /// from now on.
    pub(crate) async fn finish(&self, intent: Intent, detached: &Detached) -> TxClosed {
        self.ended.store(true, std::sync::atomic::Ordering::Release);
        let commit = matches!(intent, Intent::Commit { .. });
        let mut conn = match self.take_for_end().await {
            Ok(Taken::Conn(conn, _)) => conn,
            Ok(Taken::Nothing) => return self.closed_without_connection(commit),
            Ok(Taken::GuardHolds) => return TxClosed::GuardOutlived,
            Err(error) => {
                self.lock().life.close();
                return match commit {
                    true => TxClosed::NotCommitted(error, RollbackCause::CommitFailed),
                    false => TxClosed::RolledBack,
                };
            }
        };
        let closed = match self.close(&mut conn, intent, detached).await {
            Ok(closed) => closed,
            Err(error) if commit => TxClosed::NotCommitted(error, RollbackCause::CommitFailed),
            Err(_) => TxClosed::RolledBack,
        };
        if let TxClosed::Unknown(_) = closed {
            // The connection's state is unknown: closed, never reused.
            conn.close();
            self.release(None);
            return closed;
        }
        self.release(Some(conn));
        closed
    }

    /// Takes the connection for the owner's end, once no control statement runs on it.
    async fn take_for_end(&self) -> Result<Taken, Error> {
        self.when_settled(|st| match std::mem::replace(&mut st.slot, Slot::Busy) {
            Slot::Busy => None,
            Slot::Idle(conn) => Some(Taken::Conn(conn, 0)),
            // Nothing was begun; a connection still on its way is sent back by whoever awaits
            // it (see `lend`).
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
        .await
    }

    /// The end of a transaction that holds no connection.
    fn closed_without_connection(&self, commit: bool) -> TxClosed {
        match (self.lock().life, commit) {
            // Its connection was closed: the server rolled it back.
            (Life::Broken | Life::Begun, true) => {
                TxClosed::NotCommitted(self.broken(), RollbackCause::CommitFailed)
            }
            // Never began: nothing to send.
            (_, true) => TxClosed::Committed,
            (_, false) => TxClosed::RolledBack,
        }
    }

    /// The statements that end the transaction: the cleanup its savepoints need, then COMMIT
    /// or ROLLBACK with the dialect's check and the session's reset, and what its answer says.
    async fn close(
        &self,
        conn: &mut Conn,
        intent: Intent,
        detached: &Detached,
    ) -> Result<TxClosed, Error> {
        let (owed, still_open, life) = {
            let st = self.lock();
            let first = st.savepoints.first().map(|open| open.name.clone());
            (st.owed, first, st.life)
        };
        if life != Life::Begun {
            return Ok(match intent {
                Intent::Commit { .. } => TxClosed::Committed,
                Intent::Rollback => TxClosed::RolledBack,
            });
        }
        if owed != Owed::Nothing {
            if let Err(error) = self.settle(conn).await {
                // Its state is unknown: closed, never pooled.
                self.rollback_failed(conn, None);
                return Err(error);
            }
        }
        let closing = match intent {
            Intent::Commit { deadline } => {
                // The owner's body is over, so a savepoint still open belongs to a NESTED scope
                // that was dropped, or whose rollback has not run yet: its work is undone
                // before anything is committed. (If the transaction is gone, the end finds it
                // so.)
                if let Some(name) = still_open {
                    if let Err(SavepointFailure::Broken(error)) =
                        self.roll_back_to(conn, 0, &name).await
                    {
                        return Err(error);
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    TxClosed::TimedOut
                } else if detached.is_set() {
                    TxClosed::Abandoned
                } else {
                    TxClosed::Committed
                }
            }
            Intent::Rollback => TxClosed::RolledBack,
        };
        self.send_end(conn, closing).await
    }

    /// Sends COMMIT (for `closing`, [`TxClosed::Committed`]) or ROLLBACK, each with the
    /// dialect's check and the session's reset.
    async fn send_end(&self, conn: &mut Conn, closing: TxClosed) -> Result<TxClosed, Error> {
        let commit = matches!(closing, TxClosed::Committed);
        let dialect = self.dialect();
        let reset = self.lock().reset;
        let end = dialect.end(commit, reset);
        conn.ending();
        let ended = if commit {
            self.lock().life = Life::Committing;
            let answered = match self.tracks_position().then(|| dialect.commit_position()) {
                // The position after the commit rides in COMMIT's round trip: read-only
                // transactions then wait for a replica to have replayed it.
                Some(Some(position_sql)) => {
                    let replicas = &self.data_source.replicas;
                    match conn
                        .query_int(&format!("{}; {position_sql}", end.sql))
                        .await
                    {
                        Ok(position) => {
                            if let Some(position) = position {
                                replicas.committed(position);
                            }
                            Ok(())
                        }
                        // The statements before the position's ran, COMMIT included.
                        Err(sqlx::Error::Database(error))
                            if dialect.position_unreadable(&*error) =>
                        {
                            replicas.positions_unreadable(&self.data_source.name);
                            Ok(())
                        }
                        Err(error) => Err(error),
                    }
                }
                _ => conn.run(&end.sql).await,
            };
            // Answered, or not (an unknown outcome): no longer waiting for it.
            self.lock().life = Life::Begun;
            answered
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
                self.closed();
                return Ok(closing);
            }
            Err(sqlx::Error::Database(error)) => error,
            Err(source) if commit => {
                return Ok(TxClosed::Unknown(Error::Commit {
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
                Ok(Ok(())) => self.closed(),
                Ok(Err(source)) => {
                    self.rollback_failed(conn, Some(source));
                }
                Err(_) => {
                    self.rollback_failed(conn, None);
                }
            },
            // Nothing open, nothing to reset (SQLite, after it rolled back by itself).
            None => self.closed(),
        }
        Ok(self.refused(underneath, closing, sqlx::Error::Database(error)))
    }

    /// Whether its COMMIT reads the primary's position after it: a read-write transaction on
    /// the primary of a data source with replicas.
    fn tracks_position(&self) -> bool {
        !self.options.read_only && self.data_source.replicas.track() && !self.on_replica()
    }

    /// What a COMMIT or ROLLBACK the database answered with `source` means, given what the
    /// end found the database had done to the transaction.
    fn refused(&self, underneath: Underneath, closing: TxClosed, source: sqlx::Error) -> TxClosed {
        let commit = matches!(closing, TxClosed::Committed);
        match (underneath, commit) {
            (Underneath::Ended, _) => {
                TxClosed::EndedUnderneath(self.underneath_error(underneath, Some(source)))
            }
            (Underneath::RolledBack, true) => TxClosed::NotCommitted(
                self.underneath_error(underneath, Some(source)),
                RollbackCause::Aborted,
            ),
            // A COMMIT that failed on its own ended the transaction (PostgreSQL, MySQL) or left
            // it open (SQLite busy); an error left by a statement cut off earlier means COMMIT
            // was never sent. Rolled back either way.
            (Underneath::Intact, true) => TxClosed::NotCommitted(
                Error::Commit {
                    outcome_unknown: false,
                    source,
                },
                RollbackCause::CommitFailed,
            ),
            (_, false) => closing,
        }
    }

    /// Whether COMMIT has been sent and not answered yet.
    pub(crate) fn is_committing(&self) -> bool {
        self.lock().life == Life::Committing
    }

    /// A ROLLBACK that failed or took too long: the connection is closed instead (the server
    /// rolls back what was open).
    fn rollback_failed(&self, conn: &mut Conn, error: Option<sqlx::Error>) -> Error {
        match &error {
            Some(error) => {
                tracing::warn!(target: trace::TARGET, %error, "ROLLBACK failed; closing the connection instead")
            }
            None => {
                tracing::warn!(target: trace::TARGET, "ROLLBACK did not finish in time; closing the connection instead")
            }
        }
        conn.set_clean(false);
        self.lock().life = Life::Broken;
        self.broken()
    }

    /// The transaction's end statements ran: nothing is open on its connection, and the
    /// session has its settings back.
    fn closed(&self) {
        let mut st = self.lock();
        st.life = Life::Closing { open: false };
        st.reset = None;
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

/// A savepoint rolled back to: done, gone with the transaction, or a connection given up.
fn rolled_back(closed: Result<(), SavepointFailure>) -> Result<SavepointClosed, Error> {
    match closed {
        Ok(()) => Ok(SavepointClosed::Done),
        Err(SavepointFailure::Gone(error)) => Ok(SavepointClosed::Underneath(error)),
        Err(SavepointFailure::Broken(error)) => Err(error),
    }
}
