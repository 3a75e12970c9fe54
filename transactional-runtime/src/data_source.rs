//! The registry of named pools, and how the runtime gets a connection out of one.

use std::any::Any;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use once_cell::sync::Lazy;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Database, Executor, Pool};
use tracing::Span;

use crate::dialect::Dialect;
use crate::driver::Conn;
use crate::error::Error;
use crate::events::{EventKind, ScopeEvent};
use crate::hooks::RollbackCause;
use crate::options::{TxOptions, DEFAULT_DATA_SOURCE};
use crate::status::{PoolCounts, PoolStatus, ReplicaStatus, Usage};
use crate::trace;

/// How a data source treats scopes that join its transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DataSourceSettings {
    /// When a joining scope asks for another isolation level, or for read-write inside a
    /// read-only transaction: `false` (the default) logs a warning and joins anyway, `true`
    /// fails the scope with [`Error::IncompatibleTransaction`] (Spring's
    /// `validateExistingTransaction`).
    pub validate_existing_transaction: bool,
    /// SQLite only: begin read-write transactions with `BEGIN IMMEDIATE`, taking the write lock
    /// at once, instead of `BEGIN DEFERRED` (the default, SQLite's own). IMMEDIATE makes
    /// concurrent transactions that read then write wait for each other (`busy_timeout`)
    /// instead of failing with `SQLITE_BUSY` half-way; but then a REQUIRES_NEW scope inside a
    /// read-write transaction cannot begin until the outer one ends, so it fails after
    /// `busy_timeout`. SQLite has one writer at a time either way.
    pub sqlite_begin_immediate: bool,
    /// Strict mode: a connection asked for outside any transaction (`connection()` where no
    /// scope began or joined one) is [`Error::OutsideTransaction`] instead of a pooled
    /// connection in autocommit, so that a repository fn called without its
    /// `#[transactional]` caller fails instead of committing statement by statement. Scopes
    /// that declare they run without a transaction (`SUPPORTS`, `NOT_SUPPORTED`, `NEVER`),
    /// hooks that run after the end, and code under [`autocommit`](crate::autocommit) still
    /// get one. Off by default.
    pub strict: bool,
}

impl DataSourceSettings {
    /// The defaults: joining scopes are never refused; connections outside a transaction
    /// autocommit.
    pub const fn new() -> Self {
        DataSourceSettings {
            validate_existing_transaction: false,
            sqlite_begin_immediate: false,
            strict: false,
        }
    }

    /// Sets [`strict`](Self::strict).
    pub const fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Sets [`validate_existing_transaction`](Self::validate_existing_transaction).
    pub const fn validate_existing_transaction(mut self, strict: bool) -> Self {
        self.validate_existing_transaction = strict;
        self
    }

    /// Sets [`sqlite_begin_immediate`](Self::sqlite_begin_immediate).
    pub const fn sqlite_begin_immediate(mut self, immediate: bool) -> Self {
        self.sqlite_begin_immediate = immediate;
        self
    }
}

/// How a data source uses its replicas: see [`register_with_replicas`](crate::register_with_replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaSettings {
    /// How often each replica is asked how far it has replayed, and whether it answers
    /// (default 100 ms). A replica that does not answer within a second is skipped until it
    /// does.
    pub check_every: Duration,
    /// How long a read-only transaction may wait for a connection of a replica before it goes
    /// to the primary (default 250 ms).
    pub acquire_timeout: Duration,
    /// A replica further behind the primary than this is skipped, even by reads that wait for
    /// no commit of theirs (default 5 s; `None`: no bound). Behind is measured from the oldest
    /// primary position, among those its monitor saw, that the replica has not replayed yet.
    pub max_lag: Option<Duration>,
}

impl ReplicaSettings {
    /// The defaults.
    pub const fn new() -> Self {
        ReplicaSettings {
            check_every: Duration::from_millis(100),
            acquire_timeout: Duration::from_millis(250),
            max_lag: Some(Duration::from_secs(5)),
        }
    }

    /// Sets [`max_lag`](Self::max_lag).
    pub const fn max_lag(mut self, lag: Option<Duration>) -> Self {
        self.max_lag = lag;
        self
    }

    /// Sets [`check_every`](Self::check_every).
    pub const fn check_every(mut self, every: Duration) -> Self {
        self.check_every = every;
        self
    }

    /// Sets [`acquire_timeout`](Self::acquire_timeout).
    pub const fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings::new()
    }
}

