//! Crash safety: a relay stopped between the broker's acknowledgement and marking the rows,
//! and work committed while no relay runs — by aborting the relay's task, and by killing a
//! child process (SIGKILL). After a restart every committed event is in the stream exactly
//! once (the broker drops the re-sends by message id), and none of rolled-back work.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use transactional::outbox::{Accepted, JetStream, Message, OutboxPool, Sink};
use transactional::BoxError;
use transactional::Propagation::*;

use crate::broker::{assert_exactly, nats_url, Broker};
use crate::common::{scope, AppError, AppResult, Env, Lite, My, Pg, TestDb};
use crate::{outbox_test, World};

/// A sink that passes its first send to JetStream, says so, and never returns: the relay is
/// stopped (aborted, killed) after the broker's ack and before it marks the rows.
struct StallAfterAck {
    inner: JetStream,
    acked: Arc<Notify>,
}

impl Sink for StallAfterAck {
    async fn send(&self, messages: &[Message]) -> Vec<Result<Accepted, BoxError>> {
        let results = self.inner.send(messages).await;
        assert!(
            results.iter().all(Result::is_ok),
            "the broker took them: {results:?}"
        );
        self.acked.notify_one();
        println!("ACKED {}", messages.len());
        let _ = std::io::stdout().flush();
        std::future::pending().await
    }
}

/// Commits ten events over five keys, and one scope that rolls back.
async fn commit_ten<D: TestDb>(w: &World<D>) -> Vec<String>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    sqlx::Pool<D::DB>: OutboxPool,
{
    let mut payloads = Vec::new();
    for i in 0..10 {
        let payload = format!("event-{i}");
        let r: AppResult<()> = w
            .env
            .run(scope(Required).run(async {
                w.publish(&format!("key-{}", i % 5), &payload).await?;
                Ok(())
            }))
            .await;
        r.unwrap();
        payloads.push(payload);
    }
    let r: AppResult<()> = w
        .env
        .run(scope(Required).run(async {
            w.publish("key-0", "rolled-back").await?;
            Err(AppError::Boom("never published"))
        }))
        .await;
    assert!(r.unwrap_err().is_boom());
    payloads
}

/// Restarts a relay, waits until nothing is pending, and checks the stream.
async fn restart_and_check<D: TestDb>(w: &World<D>, expected: &[String]) -> u64
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    sqlx::Pool<D::DB>: OutboxPool,
{
    let relay = w.relay().spawn();
    for _ in 0..200 {
        if w.pending().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        w.pending().await,
        0,
        "the restarted relay delivered everything"
    );
    // A round adds its counts once it is over, just after its marks commit.
    for _ in 0..200 {
        if relay.stats().delivered >= expected.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let duplicates = relay.stats().duplicates;
    relay.shutdown().await;
    let events = w.broker.events().await;
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_exactly(&events, &expected);
    duplicates
}

outbox_test! {
    /// The relay's task is aborted after the broker acknowledged a wave and before the rows
    /// were marked: the claim rolls back (no session left in a transaction), the rows stay
    /// pending, and the next relay's re-sends are dropped by the broker as duplicates.
    async fn aborted_between_ack_and_mark(w: World<D>) {
        let expected = commit_ten(&w).await;
        let acked = Arc::new(Notify::new());
        let stalled = w
            .outbox
            .relay(w.env.pool.clone(), StallAfterAck { inner: w.broker.sink(), acked: acked.clone() })
            .spawn();
        tokio::time::timeout(Duration::from_secs(10), acked.notified()).await.expect("a wave is acked");
        let sent_once = w.broker.count().await;
        assert!(sent_once >= 1, "the first wave is in the stream");
        stalled.abort();
        w.env.eventually("the aborted round's claim is rolled back", || w.env.pool_is_clean()).await;
        assert_eq!(w.pending().await, 10, "nothing was marked");

        let duplicates = restart_and_check(&w, &expected).await;
        assert_eq!(duplicates, sent_once, "every re-sent message was a duplicate");
    }
}

outbox_test! {
    /// Work committed while no relay runs (it stopped between COMMIT and its wake-up) is
    /// delivered by the next relay, at its first round.
    async fn committed_while_no_relay_runs(w: World<D>) {
        let relay = w.relay().spawn();
        relay.abort();
        let expected = commit_ten(&w).await;
        assert_eq!(w.pending().await, 10);
        let duplicates = restart_and_check(&w, &expected).await;
        assert_eq!(duplicates, 0);
    }
}

/// A sink that, the first time, has the relay's own database connection killed once the broker
/// acknowledged the wave, before the relay marks the rows.
struct KillAfterAck {
    inner: JetStream,
    kill: tokio::sync::Mutex<Option<futures_util::future::BoxFuture<'static, ()>>>,
}

impl Sink for KillAfterAck {
    async fn send(&self, messages: &[Message]) -> Vec<Result<Accepted, BoxError>> {
        let results = self.inner.send(messages).await;
        if let Some(kill) = self.kill.lock().await.take() {
            kill.await;
        }
        results
    }
}

/// The relay's connection killed by the server between the broker's ack and the marks
/// (PostgreSQL `pg_terminate_backend`, MariaDB `KILL CONNECTION`): the round fails on the
/// database, its rows stay pending, the next round re-sends them and the broker drops the
/// copies.
async fn connection_killed_between_ack_and_mark<D: TestDb>()
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    sqlx::Pool<D::DB>: OutboxPool,
{
    let Some(w) = World::<D>::new("connection_killed").await else {
        return;
    };
    let expected = commit_ten(&w).await;
    let observer = w.env.observer.clone();
    let (table, outbox) = (w.env.table.clone(), w.outbox.table().to_owned());
    let kill: futures_util::future::BoxFuture<'static, ()> = Box::pin(async move {
        let mut conn = observer.acquire().await.unwrap();
        let killed = if D::NAME == "postgres" {
            let sql = format!(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = '{table}' AND state = 'idle in transaction'"
            );
            D::scalar(&mut conn, sql).await.unwrap()
        } else {
            let sql = format!("SELECT IS_USED_LOCK('transactional_outbox:{outbox}')");
            let id = D::scalar(&mut conn, sql).await.unwrap();
            D::exec(&mut conn, format!("KILL CONNECTION {id}"))
                .await
                .unwrap();
            1
        };
        assert_eq!(killed, 1, "the relay's claiming connection was killed");
    });
    let sink = KillAfterAck {
        inner: w.broker.sink(),
        kill: tokio::sync::Mutex::new(Some(kill)),
    };
    let relay = w
        .outbox
        .relay(w.env.pool.clone(), sink)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .poll_interval(Duration::from_millis(50))
        .spawn();
    for _ in 0..200 {
        if w.pending().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.pending().await, 0, "delivered after the failed round");
    let stats = relay.stats();
    assert!(stats.errors >= 1 && stats.duplicates >= 1, "{stats:?}");
    relay.shutdown().await;
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    assert_exactly(&w.broker.events().await, &expected);
    w.env
        .eventually("no session is left in a transaction", || {
            w.env.pool_is_clean()
        })
        .await;
}

