//! A tour of `transactional` on embedded SQLite: `cargo run --example quickstart`.
//!
//! A small shop places orders. `place_order` is the transactional service: the repository fns
//! it calls take no connection parameter, they ask for `transactional::connection()` and get the
//! transaction's. Three orders show:
//!
//! 1. everything commits, and an `after_commit` hook runs only once the commit has happened;
//! 2. a coupon that fails inside a `NESTED` scope is undone by rolling back to its savepoint,
//!    while the order around it commits;
//! 3. running out of stock rolls the whole order back, except the audit entry written by a
//!    `REQUIRES_NEW` scope, which committed on its own.

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::Sqlite;
use transactional::transactional;

/// The application's error type: it takes the library's errors through `From`.
#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Tx(#[from] transactional::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("only {left} x {sku} left in stock")]
    OutOfStock { sku: String, left: i64 },
    #[error("coupon {0} is unknown or used up")]
    InvalidCoupon(String),
}

// ---------------------------------------------------------------------------------------------
// Services: where the transaction boundaries are.
// ---------------------------------------------------------------------------------------------

/// Places an order, all or nothing. `REQUIRED` (the default): begins a transaction, or joins
/// the caller's.
#[transactional]
async fn place_order(
    customer: &str,
    sku: &str,
    qty: i64,
    coupon: Option<&str>,
) -> Result<i64, AppError> {
    // REQUIRES_NEW: the audit entry commits at once, on a connection of its own, and survives
    // if this order rolls back. It comes first because SQLite has one writer at a time: a
    // REQUIRES_NEW scope can write only while the outer transaction has not written yet
    // (otherwise it waits for the outer's lock and fails with "database is locked").
    // PostgreSQL and MySQL have no such constraint.
    audit(&format!("{customer} orders {qty} x {sku}")).await?;

    let id = orders::insert(customer, sku, qty).await?;

    // Hooks attach to the current transaction and run when it is over.
    transactional::after_commit(move || async move {
        println!("   [after_commit] order {id} committed: sending the confirmation e-mail");
    })
    .await;
    transactional::after_rollback(move |cause| async move {
        println!("   [after_rollback] order {id} rolled back ({cause})");
    })
    .await;

    // An Err here rolls back everything this transaction wrote, the order row included.
    inventory::take(sku, qty).await?;

    if let Some(code) = coupon {
        match apply_coupon(id, code).await {
            Ok(percent) => println!("   coupon {code}: {percent}% off"),
            // The coupon's savepoint was rolled back; the order goes on at full price.
            Err(e) => println!("   coupon rejected: {e}; its savepoint was rolled back"),
        }
    }
    Ok(id)
}

/// Redeems a coupon inside a savepoint: if it fails, only its own writes are undone and the
/// caller decides whether to go on.
#[transactional(propagation = "NESTED")]
async fn apply_coupon(order_id: i64, code: &str) -> Result<i64, AppError> {
    coupons::record_redemption(order_id, code).await?;
    // Registered inside the savepoint: discarded if the savepoint rolls back.
    let owned = code.to_owned();
    transactional::after_commit(move || async move {
        println!("   [after_commit] coupon {owned} redeemed on order {order_id}");
    })
    .await;
    let percent = coupons::use_once(code).await?; // Err → ROLLBACK TO SAVEPOINT
    orders::set_discount(order_id, percent).await?;
    Ok(percent)
}

/// Writes an audit entry in a transaction of its own.
#[transactional(propagation = "REQUIRES_NEW")]
async fn audit(message: &str) -> Result<(), AppError> {
    audit_log::insert(message).await
}

// ---------------------------------------------------------------------------------------------
// Repositories: plain sqlx on the current connection, no connection parameter.
// Each takes the connection, runs its statement and drops the guard before returning.
// ---------------------------------------------------------------------------------------------

mod orders {
    use super::*;

    pub async fn insert(customer: &str, sku: &str, qty: i64) -> Result<i64, AppError> {
        let mut conn = transactional::connection::<Sqlite>().await?;
        let done = sqlx::query("INSERT INTO orders (customer, sku, qty) VALUES (?, ?, ?)")
            .bind(customer)
            .bind(sku)
            .bind(qty)
            .execute(&mut *conn)
            .await?;
        Ok(done.last_insert_rowid())
    }

