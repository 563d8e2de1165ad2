//! An S3 bucket (AWS or any S3-compatible endpoint) as destination.
//!
//! - Path-style addressing for custom endpoints; virtual-hosted for AWS.
//! - Checksums: `when_required` by default for custom endpoints, because
//!   several S3-compatible servers store the SDK's aws-chunked framing as
//!   data or reject its newer checksum headers. Every PUT and part carries
//!   `Content-MD5` instead (which Object Lock buckets require), so the server
//!   itself rejects a corrupted body (`BadDigest`).
//! - Verification without read rights: the response's ETag is compared with
//!   the MD5 we computed (multipart: MD5 of the part MD5s, `-N`); where a
//!   server's ETag is not an MD5 (SSE-KMS), the server-side `Content-MD5`
//!   check stands. The SHA-256, run id and creation time ride along as
//!   object metadata.
//! - Small files go as one streamed PUT; large ones as multipart with one
//!   part in memory at a time; a failed multipart upload is aborted. The
//!   previous object is untouched until the final PUT or Complete succeeds.
//! - `unique` rotation sends `If-None-Match: *`, so it works with a
//!   create-only credential and never replaces anything; `prune` lists and
//!   deletes older breakglass objects only after the new one is in place.
//! - Retries: the SDK's standard mode (exponential back-off with jitter) on
//!   timeouts, connection errors, 5xx and throttling; never on 4xx.
//! - TLS: rustls with the system roots (which honour `SSL_CERT_FILE`) plus
//!   the configured `ca_bundle`.

use crate::archive::{self, Downloaded, StoredObject};
use crate::manifest::{self, Manifest};
use crate::transport::{
    CheckFailure, TransportFailure, error_chain, explain_transport, io_kind, md5_checked, mismatch,
    read_full, tls_problem,
};
use crate::{Backend, ObjectMeta, PutMode, StorageError, Upload};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use breakglass_config::{CaBundle, ChecksumMode, Rotation, S3Settings};
use breakglass_core::Secret;
use breakglass_core::secret::MASK;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use std::path::Path;
use std::time::Duration;

/// Files up to this size go as one PUT; larger ones as multipart.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Size of each multipart part (S3's minimum is 5 MiB).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Attempts per request, first included (SDK standard retry mode).
const MAX_ATTEMPTS: u32 = 4;

/// An S3 destination.
#[derive(Clone, Debug)]
pub struct S3Bucket {
    client: aws_sdk_s3::Client,
    /// Ask the bucket for its region before the first upload (AWS with no
    /// `s3_region` configured).
    discover_region: bool,
    /// The client for the bucket's own region, once asked.
    regional_client: std::sync::Arc<tokio::sync::OnceCell<aws_sdk_s3::Client>>,
    bucket: String,
    prefix: String,
    rotation: Rotation,
    endpoint: String,
    access_key_id: String,
    secret: Secret,
    part_size: usize,
    multipart_threshold: u64,
}

