//! Read replicas (docs/SEMANTICS.md, "Replicas"), on PostgreSQL streaming replication: the
//! primary at `TEST_POSTGRES_URL`, its replica at `TEST_POSTGRES_REPLICA_URL` (default
//! `postgres://postgres@127.0.0.1:5433/test`; `.ci/pg-replica` makes one by `pg_basebackup`).
//! Which server ran a transaction: `pg_is_in_recovery()`. The tests take turns (one pauses the
//! replica's replay).

#[path = "common/mod.rs"]
mod common;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::poll_at_most;
use futures_util::FutureExt;
use sqlx::{Executor, PgPool};
use transactional::{Isolation, Propagation, ReplicaSettings, Transactional};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static SEQ: AtomicU32 = AtomicU32::new(0);

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn skipped() -> bool {
    std::env::var("TRANSACTIONAL_TEST_SKIP").is_ok_and(|v| {
        v.split(',')
            .any(|s| matches!(s.trim(), "postgres" | "replica"))
    })
}

/// A data source of its own over the primary and `replica`, and a table of its own.
struct World {
    name: &'static str,
    table: String,
    primary: PgPool,
    replica: PgPool,
}

impl World {
    async fn new(test: &str, replica_url: Option<String>) -> Option<World> {
        if skipped() {
            eprintln!("skipping {test}: TRANSACTIONAL_TEST_SKIP");
            return None;
        }
        let primary_url = url(
            "TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let replica_url = replica_url.unwrap_or_else(|| {
            url(
                "TEST_POSTGRES_REPLICA_URL",
                "postgres://postgres@127.0.0.1:5433/test",
            )
        });
        let primary = PgPool::connect(&primary_url).await.expect("the primary");
        let replica = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(1))
            .connect(&replica_url)
            .await
            .unwrap_or_else(|e| {
                panic!("no PostgreSQL replica at {replica_url}: {e}; `.ci/pg-replica` makes one")
            });
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let table = format!("replica_{test}_{}_{n}", std::process::id());
        primary
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {table} (id BIGINT PRIMARY KEY)"
            )))
            .await
            .unwrap();
        let name: &'static str = Box::leak(table.clone().into_boxed_str());
        let settings = ReplicaSettings::new().check_every(Duration::from_millis(20));
        transactional::register_with_replicas(
            name,
            primary.clone(),
            vec![replica.clone()],
            settings,
        )
        .unwrap();
        Some(World {
            name,
            table,
            primary,
            replica,
        })
    }

    fn scope(&self, read_only: bool) -> Transactional {
        Transactional::new()
            .data_source(self.name)
            .read_only(read_only)
    }

    async fn insert(&self, id: i64) -> Result<(), transactional::Error> {
        let mut conn = transactional::data_source(self.name)
            .connection::<sqlx::Postgres>()
            .await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} VALUES ({id})",
            self.table
        )))
        .await?;
        Ok(())
    }

    /// Whether the current transaction runs on the replica, and the rows it sees.
    async fn look(&self) -> Result<(bool, i64), transactional::Error> {
        let mut conn = transactional::data_source(self.name)
            .connection::<sqlx::Postgres>()
            .await?;
        let sql = format!("SELECT pg_is_in_recovery(), COUNT(*) FROM {}", self.table);
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?)
    }

    /// A read-only transaction's look.
    async fn read(&self) -> (bool, i64) {
        self.scope(true).run(self.look()).await.unwrap()
    }

    /// Commits `id`.
    async fn write(&self, id: i64) {
        self.scope(false).run(self.insert(id)).await.unwrap();
    }

    /// Reads until one runs on the replica (within 10 s); every read sees `rows`.
    async fn read_on_replica(&self, rows: i64) {
        for _ in 0..500 {
            let (on_replica, seen) = self.read().await;
            assert_eq!(
                seen, rows,
                "never a stale read (on the replica: {on_replica})"
            );
            if on_replica {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no read-only transaction reached the replica within 10 s");
    }
}

/// Runs `fut` with the replica's replay paused, and resumes replay whatever `fut` did (its
/// panic is returned, for the caller to resume after its own clean-up).
async fn paused_replay<T>(
    replica: &PgPool,
    fut: impl std::future::Future<Output = T>,
) -> std::thread::Result<T> {
    replica
        .execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let ran = AssertUnwindSafe(fut).catch_unwind().await;
    replica
        .execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    ran
}

impl Drop for World {
    fn drop(&mut self) {
        transactional::deregister(self.name);
        let (primary, table) = (self.primary.clone(), self.table.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = primary
                    .execute(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                    .await;
            });
        }
    }
}

/// Read-only transactions go to the replica once it has replayed this process's commits,
/// and see them; read-write ones, read-only ones joining a read-write transaction and
/// serializable ones stay on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing() {
    let _turn = TURN.lock().await;
    let Some(w) = World::new("routing", None).await else {
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
    assert!(
        !on_replica,
        "a hot standby refuses SERIALIZABLE: the primary"
    );
}

