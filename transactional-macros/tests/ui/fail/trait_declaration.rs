use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

trait Repository {
    #[transactional]
    async fn save(&self, id: u64) -> Result<u64, AppError>;
}

fn main() {}
