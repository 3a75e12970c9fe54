//! Testing support: mock transactions out of unit tests, record what the runtime would send,
//! capture after-commit hooks, and run a test inside a transaction that always rolls back.
//!
//! Everything here is scoped to the future it wraps (a task-local), so parallel tests never
//! see each other's mode: a mocked test and a real one can run side by side. Like the current
//! transaction, the mode does not follow `tokio::spawn`.
//!
//! | want | use |
//! |---|---|
//! | unit-test a service with no database at all | [`mocked`], or the `mock` cargo feature for a whole test build |
//! | assert which transactions a call began, joined, nested, committed, rolled back | [`MockDataSource`] |
//! | assert the after-commit hooks a call registered, and maybe run them | [`capture_after_commit`] |
//! | test against a real database and leave it clean | [`rollback_after`] |

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::builder::Transactional;
use crate::context::{Context, HookSink, Mode};
use crate::data_source::{Backend, DataSource, DataSourceSettings, Source};
use crate::dialect::Dialect;
use crate::driver::{Armed, Conn, TxConnection, Watch};
use crate::error::Error;
use crate::events::ScopeEvent;
use crate::hooks::{run_after, Ending, Hook, RollbackCause};
use crate::name::Name;
use crate::options::DEFAULT_DATA_SOURCE;

/// How mocked-out transactions end, as far as hooks can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MockOutcome {
    /// As if every transaction committed: after-commit and after-completion hooks run at once
    /// when registered, after-rollback hooks never.
    #[default]
    Commit,
    /// As if every transaction rolled back: after-rollback hooks (told
    /// [`RollbackCause::RollbackOnly`]) and after-completion hooks run at once, before-commit
    /// and after-commit hooks never.
    Rollback,
}

impl MockOutcome {
    fn ending(self) -> Ending {
        match self {
            MockOutcome::Commit => Ending::Committed,
            MockOutcome::Rollback => Ending::RolledBack(RollbackCause::RollbackOnly),
        }
    }
}

/// Runs `fut` with transactions mocked out: every transactional scope inside just runs its
/// body, with no data source registered and no database; hooks run as if each transaction
/// committed ([`MockOutcome::Commit`]).
///
/// For a whole test build, turn on the `mock` feature instead:
/// `transactional = { version = "…", features = ["mock"] }` under `[dev-dependencies]`.
///
/// ```
/// # #[derive(Debug)] struct AppError;
/// # impl From<transactional_runtime::Error> for AppError { fn from(_: transactional_runtime::Error) -> Self { AppError } }
/// # async fn place_order() -> Result<u32, AppError> {
/// #     transactional_runtime::Transactional::new().run(async { Ok(7) }).await
/// # }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use transactional_runtime::testing;
/// let id = testing::mocked(place_order()).await.unwrap();
/// assert_eq!(id, 7);
/// # }
/// ```
pub async fn mocked<F: Future>(fut: F) -> F::Output {
    mocked_with(MockOutcome::Commit, fut).await
}

/// Like [`mocked`], with hooks run as if every transaction ended with `outcome`.
pub async fn mocked_with<F: Future>(outcome: MockOutcome, fut: F) -> F::Output {
    Context::current()
        .with_mode(Mode::Mocked(outcome.ending()))
        .scope(fut)
        .await
}

/// After-commit hooks taken out of their transactions by [`capture_after_commit`].
#[must_use = "captured hooks do nothing until run"]
pub struct CapturedHooks {
    hooks: Vec<Hook>,
}

impl CapturedHooks {
    /// How many after-commit hooks were registered.
    pub fn len(&self) -> usize {
        self.hooks.len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Runs them, in registration order, as if their transactions had committed.
    pub async fn run(self) {
        run_after(self.hooks, Ending::Committed, "captured", &|_| {}).await;
    }
}

impl std::fmt::Debug for CapturedHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedHooks")
            .field("len", &self.len())
            .finish()
    }
}