impl S3Bucket {
    /// A client for the configured bucket. Building touches no network.
    pub fn new(
        settings: &S3Settings,
        prefix: &str,
        rotation: Rotation,
        ca_bundle: Option<&CaBundle>,
    ) -> Self {
        let mut trust = aws_smithy_http_client::tls::TrustStore::default();
        if let Some(bundle) = ca_bundle {
            // Validated as parseable PEM certificates by the config crate.
            trust = trust.with_pem_certificate(bundle.pem.clone());
        }
        let tls = aws_smithy_http_client::tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            // Building a TLS context from a trust store cannot fail.
            .unwrap_or_default();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(tls)
            .build_https();
        let checksum_request = match settings.checksum {
            ChecksumMode::WhenRequired => RequestChecksumCalculation::WhenRequired,
            ChecksumMode::WhenSupported => RequestChecksumCalculation::WhenSupported,
        };
        let checksum_response = match settings.checksum {
            ChecksumMode::WhenRequired => ResponseChecksumValidation::WhenRequired,
            ChecksumMode::WhenSupported => ResponseChecksumValidation::WhenSupported,
        };
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(Credentials::new(
                settings.access_key_id.clone(),
                settings.secret_access_key.expose().to_owned(),
                None,
                None,
                "breakglass-config",
            ))
            .http_client(http)
            .request_checksum_calculation(checksum_request)
            .response_checksum_validation(checksum_response)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(60))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .operation_timeout(Duration::from_secs(900))
                    .build(),
            );
        let endpoint = match &settings.endpoint {
            Some(url) => {
                config = config.endpoint_url(url.clone()).force_path_style(true);
                url.clone()
            }
            None => format!(
                "{}://s3.{}.amazonaws.com",
                settings.protocol.scheme(),
                settings.region
            ),
        };
        Self {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            discover_region: settings.endpoint.is_none() && !settings.region_configured,
            regional_client: Default::default(),
            bucket: settings.bucket.clone(),
            prefix: prefix.trim_matches('/').to_owned(),
            rotation,
            endpoint,
            access_key_id: settings.access_key_id.clone(),
            secret: settings.secret_access_key.clone(),
            part_size: DEFAULT_PART_SIZE,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
        }
    }

    /// Changes the multipart split (tests use small parts to exercise it).
    pub fn with_multipart(mut self, threshold: u64, part_size: usize) -> Self {
        self.multipart_threshold = threshold;
        self.part_size = part_size.max(5 << 20);
        self
    }

    /// The SDK client, for callers that probe the bucket (the Test call).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The object key for a file name under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// Maps an SDK error to a plain, actionable message without secrets.
    fn remote_error<E>(
        &self,
        action: &'static str,
        err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = err.code().map(str::to_owned);
        let status = err.raw_response().map(|r| r.status().as_u16());
        // The whole chain, Debug included, for whoever debugs; the run
        // result and the info logs get the plain cause once.
        tracing::debug!(
            destination = %self.describe(),
            action,
            error = %self.scrub(&DisplayErrorContext(err).to_string()),
            "S3 request failed"
        );
        let detail = self.scrub(&error_chain(err));
        let timed_out = match err {
            SdkError::TimeoutError(_) => true,
            SdkError::DispatchFailure(failure) => failure.is_timeout(),
            _ => false,
        };
        let kind = if timed_out {
            Some(std::io::ErrorKind::TimedOut)
        } else {
            io_kind(err)
        };
        let transient = match err {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            _ => {
                status.is_some_and(|s| s >= 500)
                    || matches!(
                        code.as_deref(),
                        Some(
                            "SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout"
                        )
                    )
            }
        };
        let reason = explain(
            code.as_deref(),
            action,
            &self.bucket,
            &self.prefix,
            &self.access_key_id,
            &TransportFailure {
                detail: &detail,
                kind,
                tls: tls_problem(err),
                endpoint: &self.endpoint,
            },
        );
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

    /// Removes the secret key from a message, should a server or library
    /// ever echo it. (Too short a "secret" would mask ordinary words; real
    /// keys are 40 characters.)
    fn scrub(&self, text: &str) -> String {
        if self.secret.expose().len() < 8 {
            text.to_owned()
        } else {
            text.replace(self.secret.expose(), MASK)
        }
    }

    async fn put_single(
        &self,
        key: &str,
        upload: &Upload<'_>,
        md5: &[u8],
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let body = ByteStream::from_path(upload.file)
            .await
            .map_err(|err| StorageError::Io {
                destination: self.describe(),
                action: "reading the workbook",
                reason: err.to_string(),
            })?;
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .content_length(upload.size as i64)
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .content_type(XLSX_CONTENT_TYPE)
            .set_metadata(Some(metadata(upload)));
        if mode == PutMode::CreateOnly {
            request = request.if_none_match("*");
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.put_error("PutObject", key, &err))?;
        let expected = hex::encode(md5);
        self.check_etag(response.e_tag(), &expected, upload)
    }

    async fn put_multipart(
        &self,
        key: &str,
        upload: &Upload<'_>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(XLSX_CONTENT_TYPE)
            .set_metadata(Some(metadata(upload)))
            .send()
            .await
            .map_err(|err| self.remote_error("CreateMultipartUpload", &err))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = self.send_parts(key, &upload_id, upload, mode).await;
        if result.is_err() {
            // Best effort: the parts of an unfinished upload cost storage.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn send_parts(
        &self,
        key: &str,
        upload_id: &str,
        upload: &Upload<'_>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let io = |action: &'static str, err: std::io::Error| StorageError::Io {
            destination: self.describe(),
            action,
            reason: err.to_string(),
        };
        let mut file =
            std::fs::File::open(upload.file).map_err(|err| io("opening the workbook", err))?;
        let mut parts = Vec::new();
        let mut part_md5s = Vec::new();
        let mut whole = <sha2::Sha256 as sha2::Digest>::new();
        let mut buffer = vec![0u8; self.part_size];
        let mut sent: u64 = 0;
        for number in 1.. {
            let filled =
                read_full(&mut file, &mut buffer).map_err(|err| io("reading the workbook", err))?;
            if filled == 0 {
                break;
            }
            let chunk = &buffer[..filled];
            let md5 = Md5::digest(chunk);
            let response = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(filled as i64)
                .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .map_err(|err| self.remote_error("UploadPart", &err))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(response.e_tag().map(str::to_owned))
                    .build(),
            );
            part_md5s.extend_from_slice(&md5);
            sha2::Digest::update(&mut whole, chunk);
            sent += filled as u64;
        }
        let sent_sha = hex::encode(sha2::Digest::finalize(whole));
        if sent != upload.size || !sent_sha.eq_ignore_ascii_case(upload.sha256) {
            // Never completed: the parts are aborted, the old object stays.
            return Err(StorageError::Verification {
                destination: self.describe(),
                reason: mismatch(upload, sent, &sent_sha),
            });
        }
        let count = parts.len();
        let mut request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if mode == PutMode::CreateOnly {
            request = request.if_none_match("*");
        }
        let response = request
            .send()
            .await
            .map_err(|err| self.put_error("CompleteMultipartUpload", key, &err))?;
        let expected = format!("{}-{count}", hex::encode(Md5::digest(&part_md5s)));
        self.check_etag(response.e_tag(), &expected, upload)
    }

    /// `PreconditionFailed` on a conditional write means the name exists.
    fn put_error<E>(
        &self,
        action: &'static str,
        key: &str,
        err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        if err.code() == Some("PreconditionFailed")
            || err
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 412)
        {
            return StorageError::Exists {
                destination: self.describe(),
                name: key.into(),
            };
        }
        self.remote_error(action, err)
    }

    fn check_etag(
        &self,
        etag: Option<&str>,
        expected: &str,
        upload: &Upload<'_>,
    ) -> Result<(), StorageError> {
        let Some(etag) = etag.map(|e| e.trim_matches('"').to_ascii_lowercase()) else {
            // No ETag to compare: the server verified Content-MD5.
            return Ok(());
        };
        let looks_like_md5 = etag.len() >= 32 && etag[..32].bytes().all(|b| b.is_ascii_hexdigit());
        if looks_like_md5 && etag != expected {
            return Err(StorageError::Verification {
                destination: self.describe(),
                reason: format!(
                    "the stored object's ETag {etag} does not match the {} bytes sent (expected {expected})",
                    upload.size
                ),
            });
        }
        Ok(())
    }
}

