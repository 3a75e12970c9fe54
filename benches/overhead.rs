//! What `transactional` costs over hand-written sqlx, measured in the same run.
//!
//! `cargo bench --bench overhead` (PostgreSQL at `TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; set `BENCH_SKIP_POSTGRES=1` to run SQLite only).
//! Each group has a `sqlx` baseline and the same work through the library; compare the two
//! lines of a group as a ratio.
//!
//! - `one_insert`: BEGIN, one INSERT, COMMIT.
//! - `three_joined_inserts`: one transaction, three INSERTs; the library runs them in three
//!   joined REQUIRED scopes, the baseline passes the transaction down by hand.
//! - `nested_savepoint`: BEGIN, SAVEPOINT, INSERT, RELEASE, COMMIT.
//! - `scope_only` (no database): a REQUIRED scope around an empty body over the recording mock,
//!   against the same body awaited directly: the runtime's own cost per scope.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sqlx::{AssertSqlSafe, Connection, Database, Executor, Pool};
use transactional::testing::MockDataSource;
use transactional::{Dialect, Propagation, Transactional};

static NEXT: AtomicI64 = AtomicI64::new(0);

fn next_id() -> i64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

async fn insert<DB: Database>(source: &str, table: &str) -> Result<(), transactional::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let mut conn = transactional::data_source(source)
        .connection::<DB>()
        .await?;
    let sql = format!("INSERT INTO {table} (id) VALUES ({})", next_id());
    conn.execute(AssertSqlSafe(sql)).await?;
    Ok(())
}

async fn insert_on<DB: Database>(conn: &mut DB::Connection, table: &str) -> Result<(), sqlx::Error>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let sql = format!("INSERT INTO {table} (id) VALUES ({})", next_id());
    conn.execute(AssertSqlSafe(sql)).await?;
    Ok(())
}

fn database_groups<DB: Database>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    pool: Pool<DB>,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let table = format!("bench_{name}");
    rt.block_on(async {
        let mut conn = pool.acquire().await.unwrap();
        conn.execute(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .await
            .unwrap();
        conn.execute(AssertSqlSafe(format!(
            "CREATE TABLE {table} (id BIGINT PRIMARY KEY)"
        )))
        .await
        .unwrap();
    });
    let source = format!("bench_{name}");
    let source: &'static str = Box::leak(source.into_boxed_str());
    transactional::register(source, pool.clone()).unwrap();
    let table = table.as_str();

    let mut group = c.benchmark_group(format!("{name}/one_insert"));
    group.bench_function("sqlx", |b| {
        b.to_async(rt).iter(|| async {
            let mut tx = pool.begin().await.unwrap();
            insert_on::<DB>(&mut tx, table).await.unwrap();
            tx.commit().await.unwrap();
        })
    });
    group.bench_function("transactional", |b| {
        b.to_async(rt).iter(|| async {
            Transactional::new()
                .data_source(source)
                .run(async { insert::<DB>(source, table).await })
                .await
                .unwrap();
        })
    });
    group.finish();

    let mut group = c.benchmark_group(format!("{name}/three_joined_inserts"));
    group.bench_function("sqlx", |b| {
        b.to_async(rt).iter(|| async {
            let mut conn = pool.acquire().await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            for _ in 0..3 {
                insert_on::<DB>(&mut tx, table).await.unwrap();
            }
            tx.commit().await.unwrap();
        })
    });
    group.bench_function("transactional", |b| {
        b.to_async(rt).iter(|| async {
            let outer = Transactional::new().data_source(source);
            outer
                .run(async {
                    for _ in 0..3 {
                        outer.run(insert::<DB>(source, table)).await?;
                    }
                    Ok::<_, transactional::Error>(())
                })
                .await
                .unwrap();
        })
    });
    group.finish();

    let mut group = c.benchmark_group(format!("{name}/nested_savepoint"));
    group.bench_function("sqlx", |b| {
        b.to_async(rt).iter(|| async {
            let mut tx = pool.begin().await.unwrap();
            let mut sp = tx.begin().await.unwrap();
            insert_on::<DB>(&mut sp, table).await.unwrap();
            sp.commit().await.unwrap();
            tx.commit().await.unwrap();
        })
    });
    group.bench_function("transactional", |b| {
        b.to_async(rt).iter(|| async {
            let outer = Transactional::new().data_source(source);
            outer
                .run(
                    outer
                        .propagation(Propagation::Nested)
                        .run(insert::<DB>(source, table)),
                )
                .await
                .unwrap();
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("scope_only");
    group.bench_function("plain_await", |b| {
        b.to_async(&rt).iter(|| async {
            std::hint::black_box(async { Ok::<_, transactional::Error>(1) }.await)
        })
    });
    let mock = MockDataSource::new(Dialect::Postgres);
    group.bench_function("transactional", |b| {
        b.to_async(&rt).iter(|| {
            let mock = mock.clone();
            async move {
                let r = mock
                    .run(
                        "default",
                        Transactional::new().run(async { Ok::<_, transactional::Error>(1) }),
                    )
                    .await;
                mock.clear();
                std::hint::black_box(r)
            }
        })
    });
    group.finish();

    let dir = std::env::temp_dir().join(format!("transactional-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = rt.block_on(async {
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(4)
            .connect(&format!("sqlite://{}/bench.db?mode=rwc", dir.display()))
            .await
            .unwrap()
    });
    database_groups(c, &rt, "sqlite", sqlite);

    if std::env::var_os("BENCH_SKIP_POSTGRES").is_none() {
        let url = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let pg = rt.block_on(async {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await
                .expect("PostgreSQL for the benchmark (or set BENCH_SKIP_POSTGRES=1)")
        });
        database_groups(c, &rt, "postgres", pg);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = overhead;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = benches
}
criterion_main!(overhead);
