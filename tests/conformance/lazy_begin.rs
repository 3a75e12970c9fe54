//! Lazy begin (docs/SEMANTICS.md, "Lazy begin"): a scope takes its connection and sends BEGIN
//! when its code first asks for the connection. Until then it holds nothing another scope could
//! need, and its hooks follow the usual rules.

use std::time::{Duration, Instant};

use transactional::Propagation::*;

use crate::common::{scope, AppError, AppResult, Log};
use crate::conformance;

conformance! {
    /// A scope that never asks for the connection holds none: with a pool of one, a caller
    /// outside the library gets the connection at once while the scope runs. It still ends as
    /// a transaction: its after-commit hooks run, with `Committed`.
    async fn a_scope_that_touches_no_table_holds_no_connection(env: Env<D>, pool(1, Duration::from_secs(5))) {
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            log.record("idle").await;
            assert!(transactional::is_active(), "a transaction scope, though nothing began yet");
            let started = Instant::now();
            let raw = env.raw().await;
            // (It would otherwise wait the pool's whole acquire timeout, 5 s.)
            assert!(started.elapsed() < Duration::from_secs(2), "the pool's only connection was free");
            drop(raw);
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(log.of("idle"), ["after_commit", "after_completion Committed"]);
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// ... and an `Err` from it rolls back as usual: its after-rollback hooks run.
    async fn a_scope_that_touches_no_table_rolls_back_on_err(env: Env<D>) {
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            log.record("idle").await;
            Err(AppError::Boom("nothing written"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        let hooks = log.of("idle");
        assert_eq!(hooks.len(), 2, "{hooks:?}");
        assert!(hooks[0].starts_with("after_rollback"), "{hooks:?}");
        assert_eq!(hooks[1], "after_completion RolledBack");
    }
}

conformance! {
    /// A REQUIRED outer that has not queried yet holds no connection, so a REQUIRES_NEW inner
    /// gets the pool's only one; the outer takes it once the inner has given it back. Both
    /// commit, each in its own transaction.
    async fn requires_new_before_the_outer_queries_needs_no_second_connection(env: Env<D>, pool(1, Duration::from_secs(2))) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let inner: AppResult<()> = scope(RequiresNew).run(env.insert(1)).await;
            inner?;
            assert_eq!(env.ids().await, [1], "the inner committed on its own");
            env.insert(2).await
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, [1, 2]);
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// A burst: 50 concurrent requests on a pool of 10, each writing an audit row in a
    /// REQUIRES_NEW scope before its own work. No request holds two connections at once, so
    /// none waits for another's: all 50 commit (with BEGIN taken eagerly, the outers would hold
    /// every connection their audits need).
    async fn a_burst_with_an_audit_write_first_never_starves_the_pool(env: Env<D>, pool(10, Duration::from_secs(10))) {
        let env = &env;
        let requests = (0..50).map(|i| {
            env.run(scope(Required).run(async move {
                let audit: AppResult<()> = scope(RequiresNew).run(env.insert(1000 + i)).await;
                audit?;
                env.insert(i).await
            }))
        });
        let results: Vec<AppResult<()>> = futures_util::future::join_all(requests).await;
        let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        assert!(failed.is_empty(), "{} of 50 failed: {failed:?}", failed.len());
        assert_eq!(env.ids().await.len(), 100);
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// The body gives up waiting for its first connection (the pool is exhausted) and
    /// returns: the scope ends at once, with nothing sent, instead of waiting for the acquire
    /// it abandoned (the pool's acquire timeout, 3 s here) — within its deadline when it has
    /// one. The connection the abandoned acquire gets later goes straight back to the pool.
    async fn a_scope_does_not_wait_for_an_acquire_its_body_abandoned(env: Env<D>, pool(1, Duration::from_secs(3))) {
        let held = env.raw().await;
        for timeout in [None, Some(Duration::from_millis(500))] {
            let log = Log::default();
            let tx = match timeout {
                Some(t) => scope(Required).timeout(t),
                None => scope(Required),
            };
            let started = Instant::now();
            let r: AppResult<()> = env.run(tx.run(async {
                log.record("scope").await;
                let gave_up = tokio::time::timeout(Duration::from_millis(50), env.insert(1)).await;
                assert!(gave_up.is_err(), "the pool's only connection is held");
                Ok(())
            })).await;
            let took = started.elapsed();
            r.unwrap();
            assert!(took < Duration::from_millis(450), "{timeout:?}: the scope took {took:?}");
            assert_eq!(log.of("scope"), ["after_commit", "after_completion Committed"], "nothing was begun: it commits nothing");
        }
        drop(held);
        env.eventually("the pool is idle and clean", || async { env.pool_is_idle() && env.pool_is_clean().await }).await;
        assert!(env.ids().await.is_empty());
        let r: AppResult<()> = env.run(scope(Required).run(env.insert(2))).await;
        r.unwrap();
        assert_eq!(env.ids().await, [2]);
    }
}
