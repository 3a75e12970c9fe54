//! A multi-primary MariaDB Galera cluster (docs/SEMANTICS.md, "Clusters"): three nodes at
//! `TEST_GALERA_URLS` (comma-separated; default `mysql://root@127.0.0.1:3311/test`, 3312,
//! 3313; `.ci/galera` starts them), one data source per node. Transfers that collide on
//! different nodes are refused at COMMIT by certification (MariaDB's 1213): `retry` runs them
//! again, and no money is made or lost.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::{MySql, MySqlPool};
use transactional::{Propagation, Transactional};

use common::{AppError, My, TestDb};

const ACCOUNTS: i64 = 4;
const BALANCE: i64 = 1_000;

fn urls() -> Vec<String> {
    match std::env::var("TEST_GALERA_URLS") {
        Ok(urls) => urls.split(',').map(|u| u.trim().to_owned()).collect(),
        Err(_) => (3311..=3313)
            .map(|port| format!("mysql://root@127.0.0.1:{port}/test"))
            .collect(),
    }
}

fn skipped(test: &str) -> bool {
    let skipped = std::env::var("TRANSACTIONAL_TEST_SKIP")
        .is_ok_and(|v| v.split(',').any(|s| s.trim() == "galera"));
    if skipped {
        eprintln!("skipping {test}: TRANSACTIONAL_TEST_SKIP names galera");
    }
    skipped
}

/// The cluster: a pool and a data source per node, and a table of accounts of this test's own.
struct Cluster {
    names: Vec<&'static str>,
    pools: Vec<MySqlPool>,
    table: String,
}

impl Cluster {
    async fn new(test: &str) -> Option<Cluster> {
        if skipped(test) {
            return None;
        }
        let table = format!("galera_{test}_{}", std::process::id());
        let mut pools = Vec::new();
        let mut names = Vec::new();
        for (node, url) in urls().iter().enumerate() {
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(8)
                .connect(url)
                .await
                .unwrap_or_else(|e| {
                    panic!("no Galera node at {url}: {e}; `.ci/galera` starts a cluster")
                });
            let name: &'static str =
                Box::leak(format!("{table}_node{}", node + 1).into_boxed_str());
            transactional::register(name, pool.clone()).unwrap();
            names.push(name);
            pools.push(pool);
        }
        // DDL replicates to every node before it returns (total order isolation).
        let mut conn = pools[0].acquire().await.unwrap();
        My::exec(&mut conn, format!("DROP TABLE IF EXISTS {table}"))
            .await
            .unwrap();
        My::exec(
            &mut conn,
            format!("CREATE TABLE {table} (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)"),
        )
        .await
        .unwrap();
        let rows: Vec<String> = (0..ACCOUNTS)
            .map(|id| format!("({id}, {BALANCE})"))
            .collect();
        My::exec(
            &mut conn,
            format!("INSERT INTO {table} VALUES {}", rows.join(", ")),
        )
        .await
        .unwrap();
        Some(Cluster {
            names,
            pools,
            table,
        })
    }

    /// The balances as node `node` sees them once it has applied everything the cluster
    /// committed before the read.
    async fn balances(&self, node: usize) -> Vec<i64> {
        let sql = format!("SELECT balance FROM {} ORDER BY id", self.table);
        synced_column(&self.pools[node], &sql).await
    }
}

/// The first column of `select` on `pool`'s node once it has applied everything the cluster
/// committed before it (`wsrep_sync_wait = 1`). Sent over the text protocol, in one round trip
/// with the setting: a causal read is a plain `SELECT`, and a prepared statement's execution
/// is not certain to wait.
async fn synced_column(pool: &MySqlPool, select: &str) -> Vec<i64> {
    use sqlx::Row;
    let sql = format!("SET SESSION wsrep_sync_wait = 1; {select}; SET SESSION wsrep_sync_wait = 0");
    let mut conn = pool.acquire().await.unwrap();
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    rows.iter().map(|row| row.get::<i64, _>(0)).collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for name in &self.names {
            transactional::deregister(name);
        }
        let (pool, table) = (self.pools[0].clone(), self.table.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(mut conn) = pool.acquire().await {
                    let _ = My::exec(&mut conn, format!("DROP TABLE IF EXISTS {table}")).await;
                }
            });
        }
    }
}

/// Moves 1 from account `from` to `to` in the current transaction of data source `name`.
async fn transfer(name: &str, table: &str, from: i64, to: i64) -> Result<(), transactional::Error> {
    let mut conn = transactional::data_source(name)
        .connection::<MySql>()
        .await?;
    for (id, delta) in [(from, -1), (to, 1)] {
        My::exec(
            &mut conn,
            format!("UPDATE {table} SET balance = balance + {delta} WHERE id = {id}"),
        )
        .await?;
    }
    Ok(())
}

