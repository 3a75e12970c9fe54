//! When the database ends or aborts a transaction by itself (docs/SEMANTICS.md, "When the
//! database ends a transaction"): PostgreSQL aborts it at a failed statement, MySQL rolls back
//! a deadlock's victim and carries on, SQLite rolls back on `INSERT OR ROLLBACK`. Whatever the
//! scope's code does next, nothing written after that point is kept, and what the call returns
//! and its hooks see is what the database did: a rollback where it is known, an unknown
//! outcome where it cannot be (never a commit, never a rollback that may not be one).

use std::sync::Arc;

use tokio::sync::Notify;
use transactional::{transactional, Propagation::*, RollbackCause, Transactional};

use crate::common::underneath::ended_by_the_database;
use crate::common::{AppError, AppResult, Env, Log, My, TestDb};
use crate::conformance;

fn tx_error(r: &AppResult<()>) -> &transactional::Error {
    match r {
        Err(AppError::Tx(e)) => e,
        other => panic!("expected the library's error, got {other:?}"),
    }
}

fn is_aborted(r: &AppResult<()>) -> bool {
    matches!(r, Err(AppError::Tx(transactional::Error::Aborted { .. })))
}

/// A joined scope that makes the database end the transaction (its error is read through
/// the annotated fn's error type); tells `failed` once it has.
#[transactional]
async fn fails_underneath<D: TestDb>(env: &Env<D>, failed: &Notify) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let r = ended_by_the_database(env, 1).await;
    failed.notify_one();
    r
}

/// A joined scope that writes `count` rows from `from` once `failed` is told, going on
/// whatever each write answers (SQLite and PostgreSQL refuse them; MySQL runs them in a
/// transaction of their own).
#[transactional]
async fn writes_after<D: TestDb>(
    env: &Env<D>,
    failed: &Notify,
    from: i64,
    count: i64,
) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    failed.notified().await;
    for id in from..from + count {
        let _ = env.insert(id).await;
    }
    Ok(())
}

conformance! {
    /// `join!` of two joined branches: A makes the database end the transaction, B writes 10
    /// rows after it. The scope returns A's error, the hooks see a rollback, and none of B's
    /// rows is kept (MySQL ran them in a new transaction that the scope's end rolled back;
    /// SQLite and PostgreSQL refused them).
    async fn rows_written_after_the_database_ended_the_transaction_are_not_kept(env: Env<D>) {
        let log = Log::default();
        let failed = Notify::new();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            log.record("owner").await;
            let (a, b) = tokio::join!(fails_underneath(&env, &failed), writes_after(&env, &failed, 100, 10));
            b?;
            a
        })).await;
        assert!(matches!(r, Err(AppError::Db(_))), "A's error: {r:?}");
        assert!(env.ids().await.is_empty(), "nothing is kept: {:?}", env.ids().await);
        assert_eq!(log.of("owner"), ["after_rollback Error", "after_completion RolledBack"]);
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}

conformance! {
    /// A joined scope makes the database end the transaction; the owner handles its error,
    /// writes one more row and returns `Ok`: `UnexpectedRollback`, and that row is not kept.
    async fn the_owner_writing_on_after_a_joined_failure_keeps_nothing(env: Env<D>) {
        let log = Log::default();
        let failed = Notify::new();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            log.record("owner").await;
            let joined = fails_underneath(&env, &failed).await;
            assert!(joined.is_err());
            let _ = env.insert(2).await;
            Ok(())
        })).await;
        assert!(r.as_ref().unwrap_err().is_unexpected_rollback(), "{r:?}");
        assert!(env.ids().await.is_empty(), "{:?}", env.ids().await);
        assert_eq!(log.of("owner"), ["after_rollback UnexpectedRollback", "after_completion RolledBack"]);
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}

