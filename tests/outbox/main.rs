//! The outbox, end to end: events published in scopes on PostgreSQL, MariaDB/MySQL and SQLite,
//! relayed to a real NATS JetStream server (docs/SEMANTICS.md, "Outbox"). Each test has its own
//! table, outbox table and stream. The server: `TEST_NATS_URL` (default
//! `nats://127.0.0.1:4222`, JetStream on; the broker-down test starts `nats-server` of its
//! own). `TRANSACTIONAL_TEST_SKIP=nats` skips these on a machine without it; CI never does.

#[path = "../common/mod.rs"]
mod common;

mod broker;
mod broker_down;
mod cancellation;
mod crash;
mod relays;
mod shapes;

use std::time::Duration;

use transactional::outbox::{JetStream, Outbox, OutboxPool, Relay};

use crate::broker::Broker;
use crate::common::{Env, TestDb};

/// Whether `TRANSACTIONAL_TEST_SKIP` names `nats` (for a local machine without a NATS
/// server; CI never sets it).
pub fn nats_skipped(test: &str) -> bool {
    let skipped = std::env::var("TRANSACTIONAL_TEST_SKIP")
        .is_ok_and(|v| v.split(',').any(|s| s.trim() == "nats"));
    if skipped {
        eprintln!("skipping {test}: TRANSACTIONAL_TEST_SKIP names nats");
    }
    skipped
}

/// A test's world: its database (`env`), its outbox table and its stream.
pub struct World<D: TestDb> {
    pub env: Env<D>,
    pub outbox: Outbox,
    pub broker: Broker,
}

impl<D: TestDb> World<D>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    sqlx::Pool<D::DB>: OutboxPool,
{
    pub async fn new(test: &str) -> Option<World<D>> {
        if nats_skipped(test) {
            return None;
        }
        let env = Env::<D>::new(test).await?;
        let world = World::on(env, Broker::new(test).await).await;
        Some(world)
    }

    /// `env`'s database, with an outbox table of its own, relaying to `broker`.
    pub async fn on(env: Env<D>, broker: Broker) -> World<D> {
        let outbox = Outbox::with_table(&format!("{}_ob", env.table)).expect("a table name");
        env.observe(format!("DROP TABLE IF EXISTS {}", outbox.table()))
            .await;
        outbox
            .create_schema(&env.pool)
            .await
            .expect("the outbox table");
        World {
            env,
            outbox,
            broker,
        }
    }

    /// A relay of this world's outbox to its stream, polling often.
    pub fn relay(&self) -> Relay<JetStream> {
        self.outbox
            .relay(self.env.pool.clone(), self.broker.sink())
            .poll_interval(Duration::from_millis(50))
            .backoff(Duration::from_millis(20), Duration::from_millis(500))
    }

    pub fn topic(&self) -> String {
        self.broker.topic("events")
    }

    /// Publishes `payload` (with key `key`) in the current scope.
    pub async fn publish(&self, key: &str, payload: &str) -> Result<(), transactional::Error> {
        self.outbox
            .publish(&self.topic(), key, payload.as_bytes().to_vec())
            .await
    }

    /// Pending rows, as the outbox counts them.
    pub async fn pending(&self) -> u64 {
        self.outbox
            .status(&self.env.pool)
            .await
            .expect("status")
            .pending
    }
}

impl<D: TestDb> Drop for World<D> {
    fn drop(&mut self) {
        let observer = self.env.observer.clone();
        let table = self.outbox.table().to_owned();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(mut conn) = observer.acquire().await {
                    let _ = D::exec(&mut conn, format!("DROP TABLE IF EXISTS {table}")).await;
                }
            });
        }
    }
}

/// Declares a test written once for every database, given a [`World`] per database.
#[macro_export]
macro_rules! outbox_test {
    ($(#[$meta:meta])* async fn $name:ident($world:ident: World<D>) $body:block) => {
        $(#[$meta])*
        async fn $name<D: $crate::common::TestDb>()
        where
            for<'c> &'c mut <D::DB as sqlx::Database>::Connection:
                sqlx::Executor<'c, Database = D::DB>,
            sqlx::Pool<D::DB>: transactional::outbox::OutboxPool,
        {
            let Some($world) = $crate::World::<D>::new(stringify!($name)).await else {
                return;
            };
            $body
        }

        $crate::each_database!($name);
    };
}

/// Runs the generic async fn `$name::<D>()` as a test on each database (for tests that set up
/// their world themselves).
#[macro_export]
macro_rules! each_database {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name::<$crate::common::Pg>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$name::<$crate::common::My>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name::<$crate::common::Lite>().await
            }
        }
    };
}
