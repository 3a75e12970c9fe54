//! `testing::rollback_after` on real databases (docs/SEMANTICS.md, "Testing"): a scope inside
//! the test transaction that would begin a transaction of its own in production gets a
//! savepoint, so a scope that hits a database error (which aborts a whole transaction on
//! PostgreSQL) undoes only its own work and the rest of the test goes on.

use transactional::testing;
use transactional::Transactional;

use crate::common::AppResult;
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
