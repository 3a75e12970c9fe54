//! The end of a scope: from how its body ended to COMMIT, ROLLBACK, RELEASE or ROLLBACK TO,
//! the rollback-only mark of a joined transaction, and the hooks. Nothing here is generic over
//! the body: the end is one boxed `'static` future, so it can move to a task of its own when the
//! scope is dropped half-way and finish there, in order (see `detach`).

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::{Instant, Sleep};
use tracing::{Instrument, Span};

mod hooks;

use super::attempt::AttemptEnd;
use super::start::{Running, What};
use crate::context::Context;
use crate::detach::Detachable;
use crate::error::Error;
use crate::events::EventKind;
use crate::hooks::{Ending, RollbackCause};
use crate::inspect::DatabaseFailure;
use crate::options::TxOptions;
use crate::trace;
use crate::transaction::{Finished, Frame, Role, SavepointEnd};
use hooks::BeforeCommit;

/// How long after its deadline a scope may take to stop its statement and roll back before
/// the caller gets `Error::Timeout` anyway (the rollback then finishes on its own).
const DEADLINE_GRACE: Duration = Duration::from_millis(80);

/// How a scope's body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyEnd {
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

/// What the end of a scope tells its caller, beyond the body's own output.
#[derive(Default)]
pub(super) struct Report {
    /// Returned instead of the body's output.
    pub(super) error: Option<Error>,
    /// A before-commit hook panicked: resumed once the transaction has rolled back.
    pub(super) panic: Option<Box<dyn Any + Send>>,
}

impl Report {
    fn error(error: Option<Error>) -> Report {
        Report { error, panic: None }
    }
}

/// The end of a scope, under way.
pub(super) enum ScopeEnd {
    Ready(Option<Report>),
    Running(RunningEnd),
}

const PHASE_ENDING: u8 = 0;
const PHASE_COMMITTING: u8 = 1;
const PHASE_ROLLING_BACK_AFTER_TIMEOUT: u8 = 2;
const PHASE_HOOKS: u8 = 3;

/// An end that talks to the database or runs hooks.
pub(super) struct RunningEnd {
    work: Option<Detachable<Report>>,
    phase: Arc<AtomicU8>,
    detached: Arc<AtomicBool>,
    /// Past it, a scope still rolling back after its deadline returns `Error::Timeout`, and one
    /// whose COMMIT is unanswered returns an unknown outcome; the work goes on by itself.
    cutoff: Option<Pin<Box<Sleep>>>,
    options: TxOptions,
    /// The scope's span and start, until the caller has its answer (or drops it).
    elapsed: Option<(Span, Instant)>,
}

impl ScopeEnd {
    pub(super) fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<Report> {
        match self {
            ScopeEnd::Ready(report) => Poll::Ready(report.take().unwrap_or_default()),
            ScopeEnd::Running(end) => end.poll(cx),
        }
    }
}

impl RunningEnd {
    fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<Report> {
        let work = self.work.as_mut().expect("polled after completion");
        if let Poll::Ready(report) = Pin::new(work).poll(cx) {
            self.work = None;
            self.record_elapsed();
            return Poll::Ready(report);
        }
        if let Some(cutoff) = &mut self.cutoff {
            if cutoff.as_mut().poll(cx).is_ready() {
                let phase = self.phase.load(Ordering::Acquire);
                if phase == PHASE_ENDING {
                    // Still deciding (before-commit hooks): look again shortly.
                    cutoff
                        .as_mut()
                        .reset(Instant::now() + Duration::from_millis(10));
                    let _ = cutoff.as_mut().poll(cx);
                    return Poll::Pending;
                }
                self.cutoff = None;
                let error = match phase {
                    PHASE_COMMITTING => Some(Error::Commit {
                        outcome_unknown: true,
                        source: sqlx::Error::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "COMMIT was not answered before the scope's deadline",
                        )),
                    }),
                    PHASE_ROLLING_BACK_AFTER_TIMEOUT => Some(Error::Timeout {
                        scope: self.options.name.clone(),
                        timeout: self.options.timeout.unwrap_or_default(),
                    }),
                    _ => None,
                };
                if let Some(error) = error {
                    self.detach();
                    self.record_elapsed();
                    return Poll::Ready(Report::error(Some(error)));
                }
            }
        }
        Poll::Pending
    }

    fn detach(&mut self) {
        if let Some(work) = self.work.take() {
            self.detached.store(true, Ordering::Release);
            work.detach();
        }
    }

    fn record_elapsed(&mut self) {
        if let Some((span, started)) = self.elapsed.take() {
            trace::record_elapsed(&span, started);
        }
    }
}

