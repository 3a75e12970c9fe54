//! The end of a scope: from how its body exited to a verdict, then COMMIT, ROLLBACK, RELEASE or
//! ROLLBACK TO, the rollback-only mark of a joined transaction, the events and the hooks.
//! Nothing here is generic over the body: the end is one boxed `'static` future
//! (`end_future`), so it can move to a task of its own when the scope is dropped half-way and
//! finish there, in order (see `detach`).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::attempt::AttemptState;
use super::end_future::{EndFuture, EndPhase, Phase, Report, RunningEnd};
use super::end_hooks::BeforeCommit;
use super::start::{Running, What};
use crate::context::Context;
use crate::detach::{Detachable, Detached};
use crate::error::Error;
use crate::events::EventKind;
use crate::hooks::{Ending, RollbackCause};
use crate::inspect::DatabaseFailure;
use crate::options::TxOptions;
use crate::trace;
use crate::transaction::{Frame, Intent, Role, SavepointClosed, TxClosed};

/// How a scope's body exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    Ok,
    /// `commits`: a `no_rollback_for` rule says this error commits.
    Err {
        commits: bool,
    },
    Panic,
    Timeout,
    /// The scope's future was dropped.
    Cancelled,
}

impl Exit {
    /// Whether the body failed: a joined scope marks its transaction rollback-only.
    fn fails(self) -> bool {
        matches!(
            self,
            Exit::Err { commits: false } | Exit::Panic | Exit::Timeout
        )
    }
}

/// What the end decides for its transaction or savepoint.
enum Verdict {
    Commit,
    Rollback(RollbackCause, Option<Error>),
}

/// What an end needs, owned, so that it can finish on a task of its own.
pub(super) struct End {
    pub(super) frame: Arc<Frame>,
    pub(super) outer: Context,
    pub(super) body_ctx: Context,
    pub(super) options: TxOptions,
    exit: Exit,
    pub(super) deadline: Option<Instant>,
    suspended: bool,
    phase: Arc<EndPhase>,
    pub(super) detached: Arc<Detached>,
    pub(super) span: Span,
    /// The body's error, as text (see `trace`).
    detail: Option<String>,
    /// One attempt of a retried scope.
    attempt: Option<AttemptState>,
}

impl Running {
    /// The end of a scope whose body exited (or ran past its deadline, or panicked). A
    /// statement cut off at the deadline is being cancelled (`Running::interrupt`): the
    /// transaction's end, or the next user of its connection, waits for the cancel to land.
    pub(super) fn end(self, exit: Exit) -> EndFuture {
        let timeout = (exit == Exit::Timeout).then(|| super::timeout_error(&self.options));
        let frame = match &self.what {
            What::Mocked => return EndFuture::ready(&self, timeout),
            What::Without {
                data_source,
                suspended,
            } => {
                if *suspended {
                    data_source.emit(&self.options, &self.span, EventKind::Resumed);
                }
                return EndFuture::ready(&self, timeout);
            }
            What::Tx { frame, .. } => frame.clone(),
        };
        if let Some(failure) = &self.failure {
            // Kept while the level's work stands: it explains (and is quoted by) an end that
            // finds the transaction ended by the database.
            frame.tx().note_failure(frame.level.id, failure.clone());
        }
        if frame.role == Role::Participant {
            // A joined scope ends without a statement: its failure marks the transaction.
            if exit.fails() {
                frame.level.mark_rollback_only();
            }
            trace::joined_end(&self.span, exit.fails());
            return EndFuture::ready(&self, timeout);
        }
        let phase = match exit {
            Exit::Timeout => Phase::RollingBackAfterTimeout,
            _ => Phase::Deciding,
        };
        let end = End::new(&self, exit, EndPhase::new(phase), Arc::default());
        let (phase, detached) = (end.phase.clone(), end.detached.clone());
        let work: BoxFuture<'static, Report> = match frame.role {
            Role::Savepoint => Box::pin(end.savepoint()),
            _ => Box::pin(end.owner()),
        };
        EndFuture::Running(RunningEnd::new(work, phase, detached, &self))
    }

    /// The scope's future was dropped while its body ran (the body is already dropped).
    pub(super) fn abandon(self) {
        trace::cancelled(&self.span);
        trace::record_elapsed(&self.span, self.started);
        let frame = match &self.what {
            What::Mocked => return,
            What::Without {
                data_source,
                suspended,
            } => {
                if *suspended {
                    data_source.emit(&self.options, &self.span, EventKind::Resumed);
                }
                return;
            }
            What::Tx { frame, .. } => frame.clone(),
        };
        match frame.role {
            Role::Participant => {
                frame.level.mark_rollback_only();
                trace::joined_end(&self.span, true);
            }
            Role::Savepoint => {
                frame.tx().abandon_savepoint(&frame.level);
                frame.tx().data_source.emit_with(
                    &self.options,
                    &self.span,
                    EventKind::RolledBackToSavepoint {
                        savepoint: frame.level.savepoint.clone().unwrap_or_default(),
                    },
                    Some(RollbackCause::Cancelled),
                    None,
                );
            }
            Role::Owner => {
                let phase = EndPhase::new(Phase::Deciding);
                let mut end =
                    End::new(&self, Exit::Cancelled, phase, Arc::new(Detached::already()));
                (end.deadline, end.detail, end.attempt) = (None, None, None);
                let span = self.span.clone();
                Detachable::new(end.owner().instrument(span)).detach();
            }
        }
    }
}

