//! Typed, validated settings built from a [`RawConfig`].
//!
//! Validation collects every problem before failing, so an admin fixes a
//! file in one pass. Defaults are the documented ones (DESIGN.md §7); a
//! value that is present but wrong is always an error, never replaced by a
//! default.

use crate::file::{RawConfig, RawValue, show_value};
use crate::problem::{ConfigError, Problem};
use crate::remote::{
    BlobCredential, BlobSettings, CaBundle, ChecksumMode, ConnectionString,
    DEFAULT_ENDPOINT_SUFFIX, Protocol, S3Settings, check_account_key, check_account_name,
    check_bucket_name, check_container_name, normalise_blob_endpoint, normalise_endpoint,
    normalise_endpoint_suffix, normalise_sas_token, read_ca_bundle,
};
use breakglass_core::Secret;
use std::path::PathBuf;
use std::time::Duration;

/// The daily run time, `HH:mm` on a 24-hour clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DailyTime {
    /// 0–23.
    pub hour: u32,
    /// 0–59.
    pub minute: u32,
}

impl DailyTime {
    /// Parses `HH:mm` strictly: two digits each, `00:00` to `23:59`.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let bytes = text.as_bytes();
        let shape_ok = bytes.len() == 5
            && bytes[2] == b':'
            && [0, 1, 3, 4].iter().all(|&i| bytes[i].is_ascii_digit());
        if !shape_ok {
            return Err("must be HH:mm, 24-hour, two digits each (e.g. 09:30)");
        }
        let hour = u32::from(bytes[0] - b'0') * 10 + u32::from(bytes[1] - b'0');
        let minute = u32::from(bytes[3] - b'0') * 10 + u32::from(bytes[4] - b'0');
        if hour > 23 {
            return Err("hour must be 00 to 23");
        }
        if minute > 59 {
            return Err("minute must be 00 to 59");
        }
        Ok(Self { hour, minute })
    }
}

/// Where the workbook is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// A folder on a local or mounted file system.
    Local,
    /// An S3 bucket (AWS or S3-compatible).
    S3,
    /// An Azure Blob container.
    Blob,
}

/// How "only the latest file is retained" is achieved (DESIGN.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// One fixed name, replaced atomically by each run.
    Overwrite,
    /// A new timestamped name per run; never deletes.
    Unique,
    /// Timestamped names; older ones deleted after the new one is verified.
    Prune,
}

/// Where the inventory is read from.
#[derive(Clone, PartialEq, Eq)]
pub enum InventoryLocation {
    /// The sample inventory bundled into the binary.
    BundledSample,
    /// A CSV file with the documented header.
    Csv(PathBuf),
    /// A SQLite database file (`sqlite://path` or a `.db`/`.sqlite` path).
    Sqlite(String),
    /// A PostgreSQL URL; may hold a password.
    Postgres(Secret),
}

impl InventoryLocation {
    /// Interprets `inventory_url`: `postgres://`, `sqlite://`, or a path
    /// (`.csv`, or `.db`/`.sqlite`/`.sqlite3` for SQLite).
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Ok(Self::Postgres(Secret::new(text)))
        } else if lower.starts_with("sqlite:") {
            Ok(Self::Sqlite(text.into()))
        } else if lower.ends_with(".csv") {
            Ok(Self::Csv(PathBuf::from(text)))
        } else if [".db", ".sqlite", ".sqlite3"]
            .iter()
            .any(|ext| lower.ends_with(ext))
        {
            Ok(Self::Sqlite(format!("sqlite://{text}")))
        } else if lower.contains("://") {
            Err("scheme must be postgres:// or sqlite://")
        } else {
            Err(
                "must be a postgres:// or sqlite:// URL, or a path ending in .csv, .db, .sqlite or .sqlite3",
            )
        }
    }

    /// A description safe to log and to put in the workbook: no password.
    pub fn describe(&self) -> String {
        match self {
            Self::BundledSample => "bundled sample inventory".into(),
            Self::Csv(path) => format!("CSV {}", path.display()),
            Self::Sqlite(url) => format!("SQLite {url}"),
            Self::Postgres(url) => {
                format!(
                    "PostgreSQL {}",
                    crate::file::mask_url_password(url.expose())
                )
            }
        }
    }
}

impl std::fmt::Debug for InventoryLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Validated settings. Secret fields are [`Secret`]s.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Daily run time; `None` means no scheduled runs (on-demand only).
    pub execute_time: Option<DailyTime>,
    /// IANA time zone of `execute_time`.
    pub time_zone: chrono_tz::Tz,
    /// Destinations, in the order given.
    pub storage: Vec<StorageKind>,
    /// Folder of the `local` destination.
    pub local_dir: PathBuf,
    /// Folder inside the bucket/container (or below `local_dir`).
    pub path_prefix: String,
    /// Rotation mode.
    pub rotation: Rotation,
    /// The inventory source.
    pub inventory: InventoryLocation,
    /// The view (or table) the SQL sources read; may be `schema.view`.
    pub inventory_view: String,
    /// NATS server URL(s) for the services; a secret, since it may carry a
    /// password (`nats://user:password@host`).
    pub nats_url: Secret,
    /// The run log's PostgreSQL (`database_url`); the scheduler records
    /// runs there when it is set. A secret: it may hold a password.
    pub database_url: Option<Secret>,
    /// The run log's PostgreSQL schema (`database_schema`).
    pub database_schema: String,
    /// Subject prefix and stream-name base; lets tests and several
    /// installations share one NATS.
    pub bus_prefix: String,
    /// The services' age identity that encrypts payloads on the bus.
    pub payload_key: Option<Secret>,
    /// How long payloads stay in the object store.
    pub payload_ttl: Duration,
    /// How long a delivered message may stay un-acked before redelivery.
    pub ack_wait: Duration,
    /// How long one delivery keeps retrying a destination that fails
    /// transiently (`upload_retry_budget_seconds`, 0 = no retry).
    pub upload_retry_budget: Duration,
    /// Deliveries before a message is dead-lettered.
    pub max_deliver: i64,
    /// Copies JetStream keeps of the stream, payload store and settings
    /// bucket (`bus_replicas`: 1, or 3 / 5 on a NATS cluster).
    pub bus_replicas: usize,
    /// How the stored workbook is encrypted.
    pub encryption: Encryption,
    /// The S3 destination, when `storage_provider` includes `s3`.
    pub s3: Option<S3Settings>,
    /// The Azure Blob destination, when `storage_provider` includes `blob`.
    pub blob: Option<BlobSettings>,
    /// Extra trusted CAs for HTTPS endpoints.
    pub ca_bundle: Option<CaBundle>,
    /// The key that encrypts secret settings stored through the config API
    /// (`settings_key`: 32 random bytes, base64; `breakglass keygen
    /// --settings` makes one).
    pub settings_key: Option<Secret>,
    /// TLS of the gRPC APIs (`grpc_tls_cert`, `grpc_tls_key`,
    /// `grpc_client_ca`); `None` = plain HTTP/2 behind an ingress.
    pub grpc_tls: Option<GrpcTlsFiles>,
}

