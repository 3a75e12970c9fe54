//! What a scope asks for: propagation, isolation, read-only, timeout, data source.

use std::fmt;
use std::time::Duration;

use crate::name::Name;

/// How a scope relates to the transaction that is current when it starts.
///
/// The seven modes of Spring's `Propagation`, with the same semantics:
///
/// | mode | a transaction exists | none exists |
/// |---|---|---|
/// | [`Required`](Self::Required) (default) | join it | begin one |
/// | [`Supports`](Self::Supports) | join it | run without one |
/// | [`Mandatory`](Self::Mandatory) | join it | [`Error::NoExistingTransaction`](crate::Error::NoExistingTransaction) |
/// | [`RequiresNew`](Self::RequiresNew) | suspend it, begin one on another connection | begin one |
/// | [`NotSupported`](Self::NotSupported) | suspend it, run without one | run without one |
/// | [`Never`](Self::Never) | [`Error::ExistingTransaction`](crate::Error::ExistingTransaction) | run without one |
/// | [`Nested`](Self::Nested) | `SAVEPOINT` inside it | begin one |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Propagation {
    /// Join the current transaction, or begin one if there is none.
    #[default]
    Required,
    /// Join the current transaction, or run without one.
    Supports,
    /// Join the current transaction; fail if there is none.
    Mandatory,
    /// Always begin a new transaction on its own connection, suspending the current one.
    RequiresNew,
    /// Run without a transaction, suspending the current one.
    NotSupported,
    /// Run without a transaction; fail if one exists.
    Never,
    /// Run inside a savepoint of the current transaction, or begin one if there is none.
    Nested,
}

impl Propagation {
    /// Every mode, in declaration order.
    pub const ALL: [Propagation; 7] = [
        Propagation::Required,
        Propagation::Supports,
        Propagation::Mandatory,
        Propagation::RequiresNew,
        Propagation::NotSupported,
        Propagation::Never,
        Propagation::Nested,
    ];

    /// The Spring spelling: `"REQUIRED"`, `"REQUIRES_NEW"`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            Propagation::Required => "REQUIRED",
            Propagation::Supports => "SUPPORTS",
            Propagation::Mandatory => "MANDATORY",
            Propagation::RequiresNew => "REQUIRES_NEW",
            Propagation::NotSupported => "NOT_SUPPORTED",
            Propagation::Never => "NEVER",
            Propagation::Nested => "NESTED",
        }
    }
}

impl fmt::Display for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The isolation level a scope that begins a transaction asks for.
///
/// Applied only by a scope that *begins* a physical transaction; see the crate docs for the
/// statement each database receives. SQLite runs every transaction serializable, which is at
/// least as strong as any level asked for, so every level maps to it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Isolation {
    /// The database's (or session's) default level; no isolation clause is sent.
    #[default]
    Default,
    /// `READ UNCOMMITTED`.
    ReadUncommitted,
    /// `READ COMMITTED`.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`.
    Serializable,
}

impl Isolation {
    /// The Spring spelling: `"READ_COMMITTED"`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            Isolation::Default => "DEFAULT",
            Isolation::ReadUncommitted => "READ_UNCOMMITTED",
            Isolation::ReadCommitted => "READ_COMMITTED",
            Isolation::RepeatableRead => "REPEATABLE_READ",
            Isolation::Serializable => "SERIALIZABLE",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a scope was asked for, independent of the body it runs: what
/// [`Transactional::options`](crate::Transactional::options) and
/// [`ScopeEvent::scope`](crate::ScopeEvent::scope) show.
///
/// Built with [`Transactional`](crate::Transactional)'s setters (from [`TxOptions::DEFAULT`]);
/// its fields are read-only outside this crate (`#[non_exhaustive]`), so that options added
/// later (a replica route, say) are not a breaking change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxOptions {
    /// A name for logs, tracing and the recording mock; the macro uses the fn's path.
    pub name: Name,
    /// See [`Propagation`].
    pub propagation: Propagation,
    /// See [`Isolation`].
    pub isolation: Isolation,
    /// Ask for a read-only transaction.
    pub read_only: bool,
    /// A hard deadline for the scope, measured from its start.
    pub timeout: Option<Duration>,
    /// The registered data source the scope works on.
    pub data_source: Name,
}

/// The name of the data source used when none is given.
pub const DEFAULT_DATA_SOURCE: &str = "default";

impl TxOptions {
    /// `REQUIRED`, default isolation, read-write, no timeout, the default data source.
    pub const DEFAULT: TxOptions = TxOptions {
        name: Name::from_static("transactional"),
        propagation: Propagation::Required,
        isolation: Isolation::Default,
        read_only: false,
        timeout: None,
        data_source: Name::from_static(DEFAULT_DATA_SOURCE),
    };
}

impl TxOptions {
    /// Options that can never apply are refused: isolation, read-only and timeout belong to a
    /// transaction, and SUPPORTS, NOT_SUPPORTED and NEVER never begin one.
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        let never_begins = matches!(
            self.propagation,
            Propagation::Supports | Propagation::NotSupported | Propagation::Never
        );
        if !never_begins {
            return Ok(());
        }
        let option = if self.isolation != Isolation::Default {
            "isolation"
        } else if self.read_only {
            "read_only"
        } else if self.timeout.is_some() {
            "timeout"
        } else {
            return Ok(());
        };
        Err(crate::Error::InvalidOptions {
            scope: self.name.clone(),
            reason: format!(
                "`{option}` applies to a transaction the scope begins, and propagation {} never begins one",
                self.propagation
            ),
        })
    }
}

impl Default for TxOptions {
    fn default() -> Self {
        TxOptions::DEFAULT
    }
}
