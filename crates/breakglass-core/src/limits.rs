//! How much of anything that comes from outside is read: one place for
//! every size limit, and a file reader that keeps to them.
//!
//! Config files, PEM files, sidecar manifests, identity and token files
//! and gRPC requests are all small when they are what they claim to be. A
//! file or request far bigger than that is a mistake or an attack (a
//! manifest planted in a bucket, `/dev/zero` as a `ca_bundle`), and
//! reading it whole would cost the process its memory. Each reader stops
//! at its limit and says which file, how big and what the limit is
//! (docs/CLI_SAFETY.md lists them).

use std::io::Read;
use std::path::Path;

/// One MiB, the unit the limits are written in.
pub const MIB: u64 = 1 << 20;

/// A `key: value` config file (the service secret, a reader's config).
pub const MAX_CONFIG_FILE_BYTES: u64 = MIB;
/// A PEM file: `ca_bundle`, `grpc_tls_cert` / `_key` / `grpc_client_ca`,
/// the CLI's `--grpc-ca` / `--grpc-cert` / `--grpc-key`, and the database
/// TLS files (`sslrootcert`, `sslcert`, `sslkey`). A bundle of every public
/// root CA is about 200 KiB.
pub const MAX_PEM_FILE_BYTES: u64 = MIB;
/// A sidecar manifest (`*.manifest.json`), read from a file or a bucket.
/// It lists every project (about 130 bytes each): 10,000 projects need
/// about 1.3 MiB, so the limit leaves room for 100,000.
pub const MAX_MANIFEST_BYTES: u64 = 16 * MIB;
/// A one-line secret file: a passphrase file, a token file, an age
/// identity file.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// One gRPC request message a service decodes (config API, run history,
/// destination Test); every request is a few KiB of settings at most.
pub const MAX_GRPC_REQUEST_BYTES: usize = MIB as usize;

/// Why a bounded file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file is larger than its limit.
    #[error("{what} {path}: {} is over the limit of {}", size_text(*.size, *.exact), bytes(*.limit))]
    TooLarge {
        /// What the file is for (a setting or flag name).
        what: String,
        /// The path.
        path: String,
        /// Its size in bytes (or how much was read before stopping).
        size: u64,
        /// Whether `size` is the file's whole size.
        exact: bool,
        /// The limit in bytes.
        limit: u64,
    },
    /// The file cannot be opened or read.
    #[error("{what} {path}: cannot be read: {reason}")]
    Io {
        /// What the file is for.
        what: String,
        /// The path.
        path: String,
        /// The operating system's reason.
        reason: String,
        /// Its kind, for callers that treat "not found" apart.
        kind: std::io::ErrorKind,
    },
    /// The file is not UTF-8 text.
    #[error("{what} {path}: is not UTF-8 text")]
    NotText {
        /// What the file is for.
        what: String,
        /// The path.
        path: String,
    },
}

impl ReadError {
    /// The message without the file's name and path, for callers that
    /// name the field themselves: `is 2 MiB, over the limit of 1 MiB`,
    /// `cannot be read: …`.
    pub fn rule(&self) -> String {
        match self {
            Self::TooLarge {
                size, exact, limit, ..
            } => format!(
                "is {}, over the limit of {}",
                size_text(*size, *exact),
                bytes(*limit)
            ),
            Self::Io { reason, .. } => format!("cannot be read: {reason}"),
            Self::NotText { .. } => "is not UTF-8 text".to_owned(),
        }
    }
}

fn size_text(size: u64, exact: bool) -> String {
    if exact {
        bytes(size)
    } else {
        format!("more than {}", bytes(size))
    }
}

/// `1 MiB`, `64 KiB`, `2,097,152 bytes` (sizes that are not whole units).
pub fn bytes(n: u64) -> String {
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

/// Reads `path` whole when it holds at most `limit` bytes; `what` names
/// the file in errors (`ca_bundle`, `--grpc-ca`, `the manifest`). Also safe
/// on pipes and device files: it never reads more than `limit + 1` bytes.
pub fn read_file(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, ReadError> {
    let io = |err: std::io::Error| ReadError::Io {
        what: what.to_owned(),
        path: path.display().to_string(),
        reason: err.to_string(),
        kind: err.kind(),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let too_large = |size: u64, exact: bool| ReadError::TooLarge {
        what: what.to_owned(),
        path: path.display().to_string(),
        size,
        exact,
        limit,
    };
    if let Ok(metadata) = file.metadata()
        && metadata.is_file()
        && metadata.len() > limit
    {
        return Err(too_large(metadata.len(), true));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit, false));
    }
    Ok(bytes)
}

/// [`read_file`] for text files.
pub fn read_text(path: &Path, limit: u64, what: &str) -> Result<String, ReadError> {
    String::from_utf8(read_file(path, limit, what)?).map_err(|_| ReadError::NotText {
        what: what.to_owned(),
        path: path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_over_the_limit_are_refused_naming_file_size_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.pem");
        std::fs::write(&path, vec![b'a'; 2048]).unwrap();
        assert_eq!(read_file(&path, 2048, "ca_bundle").unwrap().len(), 2048);
        let err = read_file(&path, 1024, "ca_bundle").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "ca_bundle {}: 2 KiB is over the limit of 1 KiB",
                path.display()
            )
        );
        assert_eq!(err.rule(), "is 2 KiB, over the limit of 1 KiB");
        let err = read_text(&dir.path().join("none"), 10, "the manifest").unwrap_err();
        assert!(
            matches!(
                err,
                ReadError::Io {
                    kind: std::io::ErrorKind::NotFound,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn endless_files_are_cut_at_the_limit() {
        // /dev/zero has no size: the reader stops one byte past the limit.
        let err = read_file(Path::new("/dev/zero"), MIB, "ca_bundle").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ca_bundle /dev/zero: more than 1 MiB is over the limit of 1 MiB"
        );
        assert_eq!(bytes(3 * MIB + 1), "3145729 bytes");
    }
}
