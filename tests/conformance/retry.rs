//! `retry`: a scope that begins its transaction runs again when the database refuses it for a
//! concurrent one (docs/SEMANTICS.md, "Retry").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use transactional::{Isolation, Propagation::*, RetryableError, Transactional};

use crate::common::hook_support::observe;
use crate::common::{scope, AppError, AppResult, Env, TestDb};
use crate::conformance;

const ACCOUNTS: i64 = 3;
const OPENING: i64 = 1_000;

fn accounts<D: TestDb>(env: &Env<D>) -> String {
    format!("{}_acc", env.table)
}

/// Moves `cents` from one account to another, reading both balances first (so that two
/// transfers on the same accounts conflict), pausing between the reads and the writes.
async fn transfer<D: TestDb>(table: &str, from: i64, to: i64, cents: i64) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let mut conn = transactional::connection::<D::DB>().await?;
    for id in [from, to] {
        D::scalar(
            &mut conn,
            format!("SELECT balance FROM {table} WHERE id = {id}"),
        )
        .await?;
    }
    drop(conn);
    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut conn = transactional::connection::<D::DB>().await?;
    for (id, delta) in [(from, -cents), (to, cents)] {
        let sql = format!("UPDATE {table} SET balance = balance + ({delta}) WHERE id = {id}");
        D::exec(&mut conn, sql).await?;
    }
    Ok(())
}

/// [`transfer`], SERIALIZABLE, run again up to 25 times while the database refuses it.
#[transactional::transactional(isolation = "SERIALIZABLE", retry = 25)]
async fn transfer_retrying<D: TestDb>(
    table: String,
    from: i64,
    to: i64,
    cents: i64,
) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    transfer::<D>(&table, from, to, cents).await
}

/// Attempts made by [`transfer_retrying`], in every test of this binary.
static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

/// Runs 6 tasks of 8 transfers each, run again while refused (`retrying`: through the
/// attribute) or once each; returns how many committed and how many were refused.
async fn transfers<D: TestDb>(env: &Env<D>, retrying: bool) -> (usize, usize)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let table = accounts(env);
    let tasks = (0..6).map(|task: i64| {
        let (done, failed, table) = (done.clone(), failed.clone(), table.clone());
        env.run(async move {
            for n in 0..8i64 {
                let (from, to) = ((task + n) % ACCOUNTS, (task + n + 1) % ACCOUNTS);
                let r: AppResult<()> = if retrying {
                    transfer_retrying::<D>(table.clone(), from, to, 7).await
                } else {
                    Transactional::new()
                        .isolation(Isolation::Serializable)
                        .run(transfer::<D>(&table, from, to, 7))
                        .await
                };
                let counter = match r {
                    Ok(()) => &done,
                    Err(e) => {
                        assert!(e.is_retryable(), "only conflicts may fail: {e:?}");
                        &failed
                    }
                };
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })
    });
    futures_util::future::join_all(tasks).await;
    (done.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
}

async fn total<D: TestDb>(env: &Env<D>) -> i64
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let mut conn = env.observer.acquire().await.unwrap();
    let mut sum = 0;
    for id in 0..ACCOUNTS {
        let sql = format!("SELECT balance FROM {} WHERE id = {id}", accounts(env));
        sum += D::scalar(&mut conn, sql).await.unwrap();
    }
    sum
}

conformance! {
    /// Concurrent SERIALIZABLE transfers between three accounts: run once each, some are
    /// refused for a concurrent one; with `retry`, every one commits, and the total balance
    /// is what it was.
    async fn serializable_transfers_commit_with_retry_and_conserve_the_total(env: Env<D>, pool(8, Duration::from_secs(30))) {
        let table = accounts(&env);
        observe(&env, format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)")).await;
        for id in 0..ACCOUNTS {
            observe(&env, format!("INSERT INTO {table} (id, balance) VALUES ({id}, {OPENING})")).await;
        }
        let (_, refused) = transfers(&env, false).await;
        assert!(refused > 0, "conflicting transfers without retry: some are refused");
        assert_eq!(total(&env).await, ACCOUNTS * OPENING);

        let before = ATTEMPTS.load(Ordering::SeqCst);
        let (done, failed) = transfers(&env, true).await;
        assert_eq!((done, failed), (48, 0), "with retry every transfer commits");
        eprintln!(
            "{}: without retry {refused} of 48 transfers refused; with retry 48 committed in {} attempts",
            D::NAME,
            ATTEMPTS.load(Ordering::SeqCst) - before
        );
        assert_eq!(total(&env).await, ACCOUNTS * OPENING, "the total is conserved");
        assert!(env.pool_is_clean().await);
        observe(&env, format!("DROP TABLE {table}")).await;
    }
}

