//! The `key: value` file format.
//!
//! One setting per line, `key: value`; the key is everything before the
//! first `:`, so values such as URLs and times keep theirs. `#` starts a
//! comment only at the start of a line (a password may contain `#`). Blank
//! lines are allowed. A value may be wrapped in matching single or double
//! quotes, which are removed. Every value is a string: `execute_time: 09:30`
//! stays the text `09:30`. A key given twice, a line without `:` and an
//! unknown key are errors; an unknown key gets the nearest known one as a
//! hint.

use crate::problem::{ConfigError, Problem};
use breakglass_core::secret::MASK;
use std::collections::BTreeMap;
use std::path::Path;

/// The keys of the settings page (DESIGN.md §7 without the wiring): the
/// file (option 1) or the config API (option 2) may hold them.
pub const PAGE_KEYS: &[&str] = &[
    "execute_time",
    "time_zone",
    "storage_provider",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_bucket",
    "s3_protocol",
    "s3_url",
    "s3_region",
    "s3_checksum",
    "blob_account_name",
    "blob_account_key",
    "blob_container",
    "blob_protocol",
    "blob_endpoint_suffix",
    "blob_connection_string",
    "blob_sas_token",
    "blob_endpoint",
    "local_dir",
    "path_prefix",
    "rotation",
    "ca_bundle",
    "encryption",
    "encryption_passphrase",
    "age_recipients",
];

/// The keys that are service wiring: only the mounted file holds them.
pub const WIRING_KEYS: &[&str] = &[
    "inventory_url",
    "inventory_view",
    "nats_url",
    "database_url",
    "database_schema",
    "bus_prefix",
    "payload_key",
    "payload_ttl_hours",
    "ack_wait_seconds",
    "upload_retry_budget_seconds",
    "max_deliver",
    "bus_replicas",
    "grpc_token",
    "grpc_tls_cert",
    "grpc_tls_key",
    "grpc_client_ca",
    "settings_key",
];

/// Every key the file may hold: the settings page's, then the wiring.
pub const KNOWN_KEYS: &[&str] =
    &concat::<{ PAGE_KEYS.len() + WIRING_KEYS.len() }>(PAGE_KEYS, WIRING_KEYS);

/// `a` then `b`, at compile time.
const fn concat<const N: usize>(a: &[&'static str], b: &[&'static str]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < b.len() {
        out[a.len() + j] = b[j];
        j += 1;
    }
    out
}

/// Keys whose values are credentials: shown only as a mask.
pub const SECRET_KEYS: &[&str] = &[
    "s3_secret_access_key",
    "blob_account_key",
    "blob_connection_string",
    "blob_sas_token",
    "encryption_passphrase",
    "payload_key",
    "grpc_token",
    "settings_key",
];

/// Keys that are URLs which may embed a password (`postgres://u:p@h/db`).
const URL_KEYS: &[&str] = &["inventory_url", "database_url", "nats_url"];

/// A setting as read: its text and the line it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct RawValue {
    /// The value with surrounding quotes and blanks removed.
    pub value: String,
    /// `file:line`, or a description of where it came from (e.g. `--out`).
    pub location: String,
}

impl std::fmt::Debug for RawValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Raw values may be secrets; their key is not known here.
        write!(f, "RawValue({MASK} at {})", self.location)
    }
}

/// The settings of one file as strings, before validation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawConfig {
    entries: BTreeMap<String, RawValue>,
}

impl RawConfig {
    /// An empty configuration: every setting at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and parses a file of at most
    /// [`MAX_CONFIG_FILE_BYTES`](breakglass_core::limits::MAX_CONFIG_FILE_BYTES);
    /// the path names the file in errors.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        use breakglass_core::limits::{MAX_CONFIG_FILE_BYTES, read_text};
        let text =
            read_text(path, MAX_CONFIG_FILE_BYTES, "config file").map_err(|err| ConfigError {
                problems: vec![Problem {
                    location: Some(path.display().to_string()),
                    field: "config file".into(),
                    shown_value: path.display().to_string(),
                    rule: err.rule(),
                }],
            })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `key: value` text; `origin` names it in errors (a path).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut config = Self::new();
        let mut problems = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let location = format!("{origin}:{}", index + 1);
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((key, value)) = trimmed.split_once(':') else {
                problems.push(Problem {
                    location: Some(location),
                    field: "line".into(),
                    shown_value: "(not shown: may be a secret)".into(),
                    rule: "must be `key: value`".into(),
                });
                continue;
            };
            let key = key.trim();
            let value = unquote(value.trim());
            if let Err(problem) = config.set(key, value, &location) {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Sets one key, checking that it is known and not set twice. Used by the
    /// parser and by command-line flags that override the file.
    pub fn set(&mut self, key: &str, value: &str, location: &str) -> Result<(), Problem> {
        if !KNOWN_KEYS.contains(&key) {
            let rule = match nearest_key(key) {
                Some(hint) => format!("unknown key; did you mean `{hint}`?"),
                None => "unknown key".into(),
            };
            return Err(Problem {
                location: Some(location.into()),
                field: key.into(),
                shown_value: "(not shown)".into(),
                rule,
            });
        }
        if let Some(previous) = self.entries.get(key) {
            return Err(Problem {
                location: Some(location.into()),
                field: key.into(),
                shown_value: show_value(key, value),
                rule: format!("is set twice (first at {})", previous.location),
            });
        }
        self.entries.insert(
            key.into(),
            RawValue {
                value: value.into(),
                location: location.into(),
            },
        );
        Ok(())
    }

    /// Replaces a key's value (a command-line override wins over the file).
    pub fn override_with(&mut self, key: &str, value: &str, location: &str) -> Result<(), Problem> {
        self.entries.remove(key);
        self.set(key, value, location)
    }

    /// The raw value of a key, if set and not empty.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.entries.get(key).filter(|raw| !raw.value.is_empty())
    }

