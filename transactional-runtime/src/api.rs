//! The public API code inside a scope uses: the current connection, whether a transaction is
//! active, rollback-only, and hooks, for the current data source or one named.

use std::future::Future;

use sqlx::Database;

use crate::context::{Context, Mode};
use crate::error::{BoxError, Error};
use crate::events::EventKind;
use crate::guard::{acquire, ConnectionGuard};
use crate::hooks::{run_after, Ending, Hook, HookResult, Outcome, RollbackCause};
use crate::replica::CommitPosition;
use crate::status::PoolStatus;

/// The current transaction of one data source, as seen from this task.
///
/// ```
/// use transactional_runtime::{data_source, Transactional};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// # sqlx::query("CREATE TABLE audit_log (what TEXT)").execute(&pool).await?;
/// transactional_runtime::register("audit", pool.clone())?;
/// Transactional::new()
///     .data_source("audit")
///     .run(async {
///         assert!(data_source("audit").is_active());
///         let mut conn = data_source("audit").connection::<sqlx::Sqlite>().await?;
///         sqlx::query("INSERT INTO audit_log (what) VALUES ('login')")
///             .execute(&mut *conn)
///             .await?;
///         Ok::<_, transactional_runtime::Error>(())
///     })
///     .await?;
/// # let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log").fetch_one(&pool).await?;
/// # assert_eq!(n, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSourceRef<'a> {
    name: &'a str,
}

/// The data source called `name`, for its connection, transaction state and hooks.
pub fn data_source(name: &str) -> DataSourceRef<'_> {
    DataSourceRef { name }
}

/// A snapshot of the pool of the data source `name` (as this task sees it: a pool given to
/// [`with_data_source`](crate::with_data_source) shadows the registered one): its size,
/// idle and in-use connections, the transactions holding one, the callers waiting for one.
///
/// Fails with [`Error::NoDataSource`] when nothing is registered under `name`.
pub fn pool_status(name: &str) -> Result<PoolStatus, Error> {
    Ok(Context::current().data_source(name)?.status())
}

