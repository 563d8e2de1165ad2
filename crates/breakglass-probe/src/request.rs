//! Settings "as currently filled in": the `key: value` pairs of a Test
//! request, where a secret field holding the fixed mask
//! ([`breakglass_core::secret::MASK`]) means "keep the stored secret", as
//! in the config API.

use breakglass_config::{ConfigError, Problem, RawConfig, SECRET_KEYS, Settings};
use breakglass_core::secret::MASK;

/// Where request values are said to come from in problems.
const ORIGIN: &str = "test request";

/// Builds validated settings from request pairs. A secret key whose value
/// is the mask takes the value from `stored` (the config the service runs
/// with); without a stored value that is a problem naming the key. Every
/// problem is reported at once, secrets masked.
pub fn settings_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    stored: Option<&RawConfig>,
) -> Result<Settings, ConfigError> {
    let mut raw = RawConfig::new();
    let mut problems = Vec::new();
    for (key, value) in pairs {
        let value = if SECRET_KEYS.contains(&key) && value == MASK {
            match stored.and_then(|config| config.get(key)) {
                Some(stored) => stored.value.as_str(),
                None => {
                    problems.push(Problem {
                        location: Some(ORIGIN.into()),
                        field: key.into(),
                        shown_value: MASK.into(),
                        rule: "is the mask (keep the stored secret), but no secret is stored for it: type the secret".into(),
                    });
                    continue;
                }
            }
        } else {
            value
        };
        if let Err(problem) = raw.set(key, value, ORIGIN) {
            problems.push(problem);
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    Settings::from_raw(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_keeps_the_stored_secret() {
        let stored =
            RawConfig::parse("s3_secret_access_key: stored-secret-value\n", "stored.conf").unwrap();
        let pairs = [
            ("storage_provider", "s3"),
            ("s3_bucket", "backups"),
            ("s3_url", "http://127.0.0.1:9000"),
            ("s3_protocol", "http"),
            ("s3_access_key_id", "AKIAEXAMPLE"),
            ("s3_secret_access_key", MASK),
        ];
        let settings = settings_from_pairs(pairs, Some(&stored)).unwrap();
        assert_eq!(
            settings.s3.unwrap().secret_access_key.expose(),
            "stored-secret-value"
        );
        let err = settings_from_pairs(pairs, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("s3_secret_access_key"), "{text}");
        assert!(!text.contains("stored-secret-value"), "{text}");
    }

    #[test]
    fn a_typed_secret_wins_and_is_never_shown() {
        let err = settings_from_pairs(
            [
                ("storage_provider", "s3"),
                ("s3_secret_access_key", "typed-secret-value"),
            ],
            None,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("typed-secret-value"));
    }
}
