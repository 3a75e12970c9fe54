//! An error type without `From<transactional::Error>`, or a return type that is not a
//! `Result`, is reported on the fn's return type with one message that says what to do.
use transactional::transactional;

#[derive(Debug)]
pub struct PlainError;

#[transactional]
async fn save(id: u64) -> Result<u64, PlainError> {
    Ok(id)
}

#[transactional(propagation = "NESTED", no_rollback_for = |_| false)]
async fn with_a_rule(id: u64) -> Result<u64, PlainError> {
    Ok(id)
}

fn main() {
    let _ = save(1);
    let _ = with_a_rule(1);
}