/// Runs `f` on the current data source: the innermost scope's (`data_source = "…"`), or
/// `"default"` outside any scope.
fn current<R>(f: impl FnOnce(DataSourceRef<'_>) -> R) -> R {
    let ctx = Context::current();
    f(DataSourceRef {
        name: ctx.current_data_source(),
    })
}

impl DataSourceRef<'_> {
    /// The data source's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// A snapshot of the data source's pool; see [`pool_status`].
    pub fn status(&self) -> Result<PoolStatus, Error> {
        pool_status(self.name)
    }

    /// The connection to run queries on: the current transaction's, or a pooled one in
    /// autocommit outside a transaction. See [`ConnectionGuard`].
    ///
    /// Fails with [`Error::TransactionFinished`] when called from work that outlived its
    /// transaction, [`Error::NoDataSource`] when nothing is registered under this name, and
    /// [`Error::WrongDatabase`] when `DB` is not the pool's database.
    pub async fn connection<DB: Database>(&self) -> Result<ConnectionGuard<DB>, Error> {
        acquire(self.name).await
    }

    /// Whether a transaction is current on this data source in this task.
    pub fn is_active(&self) -> bool {
        Context::current()
            .frame(self.name)
            .is_some_and(|f| !f.level.is_ended())
    }

    /// Whether this scope's transaction is marked rollback-only: by this scope's own
    /// `set_rollback_only()`, or by a joined scope that failed or called it (on this
    /// transaction or an enclosing savepoint level). As in Spring, a joined scope does not see
    /// the owner's own `set_rollback_only()`: that is a request of the owner, read when the
    /// owner ends. `false` outside a transaction.
    pub fn is_rollback_only(&self) -> bool {
        Context::current()
            .frame(self.name)
            .is_some_and(|f| f.is_rollback_only())
    }

    /// Marks the current transaction rollback-only.
    ///
    /// In the scope that began the transaction (or a NESTED scope's savepoint), it rolls back
    /// at the end and the scope still returns its body's `Ok`. In a joined scope it marks the
    /// transaction, and the owner's `Ok` becomes [`Error::UnexpectedRollback`]. Outside a
    /// transaction it does nothing.
    pub fn set_rollback_only(&self) {
        if let Some(frame) = Context::current().frame(self.name) {
            frame.set_rollback_only();
        }
    }

    /// Runs `hook` just before the current transaction commits, inside it (it may still write).
    /// If it fails, the transaction rolls back and the scope returns [`Error::BeforeCommit`].
    /// Outside a transaction it runs at once, and its failure is returned.
    pub async fn before_commit<F, Fut, E>(&self, hook: F) -> Result<(), Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        run_before_commit_now(register_hook(self.name, Hook::before_commit(hook))).await
    }

    /// Runs `hook` once the current transaction has committed, after its connection is back in
    /// the pool and with no transaction current. Outside a transaction it runs at once. Its
    /// failure or panic is logged and changes nothing: the commit stands.
    ///
    /// The scope awaits its after-commit hooks before it returns, so a slow hook delays its
    /// caller (an HTTP response, say). For slow side effects (sending mail, calling another
    /// service) use [`after_commit_detached`](Self::after_commit_detached).
    pub async fn after_commit<F, Fut>(&self, hook: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookResult,
    {
        run_now(register_hook(self.name, Hook::after_commit(hook))).await;
    }

    /// Like [`after_commit`](Self::after_commit), but the hook runs on a task of its own
    /// (`tokio::spawn`), so the scope returns as soon as the transaction has committed. Its
    /// failure or panic is logged (target `transactional`, error level) under the scope's
    /// span. Nothing waits for it: the process may stop before it has run, so use it for side
    /// effects that may be lost (or that a transactional outbox backs up).
    pub async fn after_commit_detached<F, Fut>(&self, hook: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookResult,
    {
        run_now(register_hook(self.name, Hook::after_commit_detached(hook))).await;
    }

    /// Runs `hook` with the cause once the current transaction has rolled back. Outside a
    /// transaction it never runs.
    pub async fn after_rollback<F, Fut>(&self, hook: F)
    where
        F: FnOnce(RollbackCause) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookResult,
    {
        run_now(register_hook(self.name, Hook::after_rollback(hook))).await;
    }

    /// Runs `hook` with the outcome once the current transaction is over, after the
    /// after-commit or after-rollback hooks. Outside a transaction it runs at once with
    /// [`Outcome::Committed`] (the work around it autocommits).
    pub async fn after_completion<F, Fut>(&self, hook: F)
    where
        F: FnOnce(Outcome) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookResult,
    {
        run_now(register_hook(self.name, Hook::after_completion(hook))).await;
    }
}

/// Runs a hook that found no transaction to attach to.
async fn run_now(unattached: Option<(Hook, Ending)>) {
    if let Some((hook, ending)) = unattached {
        run_after(vec![hook], ending, "no transaction", &|_| {}).await;
    }
}

/// The connection to run queries on, for the current data source (the innermost scope's,
/// `"default"` outside any scope): see [`DataSourceRef::connection`].
pub async fn connection<DB: Database>() -> Result<ConnectionGuard<DB>, Error> {
    let name = Context::current().current_data_source().to_owned();
    acquire(&name).await
}

/// Whether a transaction is current on the current data source: see
/// [`DataSourceRef::is_active`].
pub fn is_active() -> bool {
    current(|ds| ds.is_active())
}

/// See [`DataSourceRef::is_rollback_only`], for the current data source.
pub fn is_rollback_only() -> bool {
    current(|ds| ds.is_rollback_only())
}

/// See [`DataSourceRef::set_rollback_only`], for the current data source.
pub fn set_rollback_only() {
    current(|ds| ds.set_rollback_only())
}

/// See [`DataSourceRef::before_commit`], for the current data source.
pub async fn before_commit<F, Fut, E>(hook: F) -> Result<(), Error>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    let unattached = current(|ds| register_hook(ds.name, Hook::before_commit(hook)));
    run_before_commit_now(unattached).await
}

