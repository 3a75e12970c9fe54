//! Cancellation at every await: a scope that publishes, and a relay's round, dropped after
//! their 1st, 2nd, … k-th poll until they complete. Whatever the point: an event is pending
//! exactly when the work it announces committed, no session is left in a transaction, and the
//! stream ends up holding each committed event once.

use std::collections::BTreeSet;
use std::time::Duration;

use transactional::Propagation::*;

use crate::broker::assert_exactly;
use crate::common::{poll_at_most, scope, AppResult};
use crate::outbox_test;

outbox_test! {
    /// A scope writing a row and three events (one in a NESTED scope), dropped at each poll.
    async fn publishing_scope_dropped_at_every_poll(w: World<D>) {
        let mut committed = Vec::new();
        let mut completed = None;
        for k in 1..400 {
            let base = k as i64 * 10;
            let work = w.env.run(scope(Required).run(async {
                w.env.insert(base).await?;
                w.publish("k", &format!("{base}-a")).await?;
                scope(Nested).run(async { w.publish("k", &format!("{base}-b")).await }).await?;
                w.publish("k", &format!("{base}-c")).await?;
                AppResult::Ok(())
            }));
            let ran = poll_at_most(work, k).await;
            w.env.eventually("no session is left in a transaction", || w.env.pool_is_clean()).await;
            // Committed (even if the future was dropped after COMMIT) ⇔ its events are pending.
            let rows = w.env.ids().await;
            if rows.contains(&base) {
                committed.extend(["a", "b", "c"].map(|s| format!("{base}-{s}")));
            }
            assert_eq!(w.pending().await as usize, committed.len(), "dropped after {k} polls");
            if let Some(result) = ran {
                result.unwrap();
                completed = Some(k);
                break;
            }
        }
        let completed = completed.expect("the scope completes within 400 polls");
        assert!(completed > 1, "dropped at least once before it completed at poll {completed}");
        eprintln!("{}: the publishing scope completed at poll {completed}", D::NAME);
        w.relay().run_once().await.unwrap();
        let events = w.broker.wait_for(committed.len(), Duration::from_secs(10)).await;
        let expected: Vec<&str> = committed.iter().map(String::as_str).collect();
        assert_exactly(&events, &expected);
    }
}

outbox_test! {
    /// A relay's round dropped at each poll: its claim is let go (the connection closed or its
    /// transaction rolled back), a message the broker took before the drop is re-sent and
    /// dropped as a duplicate, and every event ends up in the stream once.
    async fn relay_round_dropped_at_every_poll(w: World<D>) {
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            for i in 0..30 {
                w.publish(&format!("k{}", i % 4), &format!("e{i}")).await?;
            }
            Ok(())
        })).await;
        r.unwrap();
        let relay = w.relay().batch_size(8);
        let mut rounds = BTreeSet::new();
        let mut dropped = 0;
        for k in 1..2000 {
            match poll_at_most(relay.run_once(), k).await {
                Some(round) => {
                    let round = round.unwrap();
                    rounds.insert(k);
                    if round.claimed == 0 && w.pending().await == 0 {
                        break;
                    }
                }
                None => {
                    dropped += 1;
                    w.env.eventually("the dropped round let its claim go", || w.env.pool_is_clean()).await;
                }
            }
        }
        assert_eq!(w.pending().await, 0, "every event delivered in the end");
        assert!(dropped > 1, "rounds completed at {rounds:?}, {dropped} dropped");
        eprintln!("{}: rounds completed at polls {rounds:?}, {dropped} dropped", D::NAME);
        let events = w.broker.events().await;
        let expected: Vec<String> = (0..30).map(|i| format!("e{i}")).collect();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_exactly(&events, &expected);
    }
}
