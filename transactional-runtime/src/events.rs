//! What scopes do, as events: the facts the recording mock records (and the seam a tracing or
//! metrics layer can hang on).

use crate::hooks::RollbackCause;
use crate::options::TxOptions;

/// One thing a scope did, with the options of that scope.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScopeEvent {
    /// The scope's options; `scope.name` is the annotated fn's path.
    pub scope: TxOptions,
    /// What happened.
    pub kind: EventKind,
}

/// What happened in a [`ScopeEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The scope owns a new physical transaction (its BEGIN is sent with its first statement).
    Began,
    /// The scope joined the current transaction.
    Joined,
    /// The scope created a savepoint (NESTED).
    Nested {
        /// The savepoint's name.
        savepoint: String,
    },
    /// The scope suspended the current transaction (REQUIRES_NEW, NOT_SUPPORTED).
    Suspended,
    /// The suspended transaction is current again.
    Resumed,
    /// The scope ran without a transaction.
    RanWithout,
    /// The scope refused to run (MANDATORY without, NEVER with a transaction).
    Refused,
    /// The scope's transaction committed.
    Committed,
    /// The scope's transaction rolled back.
    RolledBack {
        /// Why.
        cause: RollbackCause,
    },
    /// COMMIT failed.
    CommitFailed,
    /// The scope's savepoint was released (its work kept).
    SavepointReleased {
        /// The savepoint's name.
        savepoint: String,
    },
    /// The scope rolled back to its savepoint.
    RolledBackToSavepoint {
        /// The savepoint's name.
        savepoint: String,
    },
    /// A hook was registered on the scope's transaction.
    HookRegistered {
        /// `"before_commit"`, `"after_commit"`, `"after_rollback"` or `"after_completion"`.
        hook: &'static str,
    },
    /// A hook ran after the scope's transaction ended.
    HookRan {
        /// As in [`EventKind::HookRegistered`].
        hook: &'static str,
    },
}
