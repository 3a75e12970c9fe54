//! The outbox table and every statement the outbox sends, per database. Parameters are bound
//! through sqlx's `QueryBuilder`, which writes each database's placeholders; what differs here
//! is the DDL and how a relay claims rows (docs/SEMANTICS.md, "Outbox").

use crate::dialect::Dialect;

/// The columns a relay reads, in the order `Pending` decodes them.
pub(super) const COLUMNS: &str = "id, topic, msg_key, payload, created_at";

/// The statements that create the table and its indexes, if they do not exist. (On MySQL each
/// is DDL, which commits implicitly: run them outside any transaction.)
pub(super) fn create(dialect: Dialect, table: &str) -> Vec<String> {
    match dialect {
        Dialect::Postgres => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    id BIGSERIAL PRIMARY KEY,
                    topic VARCHAR(255) NOT NULL,
                    msg_key VARCHAR(255) NOT NULL,
                    payload BYTEA NOT NULL,
                    created_at BIGINT NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    last_error TEXT,
                    delivered_at BIGINT
                )"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (id) \
                 WHERE delivered_at IS NULL"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {table}_delivered ON {table} (delivered_at) \
                 WHERE delivered_at IS NOT NULL"
            ),
        ],
        // InnoDB keeps the AUTO_INCREMENT counter across restarts (MariaDB 10.2.4+, MySQL 8):
        // a deleted row's id is never handed out again.
        Dialect::MySql => vec![format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                topic VARCHAR(255) NOT NULL,
                msg_key VARCHAR(255) NOT NULL,
                payload LONGBLOB NOT NULL,
                created_at BIGINT NOT NULL,
                attempts INT NOT NULL DEFAULT 0,
                last_error TEXT NULL,
                delivered_at BIGINT NULL,
                KEY {table}_pending (delivered_at, id)
            ) ENGINE = InnoDB"
        )],
        // AUTOINCREMENT: ids of deleted rows are never reused (a plain INTEGER PRIMARY KEY
        // would reuse the largest one once it is deleted).
        Dialect::Sqlite => vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    topic TEXT NOT NULL,
                    msg_key TEXT NOT NULL,
                    payload BLOB NOT NULL,
                    created_at INTEGER NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    last_error TEXT,
                    delivered_at INTEGER
                )"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {table}_pending ON {table} (id) \
                 WHERE delivered_at IS NULL"
            ),
        ],
    }
}

/// The start of the INSERT of one event; the four values are bound after it.
pub(super) fn insert(table: &str) -> String {
    format!("INSERT INTO {table} (topic, msg_key, payload, created_at) VALUES (")
}

/// The start of the query for the oldest pending rows: `AND msg_key NOT IN (…)` may follow
/// (keys the relay is backing off from), then [`claim_end`].
pub(super) fn claim(table: &str) -> String {
    format!("SELECT {COLUMNS} FROM {table} WHERE delivered_at IS NULL")
}

/// The end of [`claim`]: the oldest `limit` rows. On PostgreSQL and MySQL they are locked for
/// the claiming transaction, skipping rows another relay holds; SQLite has one writer and no
/// row locks.
pub(super) fn claim_end(dialect: Dialect, limit: usize) -> String {
    let lock = match dialect {
        Dialect::Postgres | Dialect::MySql => " FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    format!(" ORDER BY id LIMIT {limit}{lock}")
}

/// The statement a relay's claiming transaction begins with: READ COMMITTED, so that each
/// statement sees what other relays committed since the previous one.
pub(super) fn begin_claim(dialect: Dialect) -> Option<&'static str> {
    match dialect {
        Dialect::Postgres => Some("BEGIN ISOLATION LEVEL READ COMMITTED"),
        Dialect::MySql => Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION"),
        Dialect::Sqlite => None,
    }
}

/// MySQL/MariaDB: the statements that take and give back a relay's turn on the table (a
/// named lock, held by the claiming connection, freed if it closes). MariaDB's
/// `FOR UPDATE SKIP LOCKED` was seen handing two relays the same rows while writers insert
/// (tests/outbox/relays.rs), so there one relay claims at a time.
pub(super) fn turn(dialect: Dialect, table: &str) -> Option<(String, String)> {
    match dialect {
        Dialect::MySql => Some((
            format!("SELECT GET_LOCK('transactional_outbox:{table}', 0)"),
            format!("DO RELEASE_LOCK('transactional_outbox:{table}')"),
        )),
        Dialect::Postgres | Dialect::Sqlite => None,
    }
}

/// Whether relays claim rows side by side (and so must hold back a key another relay holds
/// an earlier event of): PostgreSQL only.
pub(super) fn concurrent_claims(dialect: Dialect) -> bool {
    dialect == Dialect::Postgres
}

/// The start of the query for the first pending row of each claimed key that the relay did
/// not claim (another relay holds it, or it committed since): `msg_key IN (…)`, `id < ?` and
/// `id NOT IN (…)` follow, then [`FOREIGN_END`].
pub(super) fn foreign(table: &str) -> String {
    format!("SELECT msg_key, MIN(id) FROM {table} WHERE delivered_at IS NULL AND msg_key IN (")
}

/// The end of [`foreign`].
pub(super) const FOREIGN_END: &str = " GROUP BY msg_key";

/// The start of the statement that retires delivered rows: `id IN (…)` follows.
pub(super) fn retire(table: &str, keep: bool) -> String {
    if keep {
        format!("UPDATE {table} SET delivered_at = ")
    } else {
        format!("DELETE FROM {table} WHERE ")
    }
}

/// Records a failed attempt of one row: `last_error` then `id` are bound.
pub(super) fn failed(table: &str) -> String {
    format!("UPDATE {table} SET attempts = attempts + 1, last_error = ")
}

/// Deletes delivered rows kept past the retention: the cut-off is bound.
pub(super) fn purge(table: &str) -> String {
    format!("DELETE FROM {table} WHERE delivered_at IS NOT NULL AND delivered_at < ")
}

/// Pending rows, the oldest one's creation time, rows that failed at least once, and delivered
/// rows kept: counted in one statement.
pub(super) fn status(table: &str) -> String {
    format!(
        "SELECT COUNT(CASE WHEN delivered_at IS NULL THEN 1 END), \
                MIN(CASE WHEN delivered_at IS NULL THEN created_at END), \
                COUNT(CASE WHEN delivered_at IS NULL AND attempts > 0 THEN 1 END), \
                COUNT(delivered_at) \
         FROM {table}"
    )
}
