//! One round of a relay: claim pending rows, send them key by key in waves, mark what the
//! broker acknowledged.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::relay::Round;
use super::sink::{Accepted, Message, Sink};
use super::store::Store;
use crate::error::{BoxError, Error};

/// What a round needs to know.
pub(super) struct Plan<'a> {
    pub table: &'a str,
    pub origin: &'a str,
    pub batch_size: usize,
    pub send_timeout: Duration,
    pub keep: bool,
    /// Keys whose last send failed, left alone until their backoff has passed.
    pub skip: &'a [String],
}

/// Claims up to a batch of rows, sends them and marks them. Dropped half-way, it leaves every
/// row it did not mark pending: a message the broker took is sent again later, and dropped by
/// the broker as a duplicate.
pub(super) async fn run<S: Sink>(
    store: &dyn Store,
    sink: &S,
    plan: &Plan<'_>,
) -> Result<(Round, Keys), Error> {
    let claim = store
        .claim(plan.table, plan.batch_size, plan.origin, plan.skip)
        .await?;
    let mut round = Round {
        claimed: claim.claimed(),
        held_back: claim.claimed() - claim.sendable().len(),
        ..Round::default()
    };
    let mut delivered = Vec::with_capacity(claim.sendable().len());
    let mut failed = Vec::new();
    let (mut delivered_keys, mut failed_keys) = (Vec::new(), Vec::new());
    let mut waves = Waves::of(claim.sendable());
    while let Some(wave) = waves.next() {
        let results = send(sink, &wave, plan.send_timeout).await;
        for (message, result) in wave.iter().zip(results) {
            match result {
                Ok(accepted) => {
                    delivered.push(message.id());
                    delivered_keys.push(message.key().to_owned());
                    if accepted == Accepted::Duplicate {
                        round.duplicates += 1;
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        target: crate::TARGET,
                        table = plan.table,
                        id = message.id(),
                        topic = message.topic(),
                        key = message.key(),
                        error = %error,
                        "outbox: the broker did not take a message; it stays pending, with the later ones of its key"
                    );
                    round.held_back += waves.hold_back(message.key());
                    failed.push((message.id(), error.to_string()));
                    failed_keys.push(message.key().to_owned());
                }
            }
        }
    }
    round.delivered = delivered.len();
    round.failed = failed.len();
    claim.finish(&delivered, &failed, plan.keep).await?;
    let keys = Keys {
        delivered: delivered_keys,
        failed: failed_keys,
    };
    Ok((round, keys))
}

/// What a round did per key, for the relay's backoff per key.
#[derive(Default)]
pub(super) struct Keys {
    /// Keys of the events the broker took.
    pub delivered: Vec<String>,
    /// Keys whose event failed (their later events were held back).
    pub failed: Vec<String>,
}

/// The sink's results for `wave`, or a timeout error for each message once `timeout` has
/// passed (a broker that does not answer).
async fn send<S: Sink>(
    sink: &S,
    wave: &[Message],
    timeout: Duration,
) -> Vec<Result<Accepted, BoxError>> {
    let mut results = tokio::time::timeout(timeout, sink.send(wave))
        .await
        .unwrap_or_default();
    if results.len() != wave.len() {
        let reason = if results.is_empty() {
            format!("the sink did not answer within {timeout:?}")
        } else {
            format!(
                "the sink answered for {} of {} messages",
                results.len(),
                wave.len()
            )
        };
        results = wave.iter().map(|_| Err(reason.clone().into())).collect();
    }
    results
}

/// The claimed messages, queued per key: each wave is the next message of every key, so a
/// key's message is sent only once the one before it is acknowledged.
struct Waves {
    queues: Vec<VecDeque<Message>>,
    by_key: HashMap<String, usize>,
}

impl Waves {
    fn of(messages: &[Message]) -> Waves {
        let mut waves = Waves {
            queues: Vec::new(),
            by_key: HashMap::new(),
        };
        for message in messages {
            let next = waves.queues.len();
            let at = *waves.by_key.entry(message.key().to_owned()).or_insert(next);
            if at == next {
                waves.queues.push(VecDeque::new());
            }
            waves.queues[at].push_back(message.clone());
        }
        waves
    }

    fn next(&mut self) -> Option<Vec<Message>> {
        let wave: Vec<Message> = self
            .queues
            .iter_mut()
            .filter_map(VecDeque::pop_front)
            .collect();
        (!wave.is_empty()).then_some(wave)
    }

    /// Drops the rest of `key`'s queue (it waits for a later round); returns how many.
    fn hold_back(&mut self, key: &str) -> usize {
        let queue = &mut self.queues[self.by_key[key]];
        let held = queue.len();
        queue.clear();
        held
    }
}
