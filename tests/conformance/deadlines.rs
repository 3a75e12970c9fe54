//! `timeout` is a hard deadline (docs/SEMANTICS.md, "Deadlines"): at the deadline the running
//! statement is cancelled on the server (PostgreSQL `pg_cancel_backend`, MySQL `KILL QUERY`,
//! SQLite's interrupt), the transaction rolled back, and `Error::Timeout` returned promptly;
//! before-commit hooks count against it; the connection is never pooled dirty.

use std::time::{Duration, Instant};

use transactional::{Propagation::*, Transactional};

use crate::common::{AppError, AppResult, Env, Log, My, Pg, TestDb};
use crate::conformance;

fn timed(p: transactional::Propagation, ms: u64) -> Transactional {
    Transactional::new()
        .propagation(p)
        .timeout(Duration::from_millis(ms))
}

/// How long past the deadline a call may return on a loaded CI machine (the aim on a healthy
/// server is under 100 ms; the tests print what they measured).
const SLACK: Duration = Duration::from_millis(700);

fn assert_prompt(test: &str, started: Instant, deadline: Duration) {
    let took = started.elapsed();
    eprintln!(
        "{test}: returned {:?} after the deadline",
        took.saturating_sub(deadline)
    );
    assert!(
        took < deadline + SLACK,
        "{test}: took {took:?} for a {deadline:?} deadline"
    );
}

conformance! {
    /// A statement still running at the deadline is cancelled on the server: the call returns
    /// `Timeout` within moments of the deadline, nothing is committed, no session is left in a
    /// transaction, and the pool is clean and idle.
    async fn a_running_statement_is_cancelled_at_the_deadline(env: Env<D>, pool(2, Duration::from_secs(5))) {
        let log = Log::default();
        let started = Instant::now();
        let r: AppResult<()> = env.run(timed(Required, 500).run(async {
            env.insert(1).await?;
            log.record("scope").await;
            env.exec_current(D::slow_statement(5)).await
        })).await;
        assert_prompt(D::NAME, started, Duration::from_millis(500));
        assert!(r.as_ref().unwrap_err().is_timeout(), "{r:?}");
        env.eventually("the pool is idle and clean", || async { env.pool_is_idle() && env.pool_is_clean().await }).await;
        assert!(env.ids().await.is_empty());
        assert_eq!(log.of("scope"), ["after_rollback Timeout", "after_completion RolledBack"]);
        // The connection is usable again.
        let r: AppResult<()> = env.run(Transactional::new().run(env.insert(2))).await;
        r.unwrap();
        assert_eq!(env.ids().await, [2]);
    }
}

conformance! {
    /// A REQUIRES_NEW scope with a timeout, blocked on a row lock held by the very transaction
    /// it suspended, returns `Timeout` at its deadline; the outer transaction goes on and
    /// commits. (Not on SQLite: its one writer makes the inner write wait for `busy_timeout`,
    /// which no interrupt shortens.)
    async fn requires_new_blocked_by_the_suspended_transaction_times_out(env: Env<D>) {
        if D::SINGLE_WRITER {
            return;
        }
        let started = Instant::now();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            env.insert(1).await?;
            let inner: AppResult<()> = timed(RequiresNew, 400).run(env.insert(1)).await;
            assert!(inner.unwrap_err().is_timeout());
            env.insert(2).await
        })).await;
        r.unwrap();
        assert_prompt(D::NAME, started, Duration::from_millis(400));
        assert_eq!(env.ids().await, [1, 2]);
        env.eventually("the pool is idle and clean", || async { env.pool_is_idle() && env.pool_is_clean().await }).await;
    }
}

conformance! {
    /// Before-commit hooks count against the deadline: a slow one makes the scope roll back
    /// with `Timeout` instead of committing late.
    async fn before_commit_hooks_count_against_the_deadline(env: Env<D>) {
        let started = Instant::now();
        let r: AppResult<()> = env.run(timed(Required, 300).run(async {
            env.insert(1).await?;
            transactional::before_commit(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, std::io::Error>(())
            }).await?;
            Ok(())
        })).await;
        assert_prompt(D::NAME, started, Duration::from_millis(300));
        assert!(r.unwrap_err().is_timeout());
        assert!(env.ids().await.is_empty());
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}

