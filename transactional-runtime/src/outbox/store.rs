//! The outbox table on a pool: creating it, counting it, and a relay's claim on its pending
//! rows (docs/SEMANTICS.md, "Outbox").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use once_cell::sync::Lazy;
use sqlx::pool::PoolConnection;
use sqlx::{
    AssertSqlSafe, Database, Encode, Executor, FromRow, IntoArguments, Pool, QueryBuilder, Type,
};
use tokio::sync::OwnedMutexGuard;

use super::publish::now_ms;
use super::sink::Message;
use super::sql;
use crate::dialect::Dialect;

/// A pool the outbox works on: `Pool<Postgres>`, `Pool<MySql>` or `Pool<Sqlite>`, with the
/// database's feature on. (Sealed: the outbox's SQL is written for these three.)
pub trait OutboxPool: sealed::Sealed + Send + Sync + 'static {}

pub(super) mod sealed {
    use std::sync::Arc;

    /// How the outbox reaches a pool's database.
    pub trait Sealed {
        fn store(&self) -> Arc<dyn super::Store>;
    }
}

/// Counts of an outbox table, from [`Outbox::status`](super::Outbox::status) or
/// [`RelayHandle::status`](super::RelayHandle::status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Committed events not yet delivered.
    pub pending: u64,
    /// How long the oldest pending event has waited (by this process's clock, against the
    /// publishing process's): a relay that is stopped or cannot reach the broker shows here.
    pub oldest_pending_age: Option<Duration>,
    /// Pending events whose delivery failed at least once (their row holds the last error).
    pub failing: u64,
    /// Delivered events still in the table, kept by [`Retention::Keep`](super::Retention::Keep).
    pub delivered_kept: u64,
}

/// The table's statements on one pool.
pub trait Store: Send + Sync {
    fn create<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    fn status<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<OutboxStatus, sqlx::Error>>;
    /// Claims up to `limit` pending rows for one round of a relay, none of the keys in
    /// `skip`.
    fn claim<'a>(
        &'a self,
        table: &'a str,
        limit: usize,
        origin: &'a str,
        skip: &'a [String],
    ) -> BoxFuture<'a, Result<Box<dyn Claim + 'a>, sqlx::Error>>;
    /// Deletes delivered rows older than `before_ms`.
    fn purge<'a>(
        &'a self,
        table: &'a str,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// A relay's hold on rows for one round: dropped unfinished, it lets them go (its transaction
/// rolls back) and they stay pending.
pub trait Claim: Send {
    /// How many rows were claimed.
    fn claimed(&self) -> usize;
    /// The claimed messages that may be sent now, in id order: a key is held back from the
    /// first event of it that another relay holds (or that committed after the claim).
    fn sendable(&self) -> &[Message];
    /// Marks `delivered` rows delivered (deleted, or stamped when `keep`) and records the
    /// failures, then lets the rest go.
    fn finish<'s>(
        self: Box<Self>,
        delivered: &'s [i64],
        failed: &'s [(i64, String)],
        keep: bool,
    ) -> BoxFuture<'s, Result<(), sqlx::Error>>
    where
        Self: 's;
}

struct PoolStore<DB: Database> {
    pool: Pool<DB>,
    dialect: Dialect,
    /// SQLite: the database file, whose relays in this process take turns on a table (no row
    /// locks to claim with).
    turns: Option<String>,
}

macro_rules! outbox_pool {
    ($feature:literal, $db:ty, $dialect:expr, |$pool:ident| $turns:expr) => {
        #[cfg(feature = $feature)]
        impl OutboxPool for Pool<$db> {}

        #[cfg(feature = $feature)]
        impl sealed::Sealed for Pool<$db> {
            fn store(&self) -> Arc<dyn Store> {
                let $pool = self;
                Arc::new(PoolStore {
                    pool: self.clone(),
                    dialect: $dialect,
                    turns: $turns,
                })
            }
        }
    };
}

outbox_pool!("postgres", sqlx::Postgres, Dialect::Postgres, |_pool| None);
outbox_pool!("mysql", sqlx::MySql, Dialect::MySql, |_pool| None);
outbox_pool!("sqlite", sqlx::Sqlite, Dialect::Sqlite, |pool| Some(
    pool.connect_options().get_filename().display().to_string()
));

/// One lock per SQLite table a relay of this process works on, by database file and table.
static TURNS: Lazy<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = Lazy::new(Mutex::default);

type PendingRow = (i64, String, String, Vec<u8>, i64);