/// One replica: its pool, and what its monitor last saw.
pub(crate) struct Replica {
    pub index: usize,
    pub source: Arc<dyn Source>,
    pub settings: ReplicaSettings,
    /// It answered its monitor's last check.
    up: AtomicBool,
    /// How far it had replayed the primary's commits at that check (a position: see
    /// `Dialect::position_queries`), or -1.
    replayed: AtomicI64,
    /// The primary's positions its monitor saw that the replica had not replayed yet, oldest
    /// first, with when they were seen: the oldest tells how far behind it is.
    behind: Mutex<VecDeque<(Instant, i64)>>,
}

impl Replica {
    /// Whether a read-only transaction that must see the commits up to `required` may use it.
    pub(crate) fn usable(&self, required: i64) -> bool {
        self.up.load(Ordering::Acquire)
            && self.replayed.load(Ordering::Acquire) >= required
            && self.settings.max_lag.is_none_or(|max| self.lag() <= max)
    }

    pub(crate) fn new(index: usize, source: Arc<dyn Source>, settings: ReplicaSettings) -> Replica {
        Replica {
            index,
            source,
            settings,
            up: AtomicBool::new(false),
            replayed: AtomicI64::new(-1),
            behind: Mutex::default(),
        }
    }

    /// How long it has been behind the primary (zero when it has replayed every position its
    /// monitor saw).
    pub(crate) fn lag(&self) -> Duration {
        let behind = self.behind.lock().unwrap_or_else(|e| e.into_inner());
        behind
            .front()
            .map_or(Duration::ZERO, |(seen, _)| seen.elapsed())
    }

    /// The primary was at `position` (its monitor's check).
    pub(crate) fn primary_at(&self, position: i64) {
        let mut behind = self.behind.lock().unwrap_or_else(|e| e.into_inner());
        let replayed = self.replayed.load(Ordering::Acquire);
        behind.retain(|(_, at)| *at > replayed);
        if position > replayed && behind.back().is_none_or(|(_, at)| *at < position) {
            if behind.len() == 1024 {
                behind.pop_back();
            }
            behind.push_back((Instant::now(), position));
        }
    }

    /// It failed a read-only transaction: skipped until its monitor sees it answer again.
    pub(crate) fn mark_down(&self) {
        self.up.store(false, Ordering::Release);
    }

    /// What its monitor saw: how far it has replayed, or that it does not answer.
    pub(crate) fn saw(&self, replayed: Option<i64>) {
        match replayed {
            Some(position) => {
                self.replayed.fetch_max(position, Ordering::AcqRel);
                self.up.store(true, Ordering::Release);
            }
            None => self.up.store(false, Ordering::Release),
        }
    }
}

/// The replicas of one data source, and the latest commit position on its primary that this
/// process knows of.
#[derive(Default)]
pub(crate) struct Replicas {
    pub list: Vec<Arc<Replica>>,
    /// The greatest commit position of the transactions this process
    /// committed on the primary.
    committed: AtomicI64,
    /// The primary cannot tell a commit's position (MySQL has no `@@last_gtid`): COMMITs stop
    /// asking, and no replica is used.
    unreadable: AtomicBool,
}

impl Replicas {
    pub(crate) fn of(list: Vec<Arc<Replica>>) -> Replicas {
        Replicas {
            list,
            committed: AtomicI64::new(0),
            unreadable: AtomicBool::new(false),
        }
    }

    /// Whether a read-write COMMIT on the primary reads the position it reached.
    pub(crate) fn track(&self) -> bool {
        !self.list.is_empty() && !self.unreadable.load(Ordering::Acquire)
    }

