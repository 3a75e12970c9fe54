use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional(foo = 1)]
async fn unknown() -> Result<(), AppError> {
    Ok(())
}

#[transactional(propogation = "NESTED")]
async fn misspelled() -> Result<(), AppError> {
    Ok(())
}

#[transactional(readOnly)]
async fn camel_case() -> Result<(), AppError> {
    Ok(())
}

#[transactional(rollback_for = AppError::is_fatal)]
async fn spring_rollback_for() -> Result<(), AppError> {
    Ok(())
}

#[transactional(REQUIRES_NEW)]
async fn value_without_key() -> Result<(), AppError> {
    Ok(())
}

fn main() {
    let _ = (
        unknown(),
        misspelled(),
        camel_case(),
        spring_rollback_for(),
        value_without_key(),
    );
}
