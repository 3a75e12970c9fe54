//! Spring's `@Transactional` for async Rust, over [sqlx](https://docs.rs/sqlx) and tokio.
//!
//! Annotate an async fn with [`#[transactional]`](macro@transactional) and it runs in a
//! transaction: it begins one, joins the caller's, nests a savepoint in it or suspends it, as
//! its propagation says, and commits on `Ok` or rolls back on `Err`, on panic and when its
//! future is dropped. Repository code gets the current connection with [`connection`], without
//! taking it as a parameter: the current transaction travels with the task.
//!
//! ```
//! use transactional::transactional;
//!
//! #[derive(Debug)]
//! enum AppError {
//!     Tx(transactional::Error),
//!     Db(sqlx::Error),
//!     OutOfStock,
//! }
//! impl From<transactional::Error> for AppError {
//!     fn from(e: transactional::Error) -> Self { AppError::Tx(e) }
//! }
//! impl From<sqlx::Error> for AppError {
//!     fn from(e: sqlx::Error) -> Self { AppError::Db(e) }
//! }
//!
//! /// Repository code: no connection parameter.
//! async fn add_line(order: i64, qty: i64) -> Result<(), AppError> {
//!     let mut conn = transactional::connection::<sqlx::Sqlite>().await?;
//!     sqlx::query("INSERT INTO lines (order_id, qty) VALUES (?, ?)")
//!         .bind(order)
//!         .bind(qty)
//!         .execute(&mut *conn)
//!         .await?;
//!     Ok(())
//! }
//!
//! #[transactional]
//! async fn place_order(order: i64, quantities: &[i64]) -> Result<(), AppError> {
//!     for &qty in quantities {
//!         add_line(order, qty).await?;
//!         if qty > 10 {
//!             return Err(AppError::OutOfStock); // every line of this order rolls back
//!         }
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // At start-up: register the pool once.
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE lines (order_id INTEGER, qty INTEGER)").execute(&pool).await?;
//! transactional::register_default(pool.clone())?;
//!
//! place_order(1, &[1, 2]).await.unwrap();
//! assert!(matches!(place_order(2, &[3, 99]).await, Err(AppError::OutOfStock)));
//! let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lines").fetch_one(&pool).await?;
//! assert_eq!(count, 2, "only order 1 was committed");
//! # Ok(()) }
//! ```
//!
//! The rest of the API:
//! - [`Transactional`]: the same without the macro (what the macro expands to).
//! - [`register`], [`data_source`]: several named data sources, PostgreSQL, MySQL/MariaDB and
//!   SQLite side by side, each with its own current transaction.
//! - [`set_rollback_only`], [`is_active`], hooks ([`before_commit`], [`after_commit`],
//!   [`after_rollback`], [`after_completion`]).
//! - [`testing`]: mock transactions out of unit tests, record them, capture hooks, and roll
//!   back after an integration test.
//! - `outbox` (feature `outbox`, `nats` for NATS JetStream): events written in the scope's
//!   transaction and delivered by a relay once it commits, none lost, none doubled.
//! - `sea_orm` (feature `sea-orm`): SeaORM entities and queries on the current transaction.
//! - `web` (feature `axum`): a transaction per HTTP request, with retry.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// Makes an async fn transactional; see the [crate docs](crate) and [`Transactional`].
pub use transactional_macros::transactional;
pub use transactional_runtime::*;
