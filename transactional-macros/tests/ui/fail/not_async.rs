use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

#[transactional]
fn save() -> Result<(), AppError> {
    Ok(())
}

struct Repo;

impl Repo {
    #[transactional(propagation = "REQUIRES_NEW")]
    pub fn load(&self) -> Result<(), AppError> {
        Ok(())
    }
}

fn main() {
    let _ = save();
    let _ = Repo.load();
}
