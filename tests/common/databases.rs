//! The three databases under test: how to reach each, and the bits of SQL that differ.

use std::future::Future;

use sqlx::{AssertSqlSafe, Database, Executor, MySql, Postgres, Sqlite};

/// A database under test: how to reach it and the bits of SQL that differ.
pub trait TestDb: Sized + Send + Sync + 'static {
    type DB: Database;
    const NAME: &'static str;
    /// One writer at a time for the whole database (SQLite): a second connection cannot write
    /// while a transaction that has written is open.
    const SINGLE_WRITER: bool = false;
    /// When the database ends a transaction by itself (a deadlock, `INSERT OR ROLLBACK`), it
    /// ends all of it (MySQL, SQLite), not only the savepoint level the failed statement ran
    /// at (PostgreSQL aborts that level: rolling back to its savepoint saves the rest).
    const ENDS_WHOLE_TRANSACTION: bool = true;

    /// The URL of a fresh database for one test; `app` names the test's sessions where the
    /// server supports it.
    fn url(dir: &std::path::Path, app: &str) -> String;

    /// Sessions of this test (named `app`) that sit inside a transaction, as the server sees
    /// them; `None` where the server cannot tell.
    fn leaked_transactions<'c>(
        _conn: &'c mut <Self::DB as Database>::Connection,
        _app: &'c str,
    ) -> impl Future<Output = Option<i64>> + Send + 'c {
        async { None }
    }

    /// Runs a statement on a connection.
    fn exec<'c>(
        conn: &'c mut <Self::DB as Database>::Connection,
        sql: String,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c;

    /// Runs a query returning one integer.
    fn scalar<'c>(
        conn: &'c mut <Self::DB as Database>::Connection,
        sql: String,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send + 'c;

    /// Runs a query returning one integer column, all its rows.
    fn column<'c>(
        conn: &'c mut <Self::DB as Database>::Connection,
        sql: String,
    ) -> impl Future<Output = Result<Vec<i64>, sqlx::Error>> + Send + 'c;

    /// Runs a query returning one string.
    fn text<'c>(
        conn: &'c mut <Self::DB as Database>::Connection,
        sql: String,
    ) -> impl Future<Output = Result<String, sqlx::Error>> + Send + 'c;

    /// Identifies the server session behind a connection.
    fn session_id<'c>(
        conn: &'c mut <Self::DB as Database>::Connection,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send + 'c;

    /// The isolation level of the running transaction, lower-case with spaces
    /// (`"serializable"`), or `None` where the database has only one (SQLite).
    fn transaction_isolation<'c>(
        conn: &'c mut <Self::DB as Database>::Connection,
    ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send + 'c;

    /// A statement that runs for about `secs` seconds unless it is cancelled.
    fn slow_statement(secs: u32) -> String;

    /// Whether the connection is inside a transaction, as the server sees it.
    fn in_transaction<'c>(
        conn: &'c mut <Self::DB as Database>::Connection,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'c;
}

macro_rules! common_impl {
    ($db:ty) => {
        type DB = $db;

        fn exec<'c>(
            conn: &'c mut <$db as Database>::Connection,
            sql: String,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + 'c {
            async move { conn.execute(AssertSqlSafe(sql)).await.map(drop) }
        }

        fn scalar<'c>(
            conn: &'c mut <$db as Database>::Connection,
            sql: String,
        ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send + 'c {
            async move {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                    .fetch_one(conn)
                    .await
            }
        }

        fn column<'c>(
            conn: &'c mut <$db as Database>::Connection,
            sql: String,
        ) -> impl Future<Output = Result<Vec<i64>, sqlx::Error>> + Send + 'c {
            async move {
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                    .fetch_all(conn)
                    .await
            }
        }

        fn text<'c>(
            conn: &'c mut <$db as Database>::Connection,
            sql: String,
        ) -> impl Future<Output = Result<String, sqlx::Error>> + Send + 'c {
            async move {
                sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
                    .fetch_one(conn)
                    .await
            }
        }
    };
}

pub struct Pg;
pub struct My;
pub struct Lite;

impl TestDb for Pg {
    common_impl!(Postgres);
    const NAME: &'static str = "postgres";
    const ENDS_WHOLE_TRANSACTION: bool = false;