mod connection_killed_between_ack_and_mark {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::connection_killed_between_ack_and_mark::<crate::common::Pg>().await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        super::connection_killed_between_ack_and_mark::<crate::common::My>().await
    }
}

// --- In a child process, killed ------------------------------------------------------------

/// What the child process does before it is killed.
const CHILD: &str = "OUTBOX_CRASH_CHILD";

/// The child's side of [`killed_process`]: runs only when the parent starts this binary
/// with `OUTBOX_CRASH_CHILD` set (otherwise it returns at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_entry() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    match std::env::var("OUTBOX_DB").unwrap().as_str() {
        "postgres" => child::<Pg>(&mode).await,
        "mysql" => child::<My>(&mode).await,
        _ => child::<Lite>(&mode).await,
    }
}

async fn child<D: TestDb>(mode: &str)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    sqlx::Pool<D::DB>: OutboxPool,
{
    let var = |name: &str| std::env::var(name).unwrap();
    let pool = sqlx::Pool::<D::DB>::connect(&var("OUTBOX_URL"))
        .await
        .unwrap();
    let outbox = transactional::outbox::Outbox::with_table(&var("OUTBOX_TABLE")).unwrap();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let _relay = match mode {
        // Commits its events, says so, and dies before any relay has run.
        "committed" => {
            transactional::register_default(pool).unwrap();
            let r: AppResult<()> = scope(Required)
                .run(async {
                    for i in 0..5 {
                        let payload = format!("child-{i}");
                        outbox
                            .publish(&var("OUTBOX_TOPIC"), "child", payload.into_bytes())
                            .await?;
                    }
                    Ok(())
                })
                .await;
            r.unwrap();
            println!("COMMITTED");
            let _ = std::io::stdout().flush();
            None
        }
        // Relays, and dies once the broker has acked the first wave.
        _ => {
            let sink = StallAfterAck {
                inner: JetStream::new(js),
                acked: Arc::new(Notify::new()),
            };
            Some(outbox.relay(pool, sink).spawn())
        }
    };
    std::future::pending::<()>().await;
}

/// Runs this test binary's [`child_entry`] in `mode`, and kills it (SIGKILL) when it prints
/// `marker`.
fn run_child_until<D: TestDb>(w: &World<D>, url: &str, mode: &str, marker: &str)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    sqlx::Pool<D::DB>: OutboxPool,
{
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, mode)
        .env("OUTBOX_DB", D::NAME)
        .env("OUTBOX_URL", url)
        .env("OUTBOX_TABLE", w.outbox.table())
        .env("OUTBOX_TOPIC", w.topic())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the test binary runs again");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(marker) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                panic!("the child never printed {marker}: {e}");
            }
        }
    }
    child.kill().expect("kill the child");
    child.wait().unwrap();
}

async fn killed_process<D: TestDb>()
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    sqlx::Pool<D::DB>: OutboxPool,
{
    if crate::nats_skipped("killed_process") {
        return;
    }
    let Some(env) = Env::<D>::new("killed_process").await else {
        return;
    };
    let url = env.url();
    let w = World::on(env, Broker::new("killed_process").await).await;

    // Killed after COMMIT, before any relay ran.
    let w_ref = &w;
    tokio::task::block_in_place(|| run_child_until(w_ref, &url, "committed", "COMMITTED"));
    assert_eq!(w.pending().await, 5, "the child's commit stands");
    let mut expected: Vec<String> = (0..5).map(|i| format!("child-{i}")).collect();
    assert_eq!(restart_and_check(&w, &expected).await, 0);

    // Killed between the broker's ack and marking the rows.
    expected.extend(commit_ten(&w).await);
    tokio::task::block_in_place(|| run_child_until(w_ref, &url, "relay", "ACKED"));
    let in_stream = w.broker.count().await;
    assert!(in_stream > 5, "the child's first wave reached the stream");
    assert_eq!(w.pending().await, 10, "the killed child marked nothing");
    let duplicates = restart_and_check(&w, &expected).await;
    assert_eq!(
        duplicates,
        in_stream - 5,
        "the child's wave was re-sent and dropped"
    );
}

crate::each_database!(killed_process);
