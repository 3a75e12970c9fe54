//! The state of a data source's pool, as a health route or a metrics exporter shows it: the
//! pool's own counts, and what only the library knows (transactions holding a connection,
//! callers waiting for one).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Awaits `acquire`, counted as a caller waiting for a connection; also says whether
/// transactions suspended by REQUIRES_NEW or NOT_SUPPORTED scopes held connections at any time
/// while it waited (see [`acquire_hint`]).
pub(crate) async fn counted_wait<T>(
    usage: &Arc<Usage>,
    acquire: impl Future<Output = T>,
) -> (T, Starved) {
    let waiting = Counted::waiting(usage);
    let suspensions = usage.suspensions.load(Ordering::Relaxed);
    let held = usage.suspended.load(Ordering::Relaxed) > 0;
    let got = acquire.await;
    let starved = held
        || usage.suspended.load(Ordering::Relaxed) > 0
        || usage.suspensions.load(Ordering::Relaxed) != suspensions;
    drop(waiting);
    (got, Starved(starved))
}

/// Whether suspended transactions held connections while a caller waited for one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Starved(pub(crate) bool);

/// A snapshot of one data source's pool, from [`pool_status`](crate::pool_status) or
/// [`DataSourceRef::status`](crate::DataSourceRef::status).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # transactional_runtime::register_default(sqlx::SqlitePool::connect("sqlite::memory:").await?)?;
/// let status = transactional_runtime::pool_status("default")?;
/// println!("{status}"); // default (SQLite): 1 of 10 connections open, 1 idle, …
/// if status.waiting > 0 {
///     // callers are queuing for connections: the pool is too small for the load
/// }
/// assert_eq!(status.data_source, "default");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The data source's name.
    pub data_source: String,
    /// Its database (`"PostgreSQL"`, `"MySQL"`, `"SQLite"`).
    pub database: &'static str,
    /// Connections open now, idle or in use.
    pub size: u32,
    /// The most connections the pool opens.
    pub max_size: u32,
    /// Open connections waiting in the pool.
    pub idle: usize,
    /// Open connections taken from the pool (by transactions or in autocommit).
    pub in_use: u32,
    /// Transactions holding a connection now (a transaction takes one at its first statement
    /// and gives it back when it ends).
    pub transactions: usize,
    /// Callers of this library waiting for a connection now (sqlx does not count the
    /// waiters of other code using the same pool).
    pub waiting: usize,
    /// Its read replicas, in the order they were registered (none for most data sources).
    pub replicas: Vec<ReplicaStatus>,
    /// Attempts of retried scopes (`retry = N`) that the database refused for a concurrent
    /// transaction and that were run again, since the data source was registered: deadlocks,
    /// serialization failures, and a Galera cluster's certification conflicts.
    pub retried: u64,
}

/// One read replica, as its monitor last saw it: part of [`PoolStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// Its position among the data source's replicas.
    pub index: usize,
    /// It answered its monitor's last check: read-only transactions may go to it.
    pub answering: bool,
    /// How far it had replayed the primary's commits (PostgreSQL: WAL bytes since 0/0;
    /// MariaDB: the GTID sequence number in the primary's domain).
    pub replayed: Option<u64>,
    /// Whether it had replayed every commit this process made on the primary.
    pub caught_up: bool,
    /// How long it has been behind the primary (see `ReplicaSettings::max_lag`).
    pub behind_for: Duration,
}

impl fmt::Display for PoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {} of {} connections open, {} idle, {} in use, {} in transactions, {} waiting",
            self.data_source,
            self.database,
            self.size,
            self.max_size,
            self.idle,
            self.in_use,
            self.transactions,
            self.waiting
        )?;
        for replica in &self.replicas {
            let state = match (replica.answering, replica.caught_up) {
                (false, _) => "not answering",
                (true, true) => "caught up",
                (true, false) => "behind",
            };
            write!(f, "; replica {}: {state}", replica.index)?;
        }
        if self.retried > 0 {
            write!(f, "; {} attempts refused and run again", self.retried)?;
        }
        Ok(())
    }
}

/// A pool's own counts.
pub(crate) struct PoolCounts {
    pub size: u32,
    pub max_size: u32,
    pub idle: usize,
}

/// What the library counts for one data source.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    transactions: AtomicUsize,
    waiting: AtomicUsize,
    /// Transactions holding a connection while a REQUIRES_NEW or NOT_SUPPORTED scope has
    /// suspended them.
    suspended: AtomicUsize,
    /// How many such suspensions began, ever: a waiter that sees it change knows one happened
    /// while it waited.
    suspensions: AtomicUsize,
    /// Attempts refused for a concurrent transaction and run again (`retry`).
    retried: AtomicU64,
}

/// The advice an exhausted pool's error gives (see `Error::Acquire`): when transactions
/// suspended by REQUIRES_NEW or NOT_SUPPORTED scopes held connections while the caller waited
/// (or the caller is such a scope), they starved the pool, however many callers fail.
pub(crate) fn acquire_hint(
    starved: Starved,
    for_a_suspending_scope: bool,
    exhausted: bool,
) -> &'static str {
    if exhausted && (for_a_suspending_scope || starved.0) {
        " (connections are held by transactions that REQUIRES_NEW or NOT_SUPPORTED scopes suspended while they need a second one: give the pool more connections than concurrent calls times the nesting of such scopes, or make the inner scopes join)"
    } else {
        ""
    }
}

impl Usage {
    pub(crate) fn transactions(&self) -> usize {
        self.transactions.load(Ordering::Relaxed)
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// An attempt was refused for a concurrent transaction: another follows.
    pub(crate) fn retrying(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counted while alive: a caller waiting for a connection, a transaction holding one, or one
/// suspended while it holds one. Dropped with what it counts, whichever way that ends (a
/// cancelled wait included).
#[derive(Debug)]
pub(crate) struct Counted {
    usage: Arc<Usage>,
    what: What,
}

#[derive(Debug, Clone, Copy)]
enum What {
    Waiting,
    Transaction,
    Suspended,
}

impl Counted {
    fn new(usage: &Arc<Usage>, what: What) -> Counted {
        let counted = Counted {
            usage: usage.clone(),
            what,
        };
        counted.counter().fetch_add(1, Ordering::Relaxed);
        counted
    }

    pub(crate) fn waiting(usage: &Arc<Usage>) -> Counted {
        Counted::new(usage, What::Waiting)
    }

    pub(crate) fn transaction(usage: &Arc<Usage>) -> Counted {
        Counted::new(usage, What::Transaction)
    }

    /// A transaction holding a connection, suspended while a REQUIRES_NEW or NOT_SUPPORTED
    /// scope runs.
    pub(crate) fn suspended(usage: &Arc<Usage>) -> Counted {
        usage.suspensions.fetch_add(1, Ordering::Relaxed);
        Counted::new(usage, What::Suspended)
    }

    fn counter(&self) -> &AtomicUsize {
        match self.what {
            What::Waiting => &self.usage.waiting,
            What::Transaction => &self.usage.transactions,
            What::Suspended => &self.usage.suspended,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::Relaxed);
    }
}
