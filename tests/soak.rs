//! Soak with a model: thousands of annotated calls in random trees of all seven propagation
//! modes, some run concurrently inside one transaction, with errors, panics, deadlines, dropped
//! futures and transactions the database ends by itself (a deadlock's victim on MariaDB,
//! `INSERT OR ROLLBACK` on SQLite, a failed statement on PostgreSQL, with branches that go on
//! writing after it) injected at random, on four concurrent tasks sharing a pool of ten. Afterwards the rows equal what the model derives
//! from the outcomes the calls reported, every scope that ran to its end returned what the
//! rules say, the hooks match each transaction's fate, the pool is idle and every connection
//! in it usable and outside any transaction.
//!
//! `SOAK_CALLS` sets the number of annotated calls per database (default 10,000), `SOAK_SEED`
//! the seed (printed with every failure, and by `--nocapture` runs).

#[path = "soak/check.rs"]
mod check;
mod common;
#[path = "soak/model.rs"]
mod model;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use transactional::transactional;

use common::{poll_at_most, AppError, AppResult, Env, Lite, Log, My, Pg, TestDb};
use model::{Call, End, Event, HookFate, Kind, Mode, Outcome, Rng};

const INJECTED_PANIC: &str = "soak: injected panic";
const DEFAULT_SEED: u64 = 0x5EED_2026_1125;

/// Counts of what a run did.
#[derive(Default)]
struct Stats {
    scopes: AtomicUsize,
    errors: AtomicUsize,
    panics: AtomicUsize,
    deadlines: AtomicUsize,
    marks: AtomicUsize,
    /// Transactions the database ended by itself.
    underneath: AtomicUsize,
}

/// One call in flight: its tree, what it recorded, and where it writes.
struct Run<D: TestDb> {
    call: Call,
    log: Mutex<Vec<Event>>,
    hooks: Log,
    table: String,
    stats: Arc<Stats>,
    /// Sessions outside the library: the other side of MySQL's deadlocks.
    helpers: sqlx::Pool<D::DB>,
    _db: PhantomData<D>,
}

impl<D: TestDb> Run<D> {
    fn event(&self, event: Event) {
        self.log.lock().unwrap().push(event);
    }

    fn tag(&self, node: usize) -> String {
        format!("c{}n{}", self.call.index, node)
    }
}

type Scope = Pin<Box<dyn Future<Output = AppResult<()>> + Send>>;

// One annotated fn per propagation mode (and per deadline or isolation the model uses); each
// runs the body its node describes.

#[transactional]
async fn required<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(timeout = "25ms")]
async fn required_deadline<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(propagation = "REQUIRES_NEW")]
async fn requires_new<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(propagation = "REQUIRES_NEW", isolation = "SERIALIZABLE")]
async fn requires_new_serializable<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(propagation = "REQUIRES_NEW", timeout = "25ms")]
async fn requires_new_deadline<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(propagation = "NESTED")]
async fn nested<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(propagation = "NESTED", timeout = "25ms")]
async fn nested_deadline<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(propagation = "SUPPORTS")]
async fn supports<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(propagation = "MANDATORY")]
async fn mandatory<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(propagation = "NOT_SUPPORTED")]
async fn not_supported<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

#[transactional(propagation = "NEVER")]
async fn never<D: TestDb>(run: Arc<Run<D>>, n: usize) -> AppResult<()> {
    body(run, n).await
}

/// Calls scope `n` through the annotated fn of its mode, and records what it returned.
fn call<D: TestDb>(run: Arc<Run<D>>, n: usize) -> Scope {
    Box::pin(async move {
        run.stats.scopes.fetch_add(1, Ordering::Relaxed);
        let node = &run.call.nodes[n];
        let deadline = node.end == End::Timeout;
        let scope: Scope = match node.mode {
            Mode::Required if deadline => Box::pin(required_deadline(run.clone(), n)),
            Mode::Required => Box::pin(required(run.clone(), n)),
            Mode::RequiresNew if deadline => Box::pin(requires_new_deadline(run.clone(), n)),
            Mode::RequiresNew if node.serializable => {
                Box::pin(requires_new_serializable(run.clone(), n))
            }
            Mode::RequiresNew => Box::pin(requires_new(run.clone(), n)),
            Mode::Nested if deadline => Box::pin(nested_deadline(run.clone(), n)),
            Mode::Nested => Box::pin(nested(run.clone(), n)),
            Mode::Supports => Box::pin(supports(run.clone(), n)),
            Mode::Mandatory => Box::pin(mandatory(run.clone(), n)),
            Mode::NotSupported => Box::pin(not_supported(run.clone(), n)),
            Mode::Never => Box::pin(never(run.clone(), n)),
        };
        let result = scope.await;
        run.event(Event::Returned(n, outcome(&result), describe(&result)));
        result
    })
}

