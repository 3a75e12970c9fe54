//! The current transaction travels with the task: suspension and resumption, guards that
//! outlive their scope, concurrency, spawned tasks, the data source `connection()` means
//! (docs/SEMANTICS.md, "The current connection").

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use transactional::{ConnectionGuard, Propagation::*, Transactional};

use crate::common::{scope, AppError, AppResult, Env};
use crate::conformance;

conformance! {
    /// After a REQUIRES_NEW or NOT_SUPPORTED inner scope panics, the outer again sees its own
    /// transaction and connection, and commits.
    async fn outer_resumes_after_an_inner_panic(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            for mode in [RequiresNew, NotSupported] {
                let caught = AssertUnwindSafe(scope(mode).run(async {
                    assert!(transactional::is_active() == (mode == RequiresNew));
                    panic!("inner panics");
                    #[allow(unreachable_code)]
                    AppResult::Ok(())
                }))
                .catch_unwind()
                .await;
                assert!(caught.is_err());
                assert!(transactional::is_active(), "the outer is current again after {mode}");
                assert!(!transactional::is_rollback_only());
                assert_eq!(env.session().await?, outer);
            }
            env.insert(1).await
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// REQUIRES_NEW needs a second connection while the outer holds one. With a pool of one,
    /// the inner begin fails with a clear error within the acquire timeout (no deadlock,
    /// Spring #26250), and the outer is intact and commits.
    async fn requires_new_on_an_exhausted_pool_fails_clearly_and_leaves_the_outer_intact(env: Env<D>, pool(1, Duration::from_millis(500))) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            let started = std::time::Instant::now();
            let inner: AppResult<()> = scope(RequiresNew).run(env.insert(2)).await;
            let waited = started.elapsed();
            assert!(
                waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
                "fails once the acquire timeout (500 ms) is over: {waited:?}"
            );
            let err = inner.unwrap_err();
            let message = err.tx().to_string();
            assert!(matches!(err.tx(), transactional::Error::Acquire { .. }), "{err:?}");
            assert!(message.contains("REQUIRES_NEW"), "{message}");
            assert!(transactional::is_active());
            assert_eq!(env.session().await?, outer);
            env.insert(1).await
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// REQUIRES_NEW scopes starving a pool: 8 concurrent calls on a pool of 3, each an outer
    /// transaction that holds a connection while its REQUIRES_NEW scope needs another. Every
    /// call that gets no connection says why, whether it failed in an inner scope or at an
    /// outer scope's first statement (which waits for connections the suspended transactions
    /// hold).
    async fn a_pool_starved_by_requires_new_says_so_in_every_error(env: Env<D>, pool(3, Duration::from_millis(300))) {
        let env = &env;
        let calls = (0..8).map(|_| scope(Required).run(async move {
            env.visible().await?;
            scope(RequiresNew).run(async {
                env.visible().await?;
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok::<_, AppError>(())
            }).await
        }));
        let results: Vec<AppResult<()>> = env.run(futures_util::future::join_all(calls)).await;
        let mut starved = 0;
        for r in &results {
            if let Err(AppError::Tx(e @ transactional::Error::Acquire { .. })) = r {
                starved += 1;
                assert!(e.to_string().contains("REQUIRES_NEW"), "{e}: {results:?}");
            }
        }
        assert!(starved > 0, "some calls found the pool exhausted: {results:?}");
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}

conformance! {
    /// A guard kept past the end of its scope: the scope fails and rolls back, using the guard
    /// panics with "transaction already finished", and dropping it returns the connection to
    /// the pool outside any transaction.
    async fn a_guard_that_outlives_its_scope_fails_loudly(env: Env<D>, pool(1, Duration::from_secs(5))) {
        let leaked: Arc<Mutex<Option<ConnectionGuard<D::DB>>>> = Arc::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let guard = transactional::connection::<D::DB>().await?;
            *leaked.lock().unwrap() = Some(guard);
            Ok(())
        })).await;
        let err = r.unwrap_err();
        assert!(matches!(err.tx(), transactional::Error::GuardOutlivedScope { .. }), "{err:?}");
        let mut guard = leaked.lock().unwrap().take().unwrap();
        let used = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _conn: &mut <D::DB as sqlx::Database>::Connection = &mut guard;
        }));
        let panic = used.expect_err("using the guard panics");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("transaction already finished"), "{message}");
        drop(guard);
        env.eventually("the connection is back, clean", || env.pool_is_clean()).await;
        assert!(env.ids().await.is_empty(), "nothing was committed");
    }
}

