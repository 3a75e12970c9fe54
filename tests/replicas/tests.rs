//! The tests, each generic over the server (see `on_both!` in main.rs).

use std::time::Duration;

use transactional::{Isolation, Propagation, Transactional};

use crate::common::{poll_at_most, through_proxy};
use crate::cut::Cut;
use crate::{exec, scalar, Replicated, World};

/// Read-only transactions go to the replica once it has replayed this process's commits,
/// and see them; read-write ones, read-only ones joining a read-write transaction and
/// serializable ones stay on the primary.
pub async fn routing<D: Replicated>() {
    let Some(w) = World::<D>::new("routing", None).await else {
        return;
    };
    w.write(1).await;
    w.read_on_replica(1).await;
    let (on_replica, _) = w.scope(false).run(w.look()).await.unwrap();
    assert!(!on_replica, "read-write: the primary");
    let (on_replica, seen) = w
        .scope(false)
        .run(async {
            w.insert(2).await?;
            // A read-only scope in a read-write transaction joins it, and sees its writes.
            w.scope(true)
                .propagation(Propagation::Required)
                .run(w.look())
                .await
        })
        .await
        .unwrap();
    assert_eq!((on_replica, seen), (false, 2));
    let serializable = w.scope(true).isolation(Isolation::Serializable);
    let (on_replica, _) = serializable.run(w.look()).await.unwrap();
    assert!(!on_replica, "SERIALIZABLE: the primary");
}

