//! Helpers of the hook tests: a panicking fn, inserts through a named data source, statements
//! on the observer connection, and a capture of what `tracing` writes.

use std::sync::{Arc, Mutex};

use super::{AppResult, Env, TestDb};

/// Panics with `message` (a function, so that the code after a call is not unreachable).
pub fn panics(message: &'static str) {
    panic!("{message}");
}

/// Inserts `id` into `table` through the current connection of `data_source`.
pub async fn insert_on<D: TestDb>(data_source: &str, table: &str, id: i64) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let mut conn = transactional::data_source(data_source)
        .connection::<D::DB>()
        .await?;
    D::exec(&mut conn, format!("INSERT INTO {table} (id) VALUES ({id})")).await?;
    Ok(())
}

/// Runs a statement on the observer connection.
pub async fn observe<D: TestDb>(env: &Env<D>, sql: String)
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let mut conn = env.observer.acquire().await.expect("observer");
    D::exec(&mut conn, sql).await.expect("observer statement");
}

/// Everything `tracing` writes while a subscriber made by [`Capture::subscribe`] is the
/// thread's default.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// Makes a subscriber writing here the default of this thread until the guard is dropped.
    /// (A `#[tokio::test]` body, and hooks run by the scope it awaits, run on the test thread.)
    pub fn subscribe(&self) -> impl Drop {
        use tracing_subscriber::util::SubscriberInitExt;
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish()
            .set_default()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
