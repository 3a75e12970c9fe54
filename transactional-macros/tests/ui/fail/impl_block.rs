use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

pub struct Service;

// A mistake in the block's options is reported once, on its token.
#[transactional(isolation = "SERIALISABLE")]
impl Service {
    pub async fn a(&self) -> Result<(), AppError> {
        Ok(())
    }
    pub async fn b(&self) -> Result<(), AppError> {
        Ok(())
    }
}

pub struct Other;

#[transactional]
impl Other {
    // `skip` stands alone.
    #[transactional(skip, timeout = 5)]
    pub async fn mixed(&self) -> Result<(), AppError> {
        Ok(())
    }

    // Twice on one method.
    #[transactional(read_only)]
    #[transactional(timeout = 5)]
    pub async fn twice(&self) -> Result<(), AppError> {
        Ok(())
    }

    // An async fn of the block that cannot report a transaction's failure: skip it.
    pub async fn no_result(&self) {}
}

// `skip` outside an annotated impl block does nothing.
#[transactional(skip)]
async fn alone() -> Result<(), AppError> {
    Ok(())
}

fn main() {}
