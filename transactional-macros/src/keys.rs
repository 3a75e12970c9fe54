//! The attribute's vocabulary: its options, and Spring's spellings of the values it knows.

/// One option of `#[transactional(...)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Propagation,
    Isolation,
    ReadOnly,
    Timeout,
    DataSource,
    NoRollbackFor,
    Retry,
    Send,
    Local,
    Crate,
}

impl Key {
    /// Every option, in the order the docs and error messages list them.
    pub(crate) const ALL: [Key; 10] = [
        Key::Propagation,
        Key::Isolation,
        Key::ReadOnly,
        Key::Timeout,
        Key::DataSource,
        Key::NoRollbackFor,
        Key::Retry,
        Key::Send,
        Key::Local,
        Key::Crate,
    ];

    /// How it is written.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Key::Propagation => "propagation",
            Key::Isolation => "isolation",
            Key::ReadOnly => "read_only",
            Key::Timeout => "timeout",
            Key::DataSource => "data_source",
            Key::NoRollbackFor => "no_rollback_for",
            Key::Retry => "retry",
            Key::Send => "send",
            Key::Local => "local",
            Key::Crate => "crate",
        }
    }

    /// How it is written with a value, for "needs a value" and "expected a string literal".
    pub(crate) fn example(self) -> &'static str {
        match self {
            Key::Propagation => "propagation = \"REQUIRES_NEW\"",
            Key::Isolation => "isolation = \"SERIALIZABLE\"",
            Key::ReadOnly => "read_only = true",
            Key::Timeout => "timeout = 5",
            Key::DataSource => "data_source = \"reporting\"",
            Key::NoRollbackFor => "no_rollback_for = AppError::is_not_found",
            Key::Retry => "retry = 3",
            Key::Send => "send",
            Key::Local => "local",
            Key::Crate => "crate = \"::transactional\"",
        }
    }

    /// Every option's name.
    pub(crate) fn names() -> Vec<&'static str> {
        Key::ALL.iter().map(|k| k.name()).collect()
    }
}

/// Spring's spelling of each propagation mode and the runtime's variant for it.
pub(crate) const PROPAGATIONS: &[(&str, &str)] = &[
    ("REQUIRED", "Required"),
    ("REQUIRES_NEW", "RequiresNew"),
    ("NESTED", "Nested"),
    ("SUPPORTS", "Supports"),
    ("NOT_SUPPORTED", "NotSupported"),
    ("MANDATORY", "Mandatory"),
    ("NEVER", "Never"),
];

/// Spring's spelling of each isolation level and the runtime's variant for it.
pub(crate) const ISOLATIONS: &[(&str, &str)] = &[
    ("READ_UNCOMMITTED", "ReadUncommitted"),
    ("READ_COMMITTED", "ReadCommitted"),
    ("REPEATABLE_READ", "RepeatableRead"),
    ("SERIALIZABLE", "Serializable"),
    ("DEFAULT", "Default"),
];
