//! The behaviour suite: every test runs unchanged on PostgreSQL, MariaDB/MySQL and SQLite.
//! The rules they check: docs/SEMANTICS.md.

mod common;

#[path = "conformance/cancellation.rs"]
mod cancellation;
#[path = "conformance/concurrency.rs"]
mod concurrency;
#[path = "conformance/context.rs"]
mod context;
#[path = "conformance/deadlines.rs"]
mod deadlines;
#[path = "conformance/hooks.rs"]
mod hooks;
#[path = "conformance/hooks_context.rs"]
mod hooks_context;
#[path = "conformance/implicit_commit.rs"]
mod implicit_commit;
#[path = "conformance/isolation.rs"]
mod isolation;
#[path = "conformance/lazy_begin.rs"]
mod lazy_begin;
#[path = "conformance/nested.rs"]
mod nested;
#[path = "conformance/options.rs"]
mod options;
#[path = "conformance/pool_status.rs"]
mod pool_status;
#[path = "conformance/propagation.rs"]
mod propagation;
#[path = "conformance/retry.rs"]
mod retry;
#[path = "conformance/rollback.rs"]
mod rollback;
#[path = "conformance/rollback_after.rs"]
mod rollback_after;
#[path = "conformance/underneath.rs"]
mod underneath;
