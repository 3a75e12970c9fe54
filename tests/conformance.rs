//! The behaviour suite: every test runs unchanged on PostgreSQL, MariaDB/MySQL and SQLite.
//! Semantics: DESIGN.md §2–§6, §9.

mod common;

#[path = "conformance/context.rs"]
mod context;
#[path = "conformance/hooks.rs"]
mod hooks;
#[path = "conformance/nested.rs"]
mod nested;
#[path = "conformance/options.rs"]
mod options;
#[path = "conformance/propagation.rs"]
mod propagation;
#[path = "conformance/rollback.rs"]
mod rollback;
