//! A string that must never be printed: passwords, keys, tokens.
//!
//! `Debug` and `Display` both print [`MASK`]; the value is reached only by
//! the explicit [`Secret::expose`], which makes every place that handles
//! plaintext easy to find with `grep expose`. The memory is zeroed on drop.

use std::fmt;
use zeroize::Zeroize;

/// What a secret prints as, everywhere.
pub const MASK: &str = "********";

/// A secret string. Cloning copies the secret; dropping wipes it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plaintext. Call it only where the value must be used.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length in characters, for rules such as the Excel cell limit.
    pub fn char_len(&self) -> usize {
        self.0.chars().count()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_print_the_mask_only() {
        let secret = Secret::new("hunter2-canary");
        assert_eq!(format!("{secret:?}"), MASK);
        assert_eq!(format!("{secret}"), MASK);
        assert_eq!(
            format!("{:?}", Some(secret.clone())),
            format!("Some({MASK})")
        );
        assert_eq!(secret.expose(), "hunter2-canary");
    }
}