/// The body of scope `n`: hooks, a row, the children, and its end.
fn body<D: TestDb>(run: Arc<Run<D>>, n: usize) -> Scope {
    Box::pin(async move {
        let node = run.call.nodes[n].clone();
        run.event(Event::Entered(n));
        if node.hooks {
            run.hooks.record(&run.tag(n)).await;
            if node.before_commit {
                let sql = format!(
                    "INSERT INTO {} (id) VALUES ({})",
                    run.table,
                    run.call.hook_id(n)
                );
                transactional::before_commit(move || async move {
                    let mut conn = transactional::connection::<D::DB>().await?;
                    D::exec(&mut conn, sql).await?;
                    Ok::<_, AppError>(())
                })
                .await?;
            }
            run.event(Event::Hooks(n));
        }
        if node.write {
            let mut conn = transactional::connection::<D::DB>().await?;
            let sql = format!("INSERT INTO {} (id) VALUES ({})", run.table, run.call.id(n));
            D::exec(&mut conn, sql).await?;
            drop(conn);
            run.event(Event::Wrote(n));
        }
        if node.concurrent {
            let children = node.children.iter().map(|&child| call(run.clone(), child));
            let results = futures_util::future::join_all(children).await;
            for (&child, result) in node.children.iter().zip(results) {
                if result.is_err() && run.call.nodes[child].propagate {
                    run.event(Event::BodyDone(n, false));
                    return result;
                }
            }
        } else {
            for &child in &node.children {
                let result = call(run.clone(), child).await;
                if result.is_err() && run.call.nodes[child].propagate {
                    run.event(Event::BodyDone(n, false));
                    return result;
                }
            }
        }
        if node.mark {
            run.stats.marks.fetch_add(1, Ordering::Relaxed);
            transactional::set_rollback_only();
            run.event(Event::Marked(n));
        }
        match node.end {
            End::Ok => {}
            End::Err => {
                run.stats.errors.fetch_add(1, Ordering::Relaxed);
                run.event(Event::BodyDone(n, false));
                return Err(AppError::Boom("injected"));
            }
            End::Panic => {
                run.stats.panics.fetch_add(1, Ordering::Relaxed);
                std::panic::panic_any(INJECTED_PANIC);
            }
            End::Timeout => {
                run.stats.deadlines.fetch_add(1, Ordering::Relaxed);
                let mut conn = transactional::connection::<D::DB>().await?;
                D::exec(&mut conn, D::slow_statement(3)).await?;
            }
            End::Underneath => {
                let ended = end_underneath(&run, n).await;
                if ended.is_err() {
                    run.stats.underneath.fetch_add(1, Ordering::Relaxed);
                    run.event(Event::EndedUnderneath(n));
                }
                run.event(Event::BodyDone(n, false));
                return ended;
            }
        }
        run.event(Event::BodyDone(n, true));
        Ok(())
    })
}

/// Makes the database end the transaction of scope `n` by itself, through the current
/// connection, and returns the error of the statement that did it (`Ok` where the database
/// did not: MySQL picked the other session as the deadlock's victim).
async fn end_underneath<D: TestDb>(run: &Run<D>, n: usize) -> AppResult<()> {
    let table = &run.table;
    let id = run.call.underneath_id(n);
    if D::NAME == "mysql" {
        return deadlock_victim(run, n, id).await;
    }
    let mut conn = transactional::connection::<D::DB>().await?;
    D::exec(&mut conn, format!("INSERT INTO {table} (id) VALUES ({id})")).await?;
    let again = match D::NAME {
        "sqlite" => format!("INSERT OR ROLLBACK INTO {table} (id) VALUES ({id})"),
        _ => format!("INSERT INTO {table} (id) VALUES ({id})"),
    };
    D::exec(&mut conn, again).await?;
    Ok(())
}

