//! SeaORM on the current transaction (feature `sea-orm`).
//!
//! [`current()`] (or [`on`] for a named data source) gives a [`SeaConnection`]: a handle that
//! SeaORM's entity and query APIs accept (`ConnectionTrait`), each of whose statements runs
//! where [`connection()`](crate::connection) would — on the scope's transaction inside a
//! `#[transactional]` scope, on a pooled connection in autocommit outside one (or
//! [`Error::OutsideTransaction`] on a strict data source). Propagation, hooks, deadlines and
//! `retry` apply unchanged: SeaORM's `DbErr` carries the database's error where `retry` finds
//! it.
//!
//! ```
//! use sea_orm::{ConnectionTrait, Statement};
//! use transactional_runtime::Transactional;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! transactional_runtime::register_default(pool)?;
//!
//! Transactional::new()
//!     .run(async {
//!         let db = transactional_runtime::sea_orm::current()?;
//!         db.execute_unprepared("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)").await?;
//!         let insert = Statement::from_sql_and_values(
//!             db.get_database_backend(),
//!             "INSERT INTO notes (body) VALUES (?)",
//!             ["in the scope's transaction".into()],
//!         );
//!         db.execute_raw(insert).await?;
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//!     })
//!     .await
//!     .map_err(|e| e.to_string())?;
//! # Ok(()) }
//! ```
//!
//! The handle names a data source, not a connection: take it once and use it anywhere in the
//! task. Transactions are this library's to begin and end: SeaORM's own `begin()` is not
//! offered on it (`TransactionTrait`); use a scope (`Transactional`, `#[transactional]`,
//! `propagation = "NESTED"` for a savepoint).

// A build without a database driver has nothing to run statements on.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports, unused_variables)
)]

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement};
use sea_query_sqlx::SqlxValues;
use sqlx::AssertSqlSafe;

use crate::context::Context;
use crate::dialect::Dialect;
use crate::error::Error;
use crate::guard::acquire;

/// SeaORM's view of a data source: statements run on its current transaction, else on a
/// pooled connection. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SeaConnection {
    data_source: Arc<str>,
    backend: DbBackend,
}

/// The current data source (the innermost scope's, else `"default"`) as a SeaORM connection.
///
/// Fails with [`Error::NoDataSource`] when nothing is registered under that name.
pub fn current() -> Result<SeaConnection, Error> {
    let ctx = Context::current();
    on(ctx.current_data_source())
}

/// The data source registered under `data_source` as a SeaORM connection.
///
/// Fails with [`Error::NoDataSource`] when nothing is registered under that name.
pub fn on(data_source: &str) -> Result<SeaConnection, Error> {
    let ds = Context::current().data_source(data_source)?;
    let backend = match ds.dialect {
        Dialect::Postgres => DbBackend::Postgres,
        Dialect::MySql => DbBackend::MySql,
        Dialect::Sqlite => DbBackend::Sqlite,
    };
    Ok(SeaConnection {
        data_source: ds.name.clone(),
        backend,
    })
}

impl SeaConnection {
    /// The data source its statements run on.
    pub fn data_source(&self) -> &str {
        &self.data_source
    }
}

/// Runs `$body` with `$conn` the current connection of `$self`'s data source, typed for its
/// backend.
macro_rules! on_backend {
    ($self:ident, |$conn:ident| $body:expr) => {{
        match $self.backend {
            #[cfg(feature = "postgres")]
            DbBackend::Postgres => {
                let mut $conn = acquire::<sqlx::Postgres>(&$self.data_source)
                    .await
                    .map_err(connection_error)?;
                let $conn = &mut *$conn;
                $body
            }
            #[cfg(feature = "mysql")]
            DbBackend::MySql => {
                let mut $conn = acquire::<sqlx::MySql>(&$self.data_source)
                    .await
                    .map_err(connection_error)?;
                let $conn = &mut *$conn;
                $body
            }
            #[cfg(feature = "sqlite")]
            DbBackend::Sqlite => {
                let mut $conn = acquire::<sqlx::Sqlite>(&$self.data_source)
                    .await
                    .map_err(connection_error)?;
                let $conn = &mut *$conn;
                $body
            }
            #[allow(unreachable_patterns)]
            other => Err(DbErr::BackendNotSupported {
                db: other.as_str(),
                ctx: "transactional: this build has no driver for it",
            }),
        }
    }};
}

/// A statement with its values, for sqlx.
fn query<DB>(stmt: &Statement) -> sqlx::query::Query<'_, DB, SqlxValues>
where
    DB: sqlx::Database,
    SqlxValues: for<'q> sqlx::IntoArguments<DB>,
{
    let values = stmt.values.clone().unwrap_or(sea_orm::Values(Vec::new()));
    sqlx::query_with(AssertSqlSafe(stmt.sql.as_str()), SqlxValues(values))
}

#[async_trait::async_trait]
impl ConnectionTrait for SeaConnection {
    fn get_database_backend(&self) -> DbBackend {
        self.backend
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        on_backend!(self, |conn| query(&stmt)
            .execute(conn)
            .await
            .map(ExecResult::from)
            .map_err(exec_error))
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        on_backend!(self, |conn| sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map(ExecResult::from)
            .map_err(exec_error))
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        on_backend!(self, |conn| query(&stmt)
            .fetch_optional(conn)
            .await
            .map(|row| row.map(QueryResult::from))
            .map_err(query_error))
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        on_backend!(self, |conn| query(&stmt)
            .fetch_all(conn)
            .await
            .map(|rows| rows.into_iter().map(QueryResult::from).collect())
            .map_err(query_error))
    }
}

/// The library's error where SeaORM expects one: the database's own error stays reachable
/// (for `retry`), the rest keeps its message.
fn connection_error(error: Error) -> DbErr {
    match error {
        Error::Database(source) => exec_error(source),
        other => DbErr::Conn(RuntimeErr::Internal(other.to_string())),
    }
}

fn exec_error(error: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(error)))
}

fn query_error(error: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(error)))
}
