//! A transaction the database already rolled back is never reported as committed
//! (docs/SEMANTICS.md, "Outcome"): PostgreSQL aborts a transaction at its first failed statement
//! and answers a later COMMIT with ROLLBACK; MySQL rolls a deadlocked transaction back and goes
//! on in autocommit; SQLite rolls back on some errors. The scope returns `Error::Aborted` and its
//! hooks see a rollback.

use std::time::Duration;

use transactional::{Propagation::*, RollbackCause, Transactional};

use crate::common::{AppError, AppResult, Env, Log, TestDb};
use crate::conformance;

fn is_aborted(r: &AppResult<()>) -> bool {
    matches!(r, Err(AppError::Tx(transactional::Error::Aborted { .. })))
}

conformance! {
    /// A failing statement whose error the body swallows: on PostgreSQL the transaction was
    /// aborted, so COMMIT cannot happen and the scope says so; MySQL and SQLite undo only the
    /// failed statement and commit the rest.
    async fn a_swallowed_statement_error_is_not_reported_as_a_commit(env: Env<D>) {
        let log = Log::default();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            env.insert(1).await?;
            log.record("scope").await;
            let duplicate = env.insert(1).await;
            assert!(duplicate.is_err());
            Ok(())
        })).await;
        if D::NAME == "postgres" {
            assert!(is_aborted(&r), "{r:?}");
            assert!(r.unwrap_err().tx().to_string().contains("aborted"));
            assert!(env.ids().await.is_empty());
            assert_eq!(log.of("scope"), [format!("after_rollback {:?}", RollbackCause::Aborted), "after_completion RolledBack".into()]);
        } else {
            r.unwrap();
            assert_eq!(env.ids().await, [1]);
            assert_eq!(log.of("scope"), ["after_commit", "after_completion Committed"]);
        }
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// A transaction ended behind the scope's back (here by a raw `ROLLBACK` sent on its
    /// connection; a deadlock does the same on MySQL): the later writes autocommit, and the
    /// scope reports that its own COMMIT did not happen instead of claiming success.
    async fn a_transaction_ended_underneath_is_reported(env: Env<D>) {
        let log = Log::default();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            env.insert(1).await?;
            log.record("scope").await;
            env.exec_current("ROLLBACK".into()).await?;
            env.insert(2).await
        })).await;
        assert!(is_aborted(&r), "{r:?}");
        assert_eq!(env.ids().await, [2], "the write after the ROLLBACK autocommitted");
        assert_eq!(log.of("scope"), ["after_rollback Aborted", "after_completion RolledBack"]);
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// Inside a NESTED scope, a failed statement whose error is swallowed: on PostgreSQL the
    /// savepoint cannot be released, so it is rolled back to instead and the NESTED scope
    /// returns `Aborted`; the outer transaction goes on and commits its own work.
    async fn a_nested_scope_with_a_swallowed_failure_rolls_back_to_its_savepoint(env: Env<D>) {
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            env.insert(1).await?;
            let nested: AppResult<()> = Transactional::new().propagation(Nested).run(async {
                env.insert(2).await?;
                let _ = env.insert(1).await;
                Ok(())
            }).await;
            if D::NAME == "postgres" {
                assert!(is_aborted(&nested), "{nested:?}");
            } else {
                nested.unwrap();
            }
            env.insert(3).await
        })).await;
        r.unwrap();
        let expected = if D::NAME == "postgres" { vec![1, 3] } else { vec![1, 2, 3] };
        assert_eq!(env.ids().await, expected);
    }
}

/// MySQL: the victim of a real deadlock, whose error the body swallows, is rolled back by the
/// server; the scope reports it instead of committing what followed in autocommit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swallowed_deadlock_on_mysql_is_reported() {
    use crate::common::My;
    let Some(env) = Env::<My>::new("aborted_deadlock").await else {
        return;
    };
    {
        let mut conn = env.raw().await;
        My::exec(
            &mut conn,
            format!("INSERT INTO {} (id) VALUES (1), (2)", env.table),
        )
        .await
        .unwrap();
    }
    // The other transaction locks row 2 and touches more rows, so InnoDB picks ours as the
    // victim.
    let mut other = env.raw().await;
    My::exec(&mut other, "START TRANSACTION".into())
        .await
        .unwrap();
    for id in 100..120 {
        My::exec(
            &mut other,
            format!("INSERT INTO {} (id) VALUES ({id})", env.table),
        )
        .await
        .unwrap();
    }
    My::exec(
        &mut other,
        format!("UPDATE {} SET note = 'other' WHERE id = 2", env.table),
    )
    .await
    .unwrap();
    let table = env.table.clone();
    let r: AppResult<()> = env
        .run(Transactional::new().run(async {
            env.exec_current(format!("UPDATE {table} SET note = 'ours' WHERE id = 1"))
                .await?;
            let blocked =
                env.exec_current(format!("UPDATE {table} SET note = 'ours' WHERE id = 2"));
            let closes_the_cycle = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                My::exec(
                    &mut other,
                    format!("UPDATE {table} SET note = 'other' WHERE id = 1"),
                )
                .await
            };
            let (ours, theirs) = tokio::join!(blocked, closes_the_cycle);
            assert!(ours.is_err(), "our transaction is the deadlock's victim");
            theirs.unwrap();
            // Swallowed: this write now autocommits, outside any transaction.
            env.insert(3).await
        }))
        .await;
    assert!(is_aborted(&r), "{r:?}");
    My::exec(&mut other, "COMMIT".into()).await.unwrap();
    assert!(env.ids().await.contains(&3));
    assert!(env.pool_is_clean().await);
}
