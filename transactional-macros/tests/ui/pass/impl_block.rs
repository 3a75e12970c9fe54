//! `#[transactional]` on impl blocks: every async fn, a method's own attribute replacing the
//! block's, `skip`, non-async fns and other items left alone, trait impls, generics.
use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

pub struct OrderService {
    pub fee: i64,
}

#[transactional(isolation = "SERIALIZABLE", timeout = 5)]
impl OrderService {
    /// Not async: left as written.
    pub const LIMIT: usize = 3;

    pub fn new() -> Self {
        OrderService { fee: 1 }
    }

    pub async fn place(&self, cents: i64) -> Result<i64, AppError> {
        Ok(cents + self.fee)
    }

    #[transactional(propagation = "REQUIRES_NEW")]
    pub async fn audit(&self) -> Result<(), AppError> {
        Ok(())
    }

    #[transactional(skip)]
    pub async fn describe(&self) -> String {
        format!("fee {}", self.fee)
    }

    pub async fn consume(self) -> Result<i64, AppError> {
        Ok(self.fee)
    }
}

pub trait Repository {
    fn save(&self, id: i64) -> impl std::future::Future<Output = Result<(), AppError>> + Send;
}

pub struct PgRepository;

#[transactional(propagation = "MANDATORY")]
impl Repository for PgRepository {
    async fn save(&self, _id: i64) -> Result<(), AppError> {
        Ok(())
    }
}

pub struct Cache<T>(pub T);

#[transactional::transactional(read_only)]
impl<T: Clone + Send + Sync> Cache<T> {
    pub async fn get(&self) -> Result<T, AppError> {
        Ok(self.0.clone())
    }
}

fn main() {}