    /// The primary of `data_source` answered that it cannot tell a commit's position.
    pub(crate) fn positions_unreadable(&self, data_source: &str) {
        if !self.unreadable.swap(true, Ordering::AcqRel) {
            tracing::error!(target: crate::TARGET, data_source, "the primary cannot tell a commit's position (no `@@last_gtid`: MySQL, not MariaDB); its replicas are not used");
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// What each replica's monitor last saw.
    pub(crate) fn status(&self) -> Vec<ReplicaStatus> {
        let required = self.required();
        self.list
            .iter()
            .map(|replica| {
                let replayed = replica.replayed.load(Ordering::Acquire);
                ReplicaStatus {
                    index: replica.index,
                    answering: replica.up.load(Ordering::Acquire),
                    replayed: u64::try_from(replayed).ok(),
                    caught_up: replayed >= required,
                    behind_for: replica.lag(),
                }
            })
            .collect()
    }

    /// The latest commit position this process made on the primary, if any.
    pub(crate) fn latest(&self) -> Option<i64> {
        Some(self.required()).filter(|at| *at > 0)
    }

    /// The replicas a read-only transaction may go to now, in order of preference: those
    /// that replayed this process's commits and `also` (a position the task carries).
    pub(crate) fn candidates(&self, also: Option<i64>) -> impl Iterator<Item = &Arc<Replica>> {
        let required = self.required().max(also.unwrap_or(0));
        let readable = !self.unreadable.load(Ordering::Acquire);
        self.list
            .iter()
            .filter(move |replica| readable && replica.usable(required))
    }

    /// A commit on the primary reached `position`.
    pub(crate) fn committed(&self, position: i64) {
        self.committed.fetch_max(position, Ordering::AcqRel);
    }

    /// The position a replica must have replayed to serve a read-only transaction.
    pub(crate) fn required(&self) -> i64 {
        self.committed.load(Ordering::Acquire)
    }
}

/// Where connections come from: a sqlx pool, or the recording mock.
pub(crate) trait Source: Send + Sync + 'static {
    fn acquire(&self) -> BoxFuture<'_, Result<Conn, sqlx::Error>>;
    /// How long to wait for a busy connection before giving up.
    fn acquire_timeout(&self) -> Duration;
    /// Runs `sql` on a connection of its own (an idle pooled one, or a new one): how a
    /// statement running in a transaction is cancelled at its deadline.
    fn run_aside(&self, sql: String) -> BoxFuture<'static, Result<(), sqlx::Error>>;
    /// The typed pool, for connections handed out in autocommit.
    fn as_any(&self) -> &dyn Any;
    /// The pool's own counts.
    fn counts(&self) -> PoolCounts {
        PoolCounts {
            size: 0,
            max_size: 0,
            idle: 0,
        }
    }
    /// Told what each scope on this data source does (the recording mock records it).
    fn observe(&self, _event: ScopeEvent) {}
}

impl<DB> Source for Pool<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    fn acquire(&self) -> BoxFuture<'_, Result<Conn, sqlx::Error>> {
        Box::pin(async move {
            let conn = Pool::acquire(self).await?;
            Ok(Conn::new(Box::new(conn)))
        })
    }

    fn acquire_timeout(&self) -> Duration {
        self.options().get_acquire_timeout()
    }

    fn run_aside(&self, sql: String) -> BoxFuture<'static, Result<(), sqlx::Error>> {
        let pool = self.clone();
        Box::pin(async move {
            if let Some(mut conn) = pool.try_acquire() {
                let conn: &mut DB::Connection = &mut conn;
                return sqlx::raw_sql(AssertSqlSafe(sql))
                    .execute(conn)
                    .await
                    .map(drop);
            }
            let mut conn = pool.connect_options().connect().await?;
            let ran = sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .map(drop);
            let _ = conn.close().await;
            ran
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn counts(&self) -> PoolCounts {
        PoolCounts {
            size: self.size(),
            max_size: self.options().get_max_connections(),
            idle: self.num_idle(),
        }
    }
}

/// What a data source's connections are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// Connections to the database sqlx calls `name` (`Database::NAME`): repository code gets
    /// them.
    Database(&'static str),
    /// The recording mock (`testing::MockDataSource`): it records what a transaction would
    /// send, so its transactions and savepoints begin as their scopes start (the code under test
    /// never uses the connection), and repository code that asks for a connection gets
    /// `Error::MockConnection`.
    Recording,
}

/// A registered data source: a name, a dialect and where its connections come from.
pub(crate) struct DataSource {
    pub name: Arc<str>,
    pub dialect: Dialect,
    pub backend: Backend,
    pub settings: DataSourceSettings,
    pub source: Arc<dyn Source>,
    /// What the library counts of its use of the pool.
    pub usage: Arc<Usage>,
    /// Its read replicas (none unless registered with `register_with_replicas`).
    pub replicas: Replicas,
}

impl fmt::Debug for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataSource")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl DataSource {
    pub(crate) fn from_pool<DB>(
        name: &str,
        pool: Pool<DB>,
        settings: DataSourceSettings,
    ) -> Result<DataSource, Error>
    where
        DB: Database,
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    {
        let dialect = dialect_of(&pool).ok_or(Error::UnsupportedDatabase { database: DB::NAME })?;
        Ok(DataSource {
            name: name.into(),
            dialect,
            backend: Backend::Database(DB::NAME),
            settings,
            source: Arc::new(pool),
            usage: Arc::default(),
            replicas: Replicas::default(),
        })
    }

    /// Reports what a scope did: to `tracing`, under the scope's span (see `trace`), and to
    /// the source (the recording mock keeps it).
    pub(crate) fn emit(&self, scope: &TxOptions, span: &Span, kind: EventKind) {
        self.emit_with(scope, span, kind, None, None);
    }

    /// [`emit`](Self::emit), with why a savepoint was rolled back to and the body's error.
    pub(crate) fn emit_with(
        &self,
        scope: &TxOptions,
        span: &Span,
        kind: EventKind,
        savepoint_cause: Option<RollbackCause>,
        detail: Option<&str>,
    ) {
        trace::event(span, &kind, savepoint_cause, detail);
        self.source.observe(ScopeEvent {
            scope: scope.clone(),
            kind,
        });
    }

    /// A snapshot of the pool.
    pub(crate) fn status(&self) -> PoolStatus {
        let counts = self.source.counts();
        PoolStatus {
            data_source: self.name.to_string(),
            database: self.dialect.database_name(),
            size: counts.size,
            max_size: counts.max_size,
            idle: counts.idle,
            in_use: counts.size.saturating_sub(counts.idle as u32),
            transactions: self.usage.transactions(),
            waiting: self.usage.waiting(),
            replicas: self.replicas.status(),
            retried: self.usage.retried(),
        }
    }

    pub(crate) fn pool<DB: Database>(&self) -> Result<&Pool<DB>, Error> {
        self.hands_out::<DB>()?;
        Ok(self
            .source
            .as_any()
            .downcast_ref::<Pool<DB>>()
            .expect("a data source of `DB` has a `Pool<DB>`"))
    }

    /// Whether repository code may have a `DB` connection of this data source: not of another
    /// database, and not of the recording mock.
    pub(crate) fn hands_out<DB: Database>(&self) -> Result<(), Error> {
        match self.backend {
            Backend::Database(database) if database == DB::NAME => Ok(()),
            Backend::Database(actual) => Err(Error::WrongDatabase {
                name: self.name.to_string(),
                expected: DB::NAME,
                actual,
            }),
            Backend::Recording => Err(Error::MockConnection {
                name: self.name.to_string(),
            }),
        }
    }
}

