//! `TransactionLayer::read_your_writes`: two instances of a service over one PostgreSQL primary
//! and its streaming replica (`TEST_POSTGRES_REPLICA_URL`, default port 5433; `.ci/pg-replica`
//! makes one). A write served by one instance answers with its commit position; the next read,
//! served by the other instance with that position sent back, reads the write — from the
//! primary while the replica's replay is paused — and without it reads the replica's stale
//! rows.
#![cfg(all(feature = "axum", feature = "postgres"))]

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use futures_util::FutureExt;
use http::{HeaderName, Method, Request, StatusCode};
use sqlx::{Executor, PgPool};
use tower_service::Service;
use transactional_runtime::web::TransactionLayer;
use transactional_runtime::ReplicaSettings;

const POSITION: HeaderName = HeaderName::from_static("x-commit-position");

fn url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// One instance: the route `/rows` (POST adds a row, GET says where it ran and what it saw).
fn instance(data_source: &'static str, table: &'static str) -> Router {
    let add = move || async move {
        let mut conn = transactional_runtime::connection::<sqlx::Postgres>().await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} VALUES (DEFAULT)"
        )))
        .await?;
        Ok::<_, transactional_runtime::Error>("added")
    };
    let look = move || async move {
        let mut conn = transactional_runtime::connection::<sqlx::Postgres>().await?;
        let sql = format!("SELECT pg_is_in_recovery(), COUNT(*) FROM {table}");
        let (replica, rows): (bool, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut *conn)
            .await?;
        Ok::<_, transactional_runtime::Error>(format!(
            "{} {rows}",
            if replica { "replica" } else { "primary" }
        ))
    };
    Router::new().route("/rows", get(look).post(add)).layer(
        TransactionLayer::new()
            .data_source(data_source)
            .read_only_methods([Method::GET])
            .read_your_writes(POSITION),
    )
}

/// Sends a request; the answer's body and its position header.
async fn send(
    app: &mut Router,
    method: Method,
    position: Option<&str>,
) -> (String, Option<String>) {
    let mut request = Request::builder().method(method).uri("/rows");
    if let Some(position) = position {
        request = request.header(POSITION, position);
    }
    let response = app
        .call(request.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let position = response
        .headers()
        .get(POSITION)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), position)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_sent_back_reads_the_write_on_another_instance() {
    if std::env::var("TRANSACTIONAL_TEST_SKIP").is_ok_and(|v| {
        v.split(',')
            .any(|s| matches!(s.trim(), "postgres" | "replica"))
    }) {
        return;
    }
    let primary = PgPool::connect(&url(
        "TEST_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    ))
    .await
    .unwrap();
    let replica_url = url(
        "TEST_POSTGRES_REPLICA_URL",
        "postgres://postgres@127.0.0.1:5433/test",
    );
    let replica = PgPool::connect(&replica_url)
        .await
        .unwrap_or_else(|e| panic!("no replica at {replica_url}: {e}; `.ci/pg-replica` makes one"));
    let table: &'static str =
        Box::leak(format!("web_replicas_{}", std::process::id()).into_boxed_str());
    primary
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id BIGSERIAL PRIMARY KEY)"
        )))
        .await
        .unwrap();
    let (a, b): (&'static str, &'static str) = (
        Box::leak(format!("{table}_a").into_boxed_str()),
        Box::leak(format!("{table}_b").into_boxed_str()),
    );
    let settings = ReplicaSettings::new().check_every(Duration::from_millis(20));
    for name in [a, b] {
        transactional_runtime::register_with_replicas(
            name,
            primary.clone(),
            vec![replica.clone()],
            settings,
        )
        .unwrap();
    }
    let (mut one, mut other) = (instance(a, table), instance(b, table));
    // The replica serves this instance's reads once it has the table.
    let mut served = false;
    for _ in 0..250 {
        if send(&mut one, Method::GET, None).await.0 == "replica 0" {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "reads reach the replica");

    replica
        .execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let paused = AssertUnwindSafe(async {
        let (added, position) = send(&mut other, Method::POST, None).await;
        assert_eq!(added, "added");
        let position = position.expect("a write's answer carries its commit position");
        assert_eq!(
            send(&mut one, Method::GET, None).await.0,
            "replica 0",
            "stale without it"
        );
        let (seen, echoed) = send(&mut one, Method::GET, Some(&position)).await;
        assert_eq!(
            seen, "primary 1",
            "with the position: the primary, and the write"
        );
        assert_eq!(
            echoed.as_deref(),
            Some(position.as_str()),
            "the position stays with the client"
        );
        assert_eq!(
            send(&mut one, Method::GET, Some("not a position")).await.0,
            "replica 0"
        );
    })
    .catch_unwind()
    .await;
    replica
        .execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    paused.unwrap();
    for name in [a, b] {
        transactional_runtime::deregister(name);
    }
    let _ = primary
        .execute(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .await;
}
