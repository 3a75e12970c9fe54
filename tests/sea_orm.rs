//! SeaORM on the current transaction (`transactional::sea_orm`), on the three databases: an
//! entity inserted, found and updated through SeaORM's own API joins the scope around it —
//! commit, rollback, NESTED, REQUIRES_NEW, a deadline, retry — and runs in autocommit outside
//! one. Each test has a namespace of its own (a PostgreSQL schema, a MariaDB database, a
//! SQLite file), so the entity keeps its fixed table name.

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, ConnectionTrait, Statement};
use transactional::{Propagation, Transactional};

use common::{My, Pg, TestDb};

/// The entity: an order with a status.
mod order {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "orders")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub status: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An application error with SeaORM's and the library's errors in its `source()` chain.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error(transparent)]
    Tx(#[from] transactional::Error),
    #[error("declined")]
    Declined,
}

type AppResult<T> = Result<T, AppError>;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Where a test's table lives: a schema or database of its own (dropped after the test),
/// or a SQLite file in a directory of its own.
enum Space {
    Postgres(sqlx::PgPool, String),
    MySql(sqlx::MySqlPool, String),
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
}

/// One test's database: a pool over a namespace of its own, registered under `name`.
struct World {
    name: &'static str,
    backend: &'static str,
    space: Space,
}

fn skipped(backend: &str) -> bool {
    std::env::var("TRANSACTIONAL_TEST_SKIP")
        .is_ok_and(|v| v.split(',').any(|s| s.trim() == backend))
}

const CREATE: &str = "CREATE TABLE orders (id BIGINT PRIMARY KEY, status VARCHAR(20) NOT NULL)";

async fn exec<'e, E: sqlx::Executor<'e>>(executor: E, sql: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(executor)
        .await
        .unwrap();
}

impl World {
    async fn new(test: &str, backend: &'static str) -> Option<World> {
        if skipped(backend) {
            eprintln!("skipping {test} on {backend}: TRANSACTIONAL_TEST_SKIP");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let namespace = format!("sea_{test}_{}_{n}", std::process::id());
        let name: &'static str = Box::leak(namespace.clone().into_boxed_str());
        let space = match backend {
            "postgres" => {
                let url = Pg::url(dir.path(), "sea_orm");
                let admin = sqlx::PgPool::connect(&url).await.unwrap();
                exec(&admin, format!("CREATE SCHEMA {namespace}")).await;
                let options = url
                    .parse::<sqlx::postgres::PgConnectOptions>()
                    .unwrap()
                    .options([("search_path", namespace.as_str())]);
                let pool = sqlx::PgPool::connect_with(options).await.unwrap();
                exec(&pool, CREATE.into()).await;
                transactional::register(name, pool).unwrap();
                Space::Postgres(admin, namespace)
            }
            "mysql" => {
                let url = My::url(dir.path(), "sea_orm");
                let admin = sqlx::MySqlPool::connect(&url).await.unwrap();
                exec(&admin, format!("CREATE DATABASE {namespace}")).await;
                let (server, _) = url.rsplit_once('/').unwrap();
                let pool = sqlx::MySqlPool::connect(&format!("{server}/{namespace}"))
                    .await
                    .unwrap();
                exec(&pool, CREATE.into()).await;
                transactional::register(name, pool).unwrap();
                Space::MySql(admin, namespace)
            }
            _ => {
                let url = format!("sqlite://{}/sea.db?mode=rwc", dir.path().display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                exec(&pool, CREATE.into()).await;
                transactional::register(name, pool).unwrap();
                Space::Sqlite(dir)
            }
        };
        Some(World {
            name,
            backend,
            space,
        })
    }

    fn scope(&self) -> Transactional {
        Transactional::new().data_source(self.name)
    }

    /// The data source as SeaORM's connection.
    fn db(&self) -> transactional::sea_orm::SeaConnection {
        transactional::sea_orm::on(self.name).unwrap()
    }

    /// Places order `id` through SeaORM, in the current transaction.
    async fn place(&self, id: i64) -> AppResult<()> {
        order::ActiveModel {
            id: Set(id),
            status: Set("placed".into()),
        }
        .insert(&self.db())
        .await?;
        Ok(())
    }

    /// The committed orders, as a scope of its own sees them (read through SeaORM).
    async fn committed(&self) -> Vec<i64> {
        let orders: AppResult<Vec<order::Model>> = self
            .scope()
            .propagation(Propagation::RequiresNew)
            .run(async { Ok(order::Entity::find().all(&self.db()).await?) })
            .await;
        let mut ids: Vec<i64> = orders.unwrap().into_iter().map(|o| o.id).collect();
        ids.sort();
        ids
    }
}

impl Drop for World {
    fn drop(&mut self) {
        transactional::deregister(self.name);
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        match &self.space {
            Space::Postgres(admin, schema) => {
                let (admin, sql) = (
                    admin.clone(),
                    format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                );
                tokio::spawn(async move { exec(&admin, sql).await });
            }
            Space::MySql(admin, database) => {
                let (admin, sql) = (admin.clone(), format!("DROP DATABASE IF EXISTS {database}"));
                tokio::spawn(async move { exec(&admin, sql).await });
            }
            Space::Sqlite(_) => {}
        }
    }
}

/// Each test, on PostgreSQL, MariaDB/MySQL and SQLite.
macro_rules! on_three {
    ($($test:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$test("postgres").await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    super::$test("mysql").await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$test("sqlite").await
                }
            }
        )*
    };
}

