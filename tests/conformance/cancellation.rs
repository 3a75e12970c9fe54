//! Cancellation at every await: a scope's future dropped after its 1st, 2nd, … k-th poll, until
//! it completes by itself, for each propagation shape. After each drop, once the background
//! cleanup is done: the rows are what the outcome implies (a rollback, or a COMMIT that had
//! completed), no connection sits in a transaction, the pool is idle, and the hooks that ran
//! match the rows. Then the numbered cancellation cases of docs/SEMANTICS.md ("Cancellation").

use std::time::Duration;

use transactional::{Propagation::*, Transactional};

use crate::common::underneath::ended_by_the_database;
use crate::common::{poll_at_most, scope, AppError, AppResult, Env, Log, TestDb};
use crate::conformance;

/// The shapes, each writing ids from `base`.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Required,
    RequiresNewInRequired,
    NestedInRequired {
        nested_fails: bool,
    },
    NestedInNested {
        inner_fails: bool,
    },
    /// The database ends the transaction by itself; the body catches the error and writes on.
    EndedUnderneath,
}

impl Shape {
    const ALL: [Shape; 7] = [
        Shape::Required,
        Shape::RequiresNewInRequired,
        Shape::NestedInRequired {
            nested_fails: false,
        },
        Shape::NestedInRequired { nested_fails: true },
        Shape::NestedInNested { inner_fails: false },
        Shape::NestedInNested { inner_fails: true },
        Shape::EndedUnderneath,
    ];

    async fn run<D: TestDb>(self, env: &Env<D>, log: &Log, base: i64) -> AppResult<()>
    where
        for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    {
        match self {
            Shape::Required => {
                scope(Required)
                    .run(async {
                        env.insert(base + 1).await?;
                        log.record("outer").await;
                        env.insert(base + 2).await
                    })
                    .await
            }
            Shape::RequiresNewInRequired => {
                scope(Required)
                    .run(async {
                        // The inner transaction writes first: SQLite has one writer at a time.
                        let inner: AppResult<()> = scope(RequiresNew)
                            .run(async {
                                env.insert(base + 10).await?;
                                log.record("inner").await;
                                Ok(())
                            })
                            .await;
                        inner?;
                        env.insert(base + 1).await?;
                        log.record("outer").await;
                        env.insert(base + 2).await
                    })
                    .await
            }
            Shape::NestedInRequired { nested_fails } => {
                scope(Required)
                    .run(async {
                        env.insert(base + 1).await?;
                        log.record("outer").await;
                        let _ = scope(Nested)
                            .run(async {
                                env.insert(base + 10).await?;
                                log.record("nested").await;
                                if nested_fails {
                                    return Err(AppError::Boom("nested fails"));
                                }
                                Ok(())
                            })
                            .await;
                        env.insert(base + 2).await
                    })
                    .await
            }
            Shape::NestedInNested { inner_fails } => {
                scope(Required)
                    .run(async {
                        env.insert(base + 1).await?;
                        let outer: AppResult<()> = scope(Nested)
                            .run(async {
                                env.insert(base + 10).await?;
                                log.record("n1").await;
                                let _ = scope(Nested)
                                    .run(async {
                                        env.insert(base + 20).await?;
                                        log.record("n2").await;
                                        if inner_fails {
                                            return Err(AppError::Boom("n2 fails"));
                                        }
                                        Ok(())
                                    })
                                    .await;
                                env.insert(base + 11).await
                            })
                            .await;
                        outer?;
                        env.insert(base + 2).await
                    })
                    .await
            }
            Shape::EndedUnderneath => {
                scope(Required)
                    .run(async {
                        env.insert(base + 1).await?;
                        log.record("outer").await;
                        let _ = ended_by_the_database(env, base + 3).await;
                        let _ = env.insert(base + 2).await;
                        Ok(())
                    })
                    .await
            }
        }
    }

