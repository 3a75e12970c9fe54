//! Read replicas of a data source (PostgreSQL streaming replication): which replica a
//! read-only transaction may use, kept up to date by a monitor per replica, and the position
//! up to which a replica must have replayed the primary's commits (docs/SEMANTICS.md,
//! "Replicas").

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::{Database, Executor, Pool};

use crate::data_source::{
    insert, DataSource, DataSourceSettings, Replica, ReplicaSettings, Replicas,
};
use crate::dialect::{Dialect, COMMITTED_POSITION, REPLAYED_POSITION};
use crate::error::Error;

/// Registers `primary` under `name` with read replicas of it (PostgreSQL streaming
/// replication; needs a tokio runtime, on which a task per replica checks how far it has
/// replayed). A read-only scope that begins a transaction goes to a replica that has replayed
/// every commit this process made on the primary, else to the primary; everything else goes
/// to the primary (docs/SEMANTICS.md, "Replicas").
///
/// Fails with [`Error::InvalidReplicas`] for another database or without a runtime, and as
/// [`register`](crate::register) does.
pub fn register_with_replicas<DB>(
    name: &str,
    primary: Pool<DB>,
    replicas: Vec<Pool<DB>>,
    settings: ReplicaSettings,
) -> Result<(), Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> (Option<i64>,): sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let mut data_source = DataSource::from_pool(name, primary.clone(), DataSourceSettings::new())?;
    data_source.replicas = self::replicas(name, data_source.dialect, &primary, replicas, settings)?;
    insert(data_source)
}

/// The replicas of a PostgreSQL data source, their monitors spawned on the current tokio
/// runtime.
fn replicas<DB>(
    name: &str,
    dialect: Dialect,
    primary: &Pool<DB>,
    pools: Vec<Pool<DB>>,
    settings: ReplicaSettings,
) -> Result<Replicas, Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> (Option<i64>,): sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    if pools.is_empty() {
        return Ok(Replicas::default());
    }
    if dialect != Dialect::Postgres {
        return Err(Error::InvalidReplicas {
            name: name.to_owned(),
            reason: "read replicas are supported on PostgreSQL (streaming replication)".into(),
        });
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::InvalidReplicas {
        name: name.to_owned(),
        reason: "registering replicas needs a tokio runtime, to check on them".into(),
    })?;
    let mut list = Vec::new();
    for (index, pool) in pools.into_iter().enumerate() {
        let replica = Arc::new(Replica::new(index, Arc::new(pool.clone()), settings));
        let watched = Watched {
            replica: Arc::downgrade(&replica),
            pool,
            primary: primary.clone(),
            name: name.to_owned(),
        };
        runtime.spawn(watched.monitor());
        list.push(replica);
    }
    Ok(Replicas::of(list))
}

/// What a monitor watches: a replica, and the primary it follows.
struct Watched<DB: Database> {
    replica: Weak<Replica>,
    pool: Pool<DB>,
    primary: Pool<DB>,
    name: String,
}

impl<DB> Watched<DB>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> (Option<i64>,): sqlx::FromRow<'r, DB::Row>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    /// Asks, every `check_every` until the replica is dropped, where the primary is and how
    /// far the replica has replayed.
    async fn monitor(self) {
        let mut was_up = None;
        loop {
            let Some(every) = self.replica.upgrade().map(|r| r.settings.check_every) else {
                return;
            };
            let primary_at = self.position(&self.primary, COMMITTED_POSITION).await;
            let replayed = self.position(&self.pool, REPLAYED_POSITION).await;
            let Some(replica) = self.replica.upgrade() else {
                return;
            };
            replica.saw(replayed);
            if let Some(position) = primary_at {
                replica.primary_at(position);
            }
            let up = replayed.is_some();
            if was_up != Some(up) {
                tracing::info!(target: crate::TARGET, data_source = %self.name, replica = replica.index, up, "replica {}", if up { "answers" } else { "does not answer; reads go to the primary" });
                was_up = Some(up);
            }
            drop(replica);
            tokio::time::sleep(every).await;
        }
    }

    /// A WAL position `pool`'s server reports, if it answers within a second.
    async fn position(&self, pool: &Pool<DB>, sql: &'static str) -> Option<i64> {
        let asked = tokio::time::timeout(
            Duration::from_secs(1),
            sqlx::query_as::<DB, (Option<i64>,)>(sql).fetch_one(pool),
        )
        .await;
        match asked {
            Ok(Ok((position,))) => position,
            _ => None,
        }
    }
}

/// A commit position on a data source's primary (PostgreSQL: a WAL position): what a replica
/// must have replayed before a read that follows that commit may run on it.
///
/// Within one process the library keeps track (see [`commit_position`](crate::commit_position)). To carry it across
/// processes — a user's next request served by another instance — send it back with the
/// response (a cookie, a header: its text form is PostgreSQL's, `16/B374D848`) and run the
/// next request's reads under [`read_after`](crate::read_after).
///
/// ```
/// use transactional_runtime::CommitPosition;
///
/// let position: CommitPosition = "16/B374D848".parse().unwrap();
/// assert_eq!(position.to_string(), "16/B374D848");
/// assert!("nonsense".parse::<CommitPosition>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitPosition(pub(crate) u64);

impl std::fmt::Display for CommitPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for CommitPosition {
    type Err = Error;

    fn from_str(text: &str) -> Result<CommitPosition, Error> {
        let parsed = text.split_once('/').and_then(|(high, low)| {
            let high = u64::from_str_radix(high, 16).ok()?;
            let low = u64::from_str_radix(low, 16).ok()?;
            (high <= 0xFFFF_FFFF && low <= 0xFFFF_FFFF).then_some(high << 32 | low)
        });
        parsed
            .map(CommitPosition)
            .ok_or_else(|| Error::InvalidReplicas {
                name: String::new(),
                reason: format!("`{text}` is not a commit position (PostgreSQL's `16/B374D848`)"),
            })
    }
}
