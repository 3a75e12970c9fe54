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

/// The error types services write, each reaching the database's error its own way.
mod idioms {
    use crate::common::AppError;

    /// `thiserror` with `#[error(transparent)]`: the chain starts at sqlx's own source, its
    /// boxed database error.
    #[derive(Debug, thiserror::Error)]
    pub enum Transparent {
        #[error(transparent)]
        Tx(#[from] transactional::Error),
        #[error(transparent)]
        Db(#[from] sqlx::Error),
    }

    /// `thiserror` with `#[source]`: the chain goes through the `sqlx::Error`.
    #[derive(Debug, thiserror::Error)]
    pub enum Sourced {
        #[error("the transaction failed")]
        Tx(#[source] transactional::Error),
        #[error("the database failed")]
        Db(#[source] sqlx::Error),
    }

    impl From<transactional::Error> for Sourced {
        fn from(error: transactional::Error) -> Self {
            Sourced::Tx(error)
        }
    }

    /// What the test service's own error becomes, per idiom.
    pub fn transparent(error: AppError) -> Transparent {
        match error {
            AppError::Tx(e) => Transparent::Tx(e),
            AppError::Db(e) => Transparent::Db(e),
            AppError::Boom(what) => panic!("unexpected {what}"),
        }
    }

    pub fn sourced(error: AppError) -> Sourced {
        match error {
            AppError::Tx(e) => Sourced::Tx(e),
            AppError::Db(e) => Sourced::Db(e),
            AppError::Boom(what) => panic!("unexpected {what}"),
        }
    }

    /// `anyhow`, with a context around the database's error.
    pub fn anyhow(error: AppError) -> anyhow::Error {
        match error {
            AppError::Tx(e) => anyhow::Error::new(e),
            AppError::Db(e) => anyhow::Error::new(e).context("moving money"),
            AppError::Boom(what) => panic!("unexpected {what}"),
        }
    }

    pub fn boxed(error: AppError) -> Box<dyn std::error::Error + Send + Sync> {
        match error {
            AppError::Tx(e) => Box::new(e),
            AppError::Db(e) => Box::new(e),
            AppError::Boom(what) => panic!("unexpected {what}"),
        }
    }
}

/// How the transfers of a run are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Once each (`Transactional::run`).
    Once,
    /// Through the attribute with `retry`, the error type of one idiom.
    Transparent,
    Sourced,
    Anyhow,
    Boxed,
    /// The balances written by a before-commit hook (where an outbox writes): once each, or
    /// with `retry`.
    InHookOnce,
    InHookRetrying,
}

/// Declares `$name`: [`transfer`], SERIALIZABLE, run again up to 25 times while the database
/// refuses it, returning `$result` (`$into` makes its error from the test's own).
macro_rules! retrying_transfer {
    ($name:ident, $result:ty, $into:path) => {
        #[transactional::transactional(isolation = "SERIALIZABLE", retry = 25)]
        async fn $name<D: TestDb>(table: String, from: i64, to: i64, cents: i64) -> $result
        where
            for<'c> &'c mut <D::DB as sqlx::Database>::Connection:
                sqlx::Executor<'c, Database = D::DB>,
        {
            ATTEMPTS.fetch_add(1, Ordering::SeqCst);
            transfer::<D>(&table, from, to, cents).await.map_err($into)
        }
    };
}

retrying_transfer!(transfer_transparent, Result<(), idioms::Transparent>, idioms::transparent);
retrying_transfer!(transfer_sourced, Result<(), idioms::Sourced>, idioms::sourced);
retrying_transfer!(transfer_anyhow, anyhow::Result<()>, idioms::anyhow);
retrying_transfer!(
    transfer_boxed,
    Result<(), Box<dyn std::error::Error + Send + Sync>>,
    idioms::boxed
);

/// [`transfer`] with the writes in a before-commit hook (the reads in the body).
async fn transfer_in_hook<D: TestDb>(table: String, from: i64, to: i64, cents: i64) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let mut conn = transactional::connection::<D::DB>().await?;
    for id in [from, to] {
        let sql = format!("SELECT balance FROM {table} WHERE id = {id}");
        D::scalar(&mut conn, sql).await?;
    }
    drop(conn);
    transactional::before_commit(move || async move {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let mut conn = transactional::connection::<D::DB>().await?;
        for (id, delta) in [(from, -cents), (to, cents)] {
            let sql = format!("UPDATE {table} SET balance = balance + ({delta}) WHERE id = {id}");
            D::exec(&mut conn, sql).await?;
        }
        Ok::<_, AppError>(())
    })
    .await?;
    Ok(())
}

#[transactional::transactional(isolation = "SERIALIZABLE", retry = 25)]
async fn transfer_in_hook_retrying<D: TestDb>(
    table: String,
    from: i64,
    to: i64,
    cents: i64,
) -> Result<(), idioms::Transparent>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    ATTEMPTS.fetch_add(1, Ordering::SeqCst);
    transfer_in_hook::<D>(table, from, to, cents)
        .await
        .map_err(idioms::transparent)
}

/// One transfer made `way`: `Ok`, or `Err` when the database refused it for a concurrent one
/// (any other failure fails the test).
async fn one_transfer<D: TestDb>(way: Way, table: String, from: i64, to: i64) -> Result<(), ()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let serializable = || Transactional::new().isolation(Isolation::Serializable);
    let refused = |error: &(dyn std::error::Error + 'static)| {
        let retryable = transactional::is_retryable(error);
        assert!(retryable, "only conflicts may fail ({way:?}): {error:?}");
    };
    let cents = 7;
    let (t, f) = (table, from);
    match way {
        Way::Once => serializable()
            .run(transfer::<D>(&t, f, to, cents))
            .await
            .map_err(|e| refused(&e)),
        Way::InHookOnce => serializable()
            .run(transfer_in_hook::<D>(t, f, to, cents))
            .await
            .map_err(|e| refused(&e)),
        Way::Transparent => transfer_transparent::<D>(t, f, to, cents)
            .await
            .map_err(|e| refused(&e)),
        Way::Sourced => transfer_sourced::<D>(t, f, to, cents)
            .await
            .map_err(|e| refused(&e)),
        Way::Anyhow => transfer_anyhow::<D>(t, f, to, cents)
            .await
            .map_err(|e| refused(e.as_ref())),
        Way::Boxed => transfer_boxed::<D>(t, f, to, cents)
            .await
            .map_err(|e| refused(e.as_ref())),
        Way::InHookRetrying => transfer_in_hook_retrying::<D>(t, f, to, cents)
            .await
            .map_err(|e| refused(&e)),
    }
}