/// The PEM files of a gRPC API's TLS: its certificate chain and key, and
/// the CA that client certificates must chain to (mutual TLS) when set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcTlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA bundle client certificates must chain to; `None` = no client
    /// certificates asked for.
    pub client_ca: Option<PathBuf>,
}

/// Default folder of the `local` destination (run-once's default too).
pub const DEFAULT_LOCAL_DIR: &str = "./breakglass-out";
/// The default PostgreSQL schema of the run log.
pub const DEFAULT_DATABASE_SCHEMA: &str = "breakglass";
/// Default subject prefix.
pub const DEFAULT_BUS_PREFIX: &str = "breakglass";
/// Default view the SQL inventory sources read.
pub const DEFAULT_INVENTORY_VIEW: &str = "breakglass_inventory";

impl Settings {
    /// Validates every key; returns all problems at once.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let mut check = Checker {
            problems: Vec::new(),
        };
        let execute_time = check.parse(raw, "execute_time", |v| DailyTime::parse(v).map(Some));
        let time_zone = check
            .parse(raw, "time_zone", parse_time_zone)
            .unwrap_or(chrono_tz::UTC);
        let ca_bundle = raw
            .get("ca_bundle")
            .and_then(|value| match read_ca_bundle(&value.value) {
                Ok(bundle) => Some(bundle),
                Err(rule) => {
                    check.fail_owned("ca_bundle", value, rule);
                    None
                }
            });
        let store = check.storage_keys(raw);
        let encryption = check.encryption(raw);
        let (inventory, inventory_view) = check.inventory_keys(raw);
        let bus = check.bus_keys(raw);
        let settings_key = check.parse(raw, "settings_key", parse_settings_key);
        // Checked here so `config check` reports it; the services read the
        // token itself where `$BREAKGLASS_GRPC_TOKEN` may replace it.
        check.parse(raw, "grpc_token", check_grpc_token);
        let grpc_tls = check.grpc_tls(raw);
        if !check.problems.is_empty() {
            check
                .problems
                .sort_by_key(|problem| natural_location(&problem.location));
            return Err(ConfigError {
                problems: check.problems,
            });
        }
        Ok(Self {
            execute_time: execute_time.flatten(),
            time_zone,
            storage: store.storage,
            local_dir: store.local_dir,
            path_prefix: store.path_prefix,
            rotation: store.rotation,
            inventory,
            inventory_view,
            nats_url: bus.nats_url,
            database_url: bus.database_url,
            database_schema: bus.database_schema,
            bus_prefix: bus.bus_prefix,
            payload_key: bus.payload_key,
            payload_ttl: bus.payload_ttl,
            ack_wait: bus.ack_wait,
            upload_retry_budget: bus.upload_retry_budget,
            max_deliver: bus.max_deliver,
            bus_replicas: bus.bus_replicas,
            encryption,
            s3: store.s3,
            blob: store.blob,
            ca_bundle,
            settings_key,
            grpc_tls,
        })
    }
}

/// The destination keys, checked: which destinations, each one's
/// settings, and how the stored copies are named and rotated.
struct StorageKeys {
    storage: Vec<StorageKind>,
    local_dir: PathBuf,
    path_prefix: String,
    rotation: Rotation,
    s3: Option<S3Settings>,
    blob: Option<BlobSettings>,
}

/// The bus and run-log keys, checked (the services' wiring).
struct BusKeys {
    nats_url: Secret,
    database_url: Option<Secret>,
    database_schema: String,
    bus_prefix: String,
    payload_key: Option<Secret>,
    payload_ttl: Duration,
    ack_wait: Duration,
    upload_retry_budget: Duration,
    max_deliver: i64,
    bus_replicas: usize,
}

impl Checker {
    /// `storage_provider`, then only the chosen destinations' keys.
    fn storage_keys(&mut self, raw: &RawConfig) -> StorageKeys {
        let storage = self
            .parse(raw, "storage_provider", parse_storage)
            .unwrap_or_else(|| vec![StorageKind::Local]);
        let s3 = if storage.contains(&StorageKind::S3) {
            self.s3(raw)
        } else {
            None
        };
        let blob = if storage.contains(&StorageKind::Blob) {
            self.blob(raw)
        } else {
            None
        };
        StorageKeys {
            local_dir: raw
                .get("local_dir")
                .map(|v| PathBuf::from(&v.value))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_LOCAL_DIR)),
            path_prefix: self
                .parse(raw, "path_prefix", parse_prefix)
                .unwrap_or_default(),
            rotation: self
                .parse(raw, "rotation", parse_rotation)
                .unwrap_or(Rotation::Overwrite),
            storage,
            s3,
            blob,
        }
    }

    /// `inventory_url` (with libpq's TLS keys for PostgreSQL) and the view.
    fn inventory_keys(&mut self, raw: &RawConfig) -> (InventoryLocation, String) {
        let inventory = self
            .parse(raw, "inventory_url", InventoryLocation::parse)
            .unwrap_or(InventoryLocation::BundledSample);
        if let InventoryLocation::Postgres(url) = &inventory {
            self.postgres_tls(raw, "inventory_url", url.expose());
        }
        let view = self
            .parse(raw, "inventory_view", |v| {
                parse_sql_name(v).map(|()| v.to_owned())
            })
            .unwrap_or_else(|| DEFAULT_INVENTORY_VIEW.into());
        (inventory, view)
    }

    /// NATS, the payload store, redelivery and the run log's database.
    fn bus_keys(&mut self, raw: &RawConfig) -> BusKeys {
        let database_url = self.parse(raw, "database_url", parse_database_url);
        if let Some(url) = &database_url {
            self.postgres_tls(raw, "database_url", url.expose());
        }
        let seconds =
            |low, high| move |v: &str| parse_bounded(v, low, high).map(Duration::from_secs);
        BusKeys {
            nats_url: Secret::new(
                raw.get("nats_url")
                    .map(|v| v.value.clone())
                    .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            ),
            database_url,
            database_schema: self
                .parse(raw, "database_schema", parse_schema_name)
                .unwrap_or_else(|| DEFAULT_DATABASE_SCHEMA.into()),
            bus_prefix: self
                .parse(raw, "bus_prefix", parse_bus_prefix)
                .unwrap_or_else(|| DEFAULT_BUS_PREFIX.into()),
            payload_key: self.parse(raw, "payload_key", parse_payload_key).flatten(),
            payload_ttl: self
                .parse(raw, "payload_ttl_hours", |v| {
                    parse_bounded(v, 1, 24 * 30).map(|h| Duration::from_secs(h * 3600))
                })
                .unwrap_or(Duration::from_secs(24 * 3600)),
            ack_wait: self
                .parse(raw, "ack_wait_seconds", seconds(1, 3600))
                .unwrap_or(Duration::from_secs(60)),
            upload_retry_budget: self
                .parse(raw, "upload_retry_budget_seconds", seconds(0, 86_400))
                .unwrap_or(Duration::from_secs(1200)),
            max_deliver: self
                .parse(raw, "max_deliver", |v| {
                    parse_bounded(v, 1, 100).map(|n| n as i64)
                })
                .unwrap_or(5),
            bus_replicas: self
                .parse(raw, "bus_replicas", parse_bus_replicas)
                .unwrap_or(1),
        }
    }
}

