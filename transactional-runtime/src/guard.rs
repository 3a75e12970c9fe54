//! The connection guard repository code works with: the current transaction's connection, or
//! a pooled one in autocommit.

use std::fmt;
use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::Database;

use crate::context::{Context, Mode};
use crate::error::Error;
use crate::status::{acquire_hint, counted_wait};
use crate::transaction::Lease;

/// A connection for repository code, from [`connection`](crate::connection) or
/// [`DataSourceRef::connection`](crate::DataSourceRef::connection).
///
/// Inside a transaction it is the transaction's connection, lent to this guard: other futures
/// of the task that ask for it wait until the guard is dropped, so drop it before calling code
/// that needs the connection too. Outside a transaction it is a pooled connection in
/// autocommit. `&mut *guard` is an sqlx [`Executor`](sqlx::Executor), so `sqlx::query!` and
/// friends work on it unchanged.
///
/// Do not call `begin()`, `commit()` or `rollback()` on it: the transaction belongs to its
/// scope (use a `NESTED` scope for a savepoint). A transaction ended that way is reported as
/// [`Error::Aborted`] when its scope tries to commit.
///
/// # Panics
/// Dereferencing a guard whose scope has already ended panics with "transaction already
/// finished": the guard outlived its scope (it was returned from the body or moved into a
/// spawned task), and its work would otherwise be lost silently.
pub struct ConnectionGuard<DB: Database> {
    inner: Inner<DB>,
}

enum Inner<DB: Database> {
    InTransaction(Lease),
    Pooled(PoolConnection<DB>),
}

const FINISHED: &str = "transaction already finished: this connection guard outlived the transactional scope that owned it; drop guards before the scope returns and never move them into spawned tasks";

impl<DB: Database> ConnectionGuard<DB> {
    /// Whether this guard is the connection of a transaction (and not a pooled autocommit one).
    pub fn in_transaction(&self) -> bool {
        matches!(self.inner, Inner::InTransaction(_))
    }
}

impl<DB: Database> Deref for ConnectionGuard<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match &self.inner {
            Inner::Pooled(conn) => conn,
            Inner::InTransaction(lease) => {
                assert!(!lease.is_finished(), "{FINISHED}");
                lease
                    .conn()
                    .as_any()
                    .downcast_ref::<PoolConnection<DB>>()
                    .expect("checked when the guard was made")
            }
        }
    }
}

impl<DB: Database> DerefMut for ConnectionGuard<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match &mut self.inner {
            Inner::Pooled(conn) => conn,
            Inner::InTransaction(lease) => {
                assert!(!lease.is_finished(), "{FINISHED}");
                lease
                    .conn_mut()
                    .as_any_mut()
                    .downcast_mut::<PoolConnection<DB>>()
                    .expect("checked when the guard was made")
            }
        }
    }
}

impl<DB: Database> fmt::Debug for ConnectionGuard<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGuard")
            .field("database", &DB::NAME)
            .field("in_transaction", &self.in_transaction())
            .finish()
    }
}

/// The current connection of `data_source` for this task.
pub(crate) async fn acquire<DB: Database>(data_source: &str) -> Result<ConnectionGuard<DB>, Error> {
    let ctx = Context::current();
    let inner = match ctx.frame(data_source) {
        Some(frame) => {
            let tx = frame.tx();
            // The recording mock begins its transaction here too, so that it records what the
            // database would have received; then it refuses.
            let recording = match tx.data_source.hands_out::<DB>() {
                Ok(()) => None,
                Err(error @ Error::MockConnection { .. }) => Some(error),
                Err(error) => return Err(error),
            };
            let lease = tx.lend(frame).await?;
            if let Some(error) = recording {
                return Err(error);
            }
            Inner::InTransaction(lease)
        }
        None => {
            let ds = match ctx.data_source(data_source) {
                Err(Error::NoDataSource { name }) if matches!(ctx.mode(), Mode::Mocked(_)) => {
                    return Err(Error::Mocked { name })
                }
                found => found?,
            };
            if ds.settings.strict && !ctx.autocommit_meant(data_source) {
                return Err(Error::OutsideTransaction {
                    data_source: data_source.to_owned(),
                });
            }
            let pool = ds.pool::<DB>()?;
            let (conn, starved) = counted_wait(&ds.usage, pool.acquire()).await;
            Inner::Pooled(conn.map_err(|source| Error::Acquire {
                data_source: data_source.to_owned(),
                hint: acquire_hint(starved, false, matches!(source, sqlx::Error::PoolTimedOut)),
                source,
            })?)
        }
    };
    Ok(ConnectionGuard { inner })
}
