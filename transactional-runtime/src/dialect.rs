//! Every SQL string the library sends, per database: the one place where the databases differ
//! in what is said to them. The real drivers and the recording mock both render through it.
//!
//! docs/ARCHITECTURE.md ("Where the databases differ") explains each choice.

use crate::options::Isolation;

/// The databases the library knows, and so the SQL dialect of their control statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL: options ride in the `BEGIN` statement.
    Postgres,
    /// MySQL and MariaDB: autocommit off for the transaction, `SET TRANSACTION …` for its
    /// isolation level and read-only.
    MySql,
    /// SQLite: every transaction is serializable; read-only through `PRAGMA query_only`.
    Sqlite,
}

/// The name of the savepoint MySQL transactions open at BEGIN: it is gone once the server has
/// ended the transaction (a rollback, or an implicit commit), which the end of the transaction
/// checks by releasing it first.
const MYSQL_ALIVE: &str = "transactional_open";

/// MySQL runs a transaction with autocommit off, so that statements sent after the server
/// ended it (a deadlock rolls it back and carries on) open a new transaction that the end of the
/// scope rolls back, instead of committing one by one; the session gets it back at the end.
const MYSQL_AUTOCOMMIT_ON: &str = "SET autocommit = 1";

/// PostgreSQL replicas: how far a standby has replayed the primary's WAL, in bytes (NULL on
/// a primary).
const PG_REPLAYED: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";

/// PostgreSQL primaries with replicas: the WAL position after a COMMIT, in bytes, read in the
/// COMMIT's round trip; 0 on a server in recovery (a pool that points at a standby after a
/// failover), where the position cannot be read and must not fail the COMMIT before it.
const PG_COMMITTED: &str = "SELECT CASE WHEN pg_is_in_recovery() THEN 0 \
     ELSE (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint END";

/// MariaDB primaries with replicas: the sequence number of the GTID this session's COMMIT
/// wrote (`@@last_gtid`, `domain-server-sequence`), read in the COMMIT's round trip; NULL when
/// it is in another domain than the server's (a session that chose its own) or the session
/// wrote no GTID (the binary log is off).
const MARIADB_COMMITTED: &str =
    "SELECT IF(@@last_gtid LIKE CONCAT(@@GLOBAL.gtid_domain_id, '-%'), \
     CAST(SUBSTRING_INDEX(@@last_gtid, '-', -1) AS SIGNED), NULL)";

/// MariaDB primaries: the GTID domain their commits go to, which replica positions are read in.
const MARIADB_DOMAIN: &str = "SELECT CAST(@@GLOBAL.gtid_domain_id AS SIGNED)";

/// MySQL's `ER_UNKNOWN_SYSTEM_VARIABLE`: a MySQL (not MariaDB) server has no `@@last_gtid`.
#[cfg(feature = "mysql")]
const MYSQL_UNKNOWN_VARIABLE: u16 = 1193;

/// How a replicated data source reads positions (docs/SEMANTICS.md, "Replicas"): where its
/// primary is, and how far a replica has replayed, both as numbers that grow with each commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PositionQueries {
    /// The primary's latest position.
    pub primary: String,
    /// How far a replica has replayed (NULL, or an error, where it is not one).
    pub replayed: String,
}

/// The sequence number of `domain` in a MariaDB GTID position held by `variable`
/// (`0-1-42,1-2-7`), 0 when the domain has none yet.
fn mariadb_sequence(variable: &str, domain: i64) -> String {
    let after = format!("SUBSTRING_INDEX(CONCAT(',', {variable}), ',{domain}-', -1)");
    format!(
        "SELECT IF(LOCATE(',{domain}-', CONCAT(',', {variable})) = 0, 0, \
         CAST(SUBSTRING_INDEX(SUBSTRING_INDEX({after}, ',', 1), '-', -1) AS SIGNED))"
    )
}

