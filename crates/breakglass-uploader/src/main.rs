//! `uploader`: binds the upload stage to the bus, and serves the
//! destination Test over gRPC when `--grpc` is given. See the crate docs.
// The upload future nests every destination's (S3 region discovery, sidecar,
// prune); its type is deeper than the default query limit allows.
#![recursion_limit = "256"]

/// mimalloc: collecting, sorting and rendering make millions of small
/// allocations; glibc's malloc and free were a fifth of the main thread's
/// time at 1M rows (issue #13, docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use breakglass_proto::v1::destination_test_server::DestinationTestServer;
use breakglass_uploader::Uploader;
use breakglass_uploader::grpc::DestinationTestService;
use std::process::ExitCode;

/// The uploader's command line: the services' flags plus `--grpc`.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "The breakglass uploader. Reads the breakglass key: value config file."
)]
struct Args {
    #[command(flatten)]
    service: breakglass_service::ServiceArgs,
    /// Serve the gRPC API (the destination Test) on this address; needs
    /// grpc_token in the config file or $BREAKGLASS_GRPC_TOKEN. Off when
    /// not given.
    #[arg(long, env = "BREAKGLASS_GRPC_ADDR")]
    grpc: Option<std::net::SocketAddr>,
}

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
    let args = <Args as clap::Parser>::parse();
    let context = breakglass_service::start_with(args.service, "breakglass-uploader").await?;
    if let Some(addr) = args.grpc {
        let port = breakglass_service::grpc::listen(addr, &context.config).await?;
        let service = DestinationTestServer::with_interceptor(
            DestinationTestService::new(context.config.clone()),
            port.auth(),
        );
        let shutdown = context.shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = port.serve(service, shutdown).await {
                tracing::error!(error = %err, "the gRPC API stopped");
            }
        });
    }
    breakglass_uploader::seed_last_success(&context.bus).await;
    let uploader = Uploader::new(
        context.config.clone(),
        breakglass_service::payload_key(&context.settings)?,
    );
    let work = breakglass_bus::worker::run(context.bus.clone(), uploader, context.shutdown.clone());
    context.run_until_stopped(async { Ok(work.await?) }).await
}
