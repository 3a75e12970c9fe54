//! The state of a data source's pool, as a health route or a metrics exporter shows it: the
//! pool's own counts, and what only the library knows (transactions holding a connection,
//! callers waiting for one).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Awaits `acquire`, counted as a caller waiting for a connection.
pub(crate) async fn counted_wait<T>(usage: &Arc<Usage>, acquire: impl Future<Output = T>) -> T {
    let _waiting = Counted::waiting(usage);
    acquire.await
}

/// A snapshot of one data source's pool, from [`pool_status`](crate::pool_status) or
/// [`DataSourceRef::status`](crate::DataSourceRef::status).
///
/// ```no_run
/// # fn health() -> Result<(), transactional_runtime::Error> {
/// let status = transactional_runtime::pool_status("default")?;
/// println!("{status}"); // default (PostgreSQL): 4 of 10 connections open, 1 idle, …
/// if status.waiting > 0 {
///     // callers are queuing for connections: the pool is too small for the load
/// }
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
        )
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
}

impl Usage {
    pub(crate) fn transactions(&self) -> usize {
        self.transactions.load(Ordering::Relaxed)
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// Counted while alive: a caller waiting for a connection, or a transaction holding one.
/// Dropped with what it counts, whichever way that ends (a cancelled wait included).
#[derive(Debug)]
pub(crate) struct Counted {
    usage: Arc<Usage>,
    waiting: bool,
}

impl Counted {
    pub(crate) fn waiting(usage: &Arc<Usage>) -> Counted {
        usage.waiting.fetch_add(1, Ordering::Relaxed);
        Counted {
            usage: usage.clone(),
            waiting: true,
        }
    }

    pub(crate) fn transaction(usage: &Arc<Usage>) -> Counted {
        usage.transactions.fetch_add(1, Ordering::Relaxed);
        Counted {
            usage: usage.clone(),
            waiting: false,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let counter = match self.waiting {
            true => &self.usage.waiting,
            false => &self.usage.transactions,
        };
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}
