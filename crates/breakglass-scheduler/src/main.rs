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
    breakglass_scheduler::run(
        context.bus.clone(),
        context.config.clone(),
        context.shutdown.clone(),
    )
    .await;
    context.bus.close().await;
    context.telemetry.shutdown();
    Ok(())
}
