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
/// ```no_run
/// use transactional_runtime::{Isolation, Propagation, Transactional};
/// # #[derive(Debug)] struct AppError;
/// # impl From<transactional_runtime::Error> for AppError { fn from(_: transactional_runtime::Error) -> Self { AppError } }
/// # async fn example() -> Result<(), AppError> {
/// let id = Transactional::new()
///     .propagation(Propagation::RequiresNew)
///     .isolation(Isolation::Serializable)
///     .run(async {
///         // queries through transactional::connection() run inside the transaction
///         Ok::<_, AppError>(42)
///     })
///     .await?;
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
    /// ```no_run
    /// use transactional_runtime::{Isolation, Transactional};
    /// # #[derive(Debug, thiserror::Error)] enum AppError { #[error(transparent)] Tx(#[from] transactional_runtime::Error) }
    /// # async fn transfer(from: i64, to: i64) -> Result<(), AppError> { Ok(()) }
    /// # async fn example() -> Result<(), AppError> {
    /// Transactional::new()
    ///     .isolation(Isolation::Serializable)
    ///     .retry(3)
    ///     .run(|| transfer(1, 2))
    ///     .await?;
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

    /// The scope of `testing::rollback_after`.
    pub(crate) fn run_as_test_root<F, T, E>(self, body: F) -> impl Future<Output = Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        Scope::new(self.options, None::<fn(&E) -> bool>, Box::pin(body)).test_root()
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

