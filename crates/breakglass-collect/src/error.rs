//! Why an inventory could not be read.

/// An inventory read failed. Each variant names the place and the rule;
/// none carries a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read inventory file: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// The CSV header is not the documented one.
    #[error("{location}: inventory header is wrong: {rule}")]
    Header {
        /// `file:line`.
        location: String,
        /// What is wrong and what is expected.
        rule: String,
    },
    /// One row cannot be read at all.
    #[error("{location}: field {field:?}: {rule}")]
    Row {
        /// `file:line` or `view row N`.
        location: String,
        /// The column header, or `row` for the whole row.
        field: String,
        /// What is wrong.
        rule: String,
    },
    /// The database could not be reached or queried.
    #[error("{source_name}: {reason}")]
    Database {
        /// The source, password masked.
        source_name: String,
        /// The driver's reason, scrubbed of the connection URL.
        reason: String,
    },
}

impl CollectError {
    /// True when retrying later may help (a database that is down), false
    /// when the input itself is wrong.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database { .. } | Self::Io { .. })
    }
}
