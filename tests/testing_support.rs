//! `transactional::testing`: mocked out, recording mock, captured hooks, rollback after a test.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{AppError, AppResult, Env, Lite, Pg};
use transactional::testing::{self, MockDataSource, MockOutcome};
use transactional::{transactional, Dialect, EventKind, Isolation, Propagation, RollbackCause};

// ---- a small service, as a user would write it -------------------------------------------

#[transactional(isolation = "SERIALIZABLE")]
async fn place_order(payment_ok: bool, hooks_ran: Arc<AtomicUsize>) -> AppResult<u32> {
    transactional::after_commit(move || async move {
        hooks_ran.fetch_add(1, Ordering::SeqCst);
    })
    .await;
    audit().await?;
    if !payment_ok {
        return Err(AppError::Boom("payment declined"));
    }
    Ok(42)
}

#[transactional(propagation = "REQUIRES_NEW")]
async fn audit() -> AppResult<()> {
    Ok(())
}

#[transactional(propagation = "NESTED")]
async fn try_coupon(valid: bool) -> AppResult<()> {
    if valid {
        Ok(())
    } else {
        Err(AppError::Boom("coupon invalid"))
    }
}

#[transactional]
async fn checkout(coupon_valid: bool) -> AppResult<()> {
    let _ = try_coupon(coupon_valid).await;
    Ok(())
}

#[transactional]
async fn load_user() -> AppResult<i64> {
    let _conn = transactional::connection::<sqlx::Postgres>().await?;
    Ok(1)
}

// ---- mocked out ------------------------------------------------------------------------------

