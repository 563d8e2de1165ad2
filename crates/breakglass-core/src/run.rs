//! Run ids: the key that ties a trigger, its messages, its trace and its
//! stored file together, and the `Nats-Msg-Id` that deduplicates triggers.

use std::fmt;

/// The id of one run: 1–64 characters from `[A-Za-z0-9_-]`, so it is safe
/// as one NATS subject token, in a header, an object name and a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(String);

/// Why a text is not a valid run id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("run_id {value:?} is invalid: {rule}")]
pub struct RunIdError {
    /// The rejected text.
    pub value: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

impl RunId {
    /// A new unique id (UUIDv7: sortable by creation time).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Checks and wraps an id that came from outside (a message, a flag).
    pub fn parse(value: &str) -> Result<Self, RunIdError> {
        let rule = if value.is_empty() || value.len() > 64 {
            Some("must be 1 to 64 characters long")
        } else if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            Some("may hold only letters, digits, '_' and '-'")
        } else {
            None
        };
        match rule {
            Some(rule) => Err(RunIdError {
                value: value.chars().take(80).collect(),
                rule,
            }),
            None => Ok(Self(value.to_owned())),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse() {
        let id = RunId::generate();
        assert_eq!(RunId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn unsafe_ids_are_rejected_with_the_rule() {
        let err = RunId::parse("a b/c").unwrap_err();
        assert!(err.to_string().contains("may hold only"), "{err}");
        assert!(RunId::parse("").is_err());
        assert!(RunId::parse(&"x".repeat(65)).is_err());
        assert!(
            RunId::parse("a.b").is_err(),
            "a dot would split the NATS subject"
        );
    }
}
