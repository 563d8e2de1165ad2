//! `renderer`: binds the render stage to the bus. See the crate docs.

/// mimalloc: collecting, sorting and rendering make millions of small
/// allocations; glibc's malloc and free were a fifth of the main thread's
/// time at 1M rows (issue #13, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use breakglass_renderer::Renderer;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("renderer: {}", breakglass_service::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let context = breakglass_service::start("breakglass-renderer").await?;
    // A renderer killed mid-run left its working folder: remove it now,
    // whatever its age, unless a live renderer still holds it.
    breakglass_renderer::sweep_crashed_work_dirs();
    let renderer = Renderer::new(
        breakglass_service::payload_key(&context.settings)?,
        context.config.clone(),
    );
    let work = breakglass_bus::worker::run(context.bus.clone(), renderer, context.shutdown.clone());
    context.run_until_stopped(async { Ok(work.await?) }).await
}
