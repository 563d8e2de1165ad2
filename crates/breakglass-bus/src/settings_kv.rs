//! The settings stored through the config API, carried to every service.
//!
//! The scheduler owns them (PostgreSQL); the collector, renderer and
//! uploader have no database (ARCHITECTURE.md decision 25). After each
//! update the scheduler publishes them to the JetStream key-value bucket
//! `<prefix>_settings`, key `current`, as a [`v1::PublishedSettings`] whose
//! fields are age-encrypted to the services' payload key: no credential is
//! on the bus in clear. Every service watches the key and lays the newest
//! settings over its mounted wiring. Publishing is a compare-and-set on the
//! entry's revision and never replaces a newer version with an older one,
//! so two schedulers re-publishing at start-up cannot undo an update.

use crate::payload::PayloadKey;
use crate::{Bus, BusError};
use async_nats::jetstream::kv;
use breakglass_config::ApiSettings;
use breakglass_core::Secret;
use breakglass_proto::v1;
use futures::StreamExt;
use prost::Message;

/// The key of the current settings in the bucket.
const CURRENT: &str = "current";

fn setup(bucket: &str, reason: impl std::fmt::Display) -> BusError {
    BusError::Setup {
        what: format!("key-value bucket {bucket}"),
        reason: reason.to_string(),
    }
}

impl Bus {
    /// The settings bucket, created when missing.
    pub async fn settings_store(&self) -> Result<kv::Store, BusError> {
        let bucket = self.subjects().settings_bucket();
        if let Ok(store) = self.jetstream().get_key_value(&bucket).await {
            return Ok(store);
        }
        // The bucket's stream is created directly, with the settings
        // `create_key_value` would use: that call first asks for the
        // account's info, whose reply from NATS 2.9 this client cannot
        // parse. `get_key_value` then reads it as a bucket.
        self.jetstream()
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("breakglass settings from the config API (age-encrypted)".into()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: async_nats::jetstream::stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|err| setup(&bucket, err))?;
        self.jetstream()
            .get_key_value(&bucket)
            .await
            .map_err(|err| setup(&bucket, err))
    }

    /// Publishes `settings` unless the bucket already holds this version or
    /// a newer one. Returns true when it wrote.
    pub async fn publish_settings(
        &self,
        key: &PayloadKey,
        settings: &ApiSettings,
    ) -> Result<bool, BusError> {
        let bucket = self.subjects().settings_bucket();
        let store = self.settings_store().await?;
        let fields = v1::StoredSettingsFields {
            fields: settings
                .iter()
                .map(|(k, v)| (k.to_owned(), v.expose().to_owned()))
                .collect(),
        };
        let sealed = key
            .encrypt_bytes(&fields.encode_to_vec())
            .map_err(|err| setup(&bucket, format!("cannot encrypt the settings: {err}")))?;
        drop(fields);
        let value: bytes::Bytes = v1::PublishedSettings {
            version: settings.version,
            sealed,
        }
        .encode_to_vec()
        .into();
        for _ in 0..5 {
            let entry = store
                .entry(CURRENT)
                .await
                .map_err(|err| setup(&bucket, err))?;
            let written = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let stored = v1::PublishedSettings::decode(entry.value.as_ref())
                        .map(|p| p.version)
                        .unwrap_or(0);
                    if stored >= settings.version {
                        return Ok(false);
                    }
                    store
                        .update(CURRENT, value.clone(), entry.revision)
                        .await
                        .is_ok()
                }
                Some(entry) => store
                    .update(CURRENT, value.clone(), entry.revision)
                    .await
                    .is_ok(),
                None => store.create(CURRENT, value.clone()).await.is_ok(),
            };
            if written {
                return Ok(true);
            }
            // Someone wrote in between: look again.
        }
        Err(setup(
            &bucket,
            "the settings entry kept changing while publishing; try again",
        ))
    }

    /// The settings published now, if any (`None` before the first update).
    pub async fn published_settings(
        &self,
        key: &PayloadKey,
    ) -> Result<Option<ApiSettings>, BusError> {
        let bucket = self.subjects().settings_bucket();
        let store = self.settings_store().await?;
        match store
            .entry(CURRENT)
            .await
            .map_err(|err| setup(&bucket, err))?
        {
            Some(entry) if entry.operation == kv::Operation::Put => {
                open(key, &bucket, &entry.value).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Follows the published settings: yields the current ones (or `None`)
    /// first, then the newest again and each newer version as it is
    /// published (the watch starts with the last value, so nothing published
    /// between the first read and the watch is missed). The stream ends
    /// when the watch breaks (e.g. NATS restarted); call again to resume.
    pub async fn watch_settings(
        &self,
        key: PayloadKey,
    ) -> Result<impl futures::Stream<Item = Result<Option<ApiSettings>, BusError>> + use<>, BusError>
    {
        let bucket = self.subjects().settings_bucket();
        let store = self.settings_store().await?;
        let first = self.published_settings(&key).await?;
        let watch = store
            .watch_with_history(CURRENT)
            .await
            .map_err(|err| setup(&bucket, err))?;
        let updates = watch.map(move |entry| match entry {
            Ok(entry) if entry.operation == kv::Operation::Put => {
                open(&key, &bucket, &entry.value).map(Some)
            }
            Ok(_) => Ok(None),
            Err(err) => Err(setup(&bucket, err)),
        });
        Ok(futures::stream::once(async move { Ok(first) }).chain(updates))
    }
}

fn open(key: &PayloadKey, bucket: &str, value: &[u8]) -> Result<ApiSettings, BusError> {
    let published = v1::PublishedSettings::decode(value)
        .map_err(|err| setup(bucket, format!("the settings entry is not readable: {err}")))?;
    let plain = key.decrypt_bytes(&published.sealed).map_err(|err| {
        setup(
            bucket,
            format!("the settings entry cannot be decrypted with this payload_key: {err}"),
        )
    })?;
    let fields = v1::StoredSettingsFields::decode(plain.as_slice())
        .map_err(|err| setup(bucket, format!("the settings entry is not readable: {err}")))?;
    Ok(ApiSettings::new(
        published.version,
        fields.fields.into_iter().map(|(k, v)| (k, Secret::new(v))),
    ))
}
