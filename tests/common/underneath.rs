//! Making the database end a transaction by itself, as each database does it: PostgreSQL
//! aborts it at a failed statement, MySQL rolls back the victim of a deadlock, SQLite rolls
//! back on `INSERT OR ROLLBACK`.

use std::time::Duration;

use super::{AppError, AppResult, Env, TestDb};

/// Through the current connection, makes the database roll back (PostgreSQL: abort) the
/// current transaction by itself, after writing row `key` in it; returns the error of the
/// statement that did it:
/// - PostgreSQL: a duplicate key aborts the transaction (later statements fail; only a
///   rollback ends it);
/// - MySQL: a deadlock with another session, whose victim (ours: the other has done more
///   work) InnoDB rolls back, carrying on outside any transaction;
/// - SQLite: `INSERT OR ROLLBACK` of a duplicate key rolls the transaction back, carrying on
///   in autocommit.
pub async fn ended_by_the_database<D: TestDb>(env: &Env<D>, key: i64) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    env.insert(key).await?;
    let table = &env.table;
    let failed = match D::NAME {
        "mysql" => deadlock_victim(env).await,
        "sqlite" => {
            env.exec_current(format!(
                "INSERT OR ROLLBACK INTO {table} (id) VALUES ({key})"
            ))
            .await
        }
        _ => env.insert(key).await,
    };
    assert!(
        failed.is_err(),
        "{}: the statement ending the transaction failed",
        D::NAME
    );
    failed
}

/// MySQL: our transaction becomes the victim of a deadlock with another session.
async fn deadlock_victim<D: TestDb>(env: &Env<D>) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let locks = format!("{}_lk", env.table);
    env.observe(format!(
        "CREATE TABLE IF NOT EXISTS {locks} (id BIGINT PRIMARY KEY, n BIGINT)"
    ))
    .await;
    env.observe(format!(
        "INSERT IGNORE INTO {locks} (id, n) VALUES (1, 0), (2, 0)"
    ))
    .await;
    env.exec_current(format!("UPDATE {locks} SET n = n + 1 WHERE id = 1"))
        .await?;
    let mut other = env.observer.acquire().await.expect("a second session");
    D::exec(&mut other, "START TRANSACTION".into())
        .await
        .unwrap();
    // More work than ours, so that InnoDB picks ours as the victim.
    for id in 100..120 {
        let sql = format!("INSERT INTO {locks} (id, n) VALUES ({id}, 0)");
        D::exec(&mut other, sql).await.unwrap();
    }
    let sql = format!("UPDATE {locks} SET n = n + 1 WHERE id = 2");
    D::exec(&mut other, sql).await.unwrap();
    let blocked = env.exec_current(format!("UPDATE {locks} SET n = n + 1 WHERE id = 2"));
    let closes_the_cycle = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sql = format!("UPDATE {locks} SET n = n + 1 WHERE id = 1");
        D::exec(&mut other, sql).await
    };
    let (ours, theirs) = tokio::join!(blocked, closes_the_cycle);
    theirs.expect("the other session is not the deadlock's victim");
    D::exec(&mut other, "ROLLBACK".into()).await.unwrap();
    match &ours {
        Err(AppError::Db(e)) if e.to_string().contains("Deadlock") => {}
        other => panic!("ours is the deadlock's victim: {other:?}"),
    }
    ours
}
