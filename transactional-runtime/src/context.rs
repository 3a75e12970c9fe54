//! The task-local context: per data source, the transaction current in this task.
//!
//! Every scope runs its body inside `CONTEXT.scope(..)` with its own view of the context, so
//! "suspending" a transaction is shadowing it: the outer context comes back by itself when the
//! inner scope ends, however it ends. Futures joined or selected inside a scope share it; a
//! `tokio::spawn`ed task starts with an empty context, as a new thread does in Spring.

use std::future::Future;
use std::sync::Arc;

use crate::data_source::{lookup_global, DataSource};
use crate::error::Error;
use crate::hooks::HookSink;
use crate::testing::MockOutcome;
use crate::transaction::Frame;

tokio::task_local! {
    static CONTEXT: Context;
}

/// What the task can see: the transaction per data source, and data sources scoped to it.
#[derive(Clone, Default)]
pub(crate) struct Context {
    inner: Arc<Inner>,
}

#[derive(Clone, Default)]
struct Inner {
    /// Per data source name: the frame of the innermost scope, or `None` where a scope runs
    /// without a transaction (suspending any outer one).
    bindings: Vec<(Arc<str>, Option<Arc<Frame>>)>,
    /// Data sources registered for this task only; they shadow the global registry.
    scoped: Vec<Arc<DataSource>>,
    /// Transactions mocked out: every scope runs its body directly.
    mocked: Option<MockOutcome>,
    /// Where after-commit hooks go instead of their transaction.
    capture: Option<Arc<HookSink>>,
}

impl Context {
    /// The context of the running task (empty outside any scope or outside tokio).
    pub(crate) fn current() -> Context {
        CONTEXT.try_with(Context::clone).unwrap_or_default()
    }

    /// The frame of the transaction current for `data_source`, if any.
    pub(crate) fn frame(&self, data_source: &str) -> Option<&Arc<Frame>> {
        self.inner
            .bindings
            .iter()
            .rev()
            .find(|(name, _)| &**name == data_source)
            .and_then(|(_, frame)| frame.as_ref())
    }

    /// This context with `frame` (or no transaction) current for `data_source`.
    pub(crate) fn with_frame(&self, data_source: &Arc<str>, frame: Option<Arc<Frame>>) -> Context {
        let mut inner = (*self.inner).clone();
        inner.bindings.retain(|(name, _)| name != data_source);
        inner.bindings.push((data_source.clone(), frame));
        Context {
            inner: Arc::new(inner),
        }
    }

    /// This context with `data_source` registered for the task.
    pub(crate) fn with_data_source(&self, data_source: DataSource) -> Context {
        let mut inner = (*self.inner).clone();
        inner.scoped.retain(|ds| ds.name != data_source.name);
        inner.bindings.retain(|(name, _)| *name != data_source.name);
        inner.scoped.push(Arc::new(data_source));
        Context {
            inner: Arc::new(inner),
        }
    }

    /// The data source called `name`: scoped to this task first, then the global registry.
    pub(crate) fn data_source(&self, name: &str) -> Result<Arc<DataSource>, Error> {
        self.inner
            .scoped
            .iter()
            .rev()
            .find(|ds| &*ds.name == name)
            .cloned()
            .or_else(|| lookup_global(name))
            .ok_or_else(|| Error::NoDataSource {
                name: name.to_owned(),
            })
    }

    /// This context with transactions mocked out (`None` turns the mock off again).
    pub(crate) fn with_mocked(&self, mocked: Option<MockOutcome>) -> Context {
        let mut inner = (*self.inner).clone();
        inner.mocked = mocked;
        Context {
            inner: Arc::new(inner),
        }
    }

    /// Whether transactions are mocked out here: by `testing::mocked`, or for the whole build
    /// by the `mock` feature.
    pub(crate) fn mocked(&self) -> Option<MockOutcome> {
        self.inner.mocked.or(if cfg!(feature = "mock") {
            Some(MockOutcome::Commit)
        } else {
            None
        })
    }

    /// This context with after-commit hooks captured into `sink`.
    pub(crate) fn with_capture(&self, sink: Arc<HookSink>) -> Context {
        let mut inner = (*self.inner).clone();
        inner.capture = Some(sink);
        Context {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn capture(&self) -> Option<&Arc<HookSink>> {
        self.inner.capture.as_ref()
    }

    /// Runs `fut` with this context current.
    pub(crate) async fn scope<F: Future>(self, fut: F) -> F::Output {
        CONTEXT.scope(self, fut).await
    }
}