#[tokio::test]
async fn mocked_runs_bodies_with_no_data_source_and_hooks_as_committed() {
    let ran = Arc::new(AtomicUsize::new(0));
    let id = testing::mocked(place_order(true, ran.clone()))
        .await
        .unwrap();
    assert_eq!(id, 42);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "after-commit ran as if committed"
    );
    assert!(testing::mocked(async { !transactional::is_active() }).await);

    // Outside the switch, with nothing registered, the same call fails clearly.
    let err = place_order(true, ran.clone()).await.unwrap_err();
    assert!(
        matches!(err.tx(), transactional::Error::NoDataSource { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn mocked_with_rollback_runs_rollback_hooks() {
    let (committed, rolled_back) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (committed.clone(), rolled_back.clone());
    testing::mocked_with(MockOutcome::Rollback, async move {
        transactional::after_commit(move || async move {
            c.fetch_add(1, Ordering::SeqCst);
        })
        .await;
        transactional::after_rollback(move |cause| async move {
            assert_eq!(cause, RollbackCause::RollbackOnly);
            r.fetch_add(1, Ordering::SeqCst);
        })
        .await;
    })
    .await;
    assert_eq!(committed.load(Ordering::SeqCst), 0);
    assert_eq!(rolled_back.load(Ordering::SeqCst), 1);
}

/// A mocked test and a real test at the same time, on two worker threads: neither sees the
/// other's mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mocked_and_real_tests_in_parallel_do_not_interfere() {
    let env = Arc::new(Env::<Lite>::new("mocked_vs_real").await.unwrap());
    let mocked = tokio::spawn(testing::mocked(async {
        for _ in 0..50 {
            let active = transactional::Transactional::new()
                .run(async { Ok::<_, AppError>(transactional::is_active()) })
                .await
                .unwrap();
            assert!(!active, "mocked: no transaction");
            tokio::task::yield_now().await;
        }
    }));
    let real_env = env.clone();
    let real = tokio::spawn(async move {
        for id in 0..50 {
            let r: AppResult<()> = real_env
                .run(transactional::Transactional::new().run(async {
                    assert!(transactional::is_active(), "real: a transaction");
                    real_env.insert(id).await
                }))
                .await;
            r.unwrap();
        }
    });
    mocked.await.unwrap();
    real.await.unwrap();
    assert_eq!(env.ids().await.len(), 50);
}

// ---- the recording mock ----------------------------------------------------------------------

#[tokio::test]
async fn recording_mock_shows_a_serializable_transaction_rolled_back_when_payment_fails() {
    let mock = MockDataSource::new(Dialect::Postgres);
    let ran = Arc::new(AtomicUsize::new(0));
    let err = mock
        .run("default", place_order(false, ran.clone()))
        .await
        .unwrap_err();
    assert!(err.is_boom());
    assert_eq!(ran.load(Ordering::SeqCst), 0, "no after-commit on rollback");
    // place_order began a SERIALIZABLE transaction on connection 1; audit() ran REQUIRES_NEW on
    // connection 2 and committed; place_order rolled back.
    assert_eq!(mock.connections(), 2);
    assert_eq!(
        mock.statements_on(1),
        ["BEGIN ISOLATION LEVEL SERIALIZABLE", "ROLLBACK"]
    );
    // COMMIT rides with a SAVEPOINT that fails if PostgreSQL had aborted the transaction.
    assert_eq!(
        mock.statements_on(2),
        ["BEGIN", "SAVEPOINT transactional_commit", "COMMIT"]
    );

    let events = mock.events();
    let began = events.iter().find(|e| e.kind == EventKind::Began).unwrap();
    assert!(
        began.scope.name.ends_with("place_order"),
        "{}",
        began.scope.name
    );
    assert_eq!(began.scope.isolation, Isolation::Serializable);
    let kinds: Vec<(String, EventKind)> = events
        .into_iter()
        .map(|e| (e.scope.name.rsplit("::").next().unwrap().to_owned(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("place_order".into(), EventKind::Began),
            (
                "place_order".into(),
                EventKind::HookRegistered {
                    hook: "after_commit"
                }
            ),
            ("audit".into(), EventKind::Suspended),
            ("audit".into(), EventKind::Began),
            ("audit".into(), EventKind::Committed),
            ("audit".into(), EventKind::Resumed),
            (
                "place_order".into(),
                EventKind::RolledBack {
                    cause: RollbackCause::Error
                }
            ),
        ]
    );
}

#[tokio::test]
async fn recording_mock_shows_savepoints() {
    let mock = MockDataSource::new(Dialect::MySql);
    mock.run("default", checkout(false)).await.unwrap();
    assert_eq!(
        mock.statements(),
        [
            // Autocommit off, so that nothing the server runs after ending the transaction
            // commits on its own; a savepoint that a deadlock's rollback (or an implicit
            // commit) would take with it: COMMIT checks it, and the session gets autocommit
            // back in the same round trip.
            "SET autocommit = 0",
            "SAVEPOINT transactional_open",
            "SAVEPOINT tx_sp_1",
            "ROLLBACK TO SAVEPOINT tx_sp_1",
            "RELEASE SAVEPOINT tx_sp_1",
            "RELEASE SAVEPOINT transactional_open",
            "COMMIT",
            "SET autocommit = 1"
        ]
    );
    let mock = MockDataSource::new(Dialect::Sqlite);
    mock.run("default", checkout(true)).await.unwrap();
    assert_eq!(
        mock.statements(),
        [
            "BEGIN DEFERRED",
            "SAVEPOINT tx_sp_1",
            "RELEASE SAVEPOINT tx_sp_1",
            "COMMIT"
        ]
    );
}

#[tokio::test]
async fn recording_mock_has_the_real_rollback_only_semantics() {
    let mock = MockDataSource::new(Dialect::Postgres);
    let r: AppResult<()> = mock
        .run(
            "default",
            transactional::Transactional::new().run(async {
                let _ = transactional::Transactional::new()
                    .run(async { Err::<(), _>(AppError::Boom("participant fails")) })
                    .await;
                Ok(())
            }),
        )
        .await;
    assert!(r.unwrap_err().is_unexpected_rollback());
    assert_eq!(mock.statements(), ["BEGIN", "ROLLBACK"]);
}

#[tokio::test]
async fn a_repository_asking_the_mock_for_a_connection_gets_a_clear_error() {
    let mock = MockDataSource::new(Dialect::Postgres);
    let err = mock.run("default", load_user()).await.unwrap_err();
    assert!(
        matches!(err.tx(), transactional::Error::MockConnection { .. }),
        "{err:?}"
    );
    assert!(err.tx().to_string().contains("recording mock"));
}

#[tokio::test]
async fn recording_mock_can_fail_a_commit() {
    let mock = MockDataSource::new(Dialect::Postgres);
    mock.fail_next("COMMIT");
    let outcome = Arc::new(std::sync::Mutex::new(None));
    let seen = outcome.clone();
    let r: AppResult<()> = mock
        .run(
            "default",
            transactional::Transactional::new()
                .propagation(Propagation::Required)
                .run(async move {
                    transactional::after_completion(move |o| async move {
                        *seen.lock().unwrap() = Some(o);
                    })
                    .await;
                    Ok(())
                }),
        )
        .await;
    assert!(matches!(
        r.unwrap_err().tx(),
        transactional::Error::Commit {
            outcome_unknown: true,
            ..
        }
    ));
    assert_eq!(
        *outcome.lock().unwrap(),
        Some(transactional::Outcome::Unknown)
    );
}

// ---- captured hooks --------------------------------------------------------------------------

#[tokio::test]
async fn capture_after_commit_hands_the_hooks_to_the_test() {
    let mock = MockDataSource::new(Dialect::Postgres);
    let ran = Arc::new(AtomicUsize::new(0));
    let (result, hooks) =
        testing::capture_after_commit(mock.run("default", place_order(true, ran.clone()))).await;
    assert_eq!(result.unwrap(), 42);
    assert_eq!(hooks.len(), 1);
    assert_eq!(ran.load(Ordering::SeqCst), 0, "captured, not run");
    hooks.run().await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

/// Where transactions are mocked out as rolling back, production would run no after-commit
/// hook: none is captured.
#[tokio::test]
async fn capture_after_commit_captures_nothing_where_transactions_roll_back() {
    let ran = Arc::new(AtomicUsize::new(0));
    let (result, hooks) = testing::capture_after_commit(testing::mocked_with(
        MockOutcome::Rollback,
        place_order(true, ran.clone()),
    ))
    .await;
    assert_eq!(result.unwrap(), 42);
    assert!(hooks.is_empty(), "{hooks:?}");
    let (_, hooks) =
        testing::capture_after_commit(testing::mocked(place_order(true, ran.clone()))).await;
    assert_eq!(hooks.len(), 1, "as if committed: captured");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

// ---- rollback after the test, on real databases ----------------------------------------------

async fn rollback_after_leaves_the_database_clean<D: common::TestDb>()
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let Some(env) = Env::<D>::new("rollback_after").await else {
        return;
    };
    let ran = Arc::new(AtomicUsize::new(0));
    let r = env
        .run(testing::rollback_after(async {
            let outer = env.session().await.unwrap();
            env.insert(1).await.unwrap();
            // A REQUIRED fn joins the test's transaction: same session.
            let joined: AppResult<i64> = transactional::Transactional::new()
                .run(async {
                    env.insert(2).await?;
                    let r = ran.clone();
                    transactional::after_commit(move || async move {
                        r.fetch_add(1, Ordering::SeqCst);
                    })
                    .await;
                    env.session().await
                })
                .await;
            assert_eq!(joined.unwrap(), outer);
            // A NESTED fn nests in it.
            let nested: AppResult<()> = transactional::Transactional::new()
                .propagation(Propagation::Nested)
                .run(async {
                    env.insert(3).await?;
                    Err(AppError::Boom("undone to its savepoint"))
                })
                .await;
            assert!(nested.is_err());
            assert_eq!(
                env.visible().await.unwrap(),
                2,
                "the test sees its own work"
            );
            "test body result"
        }))
        .await;
    assert_eq!(r.unwrap(), "test body result");
    assert!(env.ids().await.is_empty(), "everything was rolled back");
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "the test transaction never commits"
    );
}

#[tokio::test]
async fn rollback_after_on_postgres() {
    rollback_after_leaves_the_database_clean::<Pg>().await;
}

#[tokio::test]
async fn rollback_after_on_sqlite() {
    rollback_after_leaves_the_database_clean::<Lite>().await;
}

#[tokio::test]
async fn rollback_after_on_mariadb() {
    rollback_after_leaves_the_database_clean::<common::My>().await;
}

/// REQUIRES_NEW escapes the test transaction: its work is committed (documented).
#[tokio::test]
async fn requires_new_escapes_rollback_after() {
    let Some(env) = Env::<Pg>::new("rollback_after_escape").await else {
        return;
    };
    let r = env
        .run(testing::rollback_after(async {
            let escaped: AppResult<()> = transactional::Transactional::new()
                .propagation(Propagation::RequiresNew)
                .run(env.insert(7))
                .await;
            escaped.unwrap();
            env.insert(8).await.unwrap();
        }))
        .await;
    r.unwrap();
    assert_eq!(env.ids().await, vec![7]);
}

/// In mocked mode there is no connection: asking for one says so, and how to get one.
#[tokio::test]
async fn asking_for_a_connection_in_mocked_mode_says_it_is_mocked() {
    let err = testing::mocked(async { transactional::connection::<sqlx::Sqlite>().await })
        .await
        .unwrap_err();
    assert!(
        matches!(err, transactional::Error::Mocked { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("mocked out"), "{message}");
    assert!(message.contains("with_data_source"), "{message}");
}
