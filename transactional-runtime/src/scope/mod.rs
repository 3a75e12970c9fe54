//! One run of a transactional scope, as one future that owns it from start to end.
//!
//! [`Scope`] is a small hand-written state machine: start (decide), body (polled with the
//! scope's context, its panic caught, its deadline watched), end (non-generic, in `end`), done.
//! Whatever state it is dropped in, its `Drop` hands exactly the remaining work to one place:
//! a running body is dropped first (so scopes inside it hand off first), then the scope is
//! abandoned (`Running::abandon`); an end under way finishes on a task of its own. Polling a
//! level costs its caller's stack one small frame: the body is boxed, and everything that is not
//! generic is in `start` and `end`. docs/ARCHITECTURE.md ("A scope") has the states.

mod end;
mod start;

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::error::Error;
use crate::options::TxOptions;
use end::{BodyEnd, Report, ScopeEnd};
use start::Running;

/// A transactional scope around `F`, with `P` deciding which errors commit.
pub(crate) struct Scope<F: Future, P> {
    options: TxOptions,
    /// `testing::rollback_after`'s own scope.
    test_root: bool,
    body: Option<Pin<Box<F>>>,
    rule: Option<P>,
    stage: Stage,
    output: Option<F::Output>,
    panic: Option<Box<dyn Any + Send>>,
}

enum Stage {
    Start,
    Body(Running),
    End(ScopeEnd),
    Done,
}

// The body is pinned in its box; nothing else is ever pinned in place.
impl<F: Future, P> Unpin for Scope<F, P> {}

impl<F, T, E, P> Scope<F, P>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
    P: Fn(&E) -> bool,
{
    pub(crate) fn new(options: TxOptions, rule: Option<P>, body: F) -> Self {
        Scope {
            options,
            test_root: false,
            body: Some(Box::pin(body)),
            rule,
            stage: Stage::Start,
            output: None,
            panic: None,
        }
    }

    /// The scope of `testing::rollback_after`: scopes that would join it take a savepoint.
    pub(crate) fn test_root(mut self) -> Self {
        self.test_root = true;
        self
    }

    /// Polls the body with the scope's context; `None` while it is pending.
    fn poll_body(&mut self, cx: &mut TaskContext<'_>) -> Option<BodyEnd> {
        let Stage::Body(running) = &mut self.stage else {
            unreachable!("polling a body outside the body stage")
        };
        if let Some((_, timer)) = &mut running.deadline {
            if timer.as_mut().poll(cx).is_ready() {
                return Some(BodyEnd::Timeout);
            }
        }
        let body = self.body.as_mut().expect("the body runs until it ends");
        let polled = running
            .body_ctx
            .enter(|| catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx))));
        match polled {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(Ok(value))) => {
                self.output = Some(Ok(value));
                Some(BodyEnd::Ok)
            }
            Ok(Poll::Ready(Err(error))) => {
                let commits = self.rule.as_ref().is_some_and(|rule| rule(&error));
                self.output = Some(Err(error));
                Some(BodyEnd::Err { commits })
            }
            Err(payload) => {
                self.panic = Some(payload);
                Some(BodyEnd::Panic)
            }
        }
    }

    fn finish(&mut self, report: Report) -> Result<T, E> {
        if let Some(payload) = self.panic.take().or(report.panic) {
            resume_unwind(payload);
        }
        if let Some(error) = report.error {
            return Err(error.into());
        }
        self.output
            .take()
            .expect("a scope without an error has its body's output")
    }
}

impl<F, T, E, P> Future for Scope<F, P>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
    P: Fn(&E) -> bool,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Start => match Running::start(&this.options, this.test_root) {
                    Ok(running) => this.stage = Stage::Body(running),
                    Err(error) => {
                        this.stage = Stage::Done;
                        this.body = None;
                        return Poll::Ready(Err(error.into()));
                    }
                },
                Stage::Body(_) => {
                    let Some(ended) = this.poll_body(cx) else {
                        return Poll::Pending;
                    };
                    let Stage::Body(running) = std::mem::replace(&mut this.stage, Stage::Done)
                    else {
                        unreachable!()
                    };
                    // Stop a statement cut off by the deadline before its guard is dropped.
                    let cancel = match ended {
                        BodyEnd::Timeout => running.interrupt(true),
                        _ => None,
                    };
                    this.body = None;
                    this.stage = Stage::End(running.end(ended, cancel));
                }
                Stage::End(end) => {
                    let report = std::task::ready!(end.poll(cx));
                    this.stage = Stage::Done;
                    return Poll::Ready(this.finish(report));
                }
                Stage::Done => panic!("a transactional scope was polled after it completed"),
            }
        }
    }
}

impl<F: Future, P> Drop for Scope<F, P> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Body(running) => {
                let cancel = running.interrupt(false);
                // Scopes inside the body hand their work off first: innermost first.
                self.body = None;
                running.abandon(cancel);
            }
            // Finishes on a task of its own.
            Stage::End(end) => drop(end),
            Stage::Start | Stage::Done => {}
        }
    }
}
