//! The one error type of the library.

use std::time::Duration;

use crate::name::Name;
use crate::options::Propagation;

/// A boxed error from user code (a failing before-commit hook, say).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in a transactional scope, apart from the body's own errors.
///
/// Your error type takes these through `From<transactional::Error>`; every variant's message
/// says what happened and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No pool is registered under this name.
    #[error("no data source named `{name}` is registered: call `transactional::register(\"{name}\", pool)` (or `register_default(pool)` for \"default\") at start-up, before the first transactional call")]
    NoDataSource {
        /// The name that was looked up.
        name: String,
    },
    /// A data source of this name is already registered.
    #[error("a data source named `{name}` is already registered: register each name once at start-up, or pick another name")]
    AlreadyRegistered {
        /// The name that was registered twice.
        name: String,
    },
    /// The data source holds a different database than the connection asked for.
    #[error("data source `{name}` is a {actual} pool, but a {expected} connection was asked for: ask with the pool's database type")]
    WrongDatabase {
        /// The data source.
        name: String,
        /// The database type asked for.
        expected: &'static str,
        /// The database type registered.
        actual: &'static str,
    },
    /// Code asked for a real connection from a recording mock data source.
    #[error("data source `{name}` is a recording mock (transactional::testing::MockDataSource): it has no real connection to run queries on; mock the repository too, or test against a real database with transactional::testing::rollback_after")]
    MockConnection {
        /// The data source.
        name: String,
    },
    /// The database is not one of PostgreSQL, MySQL/MariaDB, SQLite.
    #[error("database `{database}` is not supported: transactional knows PostgreSQL, MySQL/MariaDB and SQLite")]
    UnsupportedDatabase {
        /// `Database::NAME` of the pool.
        database: &'static str,
    },
    /// `MANDATORY` found no transaction; the body did not run.
    #[error("no existing transaction for propagation MANDATORY on data source `{data_source}` (scope `{scope}`): call it from inside a transactional scope, or use REQUIRED")]
    NoExistingTransaction {
        /// The data source.
        data_source: String,
        /// The scope's name.
        scope: Name,
    },
    /// A connection was asked for outside any transaction on a data source registered as
    /// strict ([`DataSourceSettings::strict`](crate::DataSourceSettings::strict)).
    #[error("no transaction on data source `{data_source}`, which is strict: its connections are handed out only inside a transaction. Call this code from a #[transactional] scope (a repository fn whose caller forgot the attribute would commit each statement on its own), declare the scope `propagation = \"SUPPORTS\"` or `\"NOT_SUPPORTED\"` if it may run without one, or wrap the call in `transactional::autocommit(...)` where autocommit is meant")]
    OutsideTransaction {
        /// The data source.
        data_source: String,
    },
    /// `NEVER` found a transaction; the body did not run.
    #[error("existing transaction found for propagation NEVER on data source `{data_source}` (scope `{scope}`): call it outside any transaction, or use NOT_SUPPORTED to suspend it")]
    ExistingTransaction {
        /// The data source.
        data_source: String,
        /// The scope's name.
        scope: Name,
    },
    /// The transaction was rolled back although the owning scope returned `Ok`, because a
    /// participant failed or marked it rollback-only. Nothing was saved.
    #[error("transaction rolled back because it has been marked as rollback-only (a joined scope failed or called set_rollback_only()): nothing was committed; handle the inner error, or give the inner scope NESTED or REQUIRES_NEW")]
    UnexpectedRollback,
    /// The scope ran past its timeout; the body was cancelled and the transaction rolled back.
    #[error("transactional scope `{scope}` timed out after {timeout:?}: the body was cancelled and its transaction rolled back")]
    Timeout {
        /// The scope's name.
        scope: Name,
        /// The timeout it was given.
        timeout: Duration,
    },
    /// A connection guard or handle was used after its transaction ended.
    #[error("transaction already finished: a connection guard or hook outlived the transactional scope that owned it; do the work inside the scope, or outside any transaction")]
    TransactionFinished,
    /// The scope ended while a connection guard of its transaction was still alive elsewhere
    /// (returned out of the body, or held by a spawned task). The transaction was rolled back.
    #[error("scope `{scope}` ended while a connection guard of its transaction was still held (returned from the body or moved into a spawned task): the transaction was rolled back; drop every guard before the scope returns")]
    GuardOutlivedScope {
        /// The scope's name.
        scope: Name,
    },
    /// Waited too long for the transaction's connection: another user of this task's
    /// transaction kept it.
    #[error("the transaction's connection on `{data_source}` stayed busy for {waited:?}: {reason}; a guard kept across a call into another repository or transactional fn waits for itself, so drop the guard first, and let concurrent NESTED scopes finish before the others need the connection")]
    ConnectionBusy {
        /// The data source.
        data_source: String,
        /// How long it waited.
        waited: Duration,
        /// Who kept it.
        reason: &'static str,
    },
    /// A pooled connection could not be had.
    #[error("could not acquire a connection from data source `{data_source}`{hint}: {source}")]
    Acquire {
        /// The data source.
        data_source: String,
        /// Extra advice (REQUIRES_NEW needs a second connection, …).
        hint: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// `BEGIN` failed; the body did not run.
    #[error("could not begin a transaction on `{data_source}`: {source}")]
    Begin {
        /// The data source.
        data_source: String,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// `COMMIT` failed. When `outcome_unknown` is true the connection broke during the commit:
    /// it may or may not have been applied; check before retrying.
    #[error("{}: {source}", if *outcome_unknown { "the connection failed during COMMIT: the transaction may or may not have been committed; check the data before retrying" } else { "COMMIT failed and the transaction was rolled back" })]
    Commit {
        /// Whether the commit may have happened.
        outcome_unknown: bool,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database had already rolled the transaction (or the NESTED scope's savepoint)
    /// back, or aborted it, before its scope ended: a statement failed and the code went on.
    /// Nothing of it was committed: what ran after the rollback was refused or undone too.
    #[error("the transaction on `{data_source}` had been rolled back by the database {}: nothing of it was committed (on PostgreSQL a failed statement aborts the transaction; MySQL rolls it back on a deadlock; SQLite on some errors, such as INSERT OR ROLLBACK). Let the failing statement's error propagate, or run the statement that may fail in a NESTED scope", after_failure(cause))]
    Aborted {
        /// The data source.
        data_source: String,
        /// The error of the statement that failed first, where the scope saw it (its body
        /// returned it).
        cause: Option<String>,
        /// What the database answered the statement that found the transaction gone.
        #[source]
        source: Option<sqlx::Error>,
    },
    /// The database ended the transaction before its scope did, and cannot be asked whether it
    /// committed or rolled back what ran until then: MySQL commits implicitly before DDL (and
    /// some other statements) but rolls back on a deadlock; a COMMIT or ROLLBACK sent through a
    /// connection guard ends it too. What ran after that point was rolled back. After-completion
    /// hooks see [`Outcome::Unknown`](crate::Outcome::Unknown).
    #[error("the transaction on `{data_source}` was ended by the database before its scope ended, and whether its work was committed cannot be known: {reason}. What ran after that point was rolled back; check the data before running it again, and keep statements that commit (DDL such as CREATE or ALTER TABLE, LOCK TABLES, START TRANSACTION, COMMIT, ROLLBACK) out of transactional scopes")]
    EndedUnderneath {
        /// The data source.
        data_source: String,
        /// What may have ended it.
        reason: &'static str,
        /// What the database answered the statement that found the transaction gone.
        #[source]
        source: Option<sqlx::Error>,
    },
    /// The transaction's connection was lost or had to be closed (a cleanup after a cancelled
    /// statement could not finish); the server rolled the transaction back.
    #[error("the transaction on `{data_source}` lost its connection (it was closed after a cancelled statement could not be cleaned up, or the server dropped it): the transaction was rolled back and nothing more can run in it")]
    TransactionBroken {
        /// The data source.
        data_source: String,
    },
    /// The options of a scope contradict each other; the body did not run.
    #[error("invalid options for scope `{scope}`: {reason}")]
    InvalidOptions {
        /// The scope's name.
        scope: Name,
        /// What is wrong.
        reason: String,
    },
    /// Code asked for a connection where transactions are mocked out and no pool is registered.
    #[error("transactions are mocked out here (transactional::testing::mocked, or the `mock` feature), so there is no connection for data source `{name}`: mock the repository as well, or give the test a real pool with transactional::with_data_source(\"{name}\", pool, test) to run its queries in autocommit")]
    Mocked {
        /// The data source.
        name: String,
    },
    /// A savepoint statement failed.
    #[error("savepoint statement failed on `{data_source}`: {source}")]
    Savepoint {
        /// The data source.
        data_source: String,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// NESTED was asked for in a transaction already marked rollback-only.
    #[error("cannot create a savepoint for NESTED scope `{scope}`: the transaction is already marked rollback-only and will roll back")]
    RollbackOnlySavepoint {
        /// The scope's name.
        scope: Name,
    },
    /// A joining scope's options conflict with the transaction it joins (strict validation).
    #[error("scope `{scope}` cannot join the existing transaction: {reason}; turn off strict validation, or give the scope REQUIRES_NEW")]
    IncompatibleTransaction {
        /// The scope's name.
        scope: Name,
        /// What differs.
        reason: String,
    },
    /// A before-commit hook failed; the transaction was rolled back.
    #[error("a before-commit hook failed, so the transaction was rolled back: {0}")]
    BeforeCommit(#[source] BoxError),
    /// Replicas that cannot be registered.
    #[error("cannot register the replicas of data source `{name}`: {reason}")]
    InvalidReplicas {
        /// The data source.
        name: String,
        /// Why.
        reason: String,
    },
    /// `outbox::publish` was called with no transaction to store the event in.
    #[cfg(feature = "outbox")]
    #[error("outbox::publish on data source `{data_source}` found no transaction: an event is stored in the transaction whose work it announces, so that it is published if and only if that work commits; call it inside a #[transactional] scope (for an event of its own, wrap the call in one)")]
    OutboxNeedsTransaction {
        /// The data source the event was for.
        data_source: String,
    },
    /// The outbox's table does not exist in the data source's database.
    #[cfg(feature = "outbox")]
    #[error("the outbox table `{table}` does not exist: create it at start-up with `Outbox::create_schema(&pool)` (or its statements in a migration): {source}")]
    OutboxTableMissing {
        /// The table.
        table: String,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// An event, or an outbox's table name, that the outbox cannot store.
    #[cfg(feature = "outbox")]
    #[error("invalid outbox {what}: {reason}")]
    InvalidOutbox {
        /// What was refused: `"topic"`, `"key"`, `"table name"`, `"payload"`.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The database rejected a statement run outside a transaction, or getting a connection failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Error {
    /// Whether this is [`Error::UnexpectedRollback`].
    pub fn is_unexpected_rollback(&self) -> bool {
        matches!(self, Error::UnexpectedRollback)
    }

    /// Whether this is [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// Whether the database may or may not have committed the work: the connection broke
    /// during COMMIT ([`Error::Commit`] with `outcome_unknown`), or the database ended the
    /// transaction by itself ([`Error::EndedUnderneath`]). Check the data before running the
    /// work again.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(
            self,
            Error::Commit {
                outcome_unknown: true,
                ..
            } | Error::EndedUnderneath { .. }
        )
    }

    /// sqlx's error, for the variants that carry one.
    pub fn sqlx_error(&self) -> Option<&sqlx::Error> {
        match self {
            Error::Acquire { source, .. }
            | Error::Begin { source, .. }
            | Error::Commit { source, .. }
            | Error::Savepoint { source, .. }
            | Error::Database(source) => Some(source),
            #[cfg(feature = "outbox")]
            Error::OutboxTableMissing { source, .. } => Some(source),
            Error::Aborted { source, .. } | Error::EndedUnderneath { source, .. } => {
                source.as_ref()
            }
            _ => None,
        }
    }

    /// Whether no connection could be had: the pool stayed exhausted for its acquire timeout,
    /// or was closed. A caller may try again later.
    pub fn is_acquire_failure(&self) -> bool {
        match self {
            Error::Acquire { .. } | Error::ConnectionBusy { .. } => true,
            Error::Database(source) => {
                matches!(source, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
            }
            _ => false,
        }
    }

    #[doc(hidden)]
    pub(crate) fn propagation_refused(
        propagation: Propagation,
        data_source: &str,
        scope: Name,
    ) -> Error {
        let data_source = data_source.to_owned();
        match propagation {
            Propagation::Mandatory => Error::NoExistingTransaction { data_source, scope },
            _ => Error::ExistingTransaction { data_source, scope },
        }
    }
}

/// How [`Error::Aborted`] names what rolled the transaction back.
fn after_failure(cause: &Option<String>) -> String {
    match cause {
        Some(cause) => format!("after a statement failed ({cause})"),
        None => {
            "after a statement in it failed and the scope went on (its error was caught)".to_owned()
        }
    }
}
