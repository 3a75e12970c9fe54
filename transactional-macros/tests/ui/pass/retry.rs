//! `retry`: free fns, `&self` methods, generic fns, with `no_rollback_for`; arguments of any
//! `Clone` type, `mut` ones included, are cloned for each attempt; the error types services
//! write: a `thiserror` enum, `anyhow::Error`, `Box<dyn Error + Send + Sync>`, `Box<dyn Error>`,
//! and one that says itself whether it is worth another attempt (`RetryableError`).
use std::sync::Arc;

use transactional::transactional;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Tx(#[from] transactional::Error),
    #[error("not found")]
    NotFound,
}

#[derive(Clone)]
pub struct NewOrder {
    pub items: Vec<String>,
}

#[transactional(isolation = "SERIALIZABLE", retry = 3)]
async fn place(order: NewOrder, mut attempts_left: u32, note: &str) -> Result<usize, AppError> {
    attempts_left = attempts_left.saturating_sub(1);
    let _ = (attempts_left, note);
    Ok(order.items.len()) // consumes its own clone
}

#[transactional(retry = 2, propagation = "REQUIRES_NEW", no_rollback_for = |e| matches!(e, AppError::NotFound))]
async fn with_rule(id: i64) -> Result<i64, AppError> {
    Ok(id)
}

#[transactional(retry = 1)]
async fn generic<T: Clone + Send + Sync + 'static>(value: T) -> Result<T, AppError> {
    Ok(value)
}

struct Service {
    name: Arc<str>,
}

impl Service {
    #[transactional(retry = 5)]
    async fn run(&self, times: u8) -> Result<String, AppError> {
        Ok(format!("{} x{times}", self.name))
    }
}

#[transactional(retry = 3)]
async fn with_anyhow(id: i64) -> anyhow::Result<i64> {
    Ok(id)
}

#[transactional(retry = 3)]
async fn boxed(id: i64) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    Ok(id)
}

#[transactional(retry = 3)]
async fn boxed_local(id: i64) -> Result<i64, Box<dyn std::error::Error>> {
    Ok(id)
}

#[derive(Debug)]
pub enum Attempted {
    Conflict,
    Tx(transactional::Error),
}

impl From<transactional::Error> for Attempted {
    fn from(error: transactional::Error) -> Self {
        Attempted::Tx(error)
    }
}

impl transactional::RetryableError for Attempted {
    fn is_retryable(&self) -> bool {
        matches!(self, Attempted::Conflict)
    }
}

#[transactional(retry = 3)]
async fn says_itself() -> Result<(), Attempted> {
    Ok(())
}

fn assert_send<T: Send>(_: &T) {}

fn main() {
    let order = NewOrder { items: vec![] };
    assert_send(&place(order, 3, "note"));
    assert_send(&with_rule(1));
    let service = Service { name: "s".into() };
    let _ = service.run(1);
    let _ = generic(1u8);
    assert_send(&with_anyhow(1));
    assert_send(&boxed(1));
    let _ = boxed_local(1);
    assert_send(&says_itself());
}