/// The dialect of a pool: its database's, or for sqlx's `Any` driver, its URL's.
fn dialect_of<DB: Database>(pool: &Pool<DB>) -> Option<Dialect> {
    if let Some(dialect) = Dialect::from_database_name(DB::NAME) {
        return Some(dialect);
    }
    #[cfg(feature = "any")]
    {
        let options = pool.connect_options();
        let options: &dyn Any = &*options;
        if let Some(any) = options.downcast_ref::<sqlx::any::AnyConnectOptions>() {
            return Dialect::from_url_scheme(any.database_url.scheme());
        }
    }
    let _ = pool;
    None
}

static REGISTRY: Lazy<RwLock<HashMap<String, Arc<DataSource>>>> = Lazy::new(Default::default);

/// Registers `pool` as the data source `"default"`, used by every scope that names none.
///
/// Call it once at start-up, before the first transactional call.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// transactional_runtime::register_default(pool)?;
/// assert!(transactional_runtime::register_default(
///     sqlx::SqlitePool::connect("sqlite::memory:").await?
/// ).is_err(), "registered once");
/// # Ok(()) }
/// ```
pub fn register_default<DB>(pool: Pool<DB>) -> Result<(), Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    register(DEFAULT_DATA_SOURCE, pool)
}

/// Registers `pool` under `name`, for `#[transactional(data_source = "name")]`.
///
/// Fails with [`Error::AlreadyRegistered`] if the name is taken, and with
/// [`Error::UnsupportedDatabase`] for a database other than PostgreSQL, MySQL/MariaDB, SQLite.
pub fn register<DB>(name: &str, pool: Pool<DB>) -> Result<(), Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    register_with(name, pool, DataSourceSettings::new())
}

/// Like [`register`], with [`DataSourceSettings`].
pub fn register_with<DB>(
    name: &str,
    pool: Pool<DB>,
    settings: DataSourceSettings,
) -> Result<(), Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    insert(DataSource::from_pool(name, pool, settings)?)
}

pub(crate) fn insert(data_source: DataSource) -> Result<(), Error> {
    let name = data_source.name.to_string();
    let name = name.as_str();
    let mut registry = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if registry.contains_key(name) {
        return Err(Error::AlreadyRegistered {
            name: name.to_owned(),
        });
    }
    registry.insert(name.to_owned(), Arc::new(data_source));
    Ok(())
}

/// Removes the data source `name` from the registry, returning whether it was there.
///
/// Scopes already running on it go on; new scopes fail with [`Error::NoDataSource`].
pub fn deregister(name: &str) -> bool {
    REGISTRY
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name)
        .is_some()
}

pub(crate) fn lookup_global(name: &str) -> Option<Arc<DataSource>> {
    REGISTRY
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned()
}
