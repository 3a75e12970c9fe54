//! Every cell of the propagation table (docs/SEMANTICS.md, "Propagation"), seen from a second connection.

use std::sync::atomic::{AtomicBool, Ordering};

use transactional::Propagation::*;

use crate::common::{scope, AppError, AppResult};
use crate::conformance;

conformance! {
    /// REQUIRED, none exists: begins one; nothing is visible until it commits.
    async fn required_without_transaction_begins_and_commits(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            assert!(transactional::is_active());
            env.insert(1).await?;
            env.insert(2).await?;
            assert!(env.ids().await.is_empty(), "uncommitted rows are invisible");
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1, 2]);
    }
}

conformance! {
    /// REQUIRED, one exists: joins it (same session); the outer failure undoes the inner work.
    async fn required_with_transaction_joins(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            env.insert(1).await?;
            let inner: AppResult<i64> = scope(Required).run(async {
                env.insert(2).await?;
                env.session().await
            }).await;
            assert_eq!(inner?, outer, "the inner scope works on the outer connection");
            Err(AppError::Boom("outer fails"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert!(env.ids().await.is_empty(), "the joined work rolled back with the outer");
    }
}

conformance! {
    /// SUPPORTS, none exists: no transaction, every statement autocommits.
    async fn supports_without_transaction_autocommits(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Supports).run(async {
            assert!(!transactional::is_active());
            env.insert(1).await?;
            assert_eq!(env.ids().await, vec![1], "autocommitted at once");
            Err(AppError::Boom("nothing to roll back"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// SUPPORTS, one exists: joins it.
    async fn supports_with_transaction_joins(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            let inner = scope(Supports).run(async {
                assert!(transactional::is_active());
                env.insert(1).await?;
                env.session().await
            }).await?;
            assert_eq!(inner, outer);
            assert!(env.ids().await.is_empty());
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// MANDATORY, none exists: the error, and the body never runs.
    async fn mandatory_without_transaction_fails_without_running(env: Env<D>) {
        let ran = AtomicBool::new(false);
        let r: AppResult<()> = env.run(scope(Mandatory).run(async {
            ran.store(true, Ordering::SeqCst);
            env.insert(1).await
        })).await;
        let err = r.unwrap_err();
        assert!(matches!(err.tx(), transactional::Error::NoExistingTransaction { .. }), "{err:?}");
        assert!(err.tx().to_string().contains("no existing transaction for propagation MANDATORY"));
        assert!(!ran.load(Ordering::SeqCst), "the body must not run");
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// MANDATORY, one exists: joins it.
    async fn mandatory_with_transaction_joins(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            let inner = scope(Mandatory).run(async {
                env.insert(1).await?;
                env.session().await
            }).await?;
            assert_eq!(inner, outer);
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// REQUIRES_NEW, none exists: begins one.
    async fn requires_new_without_transaction_begins(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(RequiresNew).run(async {
            assert!(transactional::is_active());
            env.insert(1).await?;
            assert!(env.ids().await.is_empty());
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// REQUIRES_NEW, one exists: suspends it and commits on another connection, independently;
    /// the outer then resumes on its own connection and can still roll back alone.
    /// (The outer writes after the inner commits, so that SQLite's single writer allows it.)
    async fn requires_new_with_transaction_suspends_and_commits_independently(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            let inner = scope(RequiresNew).run(async {
                env.insert(2).await?;
                env.session().await
            }).await?;
            assert_ne!(inner, outer, "REQUIRES_NEW runs on a second connection");
            assert_eq!(env.ids().await, vec![2], "the inner transaction committed on its own");
            assert_eq!(env.session().await?, outer, "the outer resumes on its own connection");
            env.insert(1).await?;
            Err(AppError::Boom("outer fails"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(env.ids().await, vec![2], "only the outer work rolled back");
    }
}

conformance! {
    /// REQUIRES_NEW writing while the outer transaction has written: two writers at once.
    /// PostgreSQL and MariaDB allow it. SQLite has one writer per database file: the inner write
    /// cannot proceed while the outer holds the write lock, so it fails with "database is
    /// locked" after busy_timeout (never a hang), and the outer is intact.
    async fn requires_new_writes_while_the_outer_has_written(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let inner: AppResult<()> = scope(RequiresNew).run(env.insert(2)).await;
            if D::SINGLE_WRITER {
                let err = format!("{:?}", inner.unwrap_err());
                assert!(err.contains("locked"), "{err}");
            } else {
                inner?;
                assert_eq!(env.ids().await, vec![2]);
            }
            env.insert(3).await
        })).await;
        r.unwrap();
        let expected = if D::SINGLE_WRITER { vec![1, 3] } else { vec![1, 2, 3] };
        assert_eq!(env.ids().await, expected);
    }
}

conformance! {
    /// REQUIRES_NEW inner failure rolls back the inner only; the outer is not marked.
    async fn requires_new_failure_leaves_the_outer_alone(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let inner: AppResult<()> = scope(RequiresNew).run(async {
                env.insert(2).await?;
                Err(AppError::Boom("inner fails"))
            }).await;
            assert!(inner.unwrap_err().is_boom());
            assert!(!transactional::is_rollback_only());
            env.insert(1).await
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// NOT_SUPPORTED, none exists: runs without a transaction.
    async fn not_supported_without_transaction_runs_without(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(NotSupported).run(async {
            assert!(!transactional::is_active());
            env.insert(1).await?;
            assert_eq!(env.ids().await, vec![1]);
            Ok(())
        })).await;
        r.unwrap();
    }
}

conformance! {
    /// NOT_SUPPORTED, one exists: suspends it; the inner work autocommits on a pooled
    /// connection at once, and survives the outer's rollback.
    async fn not_supported_with_transaction_suspends(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            let inner = scope(NotSupported).run(async {
                assert!(!transactional::is_active());
                env.insert(2).await?;
                assert_eq!(env.ids().await, vec![2], "autocommitted");
                env.session().await
            }).await?;
            assert_ne!(inner, outer);
            assert!(transactional::is_active(), "the outer is current again");
            assert_eq!(env.session().await?, outer);
            env.insert(1).await?;
            Err(AppError::Boom("outer fails"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(env.ids().await, vec![2]);
    }
}

conformance! {
    /// NEVER, none exists: runs without a transaction.
    async fn never_without_transaction_runs(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Never).run(async {
            assert!(!transactional::is_active());
            env.insert(1).await
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// NEVER, one exists: the error, and the body never runs; the outer is not marked.
    async fn never_with_transaction_fails_without_running(env: Env<D>) {
        let ran = AtomicBool::new(false);
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let inner: AppResult<()> = scope(Never).run(async {
                ran.store(true, Ordering::SeqCst);
                env.insert(2).await
            }).await;
            let err = inner.unwrap_err();
            assert!(matches!(err.tx(), transactional::Error::ExistingTransaction { .. }));
            assert!(err.tx().to_string().contains("existing transaction found for propagation NEVER"));
            Ok(())
        })).await;
        r.unwrap();
        assert!(!ran.load(Ordering::SeqCst), "the body must not run");
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// NESTED, none exists: begins one, as REQUIRED.
    async fn nested_without_transaction_begins(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Nested).run(async {
            assert!(transactional::is_active());
            env.insert(1).await?;
            assert!(env.ids().await.is_empty());
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);

        let r: AppResult<()> = env.run(scope(Nested).run(async {
            env.insert(2).await?;
            Err(AppError::Boom("rolls back like REQUIRED"))
        })).await;
        assert!(r.is_err());
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// NESTED, one exists: a savepoint on the same connection; an inner Err rolls back to it and
    /// the outer commits the rest; an inner Ok is kept.
    async fn nested_with_transaction_rolls_back_to_its_savepoint(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let outer = env.session().await?;
            env.insert(1).await?;
            let failed: AppResult<()> = scope(Nested).run(async {
                assert_eq!(env.session().await?, outer, "a savepoint, not a new connection");
                env.insert(2).await?;
                Err(AppError::Boom("inner fails"))
            }).await;
            assert!(failed.unwrap_err().is_boom());
            assert!(!transactional::is_rollback_only(), "the outer is not marked");
            let kept: AppResult<()> = scope(Nested).run(env.insert(3)).await;
            kept?;
            env.insert(4).await
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1, 3, 4]);
    }
}
