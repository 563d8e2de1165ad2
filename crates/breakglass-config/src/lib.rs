//! The breakglass configuration: one `key: value` file shared by the K3s
//! secret (option 1), the settings page (option 2), `breakglass run-once
//! --config FILE` and the docs (DESIGN.md §7 names the keys).
//!
//! # Layout
//! - [`file`]: the `key: value` text format: comments, quotes, line numbers,
//!   unknown keys with a "did you mean" hint. Values stay strings.
//! - [`settings`]: typed, validated [`Settings`] built from those strings;
//!   every problem is collected, so `config check` can print them all.
//! - [`problem`]: [`Problem`] and [`ConfigError`]: field, value (masked when
//!   secret) and rule, the one error shape every bad input gets.
//! - [`mask`]: the one rule for a secret sent back as the mask: it keeps
//!   the stored value only while the fields that decide where it is sent
//!   are unchanged.
//! - [`remote`]: S3 / Azure destination settings, endpoint and bucket rules,
//!   the CA bundle.
//! - [`postgres_tls`]: libpq's TLS parameters (`sslmode`, `sslrootcert`,
//!   `sslcert`, `sslkey`) in `inventory_url` / `database_url`, and the one
//!   policy both connections follow.
//! - [`source`]: which keys the settings page (the config API) manages, and
//!   how settings stored through it lay over the mounted file's wiring.
#![warn(missing_docs)]

pub mod file;
pub mod postgres_tls;
pub mod mask;
pub mod problem;
pub mod remote;
pub mod settings;
pub mod source;

pub use file::{KNOWN_KEYS, PAGE_KEYS, RawConfig, SECRET_KEYS, WIRING_KEYS};
pub use problem::{ConfigError, Problem};
pub use remote::{BlobCredential, BlobSettings, CaBundle, ChecksumMode, Protocol, S3Settings};
pub use settings::{
    DailyTime, Encryption, GrpcTlsFiles, InventoryLocation, Rotation, Settings, StorageKind,
};
pub use source::{ApiSettings, SettingsSource, api_keys};