conformance! {
    /// A spawned task starts with no transaction: it autocommits on its own pooled connection
    /// (documented), even when the scope that spawned it rolls back.
    async fn a_spawned_task_starts_without_a_transaction(env: Env<D>) {
        let env = Arc::new(env);
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            let task_env = env.clone();
            let (active, session) = tokio::spawn(async move {
                task_env.run(async {
                    let active = transactional::is_active();
                    task_env.insert(2).await.unwrap();
                    (active, task_env.session().await.unwrap())
                }).await
            }).await.unwrap();
            assert!(!active);
            assert_ne!(session, outer);
            assert_eq!(env.ids().await, vec![2], "the task autocommitted");
            env.insert(1).await?;
            Err(AppError::Boom("the spawning scope rolls back"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(env.ids().await, vec![2]);
    }
}

conformance! {
    /// `join!` inside a scope: both branches share the transaction (its connection serialises
    /// them), and both roll back together.
    async fn joined_futures_share_the_transaction(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            let (a, b) = tokio::join!(
                async { env.insert(1).await?; env.session().await },
                async { env.insert(2).await?; env.session().await },
            );
            assert_eq!(a?, outer);
            assert_eq!(b?, outer);
            assert_eq!(env.visible().await?, 2);
            Err(AppError::Boom("both roll back"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// 200 concurrent tasks, each in its own transaction: none sees another's uncommitted rows
    /// (odd ids always roll back, so no task may ever see an odd id but its own), no two share a
    /// connection at once, and exactly the even ids are committed.
    async fn concurrent_transactions_are_isolated(env: Env<D>, pool(if D::SINGLE_WRITER { 4 } else { 10 }, Duration::from_secs(30))) {
        let env = Arc::new(env);
        let in_use: Arc<Mutex<HashSet<i64>>> = Arc::default();
        let mut tasks = Vec::new();
        for id in 0..200i64 {
            let env = env.clone();
            let in_use = in_use.clone();
            tasks.push(tokio::spawn(async move {
                let r: AppResult<()> = env.clone().run(scope(Required).run(async {
                    env.insert(id).await?;
                    let session = env.session().await?;
                    assert!(in_use.lock().unwrap().insert(session), "a connection shared by two transactions");
                    tokio::task::yield_now().await;
                    let odd_seen = {
                        let mut conn = transactional::connection::<D::DB>().await?;
                        D::scalar(&mut conn, format!("SELECT COUNT(*) FROM {} WHERE id % 2 = 1", env.table)).await?
                    };
                    in_use.lock().unwrap().remove(&session);
                    assert_eq!(odd_seen, id % 2, "task {id} saw another task's uncommitted row");
                    if id % 2 == 1 { Err(AppError::Boom("odd ids roll back")) } else { Ok(()) }
                })).await;
                assert_eq!(r.is_ok(), id % 2 == 0, "task {id}: {r:?}");
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(env.ids().await, (0..200).step_by(2).collect::<Vec<i64>>());
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// Inside a scope on a named data source, `connection()` (and the other free functions)
    /// mean that data source; the default one is still reached by name. A row written through
    /// `connection()` in an "audit" scope is committed with the audit transaction, not rolled
    /// back with the default one around it.
    async fn connection_means_the_data_source_of_the_innermost_scope(env: Env<D>) {
        let audit = Env::<D>::also("current_ds_audit").await;
        let r: AppResult<()> = env.run(transactional::with_data_source("audit", audit.pool.clone(), scope(Required).run(async {
            env.insert(1).await?;
            let audited: AppResult<()> = Transactional::new().data_source("audit").run(async {
                // `connection()` is the audit transaction's connection.
                let mut conn = transactional::connection::<D::DB>().await?;
                assert!(conn.in_transaction());
                D::exec(&mut conn, format!("INSERT INTO {} (id) VALUES (10)", audit.table)).await?;
                drop(conn);
                assert!(transactional::is_active());
                assert!(transactional::data_source("default").is_active());
                Ok(())
            }).await;
            audited?;
            // Back in the default scope, `connection()` is the default's again.
            env.insert(2).await?;
            Err(AppError::Boom("the default transaction rolls back"))
        }))).await.expect("supported database");
        assert!(r.unwrap_err().is_boom());
        assert!(env.ids().await.is_empty());
        assert_eq!(audit.ids().await, [10], "the audit row was committed with its own transaction");
    }
}

conformance! {
    /// A NESTED scope whose body keeps its connection guard past its end fails at once with
    /// `GuardOutlivedScope` (its own guard can never come back while it waits), instead of
    /// waiting the pool's acquire timeout; once the guard is dropped the outer goes on and
    /// commits, without the NESTED scope's work.
    async fn a_nested_scope_that_keeps_its_guard_fails_at_once(env: Env<D>, pool(2, Duration::from_secs(5))) {
        let started = std::time::Instant::now();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let kept: AppResult<ConnectionGuard<D::DB>> = scope(Nested).run(async {
                env.insert(2).await?;
                Ok(transactional::connection::<D::DB>().await?)
            }).await;
            let err = kept.unwrap_err();
            assert!(matches!(err.tx(), transactional::Error::GuardOutlivedScope { .. }), "{err:?}");
            env.insert(3).await
        })).await;
        r.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "failed at once, not after the acquire timeout");
        assert_eq!(env.ids().await, [1, 3]);
    }
}
