//! What reaches the stream is exactly the events of committed work, whatever the shape of the
//! scopes: commit, rollback, a rolled-back savepoint, REQUIRES_NEW, rollback-only.

use std::time::Duration;

use transactional::outbox::Retention;
use transactional::Propagation::*;

use crate::broker::assert_exactly;
use crate::common::{scope, AppError, AppResult};
use crate::outbox_test;

outbox_test! {
    /// A committed scope's events are delivered, each once, with the key and topic given;
    /// a rolled-back scope's are not; the delivered rows are gone.
    async fn commit_and_rollback(w: World<D>) {
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            w.env.insert(1).await?;
            w.publish("order-1", "placed-1").await?;
            w.publish("order-1", "paid-1").await?;
            Ok(())
        })).await;
        r.unwrap();
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            w.env.insert(2).await?;
            w.publish("order-2", "placed-2").await?;
            Err(AppError::Boom("rolls back"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(w.pending().await, 2, "only the committed events are pending");

        let round = w.relay().run_once().await.unwrap();
        assert_eq!((round.claimed, round.delivered, round.failed), (2, 2, 0));
        let events = w.broker.wait_for(2, Duration::from_secs(10)).await;
        assert_eq!(
            events.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>(),
            ["placed-1", "paid-1"],
            "in the order they were written"
        );
        assert!(events.iter().all(|e| e.key == "order-1" && e.subject == w.topic()));
        assert_eq!(w.pending().await, 0);
        let round = w.relay().run_once().await.unwrap();
        assert_eq!(round.claimed, 0, "a delivered event is not sent again");
        assert_eq!(w.broker.count().await, 2);
    }
}

outbox_test! {
    /// A NESTED scope that fails takes its events back with its savepoint; the rest of the
    /// transaction's events go.
    async fn nested_rollback(w: World<D>) {
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            w.publish("k", "before").await?;
            let inner: AppResult<()> = scope(Nested).run(async {
                w.publish("k", "in-savepoint").await?;
                Err(AppError::Boom("savepoint rolls back"))
            }).await;
            assert!(inner.unwrap_err().is_boom());
            w.publish("k", "after").await?;
            Ok(())
        })).await;
        r.unwrap();
        w.relay().run_once().await.unwrap();
        let events = w.broker.wait_for(2, Duration::from_secs(10)).await;
        assert_exactly(&events, &["before", "after"]);
    }
}

outbox_test! {
    /// A REQUIRES_NEW scope's events go with its own commit, though the outer transaction
    /// rolls back; rollback-only publishes nothing.
    async fn requires_new_and_rollback_only(w: World<D>) {
        // (The inner scope commits before the outer one writes: SQLite has one writer.)
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            let inner: AppResult<()> = scope(RequiresNew).run(async {
                w.publish("inner", "inner").await?;
                Ok(())
            }).await;
            inner?;
            w.publish("outer", "outer").await?;
            Err(AppError::Boom("outer rolls back"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            w.publish("marked", "marked").await?;
            transactional::set_rollback_only();
            Ok(())
        })).await;
        r.unwrap();
        w.relay().run_once().await.unwrap();
        let events = w.broker.wait_for(1, Duration::from_secs(10)).await;
        assert_exactly(&events, &["inner"]);
        assert_eq!(w.pending().await, 0);
    }
}

outbox_test! {
    /// Outside a transaction `publish` is an error that names the data source, and writes
    /// nothing; so is a topic that is empty or holds whitespace.
    async fn refusals(w: World<D>) {
        let e = w.env.run(w.publish("k", "lost")).await.unwrap_err();
        assert!(
            matches!(&e, transactional::Error::OutboxNeedsTransaction { data_source } if data_source == "default"),
            "{e}"
        );
        assert!(e.to_string().contains("#[transactional]"), "{e}");
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            let e = w.outbox.publish("", "k", b"x".to_vec()).await.unwrap_err();
            assert!(matches!(e, transactional::Error::InvalidOutbox { what: "topic", .. }), "{e}");
            let e = w.outbox.publish("a b", "k", b"x".to_vec()).await.unwrap_err();
            assert!(matches!(e, transactional::Error::InvalidOutbox { what: "topic", .. }), "{e}");
            let e = w.outbox.publish("t", &"k".repeat(256), b"x".to_vec()).await.unwrap_err();
            assert!(matches!(e, transactional::Error::InvalidOutbox { what: "key", .. }), "{e}");
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(w.pending().await, 0);
        // A table that was never created is named, with what to do.
        let missing = transactional::outbox::Outbox::with_table(&format!("{}_none", w.env.table)).unwrap();
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            missing.publish(&w.topic(), "k", b"x".to_vec()).await?;
            Ok(())
        })).await;
        let e = r.unwrap_err();
        assert!(
            matches!(e.tx(), transactional::Error::OutboxTableMissing { table, .. } if *table == missing.table()),
            "{e}"
        );
        assert!(e.to_string().contains("create_schema"), "{e}");
    }
}

