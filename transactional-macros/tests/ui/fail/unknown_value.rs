use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional(propagation = "REQUIRE_NEW")]
async fn close_misspelling() -> Result<(), AppError> {
    Ok(())
}

#[transactional(propagation = "required")]
async fn lower_case() -> Result<(), AppError> {
    Ok(())
}

#[transactional(propagation = "AUTO")]
async fn nothing_close() -> Result<(), AppError> {
    Ok(())
}

#[transactional(isolation = "SERIALISABLE")]
async fn isolation_misspelling() -> Result<(), AppError> {
    Ok(())
}

#[transactional(isolation = "SNAPSHOT")]
async fn isolation_unknown() -> Result<(), AppError> {
    Ok(())
}

fn main() {
    let _ = (
        close_misspelling(),
        lower_case(),
        nothing_close(),
        isolation_misspelling(),
        isolation_unknown(),
    );
}
