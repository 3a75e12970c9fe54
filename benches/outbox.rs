//! What the outbox costs: `publish` inside a scope against the same event written by a plain
//! INSERT (through the library, and by hand with sqlx), and how many events per second reach
//! NATS JetStream end to end. On SQLite, PostgreSQL and MariaDB/MySQL, and the NATS server at
//! `TEST_NATS_URL` (default `nats://127.0.0.1:4222`, JetStream on).
//!
//! `benches/run` runs it after `overhead` and writes its section of `BENCHMARKS.md`; or
//! `BENCH_REPORT=BENCHMARKS.md cargo bench -p transactional-benches --bench outbox`
//! (`BENCH_ONLY` limits the databases, as for `overhead`).

#[path = "proxy.rs"]
mod proxy;
#[path = "section.rs"]
mod section;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use criterion::{criterion_group, criterion_main, Criterion};
use proxy::{counting_proxy, Counts};
use sqlx::{AssertSqlSafe, Database, Encode, Executor, IntoArguments, Pool, Type};
use transactional::outbox::{JetStream, Outbox, OutboxPool};
use transactional::Transactional;

/// Where the bench's section of BENCHMARKS.md starts (the `overhead` report keeps it).
const MARKER: &str = "<!-- outbox: benches/outbox.rs -->";

static NEXT: AtomicI64 = AtomicI64::new(0);

/// One database: its pool (a data source of its own), a table of rows, a plain table of
/// events shaped like the outbox's, and the outbox.
struct Db<DB: Database> {
    name: &'static str,
    pool: Pool<DB>,
    source: &'static str,
    outbox: Outbox,
}

/// The three ways of writing a row and its event.
#[derive(Clone, Copy)]
enum Side {
    Sqlx,
    PlainInsert,
    Publish,
}

impl<DB> Db<DB>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    Pool<DB>: OutboxPool + Clone,
{
    async fn new(name: &'static str, tag: &str, pool: Pool<DB>) -> Db<DB> {
        let outbox = Outbox::with_table(&format!("bench_outbox_{name}")).unwrap();
        let (rows, events) = (
            format!("bench_ob_rows_{name}"),
            format!("bench_ob_events_{name}"),
        );
        for sql in [
            format!("DROP TABLE IF EXISTS {rows}"),
            format!("DROP TABLE IF EXISTS {events}"),
            format!("DROP TABLE IF EXISTS {}", outbox.table()),
            format!("CREATE TABLE {rows} (id BIGINT PRIMARY KEY)"),
            format!(
                "CREATE TABLE {events} (topic VARCHAR(255) NOT NULL, msg_key VARCHAR(255) NOT NULL, \
                 payload {} NOT NULL, created_at BIGINT NOT NULL)",
                if name == "postgres" { "BYTEA" } else { "BLOB" }
            ),
        ] {
            pool.execute(AssertSqlSafe(sql)).await.unwrap();
        }
        outbox.create_schema(&pool).await.unwrap();
        let source: &'static str = Box::leak(format!("bench_ob_{name}{tag}").into_boxed_str());
        transactional::register(source, pool.clone()).unwrap();
        Db {
            name,
            pool,
            source,
            outbox: outbox.with_data_source(source),
        }
    }

    fn row_sql(&self) -> String {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("INSERT INTO bench_ob_rows_{} (id) VALUES ({id})", self.name)
    }

    async fn event_on(&self, conn: &mut DB::Connection) {
        let mut q = sqlx::QueryBuilder::<DB>::new(format!(
            "INSERT INTO bench_ob_events_{} (topic, msg_key, payload, created_at) VALUES (",
            self.name
        ));
        q.separated(", ")
            .push_bind("orders.placed".to_owned())
            .push_bind("order-1".to_owned())
            .push_bind(PAYLOAD.to_vec())
            .push_bind(0i64);
        q.push(")");
        q.build().execute(conn).await.unwrap();
    }

