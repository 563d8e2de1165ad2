//! Sealing of secret settings before they reach PostgreSQL.
//!
//! ChaCha20-Poly1305 (RustCrypto's kept `chacha20poly1305`) under
//! `settings_key`, a 32-byte key from the mounted service secret. Each value
//! gets a fresh random nonce, and the setting's name is bound in as
//! associated data, so a sealed value moved to another key fails to open.
//! The stored text names the key by a short id, so a wrong key is told
//! apart from a damaged value.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use breakglass_core::Secret;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

/// The version tag of the sealed text format.
const FORMAT: &str = "sealed-v1";

/// Why a value could not be sealed or opened. Never holds the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// `settings_key` is not 32 bytes of base64.
    #[error("settings_key must be 32 random bytes in base64 (`breakglass keygen --settings`)")]
    BadKey,
    /// The value was sealed under another key.
    #[error(
        "{field} was stored under settings_key {stored}, but the mounted settings_key is {mounted}: mount the key it was stored with, or enter the secret again on the settings page"
    )]
    WrongKey {
        /// The setting.
        field: String,
        /// Key id the value names.
        stored: String,
        /// Key id of the mounted key.
        mounted: String,
    },
    /// The text is not a sealed value, or it was altered.
    #[error("{field}: the stored value is damaged or was altered (it fails its integrity check)")]
    Damaged {
        /// The setting.
        field: String,
    },
}

/// The key that seals secret settings at rest.
#[derive(Clone)]
pub struct SettingsKey {
    cipher: ChaCha20Poly1305,
    id: String,
}

impl std::fmt::Debug for SettingsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SettingsKey({})", self.id)
    }
}

impl SettingsKey {
    /// Parses the base64 `settings_key`.
    pub fn parse(secret: &Secret) -> Result<Self, SealError> {
        let bytes = STANDARD
            .decode(secret.expose().trim())
            .map_err(|_| SealError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        let digest = Sha256::new()
            .chain_update(b"breakglass settings key id\0")
            .chain_update(&bytes)
            .finalize();
        Ok(Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
            id: hex::encode(&digest[..6]),
        })
    }

    /// A fresh random key, as the text to put in the service secret.
    pub fn generate() -> Secret {
        Secret::new(STANDARD.encode(rand::random::<[u8; 32]>()))
    }

    /// A short public id of the key (a hash prefix), safe to show.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `value` of setting `field`: `sealed-v1:<key id>:<base64>`.
    pub fn seal(&self, field: &str, value: &Secret) -> Result<String, SealError> {
        let nonce_bytes: [u8; 12] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                Payload {
                    msg: value.expose().as_bytes(),
                    aad: field.as_bytes(),
                },
            )
            // Encryption fails only for messages near 2^38 bytes.
            .map_err(|_| SealError::Damaged {
                field: field.into(),
            })?;
        let mut blob = nonce_bytes.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(format!("{FORMAT}:{}:{}", self.id, STANDARD.encode(blob)))
    }

    /// Opens a value sealed by [`SettingsKey::seal`] for `field`.
    pub fn open(&self, field: &str, text: &str) -> Result<Secret, SealError> {
        let damaged = || SealError::Damaged {
            field: field.into(),
        };
        let mut parts = text.splitn(3, ':');
        let (Some(FORMAT), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(damaged());
        };
        if id != self.id {
            return Err(SealError::WrongKey {
                field: field.into(),
                stored: id.into(),
                mounted: self.id.clone(),
            });
        }
        let blob = STANDARD.decode(body).map_err(|_| damaged())?;
        if blob.len() < 12 {
            return Err(damaged());
        }
        let (nonce, sealed) = blob.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: field.as_bytes(),
                },
            )
            .map_err(|_| damaged())?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| damaged())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_field() {
        let key = SettingsKey::parse(&SettingsKey::generate()).unwrap();
        let sealed = key
            .seal("s3_secret_access_key", &Secret::new("CANARY"))
            .unwrap();
        assert!(!sealed.contains("CANARY"));
        assert_ne!(
            sealed,
            key.seal("s3_secret_access_key", &Secret::new("CANARY"))
                .unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(
            key.open("s3_secret_access_key", &sealed).unwrap().expose(),
            "CANARY"
        );
        assert_eq!(
            key.open("blob_account_key", &sealed).unwrap_err(),
            SealError::Damaged {
                field: "blob_account_key".into()
            }
        );
        let other = SettingsKey::parse(&SettingsKey::generate()).unwrap();
        assert!(matches!(
            other.open("s3_secret_access_key", &sealed),
            Err(SealError::WrongKey { .. })
        ));
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(key.open("s3_secret_access_key", &altered).is_err());
    }

    #[test]
    fn a_bad_key_is_refused() {
        assert_eq!(
            SettingsKey::parse(&Secret::new("c2hvcnQ=")).unwrap_err(),
            SealError::BadKey
        );
    }
}
