//! What read replicas give and cost, on PostgreSQL with a streaming replica
//! (`TEST_POSTGRES_REPLICA_URL`, default `postgres://postgres@127.0.0.1:5433/test`;
//! `.ci/pg-replica` makes one): read-only scopes per second with the primary alone and with
//! the replica beside it, and the cost of reading the commit position in COMMIT's round trip.
//!
//! `benches/run` runs it and writes its section of `BENCHMARKS.md` (or
//! `BENCH_REPORT=BENCHMARKS.md cargo bench -p transactional-benches --bench replicas`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sqlx::{AssertSqlSafe, Executor, PgPool};
use transactional::{ReplicaSettings, Transactional};

/// Where the bench's section of BENCHMARKS.md starts (the other reports keep it).
const MARKER: &str = "<!-- replicas: benches/replicas.rs -->";
const TABLE: &str = "bench_replicas";
const ROUNDS: usize = 15;
const BLOCK: Duration = Duration::from_millis(100);

static NEXT: AtomicI64 = AtomicI64::new(1_000_000);

async fn read(source: &'static str) {
    Transactional::new()
        .data_source(source)
        .read_only(true)
        .run(async {
            let mut conn = transactional::data_source(source)
                .connection::<sqlx::Postgres>()
                .await?;
            let sql = format!("SELECT COUNT(*) FROM {TABLE} WHERE id < 100");
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .fetch_one(&mut *conn)
                .await?;
            Ok::<_, transactional::Error>(())
        })
        .await
        .unwrap();
}

async fn write(source: &'static str) {
    Transactional::new()
        .data_source(source)
        .run(async {
            let mut conn = transactional::data_source(source)
                .connection::<sqlx::Postgres>()
                .await?;
            let id = NEXT.fetch_add(1, Ordering::Relaxed);
            conn.execute(AssertSqlSafe(format!(
                "INSERT INTO {TABLE} (id) VALUES ({id})"
            )))
            .await?;
            Ok::<_, transactional::Error>(())
        })
        .await
        .unwrap();
}