impl End {
    fn new(running: &Running, exit: Exit, phase: Arc<EndPhase>, detached: Arc<Detached>) -> End {
        let (frame, suspended) = match &running.what {
            What::Tx { frame, suspended } => (frame.clone(), *suspended),
            _ => unreachable!("only a scope with a transaction has an end of its own"),
        };
        End {
            frame,
            outer: running.outer.clone(),
            body_ctx: running.body_ctx.clone(),
            options: running.options.clone(),
            exit,
            deadline: running.deadline.as_ref().map(|(at, _)| *at),
            suspended,
            phase,
            detached,
            span: running.span.clone(),
            detail: running.detail.clone(),
            attempt: running.attempt.clone(),
        }
    }

    fn emit(&self, kind: EventKind) {
        self.frame
            .tx()
            .data_source
            .emit(&self.options, &self.span, kind);
    }

    fn timeout_error(&self) -> Error {
        super::timeout_error(&self.options)
    }

    fn verdict(&self) -> Verdict {
        let frame = &self.frame;
        match self.exit {
            Exit::Ok if frame.is_rollback_only() => rollback_only(frame),
            Exit::Ok => Verdict::Commit,
            Exit::Err { commits: true } if !frame.is_rollback_only() => Verdict::Commit,
            Exit::Err { .. } => Verdict::Rollback(RollbackCause::Error, None),
            Exit::Panic => Verdict::Rollback(RollbackCause::Panic, None),
            Exit::Timeout => Verdict::Rollback(RollbackCause::Timeout, Some(self.timeout_error())),
            Exit::Cancelled => Verdict::Rollback(RollbackCause::Cancelled, None),
        }
    }

    /// The end of a scope that began its transaction.
    async fn owner(self) -> Report {
        let (verdict, panic) = match self.verdict() {
            Verdict::Commit => self.before_commit_verdict().await,
            rollback => (rollback, None),
        };
        let (ending, error) = self.close(verdict).await;
        let detail = match ending {
            Ending::RolledBack(RollbackCause::Error | RollbackCause::Panic) => {
                self.detail.as_deref()
            }
            _ => None,
        };
        let kind = match ending {
            Ending::Committed => EventKind::Committed,
            Ending::RolledBack(cause) => EventKind::RolledBack { cause },
            Ending::Unknown => EventKind::CommitFailed,
        };
        let data_source = &self.frame.tx().data_source;
        data_source.emit_with(&self.options, &self.span, kind, None, detail);
        if self.suspended {
            self.emit(EventKind::Resumed);
        }
        let again = match (&self.attempt, ending) {
            (Some(attempt), Ending::RolledBack(cause)) => {
                attempt.again(cause == RollbackCause::Error, error.as_ref())
            }
            _ => false,
        };
        if again {
            // Another attempt follows: this one's after-* hooks are discarded.
            trace::retrying(&self.span);
            data_source.usage.retrying();
            drop(self.frame.level.hooks.take());
        } else {
            self.phase.set(Phase::Hooks);
            self.after(&self.frame.level, ending).await;
        }
        Report {
            error,
            panic,
            again,
        }
    }

