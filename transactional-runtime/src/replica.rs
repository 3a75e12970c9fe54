//! Read replicas of a data source (PostgreSQL streaming replication, MariaDB GTID
//! replication): which replica a read-only transaction may use, kept up to date by a monitor
//! per replica, and the position up to which a replica must have replayed the primary's
//! commits (docs/SEMANTICS.md, "Replicas").

use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::{Database, Executor, Pool};

use crate::data_source::{
    insert, DataSource, DataSourceSettings, Replica, ReplicaSettings, Replicas, Source,
};
use crate::dialect::{Dialect, PositionQueries};
use crate::error::Error;

/// Registers `primary` under `name` with read replicas of it (PostgreSQL streaming
/// replication, or MariaDB replication with GTIDs; needs a tokio runtime, on which a task per
/// replica checks how far it has replayed). A read-only scope that begins a transaction goes
/// to a replica that has replayed every commit this process made on the primary, else to the
/// primary; everything else goes to the primary (docs/SEMANTICS.md, "Replicas").
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
{
    let mut data_source = DataSource::from_pool(name, primary, DataSourceSettings::new())?;
    let replicas = replicas
        .into_iter()
        .map(|pool| Arc::new(pool) as Arc<dyn Source>)
        .collect();
    data_source.replicas = self::replicas(&data_source, replicas, settings)?;
    insert(data_source)
}

/// The replicas of a PostgreSQL or MariaDB data source, their monitors spawned on the
/// current tokio runtime.
fn replicas(
    data_source: &DataSource,
    sources: Vec<Arc<dyn Source>>,
    settings: ReplicaSettings,
) -> Result<Replicas, Error> {
    if sources.is_empty() {
        return Ok(Replicas::default());
    }
    let name = &*data_source.name;
    let dialect = data_source.dialect;
    if dialect.commit_position().is_none() {
        return Err(Error::InvalidReplicas {
            name: name.to_owned(),
            reason: format!(
                "read replicas are supported on PostgreSQL (streaming replication) and MariaDB \
                 (GTID replication), not on {}",
                dialect.database_name()
            ),
        });
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::InvalidReplicas {
        name: name.to_owned(),
        reason: "registering replicas needs a tokio runtime, to check on them".into(),
    })?;
    let mut list = Vec::new();
    for (index, source) in sources.into_iter().enumerate() {
        let replica = Arc::new(Replica::new(index, source.clone(), settings));
        let watched = Watched {
            replica: Arc::downgrade(&replica),
            source,
            primary: data_source.source.clone(),
            name: name.to_owned(),
            dialect,
        };
        runtime.spawn(watched.monitor());
        list.push(replica);
    }
    Ok(Replicas::of(list))
}

/// What a monitor watches: a replica, and the primary it follows.
struct Watched {
    replica: Weak<Replica>,
    source: Arc<dyn Source>,
    primary: Arc<dyn Source>,
    name: String,
    dialect: Dialect,
}

impl Watched {
    /// Asks, every `check_every` until the replica is dropped, where the primary is and how
    /// far the replica has replayed.
    async fn monitor(self) {
        let Some(queries) = self.queries().await else {
            return;
        };
        let mut was_up = None;
        loop {
            let Some(every) = self.replica.upgrade().map(|r| r.settings.check_every) else {
                return;
            };
            let primary_at = position(&*self.primary, &queries.primary).await;
            let replayed = position(&*self.source, &queries.replayed).await;
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

    /// The monitor's queries, once the primary said which replication domain its positions
    /// are in (MariaDB): until then the replica is not used. `None` once the replica is
    /// dropped.
    async fn queries(&self) -> Option<PositionQueries> {
        let mut warned = false;
        loop {
            let every = self.replica.upgrade()?.settings.check_every;
            let domain = match self.dialect.position_domain() {
                None => Some(0),
                Some(sql) => position(&*self.primary, sql).await,
            };
            if let Some(queries) = domain.and_then(|d| self.dialect.position_queries(d)) {
                return Some(queries);
            }
            if !warned {
                tracing::warn!(target: crate::TARGET, data_source = %self.name, "the primary does not say its GTID domain (`@@gtid_domain_id`): replicas need MariaDB; reads go to the primary until it answers");
                warned = true;
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// A position `source`'s server reports, if it answers within a second (the connection is
/// closed, not pooled, if it does not).
async fn position(source: &dyn Source, sql: &str) -> Option<i64> {
    let asked = tokio::time::timeout(Duration::from_secs(1), async {
        let mut conn = source.acquire().await?;
        conn.query_int(sql).await
    })
    .await;
    match asked {
        Ok(Ok(position)) => position,
        _ => None,
    }
}

/// A commit position on a data source's primary: what a replica must have replayed before a
/// read that follows that commit may run on it. PostgreSQL: a WAL position; MariaDB: the
/// sequence number of a GTID in the primary's replication domain.
///
/// Within one process the library keeps track (see [`commit_position`](crate::commit_position)). To carry it across
/// processes — a user's next request served by another instance — send it back with the
/// response (a cookie, a header) in its text form (PostgreSQL's `16/B374D848`; on MariaDB the
/// sequence number, `1234`) and run the next request's reads under
/// [`read_after`](crate::read_after).
///
/// ```
/// use transactional_runtime::CommitPosition;
///
/// let position: CommitPosition = "16/B374D848".parse().unwrap();
/// assert_eq!(position.to_string(), "16/B374D848");
/// let position: CommitPosition = "1234".parse().unwrap();
/// assert_eq!(position.to_string(), "1234");
/// assert!("nonsense".parse::<CommitPosition>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitPosition {
    at: u64,
    form: Form,
}

/// How a [`CommitPosition`] is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Form {
    /// PostgreSQL's `high/low` in hexadecimal.
    Wal,
    /// A MariaDB GTID's sequence number, in decimal.
    Sequence,
}

impl CommitPosition {
    /// `at` on a primary of `dialect`.
    pub(crate) fn new(dialect: Dialect, at: u64) -> CommitPosition {
        let form = match dialect {
            Dialect::Postgres => Form::Wal,
            _ => Form::Sequence,
        };
        CommitPosition { at, form }
    }

    /// The position as the replicas compare it.
    pub(crate) fn at(self) -> i64 {
        i64::try_from(self.at).unwrap_or(i64::MAX)
    }
}

impl std::fmt::Display for CommitPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.form {
            Form::Wal => write!(f, "{:X}/{:X}", self.at >> 32, self.at & 0xFFFF_FFFF),
            Form::Sequence => write!(f, "{}", self.at),
        }
    }
}

impl std::str::FromStr for CommitPosition {
    type Err = Error;

    fn from_str(text: &str) -> Result<CommitPosition, Error> {
        let wal = || {
            let (high, low) = text.split_once('/')?;
            let high = u64::from_str_radix(high, 16).ok()?;
            let low = u64::from_str_radix(low, 16).ok()?;
            (high <= 0xFFFF_FFFF && low <= 0xFFFF_FFFF).then_some(CommitPosition {
                at: high << 32 | low,
                form: Form::Wal,
            })
        };
        let sequence = || {
            let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
            let at = digits.then(|| text.parse::<u64>().ok()).flatten()?;
            Some(CommitPosition {
                at,
                form: Form::Sequence,
            })
        };
        wal()
            .or_else(sequence)
            .ok_or_else(|| Error::InvalidReplicas {
                name: String::new(),
                reason: format!(
                    "`{text}` is not a commit position (PostgreSQL's `16/B374D848`, or a MariaDB \
                 GTID sequence number such as `1234`)"
                ),
            })
    }
}
