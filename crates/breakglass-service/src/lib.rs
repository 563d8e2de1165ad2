//! What every service binary shares, so each `main.rs` only wires.
//!
//! Start-up order (as in zero-to-production's `startup.rs`): telemetry →
//! config → bus → the stage's worker loop, with a [`CancellationToken`]
//! that SIGTERM (what Kubernetes sends) or Ctrl-C cancels. The config file
//! comes from `--config FILE` or `BREAKGLASS_CONFIG` and holds the wiring
//! (`payload_key` at least); the settings come from it too when it holds
//! any settings-page key, else from the config API over the bus
//! ([`watch_api_settings`]).
#![warn(missing_docs)]

pub mod grpc;
pub mod http;

use anyhow::Context;
use breakglass_bus::{Bus, BusOptions};
use breakglass_config::{RawConfig, Settings, SettingsSource};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Address of the health and metrics endpoint (`/healthz`, `/readyz`,
    /// `/metrics`); port 0 picks a free one (the log says which).
    #[arg(long, env = "BREAKGLASS_HTTP_ADDR", default_value = "0.0.0.0:9090")]
    pub http: std::net::SocketAddr,
    /// Seconds the service may take to stop after SIGTERM or Ctrl-C: the
    /// message in hand is finished within it or abandoned (never acked, so
    /// it is redelivered after `ack_wait`), and the process exits by then
    /// whatever NATS does. Keep it below Kubernetes'
    /// `terminationGracePeriodSeconds`.
    #[arg(
        long,
        env = "BREAKGLASS_SHUTDOWN_GRACE_SECONDS",
        default_value_t = DEFAULT_SHUTDOWN_GRACE_SECONDS,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub shutdown_grace_seconds: u64,
}

/// The default shutdown grace period: below the 120 s
/// `terminationGracePeriodSeconds` of `deploy/k8s`, so a service exits by
/// itself (telemetry flushed) before Kubernetes kills it.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 90;

/// Where the settings come from. Stages read them again for every message
/// and the scheduler every minute, so a changed mounted secret (Kubernetes
/// swaps the file by symlink) takes effect without a restart. Bus wiring
/// (`nats_url`, `bus_prefix`, `payload_key`) is read once at start-up.
///
/// When the file holds no settings-page key, a service lays the settings
/// stored through the config API over it (see [`watch_api_settings`]);
/// a file that holds them wins.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    path: Option<PathBuf>,
    warned_mode: std::sync::Arc<std::sync::atomic::AtomicU32>,
    api: Arc<tokio::sync::watch::Sender<ApiLayer>>,
}

/// What this process knows of the settings stored through the config API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiLayer {
    /// Not followed: the file (or the defaults) is all there is (the CLI).
    Off,
    /// Followed, but not read yet (the bus is slow to answer).
    Waiting,
    /// Read: nothing has been saved through the API yet.
    Empty,
    /// The newest settings saved through the API.
    Loaded(breakglass_config::ApiSettings),
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file is unreadable or breaks a rule.
    #[error(transparent)]
    Invalid(#[from] breakglass_config::ConfigError),
    /// The settings come from the API and have not been read yet.
    #[error(
        "the settings stored through the config API are not loaded yet (waiting for NATS key-value bucket)"
    )]
    ApiNotLoaded,
    /// The settings come from the API and none were saved yet.
    #[error(
        "no settings are stored yet: save them on the settings page (config API, `breakglass config set`) or mount a config file that holds them"
    )]
    ApiEmpty,
}

