//! Methods with every receiver, and `Self` inside the body.
use transactional::transactional;

#[derive(Debug)]
pub struct AppError;

impl From<transactional::Error> for AppError {
    fn from(_: transactional::Error) -> Self {
        AppError
    }
}

pub struct Account {
    balance: i64,
}

impl Account {
    #[transactional(read_only)]
    pub async fn balance(&self) -> Result<i64, AppError> {
        Ok(self.balance)
    }

    #[transactional]
    pub async fn deposit(&mut self, amount: i64) -> Result<i64, AppError> {
        self.balance += amount;
        Ok(self.balance)
    }

    #[transactional]
    pub async fn close(self) -> Result<i64, AppError> {
        let Self { balance } = self;
        Ok(balance)
    }

    #[transactional]
    pub async fn boxed(self: Box<Self>) -> Result<Self, AppError> {
        Ok(*self)
    }

    #[transactional]
    pub async fn open(balance: i64) -> Result<Self, AppError> {
        Ok(Self { balance })
    }

    #[transactional(propagation = "REQUIRES_NEW")]
    pub async fn borrowed<'a>(&'a self, label: &'a str) -> Result<&'a str, AppError> {
        let _ = self.balance;
        Ok(label)
    }
}

async fn use_them() -> Result<(), AppError> {
    let mut account = Account::open(1).await?;
    account.balance().await?;
    account.deposit(2).await?;
    account.borrowed("x").await?;
    let account = Box::new(account).boxed().await?;
    account.close().await?;
    Ok(())
}

fn main() {
    let _ = use_them();
}