    /// Whether `rows` (offsets from the base) and the hooks that ran agree with one outcome of
    /// this shape: everything rolled back, or a COMMIT that completed.
    fn consistent(self, rows: &[i64], log: &Log) -> Result<(), String> {
        let committed = |tag: &str| log.of(tag) == ["after_commit", "after_completion Committed"];
        let not_committed = |tag: &str| {
            let events = log.of(tag);
            events.is_empty()
                || (events.len() == 2
                    && events[0].starts_with("after_rollback")
                    && events[1] == "after_completion RolledBack")
        };
        let silent = |tag: &str| log.of(tag).is_empty();
        let ok = match self {
            Shape::Required => match rows {
                [] => not_committed("outer"),
                [1, 2] => committed("outer"),
                _ => false,
            },
            Shape::RequiresNewInRequired => match rows {
                [] => not_committed("inner") && not_committed("outer"),
                [10] => committed("inner") && not_committed("outer"),
                [1, 2, 10] => committed("inner") && committed("outer"),
                _ => false,
            },
            Shape::NestedInRequired { nested_fails } => match (rows, nested_fails) {
                // A rolled-back savepoint's hooks are discarded: they never run.
                ([], false) => not_committed("outer") && not_committed("nested"),
                ([1, 2, 10], false) => committed("outer") && committed("nested"),
                ([], true) => not_committed("outer") && silent("nested"),
                ([1, 2], true) => committed("outer") && silent("nested"),
                _ => false,
            },
            Shape::NestedInNested { inner_fails } => match (rows, inner_fails) {
                ([], false) => not_committed("n1") && not_committed("n2"),
                ([1, 2, 10, 11, 20], false) => committed("n1") && committed("n2"),
                ([], true) => not_committed("n1") && silent("n2"),
                ([1, 2, 10, 11], true) => committed("n1") && silent("n2"),
                _ => false,
            },
            // Never committed, whatever was cut where.
            Shape::EndedUnderneath => rows.is_empty() && not_committed("outer"),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("rows {rows:?} with hooks {:?}", log.events()))
        }
    }
}