conformance! {
    /// A timeout past the end of time (`Duration::MAX`) means no deadline; it does not panic.
    async fn a_timeout_past_the_end_of_time_is_no_deadline(env: Env<D>) {
        let r: AppResult<()> = env.run(Transactional::new().timeout(Duration::MAX).run(env.insert(1))).await;
        r.unwrap();
        assert_eq!(env.ids().await, [1]);
    }
}

conformance! {
    /// A joined scope's deadline cancels its own statement and marks the transaction
    /// rollback-only: the owner then gets `UnexpectedRollback`, and nothing is committed.
    async fn a_joined_scope_that_times_out_marks_the_transaction(env: Env<D>) {
        let started = Instant::now();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            env.insert(1).await?;
            let joined: AppResult<()> = timed(Required, 300).run(env.exec_current(D::slow_statement(5))).await;
            assert!(joined.unwrap_err().is_timeout());
            assert!(transactional::is_rollback_only());
            Ok(())
        })).await;
        assert_prompt(D::NAME, started, Duration::from_millis(300));
        assert!(r.unwrap_err().is_unexpected_rollback());
        assert!(env.ids().await.is_empty());
        env.eventually("the pool is idle and clean", || async { env.pool_is_idle() && env.pool_is_clean().await }).await;
    }
}

conformance! {
    /// A NESTED scope's deadline cancels its statement and rolls back to its savepoint; the
    /// outer transaction goes on and commits its own work. (The slow statement only reads: on
    /// SQLite an interrupted write rolls the whole transaction back.)
    async fn a_nested_scope_that_times_out_rolls_back_to_its_savepoint(env: Env<D>) {
        let started = Instant::now();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            env.insert(1).await?;
            let nested: AppResult<()> = timed(Nested, 300).run(async {
                env.insert(2).await?;
                env.exec_current(D::slow_statement(5)).await
            }).await;
            assert!(nested.unwrap_err().is_timeout());
            env.insert(3).await
        })).await;
        assert_prompt(D::NAME, started, Duration::from_millis(300));
        r.unwrap();
        assert_eq!(env.ids().await, [1, 3]);
        env.eventually("the pool is idle and clean", || async { env.pool_is_idle() && env.pool_is_clean().await }).await;
    }
}

conformance! {
    /// Options that can never apply are refused before the body runs: a scope that never
    /// begins a transaction cannot have an isolation level, be read-only, or time out.
    async fn options_that_cannot_apply_are_refused(env: Env<D>) {
        for p in [Never, NotSupported, Supports] {
            for tx in [
                Transactional::new().propagation(p).timeout(Duration::from_secs(1)),
                Transactional::new().propagation(p).read_only(true),
                Transactional::new().propagation(p).isolation(transactional::Isolation::Serializable),
            ] {
                let r: AppResult<()> = env.run(tx.run(async { Err(AppError::Boom("the body ran")) })).await;
                assert!(matches!(r, Err(AppError::Tx(transactional::Error::InvalidOptions { .. }))), "{p}: {r:?}");
            }
        }
    }
}

/// The session id behind the current connection (MySQL, PostgreSQL).
async fn session<D: TestDb>() -> AppResult<i64>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let mut conn = transactional::connection::<D::DB>().await?;
    Ok(D::session_id(&mut conn).await?)
}

