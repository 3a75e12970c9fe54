//! The hooks at the end of a scope: before-commit hooks inside the transaction, within the
//! deadline; after-* hooks once it is over, in the context the scope was called from.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::Poll;

use futures_util::FutureExt;

use super::end::End;
use crate::error::Error;
use crate::events::EventKind;
use crate::hooks::{run_after, Ending};
use crate::transaction::Level;

impl End {
    /// Runs the before-commit hooks inside the transaction, within the deadline.
    pub(super) async fn before_commit(&self) -> Result<(), BeforeCommit> {
        let level = &self.frame.level;
        let mut hooks = Box::pin(
            AssertUnwindSafe(
                self.body_ctx
                    .in_this_task()
                    .scope(level.hooks.run_before_commit()),
            )
            .catch_unwind(),
        );
        let ran = match self.deadline {
            None => Some(hooks.as_mut().await),
            Some(deadline) => {
                let mut timer = Box::pin(tokio::time::sleep_until(deadline));
                std::future::poll_fn(|cx| {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    hooks.as_mut().poll(cx).map(Some)
                })
                .await
            }
        };
        match ran {
            Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(error))) => Err(BeforeCommit::Failed(error)),
            Some(Err(payload)) => Err(BeforeCommit::Panicked(payload)),
            None => {
                self.frame.tx().interrupt(&self.frame);
                drop(hooks);
                Err(BeforeCommit::TimedOut)
            }
        }
    }

    /// Runs the after-* hooks of a finished transaction, with no transaction current on its
    /// data source, in the context the scope was called from (with no transaction at all when
    /// the end finishes on a task of its own, after the caller has moved on).
    pub(super) async fn after(&self, level: &Level, ending: Ending) {
        if let Ending::Committed = ending {
            self.capture_after_commit(level);
        }
        let hooks = level.hooks.take();
        if hooks.is_empty() {
            return;
        }
        let outer = if self.detached.is_set() {
            self.outer.without_transactions()
        } else {
            self.outer.in_this_task()
        };
        let data_source = &self.frame.tx().data_source;
        let ctx = outer.for_scope(&data_source.name, None, None);
        let ran = |hook| data_source.emit(&self.options, &self.span, EventKind::HookRan { hook });
        ctx.scope(run_after(hooks, ending, &self.options.name, &ran))
            .await;
    }
}

impl End {
    /// Under `testing::capture_after_commit`, hands `level`'s after-commit hooks to the test
    /// instead of running them: called where production runs them (a commit), or would (the
    /// release of a savepoint that stands for a transaction under `testing::rollback_after`).
    pub(super) fn capture_after_commit(&self, level: &Level) {
        if let Some(sink) = self.outer.capture() {
            let hooks = level.hooks.take_after_commit();
            sink.lock().unwrap_or_else(|e| e.into_inner()).extend(hooks);
        }
    }
}

/// How the before-commit hooks failed.
pub(super) enum BeforeCommit {
    Failed(Error),
    Panicked(Box<dyn Any + Send>),
    TimedOut,
}
