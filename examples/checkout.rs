//! The checkout of a small shop:
//! `cargo run -p transactional-service-examples --example checkout`.
//!
//! Embedded SQLite by default (a file in a temporary directory); `DATABASE_URL=postgres://…`
//! or `mysql://…` runs it on a server (its tables are dropped and created again).
//!
//! Inventory, orders, payments and loyalty points are modules of their own, each a repository
//! with no transaction code: they ask for the current connection. One `#[transactional]`
//! service, `checkout`, makes them one unit of work: it reserves the stock (`SELECT … FOR
//! UPDATE` where the database locks rows), creates the order and its lines, adds loyalty
//! points in a `NESTED` scope whose failure is absorbed, and records the payment. Three carts:
//!
//! 1. everything commits, and the confirmation goes out after the commit;
//! 2. the card is declined: everything is rolled back, stock unchanged and no order;
//! 3. a guest earns no points: the `NESTED` step fails and rolls back to its savepoint, and
//!    the order commits without them.
//!
//! It ends by printing the tables.

use std::sync::Mutex;

use sqlx::{Any, AnyPool};
use transactional::transactional;
use transactional_service_examples::db::{self, sql, Backend};

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("only {left} x {sku} left")]
    OutOfStock { sku: String, left: i64 },
    #[error("no product {0}")]
    UnknownProduct(String),
    #[error("the card was declined")]
    PaymentDeclined,
    #[error("{0} is not enrolled in the loyalty programme")]
    NotEnrolled(String),
    #[error(transparent)]
    Tx(#[from] transactional::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub struct Line {
    pub sku: &'static str,
    pub qty: i64,
}

pub struct Cart {
    pub customer: &'static str,
    pub card: &'static str,
    pub lines: Vec<Line>,
}

/// A card number the payment provider declines.
pub const DECLINED_CARD: &str = "4000-0000-0000-0002";

/// The orders whose confirmation went out (after their commit).
pub static CONFIRMED: Mutex<Vec<i64>> = Mutex::new(Vec::new());

pub mod inventory {
    use super::*;

    /// Takes `qty` of `sku` out of stock and returns its unit price.
    pub async fn reserve(sku: &str, qty: i64) -> Result<i64, ShopError> {
        let mut conn = transactional::connection::<Any>().await?;
        let lock = if Backend::of(&conn).locks_rows() {
            " FOR UPDATE"
        } else {
            ""
        };
        let query = format!("SELECT stock, price FROM products WHERE sku = $1{lock}");
        let row: Option<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql(&conn, &query)))
            .bind(sku)
            .fetch_optional(&mut *conn)
            .await?;
        let (stock, price) = row.ok_or_else(|| ShopError::UnknownProduct(sku.to_owned()))?;
        if stock < qty {
            return Err(ShopError::OutOfStock {
                sku: sku.to_owned(),
                left: stock,
            });
        }
        sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "UPDATE products SET stock = stock - $1 WHERE sku = $2",
        )))
        .bind(qty)
        .bind(sku)
        .execute(&mut *conn)
        .await?;
        Ok(price)
    }
}

pub mod orders {
    use super::*;

    pub async fn create(customer: &str) -> Result<i64, ShopError> {
        let mut conn = transactional::connection::<Any>().await?;
        // PostgreSQL and SQLite return the new id; MySQL reports it (and has no RETURNING).
        if Backend::of(&conn) != Backend::MySql {
            let id = sqlx::query_scalar(
                "INSERT INTO orders (customer, total) VALUES ($1, 0) RETURNING id",
            )
            .bind(customer)
            .fetch_one(&mut *conn)
            .await?;
            return Ok(id);
        }
        let done = sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "INSERT INTO orders (customer, total) VALUES ($1, 0)",
        )))
        .bind(customer)
        .execute(&mut *conn)
        .await?;
        Ok(done.last_insert_id().expect("MySQL reports it"))
    }

    pub async fn add_line(order: i64, sku: &str, qty: i64, price: i64) -> Result<(), ShopError> {
        let mut conn = transactional::connection::<Any>().await?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "INSERT INTO order_lines (order_id, sku, qty, price) VALUES ($1, $2, $3, $4)",
        )))
        .bind(order)
        .bind(sku)
        .bind(qty)
        .bind(price)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub async fn set_total(order: i64, total: i64) -> Result<(), ShopError> {
        let mut conn = transactional::connection::<Any>().await?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "UPDATE orders SET total = $1 WHERE id = $2",
        )))
        .bind(total)
        .bind(order)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

