//! Two data sources of different databases in one call chain (PostgreSQL "default" and
//! MariaDB "audit"): each has its own current transaction, propagation and hooks.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{AppError, AppResult, Env, My, Pg, TestDb};
use transactional::{transactional, Propagation, Transactional};

async fn audit_insert(env: &Env<My>, id: i64) -> AppResult<()> {
    let mut conn = transactional::data_source("audit")
        .connection::<sqlx::MySql>()
        .await?;
    My::exec(
        &mut conn,
        format!("INSERT INTO {} (id) VALUES ({id})", env.table),
    )
    .await?;
    Ok(())
}

#[transactional(data_source = "audit", propagation = "MANDATORY")]
async fn needs_an_audit_transaction() -> AppResult<()> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_mariadb_in_one_call_chain() {
    let (Some(pg), Some(my)) = (
        Env::<Pg>::new("two_sources_pg").await,
        Env::<My>::new("two_sources_my").await,
    ) else {
        return;
    };
    let audit_commits = Arc::new(AtomicUsize::new(0));
    let default_commits = Arc::new(AtomicUsize::new(0));
    let (a, d) = (audit_commits.clone(), default_commits.clone());

    let r: AppResult<()> = transactional::with_data_source(
        "audit",
        my.pool.clone(),
        pg.run(Transactional::new().run(async {
            pg.insert(1).await?;
            assert!(transactional::is_active());
            assert!(
                !transactional::data_source("audit").is_active(),
                "no audit transaction yet"
            );
            // MANDATORY is per data source: a Postgres transaction does not satisfy it.
            let err = needs_an_audit_transaction().await.unwrap_err();
            assert!(matches!(
                err.tx(),
                transactional::Error::NoExistingTransaction { .. }
            ));

            // REQUIRED on "audit" begins its own MariaDB transaction; Postgres stays current.
            let audited: AppResult<()> = Transactional::new()
                .data_source("audit")
                .run(async {
                    assert!(transactional::data_source("audit").is_active());
                    assert!(
                        transactional::data_source("default").is_active(),
                        "the Postgres transaction is still current"
                    );
                    audit_insert(&my, 10).await?;
                    transactional::data_source("audit")
                        .after_commit(move || async move {
                            a.fetch_add(1, Ordering::SeqCst);
                        })
                        .await;
                    transactional::data_source("default")
                        .after_commit(move || async move {
                            d.fetch_add(1, Ordering::SeqCst);
                        })
                        .await;
                    needs_an_audit_transaction().await?;
                    Ok(())
                })
                .await;
            audited?;
            assert_eq!(
                audit_commits.load(Ordering::SeqCst),
                1,
                "the audit hook ran at the audit commit"
            );
            assert_eq!(
                default_commits.load(Ordering::SeqCst),
                0,
                "the Postgres hook waits for Postgres"
            );
            assert_eq!(my.ids().await, vec![10]);
            assert!(pg.ids().await.is_empty());

            // A failing audit transaction does not mark the Postgres one.
            let failed: AppResult<()> = Transactional::new()
                .data_source("audit")
                .run(async {
                    audit_insert(&my, 11).await?;
                    Err(AppError::Boom("audit fails"))
                })
                .await;
            assert!(failed.is_err());
            assert!(!transactional::is_rollback_only());
            pg.insert(2).await?;
            Err(AppError::Boom("Postgres work fails at the end"))
        })),
    )
    .await
    .unwrap();
    assert!(r.unwrap_err().is_boom());
    assert!(pg.ids().await.is_empty(), "Postgres rolled back");
    assert_eq!(
        my.ids().await,
        vec![10],
        "the first audit transaction stays committed"
    );
    assert_eq!(
        default_commits.load(Ordering::SeqCst),
        0,
        "Postgres never committed"
    );
}

/// Both data sources joined in one scope each, committing in order (inner first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_scopes_on_two_databases_both_commit() {
    let (Some(pg), Some(my)) = (
        Env::<Pg>::new("two_sources_commit_pg").await,
        Env::<My>::new("two_sources_commit_my").await,
    ) else {
        return;
    };
    let r: AppResult<()> = transactional::with_data_source(
        "audit",
        my.pool.clone(),
        pg.run(Transactional::new().run(async {
            pg.insert(1).await?;
            let inner: AppResult<()> = Transactional::new()
                .data_source("audit")
                .propagation(Propagation::Required)
                .run(audit_insert(&my, 1))
                .await;
            inner?;
            pg.insert(2).await
        })),
    )
    .await
    .unwrap();
    r.unwrap();
    assert_eq!(pg.ids().await, vec![1, 2]);
    assert_eq!(my.ids().await, vec![1]);
}

/// Tenants' pools registered under names built at run time (as from configuration): a scope
/// names its tenant's data source with a `String`, and its transaction, rows and state stay
/// on that tenant's pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sources_named_at_run_time() {
    let Some(first) = Env::<Pg>::new("tenant_a").await else {
        return;
    };
    let second = Env::<Pg>::also("tenant_b").await;
    let tenants: Vec<(String, &Env<Pg>)> = [&first, &second]
        .into_iter()
        .enumerate()
        .map(|(i, env)| (format!("tenant_{}_{i}", std::process::id()), env))
        .collect();
    for (name, env) in &tenants {
        transactional::register(name, env.pool.clone()).unwrap();
    }
    for (i, (name, env)) in tenants.iter().enumerate() {
        let table = env.table.clone();
        let other = tenants[1 - i].0.clone();
        let r: AppResult<()> = Transactional::new()
            .data_source(name.clone())
            .name(format!("tenant {name}"))
            .run(async {
                assert!(transactional::data_source(name).is_active());
                assert!(!transactional::data_source(&other).is_active());
                common::hook_support::insert_on::<Pg>(name, &table, 10 + i as i64).await?;
                Ok(())
            })
            .await;
        r.unwrap();
    }
    assert_eq!(first.ids().await, vec![10]);
    assert_eq!(second.ids().await, vec![11]);

    // An error names the scope and the data source as they were built.
    let missing = format!("tenant_{}_missing", std::process::id());
    let r: AppResult<()> = Transactional::new()
        .data_source(missing.clone())
        .propagation(Propagation::Mandatory)
        .run(async { Ok(()) })
        .await;
    let message = r.unwrap_err().tx().to_string();
    assert!(message.contains(&missing), "{message}");
    for (name, _) in &tenants {
        assert!(transactional::deregister(name));
    }
}
