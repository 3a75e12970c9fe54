//! What `transactional` costs over the same work written by hand with sqlx, measured in the
//! same run, on SQLite, PostgreSQL and MariaDB/MySQL.
//!
//! `benches/run` (from the repository root) runs everything and writes `BENCHMARKS.md`. Or
//! `cargo bench -p transactional-benches --bench overhead`, which writes the report to
//! `target/criterion/BENCHMARKS.md` (or `BENCH_REPORT`). PostgreSQL and MariaDB at
//! `TEST_POSTGRES_URL` and `TEST_MYSQL_URL` (the test suite's defaults); `BENCH_ONLY=sqlite`
//! (or `postgres,sqlite`, …) limits the databases, `BENCH_NO_INTERLEAVED=1` skips the
//! interleaved rounds. A criterion filter (`-- <filter>`) leaves the other groups' figures in the
//! report as an earlier run left them.
//!
//! Every group `<database>.<scenario>` has a `sqlx` line (hand-written) and a `transactional`
//! line (the library). Criterion times each line on its own; on a small shared machine the
//! time of the same code drifts by more than the difference sought between two lines measured
//! minutes apart, so the report's ratios come from an interleaved run before them: per
//! scenario, `ROUNDS` rounds of a block of calls through the library then the same block by
//! hand, the median of the rounds' ratios. Each scenario is also run once through a proxy that
//! counts the statements and round trips each side sends.

#[path = "proxy.rs"]
mod proxy;
#[path = "report.rs"]
mod report;
#[path = "support.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::future::BoxFuture;
use proxy::{counting_proxy, Counts};
use report::{Counted, Interleaved, Report};
use sqlx::{Database, Executor, Pool};
use support::Bench;
use transactional::Transactional;

/// The scenarios every database runs, as `(name, hand-written, library)`.
macro_rules! scenarios {
    ($bench:expr, $each:ident) => {{
        let b = $bench;
        $each!("one_insert", b.sqlx_one_insert(), b.lib_one_insert());
        $each!("serializable", b.sqlx_serializable(), b.lib_serializable());
        $each!("read_only", b.sqlx_read_only(), b.lib_read_only());
        $each!("joined_1", b.sqlx_joined(1), b.lib_joined(1));
        $each!("joined_8", b.sqlx_joined(8), b.lib_joined(8));
        $each!("joined_32", b.sqlx_joined(32), b.lib_joined(32));
        $each!("nested_in_required", b.sqlx_nested(), b.lib_nested());
        $each!(
            "requires_new_in_required",
            b.sqlx_requires_new(),
            b.lib_requires_new()
        );
        $each!("empty_scope", b.sqlx_empty(), b.lib_empty());
        // Throughput: n tasks at once, one transaction (one INSERT) each.
        $each!("concurrent_4", b.sqlx_concurrent(4), b.lib_concurrent(4));
        $each!("concurrent_16", b.sqlx_concurrent(16), b.lib_concurrent(16));
    }};
}

/// Times every scenario of one database with criterion, each side on its own.
fn database<DB: Database>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    bench: &'static Bench<DB>,
    report: &mut Report,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    macro_rules! timed {
        ($name:expr, $sqlx:expr, $lib:expr) => {{
            let name = format!("{}.{}", bench.name, $name);
            let mut group = c.benchmark_group(&name);
            group.bench_function("sqlx", |t| t.to_async(rt).iter(|| $sqlx));
            group.bench_function("transactional", |t| t.to_async(rt).iter(|| $lib));
            group.finish();
            report.groups.push(name);
        }};
    }
    scenarios!(bench, timed);
}

/// Rounds of interleaved blocks per scenario, and how long a block lasts (per side).
const ROUNDS: usize = 25;
const BLOCK_TIME: Duration = Duration::from_millis(100);

