//! A todo service on axum, one transaction per request:
//! `cargo run -p transactional-service-examples --example web`.
//!
//! Serves `http://127.0.0.1:3000` (`PORT` changes it) on embedded SQLite files in a temporary
//! directory; `DATABASE_URL=postgres://…` or `mysql://…` puts the todos on a server, and
//! `AUDIT_DATABASE_URL` the audit log. With `--smoke` it serves on a free port, sends itself
//! a few requests, prints them and exits.
//!
//! - `POST /todos` `{"title": …}` → `201` and the todo; a title that exists → `409`, nothing
//!   written. Every attempt is recorded in the audit log, a second data source, by a
//!   `REQUIRES_NEW` scope: the record stays when the request's transaction rolls back.
//! - `GET /todos` → the todos, in a read-only transaction.
//! - `DELETE /todos/{id}` → `204`, or `404`.
//! - `GET /audit` → the audit log; `GET /health` → each data source's pool status.
//!
//! The handlers and repositories contain no transaction code: `TransactionLayer` gives each
//! request its transaction, committed on a success status and rolled back on an error status,
//! a panic, or a client that goes away.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use transactional::web::TransactionLayer;
use transactional_service_examples::db::{self, Backend};

/// What a request can fail with, and the answer each failure gets.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("a todo titled {0:?} exists")]
    Duplicate(String),
    #[error("no todo {0}")]
    NotFound(i64),
    #[error(transparent)]
    Tx(#[from] transactional::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Duplicate(_) => (StatusCode::CONFLICT, self.to_string()).into_response(),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, self.to_string()).into_response(),
            // The library's own answer: 503, 504, 409 or 500, with nothing of the insides.
            AppError::Tx(error) => error.into_response(),
            AppError::Db(error) => transactional::Error::from(error).into_response(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    pub id: i64,
    pub title: String,
}

#[derive(Debug, Deserialize)]
pub struct NewTodo {
    pub title: String,
}

/// The todos, on the default data source. No transaction code: these run in the request's.
pub mod todos {
    use super::{AppError, Todo};
    use sqlx::Any;
    use transactional_service_examples::db::sql;

    pub async fn insert(title: &str) -> Result<Todo, AppError> {
        let mut conn = transactional::connection::<Any>().await?;
        let inserted = sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "INSERT INTO todos (title) VALUES ($1)",
        )))
        .bind(title)
        .execute(&mut *conn)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(AppError::Duplicate(title.to_owned()))
            }
            other => other?,
        };
        let id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql(
            &conn,
            "SELECT id FROM todos WHERE title = $1",
        )))
        .bind(title)
        .fetch_one(&mut *conn)
        .await?;
        Ok(Todo {
            id,
            title: title.to_owned(),
        })
    }

    pub async fn list() -> Result<Vec<Todo>, AppError> {
        let mut conn = transactional::connection::<Any>().await?;
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, title FROM todos ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, title)| Todo { id, title })
            .collect())
    }

    /// Whether a todo was deleted.
    pub async fn delete(id: i64) -> Result<bool, AppError> {
        let mut conn = transactional::connection::<Any>().await?;
        let done = sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "DELETE FROM todos WHERE id = $1",
        )))
        .bind(id)
        .execute(&mut *conn)
        .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// The audit log, on a data source of its own.
pub mod audit {
    use super::AppError;
    use sqlx::Any;
    use transactional::transactional;
    use transactional_service_examples::db::sql;

    /// Commits at once, on its own transaction: the record stays whatever the request's
    /// transaction does.
    #[transactional(data_source = "audit", propagation = "REQUIRES_NEW")]
    pub async fn record(action: String) -> Result<(), AppError> {
        let mut conn = transactional::data_source("audit")
            .connection::<Any>()
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(sql(
            &conn,
            "INSERT INTO audit_log (action) VALUES ($1)",
        )))
        .bind(action)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub async fn entries() -> Result<Vec<String>, AppError> {
        let mut conn = transactional::data_source("audit")
            .connection::<Any>()
            .await?;
        Ok(
            sqlx::query_scalar("SELECT action FROM audit_log ORDER BY id")
                .fetch_all(&mut *conn)
                .await?,
        )
    }
}

async fn create_todo(Json(new): Json<NewTodo>) -> Result<(StatusCode, Json<Todo>), AppError> {
    audit::record(format!("create {:?}", new.title)).await?;
    let todo = todos::insert(&new.title).await?;
    let id = todo.id;
    transactional::after_commit(move || async move {
        tracing::info!(id, "todo created");
    })
    .await;
    Ok((StatusCode::CREATED, Json(todo)))
}

