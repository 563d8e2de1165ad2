//! Bus failures, by kind.

/// A bus operation failed. No variant carries a credential: URLs are
/// described with their password masked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL, credentials masked.
        url: String,
        /// Why.
        reason: String,
    },
    /// A stream, consumer or bucket could not be created or found.
    #[error("cannot set up {what}: {reason}")]
    Setup {
        /// Which one.
        what: String,
        /// Why.
        reason: String,
    },
    /// A publish was not acknowledged.
    #[error("publishing to {subject} failed: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A payload could not be stored, fetched, verified or decrypted.
    #[error("payload {name}: {reason}")]
    Payload {
        /// The object name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A message body is not the expected event.
    #[error("message on {subject} is not a valid {expected}: {reason}")]
    Decode {
        /// The subject.
        subject: String,
        /// The expected message type.
        expected: &'static str,
        /// Why.
        reason: String,
    },
    /// Pulling messages failed.
    #[error("consuming {consumer}: {reason}")]
    Consume {
        /// The consumer.
        consumer: String,
        /// Why.
        reason: String,
    },
    /// A message was refused: its envelope does not open, it is stale, or
    /// a field breaks a rule.
    #[error("message on {subject} refused: {reason}")]
    Rejected {
        /// The subject (escaped).
        subject: String,
        /// Why, naming the field or check.
        reason: String,
    },
}