outbox_test! {
    /// A spawned relay delivers right after the commit, not at its next poll (here an hour
    /// away): the commit wakes it.
    async fn commit_wakes_the_relay(w: World<D>) {
        let relay = w.relay().poll_interval(Duration::from_secs(3600)).spawn();
        // Its first round (at start) finds nothing; then it sleeps until woken.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            w.outbox
                .publish_json(&w.topic(), "k", &serde_json::json!({ "n": 1 }))
                .await?;
            Ok(())
        })).await;
        r.unwrap();
        let events = w.broker.wait_for(1, Duration::from_secs(5)).await;
        assert_exactly(&events, &[r#"{"n":1}"#]);
        // The relay counts the event once its row is marked, just after the broker's ack.
        w.env.eventually("the relay counts the event", || async { relay.stats().delivered == 1 }).await;
        let stats = relay.stats();
        assert_eq!((stats.delivered, stats.failed, stats.duplicates), (1, 0, 0));
        assert_eq!(w.pending().await, 0);
        relay.shutdown().await;
    }
}

outbox_test! {
    /// Status counts pending events and the oldest one's age; with `Retention::Keep`,
    /// delivered rows stay (counted) until the retention has passed; the schema can be
    /// created again.
    async fn status_and_retention(w: World<D>) {
        w.outbox.create_schema(&w.env.pool).await.expect("idempotent");
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            w.publish("a", "1").await?;
            w.publish("b", "2").await?;
            Ok(())
        })).await;
        r.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let status = w.outbox.status(&w.env.pool).await.unwrap();
        assert_eq!((status.pending, status.failing, status.delivered_kept), (2, 0, 0));
        assert!(status.oldest_pending_age.unwrap() >= Duration::from_millis(30));

        let relay = w.relay().retention(Retention::Keep(Duration::from_millis(300)));
        assert_eq!(relay.run_once().await.unwrap().delivered, 2);
        let status = relay.status().await.unwrap();
        assert_eq!((status.pending, status.delivered_kept), (0, 2));
        assert_eq!(status.oldest_pending_age, None);
        relay.purge().await.unwrap();
        assert_eq!(relay.status().await.unwrap().delivered_kept, 2, "not yet past retention");
        tokio::time::sleep(Duration::from_millis(400)).await;
        relay.purge().await.unwrap();
        assert_eq!(relay.status().await.unwrap().delivered_kept, 0);
        assert_eq!(relay.run_once().await.unwrap().claimed, 0);
        assert_eq!(w.broker.count().await, 2);
    }
}

outbox_test! {
    /// A key the broker keeps refusing (its topic has no stream) holds back its own events
    /// only, even when more of them are pending than a round claims: the others are delivered,
    /// the refused ones stay pending, counted as failing.
    async fn a_refused_key_holds_back_only_its_own(w: World<D>) {
        let nowhere = format!("{}_nostream.events", w.broker.prefix);
        let r: AppResult<()> = w.env.run(scope(Required).run(async {
            for i in 0..150 {
                w.outbox.publish(&nowhere, "refused", format!("r{i}").into_bytes()).await?;
            }
            for i in 0..5 {
                w.publish(&format!("good-{i}"), &format!("g{i}")).await?;
            }
            Ok(())
        })).await;
        r.unwrap();
        let relay = w.relay().batch_size(100).spawn();
        let events = w.broker.wait_for(5, Duration::from_secs(20)).await;
        assert_exactly(&events, &["g0", "g1", "g2", "g3", "g4"]);
        let status = relay.status().await.unwrap();
        assert_eq!(status.pending, 150);
        assert!(status.failing >= 1, "{status:?}");
        assert!(relay.stats().failed >= 1);
        relay.shutdown().await;
    }
}
