//! Transaction hooks: before-commit, after-commit, after-rollback and after-completion
//! (docs/SEMANTICS.md, "Hooks"), on the real databases, with committed rows seen from the
//! observer connection: rules 1 to 7 here, the rest in `hooks_context.rs`.
//!
//! Hooks are `'static` closures: what they need (the event log, the test's `Env`) is cloned
//! into them through an `Arc`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use transactional::{BoxError, Propagation::*};

use crate::common::hook_support::{observe, panics};
use crate::common::{scope, AppError, AppResult, Log};
use crate::conformance;

// ---- Rule 1: before_commit ----------------------------------------------------------------

conformance! {
    /// before_commit runs inside the transaction, before COMMIT, in registration order: it sees
    /// the transaction as current, its write is committed with the rest, and nothing is visible
    /// to the observer while it runs.
    async fn before_commit_runs_inside_the_transaction_in_registration_order(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let (l, e) = (log.clone(), env.clone());
            transactional::before_commit(move || async move {
                l.push(format!("first before_commit active={} observer sees {:?}", transactional::is_active(), e.ids().await));
                e.insert(10).await.map_err(|err| format!("{err:?}"))
            }).await?;
            let l = log.clone();
            transactional::before_commit(move || async move {
                l.push("second before_commit");
                Ok::<(), BoxError>(())
            }).await?;
            log.record("tx").await;
            assert!(log.events().is_empty(), "nothing runs before the body ends");
            env.insert(2).await
        })).await;
        r.unwrap();
        assert_eq!(log.events(), [
            "first before_commit active=true observer sees []",
            "second before_commit",
            "tx after_commit",
            "tx after_completion Committed",
        ]);
        assert_eq!(env.ids().await, vec![1, 2, 10], "the hook's write is committed with the rest");
    }
}

conformance! {
    /// A failing before_commit rolls the transaction back (its rows and those of earlier hooks
    /// are absent), the scope returns Error::BeforeCommit, later before_commit hooks do not run,
    /// after_rollback gets BeforeCommitFailed and after_completion RolledBack; after_commit never.
    async fn failing_before_commit_rolls_back_and_stops_later_hooks(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            log.record("tx").await;
            let (l, e) = (log.clone(), env.clone());
            transactional::before_commit(move || async move {
                l.push("first before_commit");
                e.insert(10).await.map_err(|err| format!("{err:?}"))
            }).await?;
            let l = log.clone();
            transactional::before_commit(move || async move {
                l.push("second before_commit fails");
                Err::<(), _>("stock check failed")
            }).await?;
            let l = log.clone();
            transactional::before_commit(move || async move {
                l.push("third before_commit");
                Ok::<(), BoxError>(())
            }).await?;
            Ok(())
        })).await;
        let err = r.unwrap_err();
        assert!(matches!(err.tx(), transactional::Error::BeforeCommit(_)), "{err:?}");
        assert!(err.tx().to_string().contains("stock check failed"), "{}", err.tx());
        assert_eq!(log.events(), [
            "first before_commit",
            "second before_commit fails",
            "tx after_rollback BeforeCommitFailed",
            "tx after_completion RolledBack",
        ]);
        assert!(env.ids().await.is_empty(), "the body's and the first hook's rows rolled back");
        assert!(env.pool_is_clean().await);
    }
}

// ---- Rule 2: after_commit -----------------------------------------------------------------

