//! `no_rollback_for` with a path to a fn, a method path and closures.
use transactional::transactional;

#[derive(Debug)]
pub enum AppError {
    NotFound,
    Validation(String),
    Tx(transactional::Error),
}

impl From<transactional::Error> for AppError {
    fn from(e: transactional::Error) -> Self {
        AppError::Tx(e)
    }
}

impl AppError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, AppError::NotFound)
    }
}

fn benign(e: &AppError) -> bool {
    matches!(e, AppError::NotFound | AppError::Validation(_))
}

mod policy {
    pub fn never(_: &super::AppError) -> bool {
        false
    }
}

#[transactional(no_rollback_for = benign)]
async fn with_fn() -> Result<(), AppError> {
    Err(AppError::NotFound)
}

#[transactional(no_rollback_for = policy::never, propagation = "REQUIRES_NEW")]
async fn with_module_fn() -> Result<(), AppError> {
    Ok(())
}

#[transactional(no_rollback_for = AppError::is_not_found)]
async fn with_method() -> Result<(), AppError> {
    Err(AppError::NotFound)
}

#[transactional(no_rollback_for = |e: &AppError| matches!(e, AppError::Validation(_)))]
async fn with_typed_closure(input: String) -> Result<String, AppError> {
    if input.is_empty() {
        return Err(AppError::Validation("empty".into()));
    }
    Ok(input)
}

#[transactional(no_rollback_for = |e| e.is_not_found(), timeout = 1)]
async fn with_untyped_closure(id: u32) -> Result<u32, AppError> {
    Ok(id)
}

pub struct Service {
    lenient: bool,
}

impl Service {
    #[transactional(no_rollback_for = move |_: &AppError| true)]
    pub async fn with_move_closure(&self) -> Result<bool, AppError> {
        Ok(self.lenient)
    }
}

async fn all() -> Result<(), AppError> {
    with_fn().await?;
    with_module_fn().await?;
    with_method().await?;
    with_typed_closure("x".into()).await?;
    with_untyped_closure(1).await?;
    Service { lenient: true }.with_move_closure().await?;
    Ok(())
}

fn main() {
    let _ = all();
}
