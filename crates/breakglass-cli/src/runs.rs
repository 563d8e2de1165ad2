//! `breakglass runs`: the run history from the scheduler's gRPC API (the
//! PostgreSQL run log) — list, show one, watch one live, or trigger one.
//!
//! The token comes from `$BREAKGLASS_GRPC_TOKEN` or `--token-file`, never
//! from argv.

use crate::grpc_client::{CallHeaders, GrpcArgs};
use breakglass_proto::v1;
use breakglass_proto::v1::run_history_client::RunHistoryClient;
use std::process::ExitCode;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Flags of `runs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    grpc: GrpcArgs,
    #[command(subcommand)]
    command: Option<RunsCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum RunsCommand {
    /// The newest runs (the default).
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One run with its destinations.
    Show {
        /// The run id.
        run_id: String,
    },
    /// Follow a run's stages until it ends; exits 1 unless it succeeded.
    Watch {
        /// The run id.
        run_id: String,
    },
    /// Start an on-demand run now, then follow it.
    Trigger {
        /// Free text for the run log.
        #[arg(long, default_value = "")]
        note: String,
        /// Return at once instead of following the run.
        #[arg(long)]
        no_wait: bool,
    },
}

type Client = RunHistoryClient<InterceptedService<Channel, CallHeaders>>;

async fn client(args: &Args) -> anyhow::Result<Client> {
    let (channel, headers) = args.grpc.connect("scheduler's run history API").await?;
    Ok(RunHistoryClient::with_interceptor(channel, headers))
}

pub(crate) fn when(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", status.code(), status.message())
}

/// Runs the subcommand.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut client = client(&args).await?;
    match args.command.unwrap_or(RunsCommand::List { limit: 20 }) {
        RunsCommand::List { limit } => {
            let runs = client
                .list_runs(v1::ListRunsRequest {
                    limit,
                    before_unix_ms: 0,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .runs;
            outln!(
                "{:<38} {:<10} {:<17} {:<21} {:>8}  error",
                "run",
                "reason",
                "status",
                "requested",
                "rows"
            )?;
            for run in runs {
                outln!(
                    "{:<38} {:<10} {:<17} {:<21} {:>8}  {}",
                    run.run_id,
                    run.reason,
                    run.status,
                    when(run.requested_at_unix_ms),
                    run.rows,
                    run.error
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Show { run_id } => {
            let run = client
                .get_run(v1::GetRunRequest { run_id })
                .await
                .map_err(status_error)?
                .into_inner();
            outln!("run        {}", run.run_id)?;
            outln!(
                "reason     {} (asked by {}{})",
                run.reason,
                run.requested_by,
                if run.note.is_empty() {
                    String::new()
                } else {
                    format!(": {}", run.note)
                }
            )?;
            outln!("requested  {}", when(run.requested_at_unix_ms))?;
            outln!("finished   {}", when(run.finished_at_unix_ms))?;
            outln!(
                "status     {}{}",
                run.status,
                if run.failed_stage.is_empty() {
                    String::new()
                } else {
                    format!(" (in {})", run.failed_stage)
                }
            )?;
            outln!("rows       {} ({} warnings)", run.rows, run.warning_count)?;
            if !run.error.is_empty() {
                outln!("error      {}", run.error)?;
            }
            for destination in &run.destinations {
                outln!(
                    "  {} {}: {}",
                    if destination.status == v1::RunStatus::Succeeded as i32 {
                        "ok    "
                    } else {
                        "FAILED"
                    },
                    destination.destination,
                    if destination.error.is_empty() {
                        format!(
                            "{} ({} bytes, sha256 {})",
                            destination.location, destination.size, destination.sha256
                        )
                    } else {
                        destination.error.clone()
                    }
                )?;
            }
            Ok(if run.status == "succeeded" || run.status == "running" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        RunsCommand::Watch { run_id } => watch(&mut client, run_id).await,
        RunsCommand::Trigger { note, no_wait } => {
            let requested_by = std::env::var("USER").unwrap_or_else(|_| "breakglass-cli".into());
            let run_id = client
                .trigger_now(v1::TriggerNowRequest { requested_by, note })
                .await
                .map_err(status_error)?
                .into_inner()
                .run_id;
            outln!("triggered run {run_id}")?;
            if no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            watch(&mut client, run_id).await
        }
    }
}

async fn watch(client: &mut Client, run_id: String) -> anyhow::Result<ExitCode> {
    let mut events = client
        .watch_run(v1::WatchRunRequest {
            run_id: run_id.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut ended = false;
    while let Some(event) = events.message().await.map_err(status_error)? {
        outln!(
            "{}  {:<12} {}",
            when(event.at_unix_ms),
            event.stage,
            event.detail
        )?;
        ended |= event.ends_run;
    }
    if !ended {
        eprintln!("breakglass: stopped following run {run_id} before it ended");
        return Ok(ExitCode::FAILURE);
    }
    let run = client
        .get_run(v1::GetRunRequest { run_id })
        .await
        .map_err(status_error)?
        .into_inner();
    Ok(if run.status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
