//! The broker down for 5 s mid-run: commits keep succeeding, the relay backs off, and every
//! event committed meanwhile is delivered once the broker is back — exactly once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use transactional::outbox::OutboxPool;
use transactional::Propagation::*;

use crate::broker::{assert_exactly, Broker, Server};
use crate::common::{scope, AppResult, Env, TestDb};
use crate::World;

async fn broker_down_for_five_seconds<D: TestDb>()
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    sqlx::Pool<D::DB>: OutboxPool,
{
    if crate::nats_skipped("broker_down") {
        return;
    }
    let Some(env) = Env::<D>::new("broker_down").await else {
        return;
    };
    let server = Arc::new(Mutex::new(Server::start()));
    let url = server.lock().unwrap().url();
    let w = World::on(env, Broker::at(&url, "broker_down").await).await;
    let relay = w.relay().send_timeout(Duration::from_secs(1)).spawn();

    // The broker goes down after 1.5 s, for 5 s.
    let outage = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            server.lock().unwrap().kill();
            let down = Instant::now();
            tokio::time::sleep(Duration::from_secs(5)).await;
            tokio::task::spawn_blocking(move || server.lock().unwrap().restart())
                .await
                .unwrap();
            down.elapsed()
        })
    };

    // Meanwhile, a commit every 25 ms for 8 s: every one succeeds.
    let mut expected = Vec::new();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let payload = format!("e{n}");
        let r: AppResult<()> = w
            .env
            .run(scope(Required).run(async {
                w.env.insert(n).await?;
                w.publish(&format!("k{}", n % 7), &payload).await?;
                Ok(())
            }))
            .await;
        r.expect("commits succeed while the broker is down");
        expected.push(payload);
        n += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(outage.await.unwrap() >= Duration::from_secs(5));

    let events = w
        .broker
        .wait_for(expected.len(), Duration::from_secs(60))
        .await;
    for _ in 0..200 {
        if w.pending().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        w.pending().await,
        0,
        "everything delivered once the broker is back"
    );
    let stats = relay.stats();
    assert!(stats.failed > 0, "the relay saw the outage: {stats:?}");
    relay.shutdown().await;
    let events = if events.len() == expected.len() {
        events
    } else {
        w.broker.events().await
    };
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_exactly(&events, &expected);
}

crate::each_database!(broker_down_for_five_seconds);
