//! `collector`: binds the collect stage to the bus. See the crate docs.

/// mimalloc: collecting, sorting and rendering make millions of small
/// allocations; glibc's malloc and free were a fifth of the main thread's
/// time at 1M rows (issue #13, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use breakglass_collector::Collector;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("collector: {}", breakglass_service::one_line(&err));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let context = breakglass_service::start("breakglass-collector").await?;
    let key = breakglass_service::payload_key(&context.settings)?;
    let collector = Collector::new(context.config.clone(), key);
    let work =
        breakglass_bus::worker::run(context.bus.clone(), collector, context.shutdown.clone());
    context.run_until_stopped(async { Ok(work.await?) }).await
}
