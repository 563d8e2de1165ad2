//! Settings stored through the config API, in the same PostgreSQL schema as
//! the run log: the current values (secrets sealed, see
//! [`breakglass_core::seal`]), a
//! version per update and an audit row per update naming who changed which
//! keys, never the values.
//!
//! Updates are compare-and-set on the version, so two admins saving at once
//! cannot silently overwrite each other: the second is told the version
//! moved.

use crate::{RunLog, RunLogError, db};
use breakglass_config::ApiSettings;
use breakglass_config::source::is_secret_key;
use breakglass_core::seal::{SealError, SealKey};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// Why stored settings could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsStoreError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] RunLogError),
    /// A sealed value could not be opened (wrong key, altered row).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Someone else saved in between.
    #[error(
        "the settings changed since version {expected} (now version {current}): reload them and apply your change again"
    )]
    VersionMoved {
        /// The version the caller edited.
        expected: u64,
        /// The version stored now.
        current: u64,
    },
}

/// One audit row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsChange {
    /// The version this update made.
    pub version: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// Who, as the caller named themselves (`x-breakglass-actor`).
    pub actor: String,
    /// The caller's address and, over mutual TLS, its client certificate's
    /// SHA-256 fingerprint.
    pub peer: String,
    /// Keys whose values changed.
    pub changed: Vec<String>,
}

/// Who asked for an update, for the audit row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// A person or system name.
    pub name: String,
    /// Network address of the caller.
    pub peer: String,
}

/// The stored settings as read: the values that opened, the secrets that
/// did not (sealed under another `settings_key`, or altered) and the last
/// audit row.
#[derive(Clone, Debug, Default)]
pub struct StoredSettings {
    /// The version and every value that could be read.
    pub settings: ApiSettings,
    /// Secrets that are stored but do not open, with why.
    pub unreadable: Vec<(String, SealError)>,
    /// The update that made this version.
    pub last: Option<SettingsChange>,
}

impl StoredSettings {
    /// Why `key` is stored but unreadable, if it is.
    pub fn unreadable(&self, key: &str) -> Option<&SealError> {
        self.unreadable
            .iter()
            .find(|(field, _)| field == key)
            .map(|(_, err)| err)
    }
}

/// The stored settings, opened with `settings_key`.
#[derive(Clone, Debug)]
pub struct SettingsStore {
    log: RunLog,
    key: SealKey,
}

impl SettingsStore {
    /// Settings in the run log's database, sealed under `key`.
    pub fn new(log: RunLog, key: SealKey) -> Self {
        Self { log, key }
    }

    /// The current settings with their version (0 and none before the
    /// first update), secrets opened where they open (the others are in
    /// [`StoredSettings::unreadable`]).
    pub async fn current(&self) -> Result<StoredSettings, SettingsStoreError> {
        let mut tx = self.log.pool.begin().await.map_err(db)?;
        // One snapshot of both tables: REPEATABLE READ.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let rows = sqlx::query("SELECT key, value, sealed FROM settings ORDER BY key")
            .fetch_all(&mut *tx)
            .await
            .map_err(db)?;
        let last = sqlx::query(
            "SELECT version, at, actor, peer, changed FROM settings_audit ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .map(change_from_row)
        .transpose()?;
        tx.commit().await.map_err(db)?;
        let mut fields = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for row in rows {
            let key: String = row.try_get("key").map_err(db)?;
            let value: String = row.try_get("value").map_err(db)?;
            let sealed: bool = row.try_get("sealed").map_err(db)?;
            if !sealed {
                fields.push((key, breakglass_core::Secret::new(value)));
                continue;
            }
            match self.key.open(&key, &value) {
                Ok(secret) => fields.push((key, secret)),
                Err(err) => unreadable.push((key, err)),
            }
        }
        let version = last.as_ref().map_or(0, |change| change.version);
        Ok(StoredSettings {
            settings: ApiSettings::new(version, fields),
            unreadable,
            last,
        })
    }

    /// Stores `next` as the version after `expected_version` (and above
    /// `version_floor`, the newest version the services have seen), with
    /// an audit row naming the `changed` keys; fails with
    /// [`SettingsStoreError::VersionMoved`] when another update came first.
    /// Returns the stored settings with their version.
    pub async fn update(
        &self,
        expected_version: u64,
        version_floor: u64,
        next: &ApiSettings,
        changed: &[String],
        actor: &Actor,
    ) -> Result<ApiSettings, SettingsStoreError> {
        let mut sealed_rows = Vec::new();
        for (key, value) in next.iter() {
            if is_secret_key(key) {
                sealed_rows.push((key.to_owned(), self.key.seal(key, value)?, true));
            } else {
                sealed_rows.push((key.to_owned(), value.expose().to_owned(), false));
            }
        }
        let mut tx = self.log.pool.begin().await.map_err(db)?;
        // Serialises updates: the version check and the write are one step.
        sqlx::query("LOCK TABLE settings_audit IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM settings_audit")
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
        let current = current.max(0) as u64;
        if current != expected_version {
            return Err(SettingsStoreError::VersionMoved {
                expected: expected_version,
                current,
            });
        }
        // After a restored database, numbering continues above what the
        // services hold, or they would ignore the update as old.
        let version = current.max(version_floor) + 1;
        sqlx::query("DELETE FROM settings")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for (key, value, sealed) in &sealed_rows {
            sqlx::query("INSERT INTO settings (key, value, sealed) VALUES ($1, $2, $3)")
                .bind(key)
                .bind(value)
                .bind(sealed)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        sqlx::query(
            "INSERT INTO settings_audit (version, at, actor, peer, changed) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(version as i64)
        .bind(Utc::now())
        .bind(&actor.name)
        .bind(&actor.peer)
        .bind(changed)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(ApiSettings::new(
            version,
            next.iter()
                .map(|(key, value)| (key.to_owned(), value.clone())),
        ))
    }

    /// The newest audit rows, newest first.
    pub async fn history(&self, limit: u32) -> Result<Vec<SettingsChange>, SettingsStoreError> {
        sqlx::query(
            "SELECT version, at, actor, peer, changed FROM settings_audit ORDER BY version DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.log.pool)
        .await
        .map_err(db)?
        .into_iter()
        .map(change_from_row)
        .collect()
    }
}

fn change_from_row(row: sqlx::postgres::PgRow) -> Result<SettingsChange, SettingsStoreError> {
    let version: i64 = row.try_get("version").map_err(db)?;
    Ok(SettingsChange {
        version: version.max(0) as u64,
        at: row.try_get("at").map_err(db)?,
        actor: row.try_get("actor").map_err(db)?,
        peer: row.try_get("peer").map_err(db)?,
        changed: row.try_get("changed").map_err(db)?,
    })
}