impl Drop for RunningEnd {
    fn drop(&mut self) {
        if self.work.is_some() {
            if let Some((span, _)) = &self.elapsed {
                trace::cancelled(span);
            }
        }
        self.record_elapsed();
        self.detach();
    }
}

/// What an end needs, owned, so that it can finish on a task of its own.
struct End {
    frame: Arc<Frame>,
    outer: Context,
    body_ctx: Context,
    options: TxOptions,
    body: BodyEnd,
    deadline: Option<Instant>,
    suspended: bool,
    phase: Arc<AtomicU8>,
    detached: Arc<AtomicBool>,
    span: Span,
    /// The body's error, as text (see `trace`).
    detail: Option<String>,
    /// One attempt of a retried scope.
    attempt: Option<AttemptEnd>,
}

/// What to do with a transaction or savepoint.
enum Verdict {
    Commit,
    Rollback(RollbackCause, Option<Error>),
}

impl Running {
    /// The end of a scope whose body ended (or ran past its deadline, or panicked). `cancel`
    /// stops a statement cut off at the deadline.
    pub(super) fn end(self, body: BodyEnd, cancel: Option<BoxFuture<'static, ()>>) -> ScopeEnd {
        let timeout = (body == BodyEnd::Timeout).then(|| self.timeout_error());
        let deadline = self.deadline.as_ref().map(|(at, _)| *at);
        let ready = |span: &Span, timeout| {
            trace::record_elapsed(span, self.started);
            ScopeEnd::Ready(Some(Report::error(timeout)))
        };
        let (frame, suspended) = match &self.what {
            What::Mocked => return ready(&self.span, timeout),
            What::Without {
                data_source,
                suspended,
            } => {
                if *suspended {
                    data_source.emit(&self.options, &self.span, EventKind::Resumed);
                }
                return ready(&self.span, timeout);
            }
            What::Tx { frame, suspended } => (frame.clone(), *suspended),
        };
        if let Some(failure) = &self.failure {
            // Kept while the level's work stands: it explains (and is quoted by) an end that
            // finds the transaction ended by the database.
            frame.tx().note_failure(frame.level.id, failure.clone());
        }
        if frame.role == Role::Participant {
            // A joined scope ends without a statement: its failure marks the transaction.
            let fails = matches!(
                body,
                BodyEnd::Err { commits: false } | BodyEnd::Panic | BodyEnd::Timeout
            );
            if fails {
                frame.level.mark_rollback_only();
            }
            trace::joined_end(&self.span, fails);
            let Some(cancel) = cancel else {
                return ready(&self.span, timeout);
            };
            let work = async move {
                cancel.await;
                Report::error(timeout)
            };
            let phase = Arc::new(AtomicU8::new(PHASE_ROLLING_BACK_AFTER_TIMEOUT));
            return ScopeEnd::Running(running_end(work, phase, Arc::default(), deadline, &self));
        }
        let phase = if body == BodyEnd::Timeout {
            PHASE_ROLLING_BACK_AFTER_TIMEOUT
        } else {
            PHASE_ENDING
        };
        let phase = Arc::new(AtomicU8::new(phase));
        let detached = Arc::new(AtomicBool::new(false));
        let end = End {
            frame,
            outer: self.outer.clone(),
            body_ctx: self.body_ctx.clone(),
            options: self.options.clone(),
            body,
            deadline,
            suspended,
            phase: phase.clone(),
            detached: detached.clone(),
            span: self.span.clone(),
            detail: self.detail.clone(),
            attempt: self.attempt.clone(),
        };
        let work: BoxFuture<'static, Report> = match end.frame.role {
            Role::Savepoint => Box::pin(end.savepoint(cancel)),
            _ => Box::pin(end.owner(cancel)),
        };
        ScopeEnd::Running(running_end(work, phase, detached, deadline, &self))
    }

    /// The scope's future was dropped while its body ran (the body is already dropped).
    pub(super) fn abandon(self, cancel: Option<BoxFuture<'static, ()>>) {
        trace::cancelled(&self.span);
        trace::record_elapsed(&self.span, self.started);
        let span = self.span;
        match self.what {
            What::Mocked => {}
            What::Without {
                data_source,
                suspended,
            } => {
                if suspended {
                    data_source.emit(&self.options, &span, EventKind::Resumed);
                }
            }
            What::Tx { frame, suspended } => match frame.role {
                Role::Participant => {
                    frame.level.mark_rollback_only();
                    trace::joined_end(&span, true);
                }
                Role::Savepoint => {
                    frame.tx().abandon_savepoint(&frame.level);
                    if let Some(cancel) = cancel {
                        // Its statement is cut short, so that the rollback to its savepoint,
                        // and the work of the levels around it, need not wait for it.
                        Detachable::new(cancel).detach();
                    }
                    frame.tx().data_source.emit_with(
                        &self.options,
                        &span,
                        EventKind::RolledBackToSavepoint {
                            savepoint: frame.level.savepoint.clone().unwrap_or_default(),
                        },
                        Some(RollbackCause::Cancelled),
                        None,
                    );
                }
                Role::Owner => {
                    let end = End {
                        frame,
                        outer: self.outer,
                        body_ctx: self.body_ctx,
                        options: self.options,
                        body: BodyEnd::Cancelled,
                        deadline: None,
                        suspended,
                        phase: Arc::default(),
                        detached: Arc::new(AtomicBool::new(true)),
                        span: span.clone(),
                        detail: None,
                        attempt: None,
                    };
                    Detachable::new(end.owner(cancel).instrument(span)).detach();
                }
            },
        }
    }
}