pub mod payments {
    use super::*;

    /// Records the payment, then asks the provider, who declines [`DECLINED_CARD`].
    pub async fn charge(order: i64, card: &str, amount: i64) -> Result<(), ShopError> {
        let mut conn = transactional::connection::<Any>().await?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "INSERT INTO payments (order_id, card, amount) VALUES ($1, $2, $3)",
        )))
        .bind(order)
        .bind(card)
        .bind(amount)
        .execute(&mut *conn)
        .await?;
        if card == DECLINED_CARD {
            return Err(ShopError::PaymentDeclined);
        }
        Ok(())
    }
}

pub mod loyalty {
    use super::*;

    /// One point per whole currency unit, for enrolled customers. NESTED: a savepoint, so
    /// that its failure undoes only its own work.
    #[transactional(propagation = "NESTED")]
    pub async fn add_points(customer: &str, points: i64) -> Result<(), ShopError> {
        let mut conn = transactional::connection::<Any>().await?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "INSERT INTO loyalty_events (customer, points) VALUES ($1, $2)",
        )))
        .bind(customer)
        .bind(points)
        .execute(&mut *conn)
        .await?;
        let enrolled = sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "UPDATE loyalty SET points = points + $1 WHERE customer = $2",
        )))
        .bind(points)
        .bind(customer)
        .execute(&mut *conn)
        .await?;
        if enrolled.rows_affected() == 0 {
            return Err(ShopError::NotEnrolled(customer.to_owned()));
        }
        Ok(())
    }
}

/// The unit of work: all of it commits, or none of it.
#[transactional]
pub async fn checkout(cart: &Cart) -> Result<i64, ShopError> {
    let order = orders::create(cart.customer).await?;
    let mut total = 0;
    for line in &cart.lines {
        let price = inventory::reserve(line.sku, line.qty).await?;
        orders::add_line(order, line.sku, line.qty, price).await?;
        total += price * line.qty;
    }
    orders::set_total(order, total).await?;
    // Points are a nice extra: their failure rolls back to the savepoint and the order goes on.
    if let Err(error) = loyalty::add_points(cart.customer, total / 100).await {
        println!("   no loyalty points: {error}");
    }
    payments::charge(order, cart.card, total).await?;
    transactional::after_commit(move || async move {
        println!("   [after_commit] confirmation sent for order {order}");
        CONFIRMED.lock().unwrap().push(order);
    })
    .await;
    Ok(order)
}