conformance! {
    /// after_commit hooks run once each, in registration order, after COMMIT: the observer
    /// already sees the data from inside the first one. after_completion(Committed) runs after
    /// all after_commit hooks, even when registered before them.
    async fn after_commit_runs_once_in_order_after_the_data_is_committed(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<&str> = env.run(scope(Required).run(async {
            let l = log.clone();
            transactional::after_completion(move |outcome| async move {
                l.push(format!("after_completion {outcome:?}"))
            }).await;
            env.insert(1).await?;
            let (l, e) = (log.clone(), env.clone());
            transactional::after_commit(move || async move {
                l.push(format!("first after_commit: observer sees {:?}", e.ids().await))
            }).await;
            let l = log.clone();
            transactional::after_commit(move || async move { l.push("second after_commit") }).await;
            let l = log.clone();
            transactional::after_rollback(move |cause| async move {
                l.push(format!("after_rollback {cause:?}"))
            }).await;
            env.insert(2).await?;
            assert!(log.events().is_empty(), "after_commit waits for the commit");
            Ok("done")
        })).await;
        assert_eq!(r.unwrap(), "done");
        assert_eq!(log.events(), [
            "first after_commit: observer sees [1, 2]",
            "second after_commit",
            "after_completion Committed",
        ]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(log.events().len(), 3, "each hook exactly once");
        assert!(env.pool_is_clean().await);
    }
}

// ---- Rule 3: after_rollback causes ---------------------------------------------------------

const ROLLED_BACK_BY_ERROR: [&str; 2] =
    ["tx after_rollback Error", "tx after_completion RolledBack"];

conformance! {
    /// The body returns Err: after_rollback(Error), after_completion(RolledBack), no after_commit.
    async fn after_rollback_cause_error(env: Env<D>) {
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            log.record("tx").await;
            env.insert(1).await?;
            Err(AppError::Boom("fails"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(log.events(), ROLLED_BACK_BY_ERROR);
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// The body panics: after_rollback(Panic), after_completion(RolledBack), and the panic still
    /// reaches the caller.
    async fn after_rollback_cause_panic(env: Env<D>) {
        let log = Log::default();
        let caught = AssertUnwindSafe(env.run(scope(Required).run(async {
            log.record("tx").await;
            env.insert(1).await?;
            panics("boom in the body");
            AppResult::Ok(())
        })))
        .catch_unwind()
        .await;
        let payload = caught.expect_err("the panic goes on");
        assert_eq!(payload.downcast_ref::<String>().map(String::as_str), Some("boom in the body"));
        assert_eq!(log.events(), ["tx after_rollback Panic", "tx after_completion RolledBack"]);
        assert!(env.ids().await.is_empty());
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// The scope's own timeout: after_rollback(Timeout).
    async fn after_rollback_cause_timeout(env: Env<D>) {
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).timeout(Duration::from_millis(300)).run(async {
            log.record("tx").await;
            env.insert(1).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        })).await;
        assert!(r.unwrap_err().is_timeout());
        assert_eq!(log.events(), ["tx after_rollback Timeout", "tx after_completion RolledBack"]);
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// set_rollback_only() in the owning scope: after_rollback(RollbackOnly), and the scope
    /// still returns its Ok.
    async fn after_rollback_cause_rollback_only(env: Env<D>) {
        let log = Log::default();
        let r: AppResult<u8> = env.run(scope(Required).run(async {
            log.record("tx").await;
            env.insert(1).await?;
            transactional::set_rollback_only();
            Ok(7)
        })).await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(log.events(), ["tx after_rollback RollbackOnly", "tx after_completion RolledBack"]);
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// A joined scope fails and the owner swallows the error: after_rollback(UnexpectedRollback).
    async fn after_rollback_cause_unexpected_rollback(env: Env<D>) {
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            log.record("tx").await;
            env.insert(1).await?;
            let inner: AppResult<()> = scope(Required).run(async { Err(AppError::Boom("participant fails")) }).await;
            assert!(inner.unwrap_err().is_boom());
            Ok(())
        })).await;
        assert!(r.unwrap_err().is_unexpected_rollback());
        assert_eq!(log.events(), ["tx after_rollback UnexpectedRollback", "tx after_completion RolledBack"]);
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// The scope's future is dropped (tokio::time::timeout around it): the hooks run in the
    /// background with after_rollback(Cancelled), once.
    async fn after_rollback_cause_cancelled(env: Env<D>) {
        let log = Log::default();
        let r = tokio::time::timeout(Duration::from_millis(300), env.run(scope(Required).run(async {
            log.record("tx").await;
            env.insert(1).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            AppResult::Ok(())
        }))).await;
        assert!(r.is_err(), "the scope was cancelled");
        env.eventually("the hooks of the cancelled scope ran", || async { log.events().len() >= 2 }).await;
        assert_eq!(log.events(), ["tx after_rollback Cancelled", "tx after_completion RolledBack"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(log.events().len(), 2, "each hook exactly once");
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
        assert!(env.ids().await.is_empty());
    }
}

// ---- Rule 4: joined scopes -----------------------------------------------------------------

conformance! {
    /// Hooks registered in a joined (REQUIRED in REQUIRED) scope belong to the owner: they have
    /// not run when the inner call returns, and run when the owner commits (or rolls back).
    async fn joined_scope_hooks_run_when_the_owner_completes(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let inner: AppResult<()> = scope(Required).run(async {
                env.insert(2).await?;
                let l = log.clone();
                transactional::before_commit(move || async move {
                    l.push("inner before_commit");
                    Ok::<(), BoxError>(())
                }).await?;
                let (l, e) = (log.clone(), env.clone());
                transactional::after_commit(move || async move {
                    l.push(format!("inner after_commit: observer sees {:?}", e.ids().await))
                }).await;
                log.record("inner").await;
                Ok(())
            }).await;
            inner?;
            assert!(log.events().is_empty(), "the joined scope's hooks wait for the owner");
            env.insert(3).await?;
            log.push("owner body ends");
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(log.events(), [
            "owner body ends",
            "inner before_commit",
            "inner after_commit: observer sees [1, 2, 3]",
            "inner after_commit",
            "inner after_completion Committed",
        ]);

        // The owner fails after the joined scope succeeded: the joined scope's hooks see the
        // owner's rollback.
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let inner: AppResult<()> = scope(Required).run(async {
                log.record("inner").await;
                env.insert(4).await
            }).await;
            inner?;
            assert!(log.events().is_empty());
            Err(AppError::Boom("owner fails"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(log.events(), ["inner after_rollback Error", "inner after_completion RolledBack"]);
        assert_eq!(env.ids().await, vec![1, 2, 3]);
    }
}

// ---- Rule 5: NESTED ------------------------------------------------------------------------

conformance! {
    /// Hooks of a NESTED scope whose savepoint is released move to the outer transaction: not
    /// run at the release, run when the outer commits.
    async fn hooks_of_a_released_savepoint_run_at_the_outer_commit(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let nested: AppResult<()> = scope(Nested).run(async {
                env.insert(2).await?;
                let (l, e) = (log.clone(), env.clone());
                transactional::after_commit(move || async move {
                    l.push(format!("nested after_commit: observer sees {:?}", e.ids().await))
                }).await;
                log.record("nested").await;
                Ok(())
            }).await;
            nested?;
            assert!(log.events().is_empty(), "releasing a savepoint runs no hook");
            log.record("outer").await;
            env.insert(3).await
        })).await;
        r.unwrap();
        assert_eq!(log.events(), [
            "nested after_commit: observer sees [1, 2, 3]",
            "nested after_commit",
            "outer after_commit",
            "nested after_completion Committed",
            "outer after_completion Committed",
        ]);
        assert_eq!(env.ids().await, vec![1, 2, 3]);
    }
}

conformance! {
    /// Hooks of a NESTED scope rolled back to its savepoint are discarded, never run (not even
    /// after_rollback: the transaction itself commits), together with the hooks of a deeper
    /// NESTED scope that had been released into it. Its before_commit hooks too: their writes
    /// would show.
    async fn hooks_of_a_rolled_back_savepoint_are_discarded_with_those_released_into_it(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            log.record("outer").await;
            let middle: AppResult<()> = scope(Nested).run(async {
                env.insert(2).await?;
                log.record("middle").await;
                let (l, e) = (log.clone(), env.clone());
                transactional::before_commit(move || async move {
                    l.push("middle before_commit");
                    e.insert(98).await.map_err(|err| format!("{err:?}"))
                }).await?;
                let deeper: AppResult<()> = scope(Nested).run(async {
                    env.insert(3).await?;
                    log.record("deeper").await;
                    let (l, e) = (log.clone(), env.clone());
                    transactional::before_commit(move || async move {
                        l.push("deeper before_commit");
                        e.insert(99).await.map_err(|err| format!("{err:?}"))
                    }).await?;
                    Ok(())
                }).await;
                deeper?;
                Err(AppError::Boom("middle fails after the deeper savepoint was released"))
            }).await;
            assert!(middle.unwrap_err().is_boom());
            assert!(log.events().is_empty(), "rolling back to a savepoint runs no hook");
            assert!(!transactional::is_rollback_only());
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(log.events(), ["outer after_commit", "outer after_completion Committed"]);
        assert_eq!(env.ids().await, vec![1], "no discarded before_commit wrote anything");
    }
}

// ---- Rule 6: REQUIRES_NEW, NOT_SUPPORTED ---------------------------------------------------

conformance! {
    /// REQUIRES_NEW: the inner transaction's hooks run when it completes, before the inner call
    /// returns to the outer; the outer's hooks are untouched by the inner outcome (the inner
    /// rollback fires no outer after_rollback; the outer after_commit runs once, at the outer
    /// commit). The inner scopes write before the outer does (SQLite's single writer).
    async fn requires_new_hooks_run_when_the_inner_transaction_completes(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            log.record("outer").await;
            let inner: AppResult<()> = scope(RequiresNew).run(async {
                env.insert(2).await?;
                let (l, e) = (log.clone(), env.clone());
                transactional::after_commit(move || async move {
                    l.push(format!("inner after_commit: observer sees {:?}", e.ids().await))
                }).await;
                log.record("inner").await;
                Ok(())
            }).await;
            inner?;
            assert_eq!(log.events(), [
                "inner after_commit: observer sees [2]",
                "inner after_commit",
                "inner after_completion Committed",
            ], "the inner hooks ran before the inner call returned");

            let failing: AppResult<()> = scope(RequiresNew).run(async {
                env.insert(3).await?;
                log.record("failing inner").await;
                Err(AppError::Boom("inner fails"))
            }).await;
            assert!(failing.unwrap_err().is_boom());
            assert_eq!(&log.events()[3..], [
                "failing inner after_rollback Error",
                "failing inner after_completion RolledBack",
            ]);
            assert!(transactional::is_active());
            assert!(!transactional::is_rollback_only());
            env.insert(1).await
        })).await;
        r.unwrap();
        assert_eq!(&log.events()[5..], ["outer after_commit", "outer after_completion Committed"]);
        assert_eq!(env.ids().await, vec![1, 2]);
    }
}

conformance! {
    /// NOT_SUPPORTED inside a transaction: no transaction is current, so an after_commit
    /// registered there runs at once (before the outer commits: the observer sees nothing yet);
    /// the outer's hooks still run at the outer's commit, once.
    async fn not_supported_inside_a_transaction_runs_after_commit_at_once(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            log.record("outer").await;
            let inner: AppResult<()> = scope(NotSupported).run(async {
                assert!(!transactional::is_active());
                let (l, e) = (log.clone(), env.clone());
                transactional::after_commit(move || async move {
                    l.push(format!("not_supported after_commit: observer sees {:?}", e.ids().await))
                }).await;
                assert_eq!(log.events(), ["not_supported after_commit: observer sees []"], "ran at once");
                let l = log.clone();
                transactional::after_rollback(move |cause| async move {
                    l.push(format!("not_supported after_rollback {cause:?}"))
                }).await;
                Ok(())
            }).await;
            inner?;
            assert!(transactional::is_active(), "the outer is current again");
            assert_eq!(log.events().len(), 1, "the outer's hooks wait for the outer");
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(log.events(), [
            "not_supported after_commit: observer sees []",
            "outer after_commit",
            "outer after_completion Committed",
        ]);
        assert_eq!(env.ids().await, vec![1]);
    }
}

// ---- Rule 7: COMMIT fails on the server ------------------------------------------------------

conformance! {
    /// COMMIT fails on the server (a DEFERRABLE INITIALLY DEFERRED foreign key, checked at
    /// COMMIT): the scope returns Error::Commit { outcome_unknown: false }, after_rollback gets
    /// CommitFailed and after_completion RolledBack; after_commit never runs; nothing is saved.
    async fn commit_failing_on_the_server_runs_after_rollback_not_after_commit(env: Env<D>) {
        if D::NAME == "mysql" {
            eprintln!("skipping on mysql: MariaDB/MySQL have no deferred constraints (InnoDB checks foreign keys per statement), so a COMMIT cannot fail on a healthy connection");
            return;
        }
        let (parent, child) = (format!("{}_parent", env.table), format!("{}_child", env.table));
        observe(&env, format!("DROP TABLE IF EXISTS {child}")).await;
        observe(&env, format!("DROP TABLE IF EXISTS {parent}")).await;
        observe(&env, format!("CREATE TABLE {parent} (id BIGINT PRIMARY KEY)")).await;
        observe(&env, format!(
            "CREATE TABLE {child} (id BIGINT PRIMARY KEY, \
             parent_id BIGINT NOT NULL REFERENCES {parent}(id) DEFERRABLE INITIALLY DEFERRED)"
        )).await;

        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            log.record("tx").await;
            env.insert(1).await?;
            let mut conn = transactional::connection::<D::DB>().await?;
            D::exec(&mut conn, format!("INSERT INTO {child} (id, parent_id) VALUES (1, 42)")).await?;
            Ok(())
        })).await;
        let err = r.unwrap_err();
        assert!(matches!(err.tx(), transactional::Error::Commit { outcome_unknown: false, .. }), "{err:?}");
        let message = err.tx().to_string();
        assert!(message.to_lowercase().contains("foreign key"), "the database's own words: {message}");
        assert_eq!(log.events(), ["tx after_rollback CommitFailed", "tx after_completion RolledBack"]);
        assert!(env.ids().await.is_empty());
        let mut conn = env.observer.acquire().await.expect("observer");
        assert_eq!(D::scalar(&mut conn, format!("SELECT COUNT(*) FROM {child}")).await.unwrap(), 0);
        drop(conn);
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
        observe(&env, format!("DROP TABLE IF EXISTS {child}")).await;
        observe(&env, format!("DROP TABLE IF EXISTS {parent}")).await;
    }
}
