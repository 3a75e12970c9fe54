//! The task-local context: per data source, the transaction current in this task; which data
//! source `connection()` means; data sources registered for this task only; and the switches
//! that testing support plugs into.
//!
//! Every scope polls its body with its own view of the context, so "suspending" a transaction
//! is shadowing it: the outer view comes back by itself when the inner scope ends, however it
//! ends. Futures joined or selected inside a scope share it; a `tokio::spawn`ed or
//! `spawn_local`ed task starts with an empty context, as a new thread does in Spring.

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use tokio::task::Id as TaskId;
use tokio::time::Instant;

use crate::data_source::{lookup_global, DataSource, DataSourceSettings};
use crate::error::Error;
use crate::hooks::{Ending, Hook};
use crate::options::DEFAULT_DATA_SOURCE;
use crate::transaction::Frame;

thread_local! {
    /// The context of the scope being polled on this thread, set for the duration of each poll
    /// (see [`Context::enter`]); null outside any.
    static CURRENT: Cell<*const Inner> = const { Cell::new(std::ptr::null()) };
}

/// Whether transactions are real here, or mocked out by testing support.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum Mode {
    #[default]
    Real,
    /// Every scope runs its body directly; hooks run at once as if the transaction ended so.
    Mocked(Ending),
}

/// Where after-commit hooks go instead of their transaction (testing support).
pub(crate) type HookSink = Mutex<Vec<Hook>>;

/// What the task can see.
#[derive(Clone, Default)]
pub(crate) struct Context {
    inner: Arc<Inner>,
}

#[derive(Clone, Default)]
struct Inner {
    /// The task this context belongs to: polled from another task (a local task polled
    /// inside a scope's body), it is not seen.
    task: Option<TaskId>,
    /// Per data source name: the frame of the innermost scope, or `None` where a scope runs
    /// without a transaction (suspending any outer one).
    bindings: Vec<(Arc<str>, Option<Arc<Frame>>)>,
    /// The data source of the innermost scope: the one `connection()` means.
    current: Option<Arc<str>>,
    /// The earliest deadline of the scopes around.
    deadline: Option<Instant>,
    /// Data sources registered for this task only; they shadow the global registry.
    scoped: Vec<Arc<DataSource>>,
    mode: Mode,
    capture: Option<Arc<HookSink>>,
    /// The transaction of `testing::rollback_after`: a scope that would join it takes a
    /// savepoint instead, as if it began a transaction of its own.
    test_root: Option<Arc<Frame>>,
    /// Per data source name: the commit position its replicas must have replayed before a
    /// read-only transaction of this task may run on one (`replica::read_after`).
    read_after: Vec<(Arc<str>, i64)>,
    /// Connections outside a transaction are meant to autocommit here, also on strict data
    /// sources (`autocommit`).
    autocommit: bool,
}

impl Context {
    /// The context of the running task (empty outside any scope, outside tokio, and in a
    /// task other than the one it was made in).
    pub(crate) fn current() -> Context {
        let current = CURRENT.with(Cell::get);
        if current.is_null() {
            return Context::default();
        }
        // SAFETY: `CURRENT` is non-null only inside `enter`, which borrows the `Context` (and so
        // an `Arc` of this `Inner`) for as long as the pointer is set. (Run under Miri: the
        // tests at the end of this file.)
        #[allow(unsafe_code)]
        let inner = unsafe {
            Arc::increment_strong_count(current);
            Arc::from_raw(current)
        };
        if inner.task == tokio::task::try_id() {
            Context { inner }
        } else {
            Context::default()
        }
    }

    fn derive(&self, change: impl FnOnce(&mut Inner)) -> Context {
        let mut inner = (*self.inner).clone();
        inner.task = tokio::task::try_id();
        change(&mut inner);
        Context {
            inner: Arc::new(inner),
        }
    }

    /// This context, for work running in the current task (a scope's end that moved to a
    /// task of its own).
    pub(crate) fn in_this_task(&self) -> Context {
        self.derive(|_| {})
    }

    /// The frame of the transaction current on `data_source`, if any: none where no scope
    /// bound one, or the innermost scope runs without a transaction.
    pub(crate) fn frame(&self, data_source: &str) -> Option<&Arc<Frame>> {
        self.inner
            .bindings
            .iter()
            .find(|(name, _)| &**name == data_source)
            .and_then(|(_, frame)| frame.as_ref())
    }