fn running_end(
    work: impl Future<Output = Report> + Send + 'static,
    phase: Arc<AtomicU8>,
    detached: Arc<AtomicBool>,
    deadline: Option<Instant>,
    running: &Running,
) -> RunningEnd {
    let cutoff = deadline.map(|at| {
        let from = at.max(Instant::now());
        Box::pin(tokio::time::sleep_until(from + DEADLINE_GRACE))
    });
    RunningEnd {
        work: Some(Detachable::new(work.instrument(running.span.clone()))),
        phase,
        detached,
        cutoff,
        options: running.options.clone(),
        elapsed: Some((running.span.clone(), running.started)),
    }
}

impl End {
    fn emit(&self, kind: EventKind) {
        self.frame
            .tx()
            .data_source
            .emit(&self.options, &self.span, kind);
    }

    fn timeout_error(&self) -> Error {
        Error::Timeout {
            scope: self.options.name.clone(),
            timeout: self.options.timeout.unwrap_or_default(),
        }
    }

    fn verdict(&self) -> Verdict {
        let frame = &self.frame;
        match self.body {
            BodyEnd::Ok if frame.is_rollback_only() => rollback_only(frame),
            BodyEnd::Ok => Verdict::Commit,
            BodyEnd::Err { commits: true } if !frame.is_rollback_only() => Verdict::Commit,
            BodyEnd::Err { .. } => Verdict::Rollback(RollbackCause::Error, None),
            BodyEnd::Panic => Verdict::Rollback(RollbackCause::Panic, None),
            BodyEnd::Timeout => {
                Verdict::Rollback(RollbackCause::Timeout, Some(self.timeout_error()))
            }
            BodyEnd::Cancelled => Verdict::Rollback(RollbackCause::Cancelled, None),
        }
    }

