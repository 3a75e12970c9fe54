//! Statements that commit implicitly (docs/SEMANTICS.md, "When the database ends a
//! transaction"): MySQL commits the open transaction before DDL (CREATE, ALTER, DROP, …) and
//! drops its savepoints; whether the end of the scope then finds a rollback or a commit, the
//! server cannot be asked, so the scope reports an unknown outcome, never a rollback. What ran
//! after the DDL is rolled back. PostgreSQL and SQLite run DDL inside the transaction: it
//! commits or rolls back with the rest.

use transactional::{Propagation::*, Transactional};

use crate::common::{AppError, AppResult, Log, TestDb};
use crate::conformance;

fn ddl<D: TestDb>(table: &str) -> String {
    format!("CREATE TABLE {table}_ddl (id BIGINT)")
}

fn tx_error(r: &AppResult<()>) -> &transactional::Error {
    match r {
        Err(AppError::Tx(e)) => e,
        other => panic!("expected the library's error, got {other:?}"),
    }
}

conformance! {
    /// INSERT, CREATE TABLE, INSERT, then `Ok` or `Err`. MySQL: the first row was committed by
    /// the DDL, the second is rolled back; the scope cannot know what the DDL did to the work
    /// before it, so `Ok` becomes `EndedUnderneath` (an `Err` stays the body's own) and the
    /// hooks see `Unknown`, never an after-rollback. PostgreSQL and SQLite: the DDL is part of
    /// the transaction, which commits (both rows, and the table) or rolls back (nothing).
    async fn ddl_in_a_transaction_is_reported_for_what_it_did(env: Env<D>) {
        let table = env.table.clone();
        for fails in [false, true] {
            let log = Log::default();
            let r: AppResult<()> = env.run(Transactional::new().run(async {
                log.record("scope").await;
                env.insert(1).await?;
                env.exec_current(ddl::<D>(&table)).await?;
                env.insert(2).await?;
                if fails { Err(AppError::Boom("after the DDL")) } else { Ok(()) }
            })).await;
            let ids = env.ids().await;
            if D::NAME == "mysql" {
                if fails {
                    assert!(r.as_ref().unwrap_err().is_boom(), "the body's own error stands: {r:?}");
                } else {
                    let error = tx_error(&r);
                    assert!(matches!(error, transactional::Error::EndedUnderneath { .. }), "{error:?}");
                    assert!(error.is_outcome_unknown());
                    assert!(error.to_string().contains("DDL"), "{error}");
                }
                assert_eq!(ids, [1], "fails: {fails}");
                assert_eq!(log.of("scope"), ["after_completion Unknown"], "fails: {fails}");
            } else if fails {
                assert!(r.unwrap_err().is_boom());
                assert!(ids.is_empty());
                assert_eq!(log.of("scope"), ["after_rollback Error", "after_completion RolledBack"]);
            } else {
                r.unwrap();
                assert_eq!(ids, [1, 2]);
                assert_eq!(log.of("scope"), ["after_commit", "after_completion Committed"]);
            }
            env.observe(format!("DELETE FROM {table}")).await;
            env.observe(format!("DROP TABLE IF EXISTS {table}_ddl")).await;
        }
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}

conformance! {
    /// The DDL inside a NESTED scope: on MySQL it commits the whole transaction and drops
    /// both levels' savepoints. The NESTED scope returns `EndedUnderneath` instead of `Ok`,
    /// and so does the owner that went on after it; the rows before the DDL (the outer's and
    /// the NESTED scope's) stay, the row after it does not. PostgreSQL and SQLite release the
    /// savepoint and commit it all.
    async fn ddl_in_a_nested_scope_is_reported_at_both_levels(env: Env<D>) {
        let table = env.table.clone();
        let log = Log::default();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            log.record("owner").await;
            env.insert(1).await?;
            let nested: AppResult<()> = Transactional::new().propagation(Nested).run(async {
                env.insert(2).await?;
                env.exec_current(ddl::<D>(&table)).await?;
                env.insert(3).await
            }).await;
            if D::NAME == "mysql" {
                let error = tx_error(&nested);
                assert!(matches!(error, transactional::Error::EndedUnderneath { .. }), "{error:?}");
            } else {
                nested.unwrap();
            }
            Ok(())
        })).await;
        if D::NAME == "mysql" {
            assert!(matches!(tx_error(&r), transactional::Error::EndedUnderneath { .. }), "{r:?}");
            assert_eq!(env.ids().await, [1, 2]);
            assert_eq!(log.of("owner"), ["after_completion Unknown"]);
        } else {
            r.unwrap();
            assert_eq!(env.ids().await, [1, 2, 3]);
            assert_eq!(log.of("owner"), ["after_commit", "after_completion Committed"]);
        }
        env.observe(format!("DROP TABLE IF EXISTS {table}_ddl")).await;
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}
