//! Generic fns, `where` clauses, `impl Trait` arguments, lifetimes and const generics.
use std::fmt::Debug;

use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

trait Repo {
    async fn insert(&self, row: String) -> Result<u64, AppError>;
}

#[transactional]
pub(crate) async fn save_all<T, R>(repo: &R, items: Vec<T>) -> Result<Vec<u64>, AppError>
where
    T: Debug + Send,
    R: Repo + ?Sized,
{
    let mut ids = Vec::new();
    for item in items {
        ids.push(repo.insert(format!("{item:?}")).await?);
    }
    Ok(ids)
}

#[transactional(isolation = "REPEATABLE_READ")]
pub(crate) async fn with_impl_trait(
    repo: &impl Repo,
    name: impl Into<String>,
    tags: impl IntoIterator<Item = &'static str>,
) -> Result<u64, AppError> {
    let mut row = name.into();
    for tag in tags {
        row.push_str(tag);
    }
    repo.insert(row).await
}

#[transactional]
pub async fn with_lifetimes<'a, 'b: 'a>(
    first: &'a str,
    _second: &'b str,
) -> Result<&'a str, AppError> {
    Ok(first)
}

#[transactional]
pub async fn with_const_generic<const N: usize>(values: [u8; N]) -> Result<usize, AppError> {
    Ok(values.len() + N)
}

pub(crate) struct Service<R> {
    repo: R,
}

impl<R: Repo> Service<R> {
    #[transactional]
    pub async fn register<S>(&self, name: S) -> Result<u64, AppError>
    where
        S: AsRef<str> + Send,
    {
        self.repo.insert(name.as_ref().to_owned()).await
    }
}

fn main() {}
