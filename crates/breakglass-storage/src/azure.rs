//! An Azure Blob Storage container as destination (Azure, sovereign clouds,
//! Azurite), through Microsoft's maintained `azure_storage_blob` SDK.
//!
//! - Authentication: a SAS token as given, or an account key from which a
//!   short-lived, container-scoped service SAS is signed for each upload
//!   (HMAC-SHA256 over the documented string-to-sign, version 2020-12-06
//!   layout). The SDK itself takes only Entra ID or SAS; signing from the
//!   key keeps the key out of every request.
//! - Small files go as one Put Blob; large ones as Put Block (one block in
//!   memory at a time) and one Put Block List. `unique` rotation uses one
//!   Put Blob up to the service's single-put limit (5000 MiB), because a
//!   create-only SAS (`sp=c`) may not stage blocks.
//! - Verification without read rights: every Put Blob and Put Block carries
//!   `Content-MD5`, which the service checks (`Md5Mismatch`), and the MD5
//!   the service reports back is compared with ours. The SHA-256, size, run
//!   id, creation time and format ride along as blob metadata; the whole
//!   file's MD5 is stored as the blob's `Content-MD5` property.
//! - `unique` and `prune` send `If-None-Match: *`, so a name is never
//!   replaced; `prune` lists and deletes older breakglass blobs only after
//!   the new one is in place, and a failure there is a receipt warning.
//! - Retries: the SDK's exponential back-off (with jitter) on timeouts,
//!   connection errors, 408, 429 and 5xx (503 ServerBusy); never on other
//!   4xx. Bounded in count and total time.
//! - TLS: rustls (ring) with the system roots (which honour
//!   `SSL_CERT_FILE`) plus the configured `ca_bundle`; no OpenSSL.

use crate::archive::{self, Downloaded, StoredObject};
use crate::manifest::{self, Manifest};
use crate::transport::{
    CheckFailure, TlsProblem, TransportFailure, error_chain, explain_transport, io_kind,
    md5_checked, mismatch, read_full, tls_problem,
};
use crate::{Backend, ObjectMeta, PutMode, StorageError, Upload};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    Body, ClientMethodOptions, ClientOptions, Context, ExponentialRetryOptions, HttpClient,
    Request, RetryOptions, Transport, Url,
};
use azure_core::time::Duration as AzureDuration;
use azure_storage_blob::models::{
    BlobContainerClientListBlobsOptions, BlockBlobClientCommitBlockListOptions,
    BlockBlobClientStageBlockOptions, BlockBlobClientUploadOptions, BlockLookupList,
};
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
};
use base64::Engine;
use breakglass_config::{BlobCredential, BlobSettings, CaBundle, Protocol, Rotation};
use breakglass_core::secret::MASK;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use md5::{Digest, Md5};
use std::collections::HashMap;
use std::num::NonZero;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Files up to this size go as one Put Blob in `overwrite` and `prune`.
pub const DEFAULT_SINGLE_PUT_THRESHOLD: u64 = 16 << 20;
/// Size of each staged block.
pub const DEFAULT_BLOCK_SIZE: usize = 8 << 20;
/// The service's limit for one Put Blob (service version 2019-12-12+).
pub const MAX_SINGLE_PUT: u64 = 5000 << 20;
/// The SAS version breakglass signs (2020-12-06 string-to-sign layout).
const SAS_VERSION: &str = "2022-11-02";
/// How long a SAS signed from the account key is valid; its start lies in
/// the past to tolerate some clock skew.
const SAS_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(24);
const SAS_BACKDATE: chrono::TimeDelta = chrono::TimeDelta::minutes(15);
/// Retries after the first attempt.
const MAX_RETRIES: u32 = 3;

const XLSX_CONTENT_TYPE: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

/// An Azure Blob destination.
#[derive(Clone)]
pub struct AzureContainer {
    http: Result<Arc<dyn HttpClient>, String>,
    endpoint: String,
    protocol: Protocol,
    container: String,
    credential: BlobCredential,
    prefix: String,
    rotation: Rotation,
    single_put_threshold: u64,
    block_size: usize,
}

impl std::fmt::Debug for AzureContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureContainer")
            .field("destination", &self.describe())
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

