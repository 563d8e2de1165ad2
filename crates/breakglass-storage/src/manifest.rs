//! The manifest: what a stored backup is, so a reader can check it without
//! trusting the transport or the storage.
//!
//! Every upload carries it twice (DESIGN.md §4, issue #6):
//! - as object metadata (`breakglass-*` / `breakglass_*`): run id, creation
//!   time, size, SHA-256 of the stored bytes, format, encryption, key id and
//!   the total row and project counts. It travels with the object itself,
//!   so a download can be checked against the very metadata of the object
//!   it fetched, even when the sidecar is from another run;
//! - as a small JSON sidecar object next to it (`<object name>.manifest.json`)
//!   that adds the row count of every project, for `verify` and `drill`.
//!
//! The manifest holds no secret: the key id names which passphrase or age
//! identity opens the file without revealing it.

use crate::Upload;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The ending of a sidecar manifest's name.
pub const SIDECAR_SUFFIX: &str = ".manifest.json";
/// The manifest format version; bump on incompatible changes.
pub const MANIFEST_VERSION: u32 = 1;

/// The row count of one project in the stored workbook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRows {
    /// The project name as the inventory spells it.
    pub project: String,
    /// The workbook tabs that hold its rows.
    pub sheets: Vec<String>,
    /// Its device rows.
    pub rows: u64,
}

/// Everything a reader needs to check one stored backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The object's file name (without the prefix).
    pub object: String,
    /// The run that made it.
    pub run_id: String,
    /// When the run collected the inventory (RFC 3339 in the JSON).
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Stored size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Always `xlsx`.
    pub format: String,
    /// `password`, `age` or `none`.
    pub encryption: String,
    /// Which key opens it, without revealing it (see `encrypt::key_id`).
    pub key_id: String,
    /// Device rows in all.
    pub rows: u64,
    /// Rows per project, in workbook order.
    pub projects: Vec<ProjectRows>,
}

/// Why a manifest or its metadata could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The sidecar is not a manifest.
    #[error("the manifest is not valid JSON of version {MANIFEST_VERSION}: {0}")]
    Json(String),
    /// The sidecar is bigger than any manifest of a real backup.
    #[error(
        "the manifest is {} bytes, over the limit of {}",
        .0,
        breakglass_core::limits::bytes(breakglass_core::limits::MAX_MANIFEST_BYTES)
    )]
    TooLarge(usize),
    /// A metadata field is missing or malformed.
    #[error("object metadata {field}: {problem}")]
    Metadata {
        /// The field, without its `breakglass-` prefix.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

impl Manifest {
    /// The manifest of `upload` stored under `object` (its file name).
    pub fn for_upload(upload: &Upload<'_>, object: &str) -> Self {
        Self {
            version: MANIFEST_VERSION,
            object: object.to_owned(),
            run_id: upload.run_id.to_owned(),
            created_at: upload.created_at,
            size: upload.size,
            sha256: upload.sha256.to_owned(),
            format: "xlsx".to_owned(),
            encryption: upload.encryption.to_owned(),
            key_id: upload.key_id.to_owned(),
            rows: upload.projects.iter().map(|p| p.rows).sum(),
            projects: upload.projects.to_vec(),
        }
    }

    /// The sidecar's bytes (pretty JSON, for people who open it).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses a sidecar of at most
    /// [`MAX_MANIFEST_BYTES`](breakglass_core::limits::MAX_MANIFEST_BYTES).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() as u64 > breakglass_core::limits::MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let manifest: Self =
            serde_json::from_slice(bytes).map_err(|err| ManifestError::Json(err.to_string()))?;
        if manifest.version != MANIFEST_VERSION {
            return Err(ManifestError::Json(format!(
                "version {} is not supported",
                manifest.version
            )));
        }
        Ok(manifest)
    }

    /// The object metadata (names without the provider's separator style:
    /// `run_id`, `sha256`...). Backends prefix them with `breakglass-` (S3)
    /// or `breakglass_` (Azure).
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        vec![
            ("run_id", self.run_id.clone()),
            ("sha256", self.sha256.clone()),
            ("size", self.size.to_string()),
            ("created_at", self.created_at.to_rfc3339()),
            ("format", self.format.clone()),
            ("encryption", self.encryption.clone()),
            ("key_id", self.key_id.clone()),
            ("rows", self.rows.to_string()),
            ("projects", self.projects.len().to_string()),
        ]
    }

    /// Rebuilds the summary from an object's metadata (names as
    /// [`Manifest::metadata`] gives them); per-project counts stay empty.
    pub fn from_metadata(
        object: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<Self, ManifestError> {
        let get = |field: &'static str| {
            metadata.get(field).cloned().ok_or(ManifestError::Metadata {
                field,
                problem: "missing (not a breakglass object, or written before manifests)".into(),
            })
        };
        let number = |field: &'static str| {
            get(field)?
                .parse::<u64>()
                .map_err(|err| ManifestError::Metadata {
                    field,
                    problem: err.to_string(),
                })
        };
        let created_at = DateTime::parse_from_rfc3339(&get("created_at")?)
            .map_err(|err| ManifestError::Metadata {
                field: "created_at",
                problem: err.to_string(),
            })?
            .with_timezone(&Utc);
        Ok(Self {
            version: MANIFEST_VERSION,
            object: object.to_owned(),
            run_id: get("run_id")?,
            created_at,
            size: number("size")?,
            sha256: get("sha256")?,
            format: get("format")?,
            encryption: get("encryption")?,
            key_id: metadata.get("key_id").cloned().unwrap_or_default(),
            rows: metadata
                .get("rows")
                .and_then(|rows| rows.parse().ok())
                .unwrap_or_default(),
            projects: Vec::new(),
        })
    }
}