/// Waits for the background cleanup of a dropped scope: the pool idle and clean, and the
/// rows and hooks consistent; fails after 5 s.
async fn settled<D: TestDb>(env: &Env<D>, shape: Shape, log: &Log, base: i64, k: usize)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let mut last = String::new();
    for _ in 0..100 {
        if env.pool_is_idle() {
            let rows: Vec<i64> = env
                .ids_from(base)
                .await
                .iter()
                .map(|id| id - base)
                .collect();
            match shape.consistent(&rows, log) {
                Ok(()) if env.pool_is_clean().await => return,
                Ok(()) => last = "a pooled connection is inside a transaction".into(),
                Err(why) => last = why,
            }
        } else {
            last = format!(
                "pool not idle: {} connections, {} idle",
                env.pool.size(),
                env.pool.num_idle()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{shape:?} dropped after {k} polls: {last}");
}

conformance! {
    /// Every shape, dropped after each of its polls in turn.
    async fn dropped_at_every_await_the_rows_pool_and_hooks_agree(env: Env<D>, pool(2, Duration::from_secs(5))) {
        for (n, shape) in Shape::ALL.into_iter().enumerate() {
            // MySQL's deadlock takes a third of a second to set up: its drops are the soak's.
            if D::NAME == "mysql" && matches!(shape, Shape::EndedUnderneath) {
                continue;
            }
            let mut completed = false;
            for k in 1..400 {
                let base = (n as i64 * 400 + k as i64) * 100;
                let log = Log::default();
                let ran = poll_at_most(env.run(shape.run(&env, &log, base)), k).await;
                settled(&env, shape, &log, base, k).await;
                if let Some(result) = ran {
                    match shape {
                        Shape::EndedUnderneath => assert!(result.is_err(), "{result:?}"),
                        _ => result.unwrap(),
                    }
                    completed = true;
                    break;
                }
            }
            assert!(completed, "{shape:?} never completed within 400 polls");
        }
    }
}

conformance! {
    /// Item 4: a NESTED scope dropped at each of its awaits, its ROLLBACK TO SAVEPOINT or
    /// RELEASE included, while the transaction around it goes on and commits: the failed
    /// NESTED work is never committed, and the released one's hooks run only if it is.
    async fn a_nested_scope_dropped_while_ending_never_leaves_its_failed_work(env: Env<D>) {
        for fails in [true, false] {
            for k in 1..200 {
                let base = (k as i64 + if fails { 0 } else { 200 }) * 100;
                let log = Log::default();
                let r: AppResult<Option<AppResult<()>>> = env.run(scope(Required).run(async {
                    env.insert(base + 1).await?;
                    let nested = poll_at_most(scope(Nested).run(async {
                        env.insert(base + 10).await?;
                        log.record("nested").await;
                        if fails {
                            return Err(AppError::Boom("nested fails"));
                        }
                        Ok(())
                    }), k).await;
                    env.insert(base + 2).await?;
                    Ok(nested)
                })).await;
                let nested = r.expect("the outer transaction commits");
                let rows = env.ids_from(base).await;
                let kept = rows.contains(&(base + 10));
                assert!(rows.contains(&(base + 1)) && rows.contains(&(base + 2)), "{rows:?}");
                if fails {
                    assert!(!kept, "k={k}: a failed NESTED scope's row was committed");
                    assert!(log.events().is_empty(), "its hooks are discarded");
                }
                if kept {
                    assert_eq!(log.of("nested"), ["after_commit", "after_completion Committed"]);
                } else {
                    assert!(log.of("nested").iter().all(|e| !e.contains("after_commit")));
                }
                if let Some(result) = nested {
                    assert_eq!(result.is_ok(), !fails);
                    break;
                }
            }
            assert!(env.pool_is_clean().await);
        }
    }
}

conformance! {
    /// Item 5: a NESTED scope holding another NESTED scope, dropped at each await while the
    /// outer transaction goes on: the savepoints are rolled back innermost first (no "savepoint
    /// does not exist"), and the outer transaction commits its own work.
    async fn nested_in_nested_dropped_keeps_the_outer_transaction_usable(env: Env<D>) {
        for k in 1..300 {
            let base = k as i64 * 100;
            let r: AppResult<bool> = env.run(scope(Required).run(async {
                env.insert(base + 1).await?;
                let done = poll_at_most(scope(Nested).run(async {
                    env.insert(base + 10).await?;
                    let inner: AppResult<()> = scope(Nested).run(async {
                        env.insert(base + 20).await?;
                        tokio::task::yield_now().await;
                        env.insert(base + 21).await
                    }).await;
                    inner?;
                    env.insert(base + 11).await
                }), k).await;
                env.insert(base + 2).await?;
                Ok(done.is_some())
            })).await;
            let completed = r.expect("the outer transaction commits after the drop");
            let rows: Vec<i64> = env.ids_from(base).await.iter().map(|id| id - base).collect();
            if completed {
                assert_eq!(rows, [1, 2, 10, 11, 20, 21]);
                break;
            }
            // Dropped: rolled back to its savepoint, unless its RELEASE was already in flight.
            assert!(
                rows == [1, 2] || rows == [1, 2, 10, 11, 20, 21],
                "k={k}: a dropped NESTED scope is kept whole or not at all: {rows:?}"
            );
        }
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// Item 6: dropped while its after-commit hooks run: the commit happened, so every hook
    /// still runs, in order.
    async fn dropped_while_after_commit_hooks_run_all_hooks_still_run(env: Env<D>) {
        let log = Log::default();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let started_tx = std::sync::Mutex::new(Some(started_tx));
        let fut = env.run(scope(Required).run(async {
            env.insert(1).await?;
            for n in 1..=3 {
                let (l, s) = (log.clone(), started_tx.lock().unwrap().take());
                transactional::after_commit(move || async move {
                    if let Some(s) = s {
                        let _ = s.send(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    l.push(format!("hook {n}"));
                }).await;
            }
            AppResult::Ok(())
        }));
        tokio::select! {
            _ = fut => panic!("the hooks take longer than the wait"),
            _ = started => {}
        }
        env.eventually("all three hooks ran", || async { log.events().len() == 3 }).await;
        assert_eq!(log.events(), ["hook 1", "hook 2", "hook 3"]);
        assert_eq!(env.ids().await, [1]);
    }
}

conformance! {
    /// Item 7: a dropped scope's hooks run after its caller has moved on, so they see no
    /// transaction of any data source: a hook writing through "default" does not slip into
    /// the caller's transaction, which commits its own work normally.
    async fn hooks_of_a_dropped_scope_do_not_touch_another_transaction(env: Env<D>) {
        let other = Env::<D>::also("drop_hooks_context_other").await;
        let seen = Log::default();
        let r: AppResult<()> = env.run(transactional::with_data_source("other", other.pool.clone(), scope(Required).run(async {
            env.insert(1).await?;
            let inner = Transactional::new().data_source("other").run(async {
                let (s, table) = (seen.clone(), env.table.clone());
                transactional::after_rollback(move |cause| async move {
                    s.push(format!("after_rollback {cause:?}, default active: {}", transactional::data_source("default").is_active()));
                    // Writes in autocommit: no transaction is current for this hook. (SQLite's
                    // one writer is the default transaction, still open: the hook only looks.)
                    let mut conn = transactional::data_source("default").connection::<D::DB>().await.unwrap();
                    s.push(format!("in transaction: {}", conn.in_transaction()));
                    if !D::SINGLE_WRITER {
                        D::exec(&mut conn, format!("INSERT INTO {table} (id) VALUES (2)")).await.unwrap();
                    }
                }).await;
                std::future::pending::<AppResult<()>>().await
            });
            // The inner scope is dropped half-way; its hook runs on a task of its own.
            let _ = tokio::time::timeout(Duration::from_millis(50), inner).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            env.insert(3).await
        }))).await.expect("supported database");
        r.unwrap();
        assert_eq!(seen.events(), ["after_rollback Cancelled, default active: false", "in transaction: false"]);
        assert_eq!(env.ids().await, if D::SINGLE_WRITER { vec![1, 3] } else { vec![1, 2, 3] });
    }
}