impl<DB> Store for PoolStore<DB>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> PendingRow: FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (i64, Option<i64>, i64, i64): FromRow<'r, DB::Row>,
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
{
    fn create<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            for statement in sql::create(self.dialect, table) {
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
    }

    fn status<'a>(&'a self, table: &'a str) -> BoxFuture<'a, Result<OutboxStatus, sqlx::Error>> {
        Box::pin(async move {
            let (pending, oldest, failing, kept) =
                sqlx::query_as::<DB, (i64, Option<i64>, i64, i64)>(AssertSqlSafe(sql::status(
                    table,
                )))
                .fetch_one(&self.pool)
                .await?;
            let now = now_ms();
            Ok(OutboxStatus {
                pending: pending.max(0) as u64,
                oldest_pending_age: oldest.map(|created| {
                    Duration::from_millis(now.saturating_sub(created).max(0) as u64)
                }),
                failing: failing.max(0) as u64,
                delivered_kept: kept.max(0) as u64,
            })
        })
    }

    fn claim<'a>(
        &'a self,
        table: &'a str,
        limit: usize,
        origin: &'a str,
        skip: &'a [String],
    ) -> BoxFuture<'a, Result<Box<dyn Claim + 'a>, sqlx::Error>> {
        Box::pin(async move {
            let turn = match &self.turns {
                Some(file) => Some(turn(file, table).lock_owned().await),
                None => None,
            };
            let mut tx = match sql::begin_claim(self.dialect) {
                Some(begin) => {
                    match Held::begin(&self.pool, sql::turn(self.dialect, table), begin).await? {
                        Some(held) => Some(held),
                        // Another relay has the turn: nothing to claim now.
                        None => {
                            return Ok(
                                Box::new(Claimed::nothing(self, table)) as Box<dyn Claim + 'a>
                            )
                        }
                    }
                }
                None => None,
            };
            let mut claim = QueryBuilder::<DB>::new(sql::claim(table));
            if !skip.is_empty() {
                claim.push(" AND msg_key NOT IN (");
                let mut keys = claim.separated(", ");
                for key in skip {
                    keys.push_bind(key.clone());
                }
                claim.push(")");
            }
            claim.push(sql::claim_end(self.dialect, limit));
            let claim = claim.build_query_as::<PendingRow>();
            let rows: Vec<PendingRow> = match tx.as_mut() {
                Some(tx) => claim.fetch_all(tx.conn()).await?,
                None => claim.fetch_all(&self.pool).await?,
            };
            let claimed = rows.len();
            let mut messages: Vec<Message> = rows
                .into_iter()
                .map(|(id, topic, key, payload, created)| {
                    Message::new(origin, id, topic, key, Bytes::from(payload), created)
                })
                .collect();
            if let Some(tx) = tx.as_mut().filter(|_| sql::concurrent_claims(self.dialect)) {
                let foreign = first_foreign(tx.conn(), table, &messages).await?;
                messages.retain(|m| foreign.get(m.key()).is_none_or(|first| m.id() < *first));
            }
            Ok(Box::new(Claimed {
                store: self,
                table,
                tx,
                claimed,
                messages,
                _turn: turn,
            }) as Box<dyn Claim + 'a>)
        })
    }

    fn purge<'a>(
        &'a self,
        table: &'a str,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let mut query = QueryBuilder::<DB>::new(sql::purge(table));
            query.push_bind(before_ms);
            query.build().execute(&self.pool).await.map(drop)
        })
    }
}

/// The turn of the relays of this process on `table` in the SQLite database `file`.
fn turn(file: &str, table: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut turns = TURNS.lock().unwrap_or_else(|e| e.into_inner());
    turns.entry(format!("{table} {file}")).or_default().clone()
}

/// For each key among `messages`, the first pending row of it that is not among them: the
/// claimed rows of that key from there on wait for a later round.
async fn first_foreign<DB>(
    conn: &mut DB::Connection,
    table: &str,
    messages: &[Message],
) -> Result<HashMap<String, i64>, sqlx::Error>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
{
    let Some(last) = messages.last() else {
        return Ok(HashMap::new());
    };
    let mut keys: Vec<&str> = messages.iter().map(Message::key).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut query = QueryBuilder::<DB>::new(sql::foreign(table));
    let mut list = query.separated(", ");
    for key in keys {
        list.push_bind(key.to_owned());
    }
    query.push(") AND id < ");
    query.push_bind(last.id());
    query.push(" AND id NOT IN (");
    let mut list = query.separated(", ");
    for m in messages {
        list.push_bind(m.id());
    }
    query.push(")");
    query.push(sql::FOREIGN_END);
    let rows: Vec<(String, i64)> = query.build_query_as().fetch_all(conn).await?;
    Ok(rows.into_iter().collect())
}

