//! Single, harmless S3 requests for the destination Test, classified.
//!
//! Beside the client they use, so the Test takes the same network path and
//! the same error wording as real uploads. None of them reads or changes a
//! backup: writes go to [`TEST_OBJECT_NAME`], reads and deletes to the test
//! object or to [`crate::probe_support::ABSENT_OBJECT_NAME`].

use super::{S3Bucket, discover_region};
use crate::probe_support::{
    Failure, FailureKind, TEST_OBJECT_BODY, TEST_OBJECT_NAME, failure_from,
};
use aws_sdk_s3::config::Region;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine;
use md5::{Digest, Md5};

/// What HeadBucket said about the bucket.
#[derive(Clone, Debug)]
pub enum BucketAnswer {
    /// It exists and this credential may see it.
    Exists {
        /// The bucket's region, when the server said.
        region: Option<String>,
    },
    /// It does not exist (404).
    Missing,
    /// The credential may not ask (403): existence must be inferred.
    Denied {
        /// The bucket's region, when the server said (AWS does on a 403).
        region: Option<String>,
    },
    /// It lives in another region (301).
    OtherRegion {
        /// The bucket's region, when the server said.
        region: Option<String>,
    },
    /// No answer (connection, authentication...).
    Failed(Failure),
}

impl S3Bucket {
    /// A copy for the Test: one attempt per request (a Test reports, it
    /// does not retry), in `region` when given.
    pub fn for_probe(&self, region: Option<&str>) -> Self {
        let mut builder = self
            .client
            .config()
            .to_builder()
            .retry_config(RetryConfig::standard().with_max_attempts(1));
        if let Some(region) = region {
            builder = builder.region(Region::new(region.to_owned()));
        }
        let mut probe = self.clone();
        probe.client = aws_sdk_s3::Client::from_conf(builder.build());
        probe
    }

    /// True for AWS without `s3_region`: the bucket's region is asked first.
    pub fn discovers_region(&self) -> bool {
        self.discover_region
    }

    /// The bucket's own region, as uploads would find it.
    pub async fn bucket_region(&self) -> Option<String> {
        discover_region(&self.client, &self.bucket).await
    }