/// With the replica's replay paused, a read after a write goes to the primary and sees it:
/// never the replica's stale rows. Once replay resumes, reads return to the replica.
pub async fn read_your_writes_with_replay_paused<D: Replicated>() {
    let Some(w) = World::<D>::new("ryw", None).await else {
        return;
    };
    w.write(1).await;
    w.read_on_replica(1).await;
    let paused = w
        .paused_replay(async {
            w.write(2).await;
            for _ in 0..20 {
                let (on_replica, seen) = w.read().await;
                assert_eq!(
                    (on_replica, seen),
                    (false, 2),
                    "the replica has not replayed the write"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    paused.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    w.read_on_replica(2).await;
}

/// A position carried from another instance (here a second data source over the same
/// servers, whose commits this one does not see): a read without it may go to a replica that
/// has not replayed that commit; under `read_after` it goes to the primary and sees it.
pub async fn read_after_a_position_from_another_instance<D: Replicated>() {
    let Some(w) = World::<D>::new("carried", None).await else {
        return;
    };
    let other: &'static str = Box::leak(format!("{}_other", w.name).into_boxed_str());
    World::<D>::register(other, &w.primary, &w.replica, None);
    assert_eq!(transactional::commit_position(other).unwrap(), None);
    w.write(1).await;
    w.read_on_replica(1).await;
    let paused = w
        .paused_replay(async {
            // The other instance commits, and hands its position out (a cookie, a header).
            Transactional::new()
                .data_source(other)
                .run(w.insert_on(other, 2))
                .await
                .unwrap();
            let cookie = transactional::commit_position(other)
                .unwrap()
                .expect("a position")
                .to_string();
            // This instance knows nothing of it: its replica serves it, without the new row.
            assert_eq!(w.read().await, (true, 1), "stale without the position");
            // With the position the request carried: the primary, and the row.
            let position: transactional::CommitPosition = cookie.parse().unwrap();
            assert_eq!(
                transactional::read_after(w.name, position, w.read()).await,
                (false, 2)
            );
        })
        .await;
    transactional::deregister(other);
    paused.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}

/// A replica further behind the primary than `max_lag` is skipped even by reads that wait for
/// no commit of theirs (the write here is not this instance's), and used again once it has
/// caught up; `pool_status` shows how long it has been behind.
pub async fn a_lagging_replica_is_skipped<D: Replicated>() {
    let Some(w) = World::<D>::new("lag", None).await else {
        return;
    };
    let lagging: &'static str = Box::leak(format!("{}_lag", w.name).into_boxed_str());
    World::<D>::register(
        lagging,
        &w.primary,
        &w.replica,
        Some(Duration::from_millis(200)),
    );
    let read = || async {
        Transactional::new()
            .data_source(lagging)
            .read_only(true)
            .run(w.look_on(lagging))
            .await
            .unwrap()
    };
    let mut reached = false;
    for _ in 0..500 {
        if read().await.0 {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reached, "reads reach the replica");
    let paused = w
        .paused_replay(async {
            // Written behind the library's back: no commit of this instance to wait for.
            exec::<D>(&w.primary, format!("INSERT INTO {} VALUES (7)", w.table)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let status = transactional::pool_status(lagging).unwrap();
            assert!(
                status.replicas[0].behind_for >= Duration::from_millis(200),
                "{status:?}"
            );
            for _ in 0..10 {
                assert_eq!(read().await, (false, 1), "lagging past 200 ms: the primary");
            }
        })
        .await;
    let mut back = false;
    for _ in 0..500 {
        if read().await == (true, 1) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    transactional::deregister(lagging);
    paused.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    assert!(back, "the replica serves reads again once it has caught up");
}

/// A read-only scope on the replica, dropped after its 1st, 2nd, … k-th poll until it
/// completes: no session is left in a transaction on the replica, and the next read works.
pub async fn dropped_at_every_poll<D: Replicated>() {
    let app = format!("replica_drops_{}", std::process::id());
    let Some(w) = World::<D>::new("drops", Some(D::named(&D::replica_url(), &app))).await else {
        return;
    };
    w.write(1).await;
    w.read_on_replica(1).await;
    let observer = sqlx::pool::PoolOptions::<D::DB>::new()
        .max_connections(1)
        .connect(&D::replica_url())
        .await
        .unwrap();
    let in_transaction = || scalar::<D>(&observer, D::in_transaction_sql(&app));
    let mut completed = None;
    for k in 1..200 {
        let read = w.scope(true).run(async {
            let (on_replica, seen) = w.look().await?;
            let mut conn = transactional::data_source(w.name)
                .connection::<D::DB>()
                .await?;
            D::exec(&mut conn, D::slow_statement(0).replace('0', "0.01")).await?;
            Ok::<_, transactional::Error>((on_replica, seen))
        });
        if let Some(done) = poll_at_most(read, k).await {
            assert_eq!(done.unwrap().1, 1);
            completed = Some(k);
            break;
        }
        for _ in 0..20 {
            // A fresh view of the server's transactions (see `Replicated::VIEW_REFRESH`).
            tokio::time::sleep(D::VIEW_REFRESH).await;
            if in_transaction().await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            in_transaction().await,
            0,
            "dropped after {k} polls: a session left in a transaction"
        );
        assert_eq!(w.read().await.1, 1, "the next read works");
    }
    assert!(
        completed.is_some_and(|k| k > 1),
        "dropped at least once before it completed: {completed:?}"
    );
}

/// A replica that stops answering (its connections cut, new ones refused) is skipped: reads
/// keep succeeding, on the primary, and return to it once it is back.
pub async fn replica_down_reads_keep_succeeding<D: Replicated>() {
    let (upstream, template) = through_proxy(&D::replica_url());
    let port = upstream.rsplit_once(':').unwrap().1.parse().unwrap();
    let proxy = Cut::start(port).await;
    let through = template.replace("{port}", &proxy.port.to_string());
    let Some(w) = World::<D>::new("down", Some(through)).await else {
        return;
    };
    w.write(1).await;
    w.read_on_replica(1).await;
    let status = transactional::pool_status(w.name).unwrap();
    assert!(
        status.replicas[0].answering && status.replicas[0].caught_up,
        "{status}"
    );
    proxy.set_down(true);
    for i in 0..100 {
        let (_, seen) = tokio::time::timeout(Duration::from_secs(5), w.read())
            .await
            .unwrap_or_else(|_| panic!("read {i} hung with the replica down"));
        assert_eq!(seen, 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = transactional::pool_status(w.name).unwrap();
    assert!(!status.replicas[0].answering, "{status}");
    assert!(
        status.to_string().contains("replica 0: not answering"),
        "{status}"
    );
    proxy.set_down(false);
    w.read_on_replica(1).await;
}
