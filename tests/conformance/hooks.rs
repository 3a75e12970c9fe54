//! Transaction hooks: before-commit, after-commit, after-rollback and after-completion
//! (docs/SEMANTICS.md, "Hooks"), on the real databases, with committed rows seen from the observer connection.
//!
//! Hooks are `'static` closures: what they need (the event log, the test's `Env`) is cloned
//! into them through an `Arc`.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use transactional::{BoxError, Propagation::*, Transactional};

use crate::common::{scope, AppError, AppResult, Env, TestDb};
use crate::conformance;

/// What the hooks did, in the order they did it.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, event: impl Into<String>) {
        self.0.lock().unwrap().push(event.into());
    }

    fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Registers, on the default data source, an after-commit, an after-rollback and an
/// after-completion hook that record `tag`, the rollback cause and the outcome.
async fn record_outcome(log: &Log, tag: &str) {
    let (l, t) = (log.clone(), tag.to_owned());
    transactional::after_commit(move || async move { l.push(format!("{t} after_commit")) }).await;
    let (l, t) = (log.clone(), tag.to_owned());
    transactional::after_rollback(move |cause| async move {
        l.push(format!("{t} after_rollback {cause:?}"))
    })
    .await;
    let (l, t) = (log.clone(), tag.to_owned());
    transactional::after_completion(move |outcome| async move {
        l.push(format!("{t} after_completion {outcome:?}"))
    })
    .await;
}

/// Panics with `message` (a function, so that the code after a call is not unreachable).
fn panics(message: &'static str) {
    panic!("{message}");
}

/// Inserts `id` into `table` through the current connection of `data_source`.
async fn insert_on<D: TestDb>(data_source: &str, table: &str, id: i64) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let mut conn = transactional::data_source(data_source)
        .connection::<D::DB>()
        .await?;
    D::exec(&mut conn, format!("INSERT INTO {table} (id) VALUES ({id})")).await?;
    Ok(())
}

/// Runs a statement on the observer connection.
async fn observe<D: TestDb>(env: &Env<D>, sql: String)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let mut conn = env.observer.acquire().await.expect("observer");
    D::exec(&mut conn, sql).await.expect("observer statement");
}