impl Settings {
    /// The one rule the services add to the file's: they never make a
    /// passphrase up (`run-once` does), so `encryption: password` (the
    /// default) needs `encryption_passphrase`. Checked at service start-up
    /// for a settings file and by the config API for saved settings.
    pub fn services_problem(&self) -> Option<Problem> {
        (self.encryption == Encryption::Password(None)).then(|| Problem {
            location: None,
            field: "encryption_passphrase".into(),
            shown_value: String::new(),
            rule: "is required when encryption is password (the default): set it, choose encryption: age with age_recipients, or set encryption: none explicitly".into(),
        })
    }
}

/// How the stored workbook is protected (the `encryption` key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// ECMA-376 agile encryption (AES-256, SHA-512): opens in Excel and
    /// LibreOffice with the passphrase. `None` here means no passphrase is
    /// configured: the services refuse to start, `run-once` makes one.
    Password(Option<Secret>),
    /// age, to one or more X25519 recipients (`age1...`); the uploader never
    /// holds a private key.
    Age(Vec<String>),
    /// Plaintext; only when set explicitly, and every run warns.
    None,
}

/// The shortest accepted passphrase.
pub const MIN_PASSPHRASE_CHARS: usize = 16;

/// Why the blob keys are required.
const BLOB_BECAUSE: &str = "when storage_provider includes blob";

/// The key that gives the whole account in one string.
const CONNECTION_STRING: &str = "blob_connection_string";

