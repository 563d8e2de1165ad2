//! The one rule for a secret sent back as the mask ([`MASK`]): the settings
//! page shows a set secret as the mask, and a request (the config API's
//! Update and Validate, the uploader's Test) that sends the mask back means
//! "keep the stored secret". That is accepted only when every field that
//! decides where the secret is sent ([`bound_fields`]) is unchanged from the
//! stored settings; otherwise the secret must be typed again. Without this,
//! a caller who may change settings but does not know the secret could
//! point the endpoint at a host of theirs and have the stored key (or a
//! SAS signed with it) sent there.
//!
//! Values are compared in their parsed form, so re-typing the same endpoint
//! another way (a trailing slash, the scheme on the suffix, the default
//! port, upper-case host) is not a change, while another host, port, path,
//! account, bucket, region or CA bundle is.

use crate::file::{PAGE_KEYS, RawConfig, SECRET_KEYS};
use crate::problem::Problem;
use crate::remote::{ConnectionString, DEFAULT_ENDPOINT_SUFFIX, Protocol};
use crate::source::ApiSettings;
use breakglass_core::Secret;
use breakglass_core::secret::MASK;
use std::collections::{BTreeMap, HashMap};

/// The fields that decide where the S3 secret access key goes.
const S3_BOUND: &[&str] = &[
    "s3_url",
    "s3_protocol",
    "s3_region",
    "s3_bucket",
    "s3_access_key_id",
    "ca_bundle",
];

/// The fields that decide where an Azure account key or SAS goes; the
/// connection string carries endpoints (and the account) of its own.
const BLOB_BOUND: &[&str] = &[
    "blob_endpoint",
    "blob_protocol",
    "blob_endpoint_suffix",
    "blob_account_name",
    "blob_container",
    "blob_connection_string",
    "ca_bundle",
];

/// The fields that, beside its own endpoint parts, decide where the
/// connection string's key or SAS goes.
const CONNECTION_STRING_BOUND: &[&str] = &[
    "blob_endpoint",
    "blob_protocol",
    "blob_endpoint_suffix",
    "blob_account_name",
    "blob_container",
    "ca_bundle",
];

/// The fields bound to `secret`: the mask keeps the stored value only
/// while each of them is unchanged. `None` for a key the mask never stands
/// for (service wiring such as `payload_key`, or not a secret at all).
///
/// `encryption_passphrase` is bound to nothing: it is never sent anywhere
/// (it encrypts the workbook in the renderer, and the Test does not use
/// it), so no endpoint can receive it.
pub fn bound_fields(secret: &str) -> Option<&'static [&'static str]> {
    match secret {
        "s3_secret_access_key" => Some(S3_BOUND),
        "blob_account_key" | "blob_sas_token" => Some(BLOB_BOUND),
        "blob_connection_string" => Some(CONNECTION_STRING_BOUND),
        "encryption_passphrase" => Some(&[]),
        _ => None,
    }
}

/// Settings-page values of one side of the comparison, looked up by key.
pub trait FieldValues {
    /// The value of `key`, or `None` when it is unset (absent or empty).
    fn field(&self, key: &str) -> Option<&str>;
}

impl FieldValues for ApiSettings {
    fn field(&self, key: &str) -> Option<&str> {
        self.get(key).map(Secret::expose).filter(|v| !v.is_empty())
    }
}

impl FieldValues for RawConfig {
    fn field(&self, key: &str) -> Option<&str> {
        self.get(key)
            .map(|v| v.value.as_str())
            .filter(|v| !v.is_empty())
    }
}

impl FieldValues for BTreeMap<String, String> {
    fn field(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }
}

