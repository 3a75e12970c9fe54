use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional("REQUIRES_NEW")]
async fn positional() -> Result<(), AppError> {
    Ok(())
}

#[transactional(read_only timeout = 5)]
async fn missing_comma() -> Result<(), AppError> {
    Ok(())
}

fn main() {
    let _ = (positional(), missing_comma());
}

#[transactional(SERIALIZABLE = true)]
async fn value_as_key() -> Result<(), AppError> {
    Ok(())
}