/// The Azure account's parts as given, each with the key it came from.
struct BlobParts<'a> {
    protocol: Option<Protocol>,
    account: Option<(String, &'static str)>,
    key: Option<(Secret, &'static str)>,
    sas: Option<(Secret, &'static str)>,
    suffix: Option<(String, &'static str)>,
    endpoint: Option<(String, &'static str)>,
    /// `blob_connection_string` as written, when it gave the parts.
    connection: Option<&'a RawValue>,
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    /// `grpc_tls_cert` and `grpc_tls_key` together or not at all; a client
    /// CA only with them; every file readable PEM.
    fn grpc_tls(&mut self, raw: &RawConfig) -> Option<GrpcTlsFiles> {
        let mut pem_file = |key: &str| {
            let value = raw.get(key)?;
            let limit = breakglass_core::limits::MAX_PEM_FILE_BYTES;
            match breakglass_core::limits::read_text(std::path::Path::new(&value.value), limit, key)
            {
                Ok(text) if text.contains("-----BEGIN ") => Some(PathBuf::from(&value.value)),
                Ok(_) => {
                    self.fail(key, value, "must be a PEM file (no -----BEGIN line found)");
                    None
                }
                Err(err) => {
                    self.fail_owned(key, value, err.rule());
                    None
                }
            }
        };
        let cert = pem_file("grpc_tls_cert");
        let key = pem_file("grpc_tls_key");
        let client_ca = pem_file("grpc_client_ca");
        let missing = match (raw.get("grpc_tls_cert"), raw.get("grpc_tls_key")) {
            (Some(_), None) => Some(("grpc_tls_key", "grpc_tls_cert")),
            (None, Some(_)) => Some(("grpc_tls_cert", "grpc_tls_key")),
            _ => None,
        };
        if let Some((absent, present)) = missing {
            self.problems.push(Problem {
                location: raw.get(present).map(|v| v.location.clone()),
                field: absent.into(),
                shown_value: String::new(),
                rule: format!("is required when {present} is set"),
            });
        }
        if raw.get("grpc_tls_cert").is_none()
            && let Some(value) = raw.get("grpc_client_ca")
        {
            self.fail(
                "grpc_client_ca",
                value,
                "needs grpc_tls_cert and grpc_tls_key: client certificates are asked for only over TLS",
            );
        }
        Some(GrpcTlsFiles {
            cert: cert?,
            key: key?,
            client_ca,
        })
    }

    fn encryption(&mut self, raw: &RawConfig) -> Encryption {
        let mode = raw
            .get("encryption")
            .map(|v| v.value.as_str())
            .unwrap_or("password");
        match mode {
            "password" => {
                let passphrase = raw.get("encryption_passphrase").and_then(|value| {
                    if value.value.chars().count() < MIN_PASSPHRASE_CHARS {
                        self.fail(
                            "encryption_passphrase",
                            value,
                            "must be at least 16 characters (anyone holding the file can try passphrases offline)",
                        );
                        None
                    } else {
                        Some(Secret::new(value.value.clone()))
                    }
                });
                Encryption::Password(passphrase)
            }
            "age" => {
                let Some(value) = raw.get("age_recipients") else {
                    self.problems.push(Problem {
                        location: raw.get("encryption").map(|v| v.location.clone()),
                        field: "age_recipients".into(),
                        shown_value: String::new(),
                        rule:
                            "is required when encryption is age (comma list of age1... public keys)"
                                .into(),
                    });
                    return Encryption::Age(Vec::new());
                };
                let mut recipients = Vec::new();
                for part in value
                    .value
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                {
                    match part.parse::<age::x25519::Recipient>() {
                        Ok(recipient) => recipients.push(recipient.to_string()),
                        Err(_) => self.fail_owned(
                            "age_recipients",
                            value,
                            format!("{part:?} is not an age X25519 public key (age1...); make one with `age-keygen`"),
                        ),
                    }
                }
                Encryption::Age(recipients)
            }
            "none" => Encryption::None,
            _ => {
                if let Some(value) = raw.get("encryption") {
                    self.fail("encryption", value, "must be password, age or none");
                }
                Encryption::None
            }
        }
    }

    /// The libpq TLS parameters of a `postgres://` URL setting
    /// ([`crate::postgres_tls`]): checked here so `config check` reports
    /// them with the other problems.
    fn postgres_tls(&mut self, raw: &RawConfig, key: &'static str, url: &str) {
        if let (Err(rule), Some(value)) = (
            crate::postgres_tls::TlsParams::from_url(key, url),
            raw.get(key),
        ) {
            self.fail_owned(key, value, rule);
        }
    }

    fn fail_owned(&mut self, key: &str, raw: &RawValue, rule: String) {
        self.fail(key, raw, &rule);
    }

    /// A key that must be set, given where the requirement comes from.
    fn required<'a>(
        &mut self,
        raw: &'a RawConfig,
        key: &str,
        because: &str,
    ) -> Option<&'a RawValue> {
        let value = raw.get(key);
        if value.is_none() {
            self.problems.push(Problem {
                location: raw.get("storage_provider").map(|v| v.location.clone()),
                field: key.into(),
                shown_value: String::new(),
                rule: format!("is required {because}"),
            });
        }
        value
    }

    fn s3(&mut self, raw: &RawConfig) -> Option<S3Settings> {
        const BECAUSE: &str = "when storage_provider includes s3";
        let before = self.problems.len();
        let bucket = self.required(raw, "s3_bucket", BECAUSE).and_then(|value| {
            match check_bucket_name(&value.value) {
                Ok(()) => Some(value.value.clone()),
                Err(rule) => {
                    self.fail("s3_bucket", value, rule);
                    None
                }
            }
        });
        let access_key_id = self
            .required(raw, "s3_access_key_id", BECAUSE)
            .map(|v| v.value.clone());
        let secret_access_key = self
            .required(raw, "s3_secret_access_key", BECAUSE)
            .map(|v| Secret::new(v.value.clone()));
        let protocol = self
            .parse(raw, "s3_protocol", Protocol::parse)
            .unwrap_or(Protocol::Https);
        let endpoint =
            raw.get("s3_url")
                .and_then(|value| match normalise_endpoint(&value.value, protocol) {
                    Ok(url) => Some(url),
                    Err(rule) => {
                        self.fail_owned("s3_url", value, rule);
                        None
                    }
                });
        let region_configured = raw.get("s3_region").is_some();
        let region = self
            .parse(raw, "s3_region", |v| {
                let ok = v.len() <= 32
                    && v.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if ok {
                    Ok(v.to_owned())
                } else {
                    Err("must be a region name such as us-east-1")
                }
            })
            .unwrap_or_else(|| "us-east-1".into());
        let custom_endpoint = raw.get("s3_url").is_some();
        let checksum = self
            .parse(raw, "s3_checksum", |v| match v {
                "when_required" => Ok(ChecksumMode::WhenRequired),
                "when_supported" => Ok(ChecksumMode::WhenSupported),
                _ => Err("must be when_required or when_supported"),
            })
            .unwrap_or(if custom_endpoint {
                ChecksumMode::WhenRequired
            } else {
                ChecksumMode::WhenSupported
            });
        if self.problems.len() != before {
            return None;
        }
        Some(S3Settings {
            bucket: bucket?,
            endpoint,
            protocol,
            region,
            region_configured,
            access_key_id: access_key_id?,
            secret_access_key: secret_access_key?,
            checksum,
        })
    }

    /// Validates the Azure Blob keys. The account comes either from the
    /// separate keys or from `blob_connection_string`, never from both; the
    /// credential is an account key or a SAS token, never both.
    fn blob(&mut self, raw: &RawConfig) -> Option<BlobSettings> {
        let before = self.problems.len();
        let container = self
            .required(raw, "blob_container", BLOB_BECAUSE)
            .and_then(|value| match check_container_name(&value.value) {
                Ok(()) => Some(value.value.clone()),
                Err(rule) => {
                    self.fail("blob_container", value, rule);
                    None
                }
            });
        let parts = self.blob_parts(raw);
        let protocol = parts.protocol.unwrap_or(Protocol::Https);
        // Each part is checked against the key it came from, so the error
        // names the field the admin has to fix.
        let account = self.blob_part(raw, parts.account, "AccountName", |name| {
            check_account_name(name)
                .map(|()| name.clone())
                .map_err(str::to_owned)
        });
        let key = self.blob_part(raw, parts.key, "AccountKey", |key| {
            check_account_key(key.expose())
                .map(|()| key.clone())
                .map_err(str::to_owned)
        });
        let sas = self.blob_part(raw, parts.sas, "SharedAccessSignature", |sas| {
            normalise_sas_token(sas.expose())
                .map(Secret::new)
                .map_err(str::to_owned)
        });
        let endpoint = match parts.endpoint {
            Some(endpoint) => self.blob_part(raw, Some(endpoint), "BlobEndpoint", |text| {
                normalise_blob_endpoint(text, protocol)
            }),
            None => self.blob_endpoint_from_account(
                raw,
                parts.suffix,
                account.as_deref(),
                protocol,
                parts.connection,
            ),
        };
        let credential = self.blob_credential(raw, key, sas, account, parts.connection, before);
        if self.problems.len() != before {
            return None;
        }
        Some(BlobSettings {
            endpoint: endpoint?,
            protocol,
            container: container?,
            credential: credential?,
        })
    }

    /// The account's parts from wherever they are given: the connection
    /// string (then no separate key may be set) or the separate keys; a
    /// SAS may come from `blob_sas_token` either way, but only once.
    fn blob_parts<'a>(&mut self, raw: &'a RawConfig) -> BlobParts<'a> {
        let connection =
            raw.get(CONNECTION_STRING).and_then(|value| {
                match ConnectionString::parse(&value.value) {
                    Ok(parsed) => Some((parsed, value)),
                    Err(rule) => {
                        self.fail_owned(CONNECTION_STRING, value, rule);
                        None
                    }
                }
            });
        let mut parts = if let Some((parsed, value)) = connection {
            for key in [
                "blob_account_name",
                "blob_account_key",
                "blob_protocol",
                "blob_endpoint_suffix",
                "blob_endpoint",
            ] {
                if let Some(value) = raw.get(key) {
                    self.fail(
                        key,
                        value,
                        "conflicts with blob_connection_string: give the account either as a connection string or as separate keys",
                    );
                }
            }
            let from_cs = |part: Option<String>| part.map(|p| (p, CONNECTION_STRING));
            BlobParts {
                protocol: parsed.protocol,
                account: from_cs(parsed.account_name),
                key: parsed.account_key.map(|k| (k, CONNECTION_STRING)),
                sas: parsed.sas.map(|s| (s, CONNECTION_STRING)),
                suffix: from_cs(parsed.endpoint_suffix),
                endpoint: from_cs(parsed.blob_endpoint),
                connection: Some(value),
            }
        } else {
            let text = |field: &'static str| raw.get(field).map(|v| (v.value.clone(), field));
            BlobParts {
                protocol: self.parse(raw, "blob_protocol", Protocol::parse),
                account: text("blob_account_name"),
                key: raw
                    .get("blob_account_key")
                    .map(|v| (Secret::new(v.value.trim()), "blob_account_key")),
                sas: None,
                suffix: text("blob_endpoint_suffix"),
                endpoint: text("blob_endpoint"),
                connection: None,
            }
        };
        if let Some(value) = raw.get("blob_sas_token") {
            if parts.sas.is_some() {
                self.fail(
                    "blob_sas_token",
                    value,
                    "conflicts with the SharedAccessSignature in blob_connection_string: give the SAS once",
                );
            } else {
                parts.sas = Some((Secret::new(value.value.clone()), "blob_sas_token"));
            }
        }
        parts
    }

    /// Checks one part of the account with `check`; a refusal names the
    /// key it came from (prefixed with its name inside the connection
    /// string, e.g. `AccountKey`), with the value masked when secret.
    fn blob_part<T, U>(
        &mut self,
        raw: &RawConfig,
        part: Option<(T, &'static str)>,
        name_in_connection_string: &str,
        check: impl FnOnce(&T) -> Result<U, String>,
    ) -> Option<U> {
        let (value, field) = part?;
        match check(&value) {
            Ok(checked) => Some(checked),
            Err(rule) => {
                if let Some(given) = raw.get(field) {
                    let rule = if field == CONNECTION_STRING {
                        format!("{name_in_connection_string} {rule}")
                    } else {
                        rule
                    };
                    self.fail_owned(field, given, rule);
                }
                None
            }
        }
    }

    /// The blob endpoint when none is given: `<scheme>://<account>.blob.<suffix>`.
    fn blob_endpoint_from_account(
        &mut self,
        raw: &RawConfig,
        suffix: Option<(String, &'static str)>,
        account: Option<&str>,
        protocol: Protocol,
        connection: Option<&RawValue>,
    ) -> Option<String> {
        let suffix = match suffix {
            Some(suffix) => self.blob_part(raw, Some(suffix), "EndpointSuffix", |text| {
                normalise_endpoint_suffix(text, protocol)
            }),
            None => Some(DEFAULT_ENDPOINT_SUFFIX.to_owned()),
        };
        let Some(account) = account else {
            match connection {
                None => {
                    self.required(
                        raw,
                        "blob_account_name",
                        "when storage_provider includes blob and blob_endpoint is not set",
                    );
                }
                Some(value) => self.fail(
                    CONNECTION_STRING,
                    value,
                    "needs AccountName or BlobEndpoint to know where the account is",
                ),
            }
            return None;
        };
        Some(format!(
            "{}://{account}.blob.{}",
            protocol.scheme(),
            suffix?
        ))
    }

    /// The one credential: an account key (with its account) or a SAS.
    /// `before` is the problem count when the blob checks began, so a
    /// missing credential is reported only when nothing else was.
    fn blob_credential(
        &mut self,
        raw: &RawConfig,
        key: Option<Secret>,
        sas: Option<Secret>,
        account: Option<String>,
        connection: Option<&RawValue>,
        before: usize,
    ) -> Option<BlobCredential> {
        match (key, sas) {
            (Some(_), Some(_)) => {
                let field = if raw.get("blob_sas_token").is_some() {
                    "blob_sas_token"
                } else {
                    CONNECTION_STRING
                };
                if let Some(value) = raw.get(field) {
                    self.fail(
                        field,
                        value,
                        "set either an account key or a SAS token, not both",
                    );
                }
                None
            }
            (Some(key), None) => match (account, connection) {
                (Some(account), _) => Some(BlobCredential::AccountKey { account, key }),
                (None, None) => {
                    self.required(
                        raw,
                        "blob_account_name",
                        "with blob_account_key (the key signs requests for that account)",
                    );
                    None
                }
                (None, Some(value)) => {
                    self.fail(
                        CONNECTION_STRING,
                        value,
                        "holds AccountKey but no AccountName",
                    );
                    None
                }
            },
            (None, Some(sas)) => Some(BlobCredential::Sas(sas)),
            (None, None) => {
                if self.problems.len() == before {
                    self.problems.push(Problem {
                        location: raw.get("storage_provider").map(|v| v.location.clone()),
                        field: "blob_account_key".into(),
                        shown_value: String::new(),
                        rule: format!(
                            "is required {BLOB_BECAUSE}, unless blob_sas_token or blob_connection_string gives the credential"
                        ),
                    });
                }
                None
            }
        }
    }

    fn fail(&mut self, key: &str, raw: &RawValue, rule: &str) {
        self.problems.push(Problem {
            location: Some(raw.location.clone()),
            field: key.into(),
            shown_value: show_value(key, &raw.value),
            rule: rule.into(),
        });
    }

    fn parse<T>(
        &mut self,
        raw: &RawConfig,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, &'static str>,
    ) -> Option<T> {
        let value = raw.get(key)?;
        match parse(&value.value) {
            Ok(parsed) => Some(parsed),
            Err(rule) => {
                self.fail(key, value, rule);
                None
            }
        }
    }
}

fn natural_location(location: &Option<String>) -> (String, usize) {
    let text = location.clone().unwrap_or_default();
    match text.rsplit_once(':') {
        Some((file, line)) => (file.into(), line.parse().unwrap_or(usize::MAX)),
        None => (text, usize::MAX),
    }
}

fn parse_storage(text: &str) -> Result<Vec<StorageKind>, &'static str> {
    let mut kinds = Vec::new();
    for part in text.split(',') {
        let kind = match part.trim() {
            "local" => StorageKind::Local,
            "s3" => StorageKind::S3,
            "blob" => StorageKind::Blob,
            _ => return Err("must be s3, blob, local, or a comma list of them"),
        };
        if kinds.contains(&kind) {
            return Err("names a destination twice");
        }
        kinds.push(kind);
    }
    Ok(kinds)
}

fn parse_prefix(text: &str) -> Result<String, &'static str> {
    let trimmed = text.trim_matches('/');
    if trimmed.split('/').any(|part| part == ".." || part == ".") {
        return Err("must not contain `.` or `..` segments");
    }
    if trimmed.contains('\\') || trimmed.chars().any(char::is_control) {
        return Err("must not contain backslashes or control characters");
    }
    if trimmed.split('/').any(str::is_empty) && !trimmed.is_empty() {
        return Err("must not contain empty segments (`//`)");
    }
    Ok(trimmed.into())
}