/// Read-only scopes per second from `tasks` tasks for `time`.
fn reads_per_second(
    rt: &tokio::runtime::Runtime,
    source: &'static str,
    tasks: usize,
    time: Duration,
) -> f64 {
    rt.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + time;
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let done = done.clone();
                tokio::spawn(async move {
                    while Instant::now() < until {
                        read(source).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / time.as_secs_f64()
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let primary_url = std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let replica_url = std::env::var("TEST_POSTGRES_REPLICA_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".into());
    rt.block_on(async {
        let pool = |url: String| async move {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                .connect(&url)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e} (.ci/pg-replica makes a replica)"))
        };
        let primary: PgPool = pool(primary_url.clone()).await;
        primary
            .execute(AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
            .await
            .unwrap();
        primary
            .execute(AssertSqlSafe(format!(
                "CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY); \
                 INSERT INTO {TABLE} SELECT generate_series(1, 1000)"
            )))
            .await
            .unwrap();
        transactional::register("bench_primary_only", primary.clone()).unwrap();
        let replicated = pool(primary_url).await;
        let replica = pool(replica_url).await;
        transactional::register_with_replicas(
            "bench_replicated",
            replicated,
            vec![replica],
            ReplicaSettings::new(),
        )
        .unwrap();
        // The replica has the table once it answers as caught up.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });

    // Read-only throughput: 8 tasks for 2 s, three times each side, alternating.
    let (mut alone, mut with_replica) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        alone.push(reads_per_second(
            &rt,
            "bench_primary_only",
            8,
            Duration::from_secs(2),
        ));
        with_replica.push(reads_per_second(
            &rt,
            "bench_replicated",
            8,
            Duration::from_secs(2),
        ));
    }
    let (alone, with_replica) = (median(alone), median(with_replica));
    eprintln!("replicas: {alone:.0} read-only scopes/s on the primary alone, {with_replica:.0} with a replica");
    let replica_share = rt.block_on(async {
        let mut on_replica = 0;
        for _ in 0..100 {
            let on: bool = Transactional::new()
                .data_source("bench_replicated")
                .read_only(true)
                .run(async {
                    let mut conn = transactional::data_source("bench_replicated")
                        .connection::<sqlx::Postgres>()
                        .await?;
                    Ok::<bool, transactional::Error>(
                        sqlx::query_scalar("SELECT pg_is_in_recovery()")
                            .fetch_one(&mut *conn)
                            .await?,
                    )
                })
                .await
                .unwrap();
            on_replica += on as usize;
        }
        on_replica
    });

    // The position read with COMMIT: a write with replicas against one without, interleaved.
    let block = |calls: usize, source: &'static str| {
        let started = Instant::now();
        for _ in 0..calls {
            rt.block_on(write(source));
        }
        started.elapsed().as_secs_f64() / calls as f64
    };
    let calls = ((BLOCK.as_secs_f64() / block(20, "bench_replicated")) as usize).clamp(5, 5_000);
    let (mut ratios, mut plain, mut tracked) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (a, b) = if round % 2 == 0 {
            let a = block(calls, "bench_primary_only");
            (a, block(calls, "bench_replicated"))
        } else {
            let b = block(calls, "bench_replicated");
            (block(calls, "bench_primary_only"), b)
        };
        ratios.push(b / a);
        plain.push(a * 1e6);
        tracked.push(b * 1e6);
    }
    let (ratio, plain, tracked) = (median(ratios), median(plain), median(tracked));
    eprintln!(
        "replicas: a write {plain:.1} us without replicas, {tracked:.1} us with (ratio {ratio:.3})"
    );

    let mut group = c.benchmark_group("replicas");
    group.bench_function("read_primary_only", |t| {
        t.to_async(&rt).iter(|| read("bench_primary_only"))
    });
    group.bench_function("read_replicated", |t| {
        t.to_async(&rt).iter(|| read("bench_replicated"))
    });
    group.bench_function("write_primary_only", |t| {
        t.to_async(&rt).iter(|| write("bench_primary_only"))
    });
    group.bench_function("write_replicated", |t| {
        t.to_async(&rt).iter(|| write("bench_replicated"))
    });
    group.finish();

    let mut md = String::new();
    let _ = writeln!(
        md,
        "{MARKER}\n## Read replicas\n\n\
         Measured by `benches/replicas.rs` (PostgreSQL primary and a streaming replica from \
         `.ci/pg-replica`, both on this 2-core machine; a 2-worker tokio runtime; pools of 10).\n\n\
         | figure | primary alone | primary + 1 replica |\n|---|---|---|\n\
         | read-only scopes per second (8 tasks, `SELECT COUNT(*)` of 100 rows, median of 3 × 2 s) | {alone:.0} | {with_replica:.0} |\n\
         | read-only scopes that ran on the replica (of 100, in a row) | – | {replica_share} |\n\
         | a read-write scope with one INSERT, µs (median of {ROUNDS} interleaved rounds) | {plain:.1} | {tracked:.1} (×{ratio:.3}) |\n\n\
         With replicas, COMMIT sends one more statement in its round trip (the WAL position \
         after it); a read-only scope sends nothing more (its replica's replay is watched by a \
         monitor task, every 100 ms). Both servers share this machine's two cores, so the \
         second server adds no capacity here: the replica competes with the primary for the \
         same cores, and read-only throughput drops rather than rises. The gain needs a \
         replica on its own machine; this run measures only that routing works and what it adds."
    );
    match std::env::var("BENCH_REPORT") {
        Ok(path) => {
            let old = std::fs::read_to_string(&path).unwrap_or_default();
            let (head, tail) = match old.split_once(MARKER) {
                Some((head, rest)) => {
                    // Keep what follows this section (another bench's).
                    let after = rest.find("<!-- ").map_or("", |at| &rest[at..]);
                    (head.trim_end().to_owned(), after.to_owned())
                }
                None => (old.trim_end().to_owned(), String::new()),
            };
            let tail = if tail.is_empty() {
                String::new()
            } else {
                format!("\n\n{tail}")
            };
            std::fs::write(&path, format!("{head}\n\n{}{tail}", md.trim_end())).unwrap();
        }
        Err(_) => eprintln!("{md}"),
    }
}

criterion_group! {
    name = replicas;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = benches
}
criterion_main!(replicas);