const XLSX_CONTENT_TYPE: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

impl S3Bucket {
    /// This bucket with a client for its own region, when no `s3_region`
    /// was configured for AWS (else itself).
    async fn regional(&self) -> std::borrow::Cow<'_, Self> {
        if !self.discover_region {
            return std::borrow::Cow::Borrowed(self);
        }
        // Asked once per bucket value (one run), not per request of the
        // upload sequence; a failed answer is asked again next time.
        let found = self
            .regional_client
            .get_or_try_init(|| async {
                let region = discover_region(&self.client, &self.bucket).await.ok_or(())?;
                tracing::info!(bucket = %self.bucket, region = %region, "using the bucket's own region");
                Ok::<_, ()>(aws_sdk_s3::Client::from_conf(
                    self.client
                        .config()
                        .to_builder()
                        .region(Region::new(region))
                        .build(),
                ))
            })
            .await;
        match found {
            Ok(client) => {
                let mut found = self.clone();
                found.discover_region = false;
                found.client = client.clone();
                std::borrow::Cow::Owned(found)
            }
            Err(()) => std::borrow::Cow::Borrowed(self),
        }
    }

    /// Every object under the prefix (one level), for `fetch`: needs
    /// `s3:ListBucket`.
    pub async fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError> {
        let this = self.regional().await;
        let list_prefix = this.key("");
        let mut pages = this
            .client
            .list_objects_v2()
            .bucket(&this.bucket)
            .prefix(&list_prefix)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| this.remote_error("ListObjectsV2", &err))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let name = key.strip_prefix(&list_prefix).unwrap_or(key);
                if name.contains('/') {
                    continue;
                }
                found.push(StoredObject {
                    key: key.to_owned(),
                    name: name.to_owned(),
                    size: object.size().unwrap_or_default().max(0) as u64,
                    last_modified: object
                        .last_modified()
                        .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
                });
            }
        }
        Ok(found)
    }

    /// Downloads `key` into `to` (created new, `0600`), hashing on the way;
    /// needs `s3:GetObject`.
    pub async fn download(&self, key: &str, to: &Path) -> Result<Downloaded, StorageError> {
        let this = self.regional().await;
        let output = this
            .client
            .get_object()
            .bucket(&this.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| this.remote_error("GetObject", &err))?;
        let metadata = manifest::normalise_metadata(
            output
                .metadata()
                .into_iter()
                .flatten()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        let mut body = output.body;
        let mut sink = archive::HashingFile::create(to).map_err(|err| StorageError::Io {
            destination: this.describe(),
            action: "creating the download file",
            reason: err.to_string(),
        })?;
        while let Some(chunk) = body.try_next().await.map_err(|err| StorageError::Remote {
            destination: this.describe(),
            action: "GetObject",
            code: "connection".into(),
            reason: format!("the download broke off: {}", this.scrub(&err.to_string())),
            transient: true,
        })? {
            std::io::Write::write_all(&mut sink, &chunk).map_err(|err| StorageError::Io {
                destination: this.describe(),
                action: "writing the download",
                reason: err.to_string(),
            })?;
        }
        let (size, sha256) = sink.finish().map_err(|err| StorageError::Io {
            destination: this.describe(),
            action: "writing the download",
            reason: err.to_string(),
        })?;
        Ok(Downloaded {
            size,
            sha256,
            metadata,
        })
    }

    /// A small object's bytes, or `None` when there is no such key.
    /// At most `limit` bytes are read: a bigger object is refused before
    /// its body is downloaded (or, without a length, as it passes `limit`).
    pub async fn get_small(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let this = self.regional().await;
        let output = match this
            .client
            .get_object()
            .bucket(&this.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(err) if err.code() == Some("NoSuchKey") => return Ok(None),
            Err(err) => return Err(this.remote_error("GetObject", &err)),
        };
        let too_large = |size: u64, exact: bool| StorageError::Io {
            destination: this.describe(),
            action: "reading",
            reason: breakglass_core::limits::ReadError::TooLarge {
                what: "the object".into(),
                path: key.to_owned(),
                size,
                exact,
                limit,
            }
            .to_string(),
        };
        if let Some(size) = output.content_length().and_then(|n| u64::try_from(n).ok())
            && size > limit
        {
            return Err(too_large(size, true));
        }
        let mut body = output.body;
        let mut bytes = Vec::new();
        loop {
            let chunk = body.try_next().await.map_err(|err| StorageError::Remote {
                destination: this.describe(),
                action: "GetObject",
                code: "connection".into(),
                reason: format!("the download broke off: {}", this.scrub(&err.to_string())),
                transient: true,
            })?;
            let Some(chunk) = chunk else { break };
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > limit {
                return Err(too_large(limit, false));
            }
        }
        Ok(Some(bytes))
    }
}

