//! What scopes tell `tracing`, under the target `transactional`: one span per scope (info
//! level) whose fields say what the scope asked for, what it did and how it ended, and one
//! event for each thing its transaction does (debug; failures warn or error). Every event of a
//! scope has the scope's span as its parent, also when the end of a dropped scope finishes on
//! a task of its own. docs/ARCHITECTURE.md ("Tracing") lists the fields.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{display, Empty};
use tracing::{Level, Span};

use crate::events::EventKind;
use crate::hooks::RollbackCause;
use crate::options::TxOptions;

/// The `tracing` target of every span and log line of the runtime.
pub(crate) use crate::TARGET;

static NEXT_TX: AtomicU64 = AtomicU64::new(1);

/// A new transaction id: what the spans of every scope of one physical transaction share.
pub(crate) fn next_tx_id() -> u64 {
    NEXT_TX.fetch_add(1, Ordering::Relaxed)
}

/// The span of one scope, before it has decided anything.
pub(crate) fn scope_span(options: &TxOptions) -> Span {
    tracing::info_span!(
        target: TARGET,
        "transactional",
        scope = %options.name,
        data_source = %options.data_source,
        propagation = %options.propagation,
        isolation = %options.isolation,
        read_only = options.read_only,
        action = Empty,
        suspended = Empty,
        tx = Empty,
        savepoint = Empty,
        attempt = Empty,
        outcome = Empty,
        cause = Empty,
        elapsed_ms = Empty,
    )
}

/// Records the transaction the scope works in.
pub(crate) fn record_tx(span: &Span, tx: u64) {
    span.record("tx", tx);
}

/// Records how long the scope took, as its caller saw it (a scope dropped half-way: until it
/// was dropped).
pub(crate) fn record_elapsed(span: &Span, started: tokio::time::Instant) {
    if !span.is_disabled() {
        span.record("elapsed_ms", started.elapsed().as_secs_f64() * 1000.0);
    }
}

/// A joined scope's end: its transaction's outcome is its owner's to report.
pub(crate) fn joined_end(span: &Span, marked_rollback_only: bool) {
    let outcome = if marked_rollback_only {
        "marked_rollback_only"
    } else {
        "left_to_owner"
    };
    span.record("outcome", display(outcome));
}

/// A retried scope's attempt was refused for a concurrent transaction: another follows.
pub(crate) fn retrying(span: &Span) {
    tracing::info!(
        target: TARGET,
        parent: span,
        "the database refused the transaction for a concurrent one: running it again"
    );
}

/// The scope's future was dropped before its body finished.
pub(crate) fn cancelled(span: &Span) {
    tracing::info!(
        target: TARGET,
        parent: span,
        "cancelled: the scope's future was dropped before its body finished"
    );
}

/// Logs `kind` under `span`, and records what it says about the scope in the span's fields.
/// `savepoint_cause` is why a savepoint was rolled back to; `detail` the body's error, for a
/// rollback it caused.
pub(crate) fn event(
    span: &Span,
    kind: &EventKind,
    savepoint_cause: Option<RollbackCause>,
    detail: Option<&str>,
) {
    use EventKind::*;
    match kind {
        Began | Joined | Nested { .. } | Suspended | Resumed | RanWithout | Refused => {
            started(span, kind)
        }
        Committed
        | RolledBack { .. }
        | RolledBackToSavepoint { .. }
        | CommitFailed
        | SavepointReleased { .. }
        | HookRegistered { .. }
        | HookRan { .. } => ended(span, kind, savepoint_cause, detail),
    }
}