/// Runs `fut`, handing the test the after-commit hooks that production would run, instead of
/// running them (Django's `captureOnCommitCallbacks`): the test can assert how many there are,
/// and run them with [`CapturedHooks::run`].
///
/// A hook is captured where production runs it: when its transaction commits, or at once
/// outside a transaction (or where transactions are [`mocked`] as committing). Hooks of a
/// transaction or savepoint that rolls back are discarded, as in production. Under
/// [`rollback_after`] a scope that would begin its own transaction gets a savepoint: its
/// after-commit hooks are captured when that savepoint is released, where production would
/// commit.
pub async fn capture_after_commit<F: Future>(fut: F) -> (F::Output, CapturedHooks) {
    let sink: Arc<HookSink> = Arc::default();
    let output = Context::current()
        .with_capture(sink.clone())
        .scope(fut)
        .await;
    let hooks = std::mem::take(&mut *sink.lock().unwrap_or_else(|e| e.into_inner()));
    (output, CapturedHooks { hooks })
}

/// Runs `fut` inside a transaction on the default data source that is always rolled back,
/// whatever `fut` did, leaving the database as it was.
///
/// A transactional fn called from `fut` that would begin a transaction of its own in
/// production (REQUIRED, NESTED) gets a savepoint of the test transaction instead: its `Ok`
/// releases it and its failure rolls back to it, so a scope that hits a database error (which
/// aborts a whole transaction on PostgreSQL) leaves the rest of the test working. Everything
/// is undone at the end. REQUIRES_NEW and NOT_SUPPORTED scopes escape it:
/// their work is committed for real, and the test has to clean it up itself (or use its own
/// schema or table). As the transaction never commits, after-commit hooks of joined scopes
/// never run, as in Spring's test transactions: assert them with [`capture_after_commit`].
///
/// Fails only if the transaction cannot begin (no data source, database down).
pub async fn rollback_after<F: Future>(fut: F) -> Result<F::Output, Error> {
    rollback_after_on(DEFAULT_DATA_SOURCE, fut).await
}

/// Like [`rollback_after`], on the data source `name`.
pub async fn rollback_after_on<F: Future>(
    name: impl Into<Name>,
    fut: F,
) -> Result<F::Output, Error> {
    let name = name.into();
    Transactional::new()
        .name("transactional::testing::rollback_after")
        .data_source(name.clone())
        .run(async {
            let output = crate::context::as_test_root(&name, fut).await;
            crate::api::data_source(&name).set_rollback_only();
            Ok(output)
        })
        .await
}

/// A data source that records, per fake connection, every statement the runtime would send,
/// and every scope event, with no database: the real runtime over a fake connection, so
/// propagation, rollback-only and hook semantics are exactly those of production.
///
/// Repository code that asks it for a real connection gets [`Error::MockConnection`].
///
/// ```
/// use transactional_runtime::{testing::MockDataSource, Dialect, Isolation, Transactional};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mock = MockDataSource::new(Dialect::Postgres);
/// let result: Result<(), transactional_runtime::Error> = mock
///     .run("default", Transactional::new().isolation(Isolation::Serializable).run(async {
///         Err(transactional_runtime::Error::UnexpectedRollback) // payment failed, say
///     }))
///     .await;
/// assert!(result.is_err());
/// assert_eq!(mock.statements_on(1), ["BEGIN ISOLATION LEVEL SERIALIZABLE", "ROLLBACK"]);
/// # }
/// ```
#[derive(Clone)]
pub struct MockDataSource {
    inner: Arc<MockInner>,
}

struct MockInner {
    dialect: Dialect,
    next_connection: AtomicUsize,
    log: Mutex<MockLog>,
}

#[derive(Default)]
struct MockLog {
    statements: Vec<(usize, String)>,
    events: Vec<ScopeEvent>,
    failures: Vec<String>,
}

impl MockInner {
    fn log(&self) -> std::sync::MutexGuard<'_, MockLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MockDataSource {
    /// A recording mock that renders statements as `dialect` would.
    pub fn new(dialect: Dialect) -> Self {
        MockDataSource {
            inner: Arc::new(MockInner {
                dialect,
                next_connection: AtomicUsize::new(1),
                log: Mutex::default(),
            }),
        }
    }