/// MariaDB: a 500 ms deadline over an INSERT then `SELECT SLEEP(5)`, in each shape a scope
/// can have: within a second of the deadline the SLEEP is stopped and the session has no
/// InnoDB transaction left (`information_schema.INNODB_TRX`), so no lock outlives the call;
/// nothing of the timed-out work is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_stops_the_statement_and_its_transaction_at_the_deadline() {
    let Some(env) = Env::<My>::with_pool("deadline_trx", 2, Duration::from_secs(5)).await else {
        return;
    };
    let table = env.table.clone();
    for shape in ["one guard", "one round trip", "joined", "nested"] {
        env.observe(format!("DELETE FROM {table}")).await;
        let sid = std::sync::atomic::AtomicI64::new(0);
        let body = async {
            sid.store(session::<My>().await?, std::sync::atomic::Ordering::SeqCst);
            let mut conn = transactional::connection::<sqlx::MySql>().await?;
            if shape == "one round trip" {
                let sql = format!("INSERT INTO {table} (id) VALUES (1); SELECT SLEEP(5)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await?;
            } else {
                let sql = format!("INSERT INTO {table} (id) VALUES (1)");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("SELECT SLEEP(5)").execute(&mut *conn).await?;
            }
            Ok::<_, AppError>(())
        };
        let started = Instant::now();
        let r: AppResult<()> = match shape {
            "joined" | "nested" => {
                let inner = if shape == "nested" { Nested } else { Required };
                env.run(Transactional::new().run(async {
                    let timed_out = timed(inner, 500).run(body).await;
                    assert!(timed_out.unwrap_err().is_timeout(), "{shape}");
                    env.insert(2).await
                }))
                .await
            }
            _ => env.run(timed(Required, 500).run(body)).await,
        };
        assert_prompt(shape, started, Duration::from_millis(500));
        match shape {
            "joined" => assert!(r.as_ref().unwrap_err().is_unexpected_rollback(), "{r:?}"),
            "nested" => r.unwrap(),
            _ => assert!(r.unwrap_err().is_timeout(), "{shape}"),
        }
        let sid = sid.load(std::sync::atomic::Ordering::SeqCst);
        let deadline = started + Duration::from_millis(500);
        tokio::time::sleep_until((deadline + Duration::from_secs(1)).into()).await;
        let mut observer = env.observer.acquire().await.unwrap();
        let running = My::scalar(&mut observer, format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {sid} AND INFO LIKE '%SLEEP%'"
        )).await.unwrap();
        let open = My::scalar(
            &mut observer,
            format!(
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = {sid}"
        ),
        )
        .await
        .unwrap();
        assert_eq!(
            (running, open),
            (0, 0),
            "{shape}: 1 s after the deadline, session {sid}: SLEEP running, transaction open"
        );
        let kept = if shape == "nested" { vec![2] } else { vec![] };
        assert_eq!(env.ids().await, kept, "{shape}");
    }
    env.eventually("the pool is idle and clean", || async {
        env.pool_is_idle() && env.pool_is_clean().await
    })
    .await;
}

/// PostgreSQL: a statement that ignores its cancel (it catches `query_canceled` and sleeps
/// again) is stopped by ending its session: shortly after the deadline no session of the
/// test is busy or in a transaction, nothing is committed, and the pool still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_ignores_its_cancel_loses_its_session() {
    let Some(env) = Env::<Pg>::with_pool("deadline_stuck", 2, Duration::from_secs(5)).await else {
        return;
    };
    let stubborn = "DO $$ BEGIN FOR i IN 1..3 LOOP BEGIN PERFORM pg_sleep(2); \
                    EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$";
    let started = Instant::now();
    let r: AppResult<()> = env
        .run(timed(Required, 300).run(async {
            env.insert(1).await?;
            env.exec_current(stubborn.into()).await
        }))
        .await;
    assert_prompt("postgres", started, Duration::from_millis(300));
    assert!(r.unwrap_err().is_timeout());
    tokio::time::sleep_until((started + Duration::from_millis(1800)).into()).await;
    let mut observer = env.observer.acquire().await.unwrap();
    let busy = Pg::scalar(
        &mut observer,
        format!(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = '{}' AND state <> 'idle' \
         AND pid <> pg_backend_pid()",
        env.table
    ),
    )
    .await
    .unwrap();
    drop(observer);
    assert_eq!(
        busy, 0,
        "1.5 s after the deadline a session of the test is still busy"
    );
    assert!(env.ids().await.is_empty());
    let r: AppResult<()> = env.run(Transactional::new().run(env.insert(2))).await;
    r.unwrap();
    assert_eq!(env.ids().await, [2]);
    env.eventually("the pool is clean", || env.pool_is_clean())
        .await;
}
