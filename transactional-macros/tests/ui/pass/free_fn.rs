//! Free fns: every kind of `Result` return type, `?`, early `return`, attributes kept.
use transactional::transactional;

#[derive(Debug)]
pub enum AppError {
    Parse(std::num::ParseIntError),
    Tx(transactional::Error),
}

impl From<transactional::Error> for AppError {
    fn from(e: transactional::Error) -> Self {
        AppError::Tx(e)
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(e: std::num::ParseIntError) -> Self {
        AppError::Parse(e)
    }
}

pub type AppResult<T> = Result<T, AppError>;

mod errors {
    pub type Result<T> = std::result::Result<T, super::AppError>;
}

/// Parses a number in a transaction.
#[must_use = "the parsed number"]
#[transactional]
pub async fn parse(input: &str) -> Result<i64, AppError> {
    if input.is_empty() {
        return Ok(0);
    }
    let n: i64 = input.trim().parse()?;
    Ok(n)
}

#[transactional]
async fn alias(x: u8) -> AppResult<u8> {
    Ok(x)
}

#[transactional]
pub(crate) async fn module_result() -> errors::Result<()> {
    #![allow(unused_variables)]
    let unused = 1;
    Ok(())
}

#[transactional]
async fn std_result() -> std::result::Result<Vec<String>, AppError> {
    Ok(Vec::new())
}

#[transactional]
async fn impl_trait_output() -> Result<impl std::fmt::Display, AppError> {
    Ok(5)
}

#[transactional]
async fn mut_argument(mut items: Vec<i32>, (a, b): (i32, i32)) -> AppResult<Vec<i32>> {
    items.push(a + b);
    Ok(items)
}

#[transactional]
async fn calls_others() -> AppResult<i64> {
    let n = parse("41").await?;
    alias(1).await?;
    module_result().await?;
    std_result().await?;
    impl_trait_output().await?;
    mut_argument(vec![], (1, 2)).await?;
    unsafe { unsafe_fn() }.await?;
    Ok(n + 1)
}

unsafe fn dangerous() -> u8 {
    7
}

/// # Safety
/// None needed; this only checks that the body stays an unsafe context.
#[transactional]
async unsafe fn unsafe_fn() -> AppResult<u8> {
    Ok(dangerous())
}

/// An alias of `Result` is recognised through the type system, whatever its name.
type Short = Result<(), AppError>;

#[transactional]
async fn alias_without_result_in_its_name() -> Short {
    Ok(())
}

fn main() {
    let _ = calls_others();
    let _ = alias_without_result_in_its_name();
}