impl ConfigSource {
    /// Settings from `path`, or the documented defaults when `None`.
    pub fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            warned_mode: std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0)),
            api: Arc::new(tokio::sync::watch::channel(ApiLayer::Off).0),
        }
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_ref()
    }

    /// The mounted file as strings (empty when there is none).
    pub fn raw_file(&self) -> Result<RawConfig, breakglass_config::ConfigError> {
        match &self.path {
            Some(path) => RawConfig::from_file(path),
            None => Ok(RawConfig::new()),
        }
    }

    /// Which option provides the settings now: the file when it holds any
    /// settings-page key, else the config API.
    pub fn source(&self) -> Result<SettingsSource, breakglass_config::ConfigError> {
        Ok(SettingsSource::of(&self.raw_file()?))
    }

    /// Replaces what this process knows of the API's settings.
    pub fn set_api_layer(&self, layer: ApiLayer) {
        self.api.send_replace(layer);
    }

    /// A receiver that sees every change of the API's settings, so the
    /// scheduler can re-plan at once instead of at its next minute. Mark it
    /// seen (`borrow_and_update`) before each read of the settings, and no
    /// change can slip between the read and the wait.
    pub fn api_changes(&self) -> tokio::sync::watch::Receiver<ApiLayer> {
        self.api.subscribe()
    }

    /// Takes `settings` if they are newer than those held (a service never
    /// goes back to an older version). True when taken.
    pub fn offer_api_settings(&self, settings: breakglass_config::ApiSettings) -> bool {
        self.api.send_if_modified(|layer| {
            let newer = match layer {
                ApiLayer::Loaded(held) => settings.version > held.version,
                _ => true,
            };
            if newer {
                tracing::info!(
                    version = settings.version,
                    "applying settings saved through the config API"
                );
                *layer = ApiLayer::Loaded(settings);
            }
            newer
        })
    }

    /// Waits until the API's settings were read once (at most `limit`):
    /// the scheduler's catch-up must not decide on settings not yet known.
    pub async fn api_loaded(&self, limit: std::time::Duration) -> bool {
        let mut seen = self.api.subscribe();
        tokio::time::timeout(limit, seen.wait_for(|layer| *layer != ApiLayer::Waiting))
            .await
            .is_ok_and(|changed| changed.is_ok())
    }

    /// Reads and validates the settings now. Warns (once per file mode) when
    /// the file is readable by group or others: it holds credentials.
    pub fn load(&self) -> Result<Settings, LoadError> {
        #[cfg(unix)]
        if let Some(path) = &self.path {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(metadata) = std::fs::metadata(path) {
                let mode = metadata.permissions().mode() & 0o777;
                let previous = self
                    .warned_mode
                    .swap(mode, std::sync::atomic::Ordering::Relaxed);
                if mode & 0o077 != 0 && previous != mode {
                    tracing::warn!(
                        file = %path.display(),
                        mode = format!("{mode:o}"),
                        "the config file is readable by group or others; it holds credentials: chmod 600 (or defaultMode 0400 for a Secret)"
                    );
                }
            }
        }
        Ok(Settings::from_raw(&self.effective_raw()?)?)
    }

    /// The settings as strings, before validation: the file, or its wiring
    /// with the API's settings laid over it.
    pub fn effective_raw(&self) -> Result<RawConfig, LoadError> {
        let raw = self.raw_file()?;
        if SettingsSource::of(&raw) == SettingsSource::File {
            return Ok(raw);
        }
        match &*self.api.borrow() {
            ApiLayer::Off => Ok(raw),
            ApiLayer::Waiting => Err(LoadError::ApiNotLoaded),
            ApiLayer::Empty => Err(LoadError::ApiEmpty),
            ApiLayer::Loaded(api) => Ok(api.over(&raw)),
        }
    }
}

impl ConfigSource {
    /// [`ConfigSource::load`] for a stage handling a run: an invalid file
    /// fails the run permanently, with the validation message; settings
    /// not read yet from the bus are worth a retry.
    pub fn load_for_run(&self) -> Result<Settings, breakglass_bus::worker::StageFailure> {
        self.load().map_err(|err| match err {
            LoadError::ApiNotLoaded => {
                breakglass_bus::worker::StageFailure::retry(format!("configuration: {err}"))
            }
            err => breakglass_bus::worker::StageFailure::permanent(format!("configuration: {err}")),
        })
    }
}

