//! The outcome of a scope: rollback on Err, on panic, on a dropped future; rollback-only;
//! rules that commit (docs/SEMANTICS.md, "Outcome").

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt;
use transactional::Propagation::*;

use crate::common::{scope, AppError, AppResult, Env, TestDb};
use crate::conformance;

conformance! {
    /// Err rolls back everything the scope did.
    async fn err_rolls_back(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            Err(AppError::Boom("fails"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert!(env.ids().await.is_empty());
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// A panic rolls back, then goes on unwinding to the caller.
    async fn panic_rolls_back_and_resumes(env: Env<D>) {
        let caught = AssertUnwindSafe(env.run(scope(Required).run(async {
            env.insert(1).await?;
            if env.ids().await.is_empty() {
                panic!("boom in the body");
            }
            AppResult::Ok(())
        })))
        .catch_unwind()
        .await;
        let payload = caught.expect_err("the panic goes on");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in the body"));
        assert!(env.ids().await.is_empty());
        assert!(env.pool_is_clean().await);
    }
}

async fn assert_clean<D: TestDb>(env: &Env<D>)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    env.eventually("the pool holds no connection inside a transaction", || {
        env.pool_is_clean()
    })
    .await;
    assert!(
        env.ids().await.is_empty(),
        "nothing of a cancelled scope is committed"
    );
    // The next user of the pooled connection works in autocommit.
    let r: AppResult<()> = env.run(env.insert(99)).await;
    r.unwrap();
    assert_eq!(env.ids().await, vec![99]);
}

conformance! {
    /// The scope's future is dropped right after BEGIN (the body has started and waits): the
    /// transaction is rolled back, and the connection returns to the pool outside it.
    async fn cancelled_right_after_begin_rolls_back(env: Env<D>, pool(1, Duration::from_secs(5))) {
        let (started, wait) = tokio::sync::oneshot::channel::<()>();
        let mut started = Some(started);
        let fut = env.run(scope(Required).run(async {
            env.insert(1).await?;
            started.take().unwrap().send(()).unwrap();
            std::future::pending::<()>().await;
            AppResult::Ok(())
        }));
        tokio::select! {
            _ = fut => unreachable!(),
            _ = wait => {}
        }
        assert_clean(&env).await;
    }
}

conformance! {
    /// Cancelled by `tokio::time::timeout` mid-body.
    async fn cancelled_by_tokio_timeout_rolls_back(env: Env<D>, pool(1, Duration::from_secs(5))) {
        let r = tokio::time::timeout(Duration::from_millis(300), env.run(scope(Required).run(async {
            env.insert(1).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            AppResult::Ok(())
        }))).await;
        assert!(r.is_err(), "timed out");
        assert_clean(&env).await;
    }
}

conformance! {
    /// Dropped at every await point of the runtime: poll the scope k times (letting I/O
    /// progress between polls), then drop it, for growing k — before the connection is taken,
    /// while BEGIN is in flight, in the body, in a NESTED savepoint, during COMMIT.
    async fn cancelled_at_every_await_point_never_leaks_a_transaction(env: Env<D>, pool(2, Duration::from_secs(5))) {
        let mut completed = false;
        // Every k up to 100, then coarser: under load a database may need many polls.
        let ks = (1..100).chain((100..5000).step_by(7));
        for k in ks {
            let fut = env.run(scope(Required).run(async {
                env.insert(1).await?;
                let nested: AppResult<()> = scope(Nested).run(env.insert(2)).await;
                nested?;
                env.insert(3).await?;
                Err::<(), _>(AppError::Boom("never commits"))
            }));
            // Boxed, so that dropping it below really drops the scope.
            let mut fut = Box::pin(fut);
            let mut polls = 0;
            let done = std::future::poll_fn(|cx| {
                polls += 1;
                match fut.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending if polls >= k => Poll::Ready(None),
                    Poll::Pending => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            })
            .await;
            drop(fut);
            if let Some(r) = done {
                assert!(r.unwrap_err().is_boom());
                completed = true;
                break;
            }
            env.eventually("cleanup after a cancel", || env.pool_is_clean()).await;
            assert!(env.ids().await.is_empty(), "cancelled after {k} polls: rows survived");
        }
        assert!(completed, "the scope finished for a large enough k");
        assert_clean(&env).await;
    }
}

conformance! {
    /// `select!` drops the losing scope: rolled back; the winner's work stands.
    async fn select_drops_the_losing_scope(env: Env<D>) {
        let r: AppResult<()> = env.run(async {
            tokio::select! {
                r = scope(RequiresNew).run(async {
                    env.insert(1).await?;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    AppResult::Ok(())
                }) => r,
                _ = tokio::time::sleep(Duration::from_millis(200)) => Ok(()),
            }
        }).await;
        r.unwrap();
        env.eventually("the loser rolled back", || env.pool_is_clean()).await;
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// A joined scope fails, the outer catches the error and returns Ok: everything rolls back
    /// and the caller gets UnexpectedRollback (it must not believe the work was saved).
    async fn caught_participant_failure_gives_unexpected_rollback(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let inner: AppResult<()> = scope(Required).run(async {
                env.insert(2).await?;
                Err(AppError::Boom("participant fails"))
            }).await;
            assert!(inner.unwrap_err().is_boom());
            assert!(transactional::is_rollback_only());
            Ok(())
        })).await;
        let err = r.unwrap_err();
        assert!(err.is_unexpected_rollback(), "{err:?}");
        assert!(err.tx().to_string().contains("rolled back because it has been marked as rollback-only"));
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// set_rollback_only() in a joined scope: the owner's Ok becomes UnexpectedRollback.
    async fn set_rollback_only_in_a_participant_gives_unexpected_rollback(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            let inner: AppResult<()> = scope(Supports).run(async {
                transactional::set_rollback_only();
                Ok(())
            }).await;
            inner
        })).await;
        assert!(r.unwrap_err().is_unexpected_rollback());
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// set_rollback_only() in the owning scope: rolls back, and the call returns its Ok.
    async fn set_rollback_only_in_the_owner_rolls_back_silently(env: Env<D>) {
        let r: AppResult<&str> = env.run(scope(Required).run(async {
            env.insert(1).await?;
            transactional::set_rollback_only();
            assert!(transactional::is_rollback_only());
            Ok("done")
        })).await;
        assert_eq!(r.unwrap(), "done");
        assert!(env.ids().await.is_empty());
    }
}

conformance! {
    /// set_rollback_only() outside any transaction does nothing.
    async fn set_rollback_only_without_a_transaction_does_nothing(env: Env<D>) {
        let r: AppResult<()> = env.run(scope(Supports).run(async {
            transactional::set_rollback_only();
            assert!(!transactional::is_rollback_only());
            env.insert(1).await
        })).await;
        r.unwrap();
        assert_eq!(env.ids().await, vec![1]);
    }
}

conformance! {
    /// A rule that commits on a given error commits, and the error is still returned; other
    /// errors still roll back.
    async fn no_rollback_for_rule_commits(env: Env<D>) {
        let is_boom = |e: &AppError| e.is_boom();
        let r: AppResult<()> = env.run(scope(Required).run_with_no_rollback_for(is_boom, async {
            env.insert(1).await?;
            Err(AppError::Boom("expected business outcome"))
        })).await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(env.ids().await, vec![1]);

        let r: AppResult<()> = env.run(scope(Required).run_with_no_rollback_for(is_boom, async {
            env.insert(2).await?;
            Err(AppError::Tx(transactional::Error::TransactionFinished))
        })).await;
        assert!(r.is_err());
        assert_eq!(env.ids().await, vec![1]);
    }
}
