//! `retry` only on a scope that can begin its transaction, with a count, and plain arguments.
use transactional::transactional;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Tx(#[from] transactional::Error),
}

#[transactional(propagation = "SUPPORTS", retry = 3)]
async fn supports() -> Result<(), AppError> {
    Ok(())
}

#[transactional(propagation = "MANDATORY", retry = 3)]
async fn mandatory() -> Result<(), AppError> {
    Ok(())
}

#[transactional(retry = 0)]
async fn zero() -> Result<(), AppError> {
    Ok(())
}

#[transactional(retry = "3")]
async fn string() -> Result<(), AppError> {
    Ok(())
}

#[transactional(retry = 3)]
async fn pattern((a, b): (i64, i64)) -> Result<i64, AppError> {
    Ok(a + b)
}

#[derive(Debug)]
pub struct PlainError;

impl From<transactional::Error> for PlainError {
    fn from(_: transactional::Error) -> Self {
        PlainError
    }
}

#[transactional(retry = 3)]
async fn not_an_error_type() -> Result<(), PlainError> {
    Ok(())
}

fn main() {}