    /// The data source `connection()` means here: the innermost scope's, else `"default"`.
    pub(crate) fn current_data_source(&self) -> &str {
        self.inner.current.as_deref().unwrap_or(DEFAULT_DATA_SOURCE)
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// The context of a scope's body: `frame` (or no transaction) current on `data_source`,
    /// which becomes the current data source; `deadline` tightens the one around.
    pub(crate) fn for_scope(
        &self,
        data_source: &Arc<str>,
        frame: Option<Arc<Frame>>,
        deadline: Option<Instant>,
    ) -> Context {
        self.derive(|inner| {
            inner.bindings.retain(|(name, _)| name != data_source);
            inner.bindings.push((data_source.clone(), frame));
            inner.current = Some(data_source.clone());
            inner.deadline = match (inner.deadline, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        })
    }

    /// This context with no transaction current on any data source: for hooks that run on a
    /// task of their own, after the scopes around them have moved on.
    pub(crate) fn without_transactions(&self) -> Context {
        self.derive(|inner| {
            for (_, frame) in &mut inner.bindings {
                *frame = None;
            }
        })
    }

    /// This context with `data_source` registered for the task.
    pub(crate) fn with_data_source(&self, data_source: DataSource) -> Context {
        self.derive(|inner| {
            inner.scoped.retain(|ds| ds.name != data_source.name);
            inner.bindings.retain(|(name, _)| *name != data_source.name);
            inner.scoped.push(Arc::new(data_source));
        })
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

    /// This context, whose read-only transactions of `data_source` wait for `position`.
    pub(crate) fn with_read_after(&self, data_source: &str, position: i64) -> Context {
        self.derive(|inner| {
            let earlier = inner
                .read_after
                .iter()
                .filter(|(name, _)| &**name == data_source)
                .map(|(_, at)| *at)
                .max()
                .unwrap_or(i64::MIN);
            inner.read_after.retain(|(name, _)| &**name != data_source);
            inner
                .read_after
                .push((Arc::from(data_source), position.max(earlier)));
        })
    }

    /// The position this task's read-only transactions of `data_source` must find replayed.
    pub(crate) fn read_after(&self, data_source: &str) -> Option<i64> {
        self.inner
            .read_after
            .iter()
            .find(|(name, _)| &**name == data_source)
            .map(|(_, at)| *at)
    }

    /// This context, in which connections outside a transaction may autocommit on every data
    /// source (see [`autocommit`](crate::autocommit)).
    pub(crate) fn with_autocommit(&self) -> Context {
        self.derive(|inner| inner.autocommit = true)
    }

    /// Whether a connection of `data_source` outside a transaction is meant to autocommit
    /// here: a scope around declared that it runs without a transaction (`SUPPORTS`,
    /// `NOT_SUPPORTED`, `NEVER`; hooks after the end), the code runs under `autocommit`, or
    /// transactions are mocked out.
    pub(crate) fn autocommit_meant(&self, data_source: &str) -> bool {
        self.inner.autocommit
            || matches!(self.mode(), Mode::Mocked(_))
            || self
                .inner
                .bindings
                .iter()
                .any(|(name, frame)| &**name == data_source && frame.is_none())
    }

    pub(crate) fn with_mode(&self, mode: Mode) -> Context {
        self.derive(|inner| inner.mode = mode)
    }

    /// Whether transactions are mocked out here: by `testing::mocked`, or for the whole build
    /// by the `mock` feature.
    pub(crate) fn mode(&self) -> Mode {
        match self.inner.mode {
            Mode::Real if cfg!(feature = "mock") => Mode::Mocked(Ending::Committed),
            mode => mode,
        }
    }

    pub(crate) fn with_capture(&self, sink: Arc<HookSink>) -> Context {
        self.derive(|inner| inner.capture = Some(sink))
    }

    pub(crate) fn capture(&self) -> Option<&Arc<HookSink>> {
        self.inner.capture.as_ref()
    }

    /// Whether `frame` is the transaction of `testing::rollback_after` (see [`as_test_root`]).
    pub(crate) fn is_test_root(&self, frame: &Arc<Frame>) -> bool {
        self.inner
            .test_root
            .as_ref()
            .is_some_and(|root| Arc::ptr_eq(root, frame))
    }

    /// Runs `f` with this context current (a scope does so for every poll of its body). A
    /// thread-local pointer swapped in and out: cheap, and a small stack frame, since every
    /// poll of a deep call chain passes through one of these per scope.
    #[inline]
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Inner);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|current| current.set(self.0));
            }
        }
        let previous = CURRENT.with(|current| current.replace(Arc::as_ptr(&self.inner)));
        let _restore = Restore(previous);
        f()
    }

    /// [`Context::enter`] from whatever task polls now: a future that moved to another task
    /// (a scope's end that finishes on a task of its own) takes its context along.
    #[inline]
    pub(crate) fn enter_here<R>(&mut self, f: impl FnOnce() -> R) -> R {
        if self.inner.task != tokio::task::try_id() {
            *self = self.in_this_task();
        }
        self.enter(f)
    }

    /// Runs `fut` with this context current, in whatever task polls it.
    pub(crate) async fn scope<F: Future>(self, fut: F) -> F::Output {
        let mut ctx = self;
        let mut fut = pin!(fut);
        std::future::poll_fn(|cx| ctx.enter_here(|| fut.as_mut().poll(cx))).await
    }
}