/// MySQL: the current transaction locks row `2 key` of the lock table, a helper session
/// (heavier: it has written 40 rows) locks `2 key + 1`; each then asks for the other's, and
/// InnoDB rolls the lighter one back: ours.
async fn deadlock_victim<D: TestDb>(run: &Run<D>, n: usize, key: i64) -> AppResult<()> {
    let locks = format!("{}_lk", run.table);
    let (a, b) = (key * 2, key * 2 + 1);
    let mut other = run.helpers.acquire().await.expect("a helper session");
    // Dropped half-way (the call cut), it is closed, its transaction with it.
    other.close_on_drop();
    let sql = format!("INSERT IGNORE INTO {locks} (id, n) VALUES ({a}, 0), ({b}, 0)");
    D::exec(&mut other, sql).await.unwrap();
    let update = |id: i64| format!("UPDATE {locks} SET n = n + 1 WHERE id = {id}");
    let mut conn = transactional::connection::<D::DB>().await?;
    D::exec(&mut conn, update(a)).await?;
    drop(conn);
    D::exec(&mut other, "START TRANSACTION".into())
        .await
        .unwrap();
    for k in 0..40 {
        let sql = format!(
            "INSERT INTO {locks} (id, n) VALUES ({}, 0)",
            1 << 40 | key << 6 | k
        );
        D::exec(&mut other, sql).await.unwrap();
    }
    D::exec(&mut other, update(b)).await.unwrap();
    run.event(Event::Provoked(n));
    let ours = async {
        let mut conn = transactional::connection::<D::DB>().await?;
        D::exec(&mut conn, update(b)).await?;
        Ok::<_, AppError>(())
    };
    // Whatever its UPDATE answers, the helper lets go of its locks at once: when the
    // transaction was already ended by another scope (our lock on `a` gone), ours would wait
    // for them until the lock wait timeout.
    let theirs = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = D::exec(&mut other, update(a)).await;
        D::exec(&mut other, "ROLLBACK".into()).await.unwrap();
    };
    let (ours, ()) = tokio::join!(ours, theirs);
    ours
}

fn outcome(result: &AppResult<()>) -> Outcome {
    use transactional::Error;
    let kind = match result {
        Ok(()) => return Outcome::Ok,
        Err(AppError::Boom(_)) => Kind::Boom,
        Err(AppError::Tx(e)) => match e {
            Error::UnexpectedRollback => Kind::UnexpectedRollback,
            Error::NoExistingTransaction { .. } => Kind::NoExistingTransaction,
            Error::ExistingTransaction { .. } => Kind::ExistingTransaction,
            Error::RollbackOnlySavepoint { .. } => Kind::RollbackOnlySavepoint,
            e if e.is_outcome_unknown() => Kind::CommitUnknown,
            e if e.is_timeout() => Kind::Timeout,
            _ => Kind::Other,
        },
        Err(AppError::Db(_)) => Kind::Other,
    };
    Outcome::Err(kind)
}

fn describe(result: &AppResult<()>) -> String {
    match result {
        Ok(()) => String::new(),
        Err(e) => e.to_string(),
    }
}

/// Injected panics are expected: keep them out of the test's output.
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if message != Some(INJECTED_PANIC) {
                default(info);
            }
        }));
    });
}

fn seed() -> u64 {
    match std::env::var("SOAK_SEED") {
        Ok(s) => s.parse().expect("SOAK_SEED is a number"),
        Err(_) => DEFAULT_SEED,
    }
}

fn target_scopes() -> usize {
    std::env::var("SOAK_CALLS")
        .ok()
        .map(|s| s.parse().expect("SOAK_CALLS is a number"))
        .unwrap_or(10_000)
}

/// What one call ended as, seen from the task that ran it.
struct Finished<D: TestDb> {
    run: Arc<Run<D>>,
    dropped: bool,
    /// A panic unwinds through `join_all`, dropping the concurrent siblings of its scope
    /// wherever they were.
    panicked: bool,
}

