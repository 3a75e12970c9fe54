use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional(timeout = 0)]
async fn zero() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = -5)]
async fn negative() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = 1.5)]
async fn fraction() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = 5u64)]
async fn suffixed() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = 18446744073709551615)]
async fn overflow() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = "0ms")]
async fn zero_string() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = "5")]
async fn no_unit() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = "1h")]
async fn unknown_unit() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = "soon")]
async fn not_a_duration() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout = "99999999999999999999s")]
async fn overflow_string() -> Result<(), AppError> {
    Ok(())
}

#[transactional(timeout)]
async fn missing() -> Result<(), AppError> {
    Ok(())
}

fn main() {
    let _ = (
        zero(),
        negative(),
        fraction(),
        suffixed(),
        overflow(),
        zero_string(),
        no_unit(),
        unknown_unit(),
        not_a_duration(),
        overflow_string(),
        missing(),
    );
}
