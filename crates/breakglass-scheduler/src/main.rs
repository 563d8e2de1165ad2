//! `scheduler`: publishes the daily trigger. See the crate docs.

use std::process::ExitCode;

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
    let context = breakglass_service::start("breakglass-scheduler").await?;
    let (runlog_tx, _runlog_rx) = tokio::sync::watch::channel(None);
    let recorder = context.settings.database_url.clone().map(|url| {
        tokio::spawn(breakglass_scheduler::record_runs(
            context.bus.clone(),
            url,
            context.settings.database_schema.clone(),
            runlog_tx,
            context.shutdown.clone(),
        ))
    });
    breakglass_scheduler::run(
        context.bus.clone(),
        context.config.clone(),
        context.shutdown.clone(),
    )
    .await;
    if let Some(recorder) = recorder {
        let _ = recorder.await;
    }
    context.bus.close().await;
    context.telemetry.shutdown();
    Ok(())
}