/// The bucket's region, as S3 reports it in `x-amz-bucket-region` — also on
/// the 301/403 answers a least-privileged writer gets to HeadBucket.
pub async fn discover_region(client: &aws_sdk_s3::Client, bucket: &str) -> Option<String> {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(output) => output.bucket_region().map(str::to_owned),
        Err(err) => err
            .raw_response()
            .and_then(|r| r.headers().get("x-amz-bucket-region"))
            .map(str::to_owned),
    }
}

/// The metadata every breakglass object carries (`x-amz-meta-breakglass-*`):
/// the manifest's summary.
fn metadata(upload: &Upload<'_>) -> std::collections::HashMap<String, String> {
    Manifest::for_upload(upload, "")
        .metadata()
        .into_iter()
        .map(|(name, value)| (format!("breakglass-{}", name.replace('_', "-")), value))
        .collect()
}

/// Plain words for the errors an admin can fix.
fn explain(
    code: Option<&str>,
    action: &str,
    bucket: &str,
    prefix: &str,
    access_key_id: &str,
    transport: &TransportFailure<'_>,
) -> String {
    let key_hint = shorten_key_id(access_key_id);
    let place = if prefix.is_empty() {
        format!("{bucket}/*")
    } else {
        format!("{bucket}/{prefix}/*")
    };
    match code {
        Some("NoSuchBucket") => format!("bucket {bucket} does not exist (NoSuchBucket): check s3_bucket and s3_url"),
        Some("AccessDenied") => format!(
            "access denied for {action}: the credential {key_hint} lacks s3:{action} on {place} (AccessDenied); check its IAM policy"
        ),
        Some("InvalidAccessKeyId") => format!("the access key id {key_hint} is not known to the server (InvalidAccessKeyId): check s3_access_key_id"),
        Some("SignatureDoesNotMatch") => {
            "the secret access key does not match the access key id (SignatureDoesNotMatch): check s3_secret_access_key".into()
        }
        Some("RequestTimeTooSkewed") => {
            "this machine's clock differs too much from the server's (RequestTimeTooSkewed): fix the time (NTP)".into()
        }
        Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException") => {
            format!("the bucket is in another region ({}): set s3_region to the bucket's region", code.unwrap_or_default())
        }
        Some("SlowDown") => "the server asks to slow down (SlowDown); retried with back-off".into(),
        _ => explain_transport(transport, "s3_url"),
    }
}