/// With the replica's replay paused, a read after a write goes to the primary and sees it:
/// never the replica's stale rows. Once replay resumes, reads return to the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_with_replay_paused() {
    let _turn = TURN.lock().await;
    let Some(w) = World::new("ryw", None).await else {
        return;
    };
    w.write(1).await;
    w.read_on_replica(1).await;
    let paused = paused_replay(&w.replica, async {
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_after_a_position_from_another_instance() {
    let _turn = TURN.lock().await;
    let Some(w) = World::new("carried", None).await else {
        return;
    };
    let other: &'static str = Box::leak(format!("{}_other", w.name).into_boxed_str());
    let settings = ReplicaSettings::new().check_every(Duration::from_millis(20));
    transactional::register_with_replicas(
        other,
        w.primary.clone(),
        vec![w.replica.clone()],
        settings,
    )
    .unwrap();
    assert_eq!(transactional::commit_position(other).unwrap(), None);
    w.write(1).await;
    w.read_on_replica(1).await;
    let paused = paused_replay(&w.replica, async {
        // The other instance commits, and hands its position out (a cookie, a header).
        Transactional::new()
            .data_source(other)
            .run(async {
                let mut conn = transactional::data_source(other)
                    .connection::<sqlx::Postgres>()
                    .await?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {} VALUES (2)",
                    w.table
                )))
                .await?;
                Ok::<_, transactional::Error>(())
            })
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_skipped() {
    let _turn = TURN.lock().await;
    let Some(w) = World::new("lag", None).await else {
        return;
    };
    let lagging: &'static str = Box::leak(format!("{}_lag", w.name).into_boxed_str());
    let settings = ReplicaSettings::new()
        .check_every(Duration::from_millis(20))
        .max_lag(Some(Duration::from_millis(200)));
    transactional::register_with_replicas(
        lagging,
        w.primary.clone(),
        vec![w.replica.clone()],
        settings,
    )
    .unwrap();
    let read = || async {
        Transactional::new()
            .data_source(lagging)
            .read_only(true)
            .run(async {
                let mut conn = transactional::data_source(lagging)
                    .connection::<sqlx::Postgres>()
                    .await?;
                let sql = format!("SELECT pg_is_in_recovery(), COUNT(*) FROM {}", w.table);
                Ok::<(bool, i64), transactional::Error>(
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .fetch_one(&mut *conn)
                        .await?,
                )
            })
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
    let paused = paused_replay(&w.replica, async {
        // Written behind the library's back: no commit of this instance to wait for.
        w.primary
            .execute(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {} VALUES (7)",
                w.table
            )))
            .await
            .unwrap();
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
/// completes: no session is left in a transaction on either server, and the next read works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_at_every_poll() {
    let _turn = TURN.lock().await;
    let upstream = url(
        "TEST_POSTGRES_REPLICA_URL",
        "postgres://postgres@127.0.0.1:5433/test",
    );
    let sep = if upstream.contains('?') { '&' } else { '?' };
    let app = format!("replica_drops_{}", std::process::id());
    let Some(w) = World::new(
        "drops",
        Some(format!("{upstream}{sep}application_name={app}")),
    )
    .await
    else {
        return;
    };
    w.write(1).await;
    w.read_on_replica(1).await;
    let idle_in_transaction = || async {
        let sql = format!(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{app}' \
             AND state LIKE 'idle in transaction%'"
        );
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .fetch_one(&w.replica)
            .await
            .unwrap()
    };
    let mut completed = None;
    for k in 1..200 {
        let read = w.scope(true).run(async {
            let (on_replica, seen) = w.look().await?;
            let mut conn = transactional::data_source(w.name)
                .connection::<sqlx::Postgres>()
                .await?;
            conn.execute("SELECT pg_sleep(0.01)").await?;
            Ok::<_, transactional::Error>((on_replica, seen))
        });
        if let Some(done) = poll_at_most(read, k).await {
            assert_eq!(done.unwrap().1, 1);
            completed = Some(k);
            break;
        }
        for _ in 0..100 {
            if idle_in_transaction().await == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            idle_in_transaction().await,
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_down_reads_keep_succeeding() {
    let _turn = TURN.lock().await;
    let upstream = url(
        "TEST_POSTGRES_REPLICA_URL",
        "postgres://postgres@127.0.0.1:5433/test",
    );
    let port_of = |u: &str| -> u16 {
        let host = u.split('@').next_back().unwrap();
        host.split(['/', '?'])
            .next()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    let proxy = Cut::start(port_of(&upstream)).await;
    let through = upstream.replacen(
        &format!(":{}", port_of(&upstream)),
        &format!(":{}", proxy.port),
        1,
    );
    let Some(w) = World::new("down", Some(format!("{through}?sslmode=disable"))).await else {
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

/// A TCP proxy to `127.0.0.1:upstream` that can be cut: while down it closes every
/// connection and refuses new ones.
struct Cut {
    port: u16,
    down: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Cut {
    async fn start(upstream: u16) -> Cut {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(tokio::sync::watch::channel(false).0);
        let watch = down.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if *watch.borrow() {
                    continue; // dropped: closed at once
                }
                let mut cut = watch.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Cut { port, down }
    }

    fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}
