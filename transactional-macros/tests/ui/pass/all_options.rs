//! Every option and every spelling of their values.
use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

type TxResult = Result<(), AppError>;

#[transactional(
    propagation = "REQUIRES_NEW",
    isolation = "SERIALIZABLE",
    read_only = true,
    timeout = 30,
    data_source = "reporting",
    no_rollback_for = |_e: &AppError| false,
    crate = "::transactional",
)]
async fn everything() -> TxResult {
    Ok(())
}

#[transactional()]
async fn empty_parentheses() -> TxResult {
    Ok(())
}

#[transactional(propagation = "REQUIRED")]
async fn required() -> TxResult {
    Ok(())
}

#[transactional(propagation = "NESTED")]
async fn nested() -> TxResult {
    Ok(())
}

#[transactional(propagation = "SUPPORTS")]
async fn supports() -> TxResult {
    Ok(())
}

#[transactional(propagation = "NOT_SUPPORTED")]
async fn not_supported() -> TxResult {
    Ok(())
}

#[transactional(propagation = "MANDATORY")]
async fn mandatory() -> TxResult {
    Ok(())
}

#[transactional(propagation = "NEVER")]
async fn never() -> TxResult {
    Ok(())
}

#[transactional(isolation = "DEFAULT")]
async fn default_isolation() -> TxResult {
    Ok(())
}

#[transactional(isolation = "READ_UNCOMMITTED")]
async fn read_uncommitted() -> TxResult {
    Ok(())
}

#[transactional(isolation = "READ_COMMITTED", read_only)]
async fn read_committed() -> TxResult {
    Ok(())
}

#[transactional(isolation = "REPEATABLE_READ", read_only = false)]
async fn repeatable_read() -> TxResult {
    Ok(())
}

#[transactional(timeout = "250ms")]
async fn millis() -> TxResult {
    Ok(())
}

#[transactional(timeout = "5s")]
async fn seconds() -> TxResult {
    Ok(())
}

#[transactional(timeout = "2m", data_source = "archive")]
async fn minutes() -> TxResult {
    Ok(())
}

macro_rules! scoped {
    ($name:ident, $propagation:literal, $timeout:expr) => {
        #[transactional(propagation = $propagation, timeout = $timeout)]
        async fn $name() -> TxResult {
            Ok(())
        }
    };
}

scoped!(from_a_macro, "REQUIRES_NEW", 10);

async fn all() -> TxResult {
    everything().await?;
    empty_parentheses().await?;
    required().await?;
    nested().await?;
    supports().await?;
    not_supported().await?;
    mandatory().await?;
    never().await?;
    default_isolation().await?;
    read_uncommitted().await?;
    read_committed().await?;
    repeatable_read().await?;
    millis().await?;
    seconds().await?;
    minutes().await?;
    from_a_macro().await
}

fn main() {
    let _ = all();
}
