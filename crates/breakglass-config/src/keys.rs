//! Every configuration key, described once.
//!
//! [`KEYS`] is the single list: each key's name, whether the settings page
//! may hold it or it is service wiring, whether its value is a credential,
//! its default and one line of help. Everything else is derived from it:
//! the file parser's list of known keys (an unknown key is an error with a
//! hint), the masking of secret values in errors, `breakglass config
//! secret`, the config API's field list, `breakglass config keys` and the
//! key table of `docs/CONFIGURATION.md` (a test keeps that table equal to
//! [`markdown_table`]). [`Settings::from_raw`](crate::Settings::from_raw)
//! applies each key's rule; a test checks it reads every key listed here
//! and no other. A new key is one line here plus its rule there.

/// Where a key may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// A setting of Mavis's settings page: the file (option 1) or the
    /// config API (option 2) may hold it.
    Page,
    /// Service wiring: only the mounted file holds it.
    Wiring,
}

/// One key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// The name in the `key: value` file.
    pub name: &'static str,
    /// Settings page or wiring.
    pub group: Group,
    /// A credential: shown only as a mask, never logged.
    pub secret: bool,
    /// The default, in words (`none: ...` when there is none).
    pub default: &'static str,
    /// What it means, in a line (Markdown).
    pub help: &'static str,
}

const fn page(name: &'static str, default: &'static str, help: &'static str) -> Key {
    Key {
        name,
        group: Group::Page,
        secret: false,
        default,
        help,
    }
}

const fn page_secret(name: &'static str, default: &'static str, help: &'static str) -> Key {
    Key {
        name,
        group: Group::Page,
        secret: true,
        default,
        help,
    }
}

const fn wiring(name: &'static str, default: &'static str, help: &'static str) -> Key {
    Key {
        name,
        group: Group::Wiring,
        secret: false,
        default,
        help,
    }
}

const fn wiring_secret(name: &'static str, default: &'static str, help: &'static str) -> Key {
    Key {
        name,
        group: Group::Wiring,
        secret: true,
        default,
        help,
    }
}

/// Every key, settings page first, in the order the docs list them: one
/// line per key (kept so by `rustfmt::skip`).
#[rustfmt::skip]
pub const KEYS: &[Key] = &[
    page("execute_time", "none: on-demand runs only", "daily run time `HH:mm` (24-hour, two digits each)"),
    page("time_zone", "`UTC`", "IANA zone of `execute_time` (zone data compiled in)"),
    page("storage_provider", "`local`", "`local`, `s3`, `blob` or a comma list (each destination uploads and reports on its own)"),
    page("s3_access_key_id", "required for `s3`", "the S3 writer's access key id"),
    page_secret("s3_secret_access_key", "required for `s3`", "the S3 writer's secret key"),
    page("s3_bucket", "required for `s3`", "bucket name (S3 naming rules)"),
    page("s3_protocol", "`https`", "`http` or `https`"),
    page("s3_url", "empty: AWS", "S3-compatible endpoint (`host:port` or `scheme://host:port`; no path); path-style addressing"),
    page("s3_region", "AWS: the bucket's own; custom endpoints: `us-east-1`", "the bucket's region"),
    page("s3_checksum", "`when_required` for custom endpoints, else `when_supported`", "`when_required` or `when_supported`"),
    page("blob_account_name", "required with `blob_account_key` or without `blob_endpoint`", "Azure storage account (3-24 lowercase letters and digits)"),
    page_secret("blob_account_key", "none", "account key, base64 as the portal shows it; a key or a SAS, not both"),
    page("blob_container", "required for `blob`", "container (3-63 lowercase letters, digits, single hyphens)"),
    page("blob_protocol", "`https`", "`http` or `https`"),
    page("blob_endpoint_suffix", "`core.windows.net`", "the cloud's endpoint suffix (sovereign clouds)"),
    page_secret("blob_connection_string", "none", "`DefaultEndpointsProtocol=…;AccountName=…;AccountKey=…` or with `BlobEndpoint=`/`SharedAccessSignature=`; instead of the separate keys"),
    page_secret("blob_sas_token", "none", "SAS query string, with or without the leading `?`"),
    page("blob_endpoint", "`<protocol>://<account>.blob.<suffix>`", "explicit endpoint, may include a path (Azurite: `http://127.0.0.1:10000/devstoreaccount1`)"),
    page("local_dir", "`./breakglass-out`", "folder of the `local` destination"),
    page("path_prefix", "empty", "folder inside the destination"),
    page("rotation", "`overwrite`", "`overwrite`, `unique` or `prune` (docs/DESTINATIONS.md)"),
    page("ca_bundle", "none: the system roots (`SSL_CERT_FILE` honoured)", "PEM file of extra trusted CAs for HTTPS endpoints, NATS over TLS and PostgreSQL"),
    page("encryption", "`password`", "`password` (ECMA-376 agile), `age` (to `age_recipients`) or `none` (only when written; every run warns)"),
    page_secret("encryption_passphrase", "none: the services refuse to start; `run-once` makes one and shows it once", "the break-glass passphrase, at least 16 characters"),
    page("age_recipients", "required for `age`", "comma list of age X25519 public keys (`age1…`)"),
    wiring("inventory_url", "the bundled sample", "`postgres://…` (TLS verify-full by default, docs/POSTGRES_TLS.md), `sqlite://…`, or a `.csv` / `.db` / `.sqlite` path"),
    wiring("inventory_view", "`breakglass_inventory`", "view the SQL sources read, `name` or `schema.name`"),
    wiring("nats_url", "`nats://127.0.0.1:4222`", "NATS server(s), comma separated; `tls://` requires TLS; a password in it is masked everywhere"),
    wiring("database_url", "none: no run log", "the run log's PostgreSQL (`postgres://…`; its password is masked everywhere)"),
    wiring("database_schema", "`breakglass`", "the run log's schema, created and migrated on start"),
    wiring("bus_prefix", "`breakglass`", "subject prefix and stream-name base"),
    wiring_secret("payload_key", "none: required by the services", "age X25519 identity that encrypts payloads and seals events on the bus (`breakglass keygen`)"),
    wiring("payload_ttl_hours", "`24`", "lifetime of payloads in the object store (1-720)"),
    wiring("ack_wait_seconds", "`60`", "redelivery after this long without an ack or progress (1-3600)"),
    wiring("upload_retry_budget_seconds", "`1200`", "how long one delivery retries a destination that fails transiently, with back-off and jitter (0-86400; 0: retry only by redelivery)"),
    wiring("max_deliver", "`5`", "deliveries before a message is dead-lettered (1-100)"),
    wiring("bus_replicas", "`1`", "copies JetStream keeps of the event stream, payload store and settings bucket: `1`, or `3` / `5` on a NATS cluster (applied when they are created)"),
    wiring_secret("grpc_token", "none: `--grpc` refuses to start", "bearer token of the gRPC APIs, 16+ characters (`$BREAKGLASS_GRPC_TOKEN` wins)"),
    wiring("grpc_tls_cert", "none: plain HTTP/2", "PEM certificate chain of the gRPC ports (with `grpc_tls_key`)"),
    wiring("grpc_tls_key", "none", "PEM private key of the gRPC ports"),
    wiring("grpc_client_ca", "none: no client certificate asked for", "PEM CA that client certificates must chain to (mutual TLS)"),
    wiring_secret("settings_key", "none: the config API cannot store settings", "32 random bytes, base64 (`breakglass keygen --settings`): seals secret settings saved through the config API"),
];

