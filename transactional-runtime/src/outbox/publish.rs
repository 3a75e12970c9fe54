//! `publish`: an event written to the outbox table on the scope's connection, in its
//! transaction, and a wake-up for the relays once that transaction commits.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sqlx::{Database, Encode, Executor, IntoArguments, QueryBuilder, Type};

use super::{sql, wake, Outbox, MAX_TOPIC_OR_KEY};
use crate::api::data_source;
use crate::context::{Context, Mode};
use crate::data_source::Backend;
use crate::error::Error;
use crate::guard::acquire;

pub(super) async fn publish(
    outbox: &Outbox,
    topic: &str,
    key: &str,
    payload: Bytes,
) -> Result<(), Error> {
    check("topic", topic)?;
    check("key", key)?;
    let (name, database) = {
        let ctx = Context::current();
        let name = outbox
            .data_source()
            .unwrap_or(ctx.current_data_source())
            .to_owned();
        let in_transaction = ctx.frame(&name).is_some_and(|f| !f.level.is_ended());
        let mocked = matches!(ctx.mode(), Mode::Mocked(_));
        if !in_transaction && !mocked {
            return Err(Error::OutboxNeedsTransaction { data_source: name });
        }
        let database = match ctx.data_source(&name) {
            Ok(ds) => ds.backend,
            Err(Error::NoDataSource { name }) if mocked => return Err(Error::Mocked { name }),
            Err(e) => return Err(e),
        };
        (name, database)
    };
    let row = Row {
        table: outbox.table(),
        topic,
        key,
        payload,
        created_at: now_ms(),
    };
    insert_on(database, &name, row).await?;
    let table = outbox.table().to_owned();
    data_source(&name)
        .after_commit(move || async move { wake::nudge(&table) })
        .await;
    Ok(())
}

/// One event, as written.
struct Row<'a> {
    table: &'a str,
    topic: &'a str,
    key: &'a str,
    payload: Bytes,
    created_at: i64,
}

/// The INSERT, through the data source's database type.
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "sqlite",
        feature = "any"
    )),
    allow(unused_variables)
)]
async fn insert_on(database: Backend, name: &str, row: Row<'_>) -> Result<(), Error> {
    match database {
        #[cfg(feature = "postgres")]
        Backend::Database(db) if db == sqlx::Postgres::NAME => {
            insert::<sqlx::Postgres>(name, row).await
        }
        #[cfg(feature = "mysql")]
        Backend::Database(db) if db == sqlx::MySql::NAME => insert::<sqlx::MySql>(name, row).await,
        #[cfg(feature = "sqlite")]
        Backend::Database(db) if db == sqlx::Sqlite::NAME => {
            insert::<sqlx::Sqlite>(name, row).await
        }
        #[cfg(feature = "any")]
        Backend::Database(db) if db == sqlx::Any::NAME => insert::<sqlx::Any>(name, row).await,
        Backend::Database(db) => Err(Error::UnsupportedDatabase { database: db }),
        Backend::Recording => Err(Error::MockConnection {
            name: name.to_owned(),
        }),
    }
}

/// The INSERT, on the data source's current connection (the transaction's).
#[cfg_attr(
    not(any(
        feature = "postgres",
        feature = "mysql",
        feature = "sqlite",
        feature = "any"
    )),
    allow(dead_code)
)]
async fn insert<DB>(data_source: &str, row: Row<'_>) -> Result<(), Error>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    let mut query = QueryBuilder::<DB>::new(sql::insert(row.table));
    let mut values = query.separated(", ");
    values
        .push_bind(row.topic.to_owned())
        .push_bind(row.key.to_owned())
        .push_bind(Vec::from(row.payload))
        .push_bind(row.created_at);
    query.push(")");
    let mut conn = acquire::<DB>(data_source).await?;
    match query.build().execute(&mut *conn).await {
        Ok(_) => Ok(()),
        Err(source) if table_missing(&source) => Err(Error::OutboxTableMissing {
            table: row.table.to_owned(),
            source,
        }),
        Err(source) => Err(source.into()),
    }
}

/// Whether the database said the table does not exist (PostgreSQL 42P01, MySQL 1146, SQLite
/// "no such table").
fn table_missing(error: &sqlx::Error) -> bool {
    let Some(db) = error.as_database_error() else {
        return false;
    };
    matches!(db.code().as_deref(), Some("42P01") | Some("42S02"))
        || db.message().starts_with("no such table")
}

/// A topic or key: not empty, at most [`MAX_TOPIC_OR_KEY`] bytes, no whitespace or control
/// characters (a broker's subject or key may not hold them).
fn check(what: &'static str, value: &str) -> Result<(), Error> {
    let reason = if value.is_empty() {
        "it is empty".to_owned()
    } else if value.len() > MAX_TOPIC_OR_KEY {
        format!(
            "it is {} bytes long, more than {MAX_TOPIC_OR_KEY}",
            value.len()
        )
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        format!(
            "`{}` holds whitespace or control characters",
            value.escape_debug()
        )
    } else {
        return Ok(());
    };
    Err(Error::InvalidOutbox { what, reason })
}

/// Milliseconds since the Unix epoch, by this process's clock.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