/// Follows the settings published by the config API (the NATS key-value
/// bucket) into `config`, until `shutdown`. Re-watches after a broken watch
/// (a NATS restart), and never moves to an older version. The caller sets
/// [`ApiLayer::Waiting`] before spawning this, so no read can see `Off`.
pub async fn watch_api_settings(
    bus: Bus,
    key: breakglass_core::seal::SealKey,
    config: ConfigSource,
    shutdown: CancellationToken,
) {
    use futures::StreamExt;
    loop {
        match bus.watch_settings(key.clone()).await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                loop {
                    let item = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        item = stream.next() => item,
                    };
                    match item {
                        Some(Ok(Some(settings))) => {
                            config.offer_api_settings(settings);
                        }
                        Some(Ok(None)) => {
                            config.api.send_if_modified(|layer| {
                                let first = matches!(layer, ApiLayer::Waiting);
                                if first {
                                    *layer = ApiLayer::Empty;
                                }
                                first
                            });
                        }
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "cannot read the settings saved through the config API");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot follow the settings saved through the config API; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

/// The environment variable that overrides `nats_url`, so each
/// Deployment can connect as its own NATS user while all share one config
/// file (deploy/k8s composes it from the `breakglass-nats-users` Secret).
pub const NATS_URL_ENV: &str = "BREAKGLASS_NATS_URL";

/// The bus options the settings describe (`$BREAKGLASS_NATS_URL` wins
/// over `nats_url`).
pub fn bus_options(settings: &Settings) -> BusOptions {
    let url = std::env::var(NATS_URL_ENV)
        .ok()
        .filter(|url| !url.is_empty())
        .map(breakglass_core::Secret::new)
        .unwrap_or_else(|| settings.nats_url.clone());
    BusOptions {
        url,
        prefix: settings.bus_prefix.clone(),
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver,
        payload_ttl: settings.payload_ttl,
        replicas: settings.bus_replicas,
        payload_key: settings.payload_key.clone(),
        ca_bundle: settings.ca_bundle.as_ref().map(|ca| ca.path.clone()),
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
    /// Validated settings, as read at start-up.
    pub settings: Settings,
    /// The settings' source, to read them again at execution time.
    pub config: ConfigSource,
    /// Connected bus.
    pub bus: Bus,
    /// Cancelled on SIGTERM / Ctrl-C.
    pub shutdown: CancellationToken,
    /// Flushes telemetry on drop; keep it until the end of `main`.
    pub telemetry: breakglass_telemetry::Telemetry,
    /// More dependencies for `/readyz` (e.g. the scheduler's PostgreSQL).
    pub readiness: Readiness,
    /// How long the service may take to stop once `shutdown` is cancelled.
    pub grace: std::time::Duration,
}

/// Further checks `/readyz` runs after NATS: each answers `Err(reason)`
/// while its dependency is unreachable.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<std::sync::RwLock<Vec<http::ReadinessCheck>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").finish_non_exhaustive()
    }
}

impl Readiness {
    /// Adds a check.
    pub fn add(&self, check: http::ReadinessCheck) {
        if let Ok(mut checks) = self.checks.write() {
            checks.push(check);
        }
    }

    fn check(&self) -> Result<(), String> {
        match self.checks.read() {
            Ok(checks) => checks.iter().try_for_each(|check| check()),
            Err(_) => Err("a readiness check panicked".into()),
        }
    }
}

/// Parses the command line, starts telemetry, loads config, connects the
/// bus. Errors are meant for `main` to print as one line and exit non-zero.
pub async fn start(service: &'static str) -> anyhow::Result<ServiceContext> {
    start_with(<ServiceArgs as clap::Parser>::parse(), service).await
}

/// [`start`] with arguments a service parsed itself (one that adds flags,
/// like the uploader's `--grpc`, flattens [`ServiceArgs`] into its own).
pub async fn start_with(
    args: ServiceArgs,
    service: &'static str,
) -> anyhow::Result<ServiceContext> {
    let telemetry = breakglass_telemetry::init(service).context("starting telemetry")?;
    // A crashed predecessor may have left a private working folder behind.
    let swept = breakglass_core::private_fs::sweep_stale_dirs(
        &[
            "breakglass-collector-",
            "breakglass-renderer-",
            "breakglass-uploader-",
        ],
        std::time::Duration::from_secs(3600),
    );
    if swept > 0 {
        tracing::info!(swept, "removed working folders left by an earlier crash");
    }
    let config = ConfigSource::new(args.config.clone());
    // Start-up needs only the wiring; settings from the config API arrive
    // over the bus once it is connected.
    let file = config.raw_file().context("invalid configuration")?;
    let source = SettingsSource::of(&file);
    let settings = Settings::from_raw(&file).context("invalid configuration")?;
    if source == SettingsSource::File
        && let Some(problem) = settings.services_problem()
    {
        anyhow::bail!("{problem}");
    }
    if settings.payload_key.is_none() {
        anyhow::bail!(
            "payload_key is required for the services: it encrypts snapshots and workbooks on the bus (make one with `breakglass keygen`)"
        );
    }
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for health and metrics (--http)",
                args.http
            )
        })?;
    let bus = Bus::connect(bus_options(&settings)).await?;
    tracing::info!(service, prefix = %settings.bus_prefix, "connected to NATS");
    let shutdown = shutdown_on_signals();
    // Followed even while the file holds the settings, so that removing
    // them from the file hands over to the API without a restart.
    if source == SettingsSource::Api {
        tracing::info!(
            service,
            "the config file holds no settings-page keys: following the settings saved through the config API"
        );
    }
    let bus_key = breakglass_bus::settings_kv::bus_settings_key(
        settings
            .payload_key
            .as_ref()
            .context("payload_key is required for the services")?,
    );
    config.set_api_layer(ApiLayer::Waiting);
    tokio::spawn(watch_api_settings(
        bus.clone(),
        bus_key,
        config.clone(),
        shutdown.clone(),
    ));
    let client = bus.client().clone();
    let readiness = Readiness::default();
    let more = readiness.clone();
    let ready: http::ReadinessCheck =
        std::sync::Arc::new(move || match client.connection_state() {
            async_nats::connection::State::Connected => more.check(),
            state => Err(format!("NATS connection is {state}")),
        });
    let addr = listener.local_addr().unwrap_or(args.http);
    tracing::info!(service, addr = %addr, "health and metrics endpoint listening");
    tokio::spawn(http::serve(listener, ready, shutdown.clone()));
    Ok(ServiceContext {
        settings,
        config,
        bus,
        shutdown,
        telemetry,
        readiness,
        grace: std::time::Duration::from_secs(args.shutdown_grace_seconds),
    })
}

