//! Database faults: the backend of a running transaction killed, a COMMIT refused by the
//! server, the server going away and coming back (a proxy that cuts every connection and
//! refuses new ones for a while, as a restart does). Each call ends promptly with an error or
//! its result, hooks match what the server did, and the pool recovers.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use transactional::Propagation::*;

use common::hook_support::observe;
use common::{scope, through_proxy, AppError, AppResult, Env, Lite, Log, My, Pg, TestDb};

/// Kills the server session `session` from another connection, and waits until it is gone.
async fn kill<D: TestDb>(env: &Env<D>, session: i64) {
    let mut conn = env.observer.acquire().await.unwrap();
    if D::NAME == "postgres" {
        // With a timeout, pg_terminate_backend returns once the backend has exited.
        let sql = format!("SELECT pg_terminate_backend({session}, 5000)");
        D::exec(&mut conn, sql).await.unwrap();
        return;
    }
    D::exec(&mut conn, format!("KILL {session}")).await.unwrap();
    let alive = format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {session}");
    for _ in 0..100 {
        if D::scalar(&mut conn, alive.clone()).await.unwrap() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{}: session {session} still alive 5 s after KILL", D::NAME);
}

/// The backend is killed while the body runs: its next statement fails, the call returns
/// within a second, the hooks see a rollback, and the pool replaces the dead connection.
async fn killed_backend<D: TestDb>(commit_after_kill: bool)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let Some(env) = Env::<D>::with_pool("killed_backend", 3, Duration::from_secs(5)).await else {
        return;
    };
    let log = Log::default();
    let (session_tx, session_rx) = tokio::sync::oneshot::channel();
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let call = env.run(scope(Required).run(async {
        env.insert(1).await?;
        log.record("victim").await;
        session_tx.send(env.session().await?).unwrap();
        killed_rx.await.unwrap();
        if !commit_after_kill {
            env.insert(2).await?;
        }
        Ok::<_, AppError>(())
    }));
    let killer = async {
        let session = session_rx.await.unwrap();
        kill(&env, session).await;
        // The session is gone; give its socket's close a moment to reach the client.
        tokio::time::sleep(Duration::from_millis(50)).await;
        killed_tx.send(()).unwrap();
        Instant::now()
    };
    let (r, killed_at) = tokio::join!(call, killer);
    let took = killed_at.elapsed();
    assert!(r.is_err(), "{}: the call fails: {r:?}", D::NAME);
    assert!(
        took < Duration::from_secs(1),
        "{}: returned after {took:?}",
        D::NAME
    );
    env.eventually("the hooks have run", || async {
        !log.of("victim").is_empty()
    })
    .await;
    let hooks = log.of("victim");
    assert!(
        hooks.iter().all(|h| !h.contains("after_commit")),
        "{}: no after-commit hook: {hooks:?}",
        D::NAME
    );
    // Killed before a statement, the statement fails: a rollback. Killed before COMMIT, the
    // COMMIT fails: PostgreSQL says why before it closes the session (a rollback); MySQL just
    // closes it, and a COMMIT without an answer is reported as an unknown outcome, never as a
    // commit.
    let rolled_back = hooks.iter().any(|h| h.starts_with("after_rollback"));
    let unknown = hooks.iter().any(|h| h == "after_completion Unknown");
    assert!(
        rolled_back || (commit_after_kill && D::NAME == "mysql" && unknown),
        "{}: the hooks see a rollback: {hooks:?}",
        D::NAME
    );
    assert!(
        env.ids().await.is_empty(),
        "{}: nothing of it committed",
        D::NAME
    );

    // The pool replaces the dead connection: the next calls succeed.
    for id in 10..15 {
        let r: AppResult<()> = env.run(scope(Required).run(env.insert(id))).await;
        r.unwrap();
    }
    assert_eq!(env.ids().await, [10, 11, 12, 13, 14]);
    assert!(env.pool_is_clean().await, "{}: the pool is clean", D::NAME);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_the_next_statement_postgres() {
    killed_backend::<Pg>(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_the_next_statement_mysql() {
    killed_backend::<My>(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_the_commit_postgres() {
    killed_backend::<Pg>(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_the_commit_mysql() {
    killed_backend::<My>(true).await;
}

/// COMMIT refused by the server (a deferred constraint): the call returns the error, the
/// after-commit hooks do not run, the after-rollback hooks do, nothing is kept.
async fn commit_refused<D: TestDb>(setup: &[&str], statements: &[&str])
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let Some(env) = Env::<D>::new("commit_refused").await else {
        return;
    };
    let table = |sql: &str| sql.replace("{t}", &env.table);
    for sql in setup {
        observe(&env, table(sql)).await;
    }
    let log = Log::default();
    let r: AppResult<()> = env
        .run(scope(Required).run(async {
            log.record("refused").await;
            for sql in statements {
                env.exec_current(table(sql)).await?;
            }
            Ok(())
        }))
        .await;
    let error = r.unwrap_err();
    assert!(
        matches!(
            error.tx(),
            transactional::Error::Commit {
                outcome_unknown: false,
                ..
            }
        ),
        "{}: {error:?}",
        D::NAME
    );
    assert_eq!(
        log.of("refused"),
        ["after_rollback CommitFailed", "after_completion RolledBack"],
        "{}",
        D::NAME
    );
    let mut conn = env.observer.acquire().await.unwrap();
    let kept = D::scalar(&mut conn, table("SELECT COUNT(*) FROM {t}_child"))
        .await
        .unwrap();
    assert_eq!(kept, 0, "{}", D::NAME);
    drop(conn);
    assert!(env.pool_is_clean().await);
    for sql in ["DROP TABLE {t}_child", "DROP TABLE {t}_parent"] {
        observe(&env, table(sql)).await;
    }
}

/// A foreign key checked only at COMMIT (PostgreSQL and SQLite have them; MariaDB does not).
const DEFERRED_FK: &[&str] = &[
    "CREATE TABLE {t}_parent (id BIGINT PRIMARY KEY)",
    "CREATE TABLE {t}_child (id BIGINT, parent BIGINT REFERENCES {t}_parent (id) \
     DEFERRABLE INITIALLY DEFERRED)",
];

/// A child without its parent: accepted now, refused at COMMIT.
const ORPHAN: &[&str] = &["INSERT INTO {t}_child (id, parent) VALUES (1, 42)"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_by_a_deferred_constraint_postgres() {
    commit_refused::<Pg>(DEFERRED_FK, ORPHAN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_by_a_deferred_constraint_sqlite() {
    commit_refused::<Lite>(DEFERRED_FK, ORPHAN).await;
}

/// A TCP proxy in front of the server that can "restart" it: cut every connection and refuse
/// new ones for a while.
struct Restartable {
    port: u16,
    up: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Restartable {
    async fn start(upstream: String) -> Restartable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let is_up = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !is_up.load(Ordering::SeqCst) {
                    continue; // refused: dropped at once
                }
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream.as_str()).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Restartable { port, up, cut }
    }

    /// Cuts every connection and refuses new ones for `down`.
    async fn restart(&self, down: Duration) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
        tokio::time::sleep(down).await;
        self.up.store(true, Ordering::SeqCst);
    }
}

/// The server restarts between two calls: the next call fails cleanly or succeeds, nothing
/// hangs, the calls after it succeed; while it is down for longer than the acquire timeout, a
/// call fails within that timeout.
async fn server_restart<D: TestDb>()
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let Some(env) = Env::<D>::new("server_restart").await else {
        return;
    };
    // The test's server (its URL, as every test reaches it), through the proxy.
    let (upstream, url) = through_proxy(&D::url(std::path::Path::new(""), "server_restart"));
    let proxy = Restartable::start(upstream).await;
    let url = url.replace("{port}", &proxy.port.to_string());
    let pool = sqlx::pool::PoolOptions::<D::DB>::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .unwrap();
    let call = |id: i64| {
        let (pool, env) = (pool.clone(), &env);
        async move {
            let call = transactional::with_data_source(
                "default",
                pool,
                scope(Required).run(async move {
                    env.insert(id).await?;
                    Ok::<_, AppError>(())
                }),
            );
            tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("a call never hangs")
                .unwrap()
        }
    };
    call(1).await.unwrap();
    proxy.restart(Duration::from_millis(300)).await;
    let after = call(2).await;
    eprintln!("{}: the first call after the restart: {after:?}", D::NAME);
    for id in 3..6 {
        call(id).await.unwrap();
    }
    let mut expected = vec![1, 3, 4, 5];
    if after.is_ok() {
        expected.insert(1, 2);
    }
    assert_eq!(env.ids().await, expected, "{}", D::NAME);

    // Down for longer than the acquire timeout: the call fails within it (and a margin).
    proxy.up.store(false, Ordering::SeqCst);
    proxy.cut.send_modify(|n| *n += 1);
    let started = Instant::now();
    let down = call(10).await;
    assert!(down.is_err(), "{}: {down:?}", D::NAME);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    proxy.up.store(true, Ordering::SeqCst);
    call(11).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_between_calls_postgres() {
    server_restart::<Pg>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_between_calls_mysql() {
    server_restart::<My>().await;
}