/// See [`DataSourceRef::after_commit`], for the current data source.
pub async fn after_commit<F, Fut>(hook: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HookResult,
{
    run_now(current(|ds| {
        register_hook(ds.name, Hook::after_commit(hook))
    }))
    .await;
}

/// See [`DataSourceRef::after_commit_detached`], for the current data source.
pub async fn after_commit_detached<F, Fut>(hook: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HookResult,
{
    run_now(current(|ds| {
        register_hook(ds.name, Hook::after_commit_detached(hook))
    }))
    .await;
}

/// See [`DataSourceRef::after_rollback`], for the current data source.
pub async fn after_rollback<F, Fut>(hook: F)
where
    F: FnOnce(RollbackCause) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HookResult,
{
    run_now(current(|ds| {
        register_hook(ds.name, Hook::after_rollback(hook))
    }))
    .await;
}

/// See [`DataSourceRef::after_completion`], for the current data source.
pub async fn after_completion<F, Fut>(hook: F)
where
    F: FnOnce(Outcome) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HookResult,
{
    run_now(current(|ds| {
        register_hook(ds.name, Hook::after_completion(hook))
    }))
    .await;
}

/// Registers `hook` on the transaction current for `data_source`. Returns the hook with the
/// ending to run it with at once when there is no transaction (or transactions are mocked
/// out); `None` when the transaction took it, or a `testing::capture_after_commit` did.
fn register_hook(data_source: &str, hook: Hook) -> Option<(Hook, Ending)> {
    let ctx = Context::current();
    let ending = match (ctx.mode(), ctx.frame(data_source)) {
        (Mode::Mocked(ending), _) => ending,
        (Mode::Real, Some(frame)) if !frame.level.is_ended() => {
            let kind = hook.kind();
            frame.level.hooks.push(hook);
            frame.tx().data_source.emit(
                &frame.options,
                &tracing::Span::current(),
                EventKind::HookRegistered { hook: kind },
            );
            return None;
        }
        (Mode::Real, _) => Ending::Committed,
    };
    // No transaction to wait for: it runs at once, unless a test captures it.
    if let (Some(sink), Hook::AfterCommit(_), Ending::Committed) = (ctx.capture(), &hook, ending) {
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(hook);
        return None;
    }
    Some((hook, ending))
}

async fn run_before_commit_now(unattached: Option<(Hook, Ending)>) -> Result<(), Error> {
    match unattached {
        Some((Hook::BeforeCommit(run), Ending::Committed)) => {
            run().await.map_err(Error::BeforeCommit)
        }
        _ => Ok(()),
    }
}

/// Runs `fut` with connections outside a transaction allowed to autocommit, also on data
/// sources registered as strict ([`DataSourceSettings::strict`](crate::DataSourceSettings::strict)):
/// the documented way to say that a call means to run without a transaction.
///
/// ```
/// use transactional_runtime::{DataSourceSettings, Error};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Error> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// transactional_runtime::register_with("default", pool, DataSourceSettings::new().strict(true))?;
///
/// // Outside a scope, a strict data source refuses…
/// let refused = transactional_runtime::connection::<sqlx::Sqlite>().await;
/// assert!(matches!(refused, Err(Error::OutsideTransaction { .. })));
///
/// // …unless autocommit is what the caller means.
/// transactional_runtime::autocommit(async {
///     let mut conn = transactional_runtime::connection::<sqlx::Sqlite>().await?;
///     sqlx::query("SELECT 1").execute(&mut *conn).await?;
///     Ok::<_, Error>(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn autocommit<F: Future>(fut: F) -> F::Output {
    Context::current().with_autocommit().scope(fut).await
}

/// The position of the latest commit this process made on the primary of `data_source`
/// (`None` before the first, and for a data source without replicas): what to hand a client
/// that must read its own writes in a later request.
///
/// Fails with [`Error::NoDataSource`] when nothing is registered under `data_source`.
pub fn commit_position(data_source: &str) -> Result<Option<CommitPosition>, Error> {
    let ds = Context::current().data_source(data_source)?;
    Ok(ds
        .replicas
        .latest()
        .and_then(|at| u64::try_from(at).ok())
        .map(|at| CommitPosition::new(ds.dialect, at)))
}

/// Runs `fut` with its read-only transactions of `data_source` kept off the replicas that
/// have not replayed `position` yet (they go to another replica, or the primary): a request
/// reads what an earlier one committed, whichever instance served it.
pub async fn read_after<F: Future>(
    data_source: &str,
    position: CommitPosition,
    fut: F,
) -> F::Output {
    let position = position.at();
    Context::current()
        .with_read_after(data_source, position)
        .scope(fut)
        .await
}