/// The statements that begin one transaction, sent in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Begin {
    /// One or more statements separated by `;`.
    pub sql: String,
    /// A statement that gives the session back its setting once the transaction is over (sent
    /// with COMMIT or ROLLBACK).
    pub reset: Option<&'static str>,
}

/// The statements that end a transaction, in one round trip, and what their failure means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct End {
    pub sql: String,
    /// How the answer tells that the database had ended or aborted the transaction before.
    pub check: EndCheck,
}

/// How the end of a transaction notices that the database had already ended or aborted it:
/// PostgreSQL answers `COMMIT` of an aborted transaction with `ROLLBACK` and no error, MySQL
/// carries on after rolling a transaction back (or committing it implicitly), SQLite rolls back
/// on some errors. Each is found by a statement that fails then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndCheck {
    /// A probe sent first fails (and nothing after it runs): with one of `aborted`'s SQLSTATEs
    /// the transaction is still open but can only roll back; with `gone`'s, or a message
    /// naming `mentions`, no transaction is open any more.
    Probe {
        aborted: &'static [&'static str],
        gone: &'static [&'static str],
        mentions: Option<&'static str>,
    },
    /// `COMMIT` or `ROLLBACK` itself fails with this message when no transaction is open.
    Statement(&'static str),
}