/// Times each scenario in interleaved blocks: a block through the library, then the same block
/// by hand; one ratio per round; the median, and the spread.
fn interleaved<DB: Database>(
    rt: &tokio::runtime::Runtime,
    bench: &'static Bench<DB>,
    report: &mut Report,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    macro_rules! block {
        ($calls:expr, $fut:expr) => {{
            let started = Instant::now();
            for _ in 0..$calls {
                rt.block_on($fut);
            }
            started.elapsed().as_secs_f64() / $calls as f64
        }};
    }
    macro_rules! measured {
        ($name:expr, $sqlx:expr, $lib:expr) => {{
            // Warm both up, and size the block from the slower side.
            let slower = block!(20, $sqlx).max(block!(20, $lib));
            let calls = ((BLOCK_TIME.as_secs_f64() / slower) as usize).clamp(5, 20_000);
            let mut ratios = Vec::new();
            let mut sqlx_times = Vec::new();
            let mut lib_times = Vec::new();
            for round in 0..ROUNDS {
                // Alternate which side goes first, so that neither always follows the other.
                let (lib, sqlx) = if round % 2 == 0 {
                    let lib = block!(calls, $lib);
                    (lib, block!(calls, $sqlx))
                } else {
                    let sqlx = block!(calls, $sqlx);
                    (block!(calls, $lib), sqlx)
                };
                ratios.push(lib / sqlx);
                sqlx_times.push(sqlx);
                lib_times.push(lib);
            }
            let (low, high) = ratios
                .iter()
                .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
            let row = Interleaved {
                group: format!("{}.{}", bench.name, $name),
                ratio: median(ratios),
                low,
                high,
                sqlx_us: median(sqlx_times) * 1e6,
                lib_us: median(lib_times) * 1e6,
                block: calls,
            };
            eprintln!(
                "{}: ratio {:.3} [{:.2}-{:.2}], {:.1} us by hand, {:.1} us through the library ({} calls a block)",
                row.group, row.ratio, row.low, row.high, row.sqlx_us, row.lib_us, row.block
            );
            report.interleaved.push(row);
        }};
    }
    scenarios!(bench, measured);
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs each scenario once more through the counting proxy, each side alone.
fn count<DB: Database>(
    rt: &tokio::runtime::Runtime,
    bench: &'static Bench<DB>,
    counts: &Counts,
    report: &mut Report,
) where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    // Lets the proxy read what was sent before counting it.
    let settle = || std::thread::sleep(Duration::from_millis(100));
    macro_rules! counted {
        ($name:expr, $sqlx:expr, $lib:expr) => {{
            rt.block_on($sqlx);
            rt.block_on($lib);
            settle();
            counts.take();
            rt.block_on($sqlx);
            settle();
            let sqlx = counts.take();
            rt.block_on($lib);
            settle();
            let lib = counts.take();
            report.counted.push(Counted {
                group: format!("{}.{}", bench.name, $name),
                sqlx,
                lib,
            });
        }};
    }
    scenarios!(bench, counted);
}

/// The runtime's own cost, with no database: a scope whose body touches nothing (so it
/// sends nothing) against the same body awaited directly, alone and 32 joined levels deep.
fn cpu(c: &mut Criterion, rt: &tokio::runtime::Runtime, source: &'static str, report: &mut Report) {
    fn plain_chain(depth: usize) -> BoxFuture<'static, Result<(), transactional::Error>> {
        Box::pin(async move {
            if depth > 1 {
                plain_chain(depth - 1).await?;
            }
            Ok(())
        })
    }
    fn scope_chain(
        source: &'static str,
        depth: usize,
    ) -> BoxFuture<'static, Result<(), transactional::Error>> {
        Box::pin(Transactional::new().data_source(source).run(async move {
            if depth > 1 {
                scope_chain(source, depth - 1).await?;
            }
            Ok(())
        }))
    }
    for depth in [1usize, 32] {
        let name = format!("cpu.levels_{depth}");
        let mut group = c.benchmark_group(&name);
        group.bench_function("plain", |t| t.to_async(rt).iter(|| plain_chain(depth)));
        group.bench_function("transactional", |t| {
            t.to_async(rt).iter(|| scope_chain(source, depth))
        });
        group.finish();
        report.groups.push(name);
    }
}

fn leak<T>(x: T) -> &'static T {
    Box::leak(Box::new(x))
}

fn wanted(database: &str) -> bool {
    std::env::var("BENCH_ONLY")
        .map(|only| only.split(',').any(|d| d.trim() == database))
        .unwrap_or(true)
}

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// A pool of `max` connections to `url`.
async fn pool<DB: Database>(url: &str, max: u32) -> Pool<DB> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(max)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e} (BENCH_ONLY limits the databases)"))
}

