//! `testing::rollback_after` on real databases (docs/SEMANTICS.md, "Testing"): a scope inside
//! the test transaction that would begin a transaction of its own in production gets a
//! savepoint, so a scope that hits a database error (which aborts a whole transaction on
//! PostgreSQL) undoes only its own work and the rest of the test goes on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use transactional::testing;
use transactional::{Propagation::*, Transactional};

use crate::common::{AppError, AppResult, Env, TestDb};
use crate::conformance;

conformance! {
    async fn a_failing_scope_inside_rollback_after_leaves_the_test_working(env: Env<D>) {
        let seen = env.run(testing::rollback_after(async {
            let first: AppResult<()> = Transactional::new().run(env.insert(1)).await;
            first.unwrap();
            let duplicate: AppResult<()> = Transactional::new().run(async {
                env.insert(2).await?;
                env.insert(1).await
            }).await;
            assert!(duplicate.is_err(), "the duplicate key fails its scope");
            let after: AppResult<()> = Transactional::new().run(env.insert(3)).await;
            after.expect("the next scope of the test still works");
            env.visible().await.unwrap()
        })).await.expect("the test transaction begins");
        assert_eq!(seen, 2, "the test saw its own rows 1 and 3");
        assert!(env.ids().await.is_empty(), "everything is rolled back after the test");
        assert!(env.pool_is_clean().await);
    }
}

/// Registers an after-commit hook that counts into `ran`, on the current transaction.
async fn count_after_commit(ran: &Arc<AtomicUsize>) {
    let ran = ran.clone();
    transactional::after_commit(move || async move {
        ran.fetch_add(1, Ordering::SeqCst);
    })
    .await;
}

conformance! {
    /// `capture_after_commit` hands the test exactly the after-commit hooks production would
    /// run: those of a committed transaction (its released savepoints included), none of a
    /// rolled-back transaction or savepoint; captured hooks do not run until the test runs
    /// them.
    async fn capture_after_commit_captures_what_production_would_run(env: Env<D>) {
        let ran = Arc::new(AtomicUsize::new(0));
        let (r, hooks) = env.run(testing::capture_after_commit(async {
            let committed: AppResult<()> = Transactional::new().run(async {
                env.insert(1).await?;
                count_after_commit(&ran).await;
                let undone: AppResult<()> = Transactional::new().propagation(Nested).run(async {
                    count_after_commit(&ran).await;
                    Err(AppError::Boom("rolled back to its savepoint"))
                }).await;
                assert!(undone.is_err());
                let released: AppResult<()> = Transactional::new().propagation(Nested).run(async {
                    count_after_commit(&ran).await;
                    Ok(())
                }).await;
                released
            }).await;
            let rolled_back: AppResult<()> = Transactional::new().run(async {
                env.insert(2).await?;
                count_after_commit(&ran).await;
                Err(AppError::Boom("rolled back"))
            }).await;
            assert!(rolled_back.is_err());
            committed
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, [1]);
        assert_eq!(hooks.len(), 2, "the committed transaction's and its released savepoint's");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "captured, not run");
        hooks.run().await;
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}

conformance! {
    /// Under `rollback_after`, a scope that would begin its own transaction in production
    /// gets a savepoint: its after-commit hooks are captured when the savepoint is released
    /// (where production commits), never when it rolls back; a REQUIRES_NEW scope commits for
    /// real and its hooks are captured at its commit.
    async fn capture_after_commit_under_rollback_after(env: Env<D>) {
        let ran = Arc::new(AtomicUsize::new(0));
        let (r, hooks) = env.run(testing::capture_after_commit(testing::rollback_after(async {
            let failed: AppResult<()> = Transactional::new().run(async {
                env.insert(1).await?;
                count_after_commit(&ran).await;
                Err(AppError::Boom("payment declined"))
            }).await;
            assert!(failed.is_err());
            let saved: AppResult<()> = Transactional::new().run(async {
                env.insert(2).await?;
                count_after_commit(&ran).await;
                let inner: AppResult<()> = Transactional::new().run(async {
                    count_after_commit(&ran).await;
                    Ok(())
                }).await;
                inner
            }).await;
            saved.unwrap();
            if !D::SINGLE_WRITER {
                let escaped: AppResult<()> = Transactional::new().propagation(RequiresNew).run(async {
                    env.insert(3).await?;
                    count_after_commit(&ran).await;
                    Ok(())
                }).await;
                escaped.unwrap();
            }
        }))).await;
        r.unwrap();
        let escaped = usize::from(!D::SINGLE_WRITER);
        assert_eq!(hooks.len(), 2 + escaped, "the saved scope's two (it and the scope it joined), and the escaped one's");
        assert_eq!(env.ids().await.len(), escaped, "only REQUIRES_NEW escaped the rollback");
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}

/// An error that says itself whether it is worth another attempt.
#[derive(Debug)]
#[allow(dead_code)] // the errors it carries are read through `Debug`
enum Flaky {
    Conflict,
    Tx(transactional::Error),
    App(AppError),
}

impl From<transactional::Error> for Flaky {
    fn from(error: transactional::Error) -> Self {
        Flaky::Tx(error)
    }
}

impl From<AppError> for Flaky {
    fn from(error: AppError) -> Self {
        Flaky::App(error)
    }
}

impl transactional::RetryableError for Flaky {
    fn is_retryable(&self) -> bool {
        matches!(self, Flaky::Conflict)
    }
}

/// Writes row `10 + attempt`, and is refused for a concurrent transaction on its first
/// attempt.
#[transactional::transactional(retry = 3)]
async fn refused_once<D: TestDb>(env: &Env<D>, attempts: &AtomicUsize) -> Result<(), Flaky>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) as i64 + 1;
    env.insert(10 + attempt).await?;
    if attempt == 1 {
        return Err(Flaky::Conflict);
    }
    Ok(())
}

conformance! {
    /// A fn with `retry` that begins its own transaction in production runs under
    /// `rollback_after` as it does there: retried while refused, each attempt a savepoint of
    /// the test transaction, the refused attempt's work undone; everything rolled back after
    /// the test.
    async fn a_retry_fn_is_retried_under_rollback_after(env: Env<D>) {
        let attempts = AtomicUsize::new(0);
        let seen = env.run(testing::rollback_after(async {
            refused_once(&env, &attempts).await.unwrap();
            env.ids_visible().await.unwrap()
        })).await.expect("the test transaction begins");
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        assert_eq!(seen, [12], "the second attempt's row, not the first's");
        assert!(env.ids().await.is_empty(), "rolled back after the test");
        assert!(env.pool_is_clean().await);
    }
}