    /// The verdict of a scope about to commit, once its before-commit hooks have run (and
    /// the panic of one, resumed once the transaction has rolled back).
    async fn before_commit_verdict(&self) -> (Verdict, Option<Box<dyn std::any::Any + Send>>) {
        let frame = &self.frame;
        let verdict = match self.before_commit().await {
            Ok(()) if frame.is_rollback_only() => rollback_only(frame),
            Ok(()) => Verdict::Commit,
            Err(BeforeCommit::Failed(error)) => {
                // Its database error, as a body's, explains a transaction the database ended
                // (a deadlock in the hook).
                if let Some(failure) = DatabaseFailure::find(&error) {
                    frame.tx().note_failure(frame.level.id, failure);
                }
                Verdict::Rollback(RollbackCause::BeforeCommitFailed, Some(error))
            }
            Err(BeforeCommit::Panicked(payload)) => {
                return (Verdict::Rollback(RollbackCause::Panic, None), Some(payload))
            }
            Err(BeforeCommit::TimedOut) => {
                self.phase.set(Phase::RollingBackAfterTimeout);
                Verdict::Rollback(RollbackCause::Timeout, Some(self.timeout_error()))
            }
        };
        (verdict, None)
    }

    /// Ends the transaction as `verdict` says: how it ended, and the error for the caller.
    async fn close(&self, verdict: Verdict) -> (Ending, Option<Error>) {
        let tx = self.frame.tx();
        let guard_outlived = || {
            (
                Ending::RolledBack(RollbackCause::GuardOutlivedScope),
                Some(Error::GuardOutlivedScope {
                    scope: self.options.name.clone(),
                }),
            )
        };
        let (cause, error) = match verdict {
            Verdict::Rollback(cause, error) => (cause, error),
            Verdict::Commit => {
                let intent = Intent::Commit {
                    deadline: self.deadline,
                };
                return match tx.finish(intent, &self.detached).await {
                    TxClosed::Committed => (Ending::Committed, None),
                    TxClosed::NotCommitted(error, cause) => {
                        (Ending::RolledBack(cause), Some(error))
                    }
                    TxClosed::TimedOut => (
                        Ending::RolledBack(RollbackCause::Timeout),
                        Some(self.timeout_error()),
                    ),
                    TxClosed::GuardOutlived => guard_outlived(),
                    TxClosed::Unknown(error) | TxClosed::EndedUnderneath(error) => {
                        (Ending::Unknown, Some(error))
                    }
                    TxClosed::Abandoned => (Ending::RolledBack(RollbackCause::Cancelled), None),
                    TxClosed::RolledBack => (Ending::RolledBack(RollbackCause::CommitFailed), None),
                };
            }
        };
        match tx.finish(Intent::Rollback, &self.detached).await {
            TxClosed::GuardOutlived => guard_outlived(),
            TxClosed::EndedUnderneath(ended) => {
                (Ending::Unknown, self.unknown_instead(error, ended))
            }
            _ => (Ending::RolledBack(cause), error),
        }
    }