/// Everything `tracing` writes while a subscriber made by [`Capture::subscribe`] is the
/// thread's default.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Makes a subscriber writing here the default of this thread until the guard is dropped.
    /// (A `#[tokio::test]` body, and hooks run by the scope it awaits, run on the test thread.)
    fn subscribe(&self) -> impl Drop {
        use tracing_subscriber::util::SubscriberInitExt;
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
            .set_default()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

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
            record_outcome(&log, "tx").await;
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
            record_outcome(&log, "tx").await;
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
            record_outcome(&log, "tx").await;
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
            record_outcome(&log, "tx").await;
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
            record_outcome(&log, "tx").await;
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
            record_outcome(&log, "tx").await;
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
            record_outcome(&log, "tx").await;
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
            record_outcome(&log, "tx").await;
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
                record_outcome(&log, "inner").await;
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
                record_outcome(&log, "inner").await;
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
                record_outcome(&log, "nested").await;
                Ok(())
            }).await;
            nested?;
            assert!(log.events().is_empty(), "releasing a savepoint runs no hook");
            record_outcome(&log, "outer").await;
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
            record_outcome(&log, "outer").await;
            let middle: AppResult<()> = scope(Nested).run(async {
                env.insert(2).await?;
                record_outcome(&log, "middle").await;
                let (l, e) = (log.clone(), env.clone());
                transactional::before_commit(move || async move {
                    l.push("middle before_commit");
                    e.insert(98).await.map_err(|err| format!("{err:?}"))
                }).await?;
                let deeper: AppResult<()> = scope(Nested).run(async {
                    env.insert(3).await?;
                    record_outcome(&log, "deeper").await;
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
            record_outcome(&log, "outer").await;
            let inner: AppResult<()> = scope(RequiresNew).run(async {
                env.insert(2).await?;
                let (l, e) = (log.clone(), env.clone());
                transactional::after_commit(move || async move {
                    l.push(format!("inner after_commit: observer sees {:?}", e.ids().await))
                }).await;
                record_outcome(&log, "inner").await;
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
                record_outcome(&log, "failing inner").await;
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
            record_outcome(&log, "outer").await;
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
            record_outcome(&log, "tx").await;
            env.insert(1).await?;
            let mut conn = transactional::connection::<D::DB>().await?;
            D::exec(&mut conn, format!("INSERT INTO {child} (id, parent_id) VALUES (1, 42)")).await?;
            Ok(())
        })).await;
        let err = r.unwrap_err();
        assert!(matches!(err.tx(), transactional::Error::Commit { outcome_unknown: false, .. }), "{err:?}");
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

// ---- Rule 8: hooks run with no transaction current -----------------------------------------

conformance! {
    /// Inside after_commit (and after_rollback) no transaction is current: a REQUIRED scope
    /// called from the hook begins a new transaction, and its row is committed (in Spring it
    /// would join the finished transaction and be lost).
    async fn required_scope_in_an_after_hook_begins_a_new_transaction(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let (l, e) = (log.clone(), env.clone());
            transactional::after_commit(move || async move {
                l.push(format!("after_commit active={}", transactional::is_active()));
                let r: AppResult<bool> = Transactional::new().run(async {
                    let active = transactional::is_active();
                    e.insert(2).await?;
                    Ok(active)
                }).await;
                l.push(format!("REQUIRED in after_commit: {r:?}"));
            }).await;
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(log.events(), ["after_commit active=false", "REQUIRED in after_commit: Ok(true)"]);
        assert_eq!(env.ids().await, vec![1, 2], "the hook's REQUIRED scope committed its row");

        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(3).await?;
            let (l, e) = (log.clone(), env.clone());
            transactional::after_rollback(move |cause| async move {
                l.push(format!("after_rollback {cause:?} active={}", transactional::is_active()));
                let r: AppResult<()> = Transactional::new().run(e.insert(4)).await;
                l.push(format!("REQUIRED in after_rollback: {r:?}"));
            }).await;
            Err(AppError::Boom("fails"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(log.events(), ["after_rollback Error active=false", "REQUIRED in after_rollback: Ok(())"]);
        assert_eq!(env.ids().await, vec![1, 2, 4]);
    }
}

// ---- Rule 9: a failing after_commit changes nothing ----------------------------------------

conformance! {
    /// An after_commit hook that returns Err or panics does not turn the committed call into an
    /// error and does not stop the following hooks; each failure is logged at error level.
    async fn failing_or_panicking_after_commit_does_not_undo_the_commit(env: Env<D>) {
        let capture = Capture::default();
        let _subscriber = capture.subscribe();
        let log = Log::default();
        let r: AppResult<&str> = env.run(scope(Required).name("hooks_fail").run(async {
            env.insert(1).await?;
            let l = log.clone();
            transactional::after_commit(move || async move {
                l.push("first after_commit fails");
                Err::<(), _>("mail server down")
            }).await;
            let l = log.clone();
            transactional::after_commit(move || async move {
                l.push("second after_commit panics");
                panics("cache gone");
            }).await;
            let l = log.clone();
            transactional::after_commit(move || async move { l.push("third after_commit") }).await;
            let l = log.clone();
            transactional::after_completion(move |outcome| async move {
                l.push(format!("after_completion {outcome:?}"))
            }).await;
            Ok("committed")
        })).await;
        assert_eq!(r.unwrap(), "committed", "the commit stands");
        assert_eq!(log.events(), [
            "first after_commit fails",
            "second after_commit panics",
            "third after_commit",
            "after_completion Committed",
        ]);
        assert_eq!(env.ids().await, vec![1]);
        let logged = capture.text();
        assert!(logged.contains("ERROR") && logged.contains("transaction hook failed") && logged.contains("mail server down"), "{logged}");
        assert!(logged.contains("transaction hook panicked") && logged.contains("cache gone"), "{logged}");
    }
}

// ---- Rule 10: outside any transaction -------------------------------------------------------

conformance! {
    /// Outside any transaction: after_commit (and after_completion, with Committed) run at once,
    /// before the registering call returns; before_commit runs at once and its failure is
    /// returned from the call; after_rollback never runs, even when the surrounding
    /// transaction-less scope fails.
    async fn outside_a_transaction_hooks_run_at_once_and_after_rollback_never(env: Env<D>) {
        let log = Log::default();
        let r: AppResult<()> = env.run(async {
            assert!(!transactional::is_active());
            let l = log.clone();
            transactional::after_rollback(move |cause| async move {
                l.push(format!("after_rollback {cause:?}"))
            }).await;
            let l = log.clone();
            transactional::after_commit(move || async move { l.push("after_commit") }).await;
            assert_eq!(log.events(), ["after_commit"], "ran before the call returned");
            let l = log.clone();
            transactional::after_completion(move |outcome| async move {
                l.push(format!("after_completion {outcome:?}"))
            }).await;
            assert_eq!(log.events().len(), 2);
            let l = log.clone();
            transactional::before_commit(move || async move {
                l.push("before_commit");
                Ok::<(), BoxError>(())
            }).await?;
            assert_eq!(log.events().len(), 3);
            let failed = transactional::before_commit(|| async { Err::<(), _>("refused") }).await;
            let err = failed.unwrap_err();
            assert!(matches!(err, transactional::Error::BeforeCommit(_)), "{err:?}");
            assert!(err.to_string().contains("refused"), "{err}");
            env.insert(1).await
        }).await;
        r.unwrap();

        let r: AppResult<()> = env.run(scope(Supports).run(async {
            let l = log.clone();
            transactional::after_rollback(move |cause| async move {
                l.push(format!("after_rollback {cause:?} in SUPPORTS"))
            }).await;
            env.insert(2).await?;
            Err(AppError::Boom("nothing to roll back"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(log.events(), ["after_commit", "after_completion Committed", "before_commit"]);
        assert_eq!(env.ids().await, vec![1, 2]);
    }
}

// ---- Rule 11: named data sources ------------------------------------------------------------

conformance! {
    /// A hook for a named data source attaches to that data source's transaction: it runs at
    /// that scope's commit, not at the default's. Inside a scope on "other", the free functions
    /// mean "other"; a hook registered there for "default" by name runs at once when no default
    /// transaction exists, and at the default's commit when one does.
    async fn hooks_attach_to_the_transaction_of_their_data_source(env: Env<D>) {
        let other = Env::<D>::also("hooks_other_ds").await;
        let (env, other) = (Arc::new(env), Arc::new(other));
        let on_other = || Transactional::new().data_source("other");

        // No default transaction.
        let log = Log::default();
        let r: AppResult<()> = env.run(transactional::with_data_source("other", other.pool.clone(), on_other().run(async {
            assert!(transactional::data_source("other").is_active());
            assert!(transactional::is_active(), "the free functions mean the scope's data source");
            assert!(!transactional::data_source("default").is_active());
            insert_on::<D>("other", &other.table, 1).await?;
            let (l, o) = (log.clone(), other.clone());
            transactional::data_source("other").after_commit(move || async move {
                l.push(format!("other after_commit: other sees {:?}", o.ids().await))
            }).await;
            let l = log.clone();
            transactional::data_source("other").after_rollback(move |cause| async move {
                l.push(format!("other after_rollback {cause:?}"))
            }).await;
            let l = log.clone();
            transactional::data_source("default").after_commit(move || async move { l.push("default after_commit") }).await;
            assert_eq!(log.events(), ["default after_commit"], "no default transaction: ran at once");
            Ok(())
        }))).await.expect("supported database");
        r.unwrap();
        assert_eq!(log.events(), ["default after_commit", "other after_commit: other sees [1]"]);

        // A default transaction around the "other" scope.
        let log = Log::default();
        let r: AppResult<()> = env.run(transactional::with_data_source("other", other.pool.clone(), scope(Required).run(async {
            env.insert(1).await?;
            record_outcome(&log, "default").await;
            let inner: AppResult<()> = on_other().run(async {
                insert_on::<D>("other", &other.table, 2).await?;
                let (l, e, o) = (log.clone(), env.clone(), other.clone());
                transactional::data_source("other").after_commit(move || async move {
                    l.push(format!("other after_commit: other sees {:?}, default sees {:?}", o.ids().await, e.ids().await))
                }).await;
                let l = log.clone();
                transactional::data_source("default").after_commit(move || async move {
                    l.push("default after_commit registered in the other scope")
                }).await;
                Ok(())
            }).await;
            inner?;
            assert_eq!(log.events(), ["other after_commit: other sees [1, 2], default sees []"],
                "the other scope's hooks ran at its commit; the default's wait");
            Ok(())
        }))).await.expect("supported database");
        r.unwrap();
        assert_eq!(log.events(), [
            "other after_commit: other sees [1, 2], default sees []",
            "default after_commit",
            "default after_commit registered in the other scope",
            "default after_completion Committed",
        ]);
        assert_eq!(env.ids().await, vec![1]);
        assert_eq!(other.ids().await, vec![1, 2]);
    }
}

// ---- Rule 12: hooks that register hooks -----------------------------------------------------

conformance! {
    /// A before_commit registered by a before_commit runs in the same pass, before COMMIT (its
    /// write is committed); an after_commit registered by a before_commit attaches to the
    /// transaction; an after_commit registered by an after_commit finds no transaction and runs
    /// at once, within the registering hook.
    async fn hooks_registered_by_running_hooks(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let (l, e) = (log.clone(), env.clone());
            transactional::before_commit(move || async move {
                l.push("before_commit A");
                let (l2, e2) = (l.clone(), e.clone());
                transactional::before_commit(move || async move {
                    l2.push(format!("before_commit B (registered by A) active={}", transactional::is_active()));
                    e2.insert(2).await.map_err(|err| format!("{err:?}"))
                }).await?;
                let l2 = l.clone();
                transactional::after_commit(move || async move { l2.push("after_commit F (registered by A)") }).await;
                assert_eq!(l.events().len(), 1, "B and F wait");
                Ok::<(), BoxError>(())
            }).await?;
            let l = log.clone();
            transactional::after_commit(move || async move {
                l.push("after_commit C");
                let l2 = l.clone();
                transactional::after_commit(move || async move { l2.push("after_commit D (registered by C)") }).await;
                l.push("after_commit C done");
            }).await;
            let l = log.clone();
            transactional::after_commit(move || async move { l.push("after_commit E") }).await;
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(log.events(), [
            "before_commit A",
            "before_commit B (registered by A) active=true",
            "after_commit C",
            "after_commit D (registered by C)",
            "after_commit C done",
            "after_commit E",
            "after_commit F (registered by A)",
        ]);
        assert_eq!(env.ids().await, vec![1, 2], "B wrote inside the transaction before COMMIT");
    }
}

// ---- Rule 13: hooks run after the connection is back in the pool ----------------------------

conformance! {
    /// With a pool of ONE connection, an after_commit (or after_rollback) hook can take a
    /// connection outside any transaction, or run a REQUIRED scope: the transaction's connection
    /// is back in the pool by then (no wait for the 2 s acquire timeout, no deadlock).
    async fn hooks_run_after_the_connection_is_back_in_the_pool(env: Env<D>, pool(1, Duration::from_secs(2))) {
        let env = Arc::new(env);
        let table = env.table.clone();
        let log = Log::default();
        let started = tokio::time::Instant::now();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let (l, e) = (log.clone(), env.clone());
            transactional::after_commit(move || async move {
                let counted: AppResult<i64> = async {
                    let mut conn = transactional::connection::<D::DB>().await?;
                    assert!(!conn.in_transaction());
                    Ok(D::scalar(&mut conn, format!("SELECT COUNT(*) FROM {table}")).await?)
                }.await;
                l.push(format!("after_commit connection: {counted:?}"));
                let r: AppResult<()> = Transactional::new().run(e.insert(2)).await;
                l.push(format!("after_commit REQUIRED: {r:?}"));
            }).await;
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(log.events(), ["after_commit connection: Ok(1)", "after_commit REQUIRED: Ok(())"]);
        assert_eq!(env.ids().await, vec![1, 2]);

        let log = Log::default();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(3).await?;
            let (l, e) = (log.clone(), env.clone());
            transactional::after_rollback(move |_| async move {
                let r: AppResult<()> = Transactional::new().run(e.insert(4)).await;
                l.push(format!("after_rollback REQUIRED: {r:?}"));
            }).await;
            Err(AppError::Boom("fails"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(log.events(), ["after_rollback REQUIRED: Ok(())"]);
        assert_eq!(env.ids().await, vec![1, 2, 4]);
        assert!(started.elapsed() < Duration::from_secs(2), "no hook waited for the acquire timeout");
    }
}

// ---- Beyond the 13 rules: panics and cancellation around the commit --------------------------

conformance! {
    /// A panicking before_commit hook fails the scope like a panicking body (docs/SEMANTICS.md, "Outcome": roll
    /// back, then resume the panic): after_rollback(Panic) and after_completion(RolledBack) have
    /// run by the time the panic reaches the caller, and nothing is committed.
    async fn panicking_before_commit_rolls_back_then_resumes_the_panic(env: Env<D>) {
        let log = Log::default();
        let caught = AssertUnwindSafe(env.run(scope(Required).run(async {
            record_outcome(&log, "tx").await;
            env.insert(1).await?;
            transactional::before_commit(|| async {
                panics("before_commit panics");
                Ok::<(), BoxError>(())
            }).await?;
            AppResult::Ok(())
        })))
        .catch_unwind()
        .await;
        let payload = caught.expect_err("the panic goes on");
        assert_eq!(payload.downcast_ref::<String>().map(String::as_str), Some("before_commit panics"));
        assert_eq!(log.events(), ["tx after_rollback Panic", "tx after_completion RolledBack"],
            "rolled back and hooks run before the panic is resumed");
        assert!(env.ids().await.is_empty());
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// The hooks of a cancelled scope run in the background, but still in the task's context:
    /// a REQUIRED scope in its after_rollback(Cancelled) finds the data source registered for
    /// the task (`with_data_source`), as the hooks of every other ending do (rule 8).
    async fn cancelled_scope_hooks_still_see_the_task_data_sources(env: Env<D>) {
        let env = Arc::new(env);
        let log = Log::default();
        let r = tokio::time::timeout(Duration::from_millis(300), env.run(scope(Required).run(async {
            let (l, e) = (log.clone(), env.clone());
            transactional::after_rollback(move |cause| async move {
                let r: AppResult<()> = Transactional::new().run(e.insert(7)).await;
                l.push(format!("after_rollback {cause:?}: REQUIRED {r:?}"));
            }).await;
            env.insert(1).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            AppResult::Ok(())
        }))).await;
        assert!(r.is_err(), "the scope was cancelled");
        env.eventually("the hook of the cancelled scope ran", || async { !log.events().is_empty() }).await;
        assert_eq!(log.events(), ["after_rollback Cancelled: REQUIRED Ok(())"]);
        assert_eq!(env.ids().await, vec![7]);
    }
}

conformance! {
    /// The scope is dropped while its COMMIT is in flight: the server may still commit, so the
    /// hooks must not claim a rollback (docs/SEMANTICS.md, "Outcome": an unknown outcome is reported as such). The
    /// COMMIT is held open on the server: on PostgreSQL by a deferred constraint trigger that
    /// sleeps at COMMIT, on SQLite by a reader whose SHARED lock the COMMIT must wait for.
    async fn cancelled_during_commit_hooks_never_report_a_rollback_of_committed_data(env: Env<D>) {
        if D::NAME == "mysql" {
            eprintln!("skipping on mysql: InnoDB has no deferred constraints or triggers and its COMMIT waits on no lock a test can hold, so the COMMIT-in-flight window cannot be widened deterministically");
            return;
        }
        let table = env.table.clone();
        let mut reader = env.observer.acquire().await.expect("observer");
        if D::NAME == "postgres" {
            observe(&env, format!(
                "CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_sleep(0.8); RETURN NULL; END $$"
            )).await;
            observe(&env, format!(
                "CREATE CONSTRAINT TRIGGER {table}_slow AFTER INSERT ON {table} \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_slow()"
            )).await;
        } else {
            // A read transaction keeps a SHARED lock: COMMIT waits for it (busy_timeout).
            D::exec(&mut reader, "BEGIN".into()).await.unwrap();
            D::scalar(&mut reader, format!("SELECT COUNT(*) FROM {table}")).await.unwrap();
        }

        let log = Log::default();
        let r = tokio::time::timeout(Duration::from_millis(400), env.run(scope(Required).run(async {
            record_outcome(&log, "tx").await;
            env.insert(1).await
        }))).await;
        assert!(r.is_err(), "the scope was cancelled during its COMMIT");
        if D::NAME != "postgres" {
            D::exec(&mut reader, "COMMIT".into()).await.unwrap();
        }
        drop(reader);

        env.eventually("the COMMIT sent before the cancel took effect", || async { env.ids().await == [1] }).await;
        env.eventually("the hooks of the cancelled scope ran", || async {
            log.events().iter().any(|e| e.contains("after_completion"))
        }).await;
        let events = log.events();
        assert!(
            events == ["tx after_completion Unknown"] || events == ["tx after_commit", "tx after_completion Committed"],
            "the row is committed, but the hooks were told: {events:?}"
        );
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
        if D::NAME == "postgres" {
            observe(&env, format!("DROP TRIGGER IF EXISTS {table}_slow ON {table}")).await;
            observe(&env, format!("DROP FUNCTION IF EXISTS {table}_slow()")).await;
        }
    }
}
