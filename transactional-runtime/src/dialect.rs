//! Every SQL string the library sends, per database: the one place where the databases differ
//! in what is said to them. The real drivers and the recording mock both render through it.
//!
//! docs/ARCHITECTURE.md ("Where the databases differ") explains each choice.

use crate::options::Isolation;

/// The databases the library knows, and so the SQL dialect of their control statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL: options ride in the `BEGIN` statement.
    Postgres,
    /// MySQL and MariaDB: `SET TRANSACTION ISOLATION LEVEL …` then `START TRANSACTION [READ ONLY]`.
    MySql,
    /// SQLite: every transaction is serializable; read-only through `PRAGMA query_only`.
    Sqlite,
}

/// The name of the savepoint MySQL transactions open at BEGIN, so that COMMIT can tell
/// whether the server rolled the transaction back underneath (a deadlock does that).
const MYSQL_ALIVE: &str = "transactional_open";

/// The statements that begin one transaction, sent in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Begin {
    /// One or more statements separated by `;`.
    pub sql: String,
    /// A statement that undoes a session setting once the transaction is over.
    pub reset: Option<&'static str>,
}

/// How to tell, at COMMIT, that the transaction had already been rolled back by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AbortCheck {
    /// The probe sent before `COMMIT` fails with one of these SQLSTATEs (then `COMMIT` is not
    /// executed); with `not_open`, no transaction was open any more.
    ProbeFails {
        states: &'static [&'static str],
        not_open: &'static str,
        /// What the probe's own failure says (an error left by a statement cut off earlier
        /// can carry the same SQLSTATE).
        mentions: Option<&'static str>,
    },
    /// `COMMIT` itself fails with this message when no transaction is open.
    CommitFails(&'static str),
}

impl Dialect {
    /// The dialect for a sqlx `Database::NAME`.
    /// The dialect of a URL's scheme (for sqlx's `Any` driver).
    #[cfg_attr(not(feature = "any"), allow(dead_code))]
    pub(crate) fn from_url_scheme(scheme: &str) -> Option<Dialect> {
        match scheme {
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            "sqlite" => Some(Dialect::Sqlite),
            _ => None,
        }
    }

    /// The database's name, as sqlx's drivers spell it.
    pub(crate) fn database_name(self) -> &'static str {
        match self {
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MySQL",
            Dialect::Sqlite => "SQLite",
        }
    }

    pub(crate) fn from_database_name(name: &str) -> Option<Dialect> {
        match name {
            "PostgreSQL" => Some(Dialect::Postgres),
            "MySQL" => Some(Dialect::MySql),
            "SQLite" => Some(Dialect::Sqlite),
            _ => None,
        }
    }

    /// The statements that begin a transaction. `sqlite_immediate` takes SQLite's write lock
    /// at BEGIN.
    pub(crate) fn begin(
        self,
        isolation: Isolation,
        read_only: bool,
        sqlite_immediate: bool,
    ) -> Begin {
        let mut sql = String::new();
        let mut reset = None;
        match self {
            Dialect::Postgres => {
                sql.push_str("BEGIN");
                if let Some(level) = isolation_sql(isolation) {
                    sql.push_str(" ISOLATION LEVEL ");
                    sql.push_str(level);
                }
                if read_only {
                    sql.push_str(" READ ONLY");
                }
            }
            Dialect::MySql => {
                // `SET TRANSACTION` applies to the next transaction only: no reset needed.
                if let Some(level) = isolation_sql(isolation) {
                    sql.push_str("SET TRANSACTION ISOLATION LEVEL ");
                    sql.push_str(level);
                    sql.push_str("; ");
                }
                sql.push_str(if read_only {
                    "START TRANSACTION READ ONLY; "
                } else {
                    "START TRANSACTION; "
                });
                sql.push_str("SAVEPOINT ");
                sql.push_str(MYSQL_ALIVE);
            }
            // SQLite has one isolation level, SERIALIZABLE, at least as strong as any asked for.
            Dialect::Sqlite => {
                if read_only {
                    sql.push_str("PRAGMA query_only = ON; ");
                    reset = Some("PRAGMA query_only = OFF");
                }
                sql.push_str(if sqlite_immediate && !read_only {
                    "BEGIN IMMEDIATE"
                } else {
                    "BEGIN DEFERRED"
                });
            }
        }
        Begin { sql, reset }
    }

    /// A query returning the server session id, for [`Dialect::cancel`].
    pub(crate) fn session_id(self) -> Option<&'static str> {
        match self {
            Dialect::Postgres => Some("SELECT pg_backend_pid()::int8"),
            Dialect::MySql => Some("SELECT CAST(CONNECTION_ID() AS SIGNED)"),
            Dialect::Sqlite => None,
        }
    }

    /// The statement, run on another connection, that cancels the statement running in
    /// `session`.
    pub(crate) fn cancel(self, session: i64) -> Option<String> {
        match self {
            Dialect::Postgres => Some(format!("SELECT pg_cancel_backend({session})")),
            Dialect::MySql => Some(format!("KILL QUERY {session}")),
            Dialect::Sqlite => None,
        }
    }

    /// `COMMIT`, with what lets it notice a transaction the server had already rolled back:
    /// PostgreSQL answers `COMMIT` of an aborted transaction with `ROLLBACK` and no error, and
    /// MySQL commits nothing after a deadlock rolled the transaction back (later statements
    /// autocommit). A `SAVEPOINT` fails in both of PostgreSQL's cases (aborted, or not in a
    /// transaction); MySQL's savepoint opened at BEGIN is gone once the server rolled back.
    pub(crate) fn commit(self) -> (&'static str, AbortCheck) {
        match self {
            Dialect::Postgres => (
                "SAVEPOINT transactional_commit; COMMIT",
                // in_failed_sql_transaction, no_active_sql_transaction
                AbortCheck::ProbeFails {
                    states: &["25P02", "25P01"],
                    not_open: "25P01",
                    mentions: None,
                },
            ),
            Dialect::MySql => (
                "RELEASE SAVEPOINT transactional_open; COMMIT",
                // ER_SP_DOES_NOT_EXIST (a ROLLBACK after it is harmless on MySQL)
                AbortCheck::ProbeFails {
                    states: &["42000"],
                    not_open: "",
                    mentions: Some(MYSQL_ALIVE),
                },
            ),
            Dialect::Sqlite => (
                "COMMIT",
                AbortCheck::CommitFails("no transaction is active"),
            ),
        }
    }

    pub(crate) fn rollback(self) -> &'static str {
        "ROLLBACK"
    }

    pub(crate) fn savepoint(self, name: &str) -> String {
        format!("SAVEPOINT {name}")
    }

    pub(crate) fn release_savepoint(self, name: &str) -> String {
        format!("RELEASE SAVEPOINT {name}")
    }

    /// Rolls back to a savepoint and releases it, in one round trip.
    pub(crate) fn rollback_to_savepoint(self, name: &str) -> String {
        format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
    }
}