impl AzureContainer {
    /// A client for the configured container. Building touches no network;
    /// a TLS set-up problem is reported by the first upload.
    pub fn new(
        settings: &BlobSettings,
        prefix: &str,
        rotation: Rotation,
        ca_bundle: Option<&CaBundle>,
    ) -> Self {
        Self {
            http: http_client(ca_bundle),
            endpoint: settings.endpoint.clone(),
            protocol: settings.protocol,
            container: settings.container.clone(),
            credential: settings.credential.clone(),
            prefix: prefix.trim_matches('/').to_owned(),
            rotation,
            single_put_threshold: DEFAULT_SINGLE_PUT_THRESHOLD,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }

    /// Changes the single-put / block split (tests use small blocks).
    /// `unique` rotation still puts files up to [`MAX_SINGLE_PUT`] in one
    /// request, so it works with a create-only SAS.
    pub fn with_blocks(mut self, threshold: u64, block_size: usize) -> Self {
        self.single_put_threshold = threshold;
        self.block_size = block_size.max(1);
        self
    }

    /// The blob name for a file name under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// Files up to this size go in one Put Blob.
    fn single_put_limit(&self) -> u64 {
        match self.rotation {
            Rotation::Unique => MAX_SINGLE_PUT,
            Rotation::Overwrite | Rotation::Prune => self.single_put_threshold.min(MAX_SINGLE_PUT),
        }
    }

    /// The SAS query string for this upload: the configured token, or one
    /// signed now from the account key with the rights the rotation needs.
    fn sas(&self, now: DateTime<Utc>) -> Result<breakglass_core::Secret, StorageError> {
        match &self.credential {
            BlobCredential::Sas(token) => Ok(token.clone()),
            BlobCredential::AccountKey { account, key } => {
                let permissions = match self.rotation {
                    Rotation::Overwrite | Rotation::Unique => "cw",
                    Rotation::Prune => "cwdl",
                };
                sign_container_sas(
                    account,
                    key,
                    &self.container,
                    permissions,
                    self.protocol,
                    now,
                )
                .map_err(|reason| StorageError::Io {
                    destination: self.describe(),
                    action: "signing a SAS from the account key",
                    reason,
                })
            }
        }
    }

    fn client_options(&self) -> Result<ClientOptions, StorageError> {
        let http = self.http.clone().map_err(|reason| StorageError::Io {
            destination: self.describe(),
            action: "setting up HTTPS",
            reason,
        })?;
        Ok(ClientOptions {
            transport: Some(Transport::new(http)),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: AzureDuration::milliseconds(500),
                max_retries: MAX_RETRIES,
                max_total_elapsed: AzureDuration::seconds(300),
                max_delay: AzureDuration::seconds(8),
            }),
            per_call_policies: vec![Arc::new(TransactionalMd5Policy)],
            ..Default::default()
        })
    }

    /// The container's URL with the SAS as its query.
    fn container_url(&self, sas: &breakglass_core::Secret) -> Result<Url, StorageError> {
        let invalid = |reason: String| StorageError::Io {
            destination: self.describe(),
            action: "building the container URL",
            reason,
        };
        let mut url = Url::parse(&self.endpoint).map_err(|err| invalid(err.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| invalid("the endpoint cannot hold a path".into()))?
            .pop_if_empty()
            .push(&self.container);
        url.set_query(Some(sas.expose()));
        Ok(url)
    }

    /// The blob's URL: the container's plus one path segment per folder.
    fn blob_url(&self, container_url: &Url, key: &str) -> Result<Url, StorageError> {
        let mut url = container_url.clone();
        url.path_segments_mut()
            .map_err(|()| StorageError::Io {
                destination: self.describe(),
                action: "building the blob URL",
                reason: "the endpoint cannot hold a path".into(),
            })?
            .extend(key.split('/'));
        Ok(url)
    }

    fn blob_client(&self, container_url: &Url, key: &str) -> Result<BlobClient, StorageError> {
        let options = BlobClientOptions {
            client_options: self.client_options()?,
            ..Default::default()
        };
        BlobClient::new(self.blob_url(container_url, key)?, None, Some(options))
            .map_err(|err| self.remote_error("creating the blob client", &err))
    }

    fn container_client(&self, container_url: &Url) -> Result<BlobContainerClient, StorageError> {
        let options = BlobContainerClientOptions {
            client_options: self.client_options()?,
            ..Default::default()
        };
        BlobContainerClient::new(container_url.clone(), None, Some(options))
            .map_err(|err| self.remote_error("creating the container client", &err))
    }

    fn if_none_match(mode: PutMode) -> Option<azure_core::http::Etag> {
        (mode == PutMode::CreateOnly).then(|| "*".into())
    }

    async fn put_single(
        &self,
        blob: &BlobClient,
        key: &str,
        upload: &Upload<'_>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let io = |action: &'static str, err: &dyn std::fmt::Display| StorageError::Io {
            destination: self.describe(),
            action,
            reason: err.to_string(),
        };
        let md5 = md5_checked(upload).map_err(|err| match err {
            CheckFailure::Io(err) => io("reading the workbook", &err),
            CheckFailure::Mismatch(reason) => StorageError::Verification {
                destination: self.describe(),
                reason,
            },
        })?;
        let file = tokio::fs::File::open(upload.file)
            .await
            .map_err(|err| io("opening the workbook", &err))?;
        let stream = azure_storage_blob::stream::tokio::FileStream::builder(file)
            .build()
            .await
            .map_err(|err| io("reading the workbook", &err))?;
        let body = Body::SeekableStream(Box::new(stream));
        let options = BlockBlobClientUploadOptions {
            blob_content_md5: Some(md5.clone()),
            blob_content_type: Some(XLSX_CONTENT_TYPE.into()),
            metadata: Some(metadata(upload)),
            if_none_match: Self::if_none_match(mode),
            // One request whatever the size: never stage blocks here.
            partition_size: NonZero::new(upload.size.max(1)),
            parallel: NonZero::new(1),
            method_options: ClientMethodOptions {
                context: Context::new().with_value(TransactionalMd5(md5.clone())),
            },
            ..Default::default()
        };
        let response = blob
            .block_blob_client()
            .upload(body.into(), Some(options))
            .await
            .map_err(|err| self.put_error_for(mode, "Put Blob", key, &err))?;
        self.check_md5(response.content_md5.as_deref(), &md5, "the blob")
    }

    async fn put_blocks(
        &self,
        blob: &BlobClient,
        key: &str,
        upload: &Upload<'_>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let io = |action: &'static str, err: std::io::Error| StorageError::Io {
            destination: self.describe(),
            action,
            reason: err.to_string(),
        };
        let client = blob.block_blob_client();
        let mut file =
            std::fs::File::open(upload.file).map_err(|err| io("opening the workbook", err))?;
        let mut whole = Md5::new();
        let mut sha = <sha2::Sha256 as sha2::Digest>::new();
        let mut ids = Vec::new();
        let mut sent: u64 = 0;
        for number in 0u32.. {
            // One block in memory at a time: the previous one was sent and
            // dropped before this one is read.
            let mut buffer = vec![0u8; self.block_size];
            let filled =
                read_full(&mut file, &mut buffer).map_err(|err| io("reading the workbook", err))?;
            if filled == 0 {
                break;
            }
            buffer.truncate(filled);
            whole.update(&buffer);
            sha2::Digest::update(&mut sha, &buffer);
            let md5 = Md5::digest(&buffer).to_vec();
            // Fixed-length ids: Azure requires one length per blob.
            let id = format!("breakglass-block-{number:08}").into_bytes();
            let response = client
                .stage_block(
                    &id,
                    filled as u64,
                    bytes::Bytes::from(buffer).into(),
                    Some(BlockBlobClientStageBlockOptions {
                        transactional_content_md5: Some(md5.clone()),
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|err| self.remote_error("Put Block", &err))?;
            let returned = {
                use azure_storage_blob::models::BlockBlobClientStageBlockResultHeaders;
                response.content_md5().ok().flatten()
            };
            self.check_md5(returned.as_deref(), &md5, &format!("block {number}"))?;
            ids.push(id);
            sent += filled as u64;
        }
        let sent_sha = hex::encode(sha2::Digest::finalize(sha));
        if sent != upload.size || !sent_sha.eq_ignore_ascii_case(upload.sha256) {
            // Never committed: the staged blocks expire, the old blob stays.
            return Err(StorageError::Verification {
                destination: self.describe(),
                reason: mismatch(upload, sent, &sent_sha),
            });
        }
        let list = BlockLookupList {
            latest: Some(ids),
            ..Default::default()
        };
        let content = list
            .try_into()
            .map_err(|err| self.remote_error("Put Block List", &err))?;
        client
            .commit_block_list(
                content,
                Some(BlockBlobClientCommitBlockListOptions {
                    blob_content_md5: Some(whole.finalize().to_vec()),
                    blob_content_type: Some(XLSX_CONTENT_TYPE.into()),
                    metadata: Some(metadata(upload)),
                    if_none_match: Self::if_none_match(mode),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|err| self.put_error_for(mode, "Put Block List", key, &err))?;
        Ok(())
    }

    /// Compares the MD5 the service reports with ours. No MD5 in the
    /// response: the service already checked the `Content-MD5` we sent.
    fn check_md5(
        &self,
        returned: Option<&[u8]>,
        expected: &[u8],
        what: &str,
    ) -> Result<(), StorageError> {
        match returned {
            Some(returned) if returned != expected => Err(StorageError::Verification {
                destination: self.describe(),
                reason: format!(
                    "the service stored {what} with MD5 {} but {} was sent",
                    hex::encode(returned),
                    hex::encode(expected)
                ),
            }),
            _ => Ok(()),
        }
    }

    /// A taken name under `unique`/`prune` is [`StorageError::Exists`]:
    /// `BlobAlreadyExists` / `ConditionNotMet` answer `If-None-Match: *`,
    /// and a create-only SAS (`c` without `w`) is refused with
    /// `AuthorizationPermissionMismatch` before the condition is evaluated,
    /// which with `c` granted can only mean the blob exists.
    fn put_error(&self, action: &'static str, key: &str, err: &azure_core::Error) -> StorageError {
        self.put_error_for(PutMode::for_rotation(self.rotation), action, key, err)
    }

    /// [`Self::put_error`] for a put made in `mode`.
    fn put_error_for(
        &self,
        mode: PutMode,
        action: &'static str,
        key: &str,
        err: &azure_core::Error,
    ) -> StorageError {
        let code = error_code(err);
        let status = err.http_status().map(u16::from);
        let create_only_refused = action == "Put Blob"
            && code.as_deref() == Some("AuthorizationPermissionMismatch")
            && self
                .sas_permissions()
                .is_some_and(|sp| sp.contains('c') && !sp.contains('w'));
        if mode == PutMode::CreateOnly
            && (matches!(
                code.as_deref(),
                Some("BlobAlreadyExists" | "ConditionNotMet")
            ) || status == Some(412)
                || create_only_refused)
        {
            return StorageError::Exists {
                destination: self.describe(),
                name: key.into(),
            };
        }
        self.remote_error(action, err)
    }

    /// The `sp` (permissions) of a configured SAS token.
    fn sas_permissions(&self) -> Option<String> {
        match &self.credential {
            BlobCredential::Sas(token) => url::form_urlencoded::parse(token.expose().as_bytes())
                .find(|(name, _)| name == "sp")
                .map(|(_, value)| value.into_owned()),
            BlobCredential::AccountKey { .. } => None,
        }
    }

    /// Maps an SDK error to plain, actionable words without secrets.
    fn remote_error(&self, action: &'static str, err: &azure_core::Error) -> StorageError {
        let code = error_code(err);
        let status = err.http_status().map(u16::from);
        let body = response_text(err);
        tracing::debug!(
            destination = %self.describe(),
            action,
            error = %self.scrub(&format!("{err:?}")),
            "Azure request failed"
        );
        let detail = self.scrub(&error_chain(err));
        if matches!(code.as_deref(), Some("Md5Mismatch" | "InvalidMd5")) {
            return StorageError::Verification {
                destination: self.describe(),
                reason: format!(
                    "the service rejected the data of {action}: its MD5 did not match what was sent ({})",
                    code.unwrap_or_default()
                ),
            };
        }
        let transient = match err.kind() {
            azure_core::error::ErrorKind::Connection | azure_core::error::ErrorKind::Io => true,
            _ => {
                status.is_some_and(|s| s >= 500 || s == 408 || s == 429)
                    || matches!(
                        code.as_deref(),
                        Some("ServerBusy" | "OperationTimedOut" | "InternalError")
                    )
            }
        };
        // Azurite answers a bad signature with AuthorizationFailure and
        // Azure's authentication message; name it for what it is.
        let code = match code {
            Some(c)
                if c == "AuthorizationFailure"
                    && body.to_ascii_lowercase().contains("failed to authenticate") =>
            {
                Some("AuthenticationFailed".to_owned())
            }
            other => other,
        };
        let tls = tls_problem(err);
        let certificate_problem = code.is_none()
            && (tls.is_some() || {
                let lower = detail.to_ascii_lowercase();
                lower.contains("invalid peer certificate") || lower.contains("certificate")
            });
        let transient = transient && !certificate_problem;
        let reason = self.explain(code.as_deref(), action, &body, &detail, io_kind(err), tls);
        StorageError::Remote {
            destination: self.describe(),
            action,
            code: code.unwrap_or_else(|| {
                status.map_or_else(|| "connection".into(), |s| format!("HTTP {s}"))
            }),
            reason,
            transient,
        }
    }

    /// Plain words for the errors an admin can fix.
    fn explain(
        &self,
        code: Option<&str>,
        action: &str,
        body: &str,
        detail: &str,
        kind: Option<std::io::ErrorKind>,
        tls: Option<TlsProblem>,
    ) -> String {
        let container = &self.container;
        let (credential, fix) = match &self.credential {
            BlobCredential::AccountKey { account, .. } => (
                format!("the account key of {account}"),
                "check blob_account_key (or AccountKey in blob_connection_string)",
            ),
            BlobCredential::Sas(_) => (
                "the SAS token".to_owned(),
                "make a new SAS token (blob_sas_token)",
            ),
        };
        let needed = match action {
            "Put Blob" if self.rotation == Rotation::Overwrite => "c and w (create, write)",
            "Put Blob" => "c (create)",
            "Put Block" | "Put Block List" => "w (write)",
            "List Blobs" => "l (list)",
            "Delete Blob" => "d (delete)",
            _ => "the right one",
        };
        match code {
            Some("ContainerNotFound") => format!(
                "container {container} does not exist (ContainerNotFound): check blob_container and the account or endpoint"
            ),
            Some("AuthenticationFailed") => {
                let lower = body.to_ascii_lowercase();
                if lower.contains("time")
                    || lower.contains("expired")
                    || lower.contains("skew")
                    || lower.contains("date")
                {
                    format!(
                        "{credential} was refused because of the time (AuthenticationFailed): the SAS has expired or is not valid yet, or this machine's clock is off; fix the time (NTP) or {fix}"
                    )
                } else {
                    format!(
                        "{credential} was not accepted (AuthenticationFailed): {fix}; the endpoint must belong to the same account"
                    )
                }
            }
            Some(
                code @ ("AuthorizationPermissionMismatch"
                | "AuthorizationFailure"
                | "AuthorizationResourceTypeMismatch"
                | "AuthorizationServiceMismatch"
                | "AuthorizationProtocolMismatch"
                | "AuthorizationSourceIPMismatch"),
            ) => format!(
                "{credential} does not allow {action} on container {container} ({code}): it needs permission {needed} on the container (an account SAS also ss=b and srt=o)"
            ),
            Some("InvalidQueryParameterValue" | "InvalidAuthenticationInfo") => format!(
                "{credential} is malformed ({}): {fix}",
                code.unwrap_or_default()
            ),
            Some("AccountIsDisabled") => {
                "the storage account is disabled (AccountIsDisabled)".into()
            }
            Some("ServerBusy") => "the service is busy (ServerBusy); retried with back-off".into(),
            Some(other) => {
                let message = xml_element(body, "Message")
                    .map(|m| self.scrub(m.lines().next().unwrap_or_default()))
                    .unwrap_or_default();
                format!("{action} failed with {other}: {message}")
            }
            None => explain_transport(
                &TransportFailure {
                    detail,
                    kind,
                    tls,
                    endpoint: &self.endpoint,
                },
                "blob_endpoint (or blob_account_name / blob_endpoint_suffix)",
            ),
        }
    }

    /// Removes the credential from a message, should a server or library
    /// ever echo it.
    fn scrub(&self, text: &str) -> String {
        let mut text = match &self.credential {
            BlobCredential::AccountKey { key, .. } if key.expose().len() >= 8 => {
                text.replace(key.expose(), MASK)
            }
            BlobCredential::Sas(token) if token.expose().len() >= 8 => {
                text.replace(token.expose(), MASK)
            }
            _ => text.to_owned(),
        };
        // Any SAS in a URL (ours or one the service echoes): the whole
        // query goes, so no signature can leak.
        let mut from = 0;
        while let Some(found) = text[from..].find('?') {
            let start = from + found;
            let end = text[start..]
                .find(|c: char| c == ')' || c == '"' || c == '\'' || c.is_whitespace())
                .map_or(text.len(), |n| start + n);
            if text[start..end].contains("sig=") {
                text.replace_range(start..end, "?(SAS removed)");
                from = start + "?(SAS removed)".len();
            } else {
                from = end;
            }
        }
        // A bare signature outside a URL.
        if let Some(start) = text.find("sig=") {
            let value_start = start + 4;
            let end = text[value_start..]
                .find(|c: char| c == '&' || c == ')' || c == '"' || c == '\'' || c.is_whitespace())
                .map_or(text.len(), |n| value_start + n);
            text.replace_range(value_start..end, MASK);
        }
        text
    }
}

impl AzureContainer {
    /// The container URL for reading: the configured SAS, or one signed
    /// from the account key with read and list rights only.
    fn reader_url(&self) -> Result<Url, StorageError> {
        let sas = match &self.credential {
            BlobCredential::Sas(token) => token.clone(),
            BlobCredential::AccountKey { account, key } => sign_container_sas(
                account,
                key,
                &self.container,
                "rl",
                self.protocol,
                Utc::now(),
            )
            .map_err(|reason| StorageError::Io {
                destination: self.describe(),
                action: "signing a SAS from the account key",
                reason,
            })?,
        };
        self.container_url(&sas)
    }

    /// Every blob under the prefix (one level), for `fetch`: needs List.
    pub async fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError> {
        let container_url = self.reader_url()?;
        let list_prefix = self.key("");
        let container = self.container_client(&container_url)?;
        let mut pager = container
            .list_blobs(Some(BlobContainerClientListBlobsOptions {
                prefix: (!list_prefix.is_empty()).then(|| list_prefix.clone()),
                ..Default::default()
            }))
            .map_err(|err| self.remote_error("List Blobs", &err))?;
        let mut found = Vec::new();
        while let Some(item) = pager.next().await {
            let item = item.map_err(|err| self.remote_error("List Blobs", &err))?;
            let Some(key) = item.name else { continue };
            let name = key.strip_prefix(&list_prefix).unwrap_or(&key).to_owned();
            if name.contains('/') {
                continue;
            }
            let properties = item.properties.as_ref();
            found.push(StoredObject {
                name,
                size: properties
                    .and_then(|p| p.content_length)
                    .unwrap_or_default(),
                last_modified: properties.and_then(|p| p.last_modified).and_then(|t| {
                    DateTime::<Utc>::from_timestamp(t.unix_timestamp(), t.nanosecond())
                }),
                key,
            });
        }
        Ok(found)
    }

    /// Downloads `key` into `to` (created new, `0600`), hashing on the way;
    /// needs Read.
    pub async fn download(&self, key: &str, to: &Path) -> Result<Downloaded, StorageError> {
        let container_url = self.reader_url()?;
        let result = self
            .blob_client(&container_url, key)?
            .download(None)
            .await
            .map_err(|err| self.remote_error("Get Blob", &err))?;
        let metadata = manifest::normalise_metadata(
            result
                .properties
                .metadata
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        let io = |action: &'static str, err: std::io::Error| StorageError::Io {
            destination: self.describe(),
            action,
            reason: err.to_string(),
        };
        let mut sink = archive::HashingFile::create(to)
            .map_err(|err| io("creating the download file", err))?;
        let mut body = result.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| self.remote_error("Get Blob", &err))?;
            std::io::Write::write_all(&mut sink, &chunk)
                .map_err(|err| io("writing the download", err))?;
        }
        let (size, sha256) = sink
            .finish()
            .map_err(|err| io("writing the download", err))?;
        Ok(Downloaded {
            size,
            sha256,
            metadata,
        })
    }

    /// A small blob's bytes (at most `limit`: a bigger blob is refused as
    /// its body passes the limit), or `None` when there is no such blob.
    pub async fn get_small(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let container_url = self.reader_url()?;
        let result = match self.blob_client(&container_url, key)?.download(None).await {
            Ok(result) => result,
            Err(err) if err.http_status().map(u16::from) == Some(404) => return Ok(None),
            Err(err) => return Err(self.remote_error("Get Blob", &err)),
        };
        let mut body = result.body;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| self.remote_error("Get Blob", &err))?;
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > limit {
                return Err(StorageError::Io {
                    destination: self.describe(),
                    action: "reading",
                    reason: breakglass_core::limits::ReadError::TooLarge {
                        what: "the blob".into(),
                        path: key.to_owned(),
                        size: limit,
                        exact: false,
                        limit,
                    }
                    .to_string(),
                });
            }
        }
        Ok(Some(bytes))
    }
}

