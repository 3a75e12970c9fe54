//! The relay: rounds of delivery, woken by commits and by a poll, backing off while the
//! broker refuses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::publish::now_ms;
use super::round::{self, Keys, Plan};
use super::sink::Sink;
use super::store::{OutboxPool, OutboxStatus, Store};
use super::{wake, Outbox};
use crate::error::Error;

/// What becomes of a delivered event's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Retention {
    /// Deleted once the broker has it (the default): the table holds only pending events.
    #[default]
    Delete,
    /// Kept, stamped with its delivery time, and deleted by the relay once older than this
    /// (an audit trail, or a replay source).
    Keep(Duration),
}

/// What one round of a relay did: from [`Relay::run_once`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Round {
    /// Pending rows claimed.
    pub claimed: usize,
    /// Messages the broker acknowledged; their rows are marked.
    pub delivered: usize,
    /// Of those, messages the broker already had (a re-send after a crash).
    pub duplicates: usize,
    /// Messages the broker refused or did not answer for; they stay pending.
    pub failed: usize,
    /// Claimed messages left for a later round: of a key that another relay holds an earlier
    /// event of, or after a failed one of their key.
    pub held_back: usize,
}

/// Counts of a relay since it was spawned, from [`RelayHandle::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RelayStats {
    /// Rounds run.
    pub rounds: u64,
    /// Messages the broker acknowledged.
    pub delivered: u64,
    /// Of those, duplicates the broker dropped.
    pub duplicates: u64,
    /// Failed sends (each is retried).
    pub failed: u64,
    /// Rounds that failed on the database (each is retried after a backoff).
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    rounds: AtomicU64,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn add(&self, round: &Round) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.delivered
            .fetch_add(round.delivered as u64, Ordering::Relaxed);
        self.duplicates
            .fetch_add(round.duplicates as u64, Ordering::Relaxed);
        self.failed
            .fetch_add(round.failed as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RelayStats {
        RelayStats {
            rounds: self.rounds.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Delivers an outbox's committed events to a [`Sink`]: from [`Outbox::relay`] or
/// [`Relay::new`] (the default outbox), configured with its methods, then
/// [`spawn`](Self::spawn)ed — or driven by hand with [`run_once`](Self::run_once).
///
/// Run one per application instance: relays on one table share the work without delivering
/// an event twice or out of its key's order (docs/SEMANTICS.md, "Outbox").
pub struct Relay<S> {
    store: Arc<dyn Store>,
    sink: Arc<S>,
    outbox: Outbox,
    origin: Option<String>,
    batch_size: usize,
    poll_interval: Duration,
    backoff: (Duration, Duration),
    send_timeout: Duration,
    retention: Retention,
    /// Keys whose event failed: left out of claims until their backoff has passed, so that a
    /// key the broker keeps refusing (a topic no stream takes, a message too large) holds back
    /// its own events only.
    failing: Mutex<HashMap<String, KeyBackoff>>,
}

/// A failing key's backoff.
#[derive(Debug, Clone, Copy)]
struct KeyBackoff {
    until: Instant,
    next: Duration,
}

/// The most failing keys one claim leaves out (the others are tried, and fail again).
const MAX_SKIPPED_KEYS: usize = 1000;

impl<S> std::fmt::Debug for Relay<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("table", &self.outbox.table())
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> Relay<S> {
    /// A relay of the default outbox (`transactional_outbox`) on `pool`, to `sink`: batches
    /// of 100, a poll every 500 ms, backoff from 100 ms to 30 s, 30 s for the broker to answer
    /// a send, rows deleted once delivered.
    pub fn new(pool: impl OutboxPool, sink: S) -> Relay<S> {
        Relay {
            store: pool.store(),
            sink: Arc::new(sink),
            outbox: Outbox::new(),
            origin: None,
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            backoff: (Duration::from_millis(100), Duration::from_secs(30)),
            send_timeout: Duration::from_secs(30),
            retention: Retention::Delete,
            failing: Mutex::default(),
        }
    }

    /// Relays `outbox`'s table.
    pub fn outbox(mut self, outbox: &Outbox) -> Relay<S> {
        self.outbox = outbox.clone();
        self
    }

    /// The prefix of every [`Message::message_id`](super::Message::message_id) (the table's
    /// name by default): set one per database when the outboxes of several databases share
    /// a table name and publish to one stream.
    pub fn origin(mut self, origin: impl Into<String>) -> Relay<S> {
        self.origin = Some(origin.into());
        self
    }

    /// The most rows one round claims (at least 1).
    pub fn batch_size(mut self, rows: usize) -> Relay<S> {
        self.batch_size = rows.max(1);
        self
    }

    /// How often the relay looks for events when nothing wakes it: events committed by other
    /// processes (a commit wakes the relays of its own process at once).
    pub fn poll_interval(mut self, every: Duration) -> Relay<S> {
        self.poll_interval = every;
        self
    }

    /// The wait after a round in which the broker refused a message or the database failed:
    /// `min`, doubled each time up to `max`, back to `min` after a clean round.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Relay<S> {
        self.backoff = (min, max.max(min));
        self
    }

    /// How long the broker has to acknowledge one wave of messages before they count as
    /// failed.
    pub fn send_timeout(mut self, timeout: Duration) -> Relay<S> {
        self.send_timeout = timeout;
        self
    }

    /// What becomes of delivered rows; see [`Retention`].
    pub fn retention(mut self, retention: Retention) -> Relay<S> {
        self.retention = retention;
        self
    }

    /// Runs one round: claims up to a batch of pending rows, sends them, marks the ones the
    /// broker acknowledged. Fails only on the database; the broker's refusals are counted in
    /// [`Round::failed`].
    pub async fn run_once(&self) -> Result<Round, Error> {
        let skip = self.failing_keys();
        let plan = Plan {
            table: self.outbox.table(),
            origin: self.origin.as_deref().unwrap_or(self.outbox.table()),
            batch_size: self.batch_size,
            send_timeout: self.send_timeout,
            keep: matches!(self.retention, Retention::Keep(_)),
            skip: &skip,
        };
        let span = tracing::debug_span!(
            target: crate::TARGET,
            "outbox_round",
            table = plan.table,
            claimed = tracing::field::Empty,
            delivered = tracing::field::Empty,
            failed = tracing::field::Empty,
        );
        let (round, keys) = round::run(&*self.store, &*self.sink, &plan)
            .instrument(span.clone())
            .await?;
        span.record("claimed", round.claimed);
        span.record("delivered", round.delivered);
        span.record("failed", round.failed);
        self.note(keys);
        Ok(round)
    }

    /// The keys still backing off.
    fn failing_keys(&self) -> Vec<String> {
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        failing
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(key, _)| key.clone())
            .take(MAX_SKIPPED_KEYS)
            .collect()
    }

    /// Backs off from the keys that failed (doubling each time), forgets those delivered.
    fn note(&self, keys: Keys) {
        if keys.failed.is_empty() && self.failing.lock().map_or(true, |f| f.is_empty()) {
            return;
        }
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        for key in &keys.delivered {
            failing.remove(key);
        }
        let (min, max) = self.backoff;
        let now = Instant::now();
        for key in keys.failed {
            let next = failing.get(&key).map_or(min, |b| (b.next * 2).min(max));
            failing.insert(
                key,
                KeyBackoff {
                    until: now + next,
                    next,
                },
            );
        }
    }

    /// Deletes delivered rows older than the [`Retention::Keep`] period (nothing under
    /// [`Retention::Delete`]). A spawned relay does it once a minute.
    pub async fn purge(&self) -> Result<(), Error> {
        let Retention::Keep(period) = self.retention else {
            return Ok(());
        };
        let cut_off = now_ms().saturating_sub(period.as_millis() as i64);
        Ok(self.store.purge(self.outbox.table(), cut_off).await?)
    }

    /// Counts of the relay's table; see [`Outbox::status`].
    pub async fn status(&self) -> Result<OutboxStatus, Error> {
        Ok(self.store.status(self.outbox.table()).await?)
    }

    /// Runs the relay on a task of its own until [`RelayHandle::shutdown`]; dropping the
    /// handle stops it too. Needs a tokio runtime.
    pub fn spawn(self) -> RelayHandle {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let relay = Arc::new(self);
        let task = tokio::spawn(Arc::clone(&relay).run(stopped, Arc::clone(&counters)));
        RelayHandle {
            task: Some(task),
            stop,
            counters,
            relay,
        }
    }

    async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>, counters: Arc<Counters>) {
        let wake = wake::listen(self.outbox.table());
        let mut backoff = self.backoff.0;
        // Rounds in a row in which the broker took nothing.
        let mut refused = 0;
        let mut purged = Instant::now() - Duration::from_secs(60);
        while !*stopped.borrow() {
            if purged.elapsed() >= Duration::from_secs(60) {
                if let Err(error) = self.purge().await {
                    tracing::warn!(target: crate::TARGET, table = self.outbox.table(), %error, "outbox: purging delivered rows failed");
                }
                purged = Instant::now();
            }
            let wait = match self.run_once().await {
                Ok(round) => {
                    counters.add(&round);
                    self.after(&round, &mut backoff, &mut refused)
                }
                Err(error) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: crate::TARGET, table = self.outbox.table(), %error, "outbox: a relay round failed on the database; retrying after a backoff");
                    Some(next_backoff(&mut backoff, self.backoff.1))
                }
            };
            let Some(wait) = wait else { continue };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => {}
            }
        }
    }
}