    /// Keys that are set, in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Removes a key; true when it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }
}

/// How a value is shown to people: secrets as the mask, URLs with any
/// embedded password masked, everything else as is.
pub fn show_value(key: &str, value: &str) -> String {
    if SECRET_KEYS.contains(&key) {
        if value.is_empty() {
            String::new()
        } else {
            MASK.into()
        }
    } else if URL_KEYS.contains(&key) {
        mask_url_password(value)
    } else {
        value.into()
    }
}

/// Masks credentials in a URL (or comma list of URLs); see
/// [`breakglass_core::secret::mask_url_credentials`].
pub fn mask_url_password(url: &str) -> String {
    breakglass_core::secret::mask_url_credentials(url)
}

fn unquote(value: &str) -> &str {
    let bytes = value.as_bytes();
    if bytes.len() >= 2
        && (bytes[0] == b'"' || bytes[0] == b'\'')
        && bytes[bytes.len() - 1] == bytes[0]
    {
        &value[1..value.len() - 1]
    } else {
        value
    }
}

fn nearest_key(key: &str) -> Option<&'static str> {
    let lowered = key.to_ascii_lowercase().replace('-', "_");
    KNOWN_KEYS
        .iter()
        .map(|known| (edit_distance(&lowered, known), *known))
        .filter(|(distance, known)| *distance <= 3.max(known.len() / 4))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_config_file_is_refused_with_its_size_and_the_limit() {
        let path = std::env::temp_dir().join(format!("bg-huge-{}.conf", std::process::id()));
        std::fs::write(&path, "# padding\n".repeat(200_000)).unwrap();
        let err = RawConfig::from_file(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert_eq!(err.problems.len(), 1);
        let text = err.problems[0].to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("over the limit of 1 MiB"), "{text}");
        assert!(text.contains("2000000 bytes"), "{text}");
    }

    #[test]
    fn values_stay_strings_and_keep_colons() {
        let config = RawConfig::parse(
            "# comment\n\nexecute_time: 09:30\ns3_url: 'https://s3.example:9000/'\nlocal_dir: \"/tmp/a b\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(config.get("execute_time").unwrap().value, "09:30");
        assert_eq!(
            config.get("s3_url").unwrap().value,
            "https://s3.example:9000/"
        );
        assert_eq!(config.get("local_dir").unwrap().value, "/tmp/a b");
        assert_eq!(config.get("execute_time").unwrap().location, "f:3");
    }

    #[test]
    fn every_bad_line_is_reported_at_once() {
        let err = RawConfig::parse(
            "execute_tme: 09:30\nno colon here\nrotation: overwrite\nrotation: unique\n",
            "secret.conf",
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(text.contains("secret.conf:1: execute_tme"), "{text}");
        assert!(text.contains("did you mean `execute_time`"), "{text}");
        assert!(text.contains("secret.conf:2: line"), "{text}");
        assert!(
            text.contains(
                "secret.conf:4: rotation = \"unique\": is set twice (first at secret.conf:3)"
            ),
            "{text}"
        );
    }

    #[test]
    fn secrets_are_masked_in_problems() {
        let err = RawConfig::parse(
            "payload_key: AGE-SECRET-KEY-1CANARY\npayload_key: AGE-SECRET-KEY-1CANARY\n",
            "f",
        )
        .unwrap_err();
        assert!(!err.to_string().contains("CANARY"), "{err}");
        assert!(!format!("{err:?}").contains("CANARY"));
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://app:s3cret@db:5432/inv?x=1"),
            format!("postgres://app:{MASK}@db:5432/inv?x=1")
        );
        assert_eq!(mask_url_password("postgres://db/inv"), "postgres://db/inv");
        assert_eq!(mask_url_password("/data/inv.csv"), "/data/inv.csv");
    }
}
