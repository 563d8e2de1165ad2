//! What every service binary shares, so each `main.rs` only wires.
//!
//! Start-up order (as in zero-to-production's `startup.rs`): telemetry →
//! config → bus → the stage's worker loop, with a [`CancellationToken`]
//! that SIGTERM (what Kubernetes sends) or Ctrl-C cancels. The config file
//! comes from `--config FILE` or `BREAKGLASS_CONFIG`; without one, the
//! documented defaults apply.
#![warn(missing_docs)]

use anyhow::Context;
use breakglass_bus::{Bus, BusOptions};
use breakglass_config::{RawConfig, Settings};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// A service's command line: only where its configuration is.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "A breakglass service. Reads the breakglass key: value config file."
)]
pub struct ServiceArgs {
    /// The `key: value` configuration file (the mounted K3s secret).
    #[arg(long, env = "BREAKGLASS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Loads and validates the settings (defaults when there is no file).
pub fn load_settings(path: Option<&PathBuf>) -> anyhow::Result<Settings> {
    let raw = match path {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::new(),
    };
    Ok(Settings::from_raw(&raw)?)
}

/// The bus options the settings describe.
pub fn bus_options(settings: &Settings) -> BusOptions {
    BusOptions {
        url: settings.nats_url.clone(),
        prefix: settings.bus_prefix.clone(),
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        payload_ttl: settings.payload_ttl,
        payload_key: settings.payload_key.clone(),
    }
}

/// A token cancelled by SIGTERM or Ctrl-C.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot listen for SIGTERM; Ctrl-C only");
                        let _ = ctrl_c.await;
                        cancel.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}

/// The common start of a service: telemetry, config, bus.
pub struct ServiceContext {
    /// Validated settings.
    pub settings: Settings,
    /// Connected bus.
    pub bus: Bus,
    /// Cancelled on SIGTERM / Ctrl-C.
    pub shutdown: CancellationToken,
    /// Flushes telemetry on drop; keep it until the end of `main`.
    pub telemetry: breakglass_telemetry::Telemetry,
}

/// Parses the command line, starts telemetry, loads config, connects the
/// bus. Errors are meant for `main` to print as one line and exit non-zero.
pub async fn start(service: &'static str) -> anyhow::Result<ServiceContext> {
    let args = <ServiceArgs as clap::Parser>::parse();
    let telemetry = breakglass_telemetry::init(service).context("starting telemetry")?;
    let settings = load_settings(args.config.as_ref()).context("invalid configuration")?;
    if settings.payload_key.is_none() {
        anyhow::bail!(
            "payload_key is required for the services: it encrypts snapshots and workbooks on the bus (make one with `breakglass keygen`)"
        );
    }
    let bus = Bus::connect(bus_options(&settings)).await?;
    tracing::info!(service, prefix = %settings.bus_prefix, "connected to NATS");
    Ok(ServiceContext {
        settings,
        bus,
        shutdown: shutdown_on_signals(),
        telemetry,
    })
}

/// Prints an error chain as one line, for `main`.
pub fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").replace('\n', "; ")
}

/// The payload key from the settings (checked present by [`start`]).
pub fn payload_key(settings: &Settings) -> anyhow::Result<breakglass_bus::payload::PayloadKey> {
    let secret = settings
        .payload_key
        .as_ref()
        .context("payload_key is required for the services")?;
    Ok(breakglass_bus::payload::PayloadKey::parse(secret)?)
}
