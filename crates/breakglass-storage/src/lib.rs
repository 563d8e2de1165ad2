//! Where the workbook ends up: the [`Backend`] trait, the one upload
//! sequence above it, and the backends.
//!
//! # Layout
//! - [`Backend`]: the whole backend, as primitives: verified puts (with a
//!   create-only mode), `head` with breakglass's metadata, list, download,
//!   small reads, delete. Every backend implements only this.
//! - [`store`]: THE upload sequence, written once above [`Backend`]: name,
//!   redelivery check, the "an older run never replaces a newer copy"
//!   rule, verified put, sidecar, prune after verify (invariant 1).
//! - [`deliver`]: every configured destination for one run, each retried
//!   within a time budget, and the run's outcome; the uploader and
//!   `run-once` both call [`deliver::store_all`].
//! - [`Destination`]: `describe` + `upload` (the sequence), for every
//!   backend.
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
pub mod deliver;
pub mod local;
pub mod manifest;
pub mod naming;
pub mod probe_support;
pub mod s3;
pub mod store;
mod transport;

use archive::{Downloaded, StoredObject};
use breakglass_config::{Rotation, Settings, StorageKind};
use chrono::{DateTime, Utc};
use std::future::Future;
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
    /// The destination already held this run's verified copy (same name,
    /// size, SHA-256 and collection time): nothing was sent again (a
    /// redelivery).
    pub already_stored: bool,
}

/// How a put treats a name that is already taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it atomically (readers see the old or the new whole file).
    Overwrite,
    /// Never replace it: a taken name is [`StorageError::Exists`] (S3
    /// `If-None-Match: *`, Azure `If-None-Match: *`, local
    /// `persist_noclobber`). Works with a create-only credential.
    CreateOnly,
}

impl PutMode {
    /// The mode a rotation writes its workbook with.
    pub fn for_rotation(rotation: Rotation) -> Self {
        match rotation {
            Rotation::Overwrite => Self::Overwrite,
            Rotation::Unique | Rotation::Prune => Self::CreateOnly,
        }
    }
}

/// What a backend knows about one stored object, from its metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Stored size in bytes.
    pub size: u64,
    /// The SHA-256 breakglass recorded (S3/Azure metadata) or computed
    /// (a local file); `None` for an object breakglass did not write.
    pub sha256: Option<String>,
    /// When the run that wrote it collected its inventory (metadata, or
    /// a local file's modification time, which breakglass stamps).
    pub created_at: Option<DateTime<Utc>>,
}

impl ObjectMeta {
    /// An object of `size` bytes with the (normalised) metadata breakglass
    /// writes: its `sha256` and `created_at` (RFC 3339). S3 and Azure both
    /// read a head this way.
    pub fn from_metadata(size: u64, metadata: &std::collections::HashMap<String, String>) -> Self {
        Self {
            size,
            sha256: metadata.get("sha256").cloned(),
            created_at: metadata
                .get("created_at")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        }
    }
}

/// The whole storage backend, as primitives. The upload sequence
/// ([`store::store`]) is written once above it; backends implement only
/// these, each put verified as the backend allows (a local file hashed on
/// disk; S3 Content-MD5 and ETag; Azure Content-MD5 and block MD5s).
///
/// Keys are full object keys (prefix included, as [`Backend::list`] gives
/// them); [`Backend::key`] makes one from a file name.
pub trait Backend: Send + Sync {
    /// A description without secrets, e.g. `local:/var/backups/breakglass`.
    fn describe(&self) -> String;

    /// The rotation this destination was configured with.
    fn rotation(&self) -> Rotation;

    /// The key of file `name` under the configured prefix.
    fn key(&self, name: &str) -> String;

    /// Where `key` is, for people: a path or URL without secrets.
    fn location(&self, key: &str) -> String;

    /// Stores the file of `upload` under `key`, verified; the previous
    /// object under `key` is untouched unless the new one is whole.
    fn put_file(
        &self,
        key: &str,
        upload: &Upload<'_>,
        mode: PutMode,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// Stores a small object (a sidecar manifest), verified.
    fn put_small(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &'static str,
        mode: PutMode,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;

    /// The object's size and breakglass metadata; `None` when there is no
    /// such object, or when the credential may not read it (a write-only
    /// or create-only credential: the caller cannot tell, and says so).
    fn head(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<ObjectMeta>, StorageError>> + Send;

    /// Every object directly under the prefix.
    fn list(&self) -> impl Future<Output = Result<Vec<StoredObject>, StorageError>> + Send;

    /// Downloads `key` into the new private file `to`, hashing on the way.
    fn download(
        &self,
        key: &str,
        to: &Path,
    ) -> impl Future<Output = Result<Downloaded, StorageError>> + Send;

    /// A small object's bytes (at most `limit`), or `None` when absent.
    fn get_small(
        &self,
        key: &str,
        limit: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StorageError>> + Send;

    /// Deletes `key`; an absent key is fine.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StorageError>> + Send;
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

/// A place that keeps the latest workbook: any [`Backend`] with the one
/// upload sequence ([`store::store`]) on top.
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

impl<B: Backend> Destination for B {
    fn describe(&self) -> String {
        Backend::describe(self)
    }

    async fn upload(&self, upload: &Upload<'_>) -> Result<Receipt, StorageError> {
        store::store(self, upload).await
    }
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

/// Calls the same method on whichever backend `self` is.
macro_rules! each {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyDestination::Local(inner) => {
                let $b: &local::LocalFolder = inner;
                $call
            }
            AnyDestination::S3(inner) => {
                let $b: &s3::S3Bucket = inner;
                $call
            }
            AnyDestination::Blob(inner) => {
                let $b: &azure::AzureContainer = inner;
                $call
            }
        }
    };
}

impl Backend for AnyDestination {
    fn describe(&self) -> String {
        each!(self, b => Backend::describe(b))
    }

    fn rotation(&self) -> Rotation {
        each!(self, b => Backend::rotation(b))
    }

    fn key(&self, name: &str) -> String {
        each!(self, b => Backend::key(b, name))
    }

    fn location(&self, key: &str) -> String {
        each!(self, b => Backend::location(b, key))
    }

    async fn put_file(
        &self,
        key: &str,
        upload: &Upload<'_>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        each!(self, b => Backend::put_file(b, key, upload, mode).await)
    }

    async fn put_small(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &'static str,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        each!(self, b => Backend::put_small(b, key, bytes, content_type, mode).await)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        each!(self, b => Backend::head(b, key).await)
    }

    async fn list(&self) -> Result<Vec<StoredObject>, StorageError> {
        each!(self, b => Backend::list(b).await)
    }

    async fn download(&self, key: &str, to: &Path) -> Result<Downloaded, StorageError> {
        each!(self, b => Backend::download(b, key, to).await)
    }

    async fn get_small(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StorageError> {
        each!(self, b => Backend::get_small(b, key, limit).await)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        each!(self, b => Backend::delete(b, key).await)
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
