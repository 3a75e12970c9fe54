//! The end of a scope as its caller awaits it: ready at once (no transaction to end, a joined
//! scope), or the end's work (`end`) running as one boxed `'static` future that finishes on a
//! task of its own if the caller goes away. Past the scope's deadline (plus a grace), the
//! caller is answered without waiting for the rest: a timeout while it rolls back, an unknown
//! outcome while COMMIT is unanswered.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tracing::{Instrument, Span};

use super::start::Running;
use crate::detach::{Detachable, Detached};
use crate::error::Error;
use crate::options::TxOptions;
use crate::trace;
use crate::transaction::{Role, Transaction};

/// How long after its deadline a scope may take to stop its statement and roll back before
/// the caller gets `Error::Timeout` anyway (the rollback then finishes on its own).
const DEADLINE_GRACE: Duration = Duration::from_millis(80);

/// What the end of a scope hands back to its caller, beyond the body's own output.
#[derive(Default)]
pub(super) struct Report {
    /// Returned instead of the body's output.
    pub(super) error: Option<Error>,
    /// A before-commit hook panicked: resumed once the transaction has rolled back.
    pub(super) panic: Option<Box<dyn Any + Send>>,
    /// The scope was one attempt of a retried scope, and another attempt follows.
    pub(super) again: bool,
}

impl Report {
    pub(super) fn error(error: Option<Error>) -> Report {
        Report {
            error,
            ..Report::default()
        }
    }
}

/// Where the end's work is, as its caller reads it when the deadline's cutoff passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// Deciding (before-commit hooks) or sending the end; what COMMIT is doing the
    /// transaction says (`Transaction::is_committing`).
    Deciding = 0,
    /// Rolling back after the deadline: past the cutoff, the caller gets `Error::Timeout`.
    RollingBackAfterTimeout = 1,
    /// The transaction is over; after-* hooks run, and the caller waits for them.
    Hooks = 2,
}

/// [`Phase`] as a typed atomic, shared by the end's work and its caller.
#[derive(Debug)]
pub(super) struct EndPhase(AtomicU8);

impl EndPhase {
    pub(super) fn new(phase: Phase) -> Arc<EndPhase> {
        Arc::new(EndPhase(AtomicU8::new(phase as u8)))
    }

    pub(super) fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }

    fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Deciding,
            1 => Phase::RollingBackAfterTimeout,
            2 => Phase::Hooks,
            other => unreachable!("only a Phase is stored, not {other}"),
        }
    }
}

/// The end of a scope, as its caller awaits it.
pub(super) enum EndFuture {
    Ready(Option<Report>),
    Running(RunningEnd),
}

impl EndFuture {
    pub(super) fn ready(running: &Running, error: Option<Error>) -> EndFuture {
        trace::record_elapsed(&running.span, running.started);
        EndFuture::Ready(Some(Report::error(error)))
    }

    pub(super) fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<Report> {
        match self {
            EndFuture::Ready(report) => Poll::Ready(report.take().unwrap_or_default()),
            EndFuture::Running(end) => end.poll(cx),
        }
    }
}

/// An end that talks to the database or runs hooks.
pub(super) struct RunningEnd {
    work: Option<Detachable<Report>>,
    phase: Arc<EndPhase>,
    detached: Arc<Detached>,
    /// The transaction whose COMMIT may be unanswered at the cutoff.
    tx: Option<Arc<Transaction>>,
    /// Past it, a scope still rolling back after its deadline returns `Error::Timeout`, and one
    /// whose COMMIT is unanswered returns an unknown outcome; the work goes on by itself.
    cutoff: Option<Pin<Box<Sleep>>>,
    options: TxOptions,
    /// The scope's span and start, until the caller has its answer (or drops it).
    elapsed: Option<(Span, Instant)>,
}

impl RunningEnd {
    /// `work` run as the end of `running`'s scope, under its span, cut off past its deadline.
    pub(super) fn new(
        work: impl Future<Output = Report> + Send + 'static,
        phase: Arc<EndPhase>,
        detached: Arc<Detached>,
        running: &Running,
    ) -> RunningEnd {
        let cutoff = running.deadline.as_ref().map(|(at, _)| {
            let from = (*at).max(Instant::now());
            Box::pin(tokio::time::sleep_until(from + DEADLINE_GRACE))
        });
        RunningEnd {
            work: Some(Detachable::new(work.instrument(running.span.clone()))),
            phase,
            detached,
            tx: running
                .frame()
                .filter(|frame| frame.role == Role::Owner)
                .map(|frame| frame.tx().clone()),
            cutoff,
            options: running.options.clone(),
            elapsed: Some((running.span.clone(), running.started)),
        }
    }

    fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<Report> {
        let work = self.work.as_mut().expect("polled after completion");
        if let Poll::Ready(report) = Pin::new(work).poll(cx) {
            self.work = None;
            self.record_elapsed();
            return Poll::Ready(report);
        }
        let Some(cutoff) = &mut self.cutoff else {
            return Poll::Pending;
        };
        if cutoff.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let error = match self.phase.get() {
            _ if self.tx.as_ref().is_some_and(|tx| tx.is_committing()) => commit_unanswered(),
            Phase::Deciding => {
                // Still deciding (before-commit hooks), or not yet committing: look again
                // shortly.
                cutoff
                    .as_mut()
                    .reset(Instant::now() + Duration::from_millis(10));
                let _ = cutoff.as_mut().poll(cx);
                return Poll::Pending;
            }
            Phase::RollingBackAfterTimeout => super::timeout_error(&self.options),
            Phase::Hooks => {
                self.cutoff = None;
                return Poll::Pending;
            }
        };
        self.cutoff = None;
        self.detach();
        self.record_elapsed();
        Poll::Ready(Report::error(Some(error)))
    }

    fn detach(&mut self) {
        if let Some(work) = self.work.take() {
            self.detached.set();
            work.detach();
        }
    }

    fn record_elapsed(&mut self) {
        if let Some((span, started)) = self.elapsed.take() {
            trace::record_elapsed(&span, started);
        }
    }
}

/// What the caller of a scope whose COMMIT is unanswered at its deadline's cutoff gets.
fn commit_unanswered() -> Error {
    Error::Commit {
        outcome_unknown: true,
        source: sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "COMMIT was not answered before the scope's deadline",
        )),
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