/// Creates the tables (dropping old ones) and the products and loyalty members.
pub async fn setup(pool: &AnyPool, backend: Backend) -> Result<(), sqlx::Error> {
    let id = backend.id_column();
    let statements = [
        "DROP TABLE IF EXISTS order_lines".to_owned(),
        "DROP TABLE IF EXISTS payments".to_owned(),
        "DROP TABLE IF EXISTS orders".to_owned(),
        "DROP TABLE IF EXISTS products".to_owned(),
        "DROP TABLE IF EXISTS loyalty_events".to_owned(),
        "DROP TABLE IF EXISTS loyalty".to_owned(),
        "CREATE TABLE products (sku VARCHAR(20) PRIMARY KEY, price BIGINT NOT NULL, \
         stock BIGINT NOT NULL)"
            .to_owned(),
        format!("CREATE TABLE orders (id {id}, customer VARCHAR(50) NOT NULL, total BIGINT NOT NULL)"),
        "CREATE TABLE order_lines (order_id BIGINT NOT NULL, sku VARCHAR(20) NOT NULL, \
         qty BIGINT NOT NULL, price BIGINT NOT NULL)"
            .to_owned(),
        format!(
            "CREATE TABLE payments (id {id}, order_id BIGINT NOT NULL, card VARCHAR(30) NOT NULL, \
             amount BIGINT NOT NULL)"
        ),
        "CREATE TABLE loyalty (customer VARCHAR(50) PRIMARY KEY, points BIGINT NOT NULL)".to_owned(),
        format!("CREATE TABLE loyalty_events (id {id}, customer VARCHAR(50) NOT NULL, points BIGINT NOT NULL)"),
        "INSERT INTO products (sku, price, stock) VALUES ('widget', 1250, 10), ('gadget', 4999, 5)"
            .to_owned(),
        "INSERT INTO loyalty (customer, points) VALUES ('alice', 0), ('bob', 0)".to_owned(),
    ];
    for statement in statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The tables, as text.
pub async fn tables(pool: &AnyPool) -> Result<String, sqlx::Error> {
    let queries = [
        (
            "products",
            "SELECT sku, price, stock FROM products ORDER BY sku",
        ),
        (
            "orders",
            "SELECT id, customer, total FROM orders ORDER BY id",
        ),
        (
            "order_lines",
            "SELECT o.customer, l.sku, l.qty, l.price FROM order_lines l \
             JOIN orders o ON o.id = l.order_id ORDER BY o.id, l.sku",
        ),
        (
            "payments",
            "SELECT o.customer, p.card, p.amount FROM payments p \
             JOIN orders o ON o.id = p.order_id ORDER BY o.id",
        ),
        (
            "loyalty",
            "SELECT customer, points FROM loyalty ORDER BY customer",
        ),
        (
            "loyalty_events",
            "SELECT customer, points FROM loyalty_events ORDER BY id",
        ),
    ];
    let mut out = String::new();
    for (table, query) in queries {
        out.push_str(&format!("{table}:\n"));
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(query))
            .fetch_all(pool)
            .await?;
        if rows.is_empty() {
            out.push_str("  (none)\n");
        }
        for row in rows {
            use sqlx::Row;
            let cells: Vec<String> = (0..row.len())
                .map(|i| {
                    row.try_get::<i64, _>(i)
                        .map(|n| n.to_string())
                        .or_else(|_| row.try_get::<String, _>(i))
                        .unwrap_or_default()
                })
                .collect();
            out.push_str(&format!("  {}\n", cells.join(" | ")));
        }
    }
    Ok(out)
}

/// The three carts, on the database at `url`; returns the tables at the end.
pub async fn run(url: &str) -> Result<String, Box<dyn std::error::Error>> {
    let pool = db::connect(url, 5).await?;
    setup(&pool, Backend::of_url(url)).await?;
    transactional::register_default(pool.clone())?;

    let carts = [
        (
            "1. alice buys 2 widgets and a gadget",
            Cart {
                customer: "alice",
                card: "4242-4242-4242-4242",
                lines: vec![
                    Line {
                        sku: "widget",
                        qty: 2,
                    },
                    Line {
                        sku: "gadget",
                        qty: 1,
                    },
                ],
            },
        ),
        (
            "2. bob buys 3 widgets with a card that is declined",
            Cart {
                customer: "bob",
                card: DECLINED_CARD,
                lines: vec![Line {
                    sku: "widget",
                    qty: 3,
                }],
            },
        ),
        (
            "3. a guest buys a gadget (guests earn no points)",
            Cart {
                customer: "guest",
                card: "5555-5555-5555-4444",
                lines: vec![Line {
                    sku: "gadget",
                    qty: 1,
                }],
            },
        ),
    ];
    for (what, cart) in &carts {
        println!("{what}");
        match checkout(cart).await {
            Ok(order) => println!("   order {order} placed"),
            Err(error) => println!("   checkout failed, nothing kept: {error}"),
        }
    }
    let tables = tables(&pool).await?;
    transactional::deregister(transactional::DEFAULT_DATA_SOURCE);
    Ok(tables)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = db::url_or_sqlite("DATABASE_URL", dir.path(), "shop.db");
    let tables = run(&url).await?;
    println!("\n{tables}");
    Ok(())
}