on_three!(
    commit_and_rollback,
    nested_and_requires_new,
    a_deadline_stops_a_seaorm_statement,
    outside_a_scope_autocommits,
);

/// Inserts, finds and updates through SeaORM in one scope: committed together; an `Err`
/// rolls all of it back; the scope's own reads see its uncommitted writes.
async fn commit_and_rollback(backend: &'static str) {
    let Some(w) = World::new("commit", backend).await else {
        return;
    };
    let r: AppResult<()> = w
        .scope()
        .run(async {
            w.place(1).await?;
            w.place(2).await?;
            let mut first: order::ActiveModel = order::Entity::find_by_id(1)
                .one(&w.db())
                .await?
                .expect("the scope sees its own insert")
                .into();
            first.status = Set("paid".into());
            first.update(&w.db()).await?;
            Ok(())
        })
        .await;
    r.unwrap();
    assert_eq!(w.committed().await, [1, 2]);
    let paid = order::Entity::find()
        .filter(order::Column::Status.eq("paid"))
        .count(&w.db())
        .await
        .unwrap();
    assert_eq!(paid, 1);

    let r: AppResult<()> = w
        .scope()
        .run(async {
            w.place(3).await?;
            order::Entity::delete_by_id(1).exec(&w.db()).await?;
            Err(AppError::Declined)
        })
        .await;
    assert!(matches!(r, Err(AppError::Declined)));
    assert_eq!(
        w.committed().await,
        [1, 2],
        "rolled back: 3 absent, 1 still there"
    );
}

/// NESTED rolls SeaORM's writes back to its savepoint; REQUIRES_NEW commits its own even when
/// the outer transaction rolls back.
async fn nested_and_requires_new(backend: &'static str) {
    let Some(w) = World::new("nested", backend).await else {
        return;
    };
    let r: AppResult<()> = w
        .scope()
        .run(async {
            w.place(1).await?;
            let inner: AppResult<()> = w
                .scope()
                .propagation(Propagation::Nested)
                .run(async {
                    w.place(2).await?;
                    Err(AppError::Declined)
                })
                .await;
            assert!(inner.is_err());
            Ok(())
        })
        .await;
    r.unwrap();
    assert_eq!(w.committed().await, [1]);

    if backend == "sqlite" {
        // One writer at a time: REQUIRES_NEW inside a writing transaction would wait for it.
        return;
    }
    let r: AppResult<()> = w
        .scope()
        .run(async {
            w.place(10).await?;
            let own: AppResult<()> = w
                .scope()
                .propagation(Propagation::RequiresNew)
                .run(w.place(11))
                .await;
            own?;
            Err(AppError::Declined)
        })
        .await;
    assert!(r.is_err());
    assert_eq!(
        w.committed().await,
        [1, 11],
        "REQUIRES_NEW's order kept, the outer's not"
    );
}