async fn soak<D: TestDb>()
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    quiet_injected_panics();
    // SQLite has one writer: the four calls at a time take turns for its lock. On a loaded
    // machine a turn can take longer than sqlx's 5 s busy timeout; the soak checks the
    // library's rules, not how long SQLite waits, so it waits as long as it takes.
    let setup = D::SINGLE_WRITER.then_some("PRAGMA busy_timeout = 60000");
    let Some(env) = Env::<D>::with_session("soak", 10, Duration::from_secs(10), setup).await else {
        return;
    };
    // One seed for the run; each database's calls are drawn from it differently.
    let base_seed = seed();
    let seed = base_seed ^ D::NAME.len() as u64;
    let mut rng = Rng::new(seed);
    let (mut calls, mut scopes) = (Vec::new(), 0);
    // Scopes after one whose error its parent returns never run: draw a third more.
    while scopes < target_scopes() * 4 / 3 {
        let call = Call::generate(&mut rng, calls.len(), D::SINGLE_WRITER);
        scopes += call.nodes.len();
        calls.push(call);
    }
    let stats = Arc::new(Stats::default());
    let hooks = Log::default();
    let helpers = sqlx::pool::PoolOptions::<D::DB>::new()
        .max_connections(4)
        .connect(&D::url(std::path::Path::new(""), "soak_helpers"))
        .await
        .expect("helper sessions");
    if D::NAME == "mysql" {
        env.observe(format!(
            "CREATE TABLE {}_lk (id BIGINT PRIMARY KEY, n BIGINT)",
            env.table
        ))
        .await;
    }
    let runs: Vec<_> = calls
        .into_iter()
        .map(|call| {
            Arc::new(Run::<D> {
                call,
                log: Mutex::default(),
                hooks: hooks.clone(),
                table: env.table.clone(),
                stats: stats.clone(),
                helpers: helpers.clone(),
                _db: PhantomData,
            })
        })
        .collect();

    // Four tasks, each running the next call on a task of its own (so that a panic ends only
    // that call), dropped after its number of polls.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (next, runs, pool) = (next.clone(), runs.clone(), env.pool.clone());
        workers.push(tokio::spawn(async move {
            let mut finished = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(run) = runs.get(i).cloned() else {
                    return finished;
                };
                let polls = run.call.drop_after.unwrap_or(usize::MAX);
                let task = tokio::spawn(transactional::with_data_source(
                    "default",
                    pool.clone(),
                    poll_at_most(call(run.clone(), 0), polls),
                ));
                let (dropped, panicked) = match task.await {
                    Ok(Ok(Some(_))) => (false, false),
                    Ok(Ok(None)) => (true, false),
                    Ok(Err(e)) => panic!("registering the pool: {e}"),
                    Err(e) if e.is_panic() => {
                        let payload = e.into_panic();
                        let message = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned());
                        assert_eq!(
                            message.as_deref(),
                            Some(INJECTED_PANIC),
                            "call {i} panicked by itself"
                        );
                        (false, true)
                    }
                    Err(e) => panic!("call task: {e}"),
                };
                finished.push(Finished {
                    run,
                    dropped,
                    panicked,
                });
            }
        }));
    }
    let mut finished = Vec::new();
    for worker in workers {
        finished.extend(worker.await.expect("worker"));
    }
    let ran_for = started.elapsed();

    // Cleanup of dropped calls and their hooks goes on in the background: wait for it.
    // (Longer than the runtime gives a cleanup before it closes the connection.)
    let idle_by = Instant::now() + Duration::from_secs(20);
    while !env.pool_is_idle() {
        assert!(
            Instant::now() < idle_by,
            "{}: the pool is not idle after 20 s",
            D::NAME
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Hooks that will run for sure (not those of a rolled-back or cut savepoint).
    let registered: Vec<String> = finished
        .iter()
        .flat_map(|f| {
            let log = f.run.log.lock().unwrap().clone();
            let sure = |n| matches!(model::hook_fate(&f.run.call, &log, n), HookFate::With(_));
            let tags: Vec<String> = log
                .iter()
                .filter_map(|e| match *e {
                    Event::Hooks(n) if sure(n) => Some(f.run.tag(n)),
                    _ => None,
                })
                .collect();
            tags
        })
        .collect();
    env.eventually("every transaction's hooks have run", || async {
        let by_tag = check::by_tag(&hooks);
        registered.iter().all(|tag| {
            by_tag
                .get(tag)
                .is_some_and(|seen| seen.iter().any(|e| e.starts_with("after_completion")))
        })
    })
    .await;

    let report = check::check(&env, &finished, &check::by_tag(&hooks)).await;
    let clean = env.pool_is_clean().await;
    // Still usable: fresh calls commit.
    let after = 64 * runs.len() as i64;
    for id in after..after + 10 {
        let r: AppResult<()> = env
            .run(transactional::Transactional::new().run(env.insert(id)))
            .await;
        r.unwrap_or_else(|e| panic!("{}: a call after the soak fails: {e}", D::NAME));
    }
    let usable = env.ids().await.iter().filter(|&&id| id >= after).count() == 10;

    let dropped = finished.iter().filter(|f| f.dropped).count();
    println!(
        "soak {} (SOAK_SEED={base_seed}): {} call trees, {} annotated calls in {:.1?}; injected: {} errors, \
         {} panics, {} deadlines, {} rollback-only marks, {} ended by the database, {} dropped calls; {} transactions ({} committed, {} rolled \
         back, {} unknown); {} rows checked, {} wrong; {} results predicted, {} wrong; pool \
         clean: {clean}, usable: {usable}",
        D::NAME,
        runs.len(),
        stats.scopes.load(Ordering::Relaxed),
        ran_for,
        stats.errors.load(Ordering::Relaxed),
        stats.panics.load(Ordering::Relaxed),
        stats.deadlines.load(Ordering::Relaxed),
        stats.marks.load(Ordering::Relaxed),
        stats.underneath.load(Ordering::Relaxed),
        dropped,
        report.committed + report.rolled_back + report.unknown,
        report.committed,
        report.rolled_back,
        report.unknown,
        report.rows,
        report.wrong_rows,
        report.predicted,
        report.wrong_results,
    );
    assert!(
        report.failures.is_empty() && clean && usable,
        "{}: soak with SOAK_SEED={} failed (pool clean: {clean}, usable: {usable}); first \
         failures:\n{}",
        D::NAME,
        base_seed,
        report.failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_postgres() {
    soak::<Pg>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mysql() {
    soak::<My>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_sqlite() {
    soak::<Lite>().await;
}