/// What `#[transactional]` expands to: not part of the API.
///
/// The body of an annotated fn that is surely `Send` (the macro decides from the signature, or
/// `send`) runs as a `Pin<Box<dyn Future + Send>>`, so that the type of its future does not
/// contain the types of the annotated fns it calls: proving a deep call chain `Send` (as
/// `tokio::spawn` does) takes one step per level instead of walking the whole chain, and 64
/// levels compile within the default `recursion_limit`. Otherwise (`local`) the body keeps its
/// own type.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;
    use std::pin::Pin;

    use super::Transactional;
    use crate::retry::{by_trait, retrying, RetryableError};
    pub use crate::scope::{Describe, Scope, ScopeResult};

    pub use crate::inspect::Facts;

    /// Reads a body's error as well as its type allows: the macro calls
    /// `(&&&&&&Inspect(error)).facts(text)`, which resolves, by autoref, to the first of
    /// [`ViaError`] (the error implements `std::error::Error`: its words and the database's
    /// error in its `source()` chain), [`ViaRetryable`] (it implements
    /// [`RetryableError`](crate::RetryableError) itself), [`ViaSendSyncDynError`] and
    /// [`ViaDynError`] (it gives a `dyn Error`: `anyhow::Error`, `Box<dyn Error + Send +
    /// Sync>`, `Box<dyn Error>`), [`ViaDisplay`] (its words only) and [`ViaNothing`]. With
    /// `retry` it calls `retry_facts`, which the last two have only for a type that implements
    /// [`Unreadable`]: none does, so an error type `retry` cannot read is a compile error.
    pub struct Inspect<'a, E>(pub &'a E);

    /// What `retry` cannot read: implemented for no type, so that its message is the compile
    /// error of `retry` on an error type that gives no database error and says nothing itself.
    #[diagnostic::on_unimplemented(
        message = "`retry` needs to tell whether a `{Self}` is a serialization failure or a deadlock",
        label = "this error type implements neither `std::error::Error` nor `RetryableError`, and gives no `dyn Error`",
        note = "implement `std::error::Error` for it (the database's error must be reachable through `source()`), or implement `transactional::RetryableError`"
    )]
    pub trait Unreadable {}

    /// [`Inspect`] of an error that implements `std::error::Error`.
    pub trait ViaError {
        /// What the error says; its words only if `text`.
        fn facts(&self, text: bool) -> Facts;
        /// [`facts`](Self::facts), for `retry`.
        fn retry_facts(&self, text: bool) -> Facts {
            self.facts(text)
        }
    }

    impl<E: std::error::Error + 'static> ViaError for &&&&&Inspect<'_, E> {
        fn facts(&self, text: bool) -> Facts {
            Facts::of_error(self.0, text)
        }
    }

    /// [`Inspect`] of an error that says itself whether it is worth another attempt.
    pub trait ViaRetryable {
        /// Whether the error is a refusal for a concurrent transaction.
        fn facts(&self, text: bool) -> Facts;
        /// [`facts`](Self::facts), for `retry`.
        fn retry_facts(&self, text: bool) -> Facts {
            self.facts(text)
        }
    }

    impl<E: RetryableError> ViaRetryable for &&&&Inspect<'_, E> {
        fn facts(&self, _: bool) -> Facts {
            Facts::of_retryable(self.0.is_retryable())
        }
    }

    /// [`Inspect`] of an error that gives a `dyn Error + Send + Sync` (`anyhow::Error`,
    /// `Box<dyn Error + Send + Sync>`).
    pub trait ViaSendSyncDynError {
        /// What the error says; its words only if `text`.
        fn facts(&self, text: bool) -> Facts;
        /// [`facts`](Self::facts), for `retry`.
        fn retry_facts(&self, text: bool) -> Facts {
            self.facts(text)
        }
    }

    impl<E> ViaSendSyncDynError for &&&Inspect<'_, E>
    where
        E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
    {
        fn facts(&self, text: bool) -> Facts {
            Facts::of_error(self.0.as_ref(), text)
        }
    }

    /// [`Inspect`] of an error that gives a `dyn Error` (`Box<dyn Error>`).
    pub trait ViaDynError {
        /// What the error says; its words only if `text`.
        fn facts(&self, text: bool) -> Facts;
        /// [`facts`](Self::facts), for `retry`.
        fn retry_facts(&self, text: bool) -> Facts {
            self.facts(text)
        }
    }

    impl<E: AsRef<dyn std::error::Error + 'static>> ViaDynError for &&Inspect<'_, E> {
        fn facts(&self, text: bool) -> Facts {
            Facts::of_error(self.0.as_ref(), text)
        }
    }

    /// [`Inspect`] of an error that implements `Display` only.
    pub trait ViaDisplay {
        /// The error type.
        type Error;
        /// The error's words, if `text`.
        fn facts(&self, text: bool) -> Facts;
        /// Not for `retry`: see [`Unreadable`].
        fn retry_facts(&self, text: bool) -> Facts
        where
            Self::Error: Unreadable,
        {
            self.facts(text)
        }
    }

    impl<E: std::fmt::Display> ViaDisplay for &Inspect<'_, E> {
        type Error = E;
        fn facts(&self, text: bool) -> Facts {
            Facts::of_text(text.then(|| self.0.to_string()))
        }
    }

    /// [`Inspect`] of any other error: nothing to read.
    pub trait ViaNothing {
        /// The error type.
        type Error;
        /// Nothing.
        fn facts(&self, text: bool) -> Facts;
        /// Not for `retry`: see [`Unreadable`].
        fn retry_facts(&self, text: bool) -> Facts
        where
            Self::Error: Unreadable,
        {
            self.facts(text)
        }
    }

    impl<E> ViaNothing for Inspect<'_, E> {
        type Error = E;
        fn facts(&self, _: bool) -> Facts {
            Facts::default()
        }
    }

    /// A `Send` body, type-erased.
    pub type Erased<'a, R> = Pin<Box<dyn Future<Output = R> + Send + 'a>>;

    /// The error type of an annotated fn's result.
    pub type ErrorOf<R> = <R as ScopeResult>::Error;

    /// What a scope without a `no_rollback_for` rule holds in the rule's place.
    pub type NoRule<R> = fn(&ErrorOf<R>) -> bool;

    /// A boxed body that is `Send` exactly when the body is, proven in one step.
    pub struct Boxed<F>(Pin<Box<F>>);

    // SAFETY: a `Pin<Box<F>>` is `Send` when `F` is.
    unsafe impl<F: Send> Send for Boxed<F> {}

    impl<F: Future> Future for Boxed<F> {
        type Output = F::Output;

        fn poll(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            self.0.as_mut().poll(cx)
        }
    }

    /// The scope of an annotated fn whose body is `Send`.
    ///
    /// `describe` reads the body's error (see [`Inspect`]).
    pub fn send<'a, F>(
        tx: Transactional,
        describe: Option<Describe<F::Output>>,
        body: F,
    ) -> Scope<Erased<'a, F::Output>, NoRule<F::Output>>
    where
        F: Future + Send + 'a,
        F::Output: ScopeResult,
    {
        let body: Erased<'a, F::Output> = Box::pin(body);
        Scope::new(tx.options, None, body).describing(describe)
    }

    /// [`send`], with a `no_rollback_for` rule.
    pub fn send_with_rule<'a, F, P>(
        tx: Transactional,
        commit_on: P,
        describe: Option<Describe<F::Output>>,
        body: F,
    ) -> Scope<Erased<'a, F::Output>, P>
    where
        F: Future + Send + 'a,
        F::Output: ScopeResult,
        P: Fn(&ErrorOf<F::Output>) -> bool,
    {
        let body: Erased<'a, F::Output> = Box::pin(body);
        Scope::new(tx.options, Some(commit_on), body).describing(describe)
    }

    /// The scope of an annotated fn whose body may not be `Send`: it keeps its type.
    pub fn local<F>(
        tx: Transactional,
        describe: Option<Describe<F::Output>>,
        body: F,
    ) -> Scope<Boxed<F>, NoRule<F::Output>>
    where
        F: Future,
        F::Output: ScopeResult,
    {
        Scope::new(tx.options, None, Boxed(Box::pin(body))).describing(describe)
    }

    /// The scope of an annotated fn with `retry = N` whose body is `Send`: `make` makes the
    /// body of each attempt (see [`Transactional::retry`]); `describe` reads its error, which
    /// says whether the database refused the transaction for a concurrent one.
    pub fn send_retrying<'a, F, Fut, P>(
        tx: Transactional,
        retries: u32,
        commit_on: Option<P>,
        describe: Describe<Fut::Output>,
        make: F,
    ) -> Erased<'a, Fut::Output>
    where
        F: FnMut() -> Fut + Send + 'a,
        Fut: Future + Send + 'a,
        Fut::Output: ScopeResult + Send,
        P: Fn(&ErrorOf<Fut::Output>) -> bool + Send + Sync + 'a,
    {
        Box::pin(retrying(
            tx.options,
            retries,
            commit_on,
            Some(describe),
            None,
            make,
        ))
    }

    /// [`send_retrying`] for a body that may not be `Send`.
    pub fn local_retrying<'a, F, Fut, P>(
        tx: Transactional,
        retries: u32,
        commit_on: Option<P>,
        describe: Describe<Fut::Output>,
        make: F,
    ) -> Pin<Box<dyn Future<Output = Fut::Output> + 'a>>
    where
        F: FnMut() -> Fut + 'a,
        Fut: Future + 'a,
        Fut::Output: ScopeResult,
        P: Fn(&ErrorOf<Fut::Output>) -> bool + 'a,
    {
        Box::pin(retrying(
            tx.options,
            retries,
            commit_on,
            Some(describe),
            None,
            make,
        ))
    }

    /// [`send_retrying`] for a return type the macro cannot read (one that does not read as
    /// a `Result`): its error type says whether it is worth another attempt.
    pub fn send_retrying_by_trait<'a, F, Fut, P>(
        tx: Transactional,
        retries: u32,
        commit_on: Option<P>,
        make: F,
    ) -> Erased<'a, Fut::Output>
    where
        F: FnMut() -> Fut + Send + 'a,
        Fut: Future + Send + 'a,
        Fut::Output: ScopeResult + Send,
        ErrorOf<Fut::Output>: RetryableError,
        P: Fn(&ErrorOf<Fut::Output>) -> bool + Send + Sync + 'a,
    {
        let classify = Some(by_trait::<Fut::Output>());
        Box::pin(retrying(
            tx.options, retries, commit_on, None, classify, make,
        ))
    }

    /// [`send_retrying_by_trait`] for a body that may not be `Send`.
    pub fn local_retrying_by_trait<'a, F, Fut, P>(
        tx: Transactional,
        retries: u32,
        commit_on: Option<P>,
        make: F,
    ) -> Pin<Box<dyn Future<Output = Fut::Output> + 'a>>
    where
        F: FnMut() -> Fut + 'a,
        Fut: Future + 'a,
        Fut::Output: ScopeResult,
        ErrorOf<Fut::Output>: RetryableError,
        P: Fn(&ErrorOf<Fut::Output>) -> bool + 'a,
    {
        let classify = Some(by_trait::<Fut::Output>());
        Box::pin(retrying(
            tx.options, retries, commit_on, None, classify, make,
        ))
    }

    /// [`local`], with a `no_rollback_for` rule.
    pub fn local_with_rule<F, P>(
        tx: Transactional,
        commit_on: P,
        describe: Option<Describe<F::Output>>,
        body: F,
    ) -> Scope<Boxed<F>, P>
    where
        F: Future,
        F::Output: ScopeResult,
        P: Fn(&ErrorOf<F::Output>) -> bool,
    {
        Scope::new(tx.options, Some(commit_on), Boxed(Box::pin(body))).describing(describe)
    }
}
