//! Isolation, read-only, validation of joining scopes, timeout (docs/SEMANTICS.md, "Options").

use std::time::{Duration, Instant};

use transactional::{DataSourceSettings, Isolation, Propagation::*, Transactional};

use crate::common::{scope, AppError, AppResult};
use crate::conformance;

conformance! {
    /// The isolation level asked for is in force inside the transaction. SQLite has one level,
    /// SERIALIZABLE, at least as strong as any asked for: every level begins, and there is no
    /// level to observe (the suite says so rather than pass silently).
    async fn isolation_is_in_force(env: Env<D>) {
        for (level, expected) in [
            (Isolation::Serializable, "serializable"),
            (Isolation::RepeatableRead, "repeatable read"),
            (Isolation::ReadCommitted, "read committed"),
        ] {
            let r: AppResult<Option<String>> = env.run(Transactional::new().isolation(level).run(async {
                env.insert(1).await?; // MySQL shows the level once the transaction has written
                env.isolation(expected).await
            })).await;
            match r.unwrap() {
                Some(actual) => assert_eq!(actual, expected, "{level}"),
                None => assert_eq!(D::NAME, "sqlite", "only SQLite has no level to observe"),
            }
            assert_eq!(env.ids().await, vec![1]);
            let r: AppResult<()> = env.run(async {
                let mut conn = transactional::connection::<D::DB>().await?;
                D::exec(&mut conn, format!("DELETE FROM {}", env.table)).await?;
                Ok(())
            }).await;
            r.unwrap();
        }
    }
}

conformance! {
    /// An isolation level does not leak into the next transaction on the same pooled
    /// connection (MySQL's `SET TRANSACTION` is for the next transaction only).
    async fn isolation_does_not_leak_into_the_next_transaction(env: Env<D>, pool(1, Duration::from_secs(5))) {
        let default = if D::NAME == "postgres" { "read committed" } else { "repeatable read" };
        let before: AppResult<Option<String>> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            env.isolation(default).await
        })).await;
        let serializable: AppResult<Option<String>> = env.run(Transactional::new().isolation(Isolation::Serializable).run(async {
            env.insert(2).await?;
            env.isolation("serializable").await
        })).await;
        let after: AppResult<Option<String>> = env.run(scope(Required).run(async {
            env.insert(3).await?;
            env.isolation(default).await
        })).await;
        let (before, serializable, after) = (before.unwrap(), serializable.unwrap(), after.unwrap());
        assert_eq!(before.as_deref().unwrap_or(default), default);
        assert_eq!(before, after, "the session default is back");
        if let Some(level) = serializable {
            assert_eq!(level, "serializable");
            assert_ne!(after.as_deref(), Some("serializable"));
        }
        assert_eq!(env.ids().await, vec![1, 2, 3]);
    }
}

conformance! {
    /// A read-only transaction refuses writes; the pooled connection is writable again after.
    /// (On PostgreSQL the refused write aborts the transaction, so the scope that caught its
    /// error cannot commit and says so.)
    async fn read_only_refuses_writes_and_is_reset(env: Env<D>, pool(1, Duration::from_secs(5))) {
        let r: AppResult<i64> = env.run(Transactional::new().read_only(true).run(async {
            let seen = env.visible().await?;
            let write = env.insert(1).await;
            assert!(matches!(write, Err(AppError::Db(_))), "a write in a read-only transaction fails: {write:?}");
            Ok(seen)
        })).await;
        if D::NAME == "postgres" {
            assert!(matches!(r, Err(AppError::Tx(transactional::Error::Aborted { .. }))), "{r:?}");
        } else {
            assert_eq!(r.unwrap(), 0);
        }
        let r: AppResult<()> = env.run(env.insert(2)).await;
        r.unwrap();
        let r: AppResult<()> = env.run(scope(Required).run(env.insert(3))).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![2, 3]);
    }
}

conformance! {
    /// A joining scope with other options joins with a warning by default; under
    /// `validate_existing_transaction` it is refused before its body runs.
    async fn joining_with_different_options_warns_or_fails_under_strict(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let joined: AppResult<()> = Transactional::new().isolation(Isolation::Serializable).run(env.insert(1)).await;
            joined
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);

        let strict = DataSourceSettings::new().validate_existing_transaction(true);
        let r: AppResult<()> = env.run_with(strict, scope(Required).run(async {
            let joined: AppResult<()> = Transactional::new().isolation(Isolation::Serializable).run(env.insert(2)).await;
            let err = joined.unwrap_err();
            assert!(matches!(err.tx(), transactional::Error::IncompatibleTransaction { .. }), "{err:?}");
            assert!(err.tx().to_string().contains("isolation SERIALIZABLE"));
            Ok(())
        })).await;
        r.unwrap(); // refused before it began, like NEVER: the outer is not marked (Spring)

        let r: AppResult<()> = env.run_with(strict, Transactional::new().read_only(true).run(async {
            let joined: AppResult<()> = scope(Required).run(async { Ok(()) }).await;
            let err = joined.unwrap_err();
            assert!(err.tx().to_string().contains("read-write but the transaction is read-only"), "{err:?}");
            Ok(())
        })).await;
        r.unwrap();
        // A read-only participant in a read-write transaction is fine.
        let r: AppResult<()> = env.run_with(strict, scope(Required).run(async {
            let joined: AppResult<()> = Transactional::new().read_only(true).run(env.insert(3)).await;
            joined
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1, 3]);
    }
}

conformance! {
    /// A body that runs past its timeout is cancelled, rolled back, and the call returns a
    /// timeout error promptly.
    async fn timeout_cancels_and_rolls_back(env: Env<D>) {
        let started = Instant::now();
        let r: AppResult<()> = env.run(Transactional::new().timeout(Duration::from_millis(300)).run(async {
            env.insert(1).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        })).await;
        let elapsed = started.elapsed();
        let err = r.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert!(err.tx().to_string().contains("timed out after 300ms"), "{}", err.tx());
        assert!(elapsed < Duration::from_secs(3), "returned after {elapsed:?}");
        env.eventually("rolled back and clean", || env.pool_is_clean()).await;
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// A joined scope's own timeout fails it, which marks the transaction; a joined scope
    /// cannot outlive the owner's deadline.
    async fn timeouts_of_joined_scopes(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let inner: AppResult<()> = Transactional::new().timeout(Duration::from_millis(100)).run(async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            }).await;
            assert!(inner.unwrap_err().is_timeout());
            Ok(())
        })).await;
        assert!(r.unwrap_err().is_unexpected_rollback());

        let started = Instant::now();
        let r: AppResult<()> = env.run(Transactional::new().timeout(Duration::from_millis(200)).run(async {
            let inner: AppResult<()> = Transactional::new().timeout(Duration::from_secs(60)).run(async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            }).await;
            inner
        })).await;
        assert!(r.unwrap_err().is_timeout());
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(env.ids().await.is_empty());
    }
}
