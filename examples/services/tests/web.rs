//! The todo service of `examples/web.rs`, driven over HTTP on 127.0.0.1 on SQLite, PostgreSQL
//! and MariaDB: commit, rollback on an error status, a panic, a client that goes away and a
//! deadline, read-only GETs, and 200 concurrent requests whose transactions stay apart.
//!
//! The service registers its data sources globally ("default", "audit"), so the databases run
//! one after the other. A few routes exist only here: they use the service's repositories and
//! its transaction layer to fail in the ways a handler can.

#[path = "../../web.rs"]
#[allow(dead_code)]
mod web;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use sqlx::{Any, AnyPool};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use transactional_service_examples::db::{self, sql};
use web::AppError;

/// What the hooks of the test routes saw.
static HOOKS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Told when `/test/hold` has written its row.
static HOLDING: Notify = Notify::const_new();

fn hooks() -> Vec<String> {
    HOOKS.lock().unwrap().clone()
}

async fn hook_on_outcome(what: &'static str) {
    transactional::after_commit(move || async move {
        HOOKS.lock().unwrap().push(format!("{what}: committed"));
    })
    .await;
    transactional::after_rollback(move |cause| async move {
        HOOKS
            .lock()
            .unwrap()
            .push(format!("{what}: rolled back ({cause})"));
    })
    .await;
}

async fn fail_after_write() -> Result<StatusCode, AppError> {
    web::todos::insert("doomed").await?;
    hook_on_outcome("fail_after_write").await;
    Ok(StatusCode::UNPROCESSABLE_ENTITY)
}

async fn panic_after_write() -> Result<StatusCode, AppError> {
    web::todos::insert("panicked").await?;
    hook_on_outcome("panic_after_write").await;
    panic!("the handler panicked after writing");
}

async fn hold() -> Result<StatusCode, AppError> {
    web::todos::insert("held").await?;
    hook_on_outcome("hold").await;
    HOLDING.notify_one();
    std::future::pending::<()>().await;
    Ok(StatusCode::OK)
}

async fn slow() -> Result<StatusCode, AppError> {
    web::todos::insert("slow").await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok(StatusCode::OK)
}

async fn write_in_get() -> Result<StatusCode, AppError> {
    web::todos::insert("written by a GET").await?;
    Ok(StatusCode::OK)
}

/// Writes a pending row, reads every pending row it can see, then makes its own final: a row
/// of another request seen pending is one that request had not committed.
async fn isolation(Path(n): Path<i64>) -> Result<String, AppError> {
    let mut conn = transactional::connection::<Any>().await?;
    let pending = format!("iso-{n}-pending");
    sqlx::query(sqlx::AssertSqlSafe(sql(
        &conn,
        "INSERT INTO todos (title) VALUES ($1)",
    )))
    .bind(&pending)
    .execute(&mut *conn)
    .await?;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(n.unsigned_abs() % 7)).await;
    let mut conn = transactional::connection::<Any>().await?;
    let seen: Vec<String> =
        sqlx::query_scalar("SELECT title FROM todos WHERE title LIKE 'iso-%-pending'")
            .fetch_all(&mut *conn)
            .await?;
    sqlx::query(sqlx::AssertSqlSafe(sql(
        &conn,
        "UPDATE todos SET title = $1 WHERE title = $2",
    )))
    .bind(format!("iso-{n}"))
    .bind(&pending)
    .execute(&mut *conn)
    .await?;
    Ok(seen.join(","))
}

/// The service's routes and the test routes, in its transaction layer (`/test/slow` with a
/// short deadline).
fn app() -> Router {
    let slow = Router::new()
        .route("/test/slow", post(slow))
        .layer(web::transactions().timeout(Duration::from_millis(300)));
    web::routes()
        .route("/test/fail-after-write", post(fail_after_write))
        .route("/test/panic-after-write", post(panic_after_write))
        .route("/test/hold", post(hold))
        .route("/test/write-in-get", get(write_in_get))
        .route("/test/isolation/{n}", post(isolation))
        .layer(web::transactions())
        .merge(slow)
        .route("/health", get(web::health))
}

struct Service {
    addr: SocketAddr,
    observer: AnyPool,
    client: reqwest::Client,
}