    pub async fn set_discount(id: i64, percent: i64) -> Result<(), AppError> {
        let mut conn = transactional::connection::<Sqlite>().await?;
        sqlx::query("UPDATE orders SET discount_percent = ? WHERE id = ?")
            .bind(percent)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

mod inventory {
    use super::*;

    pub async fn take(sku: &str, qty: i64) -> Result<(), AppError> {
        let mut conn = transactional::connection::<Sqlite>().await?;
        let done =
            sqlx::query("UPDATE products SET stock = stock - ? WHERE sku = ? AND stock >= ?")
                .bind(qty)
                .bind(sku)
                .bind(qty)
                .execute(&mut *conn)
                .await?;
        if done.rows_affected() == 0 {
            let left: i64 = sqlx::query_scalar("SELECT stock FROM products WHERE sku = ?")
                .bind(sku)
                .fetch_one(&mut *conn)
                .await?;
            return Err(AppError::OutOfStock {
                sku: sku.to_owned(),
                left,
            });
        }
        Ok(())
    }
}

mod coupons {
    use super::*;

    pub async fn record_redemption(order_id: i64, code: &str) -> Result<(), AppError> {
        let mut conn = transactional::connection::<Sqlite>().await?;
        sqlx::query("INSERT INTO redemptions (order_id, code) VALUES (?, ?)")
            .bind(order_id)
            .bind(code)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Consumes one use of the coupon and returns its discount.
    pub async fn use_once(code: &str) -> Result<i64, AppError> {
        let mut conn = transactional::connection::<Sqlite>().await?;
        sqlx::query_scalar(
            "UPDATE coupons SET uses_left = uses_left - 1 \
             WHERE code = ? AND uses_left > 0 RETURNING percent_off",
        )
        .bind(code)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| AppError::InvalidCoupon(code.to_owned()))
    }
}

mod audit_log {
    use super::*;

    pub async fn insert(message: &str) -> Result<(), AppError> {
        let mut conn = transactional::connection::<Sqlite>().await?;
        sqlx::query("INSERT INTO audit_log (message) VALUES (?)")
            .bind(message)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

const SCHEMA: &str = "
    CREATE TABLE products (sku TEXT PRIMARY KEY, stock INTEGER NOT NULL);
    CREATE TABLE orders (
        id INTEGER PRIMARY KEY,
        customer TEXT NOT NULL,
        sku TEXT NOT NULL,
        qty INTEGER NOT NULL,
        discount_percent INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE coupons (code TEXT PRIMARY KEY, percent_off INTEGER NOT NULL, uses_left INTEGER NOT NULL);
    CREATE TABLE redemptions (order_id INTEGER NOT NULL, code TEXT NOT NULL);
    CREATE TABLE audit_log (id INTEGER PRIMARY KEY, message TEXT NOT NULL);
    INSERT INTO products VALUES ('widget', 10), ('gadget', 3);
    INSERT INTO coupons VALUES ('WELCOME10', 10, 1);
";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The library reports failed hooks and ignored options through `tracing` (warnings and
    // errors; `RUST_LOG=debug` shows every scope).
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::fmt().with_max_level(level).init();

    // A database file in a temporary directory. Not `sqlite::memory:`: sqlx shares that one
    // database between a pool's connections through SQLite's shared cache, where a write that
    // waits for another connection's transaction waits forever instead of timing out.
    let dir = tempfile::tempdir()?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("shop.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(5)
        .connect_with(options)
        .await?;

    // Once at start-up: the pool every #[transactional] fn uses unless it names another.
    transactional::register_default(pool.clone())?;

    // Outside any transaction, the current connection is a pooled one in autocommit.
    sqlx::raw_sql(SCHEMA)
        .execute(&mut *transactional::connection::<Sqlite>().await?)
        .await?;

    println!("1. alice orders 2 widgets with coupon WELCOME10");
    report(place_order("alice", "widget", 2, Some("WELCOME10")).await);

    println!("\n2. bob orders 1 gadget with coupon WELCOME10, already used up (NESTED)");
    report(place_order("bob", "gadget", 1, Some("WELCOME10")).await);

    println!("\n3. carol orders 50 widgets: out of stock, so the order rolls back");
    report(place_order("carol", "widget", 50, None).await);

    println!("\nfinal state:");
    print_tables(&pool).await?;
    pool.close().await;
    Ok(())
}

fn report(result: Result<i64, AppError>) {
    match result {
        Ok(id) => println!("   => order {id} placed"),
        Err(e) => println!("   => failed: {e}"),
    }
}

async fn print_tables(pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    let orders: Vec<(i64, String, String, i64, i64)> =
        sqlx::query_as("SELECT id, customer, sku, qty, discount_percent FROM orders ORDER BY id")
            .fetch_all(pool)
            .await?;
    println!("   orders (order 3 was rolled back):");
    for (id, customer, sku, qty, discount) in orders {
        println!("     #{id} {customer}: {qty} x {sku}, {discount}% off");
    }

    let stock: Vec<(String, i64)> = sqlx::query_as("SELECT sku, stock FROM products ORDER BY sku")
        .fetch_all(pool)
        .await?;
    let stock: Vec<String> = stock.iter().map(|(s, n)| format!("{s} {n}")).collect();
    println!("   stock: {}", stock.join(", "));

    let redemptions: Vec<(i64, String)> =
        sqlx::query_as("SELECT order_id, code FROM redemptions ORDER BY rowid")
            .fetch_all(pool)
            .await?;
    let redemptions: Vec<String> = redemptions
        .iter()
        .map(|(order, code)| format!("{code} on order {order}"))
        .collect();
    println!("   coupon redemptions: {}", redemptions.join(", "));

    let audit: Vec<String> = sqlx::query_scalar("SELECT message FROM audit_log ORDER BY id")
        .fetch_all(pool)
        .await?;
    println!("   audit log (REQUIRES_NEW: kept for the rolled-back order too):");
    for message in audit {
        println!("     {message}");
    }
    Ok(())
}