    /// The end of a NESTED scope: RELEASE its savepoint, or roll back to it.
    async fn savepoint(self) -> Report {
        let level = &self.frame.level;
        let mut verdict = self.verdict();
        if let Verdict::Rollback(..) = verdict {
            // Known before anything is awaited: the levels around it must not go on (or
            // commit) with this savepoint's work, even if this end is delayed.
            self.frame.tx().doom_savepoint(level);
        }
        if let Verdict::Commit = verdict {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                verdict = Verdict::Rollback(RollbackCause::Timeout, Some(self.timeout_error()));
            }
        }
        let (release, cause, error) = match verdict {
            Verdict::Commit => (true, None, None),
            Verdict::Rollback(cause, error) => (false, Some(cause), error),
        };
        let closed = self
            .frame
            .tx()
            .end_savepoint(&self.frame, release, &self.detached)
            .await;
        if let (SavepointClosed::Done, true) = (&closed, release) {
            self.emit(EventKind::SavepointReleased {
                savepoint: level.savepoint.clone().unwrap_or_default(),
            });
            if self.frame.stands_for_commit {
                self.capture_after_commit(level);
            }
            let parent = level
                .parent
                .as_ref()
                .expect("a savepoint has an enclosing level");
            level.hooks.move_into(&parent.hooks);
            return Report::default();
        }
        let (cause, error) = self.rolled_back_to(closed, cause, error);
        self.after_rollback_to(cause, error)
    }

    /// What a savepoint rolled back to (or gone) means for the scope: the cause of its rollback
    /// and the error for the caller.
    fn rolled_back_to(
        &self,
        closed: SavepointClosed,
        cause: Option<RollbackCause>,
        error: Option<Error>,
    ) -> (Option<RollbackCause>, Option<Error>) {
        let parent = self.frame.level.parent.as_ref();
        let parent = parent.expect("a savepoint has an enclosing level");
        match closed {
            SavepointClosed::Done | SavepointClosed::Abandoned | SavepointClosed::Gone => {
                (cause, error)
            }
            SavepointClosed::GuardOutlived => (
                cause,
                Some(Error::GuardOutlivedScope {
                    scope: self.options.name.clone(),
                }),
            ),
            SavepointClosed::RolledBackInstead {
                source,
                cause: first,
            } => (
                Some(RollbackCause::Aborted),
                Some(Error::Aborted {
                    data_source: self.frame.tx().data_source.name.to_string(),
                    cause: first,
                    source: Some(source),
                }),
            ),
            SavepointClosed::Underneath(ended) => {
                // The whole transaction is gone: nothing around this scope may commit.
                parent.mark_rollback_only();
                (
                    Some(RollbackCause::Aborted),
                    self.unknown_instead(error, ended),
                )
            }
            SavepointClosed::Failed(failed) => {
                tracing::error!(target: trace::TARGET, parent: &self.span, error = %failed, "ending a savepoint failed; the enclosing transaction is marked rollback-only");
                parent.mark_rollback_only();
                let cause = cause.or(Some(RollbackCause::CommitFailed));
                match (self.exit, error) {
                    (Exit::Ok, None) => (cause, Some(failed)),
                    (_, error) => (cause, error),
                }
            }
        }
    }

    /// A savepoint rolled back to: its hooks (and those of savepoints inside it) are
    /// discarded, a retried attempt decides, the event is emitted.
    fn after_rollback_to(&self, cause: Option<RollbackCause>, error: Option<Error>) -> Report {
        let level = &self.frame.level;
        drop(level.hooks.take());
        // One attempt of a retried scope standing for a transaction of its own (under
        // `testing::rollback_after`): the next attempt nests a savepoint of its own.
        let again = self.attempt.as_ref().is_some_and(|attempt| {
            attempt.again(cause == Some(RollbackCause::Error), error.as_ref())
        });
        if again {
            trace::retrying(&self.span);
            self.frame.tx().data_source.usage.retrying();
        }
        let detail = match cause {
            Some(RollbackCause::Error | RollbackCause::Panic) => self.detail.as_deref(),
            _ => None,
        };
        self.frame.tx().data_source.emit_with(
            &self.options,
            &self.span,
            EventKind::RolledBackToSavepoint {
                savepoint: level.savepoint.clone().unwrap_or_default(),
            },
            cause,
            detail,
        );
        Report {
            error,
            panic: None,
            again,
        }
    }

    /// The error a scope that was rolling back returns when the database had ended its
    /// transaction and may have committed part of it: the body's own error or panic stands;
    /// an `Ok`, or the library's own error (which would say nothing was committed), gives way
    /// to `ended`.
    fn unknown_instead(&self, error: Option<Error>, ended: Error) -> Option<Error> {
        let body_failed = matches!(self.exit, Exit::Err { .. } | Exit::Panic | Exit::Cancelled);
        if error.is_none() && body_failed {
            None
        } else {
            Some(ended)
        }
    }
}

/// The scope asked for the rollback itself: its `Ok` stands. A participant marked it: the
/// caller must not believe the work was saved.
fn rollback_only(frame: &Frame) -> Verdict {
    if frame.rollback_requested() {
        Verdict::Rollback(RollbackCause::RollbackOnly, None)
    } else {
        Verdict::Rollback(
            RollbackCause::UnexpectedRollback,
            Some(Error::UnexpectedRollback),
        )
    }
}