/// The same server through the counting proxy.
fn proxied(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let at = rest.find('@').map_or(0, |i| i + 1);
    let host_end = rest[at..].find('/').map_or(rest.len(), |i| at + i);
    let sep = if rest.contains('?') { '&' } else { '?' };
    let tls = if scheme == "postgres" {
        format!("{sep}sslmode=disable")
    } else {
        format!("{sep}ssl-mode=disabled")
    };
    format!(
        "{scheme}://{}127.0.0.1:{port}{}{tls}",
        &rest[..at],
        &rest[host_end..]
    )
}

fn port_of(url: &str) -> u16 {
    let rest = url.split_once("://").unwrap().1;
    let host = &rest[rest.find('@').map_or(0, |i| i + 1)..];
    let host = &host[..host.find('/').unwrap_or(host.len())];
    host.rsplit_once(':')
        .map_or(5432, |(_, p)| p.parse().unwrap())
}

/// The server's version, as it reports it.
macro_rules! version {
    ($rt:expr, $pool:expr, $sql:expr) => {
        $rt.block_on(sqlx::query_scalar::<_, String>($sql).fetch_one($pool))
            .unwrap_or_else(|e| format!("unknown ({e})"))
    };
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut report = Report::default();
    let interleave = std::env::var_os("BENCH_NO_INTERLEAVED").is_none();
    let counts = Arc::new(Counts::default());

    let dir = std::env::temp_dir().join(format!("transactional-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite_url = format!("sqlite://{}/bench.db?mode=rwc", dir.display());
    let sqlite = leak(rt.block_on(async {
        Bench::new("sqlite", "", pool::<sqlx::Sqlite>(&sqlite_url, 8).await).await
    }));
    cpu(c, &rt, sqlite.source, &mut report);
    if wanted("sqlite") {
        let v = version!(
            rt,
            &sqlite.pool,
            "SELECT sqlite_version() || ' (a file; journal_mode ' || \
             (SELECT journal_mode FROM pragma_journal_mode) || ', synchronous ' || \
             (SELECT synchronous FROM pragma_synchronous) || ')'"
        );
        report.servers.push(("SQLite", v));
        if interleave {
            interleaved(&rt, sqlite, &mut report);
        }
        database(c, &rt, sqlite, &mut report);
    }

    if wanted("postgres") {
        let url = url(
            "TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        let (bench, through_proxy) = rt.block_on(async {
            let bench = Bench::new("postgres", "", pool::<sqlx::Postgres>(&url, 20).await).await;
            let port = counting_proxy(port_of(&url), false, counts.clone()).await;
            let proxied_pool = pool::<sqlx::Postgres>(&proxied(&url, port), 4).await;
            (
                bench,
                Bench::new("postgres", "_counted", proxied_pool).await,
            )
        });
        let v = version!(rt, &bench.pool, "SELECT version()");
        report
            .servers
            .push(("PostgreSQL", format!("{v} (local TCP)")));
        count(&rt, leak(through_proxy), &counts, &mut report);
        let bench = leak(bench);
        if interleave {
            interleaved(&rt, bench, &mut report);
        }
        database(c, &rt, bench, &mut report);
    }

    if wanted("mysql") {
        let url = url("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
        let (bench, through_proxy) = rt.block_on(async {
            let bench = Bench::new("mysql", "", pool::<sqlx::MySql>(&url, 20).await).await;
            let port = counting_proxy(port_of(&url), true, counts.clone()).await;
            let proxied_pool = pool::<sqlx::MySql>(&proxied(&url, port), 4).await;
            (bench, Bench::new("mysql", "_counted", proxied_pool).await)
        });
        let v = version!(rt, &bench.pool, "SELECT VERSION()");
        report
            .servers
            .push(("MySQL/MariaDB", format!("{v} (local TCP)")));
        count(&rt, leak(through_proxy), &counts, &mut report);
        let bench = leak(bench);
        if interleave {
            interleaved(&rt, bench, &mut report);
        }
        database(c, &rt, bench, &mut report);
    }

    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_owned());
    let criterion = std::path::Path::new(&target).join("criterion");
    let path = std::env::var("BENCH_REPORT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| criterion.join("BENCHMARKS.md"));
    let settings = format!(
        "a tokio runtime of 2 worker threads; pools of 20 connections (SQLite 8); \
         {ROUNDS} interleaved rounds of ~{} ms blocks; criterion: 1 s warm-up, 3 s, 30 samples",
        BLOCK_TIME.as_millis()
    );
    report.write(&path, &criterion, &settings);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = overhead;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = benches
}
criterion_main!(overhead);