    /// The endpoint the client talks to (`scheme://host[:port]`).
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint
    }

    /// The bucket name.
    pub fn bucket_name(&self) -> &str {
        &self.bucket
    }

    /// The region requests are signed for.
    pub fn signing_region(&self) -> String {
        self.client
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_default()
    }

    fn failure<E>(
        &self,
        action: &'static str,
        err: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        failure_from(&self.remote_error(action, err), status)
    }

    /// GetObject of `name` under the prefix (the body is not read).
    pub async fn probe_get(&self, name: &str) -> Result<(), Failure> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| self.failure("GetObject", &err))
    }

    /// HeadBucket, read for existence and region.
    pub async fn probe_head_bucket(&self) -> BucketAnswer {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(output) => BucketAnswer::Exists {
                region: output.bucket_region().map(str::to_owned),
            },
            Err(err) => {
                let region = err
                    .raw_response()
                    .and_then(|r| r.headers().get("x-amz-bucket-region"))
                    .map(str::to_owned);
                match err.raw_response().map(|r| r.status().as_u16()) {
                    Some(404) => BucketAnswer::Missing,
                    Some(403) => BucketAnswer::Denied { region },
                    Some(301) => BucketAnswer::OtherRegion { region },
                    _ => BucketAnswer::Failed(self.failure("HeadBucket", &err)),
                }
            }
        }
    }

    /// Writes the test object (`If-None-Match: *` when `conditional`, as
    /// `unique` and `prune` uploads do) with `Content-MD5`, and checks the
    /// returned ETag. Returns the object key.
    pub async fn probe_put(&self, conditional: bool) -> Result<String, Failure> {
        let key = self.key(TEST_OBJECT_NAME);
        let md5 = Md5::digest(TEST_OBJECT_BODY);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from_static(TEST_OBJECT_BODY))
            .content_length(TEST_OBJECT_BODY.len() as i64)
            .content_md5(base64::engine::general_purpose::STANDARD.encode(md5))
            .content_type("text/plain");
        if conditional {
            request = request.if_none_match("*");
        }
        let response = request.send().await.map_err(|err| {
            let status = err.raw_response().map(|r| r.status().as_u16());
            failure_from(&self.put_error("PutObject", &key, &err), status)
        })?;
        let etag = response
            .e_tag()
            .map(|e| e.trim_matches('"').to_ascii_lowercase());
        match etag {
            Some(etag)
                if etag.len() == 32
                    && etag.bytes().all(|b| b.is_ascii_hexdigit())
                    && etag != hex::encode(md5) =>
            {
                Err(Failure {
                    kind: FailureKind::Other,
                    code: "ETagMismatch".into(),
                    message: format!(
                        "the server stored {key} with ETag {etag}, not the MD5 of what was sent: the data was changed on the way (a proxy?)"
                    ),
                })
            }
            _ => Ok(key),
        }
    }

    /// DeleteObject of `name` under the prefix. S3 answers 204 for a
    /// missing key when deleting is allowed, 403 when not.
    pub async fn probe_delete(&self, name: &str) -> Result<(), Failure> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(name))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| self.failure("DeleteObject", &err))
    }

    /// ListObjectsV2 of at most one key under the prefix.
    pub async fn probe_list(&self) -> Result<(), Failure> {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| self.failure("ListBucket", &err))
    }

    /// The bucket's versioning status (`Enabled`, `Suspended`), `None` when
    /// it was never turned on.
    pub async fn probe_versioning(&self) -> Result<Option<String>, Failure> {
        match self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out.status().map(|s| s.as_str().to_owned())),
            Err(err) => {
                // Some S3-compatible servers (moto) wrap the answer in a
                // root element the SDK does not expect; a 200 is still an
                // answer, so read its <Status> directly.
                if let Some(response) = err.raw_response()
                    && response.status().as_u16() == 200
                {
                    let body = response
                        .body()
                        .bytes()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    return Ok(xml_text(&body, "Status"));
                }
                Err(self.failure("GetBucketVersioning", &err))
            }
        }
    }

    /// The bucket's lifecycle rules, described in one line each; empty when
    /// there are none.
    pub async fn probe_lifecycle(&self) -> Result<Vec<LifecycleRule>, Failure> {
        match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .rules()
                .iter()
                .map(|rule| LifecycleRule {
                    id: rule.id().unwrap_or("(no id)").to_owned(),
                    enabled: rule.status().as_str() == "Enabled",
                    prefix: rule
                        .filter()
                        .and_then(|f| f.prefix().or_else(|| f.and().and_then(|a| a.prefix())))
                        .or({
                            // Older rules carry the prefix outside a filter.
                            #[allow(deprecated)]
                            rule.prefix()
                        })
                        .unwrap_or_default()
                        .to_owned(),
                    expiration_days: rule.expiration().and_then(|e| e.days()),
                    noncurrent_days: rule
                        .noncurrent_version_expiration()
                        .and_then(|e| e.noncurrent_days()),
                })
                .collect()),
            Err(err) => {
                let failure = self.failure("GetLifecycleConfiguration", &err);
                if failure.code == "NoSuchLifecycleConfiguration"
                    || failure.kind == FailureKind::NotFound
                {
                    Ok(Vec::new())
                } else {
                    Err(failure)
                }
            }
        }
    }

    /// The key prefix (without slashes at either end).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// The Test's reading of an S3 error code: its kind and the upload path's
/// plain words for it (for `action` on `bucket`/`prefix`, naming the key id
/// only shortened). Used where no request was made, e.g. to show what each
/// answer would say.
pub fn explain_code(
    code: &str,
    action: &str,
    bucket: &str,
    prefix: &str,
    access_key_id: &str,
    detail: &str,
) -> Failure {
    Failure {
        kind: crate::probe_support::classify(code, None),
        code: code.to_owned(),
        message: super::explain(
            Some(code),
            action,
            bucket,
            prefix,
            access_key_id,
            &crate::transport::TransportFailure {
                detail,
                kind: None,
                tls: None,
                endpoint: "",
            },
        ),
    }
}

/// The text of the first `<name>...</name>` element, if any.
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim().to_owned()).filter(|t| !t.is_empty())
}

/// One bucket lifecycle rule, as far as the Test reports it.
#[derive(Clone, Debug)]
pub struct LifecycleRule {
    /// The rule's id.
    pub id: String,
    /// `Status: Enabled`.
    pub enabled: bool,
    /// The key prefix it applies to (empty = the whole bucket).
    pub prefix: String,
    /// Current objects expire after this many days.
    pub expiration_days: Option<i32>,
    /// Noncurrent versions expire after this many days.
    pub noncurrent_days: Option<i32>,
}

impl LifecycleRule {
    /// True when the rule applies to keys under `prefix`.
    pub fn covers(&self, prefix: &str) -> bool {
        let under = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        self.enabled && (under.starts_with(&self.prefix) || self.prefix.starts_with(&under))
    }

    /// One line: id, prefix and what expires when.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} ({}, prefix \"{}\"",
            self.id,
            if self.enabled { "enabled" } else { "disabled" },
            self.prefix
        );
        if let Some(days) = self.expiration_days {
            text.push_str(&format!(", objects expire after {days} days"));
        }
        if let Some(days) = self.noncurrent_days {
            text.push_str(&format!(", old versions after {days} days"));
        }
        text.push(')');
        text
    }
}
