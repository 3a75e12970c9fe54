//! What `#[transactional]` expands to: not part of the API. One entry point, [`scope`], and
//! the error-reading levels of [`Inspect`].
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
use crate::options::TxOptions;
use crate::retry::{retrying, RetryableError};
pub use crate::scope::{Describe, Results, Scope, ScopeResult};

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

/// Whether an error is worth another attempt (see `retry`).
pub type Classify<R> = crate::scope::Classify<R>;

/// The macro's one entry point: the scope of an annotated fn, from its builder (the options of
/// its attribute), its body (one of [`SendBody`], [`LocalBody`], [`SendAttempts`],
/// [`LocalAttempts`]) and the rest of its attribute ([`Spec`]). The fn's return type must be a
/// [`ScopeResult`]: asked here once, so that a return type that is not a `Result` is one error,
/// on this call (which the macro gives the return type's span).
pub fn scope<'a, B, P>(tx: Transactional, body: B, spec: Spec<B::Output, P>) -> B::Scope
where
    B: Body<'a, P>,
    B::Output: ScopeResult,
    P: Fn(&ErrorOf<B::Output>) -> bool,
{
    body.into_scope(tx.into_options(), spec, Results::of())
}

/// What `#[transactional]` says besides its options and its body.
pub struct Spec<R, P> {
    /// `no_rollback_for`: the errors that commit.
    pub rule: Option<P>,
    /// Reads the body's error (see [`Inspect`]): its words, the database's error in it.
    pub describe: Option<Describe<R>>,
    /// With `retry`, for an error type that says itself whether it is worth another attempt
    /// ([`by_trait`]); `None` otherwise.
    pub classify: Option<Classify<R>>,
}

/// The classifier of an error type that implements [`RetryableError`]: what `retry` uses for a
/// return type that does not read as a `Result` (whose error the describer cannot name).
pub fn by_trait<R>() -> Classify<R>
where
    R: ScopeResult,
    R::Error: RetryableError,
{
    crate::retry::by_trait()
}

/// An annotated fn's body, as the macro hands it to [`scope`]. A plain body's impls ask nothing of
/// its output: [`scope`] does, once.
pub trait Body<'a, P> {
    /// What the fn returns.
    type Output;
    /// The future of its scope.
    type Scope: Future<Output = Self::Output> + 'a;
    /// The scope of this body, with `options`, `spec`, and `results` (how it reads its output).
    fn into_scope(
        self,
        options: TxOptions,
        spec: Spec<Self::Output, P>,
        results: Results<Self::Output, P>,
    ) -> Self::Scope;
}

/// A body that is surely `Send`, type-erased (see the module's docs).
pub struct SendBody<F>(pub F);

/// A body whose `Send`-ness is unknown where the macro expands (a generic fn, a method): it keeps
/// its own type.
pub struct LocalBody<F>(pub F);

/// With `retry = N`: a `Send` body made anew for each attempt, and `N`.
pub struct SendAttempts<M>(pub M, pub u32);

/// [`SendAttempts`] of a body whose `Send`-ness is unknown.
pub struct LocalAttempts<M>(pub M, pub u32);

impl<'a, F, P> Body<'a, P> for SendBody<F>
where
    F: Future + Send + 'a,
    P: 'a,
{
    type Output = F::Output;
    type Scope = Scope<Erased<'a, F::Output>, P>;

    fn into_scope(
        self,
        options: TxOptions,
        spec: Spec<F::Output, P>,
        results: Results<F::Output, P>,
    ) -> Self::Scope {
        let body: Erased<'a, F::Output> = Box::pin(self.0);
        Scope::with_results(options, spec.rule, body, results).describing(spec.describe)
    }
}

impl<'a, F, P> Body<'a, P> for LocalBody<F>
where
    F: Future + 'a,
    P: 'a,
{
    type Output = F::Output;
    type Scope = Scope<Boxed<F>, P>;

    fn into_scope(
        self,
        options: TxOptions,
        spec: Spec<F::Output, P>,
        results: Results<F::Output, P>,
    ) -> Self::Scope {
        let body = Boxed(Box::pin(self.0));
        Scope::with_results(options, spec.rule, body, results).describing(spec.describe)
    }
}

impl<'a, M, Fut, P> Body<'a, P> for SendAttempts<M>
where
    M: FnMut() -> Fut + Send + 'a,
    Fut: Future + Send + 'a,
    Fut::Output: ScopeResult + Send,
    P: Fn(&ErrorOf<Fut::Output>) -> bool + Send + Sync + 'a,
{
    type Output = Fut::Output;
    type Scope = Erased<'a, Fut::Output>;

    fn into_scope(
        self,
        options: TxOptions,
        spec: Spec<Fut::Output, P>,
        _: Results<Fut::Output, P>,
    ) -> Self::Scope {
        let SendAttempts(make, retries) = self;
        let Spec {
            rule,
            describe,
            classify,
        } = spec;
        Box::pin(retrying(options, retries, rule, describe, classify, make))
    }
}

impl<'a, M, Fut, P> Body<'a, P> for LocalAttempts<M>
where
    M: FnMut() -> Fut + 'a,
    Fut: Future + 'a,
    Fut::Output: ScopeResult,
    P: Fn(&ErrorOf<Fut::Output>) -> bool + 'a,
{
    type Output = Fut::Output;
    type Scope = Pin<Box<dyn Future<Output = Fut::Output> + 'a>>;

    fn into_scope(
        self,
        options: TxOptions,
        spec: Spec<Fut::Output, P>,
        _: Results<Fut::Output, P>,
    ) -> Self::Scope {
        let LocalAttempts(make, retries) = self;
        let Spec {
            rule,
            describe,
            classify,
        } = spec;
        Box::pin(retrying(options, retries, rule, describe, classify, make))
    }
}

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
