//! `breakglass status`: per destination, the last verified copy, the last
//! failure with its reason, and the age of the newest copy, from the run
//! outcomes the bus keeps. Exits 1 when a destination's newest copy is
//! older than `--max-age` hours (or there is none), so it can run from cron
//! or a monitoring check.

use breakglass_bus::Bus;
use breakglass_proto::v1;
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Flags of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    bus: crate::bus_args::BusArgs,
    /// A copy older than this many hours makes the check fail.
    #[arg(long, default_value_t = 26.0)]
    max_age: f64,
}

#[derive(Default)]
struct DestinationState {
    last_success: Option<(i64, String, String)>,
    last_failure: Option<(i64, String, String)>,
}

/// Prints the status and returns 0 when every destination is fresh.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _telemetry =
        breakglass_telemetry::init_with_default("breakglass-cli", tracing::Level::WARN)?;
    let settings = args.bus.settings()?;
    let bus = Bus::connect(breakglass_service::bus_options(&settings)).await?;
    let runs = bus.recent_runs().await?;
    bus.close().await;

    let mut destinations: BTreeMap<String, DestinationState> = BTreeMap::new();
    let mut last_run: Option<&v1::RunFinished> = None;
    for run in &runs {
        last_run = Some(run);
        for destination in &run.destinations {
            let state = destinations
                .entry(destination.destination.clone())
                .or_default();
            let entry = (
                run.finished_at_unix_ms,
                run.run_id.clone(),
                destination.error.clone(),
            );
            if destination.status == v1::RunStatus::Succeeded as i32 {
                state.last_success = Some(entry);
            } else {
                state.last_failure = Some(entry);
            }
        }
    }
    let now_ms = breakglass_bus::worker::chrono_now_ms();
    let hours = |at: i64| (now_ms - at) as f64 / 3_600_000.0;
    let when = |at: i64| {
        chrono::DateTime::from_timestamp_millis(at)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    };
    match last_run {
        Some(run) => {
            let status = v1::RunStatus::try_from(run.status).unwrap_or(v1::RunStatus::Unspecified);
            outln!(
                "last run {} finished {} ({:.1} h ago): {}",
                run.run_id,
                when(run.finished_at_unix_ms),
                hours(run.finished_at_unix_ms),
                status.as_str_name()
            )?;
            if !run.error.is_empty() {
                outln!("  {} failed: {}", run.failed_stage, run.error)?;
            }
        }
        None => outln!("no run in the last 7 days")?,
    }
    let mut stale = destinations.is_empty();
    for (name, state) in &destinations {
        outln!("{name}")?;
        match &state.last_success {
            Some((at, run_id, _)) => {
                let age = hours(*at);
                let fresh = age <= args.max_age;
                stale |= !fresh;
                outln!(
                    "  newest copy: {} ({age:.1} h old, run {run_id}){}",
                    when(*at),
                    if fresh { "" } else { "  STALE" }
                )?;
            }
            None => {
                stale = true;
                outln!("  newest copy: none in the last 7 days  STALE")?;
            }
        }
        if let Some((at, run_id, error)) = &state.last_failure {
            outln!("  last failure: {} (run {run_id}): {error}", when(*at))?;
        }
    }
    if stale {
        eprintln!(
            "breakglass: no copy newer than {} h in every destination",
            args.max_age
        );
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
