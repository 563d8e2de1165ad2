//! The reading side of a destination: what `fetch`, `verify` and `drill`
//! need, with list + read rights only (the break-glass account).
//!
//! [`latest_backup`] finds the newest breakglass object under the prefix in
//! any rotation mode; [`AnyDestination::download`] writes it to a private
//! file while hashing it; [`check_download`] compares what arrived with the
//! object's own metadata and the sidecar manifest, and says which one it
//! trusted.

use crate::manifest::{self, Manifest};
use crate::naming::{AGE_EXTENSION, FIXED_NAME, NAME_PREFIX, is_rotated_name};
use crate::{AnyDestination, Backend, StorageError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::path::Path;

/// One object under the prefix, as the listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// Full key (with the prefix).
    pub key: String,
    /// The name under the prefix.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When the storage last wrote it.
    pub last_modified: Option<DateTime<Utc>>,
}

/// What a download produced.
#[derive(Clone, Debug)]
pub struct Downloaded {
    /// Bytes written.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes written.
    pub sha256: String,
    /// The object's breakglass metadata, names without their prefix
    /// (`sha256`, `run_id`...); empty for a local folder.
    pub metadata: HashMap<String, String>,
}

pub(crate) use breakglass_core::private_fs::HashingFile;

/// True for the names of stored workbooks (any rotation), not sidecars.
pub fn is_backup_name(name: &str) -> bool {
    name == FIXED_NAME || name == format!("{NAME_PREFIX}{AGE_EXTENSION}") || is_rotated_name(name)
}

/// When a backup's run made it: the timestamp in a rotated name (so a slow
/// upload of an older run never outranks a newer run), else the time the
/// storage last wrote the fixed `overwrite` name.
fn made_at(object: &StoredObject) -> Option<DateTime<Utc>> {
    object
        .name
        .strip_prefix(NAME_PREFIX)
        .and_then(|rest| rest.strip_prefix('-'))
        .filter(|_| is_rotated_name(&object.name))
        .and_then(|rest| rest.get(..16))
        .and_then(|stamp| chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok())
        .map(|naive| naive.and_utc())
        .or(object.last_modified)
}

/// The newest backup in a listing, by [`made_at`]; among equal times the
/// greatest name.
pub fn latest_backup(objects: &[StoredObject]) -> Option<&StoredObject> {
    objects
        .iter()
        .filter(|object| is_backup_name(&object.name))
        .max_by(|a, b| {
            made_at(a)
                .cmp(&made_at(b))
                .then_with(|| a.name.cmp(&b.name))
        })
}

impl AnyDestination {
    /// Every object directly under the prefix.
    pub async fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError> {
        Backend::list(self).await
    }

    /// Downloads `key` into the new private file `to`.
    pub async fn download(&self, key: &str, to: &Path) -> Result<Downloaded, StorageError> {
        let result = Backend::download(self, key, to).await;
        if result.is_err() {
            let _ = std::fs::remove_file(to);
        }
        result
    }

    /// The sidecar manifest of the backup at `key`: `Ok(None)` when there
    /// is none, an error when it is there but unreadable.
    pub async fn sidecar(&self, key: &str) -> Result<Option<Manifest>, StorageError> {
        let sidecar = manifest::sidecar_name(key);
        let limit = breakglass_core::limits::MAX_MANIFEST_BYTES;
        let bytes = Backend::get_small(self, &sidecar, limit).await?;
        bytes
            .map(|bytes| {
                Manifest::from_json(&bytes).map_err(|err| StorageError::Verification {
                    destination: Backend::describe(self),
                    reason: format!("{sidecar}: {err}"),
                })
            })
            .transpose()
    }
}

/// The outcome of [`check_download`]: the manifest the bytes match, and
/// what a careful reader should know.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The manifest that describes the downloaded bytes (the sidecar's when
    /// it matches, with its per-project counts; else the metadata's).
    pub manifest: Manifest,
    /// Things that did not stop the check (a missing or stale sidecar).
    pub warnings: Vec<String>,
}

/// Why a download cannot be trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// No manifest at all: neither metadata nor sidecar.
    #[error("{object} carries no manifest (no breakglass metadata and no {object}{suffix}): it cannot be verified", suffix = manifest::SIDECAR_SUFFIX)]
    NoManifest {
        /// The object's name.
        object: String,
    },
    /// The bytes differ from what the manifest recorded.
    #[error(
        "{object} does not match its manifest: expected {expected_size} bytes with SHA-256 {expected_sha256}, got {size} bytes with SHA-256 {sha256} (truncated, altered, or replaced by an upload in progress: fetch it again; if it persists, use an older copy)"
    )]
    Mismatch {
        /// The object's name.
        object: String,
        /// Size recorded.
        expected_size: u64,
        /// SHA-256 recorded.
        expected_sha256: String,
        /// Size received.
        size: u64,
        /// SHA-256 received.
        sha256: String,
    },
    /// A manifest is present but malformed.
    #[error("{object}: {problem}")]
    BadManifest {
        /// The object's name.
        object: String,
        /// What is wrong.
        problem: String,
    },
}

