//! A durable outbox (feature `outbox`): events stored in the transaction whose work they
//! announce, and delivered to a broker by a relay once that transaction has committed.
//!
//! An after-commit hook is lost when the process stops between COMMIT and the hook. An event
//! written with [`publish`] is a row of the outbox table, in the scope's transaction: it is
//! there if and only if the work commits (a rolled-back transaction or savepoint takes it
//! back; a `REQUIRES_NEW` scope's events go with its own commit). A [`Relay`] reads committed
//! rows, sends them to a [`Sink`] (NATS JetStream: [`JetStream`], feature `nats`), and marks
//! them delivered once the broker has acknowledged them.
//!
//! - **At least once, deduplicated**: every message carries a [`Message::message_id`] that the
//!   broker deduplicates on (JetStream's `Nats-Msg-Id`): a relay that stops between the
//!   broker's acknowledgement and marking the row sends it again, and the broker drops the
//!   copy. Keep the broker's duplicate window (JetStream: 2 minutes by default) longer than a
//!   relay takes to restart.
//! - **In order per key**: events of one key reach the broker in the order their rows were
//!   written, with several relays on one table (several instances of the application): on
//!   PostgreSQL and MySQL, relays claim rows with `FOR UPDATE SKIP LOCKED` and hold back a key
//!   while another relay holds an earlier event of it; on SQLite, relays in one process take
//!   turns (SQLite has one writer: run one application process per database file).
//! - **Wake-up on commit**: `publish` registers an after-commit hook that wakes the relays of
//!   this process at once; they also poll (every 500 ms by default), for events committed by
//!   other processes and for the ones a stopped process left behind.
//!
//! docs/SEMANTICS.md ("Outbox") has the rules in full: delivery, ordering, retention, failure.
//!
//! ```no_run
//! # // Needs the features `nats` and `sqlite`.
//! # async fn example() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use transactional_runtime::outbox::{self, JetStream, Outbox};
//! use transactional_runtime::Transactional;
//!
//! let pool = sqlx::SqlitePool::connect("sqlite:app.db?mode=rwc").await?;
//! transactional_runtime::register_default(pool.clone())?;
//! Outbox::new().create_schema(&pool).await?;
//!
//! // At start-up: a relay per application instance.
//! let nats = async_nats::connect("127.0.0.1:4222").await?;
//! let relay = Outbox::new()
//!     .relay(pool.clone(), JetStream::new(async_nats::jetstream::new(nats)))
//!     .spawn();
//!
//! // In a scope: the event commits with the order, or not at all.
//! Transactional::new()
//!     .run(async {
//!         // ... INSERT the order ...
//!         outbox::publish_json("orders.placed", "order-42", &serde_json::json!({ "id": 42 }))
//!             .await
//!     })
//!     .await?;
//!
//! relay.shutdown().await;
//! # Ok(()) }
//! ```

// Without a database feature there is no pool to relay from: the table's code is unused.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
    allow(dead_code, unused_imports)
)]

use std::borrow::Cow;

use bytes::Bytes;

use crate::error::Error;

#[cfg(feature = "nats")]
mod jetstream;
mod publish;
mod relay;
mod round;
mod sink;
mod sql;
mod store;
mod wake;

#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub use jetstream::{JetStream, KEY_HEADER};
pub use relay::{Relay, RelayHandle, RelayStats, Retention, Round};
pub use sink::{Accepted, Message, Sink};
pub use store::{OutboxPool, OutboxStatus};

/// The table [`Outbox::new`] uses.
pub const DEFAULT_TABLE: &str = "transactional_outbox";

/// The longest topic and key, in bytes (their columns are `VARCHAR(255)`).
pub const MAX_TOPIC_OR_KEY: usize = 255;

/// The longest table name, in bytes (room is left for the indexes' names).
const MAX_TABLE: usize = 48;

/// An outbox: its table, and the data source whose transactions its events ride in.
///
/// [`Outbox::new`] is the table `transactional_outbox` on the current data source (the
/// innermost scope's); the free functions [`publish`] and [`publish_json`] use it.
///
/// ```
/// use transactional_runtime::outbox::Outbox;
///
/// static AUDIT: Outbox = Outbox::for_data_source("audit");
/// let orders = Outbox::with_table("orders_outbox").unwrap().with_data_source("shop");
/// assert_eq!(orders.table(), "orders_outbox");
/// assert_eq!(AUDIT.table(), "transactional_outbox");
/// assert!(Outbox::with_table("orders; DROP TABLE x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outbox {
    table: Cow<'static, str>,
    data_source: Option<Cow<'static, str>>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new()
    }
}