/// How many keys are in `group`.
const fn count(group: Group) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < KEYS.len() {
        if KEYS[i].group as u8 == group as u8 {
            n += 1;
        }
        i += 1;
    }
    n
}

/// How many keys are secret.
const fn count_secret() -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < KEYS.len() {
        if KEYS[i].secret {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The names of the keys of `group`, in table order.
const fn names_of<const N: usize>(group: Group) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < KEYS.len() {
        if KEYS[i].group as u8 == group as u8 {
            out[n] = KEYS[i].name;
            n += 1;
        }
        i += 1;
    }
    out
}

/// The names of every key, or of the secret ones only.
const fn names<const N: usize>(secret_only: bool) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < KEYS.len() {
        if !secret_only || KEYS[i].secret {
            out[n] = KEYS[i].name;
            n += 1;
        }
        i += 1;
    }
    out
}

/// The settings page's keys.
pub const PAGE_KEYS: &[&str] = &names_of::<{ count(Group::Page) }>(Group::Page);

/// The wiring keys: only the mounted file holds them.
pub const WIRING_KEYS: &[&str] = &names_of::<{ count(Group::Wiring) }>(Group::Wiring);

/// Every key the file may hold.
pub const KNOWN_KEYS: &[&str] = &names::<{ KEYS.len() }>(false);

/// Keys whose values are credentials: shown only as a mask.
pub const SECRET_KEYS: &[&str] = &names::<{ count_secret() }>(true);

/// The key named `name`, if it is one.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The key table of `docs/CONFIGURATION.md` (and `breakglass config keys`).
pub fn markdown_table() -> String {
    let mut out = String::from("| key | where | meaning | default |\n| --- | --- | --- | --- |\n");
    for key in KEYS {
        let group = match (key.group, key.secret) {
            (Group::Page, false) => "settings page",
            (Group::Page, true) => "settings page, secret",
            (Group::Wiring, false) => "wiring",
            (Group::Wiring, true) => "wiring, secret",
        };
        out.push_str(&format!(
            "| `{}` | {group} | {} | {} |\n",
            key.name, key.help, key.default
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_derived_lists_partition_the_table() {
        assert_eq!(PAGE_KEYS.len() + WIRING_KEYS.len(), KEYS.len());
        assert_eq!(KNOWN_KEYS.len(), KEYS.len());
        for key in KEYS {
            assert_eq!(
                PAGE_KEYS.contains(&key.name),
                key.group == Group::Page,
                "{}",
                key.name
            );
            assert_eq!(SECRET_KEYS.contains(&key.name), key.secret, "{}", key.name);
            assert!(
                !key.help.is_empty() && !key.default.is_empty(),
                "{}",
                key.name
            );
        }
        let mut names: Vec<&str> = KNOWN_KEYS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KEYS.len(), "a key is listed twice");
    }

    #[test]
    fn the_docs_show_the_table() {
        let docs = include_str!("../../../docs/CONFIGURATION.md");
        assert!(
            docs.contains(&markdown_table()),
            "docs/CONFIGURATION.md's key table differs from keys::markdown_table(); paste `breakglass config keys` output there:\n{}",
            markdown_table()
        );
    }
}