    /// A row and its event in one transaction, one of three ways.
    async fn write(&self, side: Side) {
        match side {
            Side::Sqlx => {
                let mut tx = self.pool.begin().await.unwrap();
                tx.execute(AssertSqlSafe(self.row_sql())).await.unwrap();
                self.event_on(&mut tx).await;
                tx.commit().await.unwrap();
            }
            Side::PlainInsert | Side::Publish => {
                Transactional::new()
                    .data_source(self.source)
                    .run(async {
                        let ds = transactional::data_source(self.source);
                        let mut conn = ds.connection::<DB>().await?;
                        conn.execute(AssertSqlSafe(self.row_sql())).await?;
                        if let Side::PlainInsert = side {
                            self.event_on(&mut conn).await;
                        } else {
                            drop(conn);
                            self.outbox
                                .publish("orders.placed", "order-1", PAYLOAD.to_vec())
                                .await?;
                        }
                        Ok::<_, transactional::Error>(())
                    })
                    .await
                    .unwrap();
            }
        }
    }

    /// Interleaved blocks of the three sides: µs per call of each (medians), and the medians of
    /// the per-round ratios publish / plain INSERT and publish / hand-written.
    fn interleaved(&'static self, rt: &tokio::runtime::Runtime) -> [f64; 5] {
        let block = |calls: usize, side: Side| {
            let started = Instant::now();
            for _ in 0..calls {
                rt.block_on(self.write(side));
            }
            started.elapsed().as_secs_f64() / calls as f64
        };
        let calls = ((BLOCK.as_secs_f64() / block(20, Side::Publish)) as usize).clamp(5, 5_000);
        let sides = [Side::Sqlx, Side::PlainInsert, Side::Publish];
        let mut times: [Vec<f64>; 3] = Default::default();
        let (mut vs_plain, mut vs_sqlx) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let mut t = [0.0; 3];
            for i in 0..3 {
                let i = (i + round) % 3; // rotate which side goes first
                t[i] = block(calls, sides[i]);
            }
            vs_plain.push(t[2] / t[1]);
            vs_sqlx.push(t[2] / t[0]);
            for i in 0..3 {
                times[i].push(t[i] * 1e6);
            }
        }
        let [a, b, c] = times.map(median);
        [a, b, c, median(vs_plain), median(vs_sqlx)]
    }

    /// Statements and round trips of one call of each side, through the counting proxy.
    fn counted(&'static self, rt: &tokio::runtime::Runtime, counts: &Counts) -> String {
        let settle = || std::thread::sleep(Duration::from_millis(100));
        let mut out = Vec::new();
        for side in [Side::Sqlx, Side::PlainInsert, Side::Publish] {
            // Every connection of the pool (4) has prepared the side's statements.
            for _ in 0..8 {
                rt.block_on(self.write(side));
            }
            settle();
            counts.take();
            rt.block_on(self.write(side));
            settle();
            let (statements, trips) = counts.take();
            out.push(format!("{statements} / {trips}"));
        }
        out.join(" · ")
    }

    /// Events per second: `events` pending events drained by `relays` relays, and `events`
    /// one-event transactions committed by 4 writers while one relay runs (from the first commit
    /// until the stream holds them all).
    fn throughput(
        &'static self,
        rt: &tokio::runtime::Runtime,
        js: &jetstream::Context,
    ) -> [f64; 3] {
        const EVENTS: usize = 10_000;
        let stream_name = format!("BENCH_OUTBOX_{}", self.name.to_uppercase());
        let subject = format!("bench_outbox_{}", self.name);
        let stored = |js: jetstream::Context| {
            let name = stream_name.clone();
            async move {
                js.get_stream(&name)
                    .await
                    .unwrap()
                    .info()
                    .await
                    .unwrap()
                    .state
                    .messages
            }
        };
        let fresh_stream = || {
            let (js, name, subject) = (js.clone(), stream_name.clone(), subject.clone());
            async move {
                let _ = js.delete_stream(&name).await;
                js.create_stream(stream::Config {
                    name,
                    subjects: vec![format!("{subject}.>")],
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        };
        let commit = |n: usize, key: usize| {
            let subject = subject.clone();
            async move {
                Transactional::new()
                    .data_source(self.source)
                    .run(async {
                        self.outbox
                            .publish(
                                &format!("{subject}.events"),
                                &format!("k{key}"),
                                format!("{n}").into_bytes(),
                            )
                            .await
                    })
                    .await
                    .unwrap()
            }
        };
        // The events the cost measurement wrote have no stream: not part of this.
        rt.block_on(self.pool.execute(AssertSqlSafe(format!(
            "DELETE FROM {}",
            self.outbox.table()
        ))))
        .unwrap();
        let mut figures = [0.0; 3];
        for (slot, relays) in [(0usize, 1usize), (1, 3)] {
            rt.block_on(async {
                fresh_stream().await;
                for chunk in 0..EVENTS / 100 {
                    Transactional::new()
                        .data_source(self.source)
                        .run(async {
                            for i in 0..100 {
                                let n = chunk * 100 + i;
                                self.outbox
                                    .publish(
                                        &format!("{subject}.events"),
                                        &format!("k{}", n % 50),
                                        format!("{n}").into_bytes(),
                                    )
                                    .await?;
                            }
                            Ok::<_, transactional::Error>(())
                        })
                        .await
                        .unwrap();
                }
                let started = Instant::now();
                let handles: Vec<_> = (0..relays)
                    .map(|_| {
                        self.outbox
                            .relay(self.pool.clone(), JetStream::new(js.clone()))
                            .spawn()
                    })
                    .collect();
                while stored(js.clone()).await < EVENTS as u64 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                figures[slot] = EVENTS as f64 / started.elapsed().as_secs_f64();
                for h in handles {
                    h.shutdown().await;
                }
            });
        }
        rt.block_on(async {
            fresh_stream().await;
            let relay = self
                .outbox
                .relay(self.pool.clone(), JetStream::new(js.clone()))
                .spawn();
            let started = Instant::now();
            let writers = (0..4).map(|w| async move {
                for i in 0..EVENTS / 4 {
                    commit(w * EVENTS + i, w * 10 + i % 10).await;
                }
            });
            futures_util::future::join_all(writers).await;
            while stored(js.clone()).await < EVENTS as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            figures[2] = EVENTS as f64 / started.elapsed().as_secs_f64();
            relay.shutdown().await;
            let _ = js.delete_stream(&stream_name).await;
        });
        figures
    }

    /// One database's line of each table.
    fn measure(
        &'static self,
        c: &mut Criterion,
        rt: &tokio::runtime::Runtime,
        statements: String,
        js: &jetstream::Context,
        md: &mut (String, String),
    ) {
        let [sqlx_us, plain_us, publish_us, vs_plain, vs_sqlx] = self.interleaved(rt);
        eprintln!("outbox.{}: publish {publish_us:.1} us, plain INSERT {plain_us:.1} us, by hand {sqlx_us:.1} us", self.name);
        let mut group = c.benchmark_group(format!("outbox.{}", self.name));
        group.bench_function("sqlx", |t| t.to_async(rt).iter(|| self.write(Side::Sqlx)));
        group.bench_function("plain_insert", |t| {
            t.to_async(rt).iter(|| self.write(Side::PlainInsert))
        });
        group.bench_function("publish", |t| {
            t.to_async(rt).iter(|| self.write(Side::Publish))
        });
        group.finish();
        let _ = writeln!(
            md.0,
            "| {} | {vs_plain:.3} | {vs_sqlx:.3} | {sqlx_us:.1} | {plain_us:.1} | {publish_us:.1} | {statements} |",
            self.name
        );
        let [one, three, end_to_end] = self.throughput(rt, js);
        eprintln!("outbox.{}: drain {one:.0}/s (1 relay), {three:.0}/s (3 relays); end to end {end_to_end:.0}/s", self.name);
        let _ = writeln!(
            md.1,
            "| {} | {one:.0} | {three:.0} | {end_to_end:.0} |",
            self.name
        );
    }
}

const PAYLOAD: &[u8] = br#"{"order":1,"sku":"book","qty":2}"#;

const ROUNDS: usize = 15;
const BLOCK: Duration = Duration::from_millis(100);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn wanted(database: &str) -> bool {
    std::env::var("BENCH_ONLY")
        .map(|only| only.split(',').any(|d| d.trim() == database))
        .unwrap_or(true)
}

async fn pool<DB: Database>(url: &str, max: u32) -> Pool<DB> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(max)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e} (BENCH_ONLY limits the databases)"))
}