fn shorten_key_id(key: &str) -> String {
    if key.len() <= 8 {
        key.to_owned()
    } else {
        format!("{}…{}", &key[..4], &key[key.len() - 4..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(detail: &str) -> TransportFailure<'_> {
        TransportFailure {
            detail,
            kind: None,
            tls: None,
            endpoint: "http://127.0.0.1:9",
        }
    }

    #[test]
    fn errors_are_explained_without_secrets() {
        let text = explain(
            Some("AccessDenied"),
            "PutObject",
            "backups",
            "team",
            "AKIAEXAMPLEKEY1234",
            &plain(""),
        );
        assert!(
            text.contains("lacks s3:PutObject on backups/team/*"),
            "{text}"
        );
        assert!(text.contains("AKIA…1234"), "{text}");
        assert!(
            explain(Some("NoSuchBucket"), "PutObject", "b", "", "k", &plain(""))
                .contains("bucket b does not exist")
        );
        assert!(
            explain(
                None,
                "PutObject",
                "b",
                "",
                "k",
                &plain("invalid peer certificate: UnknownIssuer")
            )
            .contains("set ca_bundle")
        );
        assert!(
            explain(
                None,
                "PutObject",
                "b",
                "",
                "k",
                &plain("tcp connect error: Connection refused (os error 111)")
            )
            .contains("refused")
        );
    }
}

impl Backend for S3Bucket {
    fn describe(&self) -> String {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", self.prefix)
        };
        format!("s3:{}/{}{prefix}", self.endpoint, self.bucket)
    }

    fn rotation(&self) -> Rotation {
        self.rotation
    }

    fn key(&self, name: &str) -> String {
        S3Bucket::key(self, name)
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    async fn put_file(
        &self,
        key: &str,
        upload: &Upload<'_>,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let this = self.regional().await;
        if upload.size <= this.multipart_threshold {
            let md5 = md5_checked(upload).map_err(|err| match err {
                CheckFailure::Io(err) => StorageError::Io {
                    destination: this.describe(),
                    action: "reading the workbook",
                    reason: err.to_string(),
                },
                CheckFailure::Mismatch(reason) => StorageError::Verification {
                    destination: this.describe(),
                    reason,
                },
            })?;
            this.put_single(key, upload, &md5, mode).await
        } else {
            this.put_multipart(key, upload, mode).await
        }
    }

    async fn put_small(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &'static str,
        mode: PutMode,
    ) -> Result<(), StorageError> {
        let this = self.regional().await;
        let md5 = Md5::digest(&bytes);
        let mut request = this
            .client
            .put_object()
            .bucket(&this.bucket)
            .key(key)
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .content_type(content_type)
            .body(ByteStream::from(bytes));
        if mode == PutMode::CreateOnly {
            request = request.if_none_match("*");
        }
        request
            .send()
            .await
            .map_err(|err| this.put_error("PutObject", key, &err))?;
        Ok(())
    }

    /// HeadObject; a 403 (a writer without `s3:GetObject`) is "cannot
    /// tell", like a 404.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let this = self.regional().await;
        let output = match this
            .client
            .head_object()
            .bucket(&this.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(err)
                if matches!(
                    err.raw_response().map(|r| r.status().as_u16()),
                    Some(403 | 404)
                ) || matches!(err.code(), Some("NotFound" | "NoSuchKey" | "AccessDenied")) =>
            {
                return Ok(None);
            }
            Err(err) => return Err(this.remote_error("HeadObject", &err)),
        };
        let metadata = manifest::normalise_metadata(
            output
                .metadata()
                .into_iter()
                .flatten()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        Ok(Some(ObjectMeta::from_metadata(
            output
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or_default(),
            &metadata,
        )))
    }

    async fn list(&self) -> Result<Vec<StoredObject>, StorageError> {
        self.list_objects().await
    }

    async fn download(&self, key: &str, to: &Path) -> Result<Downloaded, StorageError> {
        S3Bucket::download(self, key, to).await
    }

    async fn get_small(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StorageError> {
        S3Bucket::get_small(self, key, limit).await
    }

    /// DeleteObject; S3 answers 204 for a key that is not there.
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let this = self.regional().await;
        this.client
            .delete_object()
            .bucket(&this.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| this.remote_error("DeleteObject", &err))?;
        Ok(())
    }
}

pub mod probe;