fn parse_sql_name(text: &str) -> Result<(), &'static str> {
    let part_ok = |part: &str| {
        let mut chars = part.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && part.len() <= 63
    };
    let parts: Vec<&str> = text.split('.').collect();
    if (1..=2).contains(&parts.len()) && parts.iter().all(|p| part_ok(p)) {
        Ok(())
    } else {
        Err("must be a SQL name or schema.name of letters, digits and _")
    }
}

/// `time_zone`: an IANA name.
fn parse_time_zone(text: &str) -> Result<chrono_tz::Tz, &'static str> {
    text.parse::<chrono_tz::Tz>()
        .map_err(|_| "must be an IANA time zone name such as UTC or Europe/Berlin")
}

/// `rotation`.
fn parse_rotation(text: &str) -> Result<Rotation, &'static str> {
    match text {
        "overwrite" => Ok(Rotation::Overwrite),
        "unique" => Ok(Rotation::Unique),
        "prune" => Ok(Rotation::Prune),
        _ => Err("must be overwrite, unique or prune"),
    }
}

/// `database_url`: a PostgreSQL URL with a host (TLS parameters are
/// checked apart, by [`crate::postgres_tls`]).
fn parse_database_url(text: &str) -> Result<Secret, &'static str> {
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Err("must be a postgres://user:password@host:port/database URL");
    }
    match url::Url::parse(text) {
        Ok(parsed) if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(Secret::new(text)),
        _ => Err(
            "must be a postgres://user:password@host:port/database URL with a host; percent-encode @ : / # ? in the user and password",
        ),
    }
}

