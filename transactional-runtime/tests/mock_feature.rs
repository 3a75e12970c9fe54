//! The `mock` feature mocks transactions out for a whole build. It changes every scope of the
//! build, so it is tested on its own:
//! `cargo test -p transactional-runtime --features mock --test mock_feature` (CI runs it).
#![cfg(feature = "mock")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use transactional_runtime::{Error, Propagation, Transactional};

#[tokio::test]
async fn with_the_mock_feature_every_scope_runs_its_body_without_a_database() {
    let committed = Arc::new(AtomicBool::new(false));
    let flag = committed.clone();
    let value = Transactional::new()
        .propagation(Propagation::Mandatory) // would fail without a transaction
        .data_source("never-registered")
        .run(async move {
            assert!(!transactional_runtime::is_active());
            transactional_runtime::after_commit(move || async move {
                flag.store(true, Ordering::SeqCst);
            })
            .await;
            Ok::<_, Error>(5)
        })
        .await
        .unwrap();
    assert_eq!(value, 5);
    assert!(
        committed.load(Ordering::SeqCst),
        "hooks run as if committed"
    );
}
