//! Concurrent scopes of one task on one transaction (docs/SEMANTICS.md, "Concurrent scopes"):
//! savepoints are a stack, so concurrent NESTED scopes take turns (each one's savepoint is a
//! true nesting, and while it is open only its own work uses the connection); concurrent
//! joined scopes share the connection statement by statement. Rows and reported outcomes
//! always agree.

use std::time::Duration;

use transactional::Propagation::*;

use crate::common::{scope, AppError, AppResult, Log};
use crate::conformance;

conformance! {
    /// `join!` of three NESTED calls, the second failing: each runs in its own savepoint, one at
    /// a time, so the failure undoes only its own rows; the outer commits the other two, and
    /// only their after-commit hooks run.
    async fn joined_nested_scopes_take_turns_and_a_failure_undoes_only_its_own(env: Env<D>) {
        let log = Log::default();
        let step = |id: i64, fails: bool| {
            let (env, log) = (&env, log.clone());
            scope(Nested).run(async move {
                env.insert(id).await?;
                log.record(&format!("n{id}")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                env.insert(id + 1).await?;
                if fails {
                    return Err(AppError::Boom("this step fails"));
                }
                Ok(())
            })
        };
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let (a, b, c) = tokio::join!(step(10, false), step(20, true), step(30, false));
            assert!(a.is_ok() && b.unwrap_err().is_boom() && c.is_ok());
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, [10, 11, 30, 31]);
        assert_eq!(log.of("n10"), ["after_commit", "after_completion Committed"]);
        assert!(log.of("n20").is_empty(), "a rolled-back savepoint's hooks are discarded");
        assert_eq!(log.of("n30"), ["after_commit", "after_completion Committed"]);
    }
}

conformance! {
    /// While a NESTED scope's savepoint is open, work of the outer scope running beside it
    /// (`join!`) waits for it to end, so the NESTED scope's failure cannot erase it.
    async fn work_beside_an_open_savepoint_waits_for_it(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let nested = scope(Nested).run(async {
                env.insert(1).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err::<(), _>(AppError::Boom("nested fails after the other write was attempted"))
            });
            let beside = async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                env.insert(2).await
            };
            let (nested, beside) = tokio::join!(nested, beside);
            assert!(nested.unwrap_err().is_boom());
            beside
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, [2], "the write beside the savepoint survived its rollback");
    }
}

conformance! {
    /// Concurrent joined REQUIRED scopes share the transaction, statement by statement: both
    /// commit with the owner, and one failing marks the whole transaction.
    async fn joined_required_scopes_run_concurrently_on_one_transaction(env: Env<D>) {
        let write = |id: i64, fails: bool| {
            let env = &env;
            scope(Required).run(async move {
                env.insert(id).await?;
                tokio::task::yield_now().await;
                env.insert(id + 1).await?;
                if fails {
                    return Err(AppError::Boom("fails"));
                }
                Ok(())
            })
        };
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let (a, b) = tokio::join!(write(10, false), write(20, false));
            a.and(b)
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, [10, 11, 20, 21]);

        let r: AppResult<()> = env.run(scope(Required).run(async {
            let (a, b) = tokio::join!(write(30, false), write(40, true));
            assert!(a.is_ok() && b.is_err());
            Ok(())
        })).await;
        assert!(r.unwrap_err().is_unexpected_rollback());
        assert_eq!(env.ids().await, [10, 11, 20, 21]);
    }
}
