//! Races between deadlines, cancellation and the end of a scope, made wide on purpose: a
//! proxy that delays every new connection (a remote or loaded server) slows the statement
//! cancel sent at a deadline; a scope is dropped while a before-commit hook or a long statement
//! runs; a connection request is dropped while its BEGIN is in flight. Each checks that rows,
//! outcomes, hooks and the pool still agree (docs/SEMANTICS.md, "Deadlines", "Cancellation").

mod common;

use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::Database;
use transactional::{Propagation::*, Transactional};

use common::{through_proxy, AppError, AppResult, Env, Log, My, Pg, TestDb};

/// A TCP proxy in front of the test's server for `D` (its URL, as every test reaches it) that
/// holds every new connection for `delay` before connecting it: a database whose new
/// connections are slow (a remote server, a loaded one, TLS). Returns the URL through it.
async fn slow_connect_proxy<D: TestDb>(delay: Duration) -> String {
    let (upstream, url) = through_proxy(&D::url(std::path::Path::new(""), "races"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    url.replace("{port}", &port.to_string())
}

/// A NESTED scope that times out while its statement cancel is slow to arrive returns
/// `Timeout` once the grace period is over; its rollback goes on by itself, and the outer
/// scope, going on and committing, never commits the NESTED scope's rows.
async fn nested_timeout_with_slow_cancel_commits_the_nested_rows<D: TestDb>(connect_delay: Duration)
where
    for<'c> &'c mut <D::DB as Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let env = Env::<D>::new("review_nested_slow_cancel").await.unwrap();
    let url = slow_connect_proxy::<D>(connect_delay).await;
    let log = Log::default();
    let pool = PoolOptions::<D::DB>::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let r: AppResult<AppResult<()>> = transactional::with_data_source(
        "default",
        pool.clone(),
        Transactional::new().run(async {
            env.insert(1).await?;
            let nested: AppResult<()> = Transactional::new()
                .propagation(Nested)
                .timeout(Duration::from_millis(300))
                .run(async {
                    let mut conn = transactional::connection::<D::DB>().await?;
                    D::exec(
                        &mut conn,
                        format!("INSERT INTO {} (id) VALUES (2)", env.table),
                    )
                    .await?;
                    log.record("nested").await;
                    // Holding the guard across some other await (an HTTP call, say).
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    drop(conn);
                    Ok(())
                })
                .await;
            Ok(nested)
        }),
    )
    .await
    .unwrap();
    let nested = r.expect("the outer scope commits");
    assert!(nested.as_ref().unwrap_err().is_timeout(), "{nested:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows = env.ids().await;
    assert_eq!(
        (rows.clone(), log.events()),
        (vec![1], vec![]),
        "the NESTED scope returned Timeout: its row is not committed, and its hooks did not run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_timeout_with_slow_cancel_postgres() {
    nested_timeout_with_slow_cancel_commits_the_nested_rows::<Pg>(Duration::from_millis(300)).await
}

/// The same with new connections that open at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_nested_timeout_with_fast_cancel_postgres() {
    nested_timeout_with_slow_cancel_commits_the_nested_rows::<Pg>(Duration::ZERO).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_timeout_with_slow_cancel_mysql() {
    nested_timeout_with_slow_cancel_commits_the_nested_rows::<My>(Duration::from_millis(300)).await
}

/// A joined scope that times out while its statement cancel is slow to arrive: the owner goes
/// on and rolls back, but its connection goes back to the pool only once the cancel has
/// landed, so a late cancel never hits the next user of that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_late_cancel_hits_the_next_user_of_the_pooled_connection() {
    let env = Env::<Pg>::new("review_late_cancel").await.unwrap();
    let url = slow_connect_proxy::<Pg>(Duration::from_millis(300)).await;
    let pool = PoolOptions::<sqlx::Postgres>::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let r: AppResult<()> = transactional::with_data_source(
        "default",
        pool.clone(),
        Transactional::new().run(async {
            env.insert(1).await?;
            let joined: AppResult<()> = Transactional::new()
                .timeout(Duration::from_millis(300))
                .run(async {
                    let _conn = transactional::connection::<sqlx::Postgres>().await?;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                })
                .await;
            assert!(joined.unwrap_err().is_timeout());
            Ok(())
        }),
    )
    .await
    .unwrap();
    assert!(r.unwrap_err().is_unexpected_rollback());
    // Another request now uses the pool (its only connection: the same session).
    let mut conn = pool.acquire().await.unwrap();
    let other = Pg::exec(&mut conn, "SELECT pg_sleep(1)".into()).await;
    assert!(
        other.is_ok(),
        "an unrelated statement on the pooled connection was cancelled: {other:?}"
    );
}

/// A scope dropped while its before-commit hook runs: the hook goes on (on a task of its own)
/// inside the transaction, and the transaction then rolls back, since COMMIT had not been
/// sent: nothing is committed, the hook's writes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_a_before_commit_hook_loses_its_transaction_when_the_scope_is_dropped() {
    let env = Env::<Pg>::new("review_before_commit_ctx").await.unwrap();
    let name: &'static str =
        Box::leak(format!("review_bc_{}", std::process::id()).into_boxed_str());
    transactional::register(name, env.pool.clone()).unwrap();
    let seen = Log::default();
    let table = env.table.clone();
    let s = seen.clone();
    let scope = Transactional::new().data_source(name).run(async move {
        let mut conn = transactional::data_source(name)
            .connection::<sqlx::Postgres>()
            .await?;
        Pg::exec(&mut conn, format!("INSERT INTO {table} (id) VALUES (1)")).await?;
        drop(conn);
        transactional::data_source(name)
            .before_commit(move || async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut conn = transactional::data_source(name)
                    .connection::<sqlx::Postgres>()
                    .await
                    .map_err(|e| e.to_string())?;
                s.push(format!("hook in transaction: {}", conn.in_transaction()));
                Pg::exec(&mut conn, format!("INSERT INTO {table} (id) VALUES (2)"))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            })
            .await?;
        AppResult::Ok(())
    });
    // Dropped while the before-commit hook sleeps.
    assert!(tokio::time::timeout(Duration::from_millis(100), scope)
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        (env.ids().await, seen.events()),
        (vec![], vec!["hook in transaction: true".to_string()]),
        "the scope was dropped before COMMIT: nothing may be committed, and the hook runs in it"
    );
}