/// An error type that does not implement `std::error::Error`: it says itself whether it is
/// worth another attempt.
#[derive(Debug)]
enum Attempted {
    Conflict,
    Tx(transactional::Error),
}

impl From<transactional::Error> for Attempted {
    fn from(error: transactional::Error) -> Self {
        Attempted::Tx(error)
    }
}

impl RetryableError for Attempted {
    fn is_retryable(&self) -> bool {
        match self {
            Attempted::Conflict => true,
            Attempted::Tx(error) => error.is_serialization_failure(),
        }
    }
}

impl From<AppError> for Attempted {
    fn from(error: AppError) -> Self {
        match error {
            AppError::Tx(error) => Attempted::Tx(error),
            other => panic!("unexpected {other:?}"),
        }
    }
}

conformance! {
    /// An attempt that another follows has its after-* hooks discarded; the last attempt's
    /// run. A scope that would join its caller's transaction is not run again: it fails at
    /// once, since running it again would repeat part of the caller's work.
    async fn retried_attempts_discard_their_hooks_and_joined_scopes_refuse_retry(env: Env<D>) {
        let attempts = Arc::new(AtomicUsize::new(0));
        let hooks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, h) = (attempts.clone(), hooks.clone());
        let env = &env;
        let r: Result<(), Attempted> = env.run(Transactional::new().retry(3).run(move || {
            let (a, h) = (a.clone(), h.clone());
            async move {
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                env.insert(n as i64).await?;
                let h2 = h.clone();
                transactional::after_rollback(move |cause| async move {
                    h2.lock().unwrap().push(format!("attempt {n}: rolled back ({cause})"));
                })
                .await;
                transactional::after_commit(move || async move {
                    h.lock().unwrap().push(format!("attempt {n}: committed"));
                })
                .await;
                if n < 3 {
                    return Err(Attempted::Conflict);
                }
                Ok(())
            }
        }))
        .await;
        r.unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
        assert_eq!(*hooks.lock().unwrap(), ["attempt 3: committed"]);
        assert_eq!(env.ids().await, [3], "only the last attempt's work is kept");

        // Out of attempts: the last one's hooks run, and its error is returned.
        hooks.lock().unwrap().clear();
        let h = hooks.clone();
        let r: Result<(), Attempted> = env.run(Transactional::new().retry(1).run(move || {
            let h = h.clone();
            async move {
                transactional::after_rollback(move |_| async move {
                    h.lock().unwrap().push("rolled back".to_owned());
                })
                .await;
                Err(Attempted::Conflict)
            }
        }))
        .await;
        assert!(matches!(r, Err(Attempted::Conflict)));
        assert_eq!(*hooks.lock().unwrap(), ["rolled back"]);

        // Inside a transaction, a REQUIRED scope with retry would join: refused, body not run.
        let ran = Arc::new(AtomicUsize::new(0));
        let r2 = ran.clone();
        let r: AppResult<()> = env.run(scope(Required).run(async {
            let inner: Result<(), Attempted> = Transactional::new()
                .retry(2)
                .run(move || {
                    let r2 = r2.clone();
                    async move {
                        r2.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                })
                .await;
            let Err(Attempted::Tx(error)) = inner else {
                panic!("refused: {inner:?}");
            };
            assert!(error.to_string().contains("`retry`"), "{error}");
            // REQUIRES_NEW begins its own: allowed.
            let inner: AppResult<()> = Transactional::new()
                .propagation(RequiresNew)
                .retry(2)
                .run(|| async { Ok(()) })
                .await;
            inner
        }))
        .await;
        r.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
