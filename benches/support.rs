//! The work each scenario does, through the library and by hand with sqlx, on one database.

use std::sync::atomic::{AtomicI64, Ordering};

use futures_util::future::BoxFuture;
use sqlx::{AssertSqlSafe, Database, Executor, Pool};
use transactional::{Isolation, Propagation, Transactional};

static NEXT: AtomicI64 = AtomicI64::new(0);

pub fn next_id() -> i64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One database under benchmark: its pool (registered as a data source of its own) and table.
pub struct Bench<DB: Database> {
    pub name: &'static str,
    pub pool: Pool<DB>,
    /// The data source name the library uses.
    pub source: &'static str,
    pub table: &'static str,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

impl<DB: Database> Bench<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// Creates the table and registers the pool as `bench_<name>` (a `tag` tells apart
    /// pools of the same database).
    pub async fn new(name: &'static str, tag: &str, pool: Pool<DB>) -> Self {
        let table = leak(format!("bench_{name}"));
        let mut conn = pool.acquire().await.unwrap();
        conn.execute(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .await
            .unwrap();
        conn.execute(AssertSqlSafe(format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY)"
        )))
        .await
        .unwrap();
        drop(conn);
        let source = leak(format!("bench_{name}{tag}"));
        transactional::register(source, pool.clone()).unwrap();
        Bench {
            name,
            pool,
            source,
            table,
        }
    }

    fn insert_sql(&self) -> String {
        format!("INSERT INTO {} (id) VALUES ({})", self.table, next_id())
    }

    /// A read of one row by its key (the table grows as the benchmarks run: a read whose cost
    /// grows with it would measure the table, not the transaction).
    fn read_sql(&self) -> String {
        format!("SELECT id FROM {} WHERE id = 0", self.table)
    }

    /// One INSERT through the library's current connection (repository code).
    pub async fn insert(&self) -> Result<(), transactional::Error> {
        let mut conn = transactional::data_source(self.source)
            .connection::<DB>()
            .await?;
        conn.execute(AssertSqlSafe(self.insert_sql())).await?;
        Ok(())
    }

    /// One INSERT on a connection passed by hand.
    pub async fn insert_on(&self, conn: &mut DB::Connection) {
        conn.execute(AssertSqlSafe(self.insert_sql()))
            .await
            .unwrap();
    }

    pub fn scope(&self) -> Transactional {
        Transactional::new().data_source(self.source)
    }

    /// `depth` joined REQUIRED scopes, one inside the other, each running one INSERT.
    pub fn joined(
        &'static self,
        depth: usize,
    ) -> BoxFuture<'static, Result<(), transactional::Error>> {
        Box::pin(self.scope().run(async move {
            self.insert().await?;
            if depth > 1 {
                self.joined(depth - 1).await?;
            }
            Ok(())
        }))
    }

    // ---- the scenarios, through the library ----------------------------------------------

    pub async fn lib_one_insert(&'static self) {
        self.scope().run(self.insert()).await.unwrap();
    }

    pub async fn lib_serializable(&'static self) {
        self.scope()
            .isolation(Isolation::Serializable)
            .run(self.insert())
            .await
            .unwrap();
    }

    pub async fn lib_read_only(&'static self) {
        self.scope()
            .read_only(true)
            .run(async {
                let mut conn = transactional::data_source(self.source)
                    .connection::<DB>()
                    .await?;
                conn.execute(AssertSqlSafe(self.read_sql())).await?;
                Ok::<_, transactional::Error>(())
            })
            .await
            .unwrap();
    }

    pub async fn lib_joined(&'static self, depth: usize) {
        self.joined(depth).await.unwrap();
    }

    pub async fn lib_nested(&'static self) {
        self.scope()
            .run(
                self.scope()
                    .propagation(Propagation::Nested)
                    .run(self.insert()),
            )
            .await
            .unwrap();
    }

    pub async fn lib_requires_new(&'static self) {
        self.scope()
            .run(async {
                // The inner transaction writes first: SQLite has one writer at a time.
                self.scope()
                    .propagation(Propagation::RequiresNew)
                    .run(self.insert())
                    .await?;
                self.insert().await
            })
            .await
            .unwrap();
    }

    /// `n` tasks at once, one transaction (one INSERT) each.
    pub async fn lib_concurrent(&'static self, n: usize) {
        let tasks: Vec<_> = (0..n)
            .map(|_| tokio::spawn(self.lib_one_insert()))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }

    pub async fn lib_empty(&'static self) {
        let one = self.scope().run(async { Ok::<_, transactional::Error>(1) });
        std::hint::black_box(one.await.unwrap());
    }

    // ---- the same, written by hand with sqlx ----------------------------------------------

    pub async fn sqlx_one_insert(&self) {
        let mut tx = self.pool.begin().await.unwrap();
        self.insert_on(&mut tx).await;
        tx.commit().await.unwrap();
    }

    pub async fn sqlx_serializable(&self) {
        if self.name == "mysql" {
            // MySQL sets the next transaction's level with a statement of its own.
            let mut conn = self.pool.acquire().await.unwrap();
            conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                .await
                .unwrap();
            let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            self.insert_on(&mut tx).await;
            tx.commit().await.unwrap();
            return;
        }
        let mut tx = match self.name {
            "postgres" => self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
                .await
                .unwrap(),
            _ => self.pool.begin().await.unwrap(),
        };
        self.insert_on(&mut tx).await;
        tx.commit().await.unwrap();
    }

    pub async fn sqlx_read_only(&self) {
        if self.name == "sqlite" {
            // SQLite has no read-only transaction: the connection is made read-only around it.
            let mut conn = self.pool.acquire().await.unwrap();
            conn.execute("PRAGMA query_only = ON").await.unwrap();
            let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            tx.execute(AssertSqlSafe(self.read_sql())).await.unwrap();
            tx.commit().await.unwrap();
            conn.execute("PRAGMA query_only = OFF").await.unwrap();
            return;
        }
        let mut tx = match self.name {
            "postgres" => self.pool.begin_with("BEGIN READ ONLY").await.unwrap(),
            "mysql" => self
                .pool
                .begin_with("START TRANSACTION READ ONLY")
                .await
                .unwrap(),
            _ => self.pool.begin().await.unwrap(),
        };
        tx.execute(AssertSqlSafe(self.read_sql())).await.unwrap();
        tx.commit().await.unwrap();
    }

    pub async fn sqlx_joined(&self, depth: usize) {
        let mut tx = self.pool.begin().await.unwrap();
        for _ in 0..depth {
            self.insert_on(&mut tx).await;
        }
        tx.commit().await.unwrap();
    }

    pub async fn sqlx_nested(&self) {
        let mut tx = self.pool.begin().await.unwrap();
        let mut savepoint = sqlx::Connection::begin(&mut *tx).await.unwrap();
        self.insert_on(&mut savepoint).await;
        savepoint.commit().await.unwrap();
        tx.commit().await.unwrap();
    }

    pub async fn sqlx_requires_new(&self) {
        let mut outer = self.pool.begin().await.unwrap();
        let mut inner = self.pool.begin().await.unwrap();
        self.insert_on(&mut inner).await;
        inner.commit().await.unwrap();
        self.insert_on(&mut outer).await;
        outer.commit().await.unwrap();
    }

    pub async fn sqlx_concurrent(&'static self, n: usize) {
        let tasks: Vec<_> = (0..n)
            .map(|_| tokio::spawn(self.sqlx_one_insert()))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }

    pub async fn sqlx_empty(&self) {
        let tx = self.pool.begin().await.unwrap();
        tx.commit().await.unwrap();
    }
}
