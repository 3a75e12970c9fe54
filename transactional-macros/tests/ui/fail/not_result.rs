use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional]
async fn unit() -> () {}

#[transactional]
async fn tuple() -> (u64, AppError) {
    (1, AppError)
}

#[transactional]
async fn reference() -> &'static str {
    "saved"
}

#[transactional]
async fn option() -> Option<u64> {
    Some(1)
}

#[transactional]
async fn plain() -> u64 {
    1
}

#[transactional]
async fn boxed() -> Box<dyn std::error::Error> {
    "no".into()
}

fn main() {
    let _ = (unit(), tuple(), reference(), option(), plain(), boxed());
}