/// What a scope's start did.
fn started(span: &Span, kind: &EventKind) {
    match kind {
        EventKind::Began => {
            span.record("action", display("began"));
            // Nothing is sent yet: BEGIN goes with the transaction's first statement.
            tracing::debug!(target: TARGET, parent: span, "new transaction (BEGIN with its first statement)");
        }
        EventKind::Joined => {
            span.record("action", display("joined"));
            tracing::debug!(target: TARGET, parent: span, "joined the current transaction");
        }
        EventKind::Nested { savepoint } => {
            span.record("action", display("nested"));
            span.record("savepoint", display(savepoint));
            tracing::debug!(target: TARGET, parent: span, savepoint = %savepoint, "savepoint");
        }
        EventKind::Suspended => {
            span.record("suspended", true);
            tracing::debug!(target: TARGET, parent: span, "suspended the current transaction");
        }
        EventKind::Resumed => {
            tracing::debug!(target: TARGET, parent: span, "resumed the suspended transaction");
        }
        EventKind::RanWithout => {
            span.record("action", display("ran_without"));
            tracing::debug!(target: TARGET, parent: span, "ran without a transaction");
        }
        EventKind::Refused => {
            span.record("action", display("refused"));
            span.record("outcome", display("refused"));
            tracing::debug!(target: TARGET, parent: span, "refused to run");
        }
        _ => unreachable!("`event` passes only a start's events"),
    }
}

/// What a scope's end (or a hook) did.
fn ended(
    span: &Span,
    kind: &EventKind,
    savepoint_cause: Option<RollbackCause>,
    detail: Option<&str>,
) {
    match kind {
        EventKind::Committed => {
            span.record("outcome", display("committed"));
            tracing::debug!(target: TARGET, parent: span, "committed");
        }
        EventKind::RolledBack { cause } => {
            span.record("outcome", display("rolled_back"));
            rolled_back(span, *cause, detail, false);
        }
        EventKind::RolledBackToSavepoint { .. } => {
            span.record("outcome", display("rolled_back_to_savepoint"));
            let cause = savepoint_cause.unwrap_or(RollbackCause::Error);
            rolled_back(span, cause, detail, true);
        }
        EventKind::CommitFailed => {
            span.record("outcome", display("unknown"));
            tracing::error!(
                target: TARGET,
                parent: span,
                "COMMIT failed without an answer: whether the transaction committed is unknown"
            );
        }
        EventKind::SavepointReleased { savepoint } => {
            span.record("outcome", display("released"));
            tracing::debug!(target: TARGET, parent: span, savepoint = %savepoint, "released the savepoint");
        }
        EventKind::HookRegistered { hook } => {
            tracing::trace!(target: TARGET, parent: span, hook, "hook registered");
        }
        EventKind::HookRan { hook } => {
            tracing::trace!(target: TARGET, parent: span, hook, "hook ran");
        }
        _ => unreachable!("`event` passes a start's events to `started`"),
    }
}

/// A rollback, at the level its cause deserves: a body's error or a requested rollback is the
/// application's business (debug); a cancellation is worth a line (info); a timeout, a panic or
/// a failure of the transaction itself warns.
fn rolled_back(span: &Span, cause: RollbackCause, detail: Option<&str>, savepoint: bool) {
    let label = cause_label(cause);
    span.record("cause", display(label));
    let level = match cause {
        RollbackCause::Error | RollbackCause::RollbackOnly => Level::DEBUG,
        RollbackCause::Cancelled => Level::INFO,
        _ => Level::WARN,
    };
    let what = if savepoint {
        "rolled back to the savepoint"
    } else {
        "rolled back"
    };
    macro_rules! log {
        ($level:expr) => {
            tracing::event!(
                target: TARGET,
                parent: span,
                $level,
                cause = label,
                error = detail,
                "{what}: {cause}"
            )
        };
    }
    match level {
        Level::DEBUG => log!(Level::DEBUG),
        Level::INFO => log!(Level::INFO),
        _ => log!(Level::WARN),
    }
}

/// The short name of a rollback's cause, as the span's `cause` field.
pub(crate) fn cause_label(cause: RollbackCause) -> &'static str {
    match cause {
        RollbackCause::Error => "error",
        RollbackCause::Panic => "panic",
        RollbackCause::Cancelled => "cancelled",
        RollbackCause::Timeout => "timeout",
        RollbackCause::RollbackOnly => "rollback-only",
        RollbackCause::UnexpectedRollback => "unexpected-rollback",
        RollbackCause::BeforeCommitFailed => "before-commit-failed",
        RollbackCause::CommitFailed => "commit-failed",
        RollbackCause::Aborted => "aborted",
        RollbackCause::GuardOutlivedScope => "guard-outlived-scope",
    }
}
