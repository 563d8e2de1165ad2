//! `scheduler`: publishes the daily trigger, records the run log when
//! `database_url` is set, and serves the run history over gRPC when
//! `--grpc` is given. See the crate docs.

/// mimalloc: collecting, sorting and rendering make millions of small
/// allocations; glibc's malloc and free were a fifth of the main thread's
/// time at 1M rows (issue #13, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use breakglass_proto::v1::config_service_server::ConfigServiceServer;
use breakglass_proto::v1::run_history_server::RunHistoryServer;
use breakglass_scheduler::config_api::{ConfigApi, republish_periodically};
use breakglass_scheduler::grpc::RunHistoryService;
use breakglass_service::grpc::PathSplit;
use std::process::ExitCode;

/// The scheduler's command line: the services' flags plus `--grpc`.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "The breakglass scheduler. Reads the breakglass key: value config file."
)]
struct Args {
    #[command(flatten)]
    service: breakglass_service::ServiceArgs,
    /// Serve the run history API (TriggerNow, GetRun, ListRuns, WatchRun)
    /// and the config API (Get, Update, Validate, History) on this address;
    /// needs database_url, grpc_token in the config file or
    /// $BREAKGLASS_GRPC_TOKEN, and settings_key for settings stored through
    /// the API. Off when not given.
    #[arg(long, env = "BREAKGLASS_GRPC_ADDR")]
    grpc: Option<std::net::SocketAddr>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("scheduler: {}", breakglass_service::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let context = breakglass_service::start_with(args.service, "breakglass-scheduler").await?;
    let (runlog_tx, runlog_rx) = tokio::sync::watch::channel(None);
    if let Some(addr) = args.grpc {
        if context.settings.database_url.is_none() {
            anyhow::bail!("--grpc serves the run history from PostgreSQL: set database_url");
        }
        let port = breakglass_service::grpc::listen(addr, &context.config).await?;
        let settings_key = context
            .settings
            .settings_key
            .as_ref()
            .map(breakglass_core::seal::SealKey::parse)
            .transpose()?;
        if settings_key.is_none() {
            tracing::warn!(
                "settings_key is not set: the config API can show a settings file but not store settings"
            );
        }
        let config_api = ConfigApi::new(
            context.config.clone(),
            runlog_rx.clone(),
            settings_key,
            context.bus.clone(),
            breakglass_bus::settings_kv::bus_settings_key(
                context
                    .settings
                    .payload_key
                    .as_ref()
                    .context("payload_key is required for the services")?,
            ),
        );
        tokio::spawn(republish_periodically(
            config_api.clone(),
            runlog_rx.clone(),
            context.shutdown.clone(),
        ));
        let service = PathSplit::new(
            ConfigServiceServer::with_interceptor(config_api, port.auth()),
            RunHistoryServer::with_interceptor(
                RunHistoryService::new(context.bus.clone(), runlog_rx),
                port.auth(),
            ),
        );
        let shutdown = context.shutdown.clone();
        // Health reports the run history as well as the config API.
        let port = port.also_serving(
            <RunHistoryServer<RunHistoryService> as tonic::server::NamedService>::NAME,
        );
        tokio::spawn(async move {
            if let Err(err) = port.serve(service, shutdown).await {
                tracing::error!(error = %err, "the gRPC API stopped");
            }
        });
    }
    let recorder = context.settings.database_url.clone().map(|url| {
        // /readyz says so while the run log's PostgreSQL does not answer.
        let reachable = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = reachable.clone();
        context.readiness.add(std::sync::Arc::new(move || {
            if seen.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("the run log's PostgreSQL (database_url) does not answer".into())
            }
        }));
        tokio::spawn(breakglass_scheduler::record_runs(
            context.bus.clone(),
            url,
            context.settings.database_schema.clone(),
            context.settings.ca_bundle.clone(),
            runlog_tx,
            reachable,
            context.shutdown.clone(),
        ))
    });
    let (bus, config, shutdown) = (
        context.bus.clone(),
        context.config.clone(),
        context.shutdown.clone(),
    );
    let work = async move {
        breakglass_scheduler::run(bus, config, shutdown).await;
        if let Some(recorder) = recorder {
            let _ = recorder.await;
        }
        Ok(())
    };
    context.run_until_stopped(work).await
}
