//! The one seam where SQL text is made: every transaction-control statement the library sends,
//! per database. The real connection and the recording mock both render through it.

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

/// The statements that begin one transaction: some to prepare the session, the `BEGIN`
/// itself, and one to undo the preparation once the transaction is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BeginPlan {
    pub prepare: Option<&'static str>,
    pub begin: String,
    pub reset: Option<&'static str>,
}

impl Dialect {
    /// The dialect for a sqlx `Database::NAME`.
    pub(crate) fn from_database_name(name: &str) -> Option<Dialect> {
        match name {
            "PostgreSQL" => Some(Dialect::Postgres),
            "MySQL" => Some(Dialect::MySql),
            "SQLite" => Some(Dialect::Sqlite),
            _ => None,
        }
    }

    /// `sqlite_immediate` takes SQLite's write lock at BEGIN (see
    /// [`DataSourceSettings::sqlite_begin_immediate`](crate::DataSourceSettings::sqlite_begin_immediate)).
    pub(crate) fn begin(
        self,
        isolation: Isolation,
        read_only: bool,
        sqlite_immediate: bool,
    ) -> BeginPlan {
        match self {
            Dialect::Postgres => {
                let mut begin = String::from("BEGIN");
                if let Some(level) = isolation.sql() {
                    begin.push_str(" ISOLATION LEVEL ");
                    begin.push_str(level);
                }
                if read_only {
                    begin.push_str(" READ ONLY");
                }
                BeginPlan {
                    prepare: None,
                    begin,
                    reset: None,
                }
            }
            Dialect::MySql => BeginPlan {
                // `SET TRANSACTION` applies to the next transaction only, so it needs no reset.
                prepare: mysql_isolation(isolation),
                begin: if read_only {
                    "START TRANSACTION READ ONLY".into()
                } else {
                    "START TRANSACTION".into()
                },
                reset: None,
            },
            // SQLite has one isolation level, SERIALIZABLE, at least as strong as any asked for.
            Dialect::Sqlite if read_only => BeginPlan {
                prepare: Some("PRAGMA query_only = ON"),
                begin: "BEGIN DEFERRED".into(),
                reset: Some("PRAGMA query_only = OFF"),
            },
            Dialect::Sqlite => BeginPlan {
                prepare: None,
                begin: if sqlite_immediate {
                    "BEGIN IMMEDIATE".into()
                } else {
                    "BEGIN DEFERRED".into()
                },
                reset: None,
            },
        }
    }

    pub(crate) fn commit(self) -> &'static str {
        "COMMIT"
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

    pub(crate) fn rollback_to_savepoint(self, name: &str) -> String {
        format!("ROLLBACK TO SAVEPOINT {name}")
    }
}

fn mysql_isolation(isolation: Isolation) -> Option<&'static str> {
    Some(match isolation {
        Isolation::Default => return None,
        Isolation::ReadUncommitted => "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        Isolation::ReadCommitted => "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        Isolation::RepeatableRead => "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        Isolation::Serializable => "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_options_ride_in_begin() {
        let plan = Dialect::Postgres.begin(Isolation::Serializable, true, false);
        assert_eq!(plan.begin, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY");
        assert_eq!(plan.prepare, None);
        assert_eq!(
            Dialect::Postgres
                .begin(Isolation::Default, false, false)
                .begin,
            "BEGIN"
        );
    }

    #[test]
    fn mysql_sets_isolation_for_the_next_transaction() {
        let plan = Dialect::MySql.begin(Isolation::ReadCommitted, true, false);
        assert_eq!(
            plan.prepare,
            Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        );
        assert_eq!(plan.begin, "START TRANSACTION READ ONLY");
        assert_eq!(plan.reset, None);
    }

    #[test]
    fn sqlite_read_only_is_a_pragma_that_is_reset() {
        let plan = Dialect::Sqlite.begin(Isolation::Serializable, true, false);
        assert_eq!(plan.prepare, Some("PRAGMA query_only = ON"));
        assert_eq!(plan.reset, Some("PRAGMA query_only = OFF"));
        assert_eq!(
            Dialect::Sqlite
                .begin(Isolation::ReadCommitted, false, false)
                .begin,
            "BEGIN DEFERRED"
        );
        assert_eq!(
            Dialect::Sqlite.begin(Isolation::Default, false, true).begin,
            "BEGIN IMMEDIATE"
        );
    }

    #[test]
    fn savepoint_statements() {
        let d = Dialect::Postgres;
        assert_eq!(d.savepoint("tx_sp_1"), "SAVEPOINT tx_sp_1");
        assert_eq!(d.release_savepoint("tx_sp_1"), "RELEASE SAVEPOINT tx_sp_1");
        assert_eq!(
            d.rollback_to_savepoint("tx_sp_1"),
            "ROLLBACK TO SAVEPOINT tx_sp_1"
        );
    }
}
