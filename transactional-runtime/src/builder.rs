//! The programmatic API: [`Transactional`], the builder the macro expands to.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::name::Name;
use crate::options::{Isolation, Propagation, TxOptions};
use crate::retry::{by_trait, retrying, RetryableError};
use crate::scope::{Classify, Scope};

/// Runs a future as a transactional scope: Spring's `TransactionTemplate`.
///
/// `#[transactional(...)]` expands to exactly this, so both have the same semantics.
///
/// ```
/// use transactional_runtime::{connection, Isolation, Propagation, Transactional};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// # sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(&pool).await?;
/// # transactional_runtime::register_default(pool.clone())?;
/// let id = Transactional::new()
///     .propagation(Propagation::RequiresNew)
///     .isolation(Isolation::Serializable)
///     .run(async {
///         // queries through connection() run inside the transaction
///         let mut conn = connection::<sqlx::Sqlite>().await?;
///         let id: i64 = sqlx::query_scalar("INSERT INTO orders DEFAULT VALUES RETURNING id")
///             .fetch_one(&mut *conn)
///             .await?;
///         Ok::<_, transactional_runtime::Error>(id)
///     })
///     .await?;
/// assert_eq!(id, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use = "a Transactional does nothing until `.run(...)` is awaited"]
pub struct Transactional {
    options: TxOptions,
}

impl Transactional {
    /// `REQUIRED` on the default data source, default isolation, read-write, no timeout.
    pub const fn new() -> Self {
        Transactional {
            options: TxOptions::DEFAULT,
        }
    }

    /// Starts from a complete set of options.
    pub const fn with_options(options: TxOptions) -> Self {
        Transactional { options }
    }

    /// The options this scope will run with.
    pub const fn options(&self) -> &TxOptions {
        &self.options
    }

    pub(crate) fn into_options(self) -> TxOptions {
        self.options
    }

    /// Names the scope (for logs, tracing and the recording mock): a `&'static str`, or a
    /// name built at run time (see [`Name`]).
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.options.name = name.into();
        self
    }

    /// Sets the propagation (default [`Propagation::Required`]).
    pub const fn propagation(mut self, propagation: Propagation) -> Self {
        self.options.propagation = propagation;
        self
    }

    /// Sets the isolation level, applied if this scope begins the transaction.
    pub const fn isolation(mut self, isolation: Isolation) -> Self {
        self.options.isolation = isolation;
        self
    }

    /// Asks for a read-only transaction, applied if this scope begins the transaction.
    pub const fn read_only(mut self, read_only: bool) -> Self {
        self.options.read_only = read_only;
        self
    }

    /// Gives the scope a hard deadline, from its start: past it the statement running is
    /// cancelled on the server, the body is dropped, the transaction rolled back and
    /// [`Error::Timeout`] returned. Before-commit hooks and COMMIT count against it.
    /// `Duration::MAX` (or any timeout past the end of time) means none.
    pub const fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Runs on the named data source instead of `"default"`: a `&'static str`, or a name
    /// known only at run time, such as a tenant's pool registered from configuration (see
    /// [`Name`]).
    pub fn data_source(mut self, name: impl Into<Name>) -> Self {
        self.options.data_source = name.into();
        self
    }

    /// Runs `body` in the scope: every `Err` rolls back.
    ///
    /// Options that contradict each other (isolation, read-only or a timeout with a
    /// propagation that never begins a transaction) fail with [`Error::InvalidOptions`]
    /// without running the body.
    pub fn run<F, T, E>(self, body: F) -> impl Future<Output = Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        Scope::new(self.options, None::<fn(&E) -> bool>, Box::pin(body))
    }

    /// Runs `body` in the scope, committing instead of rolling back when it returns an `Err`
    /// for which `commit_on` is true (Spring's `noRollbackFor`). The error is still returned.
    pub fn run_with_no_rollback_for<F, T, E, P>(
        self,
        commit_on: P,
        body: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
        P: Fn(&E) -> bool,
    {
        Scope::new(self.options, Some(commit_on), Box::pin(body))
    }

    /// Runs the scope again, up to `retries` more times, when the database refuses its
    /// transaction because of a concurrent one (a serialization failure or a deadlock: see
    /// [`Error::is_serialization_failure`]). The body is then a closure that makes a new future
    /// for each attempt.
    ///
    /// Only a scope that begins its transaction can be re-run: one that would join or nest in
    /// its caller's fails with [`Error::InvalidOptions`] without running. Each attempt is a
    /// transaction of its own, with the scope's options (a timeout applies to each); the
    /// after-* hooks of an attempt that is followed by another are discarded; between
    /// attempts the scope waits a jittered pause that grows from about 10 ms to at most 1 s.
    ///
    /// ```
    /// use transactional_runtime::{connection, Isolation, Transactional};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// enum AppError {
    ///     #[error(transparent)]
    ///     Tx(#[from] transactional_runtime::Error),
    ///     #[error(transparent)]
    ///     Db(#[from] sqlx::Error),
    /// }
    ///
    /// async fn transfer(from: i64, to: i64, amount: i64) -> Result<(), AppError> {
    ///     let mut conn = connection::<sqlx::Sqlite>().await?;
    ///     for (id, delta) in [(from, -amount), (to, amount)] {
    ///         sqlx::query("UPDATE accounts SET balance = balance + ? WHERE id = ?")
    ///             .bind(delta)
    ///             .bind(id)
    ///             .execute(&mut *conn)
    ///             .await?;
    ///     }
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
    /// # sqlx::query("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER)").execute(&pool).await?;
    /// # sqlx::query("INSERT INTO accounts VALUES (1, 100), (2, 0)").execute(&pool).await?;
    /// # transactional_runtime::register_default(pool.clone())?;
    /// // Run again (up to 3 more times) while the database refuses it for a concurrent one.
    /// Transactional::new()
    ///     .isolation(Isolation::Serializable)
    ///     .retry(3)
    ///     .run(|| transfer(1, 2, 30))
    ///     .await?;
    /// # let b: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 2").fetch_one(&pool).await?;
    /// # assert_eq!(b, 30);
    /// # Ok(()) }
    /// ```
    pub fn retry(self, retries: u32) -> Retrying {
        Retrying { tx: self, retries }
    }

    /// [`run`](Self::run), with a way to put the body's error in words for the rollback's log
    /// line.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn run_describing<F, T, E>(
        self,
        body: F,
        describe: crate::scope::Describe<Result<T, E>>,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        Scope::new(self.options, None::<fn(&E) -> bool>, Box::pin(body)).describing(Some(describe))
    }
}