/// `DateTime<Utc>` as RFC 3339 text, without turning on chrono's serde
/// feature for the whole workspace.
mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// The sidecar's name for an object name (`breakglass-backup.xlsx` →
/// `breakglass-backup.xlsx.manifest.json`).
pub fn sidecar_name(object: &str) -> String {
    format!("{object}{SIDECAR_SUFFIX}")
}

/// Strips a backend's metadata prefix (`breakglass-` or `breakglass_`) and
/// drops foreign entries, so both backends compare the same names.
pub fn normalise_metadata<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> HashMap<String, String> {
    entries
        .into_iter()
        .filter_map(|(name, value)| {
            let name = name.to_ascii_lowercase();
            let field = name
                .strip_prefix("breakglass-")
                .or_else(|| name.strip_prefix("breakglass_"))?
                .replace('-', "_");
            Some((field, value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            object: "breakglass-backup.xlsx".into(),
            run_id: "run-1".into(),
            created_at: DateTime::parse_from_rfc3339("2026-11-27T03:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            size: 1234,
            sha256: "ab".repeat(32),
            format: "xlsx".into(),
            encryption: "password".into(),
            key_id: "passphrase 0a1b2c3d".into(),
            rows: 3,
            projects: vec![ProjectRows {
                project: "東京".into(),
                sheets: vec!["東京".into()],
                rows: 3,
            }],
        }
    }

    #[test]
    fn the_sidecar_round_trips() {
        let manifest = manifest();
        assert_eq!(Manifest::from_json(&manifest.to_json()).unwrap(), manifest);
    }

    #[test]
    fn metadata_round_trips_the_summary_through_both_prefix_styles() {
        let manifest = manifest();
        for separator in ["-", "_"] {
            let stored: Vec<(String, String)> = manifest
                .metadata()
                .into_iter()
                .map(|(name, value)| {
                    (
                        format!("breakglass{separator}{}", name.replace('_', separator)),
                        value,
                    )
                })
                .chain([("content-type".to_owned(), "x".to_owned())])
                .collect();
            let normalised =
                normalise_metadata(stored.iter().map(|(n, v)| (n.as_str(), v.as_str())));
            let back = Manifest::from_metadata(&manifest.object, &normalised).unwrap();
            assert_eq!(
                back,
                Manifest {
                    projects: Vec::new(),
                    ..manifest.clone()
                }
            );
        }
    }

    #[test]
    fn missing_metadata_names_the_field() {
        let err = Manifest::from_metadata("x", &HashMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("created_at") || err.to_string().contains("run_id"),
            "{err}"
        );
    }

    #[test]
    fn a_foreign_version_is_refused() {
        let mut value: serde_json::Value = serde_json::from_slice(&manifest().to_json()).unwrap();
        value["version"] = 99.into();
        let err = Manifest::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("99"), "{err}");
    }

    #[test]
    fn an_oversized_sidecar_is_refused_before_parsing() {
        let mut value: serde_json::Value = serde_json::from_slice(&manifest().to_json()).unwrap();
        let limit = breakglass_core::limits::MAX_MANIFEST_BYTES as usize;
        value["padding"] = "x".repeat(limit).into();
        let err = Manifest::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::TooLarge(_)), "{err}");
        assert!(err.to_string().contains("16 MiB"), "{err}");
    }

    #[tokio::test]
    async fn an_oversized_sidecar_in_a_folder_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let folder = crate::local_destination(dir.path(), breakglass_config::Rotation::Unique);
        let crate::AnyDestination::Local(local) = &folder else {
            unreachable!("a local destination")
        };
        std::fs::write(
            dir.path().join(sidecar_name("b.xlsx")),
            vec![b' '; breakglass_core::limits::MAX_MANIFEST_BYTES as usize + 1],
        )
        .unwrap();
        let err = folder.sidecar("b.xlsx").await.unwrap_err();
        assert!(
            err.to_string().contains("over the limit of 16 MiB"),
            "{err}"
        );
        assert!(local.get_small("absent", 10).unwrap().is_none());
    }
}
