//! What read replicas give and cost, on PostgreSQL with a streaming replica
//! (`TEST_POSTGRES_REPLICA_URL`, default `postgres://postgres@127.0.0.1:5433/test`;
//! `.ci/pg-replica` makes one) and on MariaDB with a GTID replica (`TEST_MARIADB_PRIMARY_URL`
//! and `TEST_MARIADB_REPLICA_URL`, default ports 3308 and 3307; `.ci/mariadb-replica`):
//! read-only scopes per second with the primary alone and with the replica beside it, and the
//! cost of reading the commit position in COMMIT's round trip.
//!
//! `benches/run` runs it and writes its section of `BENCHMARKS.md` (or
//! `BENCH_REPORT=BENCHMARKS.md cargo bench -p transactional-benches --bench replicas`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sqlx::{AssertSqlSafe, Database, Executor, Pool};
use transactional::{ReplicaSettings, Transactional};

#[path = "section.rs"]
mod section;

/// Where the bench's section of BENCHMARKS.md starts (the other reports keep it).
const MARKER: &str = "<!-- replicas: benches/replicas.rs -->";
const TABLE: &str = "bench_replicas";
const ROUNDS: usize = 15;
const BLOCK: Duration = Duration::from_millis(100);

static NEXT: AtomicI64 = AtomicI64::new(1_000_000);

/// A primary with a replica, and what differs between the servers.
struct Server {
    label: &'static str,
    primary_url: String,
    replica_url: String,
    script: &'static str,
    /// Makes the table with 1,000 rows.
    fill: &'static str,
    /// 1 on the replica, 0 on the primary.
    on_replica: &'static str,
    /// The position statement COMMIT carries with replicas.
    position: &'static str,
}