/// What a failed end of a transaction found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// The transaction is open but the database aborted it: it can only roll back.
    Aborted,
    /// No transaction was open any more: the database (or a statement it was sent) had ended
    /// it.
    Gone,
    /// The statement failed on its own (a COMMIT refused, an error left by a statement cut
    /// off earlier).
    Failed,
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

    /// Read, in the COMMIT's round trip, the position a read-write commit on a replicated
    /// primary reached; `None` where the library has no replicas for this database.
    pub(crate) fn commit_position(self) -> Option<&'static str> {
        match self {
            Dialect::Postgres => Some(PG_COMMITTED),
            Dialect::MySql => Some(MARIADB_COMMITTED),
            Dialect::Sqlite => None,
        }
    }

    /// Whether `error`, answering COMMIT followed by [`Dialect::commit_position`], says only
    /// that the position cannot be read on this server (a MySQL primary): the statements
    /// before it, COMMIT included, ran.
    pub(crate) fn position_unreadable(self, error: &dyn sqlx::error::DatabaseError) -> bool {
        // MySQL's error number, not `code()`: that is the SQLSTATE (`HY000`).
        #[cfg(feature = "mysql")]
        let unknown_variable = error
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| e.number() == MYSQL_UNKNOWN_VARIABLE);
        #[cfg(not(feature = "mysql"))]
        let unknown_variable = false;
        self == Dialect::MySql && unknown_variable && error.message().contains("last_gtid")
    }

    /// Asks a primary the replication domain its positions are in: `None` where there is
    /// only one (PostgreSQL).
    pub(crate) fn position_domain(self) -> Option<&'static str> {
        (self == Dialect::MySql).then_some(MARIADB_DOMAIN)
    }

    /// How a replica's monitor reads positions in `domain` (see
    /// [`Dialect::position_domain`]).
    pub(crate) fn position_queries(self, domain: i64) -> Option<PositionQueries> {
        match self {
            Dialect::Postgres => Some(PositionQueries {
                primary: PG_COMMITTED.to_owned(),
                replayed: PG_REPLAYED.to_owned(),
            }),
            Dialect::MySql => Some(PositionQueries {
                primary: mariadb_sequence("@@GLOBAL.gtid_binlog_pos", domain),
                replayed: mariadb_sequence("@@GLOBAL.gtid_slave_pos", domain),
            }),
            Dialect::Sqlite => None,
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
                // With autocommit off, the transaction begins at its first statement, with the
                // characteristics `SET TRANSACTION` gave the next transaction only.
                sql.push_str("SET autocommit = 0; ");
                let characteristics: Vec<String> = isolation_sql(isolation)
                    .map(|level| format!("ISOLATION LEVEL {level}"))
                    .into_iter()
                    .chain(read_only.then(|| "READ ONLY".to_owned()))
                    .collect();
                if !characteristics.is_empty() {
                    sql.push_str("SET TRANSACTION ");
                    sql.push_str(&characteristics.join(", "));
                    sql.push_str("; ");
                }
                sql.push_str("SAVEPOINT ");
                sql.push_str(MYSQL_ALIVE);
                reset = Some(MYSQL_AUTOCOMMIT_ON);
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

    /// The statement, run on another connection, that ends `session` (the server rolls back
    /// its transaction): for a statement that ignored its cancel.
    pub(crate) fn terminate(self, session: i64) -> Option<String> {
        match self {
            Dialect::Postgres => Some(format!("SELECT pg_terminate_backend({session})")),
            Dialect::MySql => Some(format!("KILL CONNECTION {session}")),
            Dialect::Sqlite => None,
        }
    }

    /// `COMMIT` (or `ROLLBACK`), with what lets it notice a transaction the database had
    /// already ended or aborted (see [`EndCheck`]), then `reset`. PostgreSQL's `SAVEPOINT`
    /// fails in an aborted transaction (25P02) and outside one (25P01); MySQL's savepoint opened
    /// at BEGIN is gone once the server ended the transaction; SQLite's `COMMIT` fails when no
    /// transaction is open. A PostgreSQL rollback needs no probe: a ROLLBACK undoes an aborted
    /// transaction as any other.
    pub(crate) fn end(self, commit: bool, reset: Option<&str>) -> End {
        let (probe, check) = match self {
            Dialect::Postgres if commit => (
                Some("SAVEPOINT transactional_commit"),
                EndCheck::Probe {
                    // in_failed_sql_transaction; no_active_sql_transaction
                    aborted: &["25P02"],
                    gone: &["25P01"],
                    mentions: None,
                },
            ),
            Dialect::Postgres => (
                None,
                EndCheck::Probe {
                    aborted: &[],
                    gone: &[],
                    mentions: None,
                },
            ),
            Dialect::MySql => (
                Some("RELEASE SAVEPOINT transactional_open"),
                // ER_SP_DOES_NOT_EXIST, naming the savepoint.
                EndCheck::Probe {
                    aborted: &[],
                    gone: &[],
                    mentions: Some(MYSQL_ALIVE),
                },
            ),
            Dialect::Sqlite => (None, EndCheck::Statement("no transaction is active")),
        };
        // An explicit COMMIT even where the reset would commit implicitly (MySQL's `SET
        // autocommit = 1`): that implicit commit does not reset `SET TRANSACTION`'s one-shot
        // characteristics, so a READ ONLY would outlive its transaction.
        let sql = probe
            .into_iter()
            .chain([if commit { "COMMIT" } else { "ROLLBACK" }])
            .chain(reset)
            .collect::<Vec<_>>()
            .join("; ");
        End { sql, check }
    }

    /// What a failed [`End`] found, from the database's error.
    pub(crate) fn found(self, check: EndCheck, error: &dyn sqlx::error::DatabaseError) -> Found {
        let code = error.code();
        let code = code.as_deref();
        match check {
            EndCheck::Probe { aborted, .. } if code.is_some_and(|c| aborted.contains(&c)) => {
                Found::Aborted
            }
            EndCheck::Probe { gone, mentions, .. }
                if code.is_some_and(|c| gone.contains(&c))
                    || mentions.is_some_and(|m| self.savepoint_gone(error, m)) =>
            {
                Found::Gone
            }
            EndCheck::Statement(message) if error.message().contains(message) => Found::Gone,
            _ => Found::Failed,
        }
    }

    /// The statements that end a transaction whose end failed: ROLLBACK (unless no transaction
    /// is open, where SQLite refuses it), then `reset`.
    pub(crate) fn roll_back_after(self, found: Found, reset: Option<&str>) -> Option<String> {
        let rollback = !(found == Found::Gone && self == Dialect::Sqlite);
        let sql: Vec<&str> = rollback
            .then_some("ROLLBACK")
            .into_iter()
            .chain(reset)
            .collect();
        (!sql.is_empty()).then(|| sql.join("; "))
    }

    /// Whether `error`, from a statement on savepoint `name`, says the savepoint does not
    /// exist: the database ended the whole transaction (MySQL, SQLite), or it was ended by a
    /// statement it was sent (PostgreSQL: no transaction is open).
    pub(crate) fn savepoint_gone(self, error: &dyn sqlx::error::DatabaseError, name: &str) -> bool {
        match self {
            // ER_SP_DOES_NOT_EXIST: "SAVEPOINT tx_sp_1 does not exist".
            Dialect::MySql => {
                error.code().as_deref() == Some("42000") && error.message().contains(name)
            }
            Dialect::Sqlite => error.message().contains("no such savepoint"),
            Dialect::Postgres => error.code().as_deref() == Some("25P01"),
        }
    }

    /// What may have ended a transaction underneath its scope, when the scope saw nothing
    /// that says it was rolled back ([`Error::EndedUnderneath`](crate::Error::EndedUnderneath)).
    pub(crate) fn ended_underneath_reason(self) -> &'static str {
        match self {
            Dialect::MySql => "MySQL commits a transaction implicitly before DDL and some other statements, and rolls it back on a deadlock, and the scope saw no error that says which (a scope whose error type the library cannot read, or that caught the error, hides it)",
            Dialect::Postgres => "a COMMIT or ROLLBACK was sent through the scope's connection",
            Dialect::Sqlite => "a COMMIT or ROLLBACK was sent through the scope's connection, or SQLite rolled it back where the library could not watch it (sqlx's Any driver)",
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
    fn mysql_turns_autocommit_off_and_sets_the_next_transaction_in_the_same_round_trip() {
        let plan = Dialect::MySql.begin(Isolation::ReadCommitted, true, false);
        assert_eq!(
            plan.sql,
            "SET autocommit = 0; SET TRANSACTION ISOLATION LEVEL READ COMMITTED, READ ONLY; \
             SAVEPOINT transactional_open"
        );
        assert_eq!(plan.reset, Some("SET autocommit = 1"));
        let plan = Dialect::MySql.begin(Isolation::Default, false, false);
        assert_eq!(plan.sql, "SET autocommit = 0; SAVEPOINT transactional_open");
    }

    #[test]
    fn the_end_probes_then_resets_in_one_round_trip() {
        let reset = Some("SET autocommit = 1");
        assert_eq!(
            Dialect::MySql.end(true, reset).sql,
            "RELEASE SAVEPOINT transactional_open; COMMIT; SET autocommit = 1"
        );
        assert_eq!(
            Dialect::MySql.end(false, reset).sql,
            "RELEASE SAVEPOINT transactional_open; ROLLBACK; SET autocommit = 1"
        );
        assert_eq!(
            Dialect::Postgres.end(true, None).sql,
            "SAVEPOINT transactional_commit; COMMIT"
        );
        assert_eq!(Dialect::Postgres.end(false, None).sql, "ROLLBACK");
        assert_eq!(
            Dialect::Sqlite
                .end(true, Some("PRAGMA query_only = OFF"))
                .sql,
            "COMMIT; PRAGMA query_only = OFF"
        );
        assert_eq!(
            Dialect::Sqlite.roll_back_after(Found::Gone, None),
            None,
            "SQLite refuses a ROLLBACK with no transaction open"
        );
        assert_eq!(
            Dialect::MySql
                .roll_back_after(Found::Gone, reset)
                .as_deref(),
            Some("ROLLBACK; SET autocommit = 1")
        );
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