impl Service {
    async fn start(todos_url: &str, audit_url: &str) -> Service {
        let observer = db::connect(todos_url, 2).await.unwrap();
        let audit = db::connect(audit_url, 1).await.unwrap();
        for (pool, table) in [(&observer, "todos"), (&audit, "audit_log")] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                .execute(pool)
                .await
                .unwrap();
        }
        web::setup(todos_url, audit_url).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app()).await });
        Service {
            addr,
            observer,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(&self, path: &str, body: Option<&str>) -> reqwest::Result<reqwest::Response> {
        let mut request = self.client.post(self.url(path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        request.send().await
    }

    /// GETs `path` and reads its JSON body.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// The committed titles, seen from a connection of its own.
    async fn titles(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT title FROM todos ORDER BY id")
            .fetch_all(&self.observer)
            .await
            .unwrap()
    }

    /// Waits until no transaction of the service holds a connection or waits for one.
    async fn settled(&self) {
        for _ in 0..200 {
            let health: serde_json::Value = self.get_json("/health").await;
            let busy = health["data_sources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["transactions"] != 0 || s["waiting"] != 0);
            if !busy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("transactions still open after 5 s");
    }

    fn stop(self) {
        transactional::deregister("default");
        transactional::deregister("audit");
    }
}

async fn scenarios(name: &str, todos_url: &str, audit_url: &str) {
    HOOKS.lock().unwrap().clear();
    let service = Service::start(todos_url, audit_url).await;

    // Commit: 201, the row committed, the audit record written.
    let created = service
        .post("/todos", Some(r#"{"title":"milk"}"#))
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED, "{name}");
    let todo: web::Todo = created.json().await.unwrap();
    assert_eq!(todo.title, "milk");
    assert_eq!(service.titles().await, ["milk"], "{name}");

    // A duplicate: 409 and no todo written; its REQUIRES_NEW audit record stays.
    let duplicate = service
        .post("/todos", Some(r#"{"title":"milk"}"#))
        .await
        .unwrap();
    assert_eq!(duplicate.status(), StatusCode::CONFLICT, "{name}");
    assert_eq!(service.titles().await, ["milk"], "{name}");
    let audit: Vec<String> = service.get_json("/audit").await;
    assert_eq!(audit, [r#"create "milk""#, r#"create "milk""#], "{name}");

    // An error status after a write rolls it back, and the hooks say so.
    let failed = service.post("/test/fail-after-write", None).await.unwrap();
    assert_eq!(failed.status(), StatusCode::UNPROCESSABLE_ENTITY, "{name}");
    assert_eq!(service.titles().await, ["milk"], "{name}");
    assert_eq!(
        hooks(),
        ["fail_after_write: rolled back (the body returned an error)"],
        "{name}"
    );

    // A panic after a write: the connection is dropped, the row rolled back, and the service
    // goes on serving.
    let panicked = service.post("/test/panic-after-write", None).await;
    assert!(panicked.is_err(), "{name}: {panicked:?}");
    service.settled().await;
    assert_eq!(service.titles().await, ["milk"], "{name}");
    assert!(hooks().contains(&"panic_after_write: rolled back (the body panicked)".to_owned()));

    // A client that goes away while its handler waits: the handler is dropped, its
    // transaction rolled back.
    let mut stream = tokio::net::TcpStream::connect(service.addr).await.unwrap();
    let holding = HOLDING.notified();
    stream
        .write_all(b"POST /test/hold HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    holding.await;
    drop(stream);
    service.settled().await;
    assert_eq!(service.titles().await, ["milk"], "{name}");
    assert!(
        hooks().contains(&"hold: rolled back (the scope was cancelled)".to_owned()),
        "{name}: {:?}",
        hooks()
    );

    // Past the layer's deadline: 504, rolled back.
    let slow = service.post("/test/slow", None).await.unwrap();
    assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT, "{name}");
    assert_eq!(service.titles().await, ["milk"], "{name}");

    // A GET runs read-only: its write fails, and nothing is written.
    let get = service
        .client
        .get(service.url("/test/write-in-get"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::INTERNAL_SERVER_ERROR, "{name}");
    assert_eq!(service.titles().await, ["milk"], "{name}");

    // 200 requests at once, each in its own transaction: none sees another's pending row.
    let requests = (0..200).map(|n| {
        let service = &service;
        async move {
            let answer = service
                .post(&format!("/test/isolation/{n}"), None)
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK, "{name}: request {n}");
            let seen = answer.text().await.unwrap();
            assert_eq!(
                seen,
                format!("iso-{n}-pending"),
                "{name}: request {n} saw {seen}"
            );
        }
    });
    futures_util::future::join_all(requests).await;
    let titles = service.titles().await;
    assert_eq!(titles.len(), 201, "{name}");
    assert!(titles.iter().all(|t| !t.ends_with("-pending")), "{name}");

    // Delete: 204, then 404 for the same id.
    let deleted = service
        .client
        .delete(service.url(&format!("/todos/{}", todo.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT, "{name}");
    let again = service
        .client
        .delete(service.url(&format!("/todos/{}", todo.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND, "{name}");
    service.settled().await;
    service.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_todo_service_on_every_database() {
    let dir = tempfile::tempdir().unwrap();
    let lite = |file: &str| format!("sqlite://{}?mode=rwc", dir.path().join(file).display());
    scenarios("sqlite", &lite("todos.db"), &lite("audit.db")).await;

    if !skipped("postgres") {
        let postgres = std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        scenarios("postgres", &postgres, &lite("audit_pg.db")).await;
    }
    if !skipped("mysql") {
        let mysql = std::env::var("TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
        scenarios("mysql", &mysql, &mysql).await;
    }
}

/// `TRANSACTIONAL_TEST_SKIP=postgres,mysql` skips those servers, as in the library's tests.
fn skipped(database: &str) -> bool {
    std::env::var("TRANSACTIONAL_TEST_SKIP")
        .is_ok_and(|skip| skip.split(',').any(|s| s.trim() == database))
}
