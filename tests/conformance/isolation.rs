//! Transactions never cross between tasks: 1,000 concurrent scopes on one runtime each work in
//! a transaction of their own, and a transaction never leaks into a task spawned from inside
//! it, with `tokio::spawn` or `spawn_local`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use transactional::Propagation::*;

use crate::common::hook_support::insert_on;
use crate::common::{scope, AppError, AppResult, Env, TestDb};
use crate::conformance;

/// The server's id of the current transaction (PostgreSQL's `txid_current()`), or `None`
/// where the server gives none reliably: SQLite has none, and MySQL's `innodb_trx` is a cache
/// that can show a connection's previous transaction; there a session variable each scope sets
/// shows instead that no other scope ran on its connection meanwhile.
async fn transaction_id<D: TestDb>() -> AppResult<Option<String>>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    let sql = match D::NAME {
        "postgres" => "SELECT CAST(txid_current() AS VARCHAR)",
        _ => return Ok(None),
    };
    let mut conn = transactional::connection::<D::DB>().await?;
    Ok(Some(D::text(&mut conn, sql.to_owned()).await?))
}

/// One scope: writes its row, reads the server's transaction id twice around a yield, and
/// checks it sees its own uncommitted row and no other's.
async fn one<D: TestDb>(env: &Env<D>, n: i64, seen: &Mutex<HashMap<String, i64>>) -> AppResult<()>
where
    for<'c> &'c mut <D::DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
{
    scope(Required)
        .run(async {
            env.insert_note(n, "pending").await?;
            if D::NAME == "mysql" {
                env.exec_current(format!("SET @scope = {n}")).await?;
            }
            let first = transaction_id::<D>().await?;
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis((n % 3) as u64)).await;
            let again = transaction_id::<D>().await?;
            assert_eq!(first, again, "scope {n}: one transaction throughout");
            if let Some(id) = first {
                let earlier = seen.lock().unwrap().insert(id.clone(), n);
                assert_eq!(
                    earlier, None,
                    "scopes {earlier:?} and {n} shared transaction {id}"
                );
            }
            let mut conn = transactional::connection::<D::DB>().await?;
            if D::NAME == "mysql" {
                let marker = D::scalar(&mut conn, "SELECT @scope".to_owned()).await?;
                assert_eq!(
                    marker, n,
                    "scope {n}: another scope used its connection meanwhile"
                );
            }
            let pending = D::scalar(
                &mut conn,
                format!("SELECT COUNT(*) FROM {} WHERE note = 'pending'", env.table),
            )
            .await?;
            assert_eq!(
                pending, 1,
                "scope {n} sees its own pending row and no other"
            );
            D::exec(
                &mut conn,
                format!("UPDATE {} SET note = 'done' WHERE id = {n}", env.table),
            )
            .await?;
            Ok(())
        })
        .await
}

conformance! {
    /// 500 scopes in spawned tasks and 500 joined in one task, all at once: each has its own
    /// transaction (the server's id is its own and stays the same), sees its own uncommitted
    /// row and no other's, and commits.
    async fn a_thousand_concurrent_scopes_each_have_their_own_transaction(
        env: Env<D>,
        pool(if D::SINGLE_WRITER { 1 } else { 20 }, Duration::from_secs(60))
    ) {
        let env = Arc::new(env);
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let spawned: Vec<_> = (0..500)
            .map(|n| {
                let (env, seen) = (env.clone(), seen.clone());
                tokio::spawn(async move { env.run(one(&env, n, &seen)).await })
            })
            .collect();
        let joined = env.run(futures_util::future::join_all(
            (500..1000).map(|n| one(&env, n, &seen)),
        ));
        let joined = joined.await;
        for r in joined {
            r.unwrap();
        }
        for task in spawned {
            task.await.unwrap().unwrap();
        }
        assert_eq!(env.ids().await.len(), 1000);
        if D::NAME == "postgres" {
            assert_eq!(seen.lock().unwrap().len(), 1000, "1,000 distinct transactions");
        }
        assert!(env.pool_is_clean().await);
    }
}

conformance! {
    /// A task spawned from inside a transaction, with `tokio::spawn` or `spawn_local`, starts
    /// with no transaction, whatever the scope that spawned it does: given the same pool, its
    /// write autocommits at once and survives the spawning scope's rollback.
    async fn a_transaction_never_leaks_into_a_spawned_or_local_task(env: Env<D>) {
        let table = env.table.clone();
        // The spawned tasks write before the scope does: on SQLite a second writer would wait
        // for the scope's write lock.
        let r: AppResult<()> = env.run(scope(Required).run(async {
            assert!(transactional::is_active());
            let (pool, table) = (env.pool.clone(), table.clone());
            let spawned = tokio::spawn(transactional::with_data_source("default", pool, async move {
                let active = transactional::is_active();
                insert_on::<D>("default", &table, 2).await.map(|()| active)
            }))
            .await
            .unwrap()
            .unwrap()?;
            assert!(!spawned, "tokio::spawn: no transaction");
            env.insert(1).await?;
            assert_eq!(env.ids().await, [2], "the spawned task's write autocommitted, the scope's is pending");
            Err(AppError::Boom("roll the spawning scope back"))
        }))
        .await;
        assert!(r.unwrap_err().is_boom());
        assert_eq!(env.ids().await, [2], "the rollback took only the scope's own write");

        // spawn_local needs a LocalSet, on a thread of its own.
        let pool = env.pool.clone();
        let local_pool = env.pool.clone();
        let local = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let set = tokio::task::LocalSet::new();
            set.block_on(&runtime, async move {
                transactional::with_data_source(
                    "default",
                    pool,
                    scope(Required).run(async {
                        assert!(transactional::is_active());
                        let (local_pool, local_table) = (local_pool.clone(), table.clone());
                        let local = transactional::with_data_source("default", local_pool, async move {
                            let active = transactional::data_source("default").is_active();
                            insert_on::<D>("default", &local_table, 4).await.map(|()| active)
                        });
                        let inside = tokio::task::spawn_local(local).await.unwrap().unwrap()?;
                        insert_on::<D>("default", &table, 3).await?;
                        Ok::<_, AppError>(inside)
                    }),
                )
                .await
                .unwrap()
            })
        })
        .await
        .unwrap();
        assert!(!local.unwrap(), "spawn_local: no transaction");
        assert_eq!(env.ids().await, [2, 3, 4]);
    }
}
