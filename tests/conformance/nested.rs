//! NESTED scopes: savepoints, siblings, depth, rollback-only inside (docs/SEMANTICS.md, "Propagation", "Outcome").

use transactional::Propagation::*;

use crate::common::{scope, AppError, AppResult};
use crate::conformance;

conformance! {
    /// Two sibling NESTED scopes: the failing one is undone, the other kept.
    async fn sibling_nested_scopes_are_independent(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let first: AppResult<()> = scope(Nested).run(env.insert(2)).await;
            first?;
            let second: AppResult<()> = scope(Nested).run(async {
                env.insert(3).await?;
                Err(AppError::Boom("second fails"))
            }).await;
            assert!(second.unwrap_err().is_boom());
            assert_eq!(env.visible().await?, 2, "the outer sees 1 and 2, not 3");
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1, 2]);
    }
}

conformance! {
    /// Three levels deep: the innermost failure undoes only the innermost; a middle failure
    /// undoes the middle and everything inside it, even what was released into it.
    async fn three_levels_of_nesting(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let middle: AppResult<()> = scope(Nested).run(async {
                env.insert(2).await?;
                let inner: AppResult<()> = scope(Nested).run(async {
                    env.insert(3).await?;
                    Err(AppError::Boom("innermost fails"))
                }).await;
                assert!(inner.is_err());
                let kept: AppResult<()> = scope(Nested).run(env.insert(4)).await;
                kept?;
                assert_eq!(env.visible().await?, 3);
                Ok(())
            }).await;
            middle?;
            let undone: AppResult<()> = scope(Nested).run(async {
                env.insert(5).await?;
                let deeper: AppResult<()> = scope(Nested).run(env.insert(6)).await;
                deeper?;
                Err(AppError::Boom("middle fails after its child was released"))
            }).await;
            assert!(undone.is_err());
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1, 2, 4]);
    }
}

conformance! {
    /// A REQUIRED participant failing inside NESTED marks only the savepoint's level: the nested
    /// scope rolls back to its savepoint and the outer commits.
    async fn required_failing_inside_nested_rolls_back_to_the_savepoint(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let nested: AppResult<()> = scope(Nested).run(async {
                env.insert(2).await?;
                let inner: AppResult<()> = scope(Required).run(async {
                    env.insert(3).await?;
                    Err(AppError::Boom("participant fails"))
                }).await;
                assert!(inner.unwrap_err().is_boom());
                Err(AppError::Boom("nested passes the failure on"))
            }).await;
            assert!(nested.is_err());
            assert!(!transactional::is_rollback_only(), "the outer is not marked");
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// A participant marks rollback-only inside NESTED, the nested body returns Ok: the nested
    /// boundary rolls back to its savepoint and returns UnexpectedRollback; the outer catches it
    /// and commits the rest.
    async fn rollback_only_inside_nested_gives_unexpected_rollback_at_the_nested_boundary(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let nested: AppResult<()> = scope(Nested).run(async {
                env.insert(2).await?;
                let inner: AppResult<()> = scope(Required).run(async {
                    env.insert(3).await?;
                    Err(AppError::Boom("participant fails"))
                }).await;
                assert!(inner.is_err());
                assert!(transactional::is_rollback_only());
                Ok(()) // swallows the participant's error
            }).await;
            assert!(nested.unwrap_err().is_unexpected_rollback());
            assert!(!transactional::is_rollback_only(), "rolling back to the savepoint cleared it");
            env.insert(4).await
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1, 4]);
    }
}

conformance! {
    /// set_rollback_only() in the NESTED scope itself: rolls back to the savepoint, and the
    /// nested scope returns its Ok (it asked for it).
    async fn set_rollback_only_in_nested_owner_rolls_back_silently(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let nested: AppResult<u8> = scope(Nested).run(async {
                env.insert(2).await?;
                transactional::set_rollback_only();
                Ok(7)
            }).await;
            assert_eq!(nested?, 7);
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// A savepoint cannot be created in a transaction already marked rollback-only.
    async fn nested_in_a_rollback_only_transaction_is_refused(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let inner: AppResult<()> = scope(Required).run(async { Err(AppError::Boom("marks")) }).await;
            assert!(inner.is_err());
            let nested: AppResult<()> = scope(Nested).run(env.insert(1)).await;
            let err = nested.unwrap_err();
            assert!(matches!(err.tx(), transactional::Error::RollbackOnlySavepoint { .. }), "{err:?}");
            Ok(())
        })).await;
        assert!(r.unwrap_err().is_unexpected_rollback());
        assert!(env.ids().await.is_empty());
    }
}
