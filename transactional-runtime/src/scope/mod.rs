//! One run of a transactional scope, as one future that owns it from start to end.
//!
//! [`Scope`] is a small hand-written state machine: start (decide), body (polled with the
//! scope's context, its panic caught, its deadline watched), end (non-generic, in `end`), done.
//! Whatever state it is dropped in, its `Drop` hands exactly the remaining work to one place:
//! a running body is dropped first (so scopes inside it hand off first), then the scope is
//! abandoned (`Running::abandon`); an end under way finishes on a task of its own. Polling a
//! level costs its caller's stack one small frame: the body is boxed, and everything that is not
//! generic is in `start` and `end`. docs/ARCHITECTURE.md ("A scope") has the states.

mod attempt;
mod end;
mod end_future;
mod end_hooks;
mod start;

pub(crate) use attempt::{Attempt, Classify};

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::error::Error;
use crate::inspect::{DatabaseFailure, Facts};
use crate::options::TxOptions;
use end::Exit;
use end_future::{EndFuture, Report};
use start::Running;

/// What an annotated fn (or a scope's body) returns: a `Result` whose error type can carry the
/// library's own errors (a failed COMMIT, a timeout), which reach the caller through it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned by a #[transactional] fn: it must be a `Result<T, E>` whose `E` implements `From<transactional::Error>`",
    label = "the transaction's own errors (BEGIN or COMMIT failing, a timeout) are returned through this type",
    note = "return a `Result<T, E>` (an alias of one works too) and implement `From<transactional::Error>` for `E`"
)]
pub trait ScopeResult: Sized {
    /// The error type.
    type Error;
    /// The error, if this is one.
    fn error(&self) -> Option<&Self::Error>;
    /// A library error, returned instead of the body's output.
    fn from_library(error: Error) -> Self;
}

impl<T, E: From<Error>> ScopeResult for Result<T, E> {
    type Error = E;

    fn error(&self) -> Option<&E> {
        self.as_ref().err()
    }

    fn from_library(error: Error) -> Self {
        Err(error.into())
    }
}

/// A transactional scope around the body `B` (a boxed future: `Pin<Box<F>>`, or a
/// `Pin<Box<dyn Future + Send>>` that hides the body's type), with `P` deciding which errors
/// commit.
pub struct Scope<B: Future, P> {
    options: TxOptions,
    /// One attempt of a retried scope.
    attempt: Option<Attempt<B::Output>>,
    body: Option<B>,
    rule: Option<P>,
    /// The body's error as text, for the log line of the rollback it causes (the macro
    /// passes one for error types that implement `Display`).
    describe: Option<Describe<B::Output>>,
    stage: Stage,
    output: Option<B::Output>,
    panic: Option<Box<dyn Any + Send>>,
    /// Once it has completed as one attempt of a retried scope: whether another follows.
    again: bool,
    /// What the scope does with its output, fixed where its type is known to be a
    /// [`ScopeResult`] ([`Scope::new`]): so that the scope is a `Future` without asking again,
    /// and a return type that is not a `Result` is one compile error, not two.
    results: Results<B::Output, P>,
}

/// How a scope reads its body's output and makes one of the library's errors.
pub struct Results<R, P> {
    /// `None` for a success; for an error, whether the `no_rollback_for` rule commits it.
    exit: fn(&R, Option<&P>) -> Option<bool>,
    from_library: fn(Error) -> R,
}

impl<R: ScopeResult, P: Fn(&R::Error) -> bool> Results<R, P> {
    /// The results of a scope whose body returns `R`, with a rule of type `P`.
    pub fn of() -> Self {
        Results {
            exit: |output, rule| {
                let error = output.error()?;
                Some(rule.is_some_and(|rule| rule(error)))
            },
            from_library: R::from_library,
        }
    }
}

/// Reads the body's output when it is an error: its words (when the flag asks for them, for a
/// log line) and the database's error inside it (see `inspect`).
pub type Describe<R> = fn(&R, bool) -> Option<Facts>;

enum Stage {
    Start,
    Body(Running),
    End(EndFuture),
    Done,
}

// The body is pinned in its box; nothing else is ever pinned in place. (`Send` is the compiler's
// own: a scope is `Send` exactly when its body, its output and its rule are, which
// tests/async_send_sync.rs checks, and a body type-erased as `dyn Future + Send` proves a chain
// of annotated fns `Send` one level at a time.)
impl<B: Future, P> Unpin for Scope<B, P> {}

impl<B: Future, P> Scope<B, P> {
    /// Gives the scope a way to put the body's error in words, for its rollback's log line
    /// (what `#[transactional]` passes; see `__private`).
    pub(crate) fn describing(mut self, describe: Option<Describe<B::Output>>) -> Self {
        self.describe = describe;
        self
    }

    /// Makes the scope one attempt of a retried scope (see `retry`).
    pub(crate) fn retrying(mut self, attempt: Attempt<B::Output>) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// Once the scope has completed as one attempt of a retried scope: whether its end decided
    /// that another attempt follows.
    pub(crate) fn another_attempt(&self) -> bool {
        self.again
    }
}

impl<B, P> Scope<B, P>
where
    B: Future + Unpin,
    B::Output: ScopeResult,
    P: Fn(&<B::Output as ScopeResult>::Error) -> bool,
{
    pub(crate) fn new(options: TxOptions, rule: Option<P>, body: B) -> Self {
        Scope::with_results(options, rule, body, Results::of())
    }
}