/// A deadline cancels the SeaORM statement running on the server, and the scope's writes roll
/// back.
async fn a_deadline_stops_a_seaorm_statement(backend: &'static str) {
    let Some(w) = World::new("deadline", backend).await else {
        return;
    };
    let slow = match backend {
        "postgres" => Pg::slow_statement(10),
        "mysql" => My::slow_statement(10),
        _ => common::Lite::slow_statement(10),
    };
    let started = std::time::Instant::now();
    let r: AppResult<()> = w
        .scope()
        .timeout(Duration::from_millis(300))
        .run(async {
            w.place(1).await?;
            let db = w.db();
            db.query_one_raw(Statement::from_string(db.get_database_backend(), slow))
                .await?;
            Ok(())
        })
        .await;
    match r {
        Err(AppError::Tx(e)) => assert!(e.is_timeout(), "{e}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(w.committed().await, Vec::<i64>::new());
}

/// Outside a scope, SeaORM's statements run on a pooled connection in autocommit.
async fn outside_a_scope_autocommits(backend: &'static str) {
    let Some(w) = World::new("outside", backend).await else {
        return;
    };
    w.place(1).await.unwrap();
    assert_eq!(w.committed().await, [1]);
    assert_eq!(w.backend, backend);
}

/// A serialization failure met through SeaORM (PostgreSQL, SERIALIZABLE): `retry` finds the
/// database's error inside SeaORM's `DbErr` and runs the scope again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reads_the_database_error_inside_dberr() {
    let Some(w) = World::new("retry", "postgres").await else {
        return;
    };
    w.place(1).await.unwrap();
    w.place(2).await.unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let first_read = Arc::new(tokio::sync::Barrier::new(2));
    // Two transactions read both orders and each pays a different one if both are unpaid:
    // write skew, which SERIALIZABLE refuses to one of them.
    let pay = |id: i64| {
        let (attempts, first_read, name) = (attempts.clone(), first_read.clone(), w.name);
        async move {
            Transactional::new()
                .data_source(name)
                .isolation(transactional::Isolation::Serializable)
                .retry(5)
                .run(|| {
                    let (attempts, first_read) = (attempts.clone(), first_read.clone());
                    async move {
                        let db = transactional::sea_orm::on(name)?;
                        let attempt = attempts.fetch_add(1, Ordering::SeqCst);
                        let unpaid = order::Entity::find()
                            .filter(order::Column::Status.eq("placed"))
                            .count(&db)
                            .await?;
                        if attempt < 2 {
                            first_read.wait().await;
                        }
                        if unpaid == 2 {
                            order::ActiveModel {
                                id: Set(id),
                                status: Set("paid".into()),
                            }
                            .update(&db)
                            .await?;
                        }
                        Ok::<_, AppError>(())
                    }
                })
                .await
        }
    };
    let (a, b) = tokio::join!(tokio::spawn(pay(1)), tokio::spawn(pay(2)));
    a.unwrap().unwrap();
    b.unwrap().unwrap();
    assert!(
        attempts.load(Ordering::SeqCst) > 2,
        "one of them was refused and run again"
    );
    let paid = order::Entity::find()
        .filter(order::Column::Status.eq("paid"))
        .count(&w.db())
        .await
        .unwrap();
    assert_eq!(paid, 1, "serializable: only one of the two paid");
}
