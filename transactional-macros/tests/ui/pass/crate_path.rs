//! `crate = "..."`: reaching the runtime through another path.
use transactional::transactional;

mod infrastructure {
    pub use ::transactional as tx;
}

mod renamed {
    pub mod deep {
        pub use ::transactional::*;
    }
}

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional(crate = "::transactional")]
async fn absolute() -> Result<(), AppError> {
    Ok(())
}

#[transactional(crate = "crate::infrastructure::tx", propagation = "NESTED")]
async fn reexported() -> Result<(), AppError> {
    Ok(())
}

#[transactional(crate = "renamed::deep", isolation = "SERIALIZABLE", timeout = "1s")]
async fn glob_reexport() -> Result<(), AppError> {
    Ok(())
}

fn main() {
    let _ = (absolute(), reexported(), glob_reexport());
}
