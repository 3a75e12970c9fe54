use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional(propagation = "NESTED", read_only, propagation = "NEVER")]
async fn twice() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = 5, timeout = "5s")]
async fn same_value_twice() -> Result<(), AppError> {
    Ok(())
}

fn main() {
    let _ = (twice(), same_value_twice());
}
