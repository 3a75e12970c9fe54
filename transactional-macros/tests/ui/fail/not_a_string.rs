use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional(propagation = REQUIRES_NEW)]
async fn bare_ident() -> Result<(), AppError> {
    Ok(())
}

#[transactional(propagation = transactional::Propagation::Nested)]
async fn enum_path() -> Result<(), AppError> {
    Ok(())
}

#[transactional(isolation = 4)]
async fn integer() -> Result<(), AppError> {
    Ok(())
}

#[transactional(data_source = reporting)]
async fn data_source_ident() -> Result<(), AppError> {
    Ok(())
}

#[transactional(crate = transactional)]
async fn crate_ident() -> Result<(), AppError> {
    Ok(())
}

fn main() {
    let _ = (
        bare_ident(),
        enum_path(),
        integer(),
        data_source_ident(),
        crate_ident(),
    );
}
