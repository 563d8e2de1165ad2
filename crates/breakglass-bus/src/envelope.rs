//! The envelope around every event the services hand each other.
//!
//! age encrypts payloads to the services' public key but tells nobody who
//! wrote them, and the events were plain protobuf: anyone allowed to
//! publish could have the uploader store a forged workbook. So
//! `snapshot.ready`, `workbook.ready` and `run.finished.<run id>` travel as
//! a [`v1::Envelope`] protected under a key derived (HKDF-SHA256, [`event_key`])
//! from `payload_key`, which only the services hold:
//!
//! - **sealed** (`snapshot.ready`, `workbook.ready`): ChaCha20-Poly1305
//!   encrypts and authenticates the event; a reader without the key learns
//!   only the run id (which `Nats-Msg-Id` shows anyway);
//! - **authenticated** (`run.finished`): the event is in clear for readers
//!   without the key (the Mavis core, `breakglass trigger --wait`), and a
//!   Poly1305 tag (ChaCha20-Poly1305 over an empty plaintext) proves the
//!   services made it.
//!
//! The associated data binds the mode, the subject, the `Nats-Msg-Id`
//! header, the run id and the creation time ([`associated_data`]). A
//! genuine event moved to another subject, message id or run does not open.
//! A genuine event replayed unchanged is dropped by JetStream's one-day
//! duplicate window; after it, [`MAX_EVENT_AGE`] (below that window) makes
//! it stale. Either way it changes nothing.

use breakglass_core::Secret;
use breakglass_core::seal::SealKey;
use breakglass_proto::v1;
use prost::Message as _;
use std::time::Duration;

/// The HKDF `info` of the event key.
pub const EVENT_KEY_CONTEXT: &str = "breakglass events on the bus v1";

/// The envelope format version.
pub const VERSION: u32 = 1;

/// The oldest event a stage acts on: an hour less than the stream's
/// duplicate window ([`crate::DUPLICATE_WINDOW`]), so a genuine message
/// replayed once the stream has forgotten its id is already too old.
pub const MAX_EVENT_AGE: Duration = Duration::from_secs(23 * 3600);

/// The key that seals and authenticates events, derived from `payload_key`.
pub fn event_key(payload_key: &Secret) -> SealKey {
    SealKey::derive(EVENT_KEY_CONTEXT, payload_key)
}

/// How an event is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Encrypted and authenticated.
    Sealed,
    /// In clear, authenticated.
    Authenticated,
}

impl Mode {
    fn wire(self) -> v1::EnvelopeMode {
        match self {
            Mode::Sealed => v1::EnvelopeMode::Sealed,
            Mode::Authenticated => v1::EnvelopeMode::Authenticated,
        }
    }
}

/// What an envelope is bound to: where it was published and for which run.
#[derive(Clone, Copy, Debug)]
pub struct Binding<'a> {
    /// The subject.
    pub subject: &'a str,
    /// The `Nats-Msg-Id` header.
    pub msg_id: &'a str,
    /// The run id.
    pub run_id: &'a str,
}

/// Why an envelope was refused. Never holds the event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not an envelope at all.
    #[error("not an event envelope: {0}")]
    Malformed(String),
    /// Another format version.
    #[error("envelope version {0} is not supported (expected {VERSION})")]
    Version(u32),
    /// The wrong protection for this subject.
    #[error("envelope mode {got} where {expected} is required")]
    Mode {
        /// What the subject requires.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// The key, subject, message id, run id or time it is bound to differ,
    /// or it was altered.
    #[error(
        "the envelope does not open: it was not made by a breakglass service with this payload_key, or it was altered, or moved to another subject, message id or run"
    )]
    DoesNotOpen,
    /// Authentic, but older than [`MAX_EVENT_AGE`].
    #[error(
        "stale event: made {age_s} s ago, more than the {max_s} s an event is acted on (a replay, or a backlog that outlived it)"
    )]
    Stale {
        /// Its age.
        age_s: i64,
        /// The limit.
        max_s: u64,
    },
    /// Made in the future.
    #[error("created_at_unix_ms lies {ahead_s} s in the future (more than the clock skew allowed)")]
    Future {
        /// How far ahead.
        ahead_s: i64,
    },
}