/// The SQL spelling of an isolation level, or `None` for the default (send nothing).
pub(crate) fn isolation_sql(isolation: Isolation) -> Option<&'static str> {
    match isolation {
        Isolation::Default => None,
        Isolation::ReadUncommitted => Some("READ UNCOMMITTED"),
        Isolation::ReadCommitted => Some("READ COMMITTED"),
        Isolation::RepeatableRead => Some("REPEATABLE READ"),
        Isolation::Serializable => Some("SERIALIZABLE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_options_ride_in_begin() {
        let plan = Dialect::Postgres.begin(Isolation::Serializable, true, false);
        assert_eq!(plan.sql, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY");
        assert!(plan.reset.is_none());
        let plan = Dialect::Postgres.begin(Isolation::Default, false, false);
        assert_eq!(plan.sql, "BEGIN");
    }

    #[test]
    fn mysql_sets_isolation_for_the_next_transaction_in_the_same_round_trip() {
        let plan = Dialect::MySql.begin(Isolation::ReadCommitted, true, false);
        assert_eq!(
            plan.sql,
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION READ ONLY; \
             SAVEPOINT transactional_open"
        );
        assert_eq!(plan.reset, None);
    }

    #[test]
    fn sqlite_maps_read_only_to_query_only_and_resets_it() {
        let plan = Dialect::Sqlite.begin(Isolation::Serializable, true, true);
        assert_eq!(plan.sql, "PRAGMA query_only = ON; BEGIN DEFERRED");
        assert_eq!(plan.reset, Some("PRAGMA query_only = OFF"));
        let plan = Dialect::Sqlite.begin(Isolation::Default, false, true);
        assert_eq!(plan.sql, "BEGIN IMMEDIATE");
    }

    #[test]
    fn savepoint_statements() {
        let d = Dialect::Postgres;
        assert_eq!(d.savepoint("tx_sp_1"), "SAVEPOINT tx_sp_1");
        assert_eq!(d.release_savepoint("tx_sp_1"), "RELEASE SAVEPOINT tx_sp_1");
        assert_eq!(
            d.rollback_to_savepoint("tx_sp_1"),
            "ROLLBACK TO SAVEPOINT tx_sp_1; RELEASE SAVEPOINT tx_sp_1"
        );
    }

    #[test]
    fn cancel_statements() {
        assert_eq!(
            Dialect::Postgres.cancel(42).as_deref(),
            Some("SELECT pg_cancel_backend(42)")
        );
        assert_eq!(Dialect::MySql.cancel(7).as_deref(), Some("KILL QUERY 7"));
        assert_eq!(Dialect::Sqlite.cancel(1), None);
    }
}