fn port_of(url: &str) -> u16 {
    let rest = url.split_once("://").unwrap().1;
    let host = &rest[rest.find('@').map_or(0, |i| i + 1)..];
    let host = &host[..host.find('/').unwrap_or(host.len())];
    host.rsplit_once(':')
        .map_or(5432, |(_, p)| p.parse().unwrap())
}

fn proxied(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let at = rest.find('@').map_or(0, |i| i + 1);
    let host_end = rest[at..].find('/').map_or(rest.len(), |i| at + i);
    let sep = if rest.contains('?') { '&' } else { '?' };
    let tls = if scheme == "postgres" {
        "sslmode=disable"
    } else {
        "ssl-mode=disabled"
    };
    format!(
        "{scheme}://{}127.0.0.1:{port}{}{sep}{tls}",
        &rest[..at],
        &rest[host_end..]
    )
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let js = rt.block_on(async {
        let url = url("TEST_NATS_URL", "nats://127.0.0.1:4222");
        let client = async_nats::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("no NATS server at {url}: {e}"));
        jetstream::new(client)
    });
    let counts = Arc::new(Counts::default());
    let mut md = (String::new(), String::new());
    let dir =
        std::env::temp_dir().join(format!("transactional-bench-outbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    if wanted("sqlite") {
        let sqlite_url = format!("sqlite://{}/bench.db?mode=rwc", dir.display());
        let db = rt.block_on(async {
            Db::new("sqlite", "", pool::<sqlx::Sqlite>(&sqlite_url, 8).await).await
        });
        let db: &'static Db<_> = Box::leak(Box::new(db));
        db.measure(c, &rt, "– (in-process)".into(), &js, &mut md);
    }
    if wanted("postgres") {
        let url = url(
            "TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        );
        server::<sqlx::Postgres>(c, &rt, "postgres", &url, &counts, &js, &mut md);
    }
    if wanted("mysql") {
        let url = url("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test");
        server::<sqlx::MySql>(c, &rt, "mysql", &url, &counts, &js, &mut md);
    }
    let _ = std::fs::remove_dir_all(&dir);
    write_section(&md.0, &md.1);
}

/// A database server: measured on a pool of its own, and counted through the proxy.
fn server<DB>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    url: &str,
    counts: &Arc<Counts>,
    js: &jetstream::Context,
    md: &mut (String, String),
) where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    Pool<DB>: OutboxPool + Clone,
{
    let (db, counted_db) = rt.block_on(async {
        let port = counting_proxy(port_of(url), name == "mysql", counts.clone()).await;
        let proxied_pool = pool::<DB>(&proxied(url, port), 4).await;
        (
            Db::new(name, "", pool::<DB>(url, 20).await).await,
            Db::new(name, "_counted", proxied_pool).await,
        )
    });
    let counted_db: &'static Db<DB> = Box::leak(Box::new(counted_db));
    let statements = counted_db.counted(rt, counts);
    let db: &'static Db<DB> = Box::leak(Box::new(db));
    db.measure(c, rt, statements, js, md);
}

