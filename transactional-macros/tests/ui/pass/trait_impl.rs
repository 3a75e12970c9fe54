//! `async fn`s in trait impls (native async fn in traits) and in a trait's provided method.
use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

trait OrderRepository {
    async fn save(&self, id: u64) -> Result<u64, AppError>;

    async fn delete(&mut self, id: u64) -> Result<(), AppError>;

    #[transactional(propagation = "MANDATORY")]
    async fn save_all(&self, ids: Vec<u64>) -> Result<usize, AppError> {
        for id in &ids {
            self.save(*id).await?;
        }
        Ok(ids.len())
    }
}

pub(crate) struct Orders;

impl OrderRepository for Orders {
    #[transactional]
    async fn save(&self, id: u64) -> Result<u64, AppError> {
        Ok(id)
    }

    /// Deletes one order.
    #[transactional(propagation = "NESTED", timeout = 3)]
    async fn delete(&mut self, _id: u64) -> Result<(), AppError> {
        Ok(())
    }
}

async fn use_it(orders: &mut Orders) -> Result<(), AppError> {
    orders.save_all(vec![1, 2]).await?;
    orders.delete(1).await
}

fn main() {
    let _ = use_it;
}
