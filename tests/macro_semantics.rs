//! `#[transactional]` on real databases: free fns, methods, trait impls, generics; and the
//! errors a user meets first (no data source, wrong database type).

mod common;

use std::sync::Arc;

use common::{AppError, AppResult, Env, Lite, My, Pg, TestDb};
use transactional::transactional;

struct OrderService<D: TestDb> {
    env: Arc<Env<D>>,
}

impl<D: TestDb> OrderService<D>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    /// Places two lines; fails after the first when `fail` is set.
    #[transactional]
    async fn place(&self, first: i64, fail: bool) -> AppResult<()> {
        self.env.insert(first).await?;
        self.line(first + 1).await?;
        if fail {
            return Err(AppError::Boom("declined"));
        }
        Ok(())
    }

    #[transactional(propagation = "MANDATORY")]
    async fn line(&self, id: i64) -> AppResult<()> {
        self.env.insert(id).await
    }

    #[transactional(propagation = "REQUIRES_NEW")]
    async fn audit(&mut self, id: i64) -> AppResult<i64> {
        self.env.insert(id).await?;
        self.env.session().await
    }

    #[transactional(propagation = "NESTED")]
    async fn maybe(self: Arc<Self>, id: i64, fail: bool) -> AppResult<()> {
        self.env.insert(id).await?;
        if fail {
            Err(AppError::Boom("nested fails"))
        } else {
            Ok(())
        }
    }
}

trait Repository {
    async fn save_all(&self, ids: impl IntoIterator<Item = i64> + Send) -> AppResult<usize>;
}

impl<D: TestDb> Repository for OrderService<D>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    #[transactional(timeout = "5s")]
    async fn save_all(&self, ids: impl IntoIterator<Item = i64> + Send) -> AppResult<usize> {
        let mut n = 0;
        for id in ids {
            self.env.insert(id).await?;
            n += 1;
        }
        Ok(n)
    }
}

async fn service_semantics<D: TestDb>()
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let Some(env) = Env::<D>::new("macro_semantics").await else {
        return;
    };
    let env = Arc::new(env);
    let service = Arc::new(OrderService { env: env.clone() });
    env.run(async {
        service.place(1, false).await.unwrap();
        assert!(service.place(10, true).await.unwrap_err().is_boom());
        let err = service.line(20).await.unwrap_err();
        assert!(matches!(
            err.tx(),
            transactional::Error::NoExistingTransaction { .. }
        ));
        assert_eq!(service.save_all([30, 31, 32]).await.unwrap(), 3);
        service.clone().maybe(40, false).await.unwrap();
        let mut owned = OrderService { env: env.clone() };
        owned.audit(50).await.unwrap();
        let r: AppResult<()> = transactional::Transactional::new()
            .run(async {
                service.clone().maybe(60, true).await.unwrap_err();
                service.clone().maybe(61, false).await
            })
            .await;
        r.unwrap();
    })
    .await;
    assert_eq!(env.ids().await, vec![1, 2, 30, 31, 32, 40, 50, 61]);
}

#[tokio::test]
async fn annotated_methods_and_trait_impls_on_sqlite() {
    service_semantics::<Lite>().await;
}

#[tokio::test]
async fn annotated_methods_and_trait_impls_on_postgres() {
    service_semantics::<Pg>().await;
}

/// Spring's class-level `@Transactional`: the block's options on every `async fn` of it.
struct Checkout<D: TestDb> {
    env: Arc<Env<D>>,
}

#[transactional(timeout = "5s")]
impl<D: TestDb> Checkout<D>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    /// Not async: untouched.
    fn env(&self) -> &Env<D> {
        &self.env
    }

    /// The block's options: a transaction of its own, rolled back by an `Err`.
    async fn pay(&self, id: i64, fail: bool) -> AppResult<bool> {
        self.env().insert(id).await?;
        self.receipt(id + 1).await?;
        if fail {
            return Err(AppError::Boom("card declined"));
        }
        Ok(transactional::is_active())
    }

    /// Its own attribute replaces the block's: kept when the caller rolls back.
    #[transactional(propagation = "REQUIRES_NEW")]
    async fn receipt(&self, id: i64) -> AppResult<()> {
        self.env.insert(id).await
    }

    /// Left out: runs without a transaction of its own (inside `pay`'s it would join it, as
    /// plain code does).
    #[transactional(skip)]
    async fn active(&self) -> bool {
        transactional::is_active()
    }
}

async fn impl_block_semantics<D: TestDb>()
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let Some(env) = Env::<D>::new("impl_block").await else {
        return;
    };
    let env = Arc::new(env);
    let checkout = Checkout { env: env.clone() };
    env.run(async {
        assert!(checkout.pay(1, false).await.unwrap(), "in a transaction");
        assert!(checkout.pay(10, true).await.unwrap_err().is_boom());
        assert!(!checkout.active().await, "skipped: no transaction");
    })
    .await;
    // 10 rolled back; the receipts (REQUIRES_NEW) of both kept.
    assert_eq!(env.ids().await, vec![1, 2, 11]);
}

#[tokio::test]
async fn an_annotated_impl_block_on_postgres() {
    impl_block_semantics::<Pg>().await;
}

/// (Not SQLite: its REQUIRES_NEW inside a writing transaction waits for that one to end.)
#[tokio::test]
async fn an_annotated_impl_block_on_mariadb() {
    impl_block_semantics::<My>().await;
}

#[transactional(data_source = "nowhere")]
async fn on_an_unregistered_data_source() -> AppResult<()> {
    Ok(())
}

#[tokio::test]
async fn an_unregistered_data_source_is_a_clear_error_not_a_panic() {
    let err = on_an_unregistered_data_source().await.unwrap_err();
    let message = err.tx().to_string();
    assert!(matches!(
        err.tx(),
        transactional::Error::NoDataSource { .. }
    ));
    assert!(
        message.contains("no data source named `nowhere`"),
        "{message}"
    );
    assert!(
        message.contains("transactional::register(\"nowhere\", pool)"),
        "{message}"
    );
    let err = transactional::connection::<sqlx::Sqlite>()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("register_default"), "{err}");
}

#[tokio::test]
async fn asking_for_the_wrong_database_type_is_a_clear_error() {
    let Some(env) = Env::<Lite>::new("wrong_database").await else {
        return;
    };
    let r: AppResult<()> = env
        .run(transactional::Transactional::new().run(async {
            let err = transactional::connection::<sqlx::Postgres>()
                .await
                .unwrap_err();
            assert!(
                matches!(err, transactional::Error::WrongDatabase { .. }),
                "{err}"
            );
            assert!(
                err.to_string()
                    .contains("SQLite pool, but a PostgreSQL connection"),
                "{err}"
            );
            Ok(())
        }))
        .await;
    r.unwrap();
    let err = env
        .run(transactional::connection::<sqlx::Postgres>())
        .await
        .unwrap_err();
    assert!(matches!(err, transactional::Error::WrongDatabase { .. }));
}

#[tokio::test]
async fn registering_a_name_twice_is_an_error() {
    let Some(env) = Env::<Lite>::new("register_twice").await else {
        return;
    };
    let name = format!("twice_{}", env.table);
    transactional::register(&name, env.pool.clone()).unwrap();
    let err = transactional::register(&name, env.pool.clone()).unwrap_err();
    assert!(matches!(
        err,
        transactional::Error::AlreadyRegistered { .. }
    ));
    assert!(transactional::deregister(&name));
}
