//! The behaviour suite: every test runs unchanged on PostgreSQL, MariaDB/MySQL and SQLite.
//! Semantics: DESIGN.md §2–§6, §9.

mod common;

#[path = "conformance/nested.rs"]
mod nested;
#[path = "conformance/propagation.rs"]
mod propagation;
#[path = "conformance/rollback.rs"]
mod rollback;
#[path = "conformance/options.rs"]
mod options;