impl<B: Future, P> Scope<B, P> {
    /// A scope whose output is read by `results` (made where its type is known to be a
    /// [`ScopeResult`]: see `__private::scope`).
    pub(crate) fn with_results(
        options: TxOptions,
        rule: Option<P>,
        body: B,
        results: Results<B::Output, P>,
    ) -> Self {
        Scope {
            options,
            attempt: None,
            body: Some(body),
            rule,
            describe: None,
            stage: Stage::Start,
            output: None,
            panic: None,
            again: false,
            results,
        }
    }
}

impl<B: Future + Unpin, P> Scope<B, P> {
    /// Polls the body with the scope's context; `None` while it is pending.
    #[inline]
    fn poll_body(&mut self, cx: &mut TaskContext<'_>) -> Option<Exit> {
        let Stage::Body(running) = &mut self.stage else {
            unreachable!("polling a body outside the body stage")
        };
        if running.deadline.is_some() && running.deadline_passed(cx) {
            return Some(Exit::Timeout);
        }
        let body = self.body.as_mut().expect("the body runs until it ends");
        let polled = {
            let _entered = running.span.enter();
            running
                .body_ctx
                .enter_here(|| catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *body).poll(cx))))
        };
        match polled {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(output)) => {
                let ended = match (self.results.exit)(&output, self.rule.as_ref()) {
                    None => Exit::Ok,
                    Some(commits) => {
                        if let Some(describe) = self.describe {
                            use tracing::Level;
                            let text =
                                tracing::enabled!(target: crate::trace::TARGET, Level::DEBUG);
                            if let Some(facts) = describe(&output, text) {
                                running.detail = facts.text;
                                running.failure = facts.database;
                            }
                        }
                        if let (Some(attempt), Some(state)) = (&self.attempt, &mut running.attempt)
                        {
                            state.body_retryable = match &attempt.classify {
                                Some(classify) => classify(&output),
                                None => running.failure.as_ref().is_some_and(|f| f.concurrent),
                            };
                            if state.body_retryable && running.failure.is_none() {
                                running.failure = Some(DatabaseFailure::concurrent_refusal());
                            }
                        }
                        Exit::Err { commits }
                    }
                };
                self.output = Some(output);
                Some(ended)
            }
            Err(payload) => {
                running.detail = Some(crate::hooks::panic_message(&*payload));
                self.panic = Some(payload);
                Some(Exit::Panic)
            }
        }
    }

    fn finish(&mut self, report: Report) -> B::Output {
        self.again = report.again;
        if let Some(payload) = self.panic.take().or(report.panic) {
            resume_unwind(payload);
        }
        if let Some(error) = report.error {
            return (self.results.from_library)(error);
        }
        self.output
            .take()
            .expect("a scope without an error has its body's output")
    }
}

impl<B: Future + Unpin, P> Future for Scope<B, P> {
    type Output = B::Output;

    // Every poll of every scope below this one passes through here, so this frame stays small:
    // the start, the end of the body and the end of the scope are in functions of their own.
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Stage::Start = this.stage {
            if let Err(error) = this.start() {
                return Poll::Ready((this.results.from_library)(error));
            }
        }
        if let Stage::Body(_) = this.stage {
            match this.poll_body(cx) {
                None => return Poll::Pending,
                Some(ended) => this.end_body(ended),
            }
        }
        this.poll_end(cx)
    }
}

impl<B: Future + Unpin, P> Scope<B, P> {
    #[inline(never)]
    fn start(&mut self) -> Result<(), Error> {
        let attempt = self.attempt.as_ref().map(Attempt::state);
        match Running::start(&self.options, attempt) {
            Ok(running) => {
                self.stage = Stage::Body(running);
                Ok(())
            }
            Err(error) => {
                self.stage = Stage::Done;
                self.body = None;
                Err(error)
            }
        }
    }

    #[inline(never)]
    fn end_body(&mut self, ended: Exit) {
        let Stage::Body(running) = std::mem::replace(&mut self.stage, Stage::Done) else {
            unreachable!("the body ends in the body stage")
        };
        // Stop a statement cut off by the deadline before its guard is dropped.
        if ended == Exit::Timeout {
            running.interrupt(true);
        }
        // Dropped in its own context, as it ran: a `Drop` in the body sees its scope.
        let body = &mut self.body;
        running.body_ctx.enter(|| *body = None);
        self.stage = Stage::End(running.end(ended));
    }

    #[inline(never)]
    fn poll_end(&mut self, cx: &mut TaskContext<'_>) -> Poll<B::Output> {
        let Stage::End(end) = &mut self.stage else {
            panic!("a transactional scope was polled after it completed")
        };
        let report = std::task::ready!(end.poll(cx));
        self.stage = Stage::Done;
        Poll::Ready(self.finish(report))
    }
}

/// The error of a scope that ran past its timeout.
fn timeout_error(options: &TxOptions) -> Error {
    Error::Timeout {
        scope: options.name.clone(),
        timeout: options.timeout.unwrap_or_default(),
    }
}

impl<B: Future, P> Drop for Scope<B, P> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Body(running) => {
                running.interrupt(false);
                // Scopes inside the body hand their work off first: innermost first. Dropped
                // in its own context, as it ran.
                let body = &mut self.body;
                running
                    .span
                    .in_scope(|| running.body_ctx.enter(|| *body = None));
                running.abandon();
            }
            // Finishes on a task of its own.
            Stage::End(end) => drop(end),
            Stage::Start | Stage::Done => {}
        }
    }
}