    /// The end of a scope that began its transaction.
    async fn owner(self, cancel: Option<BoxFuture<'static, ()>>) -> Report {
        if let Some(cancel) = cancel {
            cancel.await;
        }
        let frame = self.frame.clone();
        let tx = frame.tx().clone();
        let mut panic = None;
        let mut verdict = self.verdict();
        if let Verdict::Commit = verdict {
            verdict = match self.before_commit().await {
                Ok(()) if frame.is_rollback_only() => rollback_only(&frame),
                Ok(()) => Verdict::Commit,
                Err(BeforeCommit::Failed(error)) => {
                    // Its database error, as a body's, explains a transaction the database
                    // ended (a deadlock in the hook).
                    if let Some(failure) = DatabaseFailure::find(&error) {
                        tx.note_failure(frame.level.id, failure);
                    }
                    Verdict::Rollback(RollbackCause::BeforeCommitFailed, Some(error))
                }
                Err(BeforeCommit::Panicked(payload)) => {
                    panic = Some(payload);
                    Verdict::Rollback(RollbackCause::Panic, None)
                }
                Err(BeforeCommit::TimedOut) => {
                    self.phase
                        .store(PHASE_ROLLING_BACK_AFTER_TIMEOUT, Ordering::Release);
                    Verdict::Rollback(RollbackCause::Timeout, Some(self.timeout_error()))
                }
            };
        }
        let scope = self.options.name.clone();
        let (ending, error) = match verdict {
            Verdict::Commit => {
                let phase = self.phase.clone();
                let committing = move |sent: bool| {
                    let now = if sent { PHASE_COMMITTING } else { PHASE_ENDING };
                    phase.store(now, Ordering::Release);
                };
                match tx
                    .finish(true, self.deadline, &self.detached, committing)
                    .await
                {
                    Finished::Committed => (Ending::Committed, None),
                    Finished::NotCommitted(error, cause) => {
                        (Ending::RolledBack(cause), Some(error))
                    }
                    Finished::TimedOut => (
                        Ending::RolledBack(RollbackCause::Timeout),
                        Some(self.timeout_error()),
                    ),
                    Finished::GuardOutlived => (
                        Ending::RolledBack(RollbackCause::GuardOutlivedScope),
                        Some(Error::GuardOutlivedScope { scope }),
                    ),
                    Finished::Unknown(error) | Finished::EndedUnderneath(error) => {
                        (Ending::Unknown, Some(error))
                    }
                    Finished::Abandoned => (Ending::RolledBack(RollbackCause::Cancelled), None),
                    Finished::RolledBack => (Ending::RolledBack(RollbackCause::CommitFailed), None),
                }
            }
            Verdict::Rollback(cause, error) => {
                match tx.finish(false, None, &self.detached, |_| {}).await {
                    Finished::GuardOutlived => (
                        Ending::RolledBack(RollbackCause::GuardOutlivedScope),
                        Some(Error::GuardOutlivedScope { scope }),
                    ),
                    Finished::EndedUnderneath(ended) => {
                        (Ending::Unknown, self.unknown_instead(error, ended))
                    }
                    _ => (Ending::RolledBack(cause), error),
                }
            }
        };
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
        let data_source = &frame.tx().data_source;
        data_source.emit_with(&self.options, &self.span, kind, None, detail);
        if self.suspended {
            self.emit(EventKind::Resumed);
        }
        let retried = match (&self.attempt, ending) {
            (Some(attempt), Ending::RolledBack(cause)) => {
                attempt.decide(cause == RollbackCause::Error, error.as_ref())
            }
            _ => false,
        };
        if retried {
            // Another attempt follows: this one's after-* hooks are discarded.
            trace::retrying(&self.span);
            drop(frame.level.hooks.take());
            return Report { error, panic };
        }
        self.phase.store(PHASE_HOOKS, Ordering::Release);
        self.after(&frame.level, ending).await;
        Report { error, panic }
    }

