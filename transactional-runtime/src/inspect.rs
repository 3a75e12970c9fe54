//! What the library reads from an error: the database's own error, found wherever it is wrapped
//! in a `source()` chain (sqlx's `Error`, its `Box<dyn DatabaseError>`, a driver's error type,
//! the library's own [`Error`]), and what it means for the transaction.
//!
//! A scope's end uses it on its body's error (the macro passes a way to reach that error as a
//! `dyn Error`, see `__private`), to know whether the database rolled the whole
//! transaction back (docs/SEMANTICS.md, "When the database ends a transaction") and to quote
//! the statement that failed first.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;

use crate::error::Error;

/// What a body's error says, as far as the library cares.
#[derive(Debug, Default)]
pub struct Facts {
    /// The error in words (asked for only when a log line will use it).
    pub(crate) text: Option<String>,
    /// The database's error inside it, if any.
    pub(crate) database: Option<DatabaseFailure>,
}

impl Facts {
    /// The facts of an error that implements `std::error::Error`.
    pub(crate) fn of_error(error: &(dyn StdError + 'static), text: bool) -> Facts {
        Facts {
            text: text.then(|| error.to_string()),
            database: DatabaseFailure::find(error),
        }
    }

    /// The facts of an error known only by its words.
    pub(crate) fn of_text(text: Option<String>) -> Facts {
        Facts {
            text,
            database: None,
        }
    }

    /// The facts of an error that says itself whether it is a refusal for a concurrent
    /// transaction (a [`RetryableError`](crate::RetryableError)).
    pub(crate) fn of_retryable(retryable: bool) -> Facts {
        Facts {
            text: None,
            database: retryable.then(DatabaseFailure::concurrent_refusal),
        }
    }

    /// The error in words, if they were asked for.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The database's error found in it, in words.
    pub fn database_error(&self) -> Option<&str> {
        self.database.as_ref().map(|failure| failure.text.as_str())
    }
}

/// A database's error met in a scope: its words, and what it did to the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DatabaseFailure {
    /// The database's words, with its code.
    pub(crate) text: String,
    /// The database refused the transaction because of a concurrent one (a serialization
    /// failure or a deadlock): running it again may succeed.
    pub(crate) concurrent: bool,
    /// The database rolled the whole transaction back, not only the statement (MySQL: a
    /// deadlock, a lock wait timeout under `innodb_rollback_on_timeout`, a full lock table).
    pub(crate) rolled_back: bool,
}

impl DatabaseFailure {
    /// The first database error in `error`'s `source()` chain, `error` included.
    pub(crate) fn find(error: &(dyn StdError + 'static)) -> Option<DatabaseFailure> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = database_error(error) {
                return Some(DatabaseFailure::of(found));
            }
            next = error.source();
        }
        None
    }

    /// What a database's error means.
    pub(crate) fn of(error: &dyn DatabaseError) -> DatabaseFailure {
        let code = error.code();
        let text = match &code {
            Some(code) => format!("{} (code {code})", error.message()),
            None => error.message().to_owned(),
        };
        let (concurrent, rolled_back) = classify(error);
        DatabaseFailure {
            text,
            concurrent,
            rolled_back,
        }
    }

    /// A failure known only as one `retry` may run again (a [`RetryableError`] said so).
    ///
    /// [`RetryableError`]: crate::RetryableError
    pub(crate) fn concurrent_refusal() -> DatabaseFailure {
        DatabaseFailure {
            text: "the database refused the transaction because of a concurrent one".to_owned(),
            concurrent: true,
            rolled_back: true,
        }
    }
}

impl Error {
    /// Whether the database refused the transaction because of a concurrent one: a
    /// serialization failure or a deadlock (PostgreSQL `40001`, `40P01`; MySQL/MariaDB
    /// `1213`, `1205`; SQLite busy or locked), at a statement, at COMMIT, or in a
    /// before-commit hook (whose error is searched as `retry` searches a body's). Running the
    /// whole transaction again may succeed.
    pub fn is_serialization_failure(&self) -> bool {
        let failure = match self {
            Error::BeforeCommit(error) => DatabaseFailure::find(&**error),
            _ => self
                .sqlx_error()
                .and_then(sqlx::Error::as_database_error)
                .map(DatabaseFailure::of),
        };
        failure.is_some_and(|failure| failure.concurrent)
    }
}