conformance! {
    /// The owner's own code catches the error of the statement after which the database ended
    /// the transaction, writes on and returns `Ok`. Nothing is kept. PostgreSQL and SQLite
    /// know it was a rollback (`Aborted`); on MySQL nothing the scope saw says whether the
    /// transaction was rolled back or committed implicitly, so it says it cannot know
    /// (`EndedUnderneath`, hooks see `Unknown`) rather than claim a rollback.
    async fn a_caught_failure_is_never_reported_as_a_commit(env: Env<D>) {
        let log = Log::default();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            log.record("scope").await;
            assert!(ended_by_the_database(&env, 1).await.is_err());
            let _ = env.insert(2).await;
            Ok(())
        })).await;
        assert!(env.ids().await.is_empty(), "{:?}", env.ids().await);
        if D::NAME == "mysql" {
            let error = tx_error(&r);
            assert!(matches!(error, transactional::Error::EndedUnderneath { .. }), "{error:?}");
            assert!(error.is_outcome_unknown());
            assert!(error.to_string().contains("cannot be known"), "{error}");
            assert_eq!(log.of("scope"), ["after_completion Unknown"]);
        } else {
            assert!(is_aborted(&r), "{r:?}");
            assert!(!tx_error(&r).is_outcome_unknown());
            assert!(tx_error(&r).to_string().contains("nothing of it was committed"));
            assert_eq!(log.of("scope"), [format!("after_rollback {:?}", RollbackCause::Aborted), "after_completion RolledBack".into()]);
        }
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}

conformance! {
    /// A guard held across the statement after which SQLite rolled the transaction back: the
    /// next statement on it would commit on its own in autocommit; it fails instead (SQLite's
    /// commit hook refuses it). On MySQL it runs in a new transaction that the end rolls back;
    /// on PostgreSQL the aborted transaction refuses it.
    async fn a_statement_on_a_guard_held_across_the_rollback_is_not_kept(env: Env<D>) {
        if D::NAME == "mysql" {
            // The deadlock needs statements of its own; the shapes above cover MySQL.
            return;
        }
        let table = env.table.clone();
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            env.insert(1).await?;
            let mut conn = transactional::connection::<D::DB>().await?;
            let undo = match D::NAME {
                "sqlite" => format!("INSERT OR ROLLBACK INTO {table} (id) VALUES (1)"),
                _ => format!("INSERT INTO {table} (id) VALUES (1)"),
            };
            assert!(D::exec(&mut conn, undo).await.is_err());
            let after = D::exec(&mut conn, format!("INSERT INTO {table} (id) VALUES (2)")).await;
            assert!(after.is_err(), "the write after the rollback fails");
            Ok(())
        })).await;
        assert!(is_aborted(&r), "{r:?}");
        assert!(env.ids().await.is_empty(), "{:?}", env.ids().await);
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}

conformance! {
    /// A NESTED scope whose statement makes the database end the whole transaction cannot
    /// save the outer one on MySQL or SQLite (the savepoint went with it): the outer's later
    /// writes are not kept and its `Ok` becomes `UnexpectedRollback`. On PostgreSQL the failed
    /// statement only aborts the savepoint: the outer goes on and commits.
    async fn a_nested_scope_cannot_undo_a_rollback_of_the_whole_transaction(env: Env<D>) {
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            let failed = Notify::new();
            let nested: AppResult<()> = Transactional::new().propagation(Nested).run(fails_underneath(&env, &failed)).await;
            assert!(nested.is_err());
            let _ = env.insert(2).await;
            Ok(())
        })).await;
        if D::NAME == "postgres" {
            r.unwrap();
            assert_eq!(env.ids().await, [2]);
        } else {
            assert!(r.as_ref().unwrap_err().is_unexpected_rollback(), "{r:?}");
            assert!(env.ids().await.is_empty(), "{:?}", env.ids().await);
        }
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}

