//! Isolation, read-only and a timeout belong to a transaction the scope begins: with a
//! propagation that never begins one, each is a compile error on the offending value.
use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional(propagation = "NEVER", isolation = "SERIALIZABLE")]
async fn never_with_isolation() -> Result<(), AppError> {
    Ok(())
}

#[transactional(propagation = "NOT_SUPPORTED", read_only)]
async fn not_supported_read_only() -> Result<(), AppError> {
    Ok(())
}

#[transactional(propagation = "SUPPORTS", timeout = "5s")]
async fn supports_with_timeout() -> Result<(), AppError> {
    Ok(())
}

#[transactional(send, local)]
async fn both_send_and_local() -> Result<(), AppError> {
    Ok(())
}

fn main() {}
