//! NATS JetStream as a [`Sink`] (feature `nats`).

use async_nats::jetstream;
use async_nats::HeaderMap;

use super::sink::{Accepted, Message, Sink};
use crate::error::BoxError;

/// The header that carries [`Message::key`].
pub const KEY_HEADER: &str = "Outbox-Key";

/// Delivers to NATS JetStream: each message is published to its topic as the subject, with
/// [`Message::message_id`] as `Nats-Msg-Id` (JetStream drops a re-send within the stream's
/// duplicate window) and the key in the `Outbox-Key` header; a wave is published at once and
/// each acknowledgement awaited.
///
/// A stream must capture the topics (`jetstream::Context::create_stream` with their
/// subjects): a publish no stream takes fails, and stays pending until one does. Keep the
/// stream's `duplicate_window` (2 minutes by default) longer than a relay takes to restart.
/// How long an acknowledgement may take is the context's timeout
/// (`jetstream::ContextBuilder::timeout`).
#[derive(Debug, Clone)]
pub struct JetStream {
    context: jetstream::Context,
}

impl JetStream {
    /// A sink publishing through `context`.
    pub fn new(context: jetstream::Context) -> JetStream {
        JetStream { context }
    }
}

impl Sink for JetStream {
    async fn send(&self, messages: &[Message]) -> Vec<Result<Accepted, BoxError>> {
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", message.message_id());
            headers.insert(KEY_HEADER, message.key());
            let published = self
                .context
                .publish_with_headers(
                    message.topic().to_owned(),
                    headers,
                    message.payload().clone(),
                )
                .await;
            acks.push(published);
        }
        let mut results = Vec::with_capacity(acks.len());
        for ack in acks {
            results.push(match ack {
                Ok(ack) => match ack.await {
                    Ok(ack) if ack.duplicate => Ok(Accepted::Duplicate),
                    Ok(_) => Ok(Accepted::Stored),
                    Err(error) => Err(error.into()),
                },
                Err(error) => Err(error.into()),
            });
        }
        results
    }
}