/// The length-prefixed associated data of one envelope.
pub fn associated_data(mode: Mode, binding: Binding<'_>, created_at_unix_ms: i64) -> Vec<u8> {
    let mut ad = Vec::with_capacity(128);
    ad.extend_from_slice(b"breakglass event envelope v1");
    let mut part = |bytes: &[u8]| {
        ad.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        ad.extend_from_slice(bytes);
    };
    part(&(mode.wire() as i32).to_be_bytes());
    part(binding.subject.as_bytes());
    part(binding.msg_id.as_bytes());
    part(binding.run_id.as_bytes());
    part(&created_at_unix_ms.to_be_bytes());
    ad
}

/// Wraps `event` (protobuf bytes) for `binding`, made at `created_at_unix_ms`.
pub fn seal(
    key: &SealKey,
    mode: Mode,
    binding: Binding<'_>,
    created_at_unix_ms: i64,
    event: &[u8],
) -> Result<v1::Envelope, EnvelopeError> {
    let ad = associated_data(mode, binding, created_at_unix_ms);
    let (nonce, body, tag) = match mode {
        Mode::Sealed => {
            let blob = key
                .seal_with_ad(&ad, event)
                .map_err(|err| EnvelopeError::Malformed(err.to_string()))?;
            let (nonce, body) = blob.split_at(12);
            (nonce.to_vec(), body.to_vec(), Vec::new())
        }
        Mode::Authenticated => {
            let mut covered = ad;
            covered.extend_from_slice(event);
            let blob = key
                .seal_with_ad(&covered, &[])
                .map_err(|err| EnvelopeError::Malformed(err.to_string()))?;
            let (nonce, tag) = blob.split_at(12);
            (nonce.to_vec(), event.to_vec(), tag.to_vec())
        }
    };
    Ok(v1::Envelope {
        version: VERSION,
        mode: mode.wire() as i32,
        run_id: binding.run_id.into(),
        created_at_unix_ms,
        nonce,
        body,
        tag,
    })
}

/// An envelope that opened.
#[derive(Debug)]
pub struct Opened {
    /// The run it is bound to.
    pub run_id: String,
    /// When it was made.
    pub created_at_unix_ms: i64,
    /// The event's protobuf bytes.
    pub event: Vec<u8>,
}

/// Parses an envelope without checking it: its run id and mode, to build
/// the binding a real [`open`] needs.
pub fn parse(bytes: &[u8]) -> Result<v1::Envelope, EnvelopeError> {
    let envelope =
        v1::Envelope::decode(bytes).map_err(|err| EnvelopeError::Malformed(err.to_string()))?;
    if envelope.version != VERSION {
        return Err(EnvelopeError::Version(envelope.version));
    }
    Ok(envelope)
}

fn check_mode(envelope: &v1::Envelope, mode: Mode) -> Result<(), EnvelopeError> {
    if envelope.mode != mode.wire() as i32 {
        return Err(EnvelopeError::Mode {
            expected: mode.wire().as_str_name(),
            got: v1::EnvelopeMode::try_from(envelope.mode)
                .map(|m| m.as_str_name().to_owned())
                .unwrap_or_else(|_| envelope.mode.to_string()),
        });
    }
    Ok(())
}

/// Opens `envelope` as `mode` bound to `subject` and `msg_id` (what the
/// message arrived with) and to the run id it names. Does not judge age:
/// see [`check_fresh`].
pub fn open(
    key: &SealKey,
    mode: Mode,
    subject: &str,
    msg_id: &str,
    envelope: &v1::Envelope,
) -> Result<Opened, EnvelopeError> {
    check_mode(envelope, mode)?;
    if envelope.nonce.len() != 12 {
        return Err(EnvelopeError::DoesNotOpen);
    }
    let binding = Binding {
        subject,
        msg_id,
        run_id: &envelope.run_id,
    };
    let ad = associated_data(mode, binding, envelope.created_at_unix_ms);
    let mut blob = envelope.nonce.clone();
    let event = match mode {
        Mode::Sealed => {
            blob.extend_from_slice(&envelope.body);
            key.open_with_ad(&ad, &blob)
                .map_err(|_| EnvelopeError::DoesNotOpen)?
        }
        Mode::Authenticated => {
            if envelope.tag.len() != 16 {
                return Err(EnvelopeError::DoesNotOpen);
            }
            blob.extend_from_slice(&envelope.tag);
            let mut covered = ad;
            covered.extend_from_slice(&envelope.body);
            key.open_with_ad(&covered, &blob)
                .map_err(|_| EnvelopeError::DoesNotOpen)?;
            envelope.body.clone()
        }
    };
    Ok(Opened {
        run_id: envelope.run_id.clone(),
        created_at_unix_ms: envelope.created_at_unix_ms,
        event,
    })
}