impl<S: std::hash::BuildHasher> FieldValues for HashMap<String, String, S> {
    fn field(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// True when `value` is the mask, i.e. "keep the stored secret".
pub fn is_mask(value: &str) -> bool {
    value == MASK
}

/// The stored value that the mask in `requested`'s field `secret` stands
/// for, when the rule allows it: `secret` is a settings-page secret, a
/// value is stored for it, and none of its [`bound_fields`] differs
/// between `requested` and `stored` (a bound field that is itself a masked
/// secret counts as its stored value). Otherwise one problem naming
/// `secret`, the changed fields, and the fix; it never holds a value.
pub fn kept_secret<'s>(
    secret: &str,
    requested: &impl FieldValues,
    stored: &'s impl FieldValues,
) -> Result<&'s str, Problem> {
    let problem = |rule: String| Problem {
        location: None,
        field: secret.to_owned(),
        shown_value: MASK.into(),
        rule,
    };
    let Some(bound) = bound_fields(secret) else {
        return Err(problem(
            "holds the mask, but only a settings-page secret can be kept that way: type the value"
                .into(),
        ));
    };
    let Some(value) = stored.field(secret) else {
        return Err(problem(
            "holds the mask, but no value is stored to keep: type the secret".into(),
        ));
    };
    let changed = changed_fields(bound, requested, stored);
    if changed.is_empty() {
        Ok(value)
    } else {
        Err(problem(format!(
            "the stored secret is only sent to the endpoint it was saved with; {} changed, so type the secret again",
            changed.join(", ")
        )))
    }
}

/// The fields of `bound` whose parsed values differ between the two sides.
fn changed_fields(
    bound: &[&'static str],
    requested: &impl FieldValues,
    stored: &impl FieldValues,
) -> Vec<&'static str> {
    let requested = Resolved {
        values: requested,
        stored,
    };
    let stored = Resolved {
        values: stored,
        stored,
    };
    bound
        .iter()
        .copied()
        .filter(|key| normalised(key, &requested) != normalised(key, &stored))
        .collect()
}

/// One side's values, with a masked secret standing for the stored one.
struct Resolved<'a, R, S> {
    values: &'a R,
    stored: &'a S,
}

impl<R: FieldValues, S: FieldValues> Resolved<'_, R, S> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.values.field(key)?.trim();
        if SECRET_KEYS.contains(&key) && is_mask(value) {
            return self.stored.field(key).map(str::trim);
        }
        Some(value).filter(|v| !v.is_empty())
    }

    fn protocol(&self, key: &str) -> String {
        match self.get(key) {
            None => Protocol::Https.scheme().to_owned(),
            Some(text) => Protocol::parse(text)
                .map(|p| p.scheme().to_owned())
                .unwrap_or_else(|_| text.to_ascii_lowercase()),
        }
    }
}

/// The comparable form of `key`'s value on one side. Held as a [`Secret`]:
/// the connection string's form may hold its key when it does not parse.
fn normalised<R: FieldValues, S: FieldValues>(
    key: &str,
    side: &Resolved<'_, R, S>,
) -> Option<Secret> {
    let value = side.get(key);
    let form = match key {
        "s3_protocol" | "blob_protocol" => Some(side.protocol(key)),
        "s3_url" => value.map(|v| url_form(v, &side.protocol("s3_protocol"))),
        "blob_endpoint" => value.map(|v| url_form(v, &side.protocol("blob_protocol"))),
        "blob_endpoint_suffix" => Some(suffix_form(value)),
        "blob_connection_string" => value.map(connection_string_form),
        _ => value.map(str::to_owned),
    };
    form.map(Secret::new)
}

/// `scheme://host[:port][/path]` as the URL parser sees it: scheme and
/// host lower-case, the scheme's default port dropped, no trailing slash.
/// Text that does not parse is compared as typed.
fn url_form(text: &str, default_scheme: &str) -> String {
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("{default_scheme}://{text}")
    };
    match url::Url::parse(&with_scheme) {
        Ok(mut url) => {
            let path = url.path().trim_end_matches('/').to_owned();
            url.set_path(&path);
            url.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => text.to_owned(),
    }
}

/// The endpoint suffix's host (`core.windows.net` when unset), without a
/// scheme or trailing slash.
fn suffix_form(value: Option<&str>) -> String {
    let text = value.unwrap_or(DEFAULT_ENDPOINT_SUFFIX);
    let host = text.split_once("://").map_or(text, |(_, rest)| rest);
    host.trim_end_matches('/').to_ascii_lowercase()
}

