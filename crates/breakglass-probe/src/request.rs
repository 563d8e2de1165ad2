//! Settings "as currently filled in": the `key: value` pairs of a Test
//! request, where a secret field holding the fixed mask
//! ([`breakglass_core::secret::MASK`]) means "keep the stored secret", as
//! in the config API, under the same rule
//! ([`breakglass_config::mask::kept_secret`]): only while every field that
//! decides where that secret is sent is unchanged from the stored settings.

use breakglass_config::mask::{is_mask, kept_secret};
use breakglass_config::{ConfigError, RawConfig, SECRET_KEYS, Settings};
use std::collections::BTreeMap;

/// Where request values are said to come from in problems.
const ORIGIN: &str = "test request";

/// Builds validated settings from request pairs. A secret key whose value
/// is the mask takes the value from `stored` (the config the service runs
/// with: the mounted file's, or the one saved through the config API) when
/// the binding rule allows it; a mask with nothing stored, or pointed at
/// another destination, is a problem naming the key. Every problem is
/// reported at once, secrets masked.
pub fn settings_from_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    stored: Option<&RawConfig>,
) -> Result<Settings, ConfigError> {
    let pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
    let requested: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let nothing = RawConfig::new();
    let stored = stored.unwrap_or(&nothing);
    let mut raw = RawConfig::new();
    let mut problems = Vec::new();
    for (key, value) in pairs {
        let value = if SECRET_KEYS.contains(&key) && is_mask(value) {
            match kept_secret(key, &requested, stored) {
                Ok(stored) => stored,
                Err(mut problem) => {
                    problem.location = Some(ORIGIN.into());
                    problems.push(problem);
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
    use breakglass_core::secret::MASK;

    #[test]
    fn the_mask_keeps_the_stored_secret() {
        let stored = RawConfig::parse(
            "s3_bucket: backups\ns3_url: http://127.0.0.1:9000/\ns3_protocol: http\ns3_access_key_id: AKIAEXAMPLE\ns3_secret_access_key: stored-secret-value\n",
            "stored.conf",
        )
        .unwrap();
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
    fn the_mask_stays_with_the_endpoint_the_secret_was_stored_with() {
        let stored = RawConfig::parse(
            "storage_provider: s3\ns3_bucket: backups\ns3_url: http://127.0.0.1:9000\ns3_protocol: http\ns3_access_key_id: AKIAEXAMPLE\ns3_secret_access_key: stored-secret-value\n",
            "stored.conf",
        )
        .unwrap();
        let pairs = [
            ("storage_provider", "s3"),
            ("s3_bucket", "backups"),
            ("s3_url", "http://127.0.0.1:9999"),
            ("s3_protocol", "http"),
            ("s3_access_key_id", "AKIAEXAMPLE"),
            ("s3_secret_access_key", MASK),
        ];
        let err = settings_from_pairs(pairs, Some(&stored)).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        let problem = &err.problems[0];
        assert_eq!(problem.field, "s3_secret_access_key");
        assert!(problem.rule.contains("s3_url changed"), "{err}");
        assert!(!err.to_string().contains("stored-secret-value"), "{err}");
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
