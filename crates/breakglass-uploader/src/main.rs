//! `uploader`: binds the upload stage to the bus. See the crate docs.
// The upload future nests every destination's (S3 region discovery, sidecar,
// prune); its type is deeper than the default query limit allows.
#![recursion_limit = "256"]

use breakglass_uploader::Uploader;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("uploader: {}", breakglass_service::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let context = breakglass_service::start("breakglass-uploader").await?;
    breakglass_uploader::seed_last_success(&context.bus).await;
    let uploader = Uploader::new(
        context.config.clone(),
        breakglass_service::payload_key(&context.settings)?,
    );
    breakglass_bus::worker::run(context.bus.clone(), uploader, context.shutdown.clone()).await?;
    context.bus.close().await;
    context.telemetry.shutdown();
    Ok(())
}