fn env(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// The data sources of one server: its primary alone, and with its replica.
#[derive(Clone, Copy)]
struct Sources {
    alone: &'static str,
    replicated: &'static str,
}

/// What one server measured.
struct Figures {
    alone: f64,
    with_replica: f64,
    replica_share: usize,
    plain: f64,
    tracked: f64,
    ratio: f64,
}

async fn scalar<DB: Database>(source: &'static str, sql: String) -> i64
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut conn = transactional::data_source(source)
        .connection::<DB>()
        .await
        .unwrap();
    sqlx::query_scalar::<DB, i64>(AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

async fn read<DB: Database>(source: &'static str)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    Transactional::new()
        .data_source(source)
        .read_only(true)
        .run(async {
            let sql = format!("SELECT COUNT(*) FROM {TABLE} WHERE id < 100");
            scalar::<DB>(source, sql).await;
            Ok::<_, transactional::Error>(())
        })
        .await
        .unwrap();
}

async fn write<DB: Database>(source: &'static str)
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    Transactional::new()
        .data_source(source)
        .run(async {
            let mut conn = transactional::data_source(source)
                .connection::<DB>()
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
fn reads_per_second<DB: Database>(
    rt: &tokio::runtime::Runtime,
    source: &'static str,
    tasks: usize,
    time: Duration,
) -> f64
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    rt.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + time;
        let workers: Vec<_> = (0..tasks)
            .map(|_| {
                let done = done.clone();
                tokio::spawn(async move {
                    while Instant::now() < until {
                        read::<DB>(source).await;
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

/// Registers the server's data sources over a table of 1,000 rows.
fn register<DB: Database>(rt: &tokio::runtime::Runtime, server: &Server) -> Sources
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    let leak = |name: String| -> &'static str { Box::leak(name.into_boxed_str()) };
    let sources = Sources {
        alone: leak(format!("bench_{}_primary_only", server.label)),
        replicated: leak(format!("bench_{}_replicated", server.label)),
    };
    rt.block_on(async {
        let pool = |url: String| async move {
            sqlx::pool::PoolOptions::<DB>::new()
                .max_connections(10)
                .connect(&url)
                .await
                .unwrap_or_else(|e| panic!("{url}: {e} ({} makes a replica)", server.script))
        };
        let primary: Pool<DB> = pool(server.primary_url.clone()).await;
        primary
            .execute(AssertSqlSafe(format!("DROP TABLE IF EXISTS {TABLE}")))
            .await
            .unwrap();
        primary
            .execute(AssertSqlSafe(format!(
                "CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY)"
            )))
            .await
            .unwrap();
        primary
            .execute(AssertSqlSafe(server.fill.replace("{TABLE}", TABLE)))
            .await
            .unwrap();
        transactional::register(sources.alone, primary.clone()).unwrap();
        let replicated = pool(server.primary_url.clone()).await;
        let replica = pool(server.replica_url.clone()).await;
        transactional::register_with_replicas(
            sources.replicated,
            replicated,
            vec![replica],
            ReplicaSettings::new(),
        )
        .unwrap();
        // The replica has the table once it answers as caught up.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    sources
}

fn measure<DB: Database>(rt: &tokio::runtime::Runtime, server: &Server, sources: Sources) -> Figures
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    // Read-only throughput: 8 tasks for 2 s, three times each side, alternating.
    let (mut alone, mut with_replica) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        alone.push(reads_per_second::<DB>(
            rt,
            sources.alone,
            8,
            Duration::from_secs(2),
        ));
        with_replica.push(reads_per_second::<DB>(
            rt,
            sources.replicated,
            8,
            Duration::from_secs(2),
        ));
    }
    let (alone, with_replica) = (median(alone), median(with_replica));
    eprintln!(
        "replicas ({}): {alone:.0} read-only scopes/s on the primary alone, {with_replica:.0} with a replica",
        server.label
    );
    let replica_share = rt.block_on(async {
        let mut on_replica = 0;
        for _ in 0..100 {
            let on = Transactional::new()
                .data_source(sources.replicated)
                .read_only(true)
                .run(async {
                    let on = scalar::<DB>(sources.replicated, server.on_replica.into()).await;
                    Ok::<i64, transactional::Error>(on)
                })
                .await
                .unwrap();
            on_replica += (on == 1) as usize;
        }
        on_replica
    });

    // The position read with COMMIT: a write with replicas against one without, interleaved.
    let block = |calls: usize, source: &'static str| {
        let started = Instant::now();
        for _ in 0..calls {
            rt.block_on(write::<DB>(source));
        }
        started.elapsed().as_secs_f64() / calls as f64
    };
    let calls = ((BLOCK.as_secs_f64() / block(20, sources.replicated)) as usize).clamp(5, 5_000);
    let (mut ratios, mut plain, mut tracked) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (a, b) = if round % 2 == 0 {
            let a = block(calls, sources.alone);
            (a, block(calls, sources.replicated))
        } else {
            let b = block(calls, sources.replicated);
            (block(calls, sources.alone), b)
        };
        ratios.push(b / a);
        plain.push(a * 1e6);
        tracked.push(b * 1e6);
    }
    let (ratio, plain, tracked) = (median(ratios), median(plain), median(tracked));
    eprintln!(
        "replicas ({}): a write {plain:.1} us without replicas, {tracked:.1} us with (ratio {ratio:.3})",
        server.label
    );
    Figures {
        alone,
        with_replica,
        replica_share,
        plain,
        tracked,
        ratio,
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pg = Server {
        label: "postgres",
        primary_url: env(
            "TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        replica_url: env(
            "TEST_POSTGRES_REPLICA_URL",
            "postgres://postgres@127.0.0.1:5433/test",
        ),
        script: ".ci/pg-replica",
        fill: "INSERT INTO {TABLE} SELECT generate_series(1, 1000)",
        on_replica: "SELECT pg_is_in_recovery()::int::int8",
        position: "the WAL position after it",
    };
    let maria = Server {
        label: "mariadb",
        primary_url: env(
            "TEST_MARIADB_PRIMARY_URL",
            "mysql://root@127.0.0.1:3308/test",
        ),
        replica_url: env(
            "TEST_MARIADB_REPLICA_URL",
            "mysql://root@127.0.0.1:3307/test",
        ),
        script: ".ci/mariadb-replica",
        fill: "INSERT INTO {TABLE} SELECT seq FROM seq_1_to_1000",
        on_replica: "SELECT CAST(@@read_only AS SIGNED)",
        position: "`@@last_gtid`",
    };
    let pg_sources = register::<sqlx::Postgres>(&rt, &pg);
    let maria_sources = register::<sqlx::MySql>(&rt, &maria);
    let figures = [
        (&pg, measure::<sqlx::Postgres>(&rt, &pg, pg_sources)),
        (&maria, measure::<sqlx::MySql>(&rt, &maria, maria_sources)),
    ];

    let mut group = c.benchmark_group("replicas");
    group.bench_function("postgres/read_primary_only", |t| {
        t.to_async(&rt)
            .iter(|| read::<sqlx::Postgres>(pg_sources.alone))
    });
    group.bench_function("postgres/read_replicated", |t| {
        t.to_async(&rt)
            .iter(|| read::<sqlx::Postgres>(pg_sources.replicated))
    });
    group.bench_function("mariadb/read_primary_only", |t| {
        t.to_async(&rt)
            .iter(|| read::<sqlx::MySql>(maria_sources.alone))
    });
    group.bench_function("mariadb/read_replicated", |t| {
        t.to_async(&rt)
            .iter(|| read::<sqlx::MySql>(maria_sources.replicated))
    });
    group.finish();

    let mut md = String::new();
    let _ = writeln!(
        md,
        "{MARKER}\n## Read replicas\n\n\
         Measured by `benches/replicas.rs` (a PostgreSQL primary and a streaming replica from \
         `.ci/pg-replica`; a MariaDB primary and a GTID replica from `.ci/mariadb-replica`; all \
         on this 2-core machine; a 2-worker tokio runtime; pools of 10).\n\n\
         | figure | server | primary alone | primary + 1 replica |\n|---|---|---|---|"
    );
    for (server, f) in &figures {
        let label = server.label;
        let _ = writeln!(
            md,
            "| read-only scopes per second (8 tasks, `SELECT COUNT(*)` of 100 rows, median of 3 × 2 s) | {label} | {:.0} | {:.0} |\n\
             | read-only scopes that ran on the replica (of 100, in a row) | {label} | – | {} |\n\
             | a read-write scope with one INSERT, µs (median of {ROUNDS} interleaved rounds) | {label} | {:.1} | {:.1} (×{:.3}) |",
            f.alone, f.with_replica, f.replica_share, f.plain, f.tracked, f.ratio
        );
    }
    let change = |f: &Figures| {
        let percent = (f.with_replica / f.alone - 1.0) * 100.0;
        format!("{percent:+.0}%")
    };
    let _ = writeln!(
        md,
        "\nWith replicas, COMMIT sends one more statement in its round trip ({} on PostgreSQL, \
         {} on MariaDB); a read-only scope sends nothing more (its replica's replay is watched \
         by a monitor task, every 100 ms). Read-only throughput with the replica: {} on \
         PostgreSQL, {} on MariaDB in this run. All servers share this machine's two cores, so a \
         replica adds little capacity here (it competes with its primary for the same cores; \
         the reads of one run spread over two servers' caches and locks): what a replica on its \
         own machine gives is not measured here; this run measures that routing works and what \
         it adds.",
        pg.position,
        maria.position,
        change(&figures[0].1),
        change(&figures[1].1),
    );
    section::write(MARKER, &md);
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
