//! One attempt of a retried scope (see `retry`): what it knows, and how its end decides whether
//! another follows. The decision travels back as a value, in the end's `Report`.

use std::sync::Arc;

use crate::error::Error;

/// Whether a body's output is an error worth another attempt.
pub(crate) type Classify<R> = Arc<dyn Fn(&R) -> bool + Send + Sync>;

/// One attempt of a retried scope, as the retry loop makes it.
pub(crate) struct Attempt<R> {
    pub(crate) number: u32,
    pub(crate) last: bool,
    /// Whether an error is worth another attempt; without it, the database's error the
    /// scope's describer finds says so (see `inspect`).
    pub(crate) classify: Option<Classify<R>>,
}

/// What the scope's end needs of its [`Attempt`], without the body's type.
#[derive(Clone)]
pub(crate) struct AttemptState {
    pub(crate) number: u32,
    pub(crate) last: bool,
    /// The body's error is a serialization failure or a deadlock.
    pub(crate) body_retryable: bool,
}

impl<R> Attempt<R> {
    pub(crate) fn state(&self) -> AttemptState {
        AttemptState {
            number: self.number,
            last: self.last,
            body_retryable: false,
        }
    }
}

impl AttemptState {
    /// Whether the attempt that ended with `error` (the transaction's own error, if any) is
    /// run again: not the last one, and refused for a concurrent transaction (its body's
    /// error, when `body_failed`; else the transaction's own).
    pub(crate) fn again(&self, body_failed: bool, error: Option<&Error>) -> bool {
        !self.last
            && if body_failed {
                self.body_retryable
            } else {
                error.is_some_and(Error::is_serialization_failure)
            }
    }
}
