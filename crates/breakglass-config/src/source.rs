//! Where each setting may come from: the mounted file (option 1) or the
//! config API (option 2).
//!
//! The settings page's keys ([`api_keys`]: schedule, destinations,
//! rotation, encryption) may be managed either way. Every other key is
//! service wiring (`nats_url`, `database_url`, `payload_key`, the inventory
//! connection, the gRPC token and certificates...) that only the mounted
//! service secret holds. When that file holds any settings-page key, option
//! 1 is in use and the file wins: the API shows it and refuses changes.
//! Otherwise the settings stored through the API are laid over the wiring.

use crate::file::{KNOWN_KEYS, PAGE_KEYS, RawConfig, SECRET_KEYS, show_value};
use crate::mask::{is_mask, kept_secret};
use crate::problem::Problem;
use breakglass_core::Secret;
use std::collections::BTreeMap;

/// The keys the settings page manages, in the file format's order.
pub fn api_keys() -> impl Iterator<Item = &'static str> {
    PAGE_KEYS.iter().copied()
}

/// True for a key the settings page manages.
pub fn is_api_key(key: &str) -> bool {
    PAGE_KEYS.contains(&key)
}

/// True for a settings-page key that holds a credential.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_KEYS.contains(&key)
}

/// Which of the two options currently provides the settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingsSource {
    /// The mounted file holds settings-page keys: it wins.
    File,
    /// The file holds wiring only: the settings stored through the API apply.
    Api,
}

impl SettingsSource {
    /// Option 1 when `file` holds any settings-page key, else option 2.
    pub fn of(file: &RawConfig) -> Self {
        if file.keys().any(is_api_key) {
            Self::File
        } else {
            Self::Api
        }
    }
}

