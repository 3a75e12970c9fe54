//! One attempt of a retried scope (see `retry`): what it knows, and how its end decides whether
//! another follows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::Error;

/// Whether a body's output is an error worth another attempt.
pub(crate) type Classify<R> = std::sync::Arc<dyn Fn(&R) -> bool + Send + Sync>;

/// What one attempt of a retried scope knows: its number, whether another may follow, and
/// where it says that one will.
pub(crate) struct Attempt<R> {
    pub(crate) number: u32,
    pub(crate) last: bool,
    /// Whether an error is worth another attempt; without it, the database's error the
    /// scope's describer finds says so (see `inspect`).
    pub(crate) classify: Option<Classify<R>>,
    /// Set by the attempt's end when another attempt follows.
    pub(crate) again: Arc<AtomicBool>,
}

/// What the scope's end needs of its [`Attempt`], without the body's type.
#[derive(Clone)]
pub(crate) struct AttemptEnd {
    pub(crate) number: u32,
    pub(crate) last: bool,
    /// The body's error is a serialization failure or a deadlock.
    pub(crate) body_retryable: bool,
    pub(crate) again: Arc<AtomicBool>,
}

impl AttemptEnd {
    /// Whether the attempt that ended with `error` (the transaction's own error, if any) is
    /// run again; says so to the retry loop.
    pub(crate) fn decide(&self, body_failed: bool, error: Option<&Error>) -> bool {
        let retry = !self.last
            && if body_failed {
                self.body_retryable
            } else {
                error.is_some_and(Error::is_serialization_failure)
            };
        if retry {
            self.again.store(true, Ordering::Release);
        }
        retry
    }
}