conformance! {
    /// COMMIT or ROLLBACK sent through a connection guard (which the guard's docs forbid)
    /// ends the transaction behind its scope. The scope never claims what it cannot know:
    /// PostgreSQL and MySQL report an unknown outcome (`EndedUnderneath`); SQLite refuses the
    /// COMMIT (its commit hook) and knows the ROLLBACK was one. What ran after it is kept only
    /// on PostgreSQL, which cannot refuse a statement outside a transaction (the error says so).
    async fn commit_or_rollback_sent_through_a_guard_is_reported_for_what_it_did(env: Env<D>) {
        for statement in ["ROLLBACK", "COMMIT"] {
            let log = Log::default();
            let r: AppResult<()> = env.run(Transactional::new().run(async {
                env.insert(1).await?;
                log.record("scope").await;
                let sent = env.exec_current(statement.into()).await;
                if D::NAME == "sqlite" && statement == "COMMIT" {
                    assert!(sent.is_err(), "SQLite refuses a COMMIT the scope did not send");
                }
                let _ = env.insert(2).await;
                Ok(())
            })).await;
            let ids = env.ids().await;
            match (D::NAME, statement) {
                ("sqlite", _) => {
                    assert!(is_aborted(&r), "{statement}: {r:?}");
                    assert!(ids.is_empty(), "{statement}: {ids:?}");
                    assert_eq!(log.of("scope"), ["after_rollback Aborted", "after_completion RolledBack"]);
                }
                (_, _) => {
                    assert!(tx_error(&r).is_outcome_unknown(), "{statement}: {r:?}");
                    assert_eq!(log.of("scope"), ["after_completion Unknown"]);
                    let kept: &[i64] = match (D::NAME, statement) {
                        ("postgres", "ROLLBACK") => &[2],
                        ("postgres", _) => &[1, 2],
                        (_, "ROLLBACK") => &[],
                        _ => &[1],
                    };
                    assert_eq!(ids, kept, "{statement}");
                }
            }
            env.observe(format!("DELETE FROM {}", env.table)).await;
        }
        env.eventually("the pool is clean", || env.pool_is_clean()).await;
    }
}

/// MySQL, through the programmatic API: `Transactional::run` cannot read the body's error
/// type, so nothing tells the end of the scope that a deadlock (not DDL) ended the
/// transaction. It reports an unknown outcome instead of a rollback; nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_without_a_readable_error_reports_an_unknown_outcome() {
    let Some(env) = Env::<My>::new("underneath_unread").await else {
        return;
    };
    let log = Log::default();
    let failed = Arc::new(Notify::new());
    let r: AppResult<()> = env
        .run(Transactional::new().run(async {
            log.record("owner").await;
            let a = Transactional::new().run(async {
                let r = ended_by_the_database(&env, 1).await;
                failed.notify_one();
                r
            });
            let b = Transactional::new().run(async {
                failed.notified().await;
                env.insert(100).await
            });
            let (a, b) = tokio::join!(a, b);
            b?;
            a
        }))
        .await;
    assert!(matches!(r, Err(AppError::Db(_))), "A's error: {r:?}");
    assert!(env.ids().await.is_empty(), "{:?}", env.ids().await);
    assert_eq!(log.of("owner"), ["after_completion Unknown"]);
    env.eventually("the pool is clean", || env.pool_is_clean())
        .await;
}

/// A joined scope whose duplicate-key error commits (`no_rollback_for`).
#[transactional(no_rollback_for = |_| true)]
async fn duplicate_that_commits<D: TestDb>(env: &Env<D>) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    env.insert(1).await
}

conformance! {
    /// The error that ends an aborted transaction quotes the statement that failed first,
    /// where a scope returned it (here a joined scope whose error commits), not the database's
    /// follow-up ("current transaction is aborted"). Only PostgreSQL aborts a transaction at a
    /// duplicate key; MySQL and SQLite undo the statement alone and commit the rest.
    async fn an_aborted_transaction_quotes_the_statement_that_failed_first(env: Env<D>) {
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            env.insert(1).await?;
            assert!(duplicate_that_commits(&env).await.is_err());
            Ok(())
        })).await;
        if D::NAME == "postgres" {
            let message = tx_error(&r).to_string();
            assert!(is_aborted(&r), "{r:?}");
            assert!(message.contains("duplicate key") && message.contains("23505"), "{message}");
            assert!(env.ids().await.is_empty());
        } else {
            r.unwrap();
            assert_eq!(env.ids().await, [1]);
        }
        // Where nothing quotes it, the error says the scope caught it.
        let r: AppResult<()> = env.run(Transactional::new().run(async {
            env.insert(2).await?;
            let _ = env.insert(2).await;
            Ok(())
        })).await;
        if D::NAME == "postgres" {
            let message = tx_error(&r).to_string();
            assert!(message.contains("its error was caught") && !message.contains("25P02"), "{message}");
        } else {
            r.unwrap();
        }
    }
}