async fn list_todos() -> Result<Json<Vec<Todo>>, AppError> {
    Ok(Json(todos::list().await?))
}

async fn delete_todo(Path(id): Path<i64>) -> Result<StatusCode, AppError> {
    audit::record(format!("delete {id}")).await?;
    match todos::delete(id).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(AppError::NotFound(id)),
    }
}

async fn list_audit() -> Result<Json<Vec<String>>, AppError> {
    Ok(Json(audit::entries().await?))
}

/// Each data source's pool, as `transactional::pool_status` sees it.
pub async fn health() -> Response {
    let mut sources = Vec::new();
    for name in ["default", "audit"] {
        match transactional::pool_status(name) {
            Ok(s) => sources.push(serde_json::json!({
                "data_source": s.data_source,
                "database": s.database,
                "size": s.size,
                "max_size": s.max_size,
                "idle": s.idle,
                "in_use": s.in_use,
                "transactions": s.transactions,
                "waiting": s.waiting,
            })),
            Err(error) => return error.into_response(),
        }
    }
    Json(serde_json::json!({ "status": "ok", "data_sources": sources })).into_response()
}

/// The routes, without the transaction layer.
pub fn routes() -> Router {
    Router::new()
        .route("/todos", get(list_todos).post(create_todo))
        .route("/todos/{id}", delete(delete_todo))
        .route("/audit", get(list_audit))
}

/// One transaction per request: read-only for GET, at most 5 s.
pub fn transactions() -> TransactionLayer {
    TransactionLayer::new()
        .read_only_methods([Method::GET, Method::HEAD])
        .timeout(Duration::from_secs(5))
}

/// The service: the routes in a transaction each, and the health route outside any.
pub fn app() -> Router {
    routes().layer(transactions()).route("/health", get(health))
}

/// Connects the two data sources and creates their tables.
pub async fn setup(todos_url: &str, audit_url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let pool = db::connect(todos_url, 10).await?;
    let id = Backend::of_url(todos_url).id_column();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS todos (id {id}, title VARCHAR(200) NOT NULL UNIQUE)"
    )))
    .execute(&pool)
    .await?;
    transactional::register_default(pool)?;

    let pool = db::connect(audit_url, 4).await?;
    let id = Backend::of_url(audit_url).id_column();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS audit_log (id {id}, action VARCHAR(300) NOT NULL)"
    )))
    .execute(&pool)
    .await?;
    transactional::register("audit", pool)?;
    Ok(())
}

/// Serves `app` on `addr` until the process is stopped.
async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, app()).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // What the library does (target `transactional`) at debug level, the rest at info.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("transactional", tracing::Level::DEBUG);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_target(false))
        .with(filter)
        .init();
    let dir = tempfile::tempdir()?;
    let todos_url = db::url_or_sqlite("DATABASE_URL", dir.path(), "todos.db");
    let audit_url = db::url_or_sqlite("AUDIT_DATABASE_URL", dir.path(), "audit.db");
    setup(&todos_url, &audit_url).await?;

    if std::env::args().any(|arg| arg == "--smoke") {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve(listener));
        return smoke(addr).await;
    }
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("todo service on http://127.0.0.1:{port} (Ctrl-C stops it). Try:");
    println!("  curl -i -X POST localhost:{port}/todos -H 'content-type: application/json' -d '{{\"title\":\"milk\"}}'");
    println!("  curl -i localhost:{port}/todos");
    println!("  curl -i localhost:{port}/health");
    tokio::select! {
        served = serve(listener) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// A few requests against the running service, each printed with its answer.
async fn smoke(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let send = |method: &'static str, path: String, body: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        let status = answer.lines().next().unwrap_or_default().to_owned();
        let answer = answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        println!("{method} {path} {body}\n  -> {status} {answer}");
        Ok::<_, std::io::Error>(status)
    };
    let expect = |status: String, code: &str| {
        if status.contains(code) {
            Ok(())
        } else {
            Err(format!("expected {code}, got {status}"))
        }
    };
    expect(
        send("POST", "/todos".into(), r#"{"title":"milk"}"#).await?,
        "201",
    )?;
    expect(
        send("POST", "/todos".into(), r#"{"title":"milk"}"#).await?,
        "409",
    )?;
    expect(send("GET", "/todos".into(), "").await?, "200")?;
    expect(send("DELETE", "/todos/999".into(), "").await?, "404")?;
    expect(send("GET", "/audit".into(), "").await?, "200")?;
    expect(send("GET", "/health".into(), "").await?, "200")?;
    Ok(())
}