/// Settings stored through the API: settings-page keys and their values,
/// with a version that every update bumps. Values are held as [`Secret`]s
/// so that no `Debug` of this type can print a credential.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiSettings {
    /// 0 before the first update.
    pub version: u64,
    fields: BTreeMap<String, Secret>,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("version", &self.version)
            .field("keys", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ApiSettings {
    /// Settings at `version` with `fields` (empty values are dropped: unset).
    pub fn new(version: u64, fields: impl IntoIterator<Item = (String, Secret)>) -> Self {
        Self {
            version,
            fields: fields
                .into_iter()
                .filter(|(_, value)| !value.is_empty())
                .collect(),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.fields.get(key)
    }

    /// Every set key with its value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How a page shows one key: empty when unset, the fixed mask for a set
    /// secret, URLs with their password masked, else the value.
    pub fn shown(&self, key: &str) -> String {
        self.fields
            .get(key)
            .map(|value| show_value(key, value.expose()))
            .unwrap_or_default()
    }

    /// Settings made of `file`'s settings-page keys (option 1), at version 0.
    pub fn from_file(file: &RawConfig) -> Self {
        Self::new(
            0,
            api_keys().filter_map(|key| {
                file.get(key)
                    .map(|v| (key.to_owned(), Secret::new(v.value.clone())))
            }),
        )
    }

    /// The keys whose values differ between `self` and `other`.
    pub fn changed_keys(&self, other: &Self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .fields
            .keys()
            .chain(other.fields.keys())
            .filter(|key| self.fields.get(*key) != other.fields.get(*key))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The wiring of `file` with these settings laid over it: what the
    /// services validate and run with when the source is the API.
    pub fn over(&self, file: &RawConfig) -> RawConfig {
        let mut merged = file.clone();
        for key in api_keys() {
            merged.remove(key);
        }
        let location = format!("settings API (version {})", self.version);
        for (key, value) in &self.fields {
            // Keys were checked with `is_api_key` when stored; an unknown one
            // (a newer version's key) is skipped rather than failing a run.
            if merged.set(key, value.expose(), &location).is_err() {
                tracing::warn!(key = %key, "ignored a stored setting this version does not know");
            }
        }
        merged
    }
}

/// Builds the settings an update asks for from the page's `fields`: a
/// secret field holding the mask keeps the value stored in `current` when
/// [`crate::mask::kept_secret`] allows it (the fields that decide where it
/// is sent are unchanged); an empty or missing field is unset. Returns the settings made of the
/// acceptable fields and every problem with the others (unknown key, wiring
/// key, a mask with nothing stored or pointed at another destination), so that the caller can validate the
/// rest and report everything at once.
pub fn apply_update(
    current: &ApiSettings,
    fields: &BTreeMap<String, String>,
) -> (ApiSettings, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut next = BTreeMap::new();
    for (key, value) in fields {
        let key = key.as_str();
        if !is_api_key(key) {
            let rule = if KNOWN_KEYS.contains(&key) {
                "is service wiring: set it in the mounted service secret, not through the API"
                    .into()
            } else {
                match RawConfig::new().set(key, "", "API") {
                    Err(problem) => problem.rule,
                    Ok(()) => "unknown key".into(),
                }
            };
            // A refused key's value is never shown: a misspelt secret key
            // is not known to be secret, and a wiring value (a PEM path,
            // a URL) has no business in the page's reply.
            problems.push(Problem {
                location: None,
                field: key.into(),
                shown_value: "(not shown)".into(),
                rule,
            });
            continue;
        }
        if is_secret_key(key) && is_mask(value) {
            // The one rule: the mask keeps the stored secret only while the
            // fields deciding where it is sent are unchanged.
            match kept_secret(key, fields, current) {
                Ok(stored) => {
                    next.insert(key.to_owned(), Secret::new(stored));
                }
                Err(problem) => problems.push(problem),
            }
            continue;
        }
        next.insert(key.to_owned(), Secret::new(value.trim()));
    }
    (ApiSettings::new(current.version, next), problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;
    use crate::file::WIRING_KEYS;
    use breakglass_core::secret::MASK;

    fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_two_key_groups_make_up_the_known_keys() {
        assert_eq!(KNOWN_KEYS.len(), PAGE_KEYS.len() + WIRING_KEYS.len());
        assert!(WIRING_KEYS.iter().all(|key| KNOWN_KEYS.contains(key)));
        assert!(PAGE_KEYS.iter().all(|key| !WIRING_KEYS.contains(key)));
        let page: Vec<&str> = api_keys().collect();
        for key in [
            "execute_time",
            "storage_provider",
            "s3_secret_access_key",
            "blob_sas_token",
            "encryption_passphrase",
        ] {
            assert!(page.contains(&key), "{key}");
        }
        assert!(!page.contains(&"nats_url") && !page.contains(&"database_url"));
    }

    #[test]
    fn the_file_wins_only_when_it_holds_settings_page_keys() {
        let wiring = RawConfig::parse("nats_url: nats://n:4222\npayload_key: x\n", "f").unwrap();
        assert_eq!(SettingsSource::of(&wiring), SettingsSource::Api);
        let option1 =
            RawConfig::parse("nats_url: nats://n:4222\nexecute_time: 09:30\n", "f").unwrap();
        assert_eq!(SettingsSource::of(&option1), SettingsSource::File);
    }

    #[test]
    fn a_mask_keeps_the_stored_secret_and_shows_as_the_mask() {
        let (current, problems) = apply_update(
            &ApiSettings::default(),
            &fields(&[
                ("storage_provider", "s3"),
                ("s3_secret_access_key", "CANARY-s3-secret"),
            ]),
        );
        assert!(problems.is_empty());
        assert_eq!(current.shown("s3_secret_access_key"), MASK);
        assert_eq!(current.shown("s3_bucket"), "");
        let (next, problems) = apply_update(
            &current,
            &fields(&[
                ("storage_provider", "s3"),
                ("s3_secret_access_key", MASK),
                ("path_prefix", "backups"),
            ]),
        );
        assert!(problems.is_empty());
        assert_eq!(
            next.get("s3_secret_access_key").unwrap().expose(),
            "CANARY-s3-secret"
        );
        assert_eq!(current.changed_keys(&next), vec!["path_prefix".to_owned()]);
        assert!(!format!("{next:?}").contains("CANARY"));
        // A field that decides where the secret goes changed: the mask no
        // longer stands for it.
        let (next, problems) = apply_update(
            &current,
            &fields(&[
                ("storage_provider", "s3"),
                ("s3_secret_access_key", MASK),
                ("s3_bucket", "backups"),
            ]),
        );
        assert!(next.get("s3_secret_access_key").is_none());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "s3_secret_access_key");
        assert!(
            problems[0]
                .rule
                .contains("s3_bucket changed, so type the secret again"),
            "{problems:?}"
        );
    }

    #[test]
    fn every_field_problem_is_named() {
        let (kept, problems) = apply_update(
            &ApiSettings::default(),
            &fields(&[
                ("execute_tme", "09:30"),
                ("payload_key", "AGE-SECRET-KEY-1CANARY"),
                ("blob_account_key", MASK),
                ("rotation", "unique"),
                ("s3_secret_acess_key", "CANARY-misspelt-secret"),
            ]),
        );
        assert_eq!(
            kept.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["rotation"]
        );
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 4, "{text:?}");
        assert!(text[0].contains("blob_account_key") && text[0].contains("no value is stored"));
        assert!(text[1].contains("did you mean `execute_time`"), "{text:?}");
        assert!(text[2].contains("service wiring"), "{text:?}");
        assert!(
            text[3].contains("did you mean `s3_secret_access_key`"),
            "{text:?}"
        );
        assert!(!text.join(" ").contains("CANARY"));
    }

    #[test]
    fn api_settings_lay_over_the_wiring_and_validate_like_the_file() {
        let wiring = RawConfig::parse("bus_prefix: bg\n", "secret").unwrap();
        let (api, problems) = apply_update(
            &ApiSettings::default(),
            &fields(&[("execute_time", "24:00"), ("rotation", "unique")]),
        );
        assert!(problems.is_empty());
        let err = Settings::from_raw(&api.over(&wiring)).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].field, "execute_time");
        assert!(err.to_string().contains("settings API"), "{err}");
    }
}