/// The event of an authenticated envelope, without checking the tag: what
/// a reader without `payload_key` (the Mavis core) sees. Trust it only as
/// far as NATS permissions restrict who may publish on its subject.
pub fn read_unverified(envelope: &v1::Envelope) -> Result<Vec<u8>, EnvelopeError> {
    check_mode(envelope, Mode::Authenticated)?;
    Ok(envelope.body.clone())
}

/// Refuses an event made more than [`MAX_EVENT_AGE`] before `now_ms` or
/// more than the allowed clock skew after it.
pub fn check_fresh(created_at_unix_ms: i64, now_ms: i64) -> Result<(), EnvelopeError> {
    let skew = crate::validate::CLOCK_SKEW.as_millis() as i64;
    let age = now_ms.saturating_sub(created_at_unix_ms);
    if age < -skew {
        return Err(EnvelopeError::Future {
            ahead_s: -age / 1000,
        });
    }
    if age > MAX_EVENT_AGE.as_millis() as i64 {
        return Err(EnvelopeError::Stale {
            age_s: age / 1000,
            max_s: MAX_EVENT_AGE.as_secs(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn key() -> SealKey {
        event_key(&Secret::new("AGE-SECRET-KEY-1TESTKEY"))
    }

    fn binding() -> Binding<'static> {
        Binding {
            subject: "bg.workbook.ready",
            msg_id: "workbook-run-1",
            run_id: "run-1",
        }
    }

    fn roundtrip(mode: Mode, envelope: &v1::Envelope) -> Result<Opened, EnvelopeError> {
        let parsed = parse(&envelope.encode_to_vec())?;
        open(&key(), mode, "bg.workbook.ready", "workbook-run-1", &parsed)
    }

    #[test]
    fn both_modes_open_with_the_same_key_and_binding() {
        for mode in [Mode::Sealed, Mode::Authenticated] {
            let envelope = seal(&key(), mode, binding(), NOW, b"CANARY-EVENT").unwrap();
            let opened = roundtrip(mode, &envelope).unwrap();
            assert_eq!(opened.event, b"CANARY-EVENT");
            assert_eq!(opened.run_id, "run-1");
            assert_eq!(opened.created_at_unix_ms, NOW);
        }
        let sealed = seal(&key(), Mode::Sealed, binding(), NOW, b"CANARY-EVENT").unwrap();
        assert!(
            !sealed.encode_to_vec().windows(6).any(|w| w == b"CANARY"),
            "a sealed event is not readable"
        );
    }

    #[test]
    fn a_wrong_key_subject_run_or_message_id_does_not_open() {
        for mode in [Mode::Sealed, Mode::Authenticated] {
            let envelope = seal(&key(), mode, binding(), NOW, b"event").unwrap();
            let other_key = event_key(&Secret::new("AGE-SECRET-KEY-1OTHER"));
            assert_eq!(
                open(
                    &other_key,
                    mode,
                    "bg.workbook.ready",
                    "workbook-run-1",
                    &envelope
                )
                .unwrap_err(),
                EnvelopeError::DoesNotOpen
            );
            assert_eq!(
                open(
                    &key(),
                    mode,
                    "bg.snapshot.ready",
                    "workbook-run-1",
                    &envelope
                )
                .unwrap_err(),
                EnvelopeError::DoesNotOpen,
                "wrong subject"
            );
            assert_eq!(
                open(
                    &key(),
                    mode,
                    "bg.workbook.ready",
                    "workbook-run-2",
                    &envelope
                )
                .unwrap_err(),
                EnvelopeError::DoesNotOpen,
                "wrong message id"
            );
            let mut moved = envelope.clone();
            moved.run_id = "run-2".into();
            assert_eq!(
                roundtrip(mode, &moved).unwrap_err(),
                EnvelopeError::DoesNotOpen,
                "wrong run id"
            );
            let mut redated = envelope.clone();
            redated.created_at_unix_ms += 1;
            assert_eq!(
                roundtrip(mode, &redated).unwrap_err(),
                EnvelopeError::DoesNotOpen,
                "altered time"
            );
            // A key derived for another purpose from the same secret.
            let settings = SealKey::derive(
                "breakglass settings on the bus v1",
                &Secret::new("AGE-SECRET-KEY-1TESTKEY"),
            );
            assert!(
                open(
                    &settings,
                    mode,
                    "bg.workbook.ready",
                    "workbook-run-1",
                    &envelope
                )
                .is_err()
            );
        }
    }

    #[test]
    fn truncated_or_flipped_envelopes_do_not_open() {
        for mode in [Mode::Sealed, Mode::Authenticated] {
            let envelope = seal(&key(), mode, binding(), NOW, b"some event bytes").unwrap();
            let mut short = envelope.clone();
            short.body.pop();
            assert!(roundtrip(mode, &short).is_err(), "truncated body");
            let mut short = envelope.clone();
            short.nonce.pop();
            assert!(roundtrip(mode, &short).is_err(), "truncated nonce");
            if mode == Mode::Authenticated {
                let mut short = envelope.clone();
                short.tag.truncate(8);
                assert!(roundtrip(mode, &short).is_err(), "truncated tag");
            }
            let bytes = envelope.encode_to_vec();
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                if let Ok(parsed) = parse(&bytes[..cut]) {
                    assert!(
                        open(&key(), mode, "bg.workbook.ready", "workbook-run-1", &parsed).is_err(),
                        "cut at {cut}"
                    );
                }
            }
            for index in 0..bytes.len() {
                for bit in [0x01u8, 0x80] {
                    let mut flipped = bytes.clone();
                    flipped[index] ^= bit;
                    let opened = parse(&flipped).and_then(|parsed| {
                        open(&key(), mode, "bg.workbook.ready", "workbook-run-1", &parsed)
                    });
                    if let Ok(opened) = opened {
                        // Only a change protobuf itself ignores may pass
                        // (none here): the event must be exactly the same.
                        assert_eq!(opened.event, b"some event bytes", "byte {index}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_mode_is_enforced() {
        let authenticated = seal(&key(), Mode::Authenticated, binding(), NOW, b"e").unwrap();
        assert!(matches!(
            roundtrip(Mode::Sealed, &authenticated),
            Err(EnvelopeError::Mode { .. })
        ));
        let mut downgraded = seal(&key(), Mode::Sealed, binding(), NOW, b"e").unwrap();
        downgraded.mode = v1::EnvelopeMode::Authenticated as i32;
        assert!(roundtrip(Mode::Sealed, &downgraded).is_err());
        assert!(
            read_unverified(&seal(&key(), Mode::Sealed, binding(), NOW, b"e").unwrap()).is_err()
        );
        assert_eq!(read_unverified(&authenticated).unwrap(), b"e");
    }

    #[test]
    fn random_bytes_and_other_versions_are_refused() {
        assert!(parse(&[0xff; 40]).is_err());
        let mut envelope = seal(&key(), Mode::Sealed, binding(), NOW, b"e").unwrap();
        envelope.version = 2;
        assert_eq!(
            parse(&envelope.encode_to_vec()).unwrap_err(),
            EnvelopeError::Version(2)
        );
        // A plain event decodes as an envelope of version 0 at best.
        let trigger = v1::TriggerRequested {
            run_id: "run-1".into(),
            ..Default::default()
        };
        assert!(parse(&trigger.encode_to_vec()).is_err());
    }

    #[test]
    fn freshness_has_a_window() {
        let max = MAX_EVENT_AGE.as_millis() as i64;
        assert!(check_fresh(NOW - max, NOW).is_ok());
        assert!(matches!(
            check_fresh(NOW - max - 1, NOW),
            Err(EnvelopeError::Stale { .. })
        ));
        assert!(matches!(
            check_fresh(NOW + 3_600_000, NOW),
            Err(EnvelopeError::Future { .. })
        ));
        assert!(
            MAX_EVENT_AGE < crate::DUPLICATE_WINDOW,
            "a replay after the duplicate window must already be stale"
        );
    }
}