/// `database_schema`: a plain PostgreSQL identifier.
fn parse_schema_name(text: &str) -> Result<String, &'static str> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !text.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(text.to_owned())
    } else {
        Err("must be 1-63 characters from a-z 0-9 _, not starting with a digit")
    }
}

/// `bus_prefix`: safe in subjects and stream names.
fn parse_bus_prefix(text: &str) -> Result<String, &'static str> {
    let ok = !text.is_empty()
        && text.len() <= 32
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(text.to_owned())
    } else {
        Err("must be 1-32 characters from A-Z a-z 0-9 _ -")
    }
}

/// `payload_key`: an age X25519 identity.
fn parse_payload_key(text: &str) -> Result<Option<Secret>, &'static str> {
    if text.starts_with("AGE-SECRET-KEY-1") {
        Ok(Some(Secret::new(text)))
    } else {
        Err(
            "must be an age X25519 identity (AGE-SECRET-KEY-1...); make one with `breakglass keygen`",
        )
    }
}

/// `bus_replicas`: 1, 3 or 5.
fn parse_bus_replicas(text: &str) -> Result<usize, &'static str> {
    match text {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(
            "must be 1, 3 or 5: the copies a JetStream cluster keeps (an odd count keeps a quorum; at most the cluster's size)",
        ),
    }
}

/// The fewest characters a gRPC bearer token may have.
pub const MIN_GRPC_TOKEN_CHARS: usize = 16;

/// `grpc_token`: long enough not to be guessed.
fn check_grpc_token(text: &str) -> Result<(), &'static str> {
    if text.chars().count() < MIN_GRPC_TOKEN_CHARS {
        Err("must be at least 16 characters (a long random token: openssl rand -hex 24)")
    } else {
        Ok(())
    }
}

/// `settings_key`: 32 random bytes in base64.
fn parse_settings_key(text: &str) -> Result<Secret, &'static str> {
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(bytes) if bytes.len() == 32 => Ok(Secret::new(text)),
        _ => Err("must be 32 random bytes in base64; make one with `breakglass keygen --settings`"),
    }
}

