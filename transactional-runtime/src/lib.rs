//! The runtime of `transactional`: Spring's `@Transactional` semantics for async Rust over
//! sqlx and tokio. Most users depend on the `transactional` crate, which re-exports all of
//! this together with the `#[transactional]` attribute.
//!
//! - [`register_default`] / [`register`]: pools as named data sources, once at start-up.
//! - [`Transactional`]: run a future as a transactional scope (what the macro expands to).
//! - [`connection`] / [`data_source`]: the current connection for repository code, plus
//!   rollback-only and hooks ([`after_commit`], …).
//! - [`Propagation`], [`Isolation`], [`TxOptions`]: what a scope asks for.
//! - [`Error`]: everything that can go wrong, convertible into your error type with `From`.
//! - [`testing`]: mock transactions out, record them, capture hooks, roll back after a test.
//! - `outbox` (feature `outbox`): events stored in the scope's transaction, delivered to a
//!   broker (NATS JetStream with the feature `nats`) once it commits.
//! - `sea_orm` (feature `sea-orm`): SeaORM's `ConnectionTrait` on the current transaction.
//! - `web` (feature `axum`): a transaction per HTTP request.
//!
//! The current transaction travels with the task (a tokio task-local): futures joined or
//! selected inside a scope share it, while a `tokio::spawn`ed task starts with none.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// One `unsafe` block, in `context` (the thread-local pointer), allowed there and run under Miri.
#![deny(unsafe_code)]

// Layered in the direction the data flows; a module imports only from its own group or those
// above it (tests/module_graph.rs keeps it so; docs/ARCHITECTURE.md walks through it).

/// The `tracing` target of every span and log line of the runtime (`trace::TARGET`; here, so
/// that `hooks`, which `trace` imports, can log under it too).
const TARGET: &str = "transactional";

// What a scope asks for, and what can go wrong.
mod error;
mod inspect;
mod name;
mod options;
mod propagation;
mod status;

// The databases: the driver seam, each database's SQL, work that must finish when detached.
mod detach;
mod dialect;
mod driver;

// What happens around a transaction: hooks, scope events, tracing.
mod events;
mod hooks;
mod trace;

// The registry of pools, their replicas, and a transaction on its connection.
mod data_source;
mod replica;
mod transaction;

// The task-local context, the connection guard, the scope from start to end.
mod context;
mod guard;
mod scope;

// The public API on top: free functions, retry, the builder, and what the macro expands to.
#[doc(hidden)]
pub mod __private;
mod api;
mod builder;
mod retry;

// Built on the API.
#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
pub mod outbox;
#[cfg(feature = "sea-orm")]
#[cfg_attr(docsrs, doc(cfg(feature = "sea-orm")))]
pub mod sea_orm;
pub mod testing;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod web;

pub use api::{
    after_commit, after_commit_detached, after_completion, after_rollback, autocommit,
    before_commit, commit_position, connection, data_source, is_active, is_rollback_only,
    pool_status, read_after, set_rollback_only, DataSourceRef,
};
pub use builder::{Retrying, Transactional};
pub use context::{with_data_source, with_data_source_settings};
pub use data_source::{
    deregister, register, register_default, register_with, DataSourceSettings, ReplicaSettings,
};
pub use dialect::Dialect;
pub use error::{BoxError, Error};
pub use events::{EventKind, ScopeEvent};
pub use guard::ConnectionGuard;
pub use hooks::{HookResult, Outcome, RollbackCause};
pub use name::Name;
pub use options::{Isolation, Propagation, TxOptions, DEFAULT_DATA_SOURCE};
pub use replica::{register_with_replicas, CommitPosition};
pub use retry::{is_retryable, RetryableError};
pub use status::{PoolStatus, ReplicaStatus};
