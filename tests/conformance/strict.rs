//! Strict mode: a data source whose connections are handed out only inside a transaction
//! (docs/SEMANTICS.md, "The current connection").

use transactional::{DataSourceSettings, Error, Propagation::*};

use crate::common::{scope, AppError, AppResult};
use crate::conformance;

fn strict() -> DataSourceSettings {
    DataSourceSettings::new().strict(true)
}

fn refused(r: AppResult<()>) -> bool {
    matches!(r, Err(AppError::Tx(Error::OutsideTransaction { ref data_source })) if data_source == "default")
}

conformance! {
    /// Outside any scope, a repository call is refused (the error names the data source and
    /// what to do) instead of committing on its own; a transfer whose caller forgot the
    /// attribute writes nothing.
    async fn outside_a_transaction_is_refused(env: Env<D>) {
        let r: AppResult<()> = env.run_with(strict(), env.insert(1)).await;
        assert!(refused(r), "refused");
        let transfer = async {
            env.insert(2).await?;
            env.insert(3).await
        };
        let r: AppResult<()> = env.run_with(strict(), transfer).await;
        let error = r.unwrap_err();
        let message = error.tx().to_string();
        assert!(message.contains("`default`") && message.contains("#[transactional]") && message.contains("transactional::autocommit"), "{message}");
        assert_eq!(env.ids().await, Vec::<i64>::new(), "nothing committed");
        // The same data source without strict mode autocommits, as before.
        env.run(env.insert(4)).await.unwrap();
        assert_eq!(env.ids().await, vec![4]);
    }
}

conformance! {
    /// Inside a transaction every propagation that has one works as usual; scopes that
    /// declare they run without one (SUPPORTS, NOT_SUPPORTED) get a connection in autocommit.
    async fn inside_scopes_and_declared_autocommit(env: Env<D>) {
        let r: AppResult<()> = env.run_with(strict(), scope(Required).run(async {
            env.insert(1).await?;
            scope(Nested).run(env.insert(2)).await
        })).await;
        r.unwrap();
        let r: AppResult<()> = env.run_with(strict(), scope(Required).run(async {
            env.insert(3).await?;
            Err(AppError::Boom("rolled back"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        let r: AppResult<()> = env.run_with(strict(), scope(Supports).run(env.insert(4))).await;
        r.unwrap();
        let r: AppResult<()> = env.run_with(strict(), scope(NotSupported).run(env.insert(5))).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1, 2, 4, 5]);
    }
}

conformance! {
    /// `autocommit` allows one call to run without a transaction; a scope inside it is still
    /// a transaction.
    async fn autocommit_allows_one_call(env: Env<D>) {
        let r: AppResult<()> = env.run_with(strict(), transactional::autocommit(env.insert(1))).await;
        r.unwrap();
        let r: AppResult<()> = env.run_with(strict(), transactional::autocommit(scope(Required).run(async {
            env.insert(2).await?;
            Err(AppError::Boom("rolled back"))
        }))).await;
        assert!(r.unwrap_err().is_boom());
        // Only that call: the next one is refused again.
        let r: AppResult<()> = env.run_with(strict(), env.insert(3)).await;
        assert!(refused(r));
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// An after-commit hook runs after its transaction: on a strict data source its
    /// connection is in autocommit, as on any other (the hook runs without a transaction).
    async fn after_commit_hooks_still_get_a_connection(env: Env<D>) {
        let env = std::sync::Arc::new(env);
        let hook_env = env.clone();
        let r: AppResult<()> = env.run_with(strict(), scope(Required).run(async {
            env.insert(1).await?;
            transactional::after_commit(move || async move { hook_env.insert(2).await }).await;
            Ok(())
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1, 2]);
    }
}