/// Runs `fut` with the transaction current on `data_source` as the test's own, for
/// `testing::rollback_after`: a scope inside `fut` that would join it (and would begin a
/// transaction of its own in production) takes a savepoint of it instead.
pub(crate) async fn as_test_root<F: Future>(data_source: &str, fut: F) -> F::Output {
    let ctx = Context::current();
    let root = ctx.frame(data_source).cloned();
    ctx.derive(|inner| inner.test_root = root).scope(fut).await
}

/// Runs `fut` with `pool` registered as `name` for this task only, shadowing any global
/// registration of that name; scopes inside `fut` (joined and selected futures included, but
/// not spawned tasks) see it. Parallel tests use it to give each test its own pool.
///
/// Fails with [`Error::UnsupportedDatabase`] before running `fut` for an unknown database.
pub async fn with_data_source<DB, F>(
    name: &str,
    pool: sqlx::Pool<DB>,
    fut: F,
) -> Result<F::Output, Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    F: Future,
{
    with_data_source_settings(name, pool, DataSourceSettings::new(), fut).await
}

/// Like [`with_data_source`], with [`DataSourceSettings`].
pub async fn with_data_source_settings<DB, F>(
    name: &str,
    pool: sqlx::Pool<DB>,
    settings: DataSourceSettings,
    fut: F,
) -> Result<F::Output, Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    F: Future,
{
    let data_source = DataSource::from_pool(name, pool, settings)?;
    Ok(Context::current()
        .with_data_source(data_source)
        .scope(fut)
        .await)
}

/// The thread-local pointer's `unsafe` under Miri (`cargo +nightly miri test -p
/// transactional-runtime --lib context::`, a step of `.ci/run`): every pointer `current` reads
/// is alive, counted, and restored on the way out, however `enter` is left.
#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Context {
        let name: Arc<str> = Arc::from(name);
        Context::default().derive(|inner| inner.current = Some(name))
    }

    fn seen() -> String {
        Context::current().current_data_source().to_owned()
    }

    #[test]
    fn current_is_the_entered_context_and_the_previous_one_comes_back() {
        let (outer, inner) = (named("outer"), named("inner"));
        assert_eq!(seen(), DEFAULT_DATA_SOURCE);
        outer.enter(|| {
            assert_eq!(seen(), "outer");
            inner.enter(|| assert_eq!(seen(), "inner"));
            assert_eq!(seen(), "outer");
        });
        assert!(CURRENT.with(Cell::get).is_null());
        assert_eq!(Arc::strong_count(&outer.inner), 1, "no count leaked");
    }

    #[test]
    fn a_context_taken_inside_outlives_its_enter_and_its_owner() {
        let outer = named("outer");
        let taken = outer.enter(Context::current);
        assert_eq!(Arc::strong_count(&outer.inner), 2);
        drop(outer);
        assert_eq!(taken.current_data_source(), "outer");
        assert_eq!(Arc::strong_count(&taken.inner), 1);
    }

    #[test]
    fn a_panic_inside_restores_the_previous_context() {
        let (outer, inner) = (named("outer"), named("inner"));
        outer.enter(|| {
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                inner.enter(|| panic!("inside"))
            }));
            assert!(panicked.is_err());
            assert_eq!(seen(), "outer");
        });
        assert!(CURRENT.with(Cell::get).is_null());
    }

    #[test]
    fn another_thread_sees_no_context() {
        let outer = named("outer");
        outer.enter(|| {
            let other = std::thread::spawn(seen).join().expect("no panic");
            assert_eq!(other, DEFAULT_DATA_SOURCE);
        });
    }
}
