//! The seam between the relay and a broker: what a message is, and what a broker must do with
//! it. JetStream is one implementation (`JetStream`, feature `nats`); Kafka or Redis Streams
//! would be others.

use std::future::Future;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::error::BoxError;

/// One committed event on its way to the broker: a row of the outbox table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    id: i64,
    topic: String,
    key: String,
    payload: Bytes,
    created_at_ms: i64,
    message_id: String,
}

impl Message {
    pub(super) fn new(
        origin: &str,
        id: i64,
        topic: String,
        key: String,
        payload: Bytes,
        created_at_ms: i64,
    ) -> Message {
        Message {
            message_id: format!("{origin}-{id}-{created_at_ms}"),
            id,
            topic,
            key,
            payload,
            created_at_ms,
        }
    }

    /// The row's id in the outbox table: increasing in the order the events were written.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Where the event goes: the NATS subject, the Kafka topic, the stream's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The ordering key: events of one key are delivered in the order they were written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The event's bytes, as given to `publish` (JSON for `publish_json`).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// When `publish` wrote the event (the publishing process's clock).
    pub fn created_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.created_at_ms.max(0) as u64)
    }

    /// The id the broker deduplicates on (JetStream's `Nats-Msg-Id`): the same for every
    /// re-send of this event, and different for every other event — the relay's origin (the
    /// table's name unless set with `Relay::origin`), the row's id and its creation time
    /// (which tells a reused id apart, should the table be re-created).
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
}

/// What the broker said of a message it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Accepted {
    /// Stored now.
    Stored,
    /// Already stored by an earlier send of the same [`Message::message_id`]: the broker
    /// dropped this one (a relay re-sent a message whose first send it could not mark).
    Duplicate,
}

/// A message broker the relay delivers to.
///
/// The relay calls [`send`](Self::send) with messages of distinct keys, so a sink may send
/// them in any order or all at once (pipelined); the relay sends a key's next message only
/// once this one is acknowledged, which keeps each key's order even when the broker refuses
/// one message and takes the next.
///
/// A sink must deduplicate on [`Message::message_id`] (or its broker must): the relay
/// delivers at least once, and re-sends a message whose acknowledgement it received but could
/// not record (a crash, a lost database connection).
pub trait Sink: Send + Sync + 'static {
    /// Sends `messages` and waits for the broker's acknowledgement of each: one result per
    /// message, in the same order. `Ok` only once the broker has stored the message durably;
    /// an error leaves it pending, to be sent again after a backoff.
    fn send(
        &self,
        messages: &[Message],
    ) -> impl Future<Output = Vec<Result<Accepted, BoxError>>> + Send;
}
