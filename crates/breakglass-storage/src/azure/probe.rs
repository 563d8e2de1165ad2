//! Single, harmless Azure Blob requests for the destination Test,
//! classified.
//!
//! Beside the client they use, so the Test takes the same network path, the
//! same SAS (given, or signed from the key with the rotation's rights) and
//! the same error wording as real uploads. Writes go only to
//! [`TEST_OBJECT_NAME`]; reads and deletes only to the test blob or to a
//! name that is never written.

use super::{AzureContainer, TransactionalMd5};
use crate::probe_support::{
    Failure, FailureKind, TEST_OBJECT_BODY, TEST_OBJECT_NAME, failure_from,
};
use azure_core::http::{Body, ClientMethodOptions, Context};
use azure_storage_blob::models::{
    BlobContainerClientListBlobsOptions, BlockBlobClientUploadOptions,
};
use breakglass_config::BlobCredential;
use chrono::Utc;
use futures::StreamExt;
use md5::{Digest, Md5};
use std::num::NonZero;

impl AzureContainer {
    /// The account endpoint (`scheme://host[:port][/path]`).
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint
    }

    /// The container name.
    pub fn container_name(&self) -> &str {
        &self.container
    }

    /// True when the credential is the account key (which holds every
    /// right on the account), false for a SAS.
    pub fn uses_account_key(&self) -> bool {
        matches!(self.credential, BlobCredential::AccountKey { .. })
    }

    /// The `sp` (permissions) of a configured SAS token.
    pub fn sas_permission_letters(&self) -> Option<String> {
        self.sas_permissions()
    }

    fn failure(&self, action: &'static str, err: &azure_core::Error) -> Failure {
        let status = err.http_status().map(u16::from);
        failure_from(&self.remote_error(action, err), status)
    }

    fn probe_container_url(&self) -> Result<azure_core::http::Url, Failure> {
        let sas = self
            .sas(Utc::now())
            .map_err(|err| failure_from(&err, None))?;
        self.container_url(&sas)
            .map_err(|err| failure_from(&err, None))
    }

    /// List Blobs, at most one, under the prefix: answers whether the
    /// credential is accepted at all (a 403 for a missing right still
    /// proves it) and whether it may list.
    pub async fn probe_list(&self) -> Result<(), Failure> {
        let url = self.probe_container_url()?;
        let container = self
            .container_client(&url)
            .map_err(|err| failure_from(&err, None))?;
        let list_prefix = if self.prefix.is_empty() {
            None
        } else {
            Some(format!("{}/", self.prefix))
        };
        let mut pager = container
            .list_blobs(Some(BlobContainerClientListBlobsOptions {
                prefix: list_prefix,
                maxresults: Some(1),
                ..Default::default()
            }))
            .map_err(|err| self.failure("List Blobs", &err))?;
        match pager.next().await {
            Some(Err(err)) => Err(self.failure("List Blobs", &err)),
            _ => Ok(()),
        }
    }

    /// Get Container Properties, read for existence.
    pub async fn probe_container(&self) -> Result<(), Failure> {
        let url = self.probe_container_url()?;
        let container = self
            .container_client(&url)
            .map_err(|err| failure_from(&err, None))?;
        container
            .get_properties(None)
            .await
            .map(|_| ())
            .map_err(|err| self.failure("Get Container Properties", &err))
    }

    /// Writes the test blob in one Put Blob with `Content-MD5`
    /// (`If-None-Match: *` when `conditional`, as `unique` and `prune`
    /// uploads do) and compares the MD5 the service returns. Returns the
    /// blob name.
    pub async fn probe_put(&self, conditional: bool) -> Result<String, Failure> {
        let key = self.key(TEST_OBJECT_NAME);
        let url = self.probe_container_url()?;
        let blob = self
            .blob_client(&url, &key)
            .map_err(|err| failure_from(&err, None))?;
        let md5 = Md5::digest(TEST_OBJECT_BODY).to_vec();
        let options = BlockBlobClientUploadOptions {
            blob_content_md5: Some(md5.clone()),
            blob_content_type: Some("text/plain".into()),
            if_none_match: conditional.then(|| "*".into()),
            partition_size: NonZero::new(TEST_OBJECT_BODY.len() as u64),
            parallel: NonZero::new(1),
            method_options: ClientMethodOptions {
                context: Context::new().with_value(TransactionalMd5(md5.clone())),
            },
            ..Default::default()
        };
        let body = Body::from(bytes::Bytes::from_static(TEST_OBJECT_BODY));
        let response = blob
            .block_blob_client()
            .upload(body.into(), Some(options))
            .await
            .map_err(|err| {
                let status = err.http_status().map(u16::from);
                let action = "Put Blob";
                // put_error turns a refused create under a create-only SAS
                // into "exists" only for unique/prune; the Test asks the
                // same question whatever the rotation.
                failure_from(&self.put_error(action, &key, &err), status)
            })?;
        self.check_md5(response.content_md5.as_deref(), &md5, "the test blob")
            .map_err(|err| failure_from(&err, None))?;
        Ok(key)
    }

    /// Get Blob Properties of `name` under the prefix (reading metadata
    /// needs the read right).
    pub async fn probe_read(&self, name: &str) -> Result<(), Failure> {
        let url = self.probe_container_url()?;
        let blob = self
            .blob_client(&url, &self.key(name))
            .map_err(|err| failure_from(&err, None))?;
        blob.get_properties(None)
            .await
            .map(|_| ())
            .map_err(|err| self.failure("Get Blob Properties", &err))
    }

    /// Delete Blob of `name` under the prefix; for a name never written the
    /// service answers 404 when deleting is allowed, 403 when not.
    pub async fn probe_delete(&self, name: &str) -> Result<(), Failure> {
        let url = self.probe_container_url()?;
        let blob = self
            .blob_client(&url, &self.key(name))
            .map_err(|err| failure_from(&err, None))?;
        blob.delete(None)
            .await
            .map(|_| ())
            .map_err(|err| self.failure("Delete Blob", &err))
    }
}

/// True for a refusal that means the name is taken (`If-None-Match: *`).
pub fn is_exists(failure: &Failure) -> bool {
    failure.kind == FailureKind::Exists
}
