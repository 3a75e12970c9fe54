//! The connection repository code works with: the current transaction's, or a pooled one.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::Database;
use tokio::sync::OwnedMutexGuard;

use crate::context::Context;
use crate::error::Error;
use crate::transaction::{Slot, Transaction};

/// A connection for repository code, from [`connection`](crate::connection) or
/// [`DataSourceRef::connection`](crate::DataSourceRef::connection).
///
/// Inside a transaction it is the transaction's connection, locked for this guard: other
/// futures of the task that ask for it wait until the guard is dropped, so drop it before
/// calling code that needs the connection too. Outside a transaction it is a pooled connection
/// in autocommit. `&mut *guard` is an sqlx [`Executor`](sqlx::Executor), so `sqlx::query!` and
/// friends work on it unchanged.
///
/// # Panics
/// Dereferencing a guard whose transaction has already ended panics with "transaction already
/// finished": the guard outlived its scope (it was returned from the body or moved into a
/// spawned task), and its work would otherwise be lost silently.
pub struct ConnectionGuard<DB: Database> {
    inner: Inner<DB>,
}

enum Inner<DB: Database> {
    // Field order matters: the lock is released before the transaction may be dropped.
    InTransaction {
        slot: OwnedMutexGuard<Slot>,
        tx: Arc<Transaction>,
    },
    Pooled(PoolConnection<DB>),
}

const FINISHED: &str = "transaction already finished: this connection guard outlived the transactional scope that owned it; drop guards before the scope returns and never move them into spawned tasks";

impl<DB: Database> ConnectionGuard<DB> {
    /// Whether this guard is the connection of a transaction (and not a pooled autocommit one).
    pub fn in_transaction(&self) -> bool {
        matches!(self.inner, Inner::InTransaction { .. })
    }
}

impl<DB: Database> Deref for ConnectionGuard<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match &self.inner {
            Inner::Pooled(conn) => conn,
            Inner::InTransaction { slot, tx } => {
                assert!(!tx.is_finished(), "{FINISHED}");
                slot.conn()
                    .and_then(|c| c.as_any().downcast_ref::<PoolConnection<DB>>())
                    .expect("checked when the guard was made")
            }
        }
    }
}

impl<DB: Database> DerefMut for ConnectionGuard<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match &mut self.inner {
            Inner::Pooled(conn) => conn,
            Inner::InTransaction { slot, tx } => {
                assert!(!tx.is_finished(), "{FINISHED}");
                slot.conn_mut()
                    .and_then(|c| c.as_any_mut().downcast_mut::<PoolConnection<DB>>())
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
            let tx = frame.tx().clone();
            let slot = tx.lock().await?;
            let typed = slot
                .conn()
                .is_some_and(|c| c.as_any().is::<PoolConnection<DB>>());
            if !typed {
                if tx.data_source.database == crate::data_source::MOCK_DATABASE {
                    return Err(Error::MockConnection {
                        name: data_source.to_owned(),
                    });
                }
                return Err(Error::WrongDatabase {
                    name: data_source.to_owned(),
                    expected: DB::NAME,
                    actual: tx.data_source.database,
                });
            }
            Inner::InTransaction { slot, tx }
        }
        None => {
            let ds = ctx.data_source(data_source)?;
            let pool = ds.pool::<DB>()?;
            Inner::Pooled(pool.acquire().await.map_err(|source| Error::Acquire {
                data_source: data_source.to_owned(),
                hint: "",
                source,
            })?)
        }
    };
    Ok(ConnectionGuard { inner })
}