    fn url(_: &std::path::Path, app: &str) -> String {
        let base = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}application_name={app}")
    }

    fn leaked_transactions<'c>(
        conn: &'c mut sqlx::PgConnection,
        app: &'c str,
    ) -> impl Future<Output = Option<i64>> + Send + 'c {
        async move {
            Self::scalar(
                conn,
                format!(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{app}' \
                     AND state LIKE 'idle in transaction%'"
                ),
            )
            .await
            .ok()
        }
    }

    fn session_id<'c>(
        conn: &'c mut sqlx::PgConnection,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send + 'c {
        Self::scalar(conn, "SELECT pg_backend_pid()::bigint".into())
    }

    fn slow_statement(secs: u32) -> String {
        format!("SELECT pg_sleep({secs})")
    }

    fn transaction_isolation<'c>(
        conn: &'c mut sqlx::PgConnection,
    ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send + 'c {
        async move {
            Self::text(conn, "SHOW transaction_isolation".into())
                .await
                .map(Some)
        }
    }

    fn in_transaction<'c>(
        conn: &'c mut sqlx::PgConnection,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'c {
        // SAVEPOINT is an error outside a transaction block.
        async move {
            match Self::exec(conn, "SAVEPOINT in_transaction_probe".into()).await {
                Ok(()) => Self::exec(conn, "RELEASE SAVEPOINT in_transaction_probe".into())
                    .await
                    .map(|_| true),
                Err(_) => Ok(false),
            }
        }
    }
}

impl TestDb for My {
    common_impl!(MySql);
    const NAME: &'static str = "mysql";

    fn url(_: &std::path::Path, _: &str) -> String {
        std::env::var("TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
    }

    fn session_id<'c>(
        conn: &'c mut sqlx::MySqlConnection,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send + 'c {
        Self::scalar(conn, "SELECT CAST(CONNECTION_ID() AS SIGNED)".into())
    }

    fn slow_statement(secs: u32) -> String {
        format!("SELECT SLEEP({secs})")
    }

    fn transaction_isolation<'c>(
        conn: &'c mut sqlx::MySqlConnection,
    ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send + 'c {
        // The level of the running InnoDB transaction (it shows once the transaction has read
        // or written), not the session variable that `SET TRANSACTION` leaves untouched. Over
        // the text protocol: a prepared statement on information_schema can answer stale rows.
        async move {
            use sqlx::Row;
            let row = sqlx::raw_sql(
                "SELECT LOWER(trx_isolation_level) FROM information_schema.innodb_trx \
                 WHERE trx_mysql_thread_id = CONNECTION_ID()",
            )
            .fetch_optional(conn)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
            let level: String = row.try_get(0)?;
            Ok(Some(level.replace('-', " ")))
        }
    }

    fn in_transaction<'c>(
        conn: &'c mut sqlx::MySqlConnection,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'c {
        async move {
            Self::scalar(conn, "SELECT CAST(@@in_transaction AS SIGNED)".into())
                .await
                .map(|v| v == 1)
        }
    }
}

impl TestDb for Lite {
    common_impl!(Sqlite);
    const NAME: &'static str = "sqlite";
    const SINGLE_WRITER: bool = true;

    fn url(dir: &std::path::Path, _: &str) -> String {
        format!("sqlite://{}/test.db?mode=rwc", dir.display())
    }

    fn session_id<'c>(
        conn: &'c mut sqlx::SqliteConnection,
    ) -> impl Future<Output = Result<i64, sqlx::Error>> + Send + 'c {
        // SQLite has no session id: the connection's address identifies it while it is alive.
        let id = &*conn as *const sqlx::SqliteConnection as usize as i64;
        async move { Ok(id) }
    }

    fn slow_statement(secs: u32) -> String {
        // No sleep function: a count that takes about that long, interruptible as any query.
        let rows = u64::from(secs) * 20_000_000;
        format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {rows}) \
             SELECT COUNT(*) FROM c"
        )
    }

    fn transaction_isolation<'c>(
        _: &'c mut sqlx::SqliteConnection,
    ) -> impl Future<Output = Result<Option<String>, sqlx::Error>> + Send + 'c {
        async { Ok(None) }
    }

    fn in_transaction<'c>(
        conn: &'c mut sqlx::SqliteConnection,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + 'c {
        // Outside a transaction BEGIN works (and is rolled back at once); inside it fails.
        async move {
            match Self::exec(conn, "BEGIN".into()).await {
                Ok(()) => Self::exec(conn, "ROLLBACK".into()).await.map(|_| false),
                Err(_) => Ok(true),
            }
        }
    }
}
