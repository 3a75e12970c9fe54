//! The transactional outbox, on embedded SQLite and a local NATS server with JetStream:
//! `cargo run -p transactional-examples --features outbox --example outbox`
//! (start the server first: `nats-server -js`; `NATS_URL` names another one).
//!
//! `place_order` writes the order and its `OrderPlaced` event in one transaction: the event is
//! a row of the outbox table, so it exists if and only if the order does. A relay delivers
//! committed events to the stream `ORDERS`, each once (JetStream drops a re-send by its
//! `Nats-Msg-Id`), in order per order id. The second order fails: neither it nor its event is
//! ever seen.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use transactional::outbox::{self, JetStream, Outbox};
use transactional::transactional;

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Tx(#[from] transactional::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("only {0} left in stock")]
    OutOfStock(i64),
}

/// The event other services consume.
#[derive(Serialize)]
struct OrderPlaced<'a> {
    order: i64,
    sku: &'a str,
    qty: i64,
}

/// The order and its event commit together, or neither does.
#[transactional]
async fn place_order(sku: &str, qty: i64) -> Result<i64, AppError> {
    let mut conn = transactional::connection::<sqlx::Sqlite>().await?;
    let order: i64 = sqlx::query_scalar("INSERT INTO orders (sku, qty) VALUES (?, ?) RETURNING id")
        .bind(sku)
        .bind(qty)
        .fetch_one(&mut *conn)
        .await?;
    drop(conn);
    let event = OrderPlaced { order, sku, qty };
    outbox::publish_json("orders.placed", &format!("order-{order}"), &event).await?;
    if qty > 10 {
        return Err(AppError::OutOfStock(10)); // the order and its event roll back together
    }
    Ok(order)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("shop.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new().connect_with(options).await?;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, sku TEXT, qty INTEGER)")
        .execute(&pool)
        .await?;
    transactional::register_default(pool.clone())?;
    // The outbox table (or copy its statements into a migration).
    Outbox::new().create_schema(&pool).await?;

    // The broker: a stream that captures the events' subjects.
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let nats = async_nats::connect(&url)
        .await
        .map_err(|e| format!("no NATS server at {url} ({e}): start one with `nats-server -js`"))?;
    let js = jetstream::new(nats);
    let name = "ORDERS_EXAMPLE";
    let _ = js.delete_stream(name).await; // left by an earlier run that stopped half-way
    let events = js
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec!["orders.>".into()],
            ..Default::default()
        })
        .await?;

    // One relay per application instance; commits wake it at once.
    let relay = Outbox::new()
        .relay(pool.clone(), JetStream::new(js.clone()))
        .spawn();

    println!("1. an order that commits");
    let order = place_order("book", 2).await?;
    println!("   order {order} committed, with its OrderPlaced event");
    println!("2. an order that fails");
    match place_order("lamp", 99).await {
        Err(e) => println!("   rolled back ({e}): no order, no event"),
        Ok(id) => return Err(format!("order {id} should have failed").into()),
    }

    // What consumers see: exactly the committed order's event.
    let consumer = events
        .create_consumer(pull::OrderedConfig::default())
        .await?;
    let mut messages = consumer.messages().await?;
    let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await?
        .ok_or("the stream ended")??;
    let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
    println!(
        "3. the stream received {} (Nats-Msg-Id {}): {}",
        message.subject,
        id.map_or("-", |v| v.as_str()),
        String::from_utf8_lossy(&message.payload)
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), messages.next())
            .await
            .is_err(),
        "nothing of the failed order reaches the stream"
    );
    let status = relay.status().await?;
    println!(
        "   outbox: {} pending, relay: {:?}",
        status.pending,
        relay.stats()
    );

    relay.shutdown().await;
    js.delete_stream(name).await?;
    Ok(())
}