/// A [`Transactional`] that runs its body again when the database refuses its transaction for
/// a concurrent one: see [`Transactional::retry`].
#[derive(Debug, Clone)]
#[must_use = "a Retrying does nothing until `.run(...)` is awaited"]
pub struct Retrying {
    tx: Transactional,
    retries: u32,
}

impl Retrying {
    /// Runs `make()`'s future as the scope, and again with a new one while the database
    /// refuses the transaction for a concurrent one, at most `retries` more times.
    pub fn run<F, Fut, T, E>(self, make: F) -> impl Future<Output = Result<T, E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error> + RetryableError,
    {
        let classify = Some(by_trait::<Result<T, E>>());
        retrying(
            self.tx.options,
            self.retries,
            None::<fn(&E) -> bool>,
            None,
            classify,
            make,
        )
    }

    /// [`run`](Self::run) for an error type that cannot tell by itself (through
    /// `std::error::Error` or [`RetryableError`]) whether the database refused the transaction
    /// for a concurrent one, such as `anyhow::Error` or `Box<dyn Error + Send + Sync>`:
    /// `is_retryable` says it, [`is_retryable`](crate::is_retryable) helping (see there).
    /// (`#[transactional(retry = N)]` reads those types by itself.)
    pub fn run_when<C, F, Fut, T, E>(
        self,
        is_retryable: C,
        make: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        C: Fn(&E) -> bool + Send + Sync + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let classify: Classify<Result<T, E>> =
            Arc::new(move |output: &Result<T, E>| output.as_ref().err().is_some_and(&is_retryable));
        retrying(
            self.tx.options,
            self.retries,
            None::<fn(&E) -> bool>,
            None,
            Some(classify),
            make,
        )
    }

    /// [`run`](Self::run), committing instead of rolling back when the body returns an `Err`
    /// for which `commit_on` is true (an error that commits is never retried).
    pub fn run_with_no_rollback_for<F, Fut, T, E, P>(
        self,
        commit_on: P,
        make: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error> + RetryableError,
        P: Fn(&E) -> bool,
    {
        let classify = Some(by_trait::<Result<T, E>>());
        retrying(
            self.tx.options,
            self.retries,
            Some(commit_on),
            None,
            classify,
            make,
        )
    }
}
