//! The flags every bus-talking command shares (`trigger`, `status`): where
//! the config file is, and overrides for the NATS URL and subject prefix.

use breakglass_config::{RawConfig, Settings};
use std::path::PathBuf;

/// `--config`, `--nats`, `--prefix`.
#[derive(Debug, clap::Args)]
pub struct BusArgs {
    /// A `key: value` config file (for `nats_url`, `bus_prefix`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// NATS URL (overrides `nats_url`).
    #[arg(long)]
    nats: Option<String>,
    /// Subject prefix (overrides `bus_prefix`).
    #[arg(long)]
    prefix: Option<String>,
}

impl BusArgs {
    /// The validated settings, flags winning over the file.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut raw = match &self.config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::new(),
        };
        for (key, value, flag) in [
            ("nats_url", &self.nats, "--nats"),
            ("bus_prefix", &self.prefix, "--prefix"),
        ] {
            if let Some(value) = value {
                raw.override_with(key, value, flag)
                    .map_err(|problem| anyhow::anyhow!("{problem}"))?;
            }
        }
        Ok(Settings::from_raw(&raw)?)
    }
}
