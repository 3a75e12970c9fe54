use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional]
const fn limit() -> Result<u32, AppError> {
    Ok(3)
}

fn main() {
    let _ = limit();
}