/// Checks downloaded bytes against the object's metadata and its sidecar.
///
/// The metadata travels with the object in the same response, so it is the
/// reference when present; a sidecar that disagrees with it is from another
/// run (a race with an upload, or a lost sidecar write) and only warned
/// about. Without metadata (a local folder, a copied file) the sidecar is
/// the reference.
pub fn check_download(
    object: &str,
    downloaded: &Downloaded,
    sidecar: Option<Manifest>,
) -> Result<Checked, IntegrityError> {
    let mut warnings = Vec::new();
    let from_metadata = if downloaded.metadata.is_empty() {
        None
    } else {
        Some(
            Manifest::from_metadata(object, &downloaded.metadata).map_err(|err| {
                IntegrityError::BadManifest {
                    object: object.to_owned(),
                    problem: err.to_string(),
                }
            })?,
        )
    };
    let manifest = match (from_metadata, sidecar) {
        (None, None) => {
            return Err(IntegrityError::NoManifest {
                object: object.to_owned(),
            });
        }
        (Some(meta), Some(side)) if side.sha256 == meta.sha256 && side.size == meta.size => side,
        (Some(meta), Some(side)) => {
            warnings.push(format!(
                "the sidecar manifest describes run {} but the object carries run {}; checked against the object's own metadata",
                side.run_id, meta.run_id
            ));
            meta
        }
        (Some(meta), None) => {
            warnings.push(format!(
                "no sidecar manifest ({object}{}); checked against the object's metadata, without per-project counts",
                manifest::SIDECAR_SUFFIX
            ));
            meta
        }
        (None, Some(side)) => side,
    };
    verify_bytes(object, &manifest, downloaded.size, &downloaded.sha256)?;
    Ok(Checked { manifest, warnings })
}

/// Compares a file's size and SHA-256 with a manifest.
pub fn verify_bytes(
    object: &str,
    manifest: &Manifest,
    size: u64,
    sha256: &str,
) -> Result<(), IntegrityError> {
    if manifest.size != size || !manifest.sha256.eq_ignore_ascii_case(sha256) {
        return Err(IntegrityError::Mismatch {
            object: object.to_owned(),
            expected_size: manifest.size,
            expected_sha256: manifest.sha256.clone(),
            size,
            sha256: sha256.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, minute: u32) -> StoredObject {
        StoredObject {
            key: format!("team/{name}"),
            name: name.into(),
            size: 1,
            last_modified: DateTime::from_timestamp(1_795_737_600 + i64::from(minute) * 60, 0),
        }
    }

    #[test]
    fn the_newest_backup_is_chosen_and_sidecars_are_ignored() {
        let listing = vec![
            object("breakglass-backup.xlsx", 1),
            object("breakglass-backup-20261127T030000Z-b.xlsx", 3),
            object("breakglass-backup-20261127T030000Z-b.xlsx.manifest.json", 4),
            object("notes.txt", 9),
        ];
        assert_eq!(
            latest_backup(&listing).unwrap().name,
            "breakglass-backup-20261127T030000Z-b.xlsx"
        );
        assert!(latest_backup(&listing[2..]).is_none());
        // An older run whose upload finished later does not win.
        let raced = vec![
            object("breakglass-backup-20261127T040000Z-new.xlsx", 1),
            object("breakglass-backup-20261127T030000Z-old.xlsx", 9),
        ];
        assert_eq!(
            latest_backup(&raced).unwrap().name,
            "breakglass-backup-20261127T040000Z-new.xlsx"
        );
        assert!(is_backup_name("breakglass-backup.xlsx.age"));
    }

    fn manifest(sha: &str) -> Manifest {
        Manifest {
            version: manifest::MANIFEST_VERSION,
            object: "breakglass-backup.xlsx".into(),
            run_id: format!("run-{sha}"),
            created_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            size: 3,
            sha256: sha.into(),
            format: "xlsx".into(),
            encryption: "none".into(),
            key_id: String::new(),
            rows: 1,
            projects: vec![],
        }
    }

    fn downloaded(sha: &str, with_metadata: Option<&Manifest>) -> Downloaded {
        Downloaded {
            size: 3,
            sha256: sha.into(),
            metadata: with_metadata
                .map(|m| {
                    m.metadata()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    #[test]
    fn metadata_is_the_reference_and_a_stale_sidecar_is_a_warning() {
        let meta = manifest("aaa");
        let checked =
            check_download("o", &downloaded("aaa", Some(&meta)), Some(manifest("bbb"))).unwrap();
        assert_eq!(checked.manifest.sha256, "aaa");
        assert!(
            checked.warnings[0].contains("run-bbb"),
            "{:?}",
            checked.warnings
        );
        let checked = check_download("o", &downloaded("aaa", None), Some(meta.clone())).unwrap();
        assert!(checked.warnings.is_empty());
    }

    #[test]
    fn tampered_bytes_and_missing_manifests_are_refused() {
        let meta = manifest("aaa");
        let err = check_download("o", &downloaded("ccc", Some(&meta)), None).unwrap_err();
        assert!(matches!(err, IntegrityError::Mismatch { .. }), "{err}");
        let err = check_download("o", &downloaded("aaa", None), None).unwrap_err();
        assert!(matches!(err, IntegrityError::NoManifest { .. }), "{err}");
    }
}
