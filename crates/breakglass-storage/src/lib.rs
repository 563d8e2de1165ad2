//! Where the workbook ends up: the [`Destination`] trait and its backends.
//!
//! # Layout
//! - [`Destination`]: upload one finished file, verified by size and
//!   SHA-256, under the configured rotation; never disturb the previous
//!   good copy unless the new one is verified (invariant 1).
//! - [`manifest`]: what each upload carries as metadata and as a sidecar.
//! - [`archive`]: the reading side (list, download, check) for `fetch`,
//!   `verify` and `drill`, with list + read rights only.
//! - [`naming`]: object names for each rotation mode, shared by backends so
//!   `fetch` finds the newest copy everywhere.
//! - [`local`]: a folder (atomic temp-file + fsync + rename).
//! - [`s3`]: an S3 bucket, AWS or S3-compatible.
//! - [`azure`]: an Azure Blob container (Azure, sovereign clouds, Azurite).
//! - [`probe_support`]: what the destination Test (`breakglass-probe`)
//!   needs: the connection check and classified answers; the per-backend
//!   probes are `s3::probe` and `azure::probe`.
//!
//! This crate knows nothing of NATS.
#![warn(missing_docs)]

pub mod archive;
pub mod azure;
pub mod local;
pub mod manifest;
pub mod naming;
pub mod probe_support;
pub mod s3;
mod transport;

use breakglass_config::{Rotation, Settings, StorageKind};
use chrono::{DateTime, Utc};
use std::path::Path;

/// One file to store, with the facts that verify it.
#[derive(Clone, Debug)]
pub struct Upload<'a> {
    /// The finished file (a private temp file).
    pub file: &'a Path,
    /// Its size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of its content.
    pub sha256: &'a str,
    /// The run that made it; part of unique names.
    pub run_id: &'a str,
    /// When the run made it; part of unique names.
    pub created_at: DateTime<Utc>,
    /// The name's ending: `.xlsx`, or `.xlsx.age` for an age file.
    pub extension: &'a str,
    /// How the file is protected (`password`, `age`, `none`), for metadata.
    pub encryption: &'a str,
    /// Which key opens it, without revealing it, for the manifest.
    pub key_id: &'a str,
    /// Rows per project, for the manifest.
    pub projects: &'a [manifest::ProjectRows],
}

/// Where a verified upload went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Path or object key of the stored file.
    pub location: String,
    /// Stored size, as verified.
    pub size: u64,
    /// Stored SHA-256, as verified.
    pub sha256: String,
    /// Older copies removed by `prune` rotation.
    pub pruned: Vec<String>,
    /// Problems after the copy was stored and verified (e.g. an old copy
    /// that could not be pruned): worth telling, not a failed upload.
    pub warnings: Vec<String>,
}

/// Why an upload failed. The previous good copy is untouched in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The destination could not be written.
    #[error("{destination}: {action} failed: {reason}")]
    Io {
        /// The destination, described without secrets.
        destination: String,
        /// What was being done.
        action: &'static str,
        /// The reason.
        reason: String,
    },
    /// What was stored does not match what was sent.
    #[error("{destination}: verification failed: {reason}; the previous copy was kept")]
    Verification {
        /// The destination.
        destination: String,
        /// Expected versus found.
        reason: String,
    },
    /// The destination already holds a copy made by a newer run; it was
    /// kept, and this older run's file was not stored.
    #[error(
        "{destination}: a newer backup (collected at {newer}) is already in place; it was kept"
    )]
    Superseded {
        /// The destination.
        destination: String,
        /// When the newer copy's run collected its inventory (RFC 3339).
        newer: String,
    },
    /// The remote service refused or failed a request.
    #[error("{destination}: {action} failed: {reason}")]
    Remote {
        /// The destination.
        destination: String,
        /// The operation (`PutObject`...).
        action: &'static str,
        /// The service's error code, or `connection` / `HTTP <status>`.
        code: String,
        /// Plain words: what is wrong and what to check. No secrets.
        reason: String,
        /// True for timeouts, connection failures, 5xx and throttling.
        transient: bool,
    },
    /// `unique` rotation found its name taken: never overwrite.
    #[error("{destination}: {name} already exists; unique rotation never overwrites")]
    Exists {
        /// The destination.
        destination: String,
        /// The name that was taken.
        name: String,
    },
}

impl StorageError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Io { .. }
                | Self::Remote {
                    transient: true,
                    ..
                }
        )
    }
}

/// A place that keeps the latest workbook.
pub trait Destination {
    /// A description without secrets, e.g. `local:/var/backups/breakglass`.
    fn describe(&self) -> String;

    /// Stores `upload` under the rotation mode, verifies it, and only then
    /// retires older copies.
    fn upload(
        &self,
        upload: &Upload<'_>,
    ) -> impl std::future::Future<Output = Result<Receipt, StorageError>> + Send;
}

/// Any configured destination.
#[derive(Debug)]
pub enum AnyDestination {
    /// A local folder.
    Local(local::LocalFolder),
    /// An S3 bucket.
    S3(Box<s3::S3Bucket>),
    /// An Azure Blob container.
    Blob(Box<azure::AzureContainer>),
}

impl Destination for AnyDestination {
    fn describe(&self) -> String {
        match self {
            Self::Local(folder) => folder.describe(),
            Self::S3(bucket) => bucket.describe(),
            Self::Blob(container) => container.describe(),
        }
    }

    async fn upload(&self, upload: &Upload<'_>) -> Result<Receipt, StorageError> {
        match self {
            Self::Local(folder) => folder.upload(upload).await,
            Self::S3(bucket) => bucket.upload(upload).await,
            Self::Blob(container) => container.upload(upload).await,
        }
    }
}

/// Every destination the settings name, in order.
pub fn destinations(settings: &Settings) -> Vec<AnyDestination> {
    settings
        .storage
        .iter()
        .filter_map(|kind| match kind {
            StorageKind::Local => Some(AnyDestination::Local(local::LocalFolder::new(
                settings.local_dir.clone(),
                &settings.path_prefix,
                settings.rotation,
            ))),
            StorageKind::S3 => settings.s3.as_ref().map(|s3| {
                AnyDestination::S3(Box::new(s3::S3Bucket::new(
                    s3,
                    &settings.path_prefix,
                    settings.rotation,
                    settings.ca_bundle.as_ref(),
                )))
            }),
            StorageKind::Blob => settings.blob.as_ref().map(|blob| {
                AnyDestination::Blob(Box::new(azure::AzureContainer::new(
                    blob,
                    &settings.path_prefix,
                    settings.rotation,
                    settings.ca_bundle.as_ref(),
                )))
            }),
        })
        .collect()
}

/// Convenience for callers that build one local destination directly.
pub fn local_destination(dir: &Path, rotation: Rotation) -> AnyDestination {
    AnyDestination::Local(local::LocalFolder::new(dir.to_path_buf(), "", rotation))
}