/// A NESTED scope dropped while its statement runs: the statement is cancelled on the server,
/// the savepoint rolled back to, and the outer transaction goes on at once with its own work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_a_dropped_nested_scope_with_a_slow_statement_breaks_the_outer_transaction() {
    let env = Env::<Pg>::new("review_nested_slow_drop").await.unwrap();
    let r: AppResult<()> = env
        .run(Transactional::new().run(async {
            env.insert(1).await?;
            let nested = Transactional::new().propagation(Nested).run(async {
                env.insert(2).await?;
                env.exec_current(Pg::slow_statement(7)).await
            });
            let _ = tokio::time::timeout(Duration::from_millis(200), nested).await;
            env.insert(3).await
        }))
        .await;
    assert!(r.is_ok(), "the outer transaction should go on: {r:?}");
    assert_eq!(env.ids().await, [1, 3]);
}

/// A connection request dropped while its BEGIN runs: the BEGIN finishes on its own and the
/// connection goes back to the transaction, never mistaken for a guard that outlived its scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_a_detached_prepare_is_taken_for_an_outliving_guard() {
    let env = Env::<Pg>::new("review_prepare_race").await.unwrap();
    let mut hits = 0;
    let mut other = Vec::new();
    for n in 0..3000u64 {
        let r: AppResult<()> = env
            .run(Transactional::new().run(async {
                let _ = common::poll_at_most(env.insert(n as i64), 1).await;
                for _ in 0..(n % 300) {
                    tokio::task::yield_now().await;
                }
                Ok(())
            }))
            .await;
        match r {
            Ok(()) => {}
            Err(AppError::Tx(transactional::Error::GuardOutlivedScope { .. })) => hits += 1,
            Err(e) => other.push(format!("{e:?}")),
        }
    }
    eprintln!("GuardOutlivedScope: {hits}; other errors: {other:?}");
    assert_eq!(hits, 0, "spurious GuardOutlivedScope");
}
