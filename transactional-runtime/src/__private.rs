//! What `#[transactional]` expands to: not part of the API.
//!
//! The body of an annotated fn that is surely `Send` (the macro decides from the signature, or
//! `send`) runs as a `Pin<Box<dyn Future + Send>>`, so that the type of its future does not
//! contain the types of the annotated fns it calls: proving a deep call chain `Send` (as
//! `tokio::spawn` does) takes one step per level instead of walking the whole chain, and 64
//! levels compile within the default `recursion_limit`. Otherwise (`local`) the body keeps its
//! own type.

use std::future::Future;
use std::pin::Pin;

use crate::builder::Transactional;
pub use crate::inspect::Facts;
use crate::retry::{by_trait, retrying, RetryableError};
pub use crate::scope::{Describe, Scope, ScopeResult};

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

/// A boxed body: `Send` exactly when the body is (as a `Pin<Box<F>>` is).
pub struct Boxed<F>(Pin<Box<F>>);

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
    Scope::new(tx.into_options(), None, body).describing(describe)
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
    Scope::new(tx.into_options(), Some(commit_on), body).describing(describe)
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
    Scope::new(tx.into_options(), None, Boxed(Box::pin(body))).describing(describe)
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
        tx.into_options(),
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
        tx.into_options(),
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
        tx.into_options(),
        retries,
        commit_on,
        None,
        classify,
        make,
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
        tx.into_options(),
        retries,
        commit_on,
        None,
        classify,
        make,
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
    Scope::new(tx.into_options(), Some(commit_on), Boxed(Box::pin(body))).describing(describe)
}