/// The MD5 to send as `Content-MD5` with one request, carried in the
/// call's context to [`TransactionalMd5Policy`].
#[derive(Clone, Debug)]
struct TransactionalMd5(Vec<u8>);

/// Adds `Content-MD5` to a request whose call context carries one, so the
/// service checks the body of a Put Blob (the SDK's upload helper does not
/// expose the header itself).
#[derive(Debug)]
struct TransactionalMd5Policy;

#[async_trait::async_trait]
impl Policy for TransactionalMd5Policy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        if let Some(TransactionalMd5(md5)) = ctx.value::<TransactionalMd5>() {
            request.insert_header(
                "content-md5",
                base64::engine::general_purpose::STANDARD.encode(md5),
            );
        }
        match next.split_first() {
            Some((first, rest)) => first.send(ctx, request, rest).await,
            None => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                "the pipeline ended without a transport",
            )),
        }
    }
}

/// A reqwest client on rustls with ring, trusting the system roots plus
/// the configured CA bundle.
fn http_client(ca_bundle: Option<&CaBundle>) -> Result<Arc<dyn HttpClient>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped, as every TLS client does.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(bundle) = ca_bundle {
        let certificates = CertificateDer::pem_slice_iter(&bundle.pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("ca_bundle {}: {err:?}", bundle.path.display()))?;
        roots.add_parsable_certificates(certificates);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| format!("TLS set-up: {err}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| format!("HTTPS client set-up: {err}"))?;
    Ok(Arc::new(client))
}

/// Signs a container-scoped service SAS (`sr=c`) with the account key, as
/// documented for service SAS version 2020-12-06 and later.
pub fn sign_container_sas(
    account: &str,
    key: &breakglass_core::Secret,
    container: &str,
    permissions: &str,
    protocol: Protocol,
    now: DateTime<Utc>,
) -> Result<breakglass_core::Secret, String> {
    let format = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let start = format(now - SAS_BACKDATE);
    let expiry = format(now + SAS_LIFETIME);
    let signed_protocol = match protocol {
        Protocol::Https => "https",
        Protocol::Http => "https,http",
    };
    let canonical = format!("/blob/{account}/{container}");
    let string_to_sign = [
        permissions,
        &start,
        &expiry,
        &canonical,
        "", // signed identifier
        "", // signed IP
        signed_protocol,
        SAS_VERSION,
        "c", // signed resource: container
        "",  // snapshot time
        "",  // encryption scope
        "",  // rscc
        "",  // rscd
        "",  // rsce
        "",  // rscl
        "",  // rsct
    ]
    .join("\n");
    let signature = azure_core::hmac::hmac_sha256(
        &string_to_sign,
        &azure_core::credentials::Secret::new(key.expose().to_owned()),
    )
    .map_err(|_| "the account key is not valid base64".to_owned())?;
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", SAS_VERSION)
        .append_pair("sr", "c")
        .append_pair("sp", permissions)
        .append_pair("st", &start)
        .append_pair("se", &expiry)
        .append_pair("spr", signed_protocol)
        .append_pair("sig", &signature)
        .finish();
    Ok(breakglass_core::Secret::new(query))
}

/// The metadata every breakglass blob carries (`x-ms-meta-breakglass_*`):
/// the manifest's summary. Azure metadata names must be C# identifiers,
/// hence the underscores.
fn metadata(upload: &Upload<'_>) -> HashMap<String, String> {
    Manifest::for_upload(upload, "")
        .metadata()
        .into_iter()
        .map(|(name, value)| (format!("breakglass_{name}"), value))
        .collect()
}

/// The service's error code (`x-ms-error-code` or the body's `<Code>`).
fn error_code(err: &azure_core::Error) -> Option<String> {
    match err.kind() {
        azure_core::error::ErrorKind::HttpResponse { error_code, .. } => error_code
            .clone()
            .or_else(|| xml_element(&response_text(err), "Code").map(str::to_owned)),
        _ => None,
    }
}

/// The error response's body as text (Azure sends an XML `<Error>`).
fn response_text(err: &azure_core::Error) -> String {
    match err.kind() {
        azure_core::error::ErrorKind::HttpResponse {
            raw_response: Some(response),
            ..
        } => String::from_utf8_lossy(response.body().as_ref()).into_owned(),
        _ => String::new(),
    }
}

/// The text of the first `<name>...</name>` element.
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(xml[start..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use breakglass_config::remote::{DEVELOPMENT_ACCOUNT, DEVELOPMENT_KEY};
    use chrono::TimeZone;

    fn container(credential: BlobCredential) -> AzureContainer {
        AzureContainer::new(
            &BlobSettings {
                endpoint: "https://acct.blob.core.windows.net".into(),
                protocol: Protocol::Https,
                container: "backups".into(),
                credential,
            },
            "team",
            Rotation::Overwrite,
            None,
        )
    }

    #[test]
    fn a_sas_is_signed_over_the_documented_string() {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
        let sas = sign_container_sas(
            DEVELOPMENT_ACCOUNT,
            &breakglass_core::Secret::new(DEVELOPMENT_KEY),
            "backups",
            "cw",
            Protocol::Https,
            now,
        )
        .unwrap();
        let pairs: HashMap<String, String> = url::form_urlencoded::parse(sas.expose().as_bytes())
            .into_owned()
            .collect();
        assert_eq!(pairs["sp"], "cw");
        assert_eq!(pairs["sr"], "c");
        assert_eq!(pairs["st"], "2026-11-27T11:45:00Z");
        assert_eq!(pairs["se"], "2026-11-28T12:00:00Z");
        let expected = azure_core::hmac::hmac_sha256(
            "cw\n2026-11-27T11:45:00Z\n2026-11-28T12:00:00Z\n/blob/devstoreaccount1/backups\n\n\nhttps\n2022-11-02\nc\n\n\n\n\n\n\n",
            &azure_core::credentials::Secret::new(DEVELOPMENT_KEY),
        )
        .unwrap();
        assert_eq!(pairs["sig"], expected);
    }

    #[test]
    fn urls_keep_the_sas_and_the_folders() {
        let c = container(BlobCredential::Sas(breakglass_core::Secret::new(
            "sv=2022-11-02&sp=cw&sig=abc%3D",
        )));
        let sas = c.sas(Utc::now()).unwrap();
        let url = c.container_url(&sas).unwrap();
        assert_eq!(
            url.as_str(),
            "https://acct.blob.core.windows.net/backups?sv=2022-11-02&sp=cw&sig=abc%3D"
        );
        let blob = c.blob_url(&url, "team/breakglass-backup.xlsx").unwrap();
        assert_eq!(
            blob.as_str(),
            "https://acct.blob.core.windows.net/backups/team/breakglass-backup.xlsx?sv=2022-11-02&sp=cw&sig=abc%3D"
        );
    }

    #[test]
    fn messages_lose_signatures_and_keys() {
        let c = container(BlobCredential::AccountKey {
            account: "acct".into(),
            key: breakglass_core::Secret::new(DEVELOPMENT_KEY),
        });
        let text = c.scrub(&format!(
            "error sending request for url (https://a/b?sv=1&sig=SECRETSIG%3D&sp=c) key {DEVELOPMENT_KEY}"
        ));
        assert!(!text.contains("SECRETSIG"), "{text}");
        assert!(!text.contains(DEVELOPMENT_KEY), "{text}");
        assert!(
            text.contains("(https://a/b?(SAS removed)) key ********"),
            "{text}"
        );
        assert_eq!(c.scrub("detail sig=abc&x=1"), "detail sig=********&x=1");
        assert!(
            c.explain(Some("ContainerNotFound"), "Put Blob", "", "", None, None)
                .contains("container backups does not exist")
        );
        assert!(
            c.explain(
                Some("AuthenticationFailed"),
                "Put Blob",
                "<AuthenticationErrorDetail>Signed expiry time [x] must be after signed start time</AuthenticationErrorDetail>",
                "",
                None,
                None
            )
            .contains("clock")
        );
        assert!(
            c.explain(
                None,
                "Put Blob",
                "",
                "invalid peer certificate: UnknownIssuer",
                None,
                None
            )
            .contains("set ca_bundle")
        );
        assert!(
            c.explain(
                None,
                "Put Blob",
                "",
                "retry policy expired: tcp connect error: Connection refused (os error 111)",
                None,
                None
            )
            .contains("connection refused to https://acct.blob.core.windows.net")
        );
    }
}

impl AzureContainer {
    /// A blob client for `key` with the writer's SAS.
    fn writer_blob(&self, key: &str) -> Result<BlobClient, StorageError> {
        let sas = self.sas(Utc::now())?;
        let container_url = self.container_url(&sas)?;
        self.blob_client(&container_url, key)
    }
}

impl Backend for AzureContainer {
    fn describe(&self) -> String {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", self.prefix)
        };
        format!("blob:{}/{}{prefix}", self.endpoint, self.container)
    }

    fn rotation(&self) -> Rotation {
        self.rotation
    }

    fn key(&self, name: &str) -> String {
        AzureContainer::key(self, name)
    }

    fn location(&self, key: &str) -> String {
        format!("{}/{}/{key}", self.endpoint, self.container)
    }

    async fn put_file(
        &self,
        key: &str,
        upload: &Upload<'_>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let blob = self.writer_blob(key)?;
        if upload.size <= self.single_put_limit() {
            self.put_single(&blob, key, upload, mode).await
        } else {
            self.put_blocks(&blob, key, upload, mode).await
        }
    }

    /// One Put Blob with `Content-MD5`.
    async fn put_small(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &'static str,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let md5 = Md5::digest(&bytes).to_vec();
        let options = BlockBlobClientUploadOptions {
            blob_content_md5: Some(md5.clone()),
            blob_content_type: Some(content_type.into()),
            if_none_match: Self::if_none_match(mode),
            method_options: ClientMethodOptions {
                context: Context::new().with_value(TransactionalMd5(md5)),
            },
            ..Default::default()
        };
        self.writer_blob(key)?
            .block_blob_client()
            .upload(bytes::Bytes::from(bytes).into(), Some(options))
            .await
            .map_err(|err| self.put_error_for(mode, "Put Blob", key, &err))?;
        Ok(())
    }

    /// Get Blob Properties; a 403 (a SAS without `r`) is "cannot tell",
    /// like a 404.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        use azure_storage_blob::models::BlobClientGetPropertiesResultHeaders;
        let container_url = self.reader_url()?;
        let response = match self
            .blob_client(&container_url, key)?
            .get_properties(None)
            .await
        {
            Ok(response) => response,
            Err(err) if matches!(err.http_status().map(u16::from), Some(403 | 404)) => {
                return Ok(None);
            }
            Err(err) => return Err(self.remote_error("Get Blob Properties", &err)),
        };
        let raw = response.metadata().unwrap_or_default();
        let metadata = manifest::normalise_metadata(
            raw.iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        Ok(Some(ObjectMeta::from_metadata(
            response.content_length().ok().flatten().unwrap_or_default(),
            &metadata,
        )))
    }

    async fn list(&self) -> Result<Vec<StoredObject>, StorageError> {
        self.list_objects().await
    }

    async fn download(&self, key: &str, to: &Path) -> Result<Downloaded, StorageError> {
        AzureContainer::download(self, key, to).await
    }

    async fn get_small(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StorageError> {
        AzureContainer::get_small(self, key, limit).await
    }

    /// Delete Blob; an absent blob is fine.
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.writer_blob(key)?.delete(None).await {
            Err(err) if err.http_status().map(u16::from) != Some(404) => {
                Err(self.remote_error("Delete Blob", &err))
            }
            _ => Ok(()),
        }
    }
}

pub mod probe;