/// Transfers between a few accounts from three nodes at once: certification refuses the
/// transactions that collided with one committed on another node; with `retry` every transfer
/// goes through, the total is conserved, and every node sees the same balances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_on_three_nodes_are_retried() {
    let Some(cluster) = Cluster::new("transfers").await else {
        return;
    };
    const WORKERS_PER_NODE: usize = 3;
    const TRANSFERS: usize = 60;
    let attempts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (node, name) in cluster.names.iter().copied().enumerate() {
        for worker in 0..WORKERS_PER_NODE {
            let (table, attempts) = (cluster.table.clone(), attempts.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..TRANSFERS {
                    let from = ((node + worker + i) as i64) % ACCOUNTS;
                    let to = (from + 1) % ACCOUNTS;
                    Transactional::new()
                        .data_source(name)
                        .retry(50)
                        .run(|| {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            transfer(name, &table, from, to)
                        })
                        .await
                        .unwrap_or_else(|e| panic!("node {} transfer {i} refused: {e}", node + 1));
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let transfers = (cluster.names.len() * WORKERS_PER_NODE * TRANSFERS) as u64;
    let retried = attempts.load(Ordering::Relaxed) - transfers;
    let status: u64 = cluster
        .names
        .iter()
        .map(|name| transactional::pool_status(name).unwrap().retried)
        .sum();
    eprintln!("{transfers} transfers, {retried} certification retries");
    assert_eq!(status, retried, "pool_status counts the attempts run again");
    assert!(
        retried > 0,
        "transfers on three nodes over {ACCOUNTS} accounts collided at least once"
    );
    let first = cluster.balances(0).await;
    assert_eq!(first.iter().sum::<i64>(), ACCOUNTS * BALANCE, "{first:?}");
    for node in 1..cluster.pools.len() {
        assert_eq!(cluster.balances(node).await, first, "node {}", node + 1);
    }
}

/// Without `retry`, a transfer certification refused is an error that says so
/// (`is_serialization_failure`), and nothing of it is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certification_failure_is_a_refusal_for_a_concurrent_transaction() {
    let Some(cluster) = Cluster::new("refused").await else {
        return;
    };
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for name in cluster.names.iter().copied() {
        let (table, refused) = (cluster.table.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let mut committed = 0;
            for _ in 0..100 {
                let done = Transactional::new()
                    .data_source(name)
                    .run(async {
                        transfer(name, &table, 0, 1).await?;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        Ok::<_, transactional::Error>(())
                    })
                    .await;
                match done {
                    Ok(()) => committed += 1,
                    Err(e) => {
                        assert!(e.is_serialization_failure(), "{e}");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            committed
        }));
    }
    let mut committed = 0;
    for task in tasks {
        committed += task.await.unwrap();
    }
    eprintln!(
        "{committed} committed, {} refused",
        refused.load(Ordering::Relaxed)
    );
    assert!(refused.load(Ordering::Relaxed) > 0, "collisions happened");
    let balances = cluster.balances(1).await;
    assert_eq!(balances[0], BALANCE - committed);
    assert_eq!(balances[1], BALANCE + committed);
}

/// Inserts `id` (as an account with no money) in the current transaction of data source
/// `name`.
async fn open_account(name: &str, table: &str, id: i64) -> Result<(), transactional::Error> {
    let mut conn = transactional::data_source(name)
        .connection::<MySql>()
        .await?;
    My::exec(&mut conn, format!("INSERT INTO {table} VALUES ({id}, 0)")).await?;
    Ok(())
}

/// Savepoints live on the node that runs the transaction: a NESTED scope that fails rolls back
/// to its savepoint there, and the rest of the transaction replicates on commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_rolls_back_to_its_savepoint_on_a_node() {
    let Some(cluster) = Cluster::new("nested").await else {
        return;
    };
    let (name, table) = (cluster.names[0], cluster.table.as_str());
    Transactional::new()
        .data_source(name)
        .run(async {
            open_account(name, table, 100).await?;
            let inner = Transactional::new()
                .data_source(name)
                .propagation(Propagation::Nested)
                .run(async {
                    open_account(name, table, 101).await?;
                    Err::<(), AppError>(AppError::Boom("declined"))
                })
                .await;
            assert!(inner.is_err());
            Ok::<_, transactional::Error>(())
        })
        .await
        .unwrap();
    let select = format!("SELECT id FROM {table} WHERE id >= 100 ORDER BY id");
    let ids = synced_column(&cluster.pools[2], &select).await;
    assert_eq!(ids, [100], "node 3 sees the outer insert only");
}

/// A deadline on a node: the statement running there is cancelled with `KILL QUERY` on the
/// same node, the transaction rolls back, and no other node sees its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_stops_the_statement_on_its_node() {
    let Some(cluster) = Cluster::new("deadline").await else {
        return;
    };
    let (name, table) = (cluster.names[1], cluster.table.as_str());
    let started = std::time::Instant::now();
    let timed_out = Transactional::new()
        .data_source(name)
        .timeout(Duration::from_millis(300))
        .run(async {
            open_account(name, table, 200).await?;
            let mut conn = transactional::data_source(name)
                .connection::<MySql>()
                .await?;
            My::exec(&mut conn, My::slow_statement(10)).await?;
            Ok::<_, transactional::Error>(())
        })
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout(), "{timed_out}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the statement was cancelled, not waited for: {:?}",
        started.elapsed()
    );
    for node in [0, 2] {
        let select = format!("SELECT COUNT(*) FROM {table} WHERE id = 200");
        let rows = synced_column(&cluster.pools[node], &select).await[0];
        assert_eq!(
            rows,
            0,
            "node {} sees no row of the timed-out transaction",
            node + 1
        );
    }
    let status = transactional::pool_status(name).unwrap();
    assert_eq!(status.transactions, 0, "{status}");
}
