//! The behaviour suite: every test runs unchanged on PostgreSQL, MariaDB/MySQL and SQLite.
//! The rules they check: docs/SEMANTICS.md.

#[path = "../common/mod.rs"]
mod common;

mod cancellation;
mod concurrency;
mod context;
mod deadlines;
mod hooks;
mod hooks_context;
mod implicit_commit;
mod isolation;
mod lazy_begin;
mod nested;
mod options;
mod pool_status;
mod propagation;
mod retry;
mod rollback;
mod rollback_after;
mod strict;
mod underneath;
