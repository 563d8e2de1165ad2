//! The one shape of a configuration error: where, which field, which value
//! (masked when secret) and which rule it breaks.

use std::fmt;

/// One problem with one setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `file:line` when the value came from a file.
    pub location: Option<String>,
    /// The config key.
    pub field: String,
    /// The value as shown to people: masked for secret keys.
    pub shown_value: String,
    /// The rule the value breaks, and the fix when there is one.
    pub rule: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        write!(f, "{} = {:?}: {}", self.field, self.shown_value, self.rule)
    }
}

/// Every problem found in one configuration, in file order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems; never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for problem in &self.problems {
            if !first {
                f.write_str("\n")?;
            }
            first = false;
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}
