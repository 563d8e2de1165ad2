//! The settings stored through the config API, carried to every service.
//!
//! The scheduler owns them (PostgreSQL); the collector, renderer and
//! uploader have no database (ARCHITECTURE.md decision 25). After each
//! update the scheduler publishes them to the JetStream key-value bucket
//! `<prefix>_settings`, key `current`, as a [`v1::PublishedSettings`] whose
//! fields are sealed (ChaCha20-Poly1305) under a key derived from the
//! services' `payload_key` secret, with the bucket and version bound in: no
//! credential is on the bus in clear, and a NATS client without that secret
//! can neither read the settings nor publish settings the services accept
//! (age alone would let anyone holding the public key publish). Every
//! service watches the key and lays the newest
//! settings over its mounted wiring. Publishing is a compare-and-set on the
//! entry's revision and never replaces a newer version with an older one,
//! so two schedulers re-publishing at start-up cannot undo an update.

use crate::{Bus, BusError};
use async_nats::jetstream::kv;
use breakglass_config::ApiSettings;
use breakglass_core::Secret;
use breakglass_core::seal::SealKey;
use breakglass_proto::v1;
use futures::StreamExt;
use prost::Message;

/// The key of the current settings in the bucket.
const CURRENT: &str = "current";

/// The key that seals settings on the bus, derived from `payload_key`.
pub fn bus_settings_key(payload_key: &Secret) -> SealKey {
    SealKey::derive("breakglass settings on the bus v1", payload_key)
}

/// What is bound into each sealed entry: the bucket and the version, so an
/// entry cannot be replayed under another version or installation.
fn label(bucket: &str, version: u64) -> String {
    format!("{bucket}/{CURRENT}/v{version}")
}

fn setup(bucket: &str, reason: impl std::fmt::Display) -> BusError {
    BusError::Setup {
        what: format!("key-value bucket {bucket}"),
        reason: reason.to_string(),
    }
}

/// What [`Bus::publish_settings`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// True when the entry was written.
    pub written: bool,
    /// The version the bus holds now (`None`: nothing that opens).
    pub bus_version: Option<u64>,
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
                num_replicas: self.options().replicas,
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
    /// a newer one that opens with `key`. An entry that does not open (a
    /// changed `payload_key`, or one written without the key) counts as
    /// nothing and is replaced. Returns what was there and whether it wrote.
    pub async fn publish_settings(
        &self,
        key: &SealKey,
        settings: &ApiSettings,
    ) -> Result<Published, BusError> {
        let bucket = self.subjects().settings_bucket();
        let store = self.settings_store().await?;
        let fields = v1::StoredSettingsFields {
            fields: settings
                .iter()
                .map(|(k, v)| (k.to_owned(), v.expose().to_owned()))
                .collect(),
        };
        let sealed = key
            .seal_bytes(&label(&bucket, settings.version), &fields.encode_to_vec())
            .map_err(|err| setup(&bucket, format!("cannot seal the settings: {err}")))?;
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
            // Another publisher may write between the read and the write;
            // only that (a moved revision) is worth another look.
            let outcome = match entry {
                Some(entry) => {
                    let stored = (entry.operation == kv::Operation::Put)
                        .then(|| open(key, &bucket, &entry.value).ok())
                        .flatten()
                        .map(|held| held.version);
                    if let Some(stored) = stored
                        && stored >= settings.version
                    {
                        return Ok(Published {
                            written: false,
                            bus_version: Some(stored),
                        });
                    }
                    match store.update(CURRENT, value.clone(), entry.revision).await {
                        Ok(_) => Ok(()),
                        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            Err(None)
                        }
                        Err(err) => Err(Some(err.to_string())),
                    }
                }
                None => match store.create(CURRENT, value.clone()).await {
                    Ok(_) => Ok(()),
                    Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Err(None),
                    Err(err) => Err(Some(err.to_string())),
                },
            };
            match outcome {
                Ok(()) => {
                    return Ok(Published {
                        written: true,
                        bus_version: Some(settings.version),
                    });
                }
                Err(Some(reason)) => return Err(setup(&bucket, reason)),
                Err(None) => continue,
            }
        }
        Err(setup(
            &bucket,
            "the settings entry kept changing while publishing; try again",
        ))
    }

    /// The settings published now, if any (`None` before the first update).
    pub async fn published_settings(&self, key: &SealKey) -> Result<Option<ApiSettings>, BusError> {
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
        key: SealKey,
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

fn open(key: &SealKey, bucket: &str, value: &[u8]) -> Result<ApiSettings, BusError> {
    let published = v1::PublishedSettings::decode(value)
        .map_err(|err| setup(bucket, format!("the settings entry is not readable: {err}")))?;
    let plain = key
        .open_bytes(&label(bucket, published.version), &published.sealed)
        .map_err(|_| {
            setup(
                bucket,
                "the settings entry does not open with this payload_key: it was published by a process with another payload_key, or altered",
            )
        })?;
    let fields = v1::StoredSettingsFields::decode(plain.as_slice())
        .map_err(|err| setup(bucket, format!("the settings entry is not readable: {err}")))?;
    Ok(ApiSettings::new(
        published.version,
        fields.fields.into_iter().map(|(k, v)| (k, Secret::new(v))),
    ))
}