    /// Runs `fut` with this mock registered as the data source `name` for the task.
    pub async fn run<F: Future>(&self, name: &str, fut: F) -> F::Output {
        let data_source = DataSource {
            name: name.into(),
            dialect: self.inner.dialect,
            backend: Backend::Recording,
            settings: DataSourceSettings::new(),
            source: Arc::new(MockSource(self.inner.clone())),
            usage: Arc::default(),
            replicas: Default::default(),
        };
        Context::current()
            .with_data_source(data_source)
            .scope(fut)
            .await
    }

    /// Every statement sent, in order, on any connection.
    pub fn statements(&self) -> Vec<String> {
        self.inner
            .log()
            .statements
            .iter()
            .map(|(_, sql)| sql.clone())
            .collect()
    }

    /// The statements sent on connection `n` (connections are numbered from 1 as taken).
    pub fn statements_on(&self, n: usize) -> Vec<String> {
        self.inner
            .log()
            .statements
            .iter()
            .filter(|(c, _)| *c == n)
            .map(|(_, sql)| sql.clone())
            .collect()
    }

    /// The statements per connection.
    pub fn statements_by_connection(&self) -> BTreeMap<usize, Vec<String>> {
        let mut by = BTreeMap::<usize, Vec<String>>::new();
        for (c, sql) in self.inner.log().statements.iter() {
            by.entry(*c).or_default().push(sql.clone());
        }
        by
    }

    /// How many connections the runtime took.
    pub fn connections(&self) -> usize {
        self.inner.next_connection.load(Ordering::Relaxed) - 1
    }

    /// Every scope event, in order.
    pub fn events(&self) -> Vec<ScopeEvent> {
        self.inner.log().events.clone()
    }

    /// Makes the next statement that starts with `statement` fail, as a broken connection
    /// would (to test what a failed BEGIN, SAVEPOINT or COMMIT does).
    pub fn fail_next(&self, statement: &str) {
        self.inner.log().failures.push(statement.to_owned());
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        let mut log = self.inner.log();
        log.statements.clear();
        log.events.clear();
    }
}

impl std::fmt::Debug for MockDataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockDataSource")
            .field("dialect", &self.inner.dialect)
            .field("statements", &self.statements())
            .finish()
    }
}

struct MockSource(Arc<MockInner>);

impl Source for MockSource {
    fn acquire(&self) -> BoxFuture<'_, Result<Conn, sqlx::Error>> {
        let id = self.0.next_connection.fetch_add(1, Ordering::Relaxed);
        let conn = MockConnection {
            id,
            inner: self.0.clone(),
        };
        Box::pin(async move { Ok(Conn::new(Box::new(conn))) })
    }

    fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn run_aside(&self, _sql: String) -> BoxFuture<'static, Result<(), sqlx::Error>> {
        Box::pin(async { Ok(()) })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn observe(&self, event: ScopeEvent) {
        self.0.log().events.push(event);
    }
}

struct MockConnection {
    id: usize,
    inner: Arc<MockInner>,
}

impl TxConnection for MockConnection {
    fn run<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        let mut log = self.inner.log();
        let mut result = Ok(());
        for sql in sql.split("; ") {
            let failing = log
                .failures
                .iter()
                .position(|f| sql.starts_with(f.as_str()));
            log.statements.push((self.id, sql.to_owned()));
            if let Some(at) = failing {
                log.failures.remove(at);
                result = Err(sqlx::Error::Protocol(format!(
                    "`{sql}` failed because the test asked MockDataSource::fail_next to fail it"
                )));
                break;
            }
        }
        Box::pin(std::future::ready(result))
    }

    fn query_int<'a>(
        &'a mut self,
        _sql: &'a str,
    ) -> Option<BoxFuture<'a, Result<Option<i64>, sqlx::Error>>> {
        None
    }

    fn reads_ints(&self) -> bool {
        false
    }

    fn arm(
        &mut self,
        _: Option<Arc<Watch>>,
        _: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> BoxFuture<'_, Result<Armed, sqlx::Error>> {
        Box::pin(std::future::ready(Ok(Armed::default())))
    }

    fn disarm_interrupt(&mut self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn settle_interrupt(&mut self) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn close(self: Box<Self>) {}
}