impl ServiceContext {
    /// Runs the service's `work` (its worker loop) until it ends, and
    /// stops within the grace period once a shutdown is requested:
    ///
    /// 1. SIGTERM cancels `shutdown`: the work stops waiting for messages
    ///    and finishes the one in hand, for at most the grace period less
    ///    a reserve for closing (a quarter of it, at most 5 s).
    /// 2. Work still running then is abandoned: its message was never
    ///    acked, so JetStream redelivers it after `ack_wait`, and every
    ///    stage is idempotent and never touches a previous copy before the
    ///    new one is verified.
    /// 3. The bus is flushed and drained within the reserve (a bus whose
    ///    server is gone would wait for a reconnect forever), then the
    ///    telemetry is flushed.
    ///
    /// A watchdog thread ends the process when the grace period is over,
    /// whatever is still running (a blocking task, an exporter).
    pub async fn run_until_stopped(
        self,
        work: impl std::future::Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let Self {
            bus,
            shutdown,
            telemetry,
            grace,
            ..
        } = self;
        let reserve = (grace / 4).min(std::time::Duration::from_secs(5));
        tokio::pin!(work);
        let (result, deadline) = tokio::select! {
            result = &mut work => (result, None),
            () = shutdown.cancelled() => {
                let deadline = tokio::time::Instant::now() + grace;
                watchdog(grace);
                let result = match tokio::time::timeout_at(deadline - reserve, &mut work).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(
                            grace_s = grace.as_secs(),
                            "the shutdown grace period is over: abandoning the message in hand (not acknowledged: it is redelivered after ack_wait)"
                        );
                        Ok(())
                    }
                };
                (result, Some(deadline))
            }
        };
        // Half the reserve for the bus, the rest for the telemetry flush.
        let close_by = tokio::time::Instant::now() + reserve / 2;
        let close_by = deadline.map_or(close_by, |deadline| close_by.min(deadline - reserve / 2));
        if tokio::time::timeout_at(close_by, bus.close())
            .await
            .is_err()
        {
            tracing::warn!("NATS did not take the last messages in time; closing without them");
        }
        tracing::info!("stopped");
        telemetry.shutdown();
        result
    }
}

/// Ends the process `grace` from now if it is still running then.
fn watchdog(grace: std::time::Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(grace);
            eprintln!(
                "{{\"level\":\"ERROR\",\"fields\":{{\"message\":\"still running {} s after the shutdown request: exiting now\"}}}}",
                grace.as_secs()
            );
            std::process::exit(1);
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot start the shutdown watchdog");
    }
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
