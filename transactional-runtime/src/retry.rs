//! Running a scope again when the database refused its transaction because of a concurrent one
//! (a serialization failure or a deadlock): `retry = N`, `Transactional::retry(n)`.
//!
//! Only a scope that begins its transaction is re-run: running a joined scope again would
//! repeat part of its caller's work, so such a scope fails with `Error::InvalidOptions`. Each
//! attempt is a scope of its own; an attempt that will be retried has its after-* hooks
//! discarded, and the next one starts after a jittered, growing pause. docs/SEMANTICS.md
//! ("Retry").

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::inspect::DatabaseFailure;
use crate::options::TxOptions;
use crate::scope::{Attempt, Classify, Describe, Scope, ScopeResult};

/// An error type whose values can say that the database refused a transaction because of a
/// concurrent one, so that running it again may succeed.
///
/// Implemented for every `std::error::Error + 'static`: the error and its `source()` chain are
/// searched for the library's [`Error`](crate::Error), an `sqlx::Error` or a database's own error, and their
/// codes read (PostgreSQL `40001`, `40P01`; MySQL/MariaDB `1213`, `1205`; SQLite busy or
/// locked). Implement it yourself for an error type that does not implement
/// `std::error::Error`.
#[diagnostic::on_unimplemented(
    message = "`retry` needs to tell whether a `{Self}` is a serialization failure or a deadlock",
    label = "this error type implements neither `std::error::Error` nor `RetryableError`",
    note = "implement `std::error::Error` for it (the database's error must be reachable through `source()`), or implement `transactional::RetryableError`"
)]
pub trait RetryableError {
    /// Whether running the transaction again may succeed.
    fn is_retryable(&self) -> bool;
}

impl<E: std::error::Error + 'static> RetryableError for E {
    fn is_retryable(&self) -> bool {
        retryable_in_chain(self)
    }
}

/// Whether `error`, or an error in its `source()` chain, is a serialization failure or a
/// deadlock (however it is wrapped: see `inspect`).
fn retryable_in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
    DatabaseFailure::find(error).is_some_and(|failure| failure.concurrent)
}

/// Whether the database refused a transaction because of a concurrent one, anywhere in
/// `error` or its `source()` chain: a serialization failure or a deadlock (PostgreSQL `40001`,
/// `40P01`; MySQL/MariaDB `1213`, `1205`; SQLite busy or locked), found in an `sqlx::Error`,
/// sqlx's boxed database error, a driver's error type, or the library's [`Error`](crate::Error)
/// (a refused COMMIT or before-commit hook included), however your error types wrap them.
///
/// What `retry` asks of an error; for [`Retrying::run_when`](crate::Retrying::run_when) with an
/// error type that does not implement `std::error::Error` but can give one:
///
/// ```
/// use transactional_runtime::{is_retryable, Transactional};
///
/// async fn transfer() -> anyhow::Result<()> {
///     let mut conn = transactional_runtime::connection::<sqlx::Sqlite>().await?;
///     sqlx::query("UPDATE accounts SET balance = balance - 10").execute(&mut *conn).await?;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// # let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// # sqlx::query("CREATE TABLE accounts (balance INTEGER)").execute(&pool).await?;
/// # sqlx::query("INSERT INTO accounts VALUES (100)").execute(&pool).await?;
/// # transactional_runtime::register_default(pool.clone())?;
/// Transactional::new()
///     .retry(3)
///     .run_when(|e: &anyhow::Error| is_retryable(e.as_ref()), transfer)
///     .await?;
/// // Not a refusal for a concurrent transaction: not worth another attempt.
/// assert!(!is_retryable(&sqlx::Error::RowNotFound));
/// # Ok(()) }
/// ```
pub fn is_retryable(error: &(dyn std::error::Error + 'static)) -> bool {
    retryable_in_chain(error)
}

/// The classifier of an error type that says itself whether it is worth another attempt.
pub(crate) fn by_trait<R>() -> Classify<R>
where
    R: ScopeResult,
    R::Error: RetryableError,
{
    Arc::new(|output: &R| output.error().is_some_and(RetryableError::is_retryable))
}

/// Runs a scope made of `make()`'s body up to `retries + 1` times, while each attempt's
/// transaction is refused for a concurrent one: as `classify` says of the body's error, or,
/// without it, as the database's error that `describe` finds in it says.
pub(crate) async fn retrying<F, Fut, P>(
    options: TxOptions,
    retries: u32,
    rule: Option<P>,
    describe: Option<Describe<Fut::Output>>,
    classify: Option<Classify<Fut::Output>>,
    mut make: F,
) -> Fut::Output
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: ScopeResult,
    P: Fn(&<Fut::Output as ScopeResult>::Error) -> bool,
{
    let mut number = 1;
    loop {
        let attempt = Attempt {
            number,
            last: number > retries,
            classify: classify.clone(),
        };
        let mut scope = Scope::new(options.clone(), rule.as_ref(), Box::pin(make()))
            .describing(describe)
            .retrying(attempt);
        let output = (&mut scope).await;
        if !scope.another_attempt() {
            return output;
        }
        tokio::time::sleep(pause(number)).await;
        number += 1;
    }
}

/// The pause before attempt `done + 1`: about 10 ms, doubling per attempt up to 1 s, each
/// between half and all of that ("equal jitter"), so that transactions that collided do not
/// collide again.
fn pause(done: u32) -> Duration {
    let ceiling = Duration::from_millis(10)
        .saturating_mul(1 << done.saturating_sub(1).min(7))
        .min(Duration::from_secs(1));
    let half = ceiling / 2;
    half + half.mul_f64(jitter())
}

/// A number in `[0, 1)`, different on every call (a xorshift over a counter and the clock:
/// good enough to spread retries, not for anything else).
fn jitter() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ clock;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_with_jitter_and_stay_bounded() {
        for done in 1..20 {
            let ceiling =
                Duration::from_millis(10 << (done - 1).min(7)).min(Duration::from_secs(1));
            for _ in 0..50 {
                let p = pause(done);
                assert!(p >= ceiling / 2 && p <= ceiling, "{done}: {p:?}");
            }
        }
        let spread: std::collections::HashSet<_> = (0..50).map(|_| pause(3)).collect();
        assert!(spread.len() > 10, "jittered: {spread:?}");
    }
}