/// Replaces the bench's section at the end of the report (after [`MARKER`]).
fn write_section(cost: &str, throughput: &str) {
    let nats = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let section = format!(
        "{MARKER}\n## Outbox\n\n\
         Measured by `benches/outbox.rs` in the same run ({nats}, JetStream file storage, on \
         this machine; a 2-worker tokio runtime).\n\n\
         **The cost of `publish`**: a transaction that inserts a row and writes its event, three \
         ways, in {ROUNDS} interleaved rounds of ~{} ms blocks per side (medians): by hand with \
         sqlx (BEGIN, INSERT, INSERT into a plain table shaped like the outbox, COMMIT), through \
         a scope with the event as a plain INSERT, and through a scope with `outbox::publish` \
         (the same INSERT plus an after-commit hook that wakes the relays). Statements / round \
         trips per transaction counted by a proxy, in that order.\n\n\
         | database | publish / plain INSERT | publish / sqlx | sqlx µs | plain INSERT µs | publish µs | statements / round trips (sqlx · plain · publish) |\n\
         |---|---|---|---|---|---|---|\n{cost}\n\
         **Events per second to JetStream**: 10,000 pending events (100 per transaction, 50 \
         keys) drained by one relay and by three relays on one table (batches of 100; every \
         message acknowledged by the server before its row is marked); and end to end, 10,000 \
         one-event transactions committed by 4 writers while one relay runs, from the first \
         commit until the stream holds them all.\n\n\
         | database | drain, 1 relay | drain, 3 relays | end to end (commit → stream) |\n\
         |---|---|---|---|\n{throughput}",
        BLOCK.as_millis()
    );
    section::write(MARKER, &section);
}

criterion_group! {
    name = outbox;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = benches
}
criterion_main!(outbox);