struct Claimed<'a, DB: Database> {
    store: &'a PoolStore<DB>,
    table: &'a str,
    /// The claiming transaction (PostgreSQL, MySQL): its row locks keep other relays off the
    /// claimed rows until it ends.
    tx: Option<Held<DB>>,
    claimed: usize,
    messages: Vec<Message>,
    _turn: Option<OwnedMutexGuard<()>>,
}

impl<'a, DB: Database> Claimed<'a, DB> {
    /// A claim of no rows.
    fn nothing(store: &'a PoolStore<DB>, table: &'a str) -> Self {
        Claimed {
            store,
            table,
            tx: None,
            claimed: 0,
            messages: Vec::new(),
            _turn: None,
        }
    }
}

impl<DB> Claim for Claimed<'_, DB>
where
    DB: Database,
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    fn claimed(&self) -> usize {
        self.claimed
    }

    fn sendable(&self) -> &[Message] {
        &self.messages
    }

    fn finish<'s>(
        self: Box<Self>,
        delivered: &'s [i64],
        failed: &'s [(i64, String)],
        keep: bool,
    ) -> BoxFuture<'s, Result<(), sqlx::Error>>
    where
        Self: 's,
    {
        Box::pin(async move {
            let this = *self;
            match this.tx {
                Some(mut held) => {
                    mark(held.conn(), this.table, delivered, failed, keep).await?;
                    held.end("COMMIT").await
                }
                None if delivered.is_empty() && failed.is_empty() => Ok(()),
                None => {
                    let mut tx = this.store.pool.begin().await?;
                    mark(&mut tx, this.table, delivered, failed, keep).await?;
                    tx.commit().await
                }
            }
        })
    }
}

/// Retires the `delivered` rows and records the `failed` ones.
async fn mark<DB>(
    conn: &mut DB::Connection,
    table: &str,
    delivered: &[i64],
    failed: &[(i64, String)],
    keep: bool,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    if !delivered.is_empty() {
        let mut query = QueryBuilder::<DB>::new(sql::retire(table, keep));
        if keep {
            query.push_bind(now_ms());
            query.push(" WHERE ");
        }
        query.push("id IN (");
        let mut list = query.separated(", ");
        for id in delivered {
            list.push_bind(*id);
        }
        query.push(")");
        query.build().execute(&mut *conn).await?;
    }
    for (id, error) in failed {
        let mut query = QueryBuilder::<DB>::new(sql::failed(table));
        query.push_bind(truncated(error));
        query.push(" WHERE id = ");
        query.push_bind(*id);
        query.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// A connection holding the claiming transaction. Dropped before [`Held::end`] has finished
/// (the relay's task aborted, a statement failed), it is closed instead of going back to the
/// pool, which ends the transaction on the server and frees its locks.
struct Held<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    /// Gives back the relay's turn, once the transaction has ended.
    release: Option<String>,
}

impl<DB> Held<DB>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Takes the turn (if `turn` is given: `None` when another relay has it), then begins.
    async fn begin(
        pool: &Pool<DB>,
        turn: Option<(String, String)>,
        begin: &'static str,
    ) -> Result<Option<Held<DB>>, sqlx::Error> {
        let mut held = Held {
            conn: Some(pool.acquire().await?),
            release: None,
        };
        if let Some((take, release)) = turn {
            let (got,): (Option<i64>,) = sqlx::query_as(AssertSqlSafe(take))
                .fetch_one(held.conn())
                .await?;
            if got != Some(1) {
                held.conn.take();
                return Ok(None);
            }
            held.release = Some(release);
        }
        sqlx::raw_sql(begin).execute(held.conn()).await?;
        Ok(Some(held))
    }

    fn conn(&mut self) -> &mut DB::Connection {
        self.conn.as_mut().expect("held until ended")
    }

    /// Ends the transaction with `end`; the connection goes back to the pool once it has.
    async fn end(mut self, end: &'static str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(end).execute(self.conn()).await?;
        if let Some(release) = self.release.take() {
            sqlx::raw_sql(AssertSqlSafe(release))
                .execute(self.conn())
                .await?;
        }
        drop(self.conn.take());
        Ok(())
    }
}

impl<DB: Database> Drop for Held<DB> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
    }
}

/// At most 1,000 bytes of an error message, cut on a character boundary.
fn truncated(error: &str) -> String {
    let mut end = error.len().min(1000);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}