impl Outbox {
    /// The table `transactional_outbox`, on the current data source.
    pub const fn new() -> Outbox {
        Outbox {
            table: Cow::Borrowed(DEFAULT_TABLE),
            data_source: None,
        }
    }

    /// An outbox in the table `name`: an SQL identifier (ASCII letters, digits and `_`, not
    /// starting with a digit, at most 48 bytes).
    pub fn with_table(name: &str) -> Result<Outbox, Error> {
        check_table(name)?;
        Ok(Outbox {
            table: Cow::Owned(name.to_owned()),
            data_source: None,
        })
    }

    /// The table `transactional_outbox`, for the events of the data source `name` (its
    /// transactions, its database) instead of the current one.
    pub const fn for_data_source(name: &'static str) -> Outbox {
        Outbox {
            table: Cow::Borrowed(DEFAULT_TABLE),
            data_source: Some(Cow::Borrowed(name)),
        }
    }

    /// The same table, for the events of the data source `name` instead of the current one.
    pub fn with_data_source(self, name: impl Into<String>) -> Outbox {
        Outbox {
            table: self.table,
            data_source: Some(Cow::Owned(name.into())),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table and its indexes, if they do not exist, on `pool`'s database (outside
    /// any transaction: on MySQL, DDL commits implicitly). Run it at start-up, or copy the
    /// statements into a migration: `tests/outbox` checks that they are these.
    pub async fn create_schema(&self, pool: &impl OutboxPool) -> Result<(), Error> {
        pool.store().create(&self.table).await.map_err(Error::from)
    }

    /// Counts of the table on `pool`: pending events, the oldest one's age, events that failed
    /// to be delivered at least once, delivered events kept by the retention.
    pub async fn status(&self, pool: &impl OutboxPool) -> Result<OutboxStatus, Error> {
        pool.store().status(&self.table).await.map_err(Error::from)
    }

    /// Writes an event to the outbox in the current transaction of the outbox's data source;
    /// it is delivered to `topic` once that transaction commits, after the events written
    /// before it with the same `key`.
    ///
    /// Fails with [`Error::OutboxNeedsTransaction`] outside a transaction (when transactions are
    /// mocked out, the row is written in autocommit, like any repository statement), with
    /// [`Error::InvalidOutbox`] for an empty or over-long topic or key,
    /// [`Error::OutboxTableMissing`] when the table does not exist (see
    /// [`create_schema`](Self::create_schema)), and with the database's error if the INSERT
    /// fails otherwise.
    pub async fn publish(
        &self,
        topic: &str,
        key: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        publish::publish(self, topic, key, payload.into()).await
    }

    /// [`publish`](Self::publish) with `value` serialized to JSON.
    pub async fn publish_json<T>(&self, topic: &str, key: &str, value: &T) -> Result<(), Error>
    where
        T: serde::Serialize + ?Sized,
    {
        let payload = serde_json::to_vec(value).map_err(|e| Error::InvalidOutbox {
            what: "payload",
            reason: format!("it does not serialize to JSON: {e}"),
        })?;
        self.publish(topic, key, payload).await
    }

    /// A relay that delivers this outbox's committed events from `pool` to `sink`; see
    /// [`Relay`].
    pub fn relay<S: Sink>(&self, pool: impl OutboxPool, sink: S) -> Relay<S> {
        Relay::new(pool, sink).outbox(self)
    }

    fn data_source(&self) -> Option<&str> {
        self.data_source.as_deref()
    }
}

/// Writes an event to the default outbox (`transactional_outbox`) in the current transaction:
/// see [`Outbox::publish`].
pub async fn publish(topic: &str, key: &str, payload: impl Into<Bytes>) -> Result<(), Error> {
    static DEFAULT: Outbox = Outbox::new();
    DEFAULT.publish(topic, key, payload).await
}

/// Writes `value` as JSON to the default outbox in the current transaction: see
/// [`Outbox::publish_json`].
pub async fn publish_json<T>(topic: &str, key: &str, value: &T) -> Result<(), Error>
where
    T: serde::Serialize + ?Sized,
{
    static DEFAULT: Outbox = Outbox::new();
    DEFAULT.publish_json(topic, key, value).await
}

fn check_table(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let well_formed = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if well_formed && name.len() <= MAX_TABLE {
        return Ok(());
    }
    Err(Error::InvalidOutbox {
        what: "table name",
        reason: format!(
            "`{name}` is not an SQL identifier of at most {MAX_TABLE} bytes (ASCII letters, digits and `_`, not starting with a digit)"
        ),
    })
}