    /// The end of a NESTED scope: RELEASE its savepoint, or roll back to it.
    async fn savepoint(self, cancel: Option<BoxFuture<'static, ()>>) -> Report {
        let frame = self.frame.clone();
        let level = &frame.level;
        let parent = level
            .parent
            .as_ref()
            .expect("a savepoint has an enclosing level");
        let mut verdict = self.verdict();
        if let Verdict::Rollback(..) = verdict {
            // Known before anything is awaited: the levels around it must not go on (or
            // commit) with this savepoint's work, even if this end is delayed.
            frame.tx().doom_savepoint(level);
        }
        if let Some(cancel) = cancel {
            cancel.await;
        }
        if let Verdict::Commit = verdict {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                verdict = Verdict::Rollback(RollbackCause::Timeout, Some(self.timeout_error()));
            }
        }
        let (release, mut cause, verdict_error) = match verdict {
            Verdict::Commit => (true, None, None),
            Verdict::Rollback(cause, error) => (false, Some(cause), error),
        };
        let ended = frame
            .tx()
            .end_savepoint(&frame, release, &self.detached)
            .await;
        let savepoint = level.savepoint.clone().unwrap_or_default();
        let error = match ended {
            SavepointEnd::Done if release => {
                self.emit(EventKind::SavepointReleased { savepoint });
                if frame.stands_for_commit {
                    self.capture_after_commit(level);
                }
                level.hooks.move_into(&parent.hooks);
                return Report::default();
            }
            SavepointEnd::Done | SavepointEnd::Abandoned | SavepointEnd::Gone => verdict_error,
            SavepointEnd::GuardOutlived => Some(Error::GuardOutlivedScope {
                scope: self.options.name.clone(),
            }),
            SavepointEnd::RolledBackInstead {
                source,
                cause: first,
            } => {
                cause = Some(RollbackCause::Aborted);
                Some(Error::Aborted {
                    data_source: frame.tx().data_source.name.to_string(),
                    cause: first,
                    source: Some(source),
                })
            }
            SavepointEnd::Underneath(error) => {
                // The whole transaction is gone: nothing around this scope may commit.
                cause = Some(RollbackCause::Aborted);
                parent.mark_rollback_only();
                self.unknown_instead(verdict_error, error)
            }
            SavepointEnd::Failed(error) => {
                tracing::error!(target: trace::TARGET, parent: &self.span, %error, "ending a savepoint failed; the enclosing transaction is marked rollback-only");
                cause = cause.or(Some(RollbackCause::CommitFailed));
                parent.mark_rollback_only();
                if self.body == BodyEnd::Ok && verdict_error.is_none() {
                    Some(error)
                } else {
                    verdict_error
                }
            }
        };
        // Rolled back to: its hooks (and those of savepoints inside it) are discarded.
        drop(level.hooks.take());
        // One attempt of a retried scope standing for a transaction of its own (under
        // `testing::rollback_after`): the next attempt nests a savepoint of its own.
        if let Some(attempt) = &self.attempt {
            if attempt.decide(cause == Some(RollbackCause::Error), error.as_ref()) {
                trace::retrying(&self.span);
            }
        }
        let detail = match cause {
            Some(RollbackCause::Error | RollbackCause::Panic) => self.detail.as_deref(),
            _ => None,
        };
        frame.tx().data_source.emit_with(
            &self.options,
            &self.span,
            EventKind::RolledBackToSavepoint { savepoint },
            cause,
            detail,
        );
        Report::error(error)
    }
}

impl End {
    /// The error a scope that was rolling back returns when the database had ended its
    /// transaction and may have committed part of it: the body's own error or panic stands;
    /// an `Ok`, or the library's own error (which would say nothing was committed), gives way
    /// to `ended`.
    fn unknown_instead(&self, error: Option<Error>, ended: Error) -> Option<Error> {
        let body_failed = matches!(
            self.body,
            BodyEnd::Err { .. } | BodyEnd::Panic | BodyEnd::Cancelled
        );
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
