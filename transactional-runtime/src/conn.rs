//! The connection as the runtime sees it: something that runs transaction-control statements.
//!
//! [`TxConnection`] is implemented by sqlx's `PoolConnection<DB>` for every supported database;
//! the recording mock implements it over a fake. The runtime never sees anything else.

use std::any::Any;

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Database, Executor, SqlSafeStr};
use sqlx_core::transaction::TransactionManager;

use crate::dialect::{BeginPlan, Dialect};

/// One transaction-control statement, before it is rendered to SQL by a [`Dialect`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control<'a> {
    Begin(&'a BeginPlan),
    Commit,
    Rollback,
    Savepoint(&'a str),
    ReleaseSavepoint(&'a str),
    RollbackToSavepoint(&'a str),
    /// Undo a session setting made for the transaction (SQLite's `query_only`).
    Reset(&'static str),
}

impl Control<'_> {
    /// The SQL this statement becomes in `dialect`, one string per round trip.
    pub(crate) fn render(self, dialect: Dialect) -> Vec<String> {
        match self {
            Control::Begin(plan) => plan
                .prepare
                .map(str::to_owned)
                .into_iter()
                .chain([plan.begin.clone()])
                .collect(),
            Control::Commit => vec![dialect.commit().to_owned()],
            Control::Rollback => vec![dialect.rollback().to_owned()],
            Control::Savepoint(name) => vec![dialect.savepoint(name)],
            Control::ReleaseSavepoint(name) => vec![dialect.release_savepoint(name)],
            Control::RollbackToSavepoint(name) => vec![dialect.rollback_to_savepoint(name)],
            Control::Reset(sql) => vec![sql.to_owned()],
        }
    }
}

/// A connection the runtime can run a transaction on.
pub(crate) trait TxConnection: Send + 'static {
    /// Runs one control statement.
    fn run<'a>(
        &'a mut self,
        dialect: Dialect,
        control: Control<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// For handing the typed sqlx connection to user code.
    fn as_any(&self) -> &dyn Any;

    /// For handing the typed sqlx connection to user code.
    fn as_any_mut(&mut self) -> &mut dyn Any;

    /// Never reuse this connection: close it instead of returning it to its pool.
    fn discard(self: Box<Self>);
}

impl<DB> TxConnection for PoolConnection<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    fn run<'a>(
        &'a mut self,
        dialect: Dialect,
        control: Control<'a>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let conn: &mut DB::Connection = self;
            match control {
                // sqlx's own transaction manager runs BEGIN/COMMIT/ROLLBACK so that its
                // transaction depth stays right: a `conn.begin()` in user code then nests.
                // Everything else goes over the text protocol (`raw_sql`): session statements such
                // as MySQL's `SET TRANSACTION` have no effect as prepared statements, and
                // savepoint names would only churn the statement cache.
                Control::Begin(plan) => {
                    if let Some(prepare) = plan.prepare {
                        sqlx::raw_sql(prepare).execute(&mut *conn).await?;
                    }
                    let begin = AssertSqlSafe(plan.begin.clone()).into_sql_str();
                    DB::TransactionManager::begin(conn, Some(begin)).await
                }
                Control::Commit => DB::TransactionManager::commit(conn).await,
                Control::Rollback => DB::TransactionManager::rollback(conn).await,
                other => {
                    for sql in other.render(dialect) {
                        sqlx::raw_sql(AssertSqlSafe(sql))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                }
            }
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn discard(mut self: Box<Self>) {
        if tokio::runtime::Handle::try_current().is_ok() {
            // sqlx closes it gracefully in a task and frees its place in the pool.
            self.close_on_drop();
            drop(self);
        } else {
            // No runtime to close it on: dropping the raw connection closes the socket, and
            // the server rolls back whatever it had open.
            drop(self.detach());
        }
    }
}
