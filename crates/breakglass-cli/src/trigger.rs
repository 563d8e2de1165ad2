//! `breakglass trigger`: publish the on-demand trigger exactly as the Mavis
//! core does, and optionally wait for the run's outcome.
//!
//! The trigger is checked by the collector's own rules before it is sent
//! (`breakglass_bus::validate::trigger`), so a bad `--run-id` or `--reason`
//! fails here with the rule instead of as a dead letter. `--wait` reads the
//! run's `run.finished`: verified when the config holds `payload_key`,
//! otherwise read like the Mavis core reads it (see docs/BUS.md).

use anyhow::Context;
use breakglass_bus::Bus;
use breakglass_bus::validate;
use breakglass_core::RunId;
use breakglass_proto::v1;
use std::process::ExitCode;
use std::time::Duration;
use tracing::Instrument;

/// Flags of `trigger`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    bus: crate::bus_args::BusArgs,
    /// Why the run is wanted; shown in the run log.
    #[arg(long, default_value = "")]
    reason: String,
    /// Run id to use (default: a new UUIDv7). Re-using one within a day
    /// starts no second run.
    #[arg(long)]
    run_id: Option<String>,
    /// Wait for the run to finish and print its outcome; exit 1 unless it
    /// succeeded.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// Publishes the trigger (and waits, with `--wait`).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _telemetry =
        breakglass_telemetry::init_with_default("breakglass-cli", tracing::Level::WARN)?;
    let settings = args.bus.settings()?;
    let run_id = match &args.run_id {
        Some(id) => validate::run_id("--run-id", id)?,
        None => RunId::generate(),
    };
    let bus = Bus::connect(breakglass_service::bus_options(&settings)).await?;
    let trigger = v1::TriggerRequested {
        run_id: run_id.to_string(),
        reason: v1::TriggerReason::OnDemand as i32,
        requested_by: std::env::var("USER").unwrap_or_else(|_| "breakglass-cli".into()),
        requested_at_unix_ms: breakglass_bus::worker::chrono_now_ms(),
        note: args.reason.clone(),
    };
    let span = tracing::info_span!("trigger", run_id = %run_id);
    let duplicate = bus
        .trigger(&trigger)
        .instrument(span)
        .await
        .context("publishing the trigger")?;
    if duplicate {
        outln!("run {run_id}: already triggered (duplicate ignored; no second run)")?;
    } else {
        outln!("run {run_id}: triggered")?;
    }
    if !args.wait {
        bus.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let finished = bus
        .wait_for_run(run_id.as_str(), Duration::from_secs(args.timeout))
        .await?;
    bus.close().await;
    let Some(finished) = finished else {
        anyhow::bail!(
            "run {run_id} did not finish within {} s; are the services running?",
            args.timeout
        );
    };
    let status = v1::RunStatus::try_from(finished.status).unwrap_or(v1::RunStatus::Unspecified);
    outln!(
        "run {run_id}: {} ({} rows, {} projects, {} warnings)",
        status.as_str_name(),
        finished.rows,
        finished.projects.len(),
        finished.warning_count
    )?;
    for destination in &finished.destinations {
        if destination.error.is_empty() {
            outln!(
                "  {}: stored {} ({} bytes)",
                destination.destination,
                destination.location,
                destination.size
            )?;
        } else {
            outln!(
                "  {}: FAILED: {}",
                destination.destination,
                destination.error
            )?;
        }
    }
    let failed_destinations = finished
        .destinations
        .iter()
        .filter(|d| !d.error.is_empty())
        .count();
    if failed_destinations > 0 {
        // The cause is on the destination's line above: say it once.
        outln!(
            "  {} failed for {failed_destinations} destination(s), as above",
            finished.failed_stage
        )?;
    } else if !finished.error.is_empty() {
        outln!("  {} failed: {}", finished.failed_stage, finished.error)?;
    }
    Ok(if status == v1::RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