fn parse_bounded(text: &str, min: u64, max: u64) -> Result<u64, &'static str> {
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err("must be a whole number in the documented range"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_need_a_passphrase_unless_another_encryption_is_chosen() {
        let defaults = Settings::from_raw(&RawConfig::new()).unwrap();
        let problem = defaults.services_problem().unwrap();
        assert_eq!(problem.field, "encryption_passphrase");
        for chosen in [
            "encryption: none\n",
            "encryption_passphrase: a long enough passphrase\n",
        ] {
            let raw = RawConfig::parse(chosen, "f").unwrap();
            assert!(
                Settings::from_raw(&raw)
                    .unwrap()
                    .services_problem()
                    .is_none(),
                "{chosen}"
            );
        }
    }

    fn settings(text: &str) -> Result<Settings, ConfigError> {
        Settings::from_raw(&RawConfig::parse(text, "f")?)
    }

    /// The rules read every key of the table and no other: the table and
    /// the parser cannot drift apart.
    #[test]
    fn the_rules_read_exactly_the_keys_of_the_table() {
        let every_key = |encryption: &str| -> String {
            crate::keys::KEYS
                .iter()
                .map(|k| match k.name {
                    "encryption" => format!("encryption: {encryption}\n"),
                    "storage_provider" => "storage_provider: local,s3,blob\n".into(),
                    name => format!("{name}: x\n"),
                })
                .collect()
        };
        crate::file::read_log::take();
        let mut read = std::collections::BTreeSet::new();
        for encryption in ["password", "age", "none"] {
            let raw = RawConfig::parse(&every_key(encryption), "f").unwrap();
            let _ = Settings::from_raw(&raw);
            read.extend(crate::file::read_log::take());
        }
        let table: std::collections::BTreeSet<String> = crate::keys::KNOWN_KEYS
            .iter()
            .map(|k| (*k).to_owned())
            .collect();
        assert_eq!(
            read.difference(&table).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "read but not in keys::KEYS"
        );
        assert_eq!(
            table.difference(&read).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "in keys::KEYS but never read by Settings::from_raw"
        );
    }

    /// Endpoints are refused when they carry credentials; the refusal must
    /// not print them.
    #[test]
    fn credentials_pasted_into_endpoints_are_masked_in_the_error() {
        for (text, canary) in [
            (
                "storage_provider: s3\ns3_bucket: backups\ns3_access_key_id: AKIA\ns3_secret_access_key: s\ns3_url: https://user:pw-canary@minio:9000\n",
                "pw-canary",
            ),
            (
                "storage_provider: s3\ns3_bucket: backups\ns3_access_key_id: AKIA\ns3_secret_access_key: s\ns3_url: user:pw-canary@minio:9000\n",
                "pw-canary",
            ),
            (
                "storage_provider: blob\nblob_container: backups\nblob_endpoint: https://acct.blob.core.windows.net/?sv=2022&sig=sig-canary\n",
                "sig-canary",
            ),
        ] {
            let err = settings(text).unwrap_err().to_string();
            assert!(!err.contains(canary), "{err}");
        }
    }

    #[test]
    fn a_short_grpc_token_is_reported_masked() {
        let err = settings("grpc_token: short-token").unwrap_err().to_string();
        assert!(err.contains("grpc_token"), "{err}");
        assert!(err.contains("at least 16 characters"), "{err}");
        assert!(!err.contains("short-token"), "the value is masked: {err}");
        assert!(settings("grpc_token: a-long-enough-token-0123").is_ok());
    }

    #[test]
    fn bus_replicas_is_one_three_or_five() {
        assert_eq!(settings("").unwrap().bus_replicas, 1);
        assert_eq!(settings("bus_replicas: 3").unwrap().bus_replicas, 3);
        for bad in ["2", "0", "7", "three"] {
            let err = settings(&format!("bus_replicas: {bad}")).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "f:1: bus_replicas = \"{bad}\": must be 1, 3 or 5: the copies a JetStream cluster keeps (an odd count keeps a quorum; at most the cluster's size)"
                )
            );
        }
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let s = settings("").unwrap();
        assert_eq!(s.storage, vec![StorageKind::Local]);
        assert_eq!(s.rotation, Rotation::Overwrite);
        assert_eq!(s.inventory, InventoryLocation::BundledSample);
        assert_eq!(s.time_zone, chrono_tz::UTC);
        assert_eq!(s.execute_time, None);
    }

    #[test]
    fn the_upload_retry_budget_defaults_to_twenty_minutes_and_is_bounded() {
        assert_eq!(
            settings("").unwrap().upload_retry_budget,
            Duration::from_secs(1200)
        );
        for (text, seconds) in [("0", 0), ("86400", 86_400), ("35", 35)] {
            let s = settings(&format!("upload_retry_budget_seconds: {text}\n")).unwrap();
            assert_eq!(s.upload_retry_budget, Duration::from_secs(seconds));
        }
        for bad in ["86401", "-1", "15m"] {
            let err = settings(&format!("upload_retry_budget_seconds: {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("upload_retry_budget_seconds"), "{err}");
        }
    }

    #[test]
    fn bad_times_are_rejected_with_field_value_and_rule() {
        for (value, rule) in [
            ("24:00", "hour must be 00 to 23"),
            ("9:5", "two digits each"),
            ("09:60", "minute must be 00 to 59"),
            ("0930", "HH:mm"),
        ] {
            let err = settings(&format!("execute_time: {value}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("f:1: execute_time = {value:?}")),
                "{err}"
            );
            assert!(err.contains(rule), "{value}: {err}");
        }
        assert_eq!(
            settings("execute_time: 23:59").unwrap().execute_time,
            Some(DailyTime {
                hour: 23,
                minute: 59
            })
        );
    }

    #[test]
    fn all_problems_are_reported_together() {
        let err = settings("time_zone: Mars/Olympus\nrotation: sometimes\ninventory_url: ftp://x\npayload_key: nope\n")
            .unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("time_zone = \"Mars/Olympus\": must be an IANA"),
            "{text}"
        );
        assert!(!text.contains("nope"), "payload_key must be masked: {text}");
    }

    #[test]
    fn inventory_locations_are_recognised() {
        assert!(matches!(
            InventoryLocation::parse("/x/inv.csv"),
            Ok(InventoryLocation::Csv(_))
        ));
        assert!(matches!(
            InventoryLocation::parse("inv.sqlite"),
            Ok(InventoryLocation::Sqlite(_))
        ));
        let pg = InventoryLocation::parse("postgres://u:pw-canary@h/db").unwrap();
        assert!(!pg.describe().contains("pw-canary"));
        assert!(!format!("{pg:?}").contains("pw-canary"));
    }

    #[test]
    fn a_nats_password_never_shows_in_debug() {
        let parsed = settings("nats_url: nats://svc:nats-pw-canary@nats:4222\n").unwrap();
        assert_eq!(
            parsed.nats_url.expose(),
            "nats://svc:nats-pw-canary@nats:4222"
        );
        assert!(!format!("{parsed:?}").contains("nats-pw-canary"));
    }

    #[test]
    fn the_run_log_database_is_a_masked_postgres_url_with_a_plain_schema() {
        let parsed =
            settings("database_url: postgres://u:pw-canary@h/db\ndatabase_schema: runs_2\n")
                .unwrap();
        assert_eq!(parsed.database_schema, "runs_2");
        assert!(!format!("{parsed:?}").contains("pw-canary"));
        assert_eq!(settings("").unwrap().database_schema, "breakglass");
        let err =
            settings("database_url: mysql://user:pw-canary@h/db\ndatabase_schema: Bad-Name\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("database_url") && err.contains("postgres://"),
            "{err}"
        );
        assert!(
            err.contains("database_schema") && err.contains("Bad-Name"),
            "{err}"
        );
        assert!(!err.contains("pw-canary"), "{err}");
    }

    #[test]
    fn encryption_defaults_to_password_and_checks_its_inputs() {
        assert_eq!(settings("").unwrap().encryption, Encryption::Password(None));
        assert_eq!(
            settings("encryption: none").unwrap().encryption,
            Encryption::None
        );
        let err = settings("encryption: password\nencryption_passphrase: short-canary\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("encryption_passphrase = \"********\": must be at least 16 characters"),
            "{err}"
        );
        assert!(!err.contains("short-canary"), "{err}");
        let err = settings("encryption: age\n").unwrap_err().to_string();
        assert!(
            err.contains("age_recipients = \"\": is required when encryption is age"),
            "{err}"
        );
        let err = settings("encryption: age\nage_recipients: age1notakey\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "age_recipients = \"age1notakey\": \"age1notakey\" is not an age X25519 public key"
            ),
            "{err}"
        );
        let err = settings("encryption: rot13\n").unwrap_err().to_string();
        assert!(err.contains("must be password, age or none"), "{err}");
    }

    const KEY: &str = crate::remote::DEVELOPMENT_KEY;

    #[test]
    fn blob_settings_come_from_separate_keys() {
        let s = settings(&format!(
            "storage_provider: blob\nblob_account_name: acct\nblob_account_key: {KEY}\nblob_container: backups\nblob_endpoint_suffix: https://core.chinacloudapi.cn/\n"
        ))
        .unwrap();
        let blob = s.blob.unwrap();
        assert_eq!(blob.endpoint, "https://acct.blob.core.chinacloudapi.cn");
        assert_eq!(blob.container, "backups");
        assert!(
            matches!(blob.credential, BlobCredential::AccountKey { ref account, .. } if account == "acct")
        );

        let azurite = settings(
            "storage_provider: blob\nblob_endpoint: http://127.0.0.1:10000/devstoreaccount1\nblob_protocol: http\nblob_sas_token: ?sv=2022-11-02&sp=c&sig=abc\nblob_container: backups\n",
        )
        .unwrap()
        .blob
        .unwrap();
        assert_eq!(azurite.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(azurite.protocol, Protocol::Http);
        assert!(
            matches!(azurite.credential, BlobCredential::Sas(ref sas) if sas.expose() == "sv=2022-11-02&sp=c&sig=abc")
        );
    }

    #[test]
    fn blob_settings_come_from_a_connection_string() {
        let s = settings(&format!(
            "storage_provider: blob,local\nblob_container: backups\nblob_connection_string: DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;\n"
        ))
        .unwrap();
        let blob = s.blob.unwrap();
        assert_eq!(blob.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(blob.protocol, Protocol::Http);
        let public = settings(&format!(
            "storage_provider: blob\nblob_container: backups\nblob_connection_string: DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};EndpointSuffix=core.windows.net\n"
        ))
        .unwrap()
        .blob
        .unwrap();
        assert_eq!(public.endpoint, "https://acct.blob.core.windows.net");
    }

    #[test]
    fn blob_settings_are_validated_with_field_value_and_rule() {
        let err = settings(
            "storage_provider: blob\nblob_container: My_Backups\nblob_account_name: acct\nblob_account_key: canary-not-base64!\nblob_protocol: https\nblob_endpoint: http://127.0.0.1:10000/acct\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("f:2: blob_container = \"My_Backups\": may hold only lowercase"),
            "{text}"
        );
        assert!(
            text.contains("f:4: blob_account_key = \"********\": must be the base64 account key"),
            "{text}"
        );
        assert!(
            text.contains("f:6: blob_endpoint = \"http://127.0.0.1:10000/acct\": scheme http contradicts protocol https"),
            "{text}"
        );
        assert!(!text.contains("canary"), "{text}");

        let err = settings("storage_provider: blob\nblob_container: backups\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("blob_account_name"), "{err}");

        let err = settings(&format!(
            "storage_provider: blob\nblob_container: backups\nblob_account_name: acct\nblob_account_key: {KEY}\nblob_sas_token: sv=1&sig=canarysig\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("blob_sas_token = \"********\": set either an account key or a SAS token"),
            "{err}"
        );
        assert!(!err.contains("canarysig"), "{err}");

        let err = settings(&format!(
            "storage_provider: blob\nblob_container: backups\nblob_account_name: acct\nblob_connection_string: AccountName=acct;AccountKey={KEY}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("blob_account_name = \"acct\": conflicts with blob_connection_string"),
            "{err}"
        );
        assert!(!err.contains(KEY), "{err}");

        let err = settings("storage_provider: blob\nblob_container: backups\nblob_account_name: acct\nblob_sas_token: sp=c\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blob_sas_token = \"********\": must be a SAS token"),
            "{err}"
        );
    }

    #[test]
    fn s3_settings_are_validated_with_field_value_and_rule() {
        let err = settings("storage_provider: s3\ns3_bucket: My_Bucket\ns3_protocol: https\ns3_url: http://minio:9000\ns3_secret_access_key: canary-secret\n")
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("f:2: s3_bucket = \"My_Bucket\": may hold only lowercase"),
            "{text}"
        );
        assert!(
            text.contains(
                "f:4: s3_url = \"http://minio:9000\": scheme http contradicts protocol https"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "f:1: s3_access_key_id = \"\": is required when storage_provider includes s3"
            ),
            "{text}"
        );
        assert!(!text.contains("canary-secret"), "{text}");
        let ok = settings("storage_provider: s3,local\ns3_bucket: backups\ns3_url: 127.0.0.1:5000\ns3_protocol: http\ns3_access_key_id: AKIA\ns3_secret_access_key: s\n")
            .unwrap();
        let s3 = ok.s3.unwrap();
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.checksum, ChecksumMode::WhenRequired);
        assert_eq!(ok.storage, vec![StorageKind::S3, StorageKind::Local]);
    }
}
