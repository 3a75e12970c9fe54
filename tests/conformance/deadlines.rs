//! `timeout` is a hard deadline (docs/SEMANTICS.md, "Deadlines"): at the deadline the running
//! statement is cancelled on the server (PostgreSQL `pg_cancel_backend`, MySQL `KILL QUERY`,
//! SQLite's interrupt), the transaction rolled back, and `Error::Timeout` returned promptly;
//! before-commit hooks count against it; the connection is never pooled dirty.

use std::time::{Duration, Instant};

use transactional::{Propagation::*, Transactional};

use crate::common::{AppError, AppResult, Log};
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
