//! `breakglass test --config FILE [--json]`: the destination Test, run in
//! this process with the file's settings (the same stages the uploader's
//! gRPC call runs). Exit 0 when no stage failed, 1 when one did.

use anyhow::Context;
use breakglass_probe::{StageResult, Status};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `breakglass test` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `key: value` configuration file to test.
    #[arg(long, env = "BREAKGLASS_CONFIG")]
    config: PathBuf,
    /// Print one JSON object (`passed`, `stages`) instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs the Test; the exit code says whether a stage failed.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let raw = breakglass_config::RawConfig::from_file(&args.config)?;
    let settings = breakglass_config::Settings::from_raw(&raw)
        .with_context(|| format!("{} is not valid", args.config.display()))?;
    let report = if args.json {
        let report = breakglass_probe::run(&settings, &mut |_| {}).await;
        outln!("{}", report.to_json())?;
        report
    } else {
        outln!("  {:<26} {:<8} {:>8}  MESSAGE", "STAGE", "STATUS", "TIME")?;
        let mut destination = String::new();
        // The probe's callback returns nothing: keep the first write error
        // and stop printing; it ends the command once the probe is done.
        let mut closed = None;
        let mut print = |result: &StageResult| {
            if closed.is_some() {
                return;
            }
            let mut line = || {
                if result.destination != destination {
                    destination.clone_from(&result.destination);
                    outln!("{destination}")?;
                }
                outln!("{}", row(result))?;
                std::io::stdout()
                    .flush()
                    .map_err(crate::output::StdoutClosed)
            };
            closed = line().err();
        };
        let report = breakglass_probe::run(&settings, &mut print).await;
        if let Some(err) = closed {
            return Err(err.into());
        }
        let failed = report
            .results
            .iter()
            .filter(|r| r.status == Status::Failed)
            .count();
        let warnings = report
            .results
            .iter()
            .filter(|r| r.status == Status::Warning)
            .count();
        outln!(
            "{}: {failed} failed, {warnings} warning(s)",
            if failed == 0 { "passed" } else { "FAILED" }
        )?;
        report
    };
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One table row: stage, status, milliseconds, message.
fn row(result: &StageResult) -> String {
    let status = match result.status {
        Status::Ok => "ok",
        Status::Warning => "WARNING",
        Status::Failed => "FAILED",
        Status::Skipped => "skipped",
    };
    format!(
        "  {:<26} {:<8} {:>6}ms  {}",
        result.stage.title(),
        status,
        result.duration.as_millis(),
        result.message
    )
}