/// The database's error that `error` is, or carries directly.
fn database_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a dyn DatabaseError> {
    if let Some(error) = error.downcast_ref::<Error>() {
        return error.sqlx_error().and_then(sqlx::Error::as_database_error);
    }
    if let Some(error) = error.downcast_ref::<sqlx::Error>() {
        return error.as_database_error();
    }
    // sqlx's `Database` variant gives its boxed error as its `source()`: what an error type
    // that wraps an `sqlx::Error` with `#[error(transparent)]` shows first.
    if let Some(error) = error.downcast_ref::<Box<dyn DatabaseError>>() {
        return Some(&**error);
    }
    // SeaORM's `DbErr` gives its `RuntimeErr` as its source, which holds sqlx's error without
    // giving it as one.
    #[cfg(feature = "sea-orm")]
    if let Some(::sea_orm::RuntimeErr::SqlxError(error)) =
        error.downcast_ref::<::sea_orm::RuntimeErr>()
    {
        return error.as_database_error();
    }
    #[cfg(feature = "postgres")]
    if let Some(error) = error.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return Some(error);
    }
    #[cfg(feature = "mysql")]
    if let Some(error) = error.downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return Some(error);
    }
    #[cfg(feature = "sqlite")]
    if let Some(error) = error.downcast_ref::<sqlx::sqlite::SqliteError>() {
        return Some(error);
    }
    None
}

/// Whether the database refused the transaction for a concurrent one, and whether it rolled
/// the whole transaction back.
fn classify(error: &dyn DatabaseError) -> (bool, bool) {
    #[cfg(feature = "mysql")]
    if let Some(mysql) = error.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return match mysql.number() {
            // ER_LOCK_DEADLOCK (also Galera's certification failure): rolled back.
            // ER_LOCK_WAIT_TIMEOUT: the statement, or with innodb_rollback_on_timeout the
            // transaction.
            1213 | 1205 => (true, true),
            // ER_LOCK_TABLE_FULL, ER_XA_RBDEADLOCK, ER_XA_RBTIMEOUT, ER_XA_RBROLLBACK,
            // ER_ERROR_DURING_COMMIT: the transaction was rolled back.
            1206 | 1614 | 1613 | 1402 | 1180 => (false, true),
            _ => (false, false),
        };
    }
    #[cfg(feature = "sqlite")]
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        // SQLITE_BUSY, SQLITE_LOCKED and their extended codes. (Whether SQLite rolled the
        // transaction back, its rollback hook says: see `driver`.)
        let code = error.code().and_then(|code| code.parse::<i32>().ok());
        return (code.is_some_and(|code| matches!(code & 0xff, 5 | 6)), false);
    }
    // PostgreSQL: serialization_failure, deadlock_detected. A failed statement aborts the
    // transaction, which only a ROLLBACK ends.
    let concurrent = matches!(error.code().as_deref(), Some("40001" | "40P01"));
    (concurrent, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum AppError {
        #[error(transparent)]
        Tx(#[from] Error),
        #[error(transparent)]
        Db(#[from] sqlx::Error),
        #[error("not found")]
        NotFound,
    }

    #[test]
    fn errors_without_a_database_error_have_none() {
        assert_eq!(DatabaseFailure::find(&AppError::NotFound), None);
        assert_eq!(
            DatabaseFailure::find(&AppError::Db(sqlx::Error::RowNotFound)),
            None
        );
        assert_eq!(
            DatabaseFailure::find(&AppError::Tx(Error::UnexpectedRollback)),
            None
        );
        assert_eq!(
            DatabaseFailure::find(&AppError::Tx(Error::Database(sqlx::Error::PoolTimedOut))),
            None
        );
        let facts = Facts::of_error(&AppError::NotFound, true);
        assert_eq!(facts.text.as_deref(), Some("not found"));
        assert_eq!(Facts::of_error(&AppError::NotFound, false).text, None);
    }
}
