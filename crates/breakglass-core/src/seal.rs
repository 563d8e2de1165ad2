//! Authenticated encryption of small values with a symmetric key:
//! ChaCha20-Poly1305 (RustCrypto's kept `chacha20poly1305`, the AEAD age
//! itself uses), a fresh random nonce per value, and a label bound in as
//! associated data, so a sealed value moved to another label fails to open.
//!
//! Keys derived from another secret use HKDF-SHA256 ([`SealKey::derive`]).
//!
//! Two keys use it: `settings_key`, which seals secret settings before they
//! reach PostgreSQL (text form `sealed-v1:<key id>:<base64>`, naming the key
//! so a wrong key is told apart from a damaged value), and a key derived
//! from `payload_key`, which seals the settings the scheduler publishes on
//! the bus, so that only holders of the services' secret can read them or
//! publish settings the services will accept.

use crate::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

/// The version tag of the sealed text format.
const FORMAT: &str = "sealed-v1";

/// Why a value could not be sealed or opened. Never holds the value.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
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

/// A key that seals values.
#[derive(Clone)]
pub struct SealKey {
    cipher: ChaCha20Poly1305,
    id: String,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey({})", self.id)
    }
}

impl SealKey {
    fn from_bytes(bytes: &[u8]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"breakglass settings key id\0")
            .chain_update(bytes)
            .finalize();
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(bytes)),
            id: hex::encode(&digest[..6]),
        }
    }

    /// Parses a base64 key of 32 bytes (`settings_key`).
    pub fn parse(secret: &Secret) -> Result<Self, SealError> {
        let bytes = STANDARD
            .decode(secret.expose().trim())
            .map_err(|_| SealError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SealError::BadKey);
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A key derived from another secret for one purpose (`context`, the
    /// HKDF `info`), so one secret can serve several purposes without their
    /// keys meeting: HKDF-SHA256 (RFC 5869, the kept `hkdf` crate) with no
    /// salt, the trimmed secret as input keying material.
    pub fn derive(context: &str, secret: &Secret) -> Self {
        let hkdf = hkdf::Hkdf::<Sha256>::new(None, secret.expose().trim().as_bytes());
        let mut okm = zeroize::Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: cannot fail.
        hkdf.expand(context.as_bytes(), &mut okm[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self::from_bytes(&okm[..])
    }

    /// Seals bytes under `label`: the nonce followed by the ciphertext.
    pub fn seal_bytes(&self, label: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_with_ad(label.as_bytes(), plain)
            .map_err(|_| SealError::Damaged {
                field: label.into(),
            })
    }

    /// Opens what [`SealKey::seal_bytes`] made under the same `label`.
    pub fn open_bytes(&self, label: &str, blob: &[u8]) -> Result<Vec<u8>, SealError> {
        self.open_with_ad(label.as_bytes(), blob)
            .map_err(|_| SealError::Damaged {
                field: label.into(),
            })
    }

    /// Seals `plain` with arbitrary associated data `ad` (authenticated,
    /// not encrypted, not stored): a fresh random 12-byte nonce followed by
    /// the ciphertext and its 16-byte tag. Sealing an empty `plain` makes a
    /// tag over `ad` alone: a MAC.
    pub fn seal_with_ad(&self, ad: &[u8], plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce_bytes: [u8; 12] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce_bytes),
                Payload {
                    msg: plain,
                    aad: ad,
                },
            )
            // Encryption fails only for messages near 2^38 bytes.
            .map_err(|_| SealError::Damaged {
                field: "associated data".into(),
            })?;
        let mut blob = nonce_bytes.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Opens what [`SealKey::seal_with_ad`] made with the same `ad`.
    pub fn open_with_ad(&self, ad: &[u8], blob: &[u8]) -> Result<Vec<u8>, SealError> {
        let damaged = || SealError::Damaged {
            field: "associated data".into(),
        };
        if blob.len() < 12 + 16 {
            return Err(damaged());
        }
        let (nonce, sealed) = blob.split_at(12);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: ad,
                },
            )
            .map_err(|_| damaged())
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
        let blob = self.seal_bytes(field, value.expose().as_bytes())?;
        Ok(format!("{FORMAT}:{}:{}", self.id, STANDARD.encode(blob)))
    }

    /// Opens a value sealed by [`SealKey::seal`] for `field`.
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
        let plain = self.open_bytes(field, &blob)?;
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
        let key = SealKey::parse(&SealKey::generate()).unwrap();
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
        let other = SealKey::parse(&SealKey::generate()).unwrap();
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
    fn a_derived_key_opens_only_what_the_same_secret_sealed() {
        let secret = Secret::new("AGE-SECRET-KEY-1EXAMPLE");
        let key = SealKey::derive("bus settings", &secret);
        let blob = key.seal_bytes("v7", b"CANARY").unwrap();
        assert_eq!(
            SealKey::derive("bus settings", &secret)
                .open_bytes("v7", &blob)
                .unwrap(),
            b"CANARY"
        );
        assert!(
            key.open_bytes("v8", &blob).is_err(),
            "the label is bound in"
        );
        assert!(
            SealKey::derive("another purpose", &secret)
                .open_bytes("v7", &blob)
                .is_err()
        );
    }

    #[test]
    fn derivation_is_hkdf_sha256() {
        // RFC 5869 test case 3 (no salt, empty info) does not fit a text
        // secret; check instead against HKDF computed independently here:
        // PRK = HMAC-SHA256(zeros, ikm), OKM = HMAC-SHA256(PRK, info || 0x01).
        use hkdf::hmac::{Hmac, KeyInit as HmacKeyInit, Mac};
        let secret = Secret::new("  AGE-SECRET-KEY-1EXAMPLE\n");
        let mut extract = <Hmac<Sha256> as HmacKeyInit>::new_from_slice(&[0u8; 32]).unwrap();
        extract.update(b"AGE-SECRET-KEY-1EXAMPLE");
        let prk = extract.finalize().into_bytes();
        let mut expand = <Hmac<Sha256> as HmacKeyInit>::new_from_slice(&prk).unwrap();
        expand.update(b"purpose");
        expand.update(&[1]);
        let okm = expand.finalize().into_bytes();
        let expected = SealKey::from_bytes(&okm);
        let derived = SealKey::derive("purpose", &secret);
        assert_eq!(derived.id(), expected.id());
        let blob = expected.seal_bytes("l", b"x").unwrap();
        assert_eq!(derived.open_bytes("l", &blob).unwrap(), b"x");
    }

    #[test]
    fn a_bad_key_is_refused() {
        assert_eq!(
            SealKey::parse(&Secret::new("c2hvcnQ=")).unwrap_err(),
            SealError::BadKey
        );
    }
}
