//! `#[transactional]` on real databases: free fns, methods, trait impls, generics; and the
//! errors a user meets first (no data source, wrong database type).

mod common;

use std::sync::Arc;

use common::{AppError, AppResult, Env, Lite, Pg, TestDb};
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
