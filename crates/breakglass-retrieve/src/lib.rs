//! The emergency path: what the on-call person runs at 3 a.m. with every
//! Mavis service down, and what `drill` rehearses before then.
//!
//! # Layout
//! - [`fetch`]: find the newest backup under the prefix with the break-glass
//!   (list + read) credential, download it, check it against its manifest,
//!   and say how old it is.
//! - [`unseal`]: decrypt a stored file with the passphrase or an age
//!   identity; a wrong key is named as such, with the key id that would open
//!   the file.
//! - [`workbook`]: read a decrypted workbook back (row counts per tab, the
//!   rows of one device) with an independent reader (calamine).
//! - [`drill`]: compare what was read back with the manifest.
//! - [`display`]: inventory values made safe to print on a terminal or in
//!   a tab-separated table (escapes shown, formulas marked).
//!
//! It needs nothing but the storage credential and the passphrase or
//! identity: no NATS, no PostgreSQL, no Mavis. Everything it writes is
//! created `0600`.

pub mod display;
pub mod drill;
pub mod fetch;
pub mod unseal;
pub mod workbook;

/// Why the emergency path stopped. Every message says what to do next and
/// never holds a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RetrieveError {
    /// The storage refused or failed (list, download).
    #[error(transparent)]
    Storage(#[from] breakglass_storage::StorageError),
    /// The download does not match its manifest, or has none.
    #[error(transparent)]
    Integrity(#[from] breakglass_storage::archive::IntegrityError),
    /// A local file (manifest, identity) is unreadable or over its size
    /// limit.
    #[error(transparent)]
    Read(#[from] breakglass_core::limits::ReadError),
    /// Nothing breakglass wrote is under the prefix.
    #[error(
        "no breakglass backup under {place}: check path_prefix, the bucket or container, and that the reader may list it"
    )]
    NoBackup {
        /// The destination and prefix, without secrets.
        place: String,
    },
    /// The passphrase does not open the file.
    #[error("the passphrase does not open {file}: {hint}")]
    WrongPassphrase {
        /// The file.
        file: String,
        /// Which key id the file needs, when known.
        hint: String,
    },
    /// None of the age identities opens the file.
    #[error("none of the age identities given opens {file}: {hint}")]
    WrongIdentity {
        /// The file.
        file: String,
        /// The recipients the file was sealed to, when known.
        hint: String,
    },
    /// The file needs a key that was not given.
    #[error("{file} is encrypted with {encryption}: {what}")]
    KeyNeeded {
        /// The file.
        file: String,
        /// `password` or `age`.
        encryption: String,
        /// Which flag or variable gives it.
        what: String,
    },
    /// The workbook cannot be read (corrupt, not an xlsx).
    #[error("{file} is not a readable workbook: {reason}")]
    Workbook {
        /// The file.
        file: String,
        /// The reader's complaint.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{action} {path}: {reason}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: String,
        /// The reason.
        reason: String,
    },
}

impl RetrieveError {
    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: &std::path::Path, err: impl std::fmt::Display) -> Self {
        Self::Io {
            action,
            path: path.display().to_string(),
            reason: err.to_string(),
        }
    }
}
