//! Several relays on one table (several instances of an application): 10,000 events from
//! concurrent writers, three relays with pools of their own; none lost, none sent twice (not
//! even to the broker), each key's events in the order they were written.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use transactional::outbox::OutboxPool;
use transactional::Propagation::*;

use crate::common::{scope, AppResult, TestDb};
use crate::{outbox_test, World};

const WRITERS: usize = 4;
const TRANSACTIONS: usize = 250;
const PER_TRANSACTION: usize = 10;
const KEYS_PER_WRITER: usize = 10;
const EVENTS: usize = WRITERS * TRANSACTIONS * PER_TRANSACTION;

/// Writer `w` owns keys `w-0` … `w-9` and writes each key's events in sequence (`key:seq`),
/// ten per transaction.
async fn write<D: TestDb>(w: &World<D>, writer: usize)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    sqlx::Pool<D::DB>: OutboxPool,
{
    let mut seq = [0usize; KEYS_PER_WRITER];
    for t in 0..TRANSACTIONS {
        let r: AppResult<()> = w
            .env
            .run(scope(Required).run(async {
                for e in 0..PER_TRANSACTION {
                    let k = (t + e * 3) % KEYS_PER_WRITER;
                    let key = format!("{writer}-{k}");
                    w.publish(&key, &format!("{key}:{}", seq[k])).await?;
                    seq[k] += 1;
                }
                Ok(())
            }))
            .await;
        r.unwrap();
    }
}

outbox_test! {
    async fn three_relays_ten_thousand_events(w: World<D>) {
        let relays: Vec<_> = (0..3)
            .map(|_| w.relay().batch_size(100).spawn())
            .collect();
        let writers = (0..WRITERS).map(|writer| write(&w, writer));
        futures_util::future::join_all(writers).await;

        let events = w.broker.wait_for(EVENTS, Duration::from_secs(180)).await;
        for _ in 0..100 {
            if w.pending().await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(w.pending().await, 0);
        let stats: Vec<_> = relays.iter().map(|r| r.stats()).collect();
        for relay in relays {
            relay.shutdown().await;
        }
        assert_eq!(events.len(), EVENTS, "none lost, none doubled");
        assert_eq!(w.broker.count().await, EVENTS as u64);
        let ids: HashSet<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(ids.len(), EVENTS);
        let delivered: u64 = stats.iter().map(|s| s.delivered).sum();
        let duplicates: u64 = stats.iter().map(|s| s.duplicates).sum();
        assert_eq!((delivered, duplicates), (EVENTS as u64, 0), "no message sent twice: {stats:?}");

        // Each key's events arrive in the order they were written.
        let mut next: HashMap<&str, usize> = HashMap::new();
        for event in &events {
            let (key, seq) = event.payload.split_once(':').unwrap();
            assert_eq!(key, event.key);
            let expected = next.entry(key).or_default();
            assert_eq!(seq.parse::<usize>().unwrap(), *expected, "key {key} out of order");
            *expected += 1;
        }
        assert_eq!(next.len(), WRITERS * KEYS_PER_WRITER);
        eprintln!("{} relays on {}: {stats:?}", stats.len(), D::NAME);
    }
}
