//! An error type without `From<transactional::Error>` is reported on the fn's return type.
//!
//! This uses a stand-in for the runtime (`crate = "crate::runtime"`) with the same `run`
//! bounds as the real one, so that this file's expected output does not change with the
//! runtime's source.
use transactional::transactional;

mod runtime {
    use std::future::Future;

    pub struct Error;

    pub struct Transactional;

    impl Transactional {
        pub fn new() -> Self {
            Transactional
        }

        pub fn name(self, _: &'static str) -> Self {
            self
        }

        pub async fn run<F, T, E>(self, body: F) -> Result<T, E>
        where
            F: Future<Output = Result<T, E>>,
            E: From<Error>,
        {
            body.await
        }
    }
}

#[derive(Debug)]
pub struct PlainError;

#[transactional(crate = "crate::runtime")]
async fn save(id: u64) -> Result<u64, PlainError> {
    Ok(id)
}

fn main() {
    let _ = save(1);
}