impl<S: Sink> Relay<S> {
    /// How long to wait after `round` before the next one (`None`: at once).
    fn after(&self, round: &Round, backoff: &mut Duration, refused: &mut u32) -> Option<Duration> {
        if round.failed > 0 && round.delivered == 0 {
            *refused += 1;
            // Once, at once: the keys that failed are left out of the next claim, which shows
            // whether other keys go through. Twice: the broker is down, or refuses everything.
            return (*refused > 1).then(|| next_backoff(backoff, self.backoff.1));
        }
        *refused = 0;
        *backoff = self.backoff.0;
        if round.failed > 0 || (round.claimed == self.batch_size && round.delivered > 0) {
            None // more may be waiting (the failed keys are left out)
        } else if round.held_back > 0 {
            Some(self.backoff.0) // another relay holds earlier events of a key
        } else {
            Some(self.poll_interval)
        }
    }
}

/// The current backoff; doubles it for next time, up to `max`.
fn next_backoff(backoff: &mut Duration, max: Duration) -> Duration {
    let now = *backoff;
    *backoff = (now * 2).min(max);
    now
}

/// A spawned [`Relay`]. Dropping it stops the relay at once (as [`abort`](Self::abort) does).
#[must_use = "dropping the handle stops the relay"]
pub struct RelayHandle {
    task: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    counters: Arc<Counters>,
    relay: Arc<dyn RelayStatus>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What a handle asks of its relay, whatever its sink.
trait RelayStatus: Send + Sync {
    fn status(&self) -> futures_util::future::BoxFuture<'_, Result<OutboxStatus, Error>>;
}

impl<S: Sink> RelayStatus for Relay<S> {
    fn status(&self) -> futures_util::future::BoxFuture<'_, Result<OutboxStatus, Error>> {
        Box::pin(Relay::status(self))
    }
}

impl RelayHandle {
    /// Counts since the relay was spawned.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Counts of the relay's table; see [`Outbox::status`].
    pub async fn status(&self) -> Result<OutboxStatus, Error> {
        self.relay.status().await
    }

    /// Stops the relay once its current round is over, and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the relay now, even in the middle of a round: the rows of that round stay
    /// pending (its claim rolls back), and a message the broker already took is sent again
    /// later and dropped by the broker as a duplicate.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
