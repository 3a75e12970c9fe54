use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional(read_only = "yes")]
async fn read_only_string() -> Result<(), AppError> {
    Ok(())
}

#[transactional(data_source = "")]
async fn empty_data_source() -> Result<(), AppError> {
    Ok(())
}

#[transactional(no_rollback_for = "NotFound")]
async fn predicate_literal() -> Result<(), AppError> {
    Ok(())
}

#[transactional(crate = "not a path")]
async fn crate_not_a_path() -> Result<(), AppError> {
    Ok(())
}

#[transactional(propagation)]
async fn propagation_without_value() -> Result<(), AppError> {
    Ok(())
}

fn main() {
    let _ = (
        read_only_string(),
        empty_data_source(),
        predicate_literal(),
        crate_not_a_path(),
        propagation_without_value(),
    );
}