/// Attempts made by the retrying transfers, in every test of this binary.
static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

/// Runs 6 tasks of 8 transfers each, made `way`; returns how many committed and how many
/// were refused.
async fn transfers<D: TestDb>(env: &Env<D>, way: Way) -> (usize, usize)
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
                let counter = match one_transfer::<D>(way, table.clone(), from, to).await {
                    Ok(()) => &done,
                    Err(()) => &failed,
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

/// A fresh accounts table with three accounts of [`OPENING`] each.
async fn accounts_table<D: TestDb>(env: &Env<D>)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let table = accounts(env);
    observe(env, format!("DROP TABLE IF EXISTS {table}")).await;
    observe(
        env,
        format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"),
    )
    .await;
    for id in 0..ACCOUNTS {
        observe(
            env,
            format!("INSERT INTO {table} (id, balance) VALUES ({id}, {OPENING})"),
        )
        .await;
    }
}

conformance! {
    /// Concurrent SERIALIZABLE transfers between three accounts: run once each, some are
    /// refused for a concurrent one; with `retry`, every one commits, whatever error type the
    /// fn returns (the idioms services write: `thiserror` transparent or with `#[source]`,
    /// `anyhow`, a boxed error), and the total balance is what it was.
    async fn serializable_transfers_commit_with_retry_and_conserve_the_total(env: Env<D>, pool(8, Duration::from_secs(30))) {
        accounts_table(&env).await;
        let (_, refused) = transfers(&env, Way::Once).await;
        assert!(refused > 0, "conflicting transfers without retry: some are refused");
        assert_eq!(total(&env).await, ACCOUNTS * OPENING);

        for way in [Way::Transparent, Way::Sourced, Way::Anyhow, Way::Boxed] {
            let before = ATTEMPTS.load(Ordering::SeqCst);
            let (done, failed) = transfers(&env, way).await;
            assert_eq!((done, failed), (48, 0), "{way:?}: with retry every transfer commits");
            eprintln!(
                "{} {way:?}: without retry {refused} of 48 transfers refused; with retry 48 committed in {} attempts",
                D::NAME,
                ATTEMPTS.load(Ordering::SeqCst) - before
            );
            assert_eq!(total(&env).await, ACCOUNTS * OPENING, "{way:?}: the total is conserved");
        }
        assert!(env.pool_is_clean().await);
        observe(&env, format!("DROP TABLE {}", accounts(&env))).await;
    }
}

conformance! {
    /// The same transfers with their writes in a before-commit hook (where an outbox writes):
    /// a refusal there is a serialization failure too, so `retry` runs the transfer again.
    async fn a_refusal_in_a_before_commit_hook_is_retried(env: Env<D>, pool(8, Duration::from_secs(30))) {
        accounts_table(&env).await;
        let (_, refused) = transfers(&env, Way::InHookOnce).await;
        assert!(refused > 0, "conflicting transfers without retry: some are refused");
        let (done, failed) = transfers(&env, Way::InHookRetrying).await;
        assert_eq!((done, failed), (48, 0), "with retry every transfer commits");
        assert_eq!(total(&env).await, ACCOUNTS * OPENING);
        observe(&env, format!("DROP TABLE {}", accounts(&env))).await;
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
