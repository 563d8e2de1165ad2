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
    let mut collector = Collector::new(context.config.clone(), key);
    if let Some(rows) = run_rows_from_env()? {
        collector = collector.with_run_rows(rows);
    }
    let work =
        breakglass_bus::worker::run(context.bus.clone(), collector, context.shutdown.clone());
    context.run_until_stopped(async { Ok(work.await?) }).await
}

/// `BREAKGLASS_SNAPSHOT_RUN_ROWS`: rows per snapshot run (default 40,000),
/// a tuning knob: fewer rows hold less memory here and give the renderer
/// more runs to merge.
fn run_rows_from_env() -> anyhow::Result<Option<usize>> {
    const NAME: &str = "BREAKGLASS_SNAPSHOT_RUN_ROWS";
    let Ok(value) = std::env::var(NAME) else {
        return Ok(None);
    };
    match value.trim().parse::<usize>() {
        Ok(rows) if (1..=10_000_000).contains(&rows) => Ok(Some(rows)),
        _ => anyhow::bail!("{NAME} = {value:?}: must be a whole number of rows from 1 to 10000000"),
    }
}