/// The parts of a connection string that decide where its credential goes:
/// protocol, account, suffix and blob endpoint. Text that does not parse is
/// compared whole.
fn connection_string_form(text: &str) -> String {
    match ConnectionString::parse(text) {
        Ok(parsed) => {
            let protocol = parsed.protocol.unwrap_or(Protocol::Https).scheme();
            format!(
                "{protocol}|{}|{}|{}",
                parsed.account_name.as_deref().unwrap_or_default(),
                suffix_form(parsed.endpoint_suffix.as_deref()),
                parsed
                    .blob_endpoint
                    .as_deref()
                    .map(|e| url_form(e, protocol))
                    .unwrap_or_default()
            )
        }
        Err(_) => text.to_owned(),
    }
}

/// Every settings-page secret: each must have a binding decision.
pub fn page_secrets() -> impl Iterator<Item = &'static str> {
    PAGE_KEYS
        .iter()
        .copied()
        .filter(|key| SECRET_KEYS.contains(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = crate::remote::DEVELOPMENT_KEY;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn s3_stored() -> Vec<(&'static str, &'static str)> {
        vec![
            ("storage_provider", "s3"),
            ("s3_url", "http://127.0.0.1:5000"),
            ("s3_protocol", "http"),
            ("s3_region", "us-east-1"),
            ("s3_bucket", "backups"),
            ("s3_access_key_id", "AKIAEXAMPLE"),
            ("s3_secret_access_key", "CANARY-s3-secret"),
            ("ca_bundle", "/etc/breakglass/ca.pem"),
            ("path_prefix", "mavis"),
        ]
    }

    fn blob_stored() -> Vec<(&'static str, &'static str)> {
        vec![
            ("storage_provider", "blob"),
            ("blob_account_name", "acct"),
            ("blob_account_key", KEY),
            ("blob_sas_token", "sv=2022-11-02&sp=cw&sig=CANARYSIG"),
            ("blob_container", "backups"),
            ("blob_protocol", "https"),
            ("blob_endpoint_suffix", "core.windows.net"),
            ("ca_bundle", "/etc/breakglass/ca.pem"),
        ]
    }

    /// The stored pairs with `secret` masked and `changes` applied
    /// (an empty value unsets).
    fn request(
        stored: &[(&str, &str)],
        secret: &str,
        changes: &[(&str, &str)],
    ) -> BTreeMap<String, String> {
        let mut fields = map(stored);
        fields.insert(secret.into(), MASK.into());
        for (key, value) in changes {
            fields.insert((*key).into(), (*value).into());
        }
        fields
    }

    fn refused(stored: &[(&str, &str)], secret: &str, changes: &[(&str, &str)]) -> Problem {
        let stored_map = map(stored);
        let problem = kept_secret(secret, &request(stored, secret, changes), &stored_map)
            .expect_err("a changed destination refuses the mask");
        assert_eq!(problem.field, secret);
        assert_eq!(problem.shown_value, MASK);
        for (_, value) in stored.iter().filter(|(k, _)| SECRET_KEYS.contains(k)) {
            assert!(!problem.to_string().contains(value), "{problem}");
        }
        problem
    }

    fn kept<'a>(
        stored: &'a BTreeMap<String, String>,
        secret: &str,
        changes: &[(&str, &str)],
    ) -> &'a str {
        let pairs: Vec<(&str, &str)> = stored
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        kept_secret(secret, &request(&pairs, secret, changes), stored)
            .unwrap_or_else(|problem| panic!("{problem}"))
    }

    #[test]
    fn every_page_secret_has_a_binding_and_wiring_secrets_none() {
        for secret in page_secrets() {
            assert!(bound_fields(secret).is_some(), "{secret}");
        }
        for wiring in ["payload_key", "grpc_token", "settings_key", "s3_bucket"] {
            assert!(bound_fields(wiring).is_none(), "{wiring}");
        }
        let problem = kept_secret(
            "payload_key",
            &map(&[("payload_key", MASK)]),
            &map(&[("payload_key", "AGE-SECRET-KEY-1CANARY")]),
        )
        .unwrap_err();
        assert!(problem.rule.contains("only a settings-page secret"));
    }

    #[test]
    fn the_s3_secret_is_bound_to_each_of_its_destination_fields() {
        let stored = map(&s3_stored());
        assert_eq!(
            kept(&stored, "s3_secret_access_key", &[]),
            "CANARY-s3-secret"
        );
        for (field, other) in [
            ("s3_url", "http://127.0.0.1:5001"),
            ("s3_url", "http://attacker.example:5000"),
            ("s3_url", ""),
            ("s3_protocol", "https"),
            ("s3_region", "eu-west-1"),
            ("s3_region", ""),
            ("s3_bucket", "other-bucket"),
            ("s3_access_key_id", "AKIAOTHER"),
            ("ca_bundle", "/tmp/attacker-ca.pem"),
            ("ca_bundle", ""),
        ] {
            let problem = refused(&s3_stored(), "s3_secret_access_key", &[(field, other)]);
            assert_eq!(
                problem.rule,
                format!(
                    "the stored secret is only sent to the endpoint it was saved with; {field} changed, so type the secret again"
                ),
                "{field} = {other:?}"
            );
        }
        // Fields that do not decide where the secret goes may change.
        assert_eq!(
            kept(
                &stored,
                "s3_secret_access_key",
                &[("path_prefix", "elsewhere"), ("execute_time", "09:30")]
            ),
            "CANARY-s3-secret"
        );
    }

    #[test]
    fn the_azure_key_and_sas_are_bound_to_each_of_their_destination_fields() {
        let stored = map(&blob_stored());
        for secret in ["blob_account_key", "blob_sas_token"] {
            kept(&stored, secret, &[]);
            for (field, other) in [
                ("blob_endpoint", "https://attacker.example/acct"),
                ("blob_protocol", "http"),
                ("blob_endpoint_suffix", "attacker.example"),
                ("blob_account_name", "other"),
                ("blob_container", "elsewhere"),
                (
                    "blob_connection_string",
                    "BlobEndpoint=http://127.0.0.1:1/acct;AccountName=acct",
                ),
                ("ca_bundle", "/tmp/attacker-ca.pem"),
            ] {
                let problem = refused(&blob_stored(), secret, &[(field, other)]);
                assert!(
                    problem
                        .rule
                        .contains(&format!("; {field} changed, so type")),
                    "{secret} {field} = {other:?}: {problem}"
                );
            }
        }
        // An unset suffix is the default one; the suffix "with scheme and
        // slash" is the same suffix.
        let stored = map(&blob_stored());
        for same in ["https://core.windows.net/", "CORE.windows.net", ""] {
            kept(
                &stored,
                "blob_account_key",
                &[("blob_endpoint_suffix", same)],
            );
        }
        let mut without_suffix = blob_stored();
        without_suffix.retain(|(k, _)| *k != "blob_endpoint_suffix");
        let without_suffix = map(&without_suffix);
        kept(
            &without_suffix,
            "blob_account_key",
            &[("blob_endpoint_suffix", "core.windows.net")],
        );
        // Several changes are all named.
        let problem = refused(
            &blob_stored(),
            "blob_account_key",
            &[("blob_container", "x12"), ("blob_account_name", "y12")],
        );
        assert!(
            problem
                .rule
                .contains("blob_account_name, blob_container changed"),
            "{problem}"
        );
    }

    #[test]
    fn re_typing_the_same_endpoint_is_not_a_change() {
        let mut stored = s3_stored();
        stored.retain(|(k, _)| *k != "s3_url");
        stored.push(("s3_url", "http://s3.example.com:9000"));
        let stored = map(&stored);
        for same in [
            "http://s3.example.com:9000/",
            "s3.example.com:9000",
            "HTTP://S3.Example.com:9000",
        ] {
            kept(&stored, "s3_secret_access_key", &[("s3_url", same)]);
        }
        let azurite = map(&[
            ("blob_endpoint", "http://127.0.0.1:10000/devstoreaccount1"),
            ("blob_protocol", "http"),
            ("blob_container", "backups"),
            ("blob_sas_token", "sv=1&sig=CANARYSIG"),
        ]);
        kept(
            &azurite,
            "blob_sas_token",
            &[("blob_endpoint", "http://127.0.0.1:10000/devstoreaccount1/")],
        );
        let https = map(&[
            ("blob_endpoint", "https://acct.blob.example.net"),
            ("blob_container", "backups"),
            ("blob_sas_token", "sv=1&sig=CANARYSIG"),
        ]);
        kept(
            &https,
            "blob_sas_token",
            &[
                ("blob_endpoint", "https://acct.blob.example.net:443/"),
                ("blob_protocol", "https"),
            ],
        );
        // Another path on the same host is another account.
        let pairs: Vec<(&str, &str)> = azurite
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        refused(
            &pairs,
            "blob_sas_token",
            &[("blob_endpoint", "http://127.0.0.1:10000/otheraccount")],
        );
    }

    #[test]
    fn the_connection_string_is_bound_to_its_own_endpoints_and_the_container() {
        let stored_cs = format!(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net"
        );
        let stored = map(&[
            ("blob_connection_string", stored_cs.as_str()),
            ("blob_container", "backups"),
            ("blob_sas_token", "sv=1&sig=CANARYSIG"),
        ]);
        kept(&stored, "blob_connection_string", &[]);
        kept(&stored, "blob_sas_token", &[]);
        // The connection string masked too: it is its stored value.
        kept(
            &stored,
            "blob_sas_token",
            &[("blob_connection_string", MASK)],
        );
        // The same endpoints typed again with another key: not a change
        // for the SAS.
        let retyped = format!(
            "AccountName=acct;AccountKey={KEY}==;DefaultEndpointsProtocol=https;EndpointSuffix=https://core.windows.net/"
        );
        kept(
            &stored,
            "blob_sas_token",
            &[("blob_connection_string", retyped.as_str())],
        );
        let pairs: Vec<(&str, &str)> = stored
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // A connection string to another host with the stored SAS.
        let problem = refused(
            &pairs,
            "blob_sas_token",
            &[(
                "blob_connection_string",
                "BlobEndpoint=http://127.0.0.1:1/acct;AccountName=acct",
            )],
        );
        assert!(
            problem.rule.contains("blob_connection_string changed"),
            "{problem}"
        );
        // The masked connection string with separate endpoint keys or
        // another container.
        for (field, other) in [
            ("blob_endpoint", "http://127.0.0.1:1/acct"),
            ("blob_container", "elsewhere"),
            ("ca_bundle", "/tmp/attacker-ca.pem"),
        ] {
            refused(&pairs, "blob_connection_string", &[(field, other)]);
        }
    }

    #[test]
    fn a_mask_with_nothing_stored_asks_for_the_secret() {
        let problem = kept_secret(
            "blob_account_key",
            &map(&[("blob_account_key", MASK)]),
            &map(&[]),
        )
        .unwrap_err();
        assert!(problem.rule.contains("no value is stored"), "{problem}");
    }

    #[test]
    fn the_passphrase_is_not_bound_to_any_destination() {
        let stored = map(&[
            ("storage_provider", "s3"),
            ("s3_url", "http://127.0.0.1:5000"),
            ("encryption_passphrase", "CANARY passphrase long"),
        ]);
        assert_eq!(
            kept(
                &stored,
                "encryption_passphrase",
                &[("s3_url", "http://elsewhere:5000")]
            ),
            "CANARY passphrase long"
        );
    }

    #[test]
    fn the_rule_reads_api_settings_and_files_alike() {
        let file = RawConfig::parse(
            "storage_provider: s3\ns3_url: http://127.0.0.1:5000\ns3_protocol: http\ns3_bucket: backups\ns3_access_key_id: AKIA\ns3_secret_access_key: CANARY-file\n",
            "f",
        )
        .unwrap();
        let api = ApiSettings::from_file(&file);
        let mut asked = map(&[
            ("storage_provider", "s3"),
            ("s3_url", "http://127.0.0.1:5000/"),
            ("s3_protocol", "http"),
            ("s3_bucket", "backups"),
            ("s3_access_key_id", "AKIA"),
            ("s3_secret_access_key", MASK),
        ]);
        assert_eq!(
            kept_secret("s3_secret_access_key", &asked, &file).unwrap(),
            "CANARY-file"
        );
        assert_eq!(
            kept_secret("s3_secret_access_key", &asked, &api).unwrap(),
            "CANARY-file"
        );
        asked.insert("s3_url".into(), "http://127.0.0.1:6000".into());
        assert!(kept_secret("s3_secret_access_key", &asked, &file).is_err());
        assert!(kept_secret("s3_secret_access_key", &asked, &api).is_err());
    }
}
