//! What SREs plug into the gRPC ports (issue #15): `grpc.health.v1.Health`
//! (Kubernetes gRPC probes) and server reflection (grpcurl without the
//! `.proto` files), on the scheduler's and the uploader's ports, without a
//! bearer token; the APIs themselves still need one.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::{Isolation, ServiceProcess, database_url, nats_url, write_config};
use futures::StreamExt;
use std::path::Path;
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const TOKEN: &str = "grpc-ops-test-token-0123456789";

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(addr: &str, service: &str) -> Result<ServingStatus, tonic::Code> {
    let mut client = HealthClient::new(channel(addr).await);
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|reply| reply.into_inner().status())
        .map_err(|status| status.code())
}

/// One reflection round trip.
async fn reflect(addr: &str, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let outbound = futures::stream::iter([ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    }]);
    let mut replies = client
        .server_reflection_info(outbound)
        .await
        .unwrap()
        .into_inner();
    replies
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

async fn listed_services(addr: &str) -> Vec<String> {
    match reflect(addr, MessageRequest::ListServices(String::new())).await {
        MessageResponse::ListServicesResponse(list) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a service list: {other:?}"),
    }
}

/// The descriptor of the file that defines `symbol` decodes and names it.
async fn describes(addr: &str, symbol: &str, method: &str) {
    use prost::Message;
    match reflect(addr, MessageRequest::FileContainingSymbol(symbol.into())).await {
        MessageResponse::FileDescriptorResponse(files) => {
            let file =
                prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                    .unwrap();
            let service_name = symbol.rsplit('.').next().unwrap();
            let service = file
                .service
                .iter()
                .find(|s| s.name() == service_name)
                .unwrap_or_else(|| panic!("{symbol} not in {file:?}"));
            assert!(
                service.method.iter().any(|m| m.name() == method),
                "{service:?}"
            );
        }
        other => panic!("no descriptor for {symbol}: {other:?}"),
    }
}

fn entries<'a>(
    iso: &'a Isolation,
    key: &'a str,
    nats: &'a str,
    db: &'a str,
    out: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("nats_url", nats),
        ("bus_prefix", iso.prefix.as_str()),
        ("payload_key", key),
        ("encryption", "none"),
        ("local_dir", out),
        ("database_url", db),
        ("database_schema", iso.schema.as_str()),
        ("grpc_token", TOKEN),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_answer_on_every_grpc_port_without_a_token() {
    let iso = Isolation::new("grpc_ops");
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let (nats, db) = (nats_url(), database_url());
    let out = dir.path().join("out").display().to_string();
    let config = write_config(dir.path(), &entries(&iso, key.expose(), &nats, &db, &out));

    let scheduler_addr = breakglass_e2e::free_loopback_addr();
    let scheduler =
        breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &scheduler_addr).await;
    let uploader_addr = breakglass_e2e::free_loopback_addr();
    let mut uploader = ServiceProcess::start_with_env(
        "uploader",
        &config,
        dir.path(),
        &[("BREAKGLASS_GRPC_ADDR", Path::new(&uploader_addr))],
    )
    .unwrap();
    uploader
        .wait_for_log("gRPC API listening", Duration::from_secs(60))
        .await
        .unwrap();

    // Health: the whole server ("", what a Kubernetes grpc probe asks) and
    // each service by name; an unknown name is NOT_FOUND, not SERVING.
    for (addr, services) in [
        (
            &scheduler_addr,
            &[
                "",
                "breakglass.v1.ConfigService",
                "breakglass.v1.RunHistory",
            ][..],
        ),
        (&uploader_addr, &["", "breakglass.v1.DestinationTest"][..]),
    ] {
        for service in services {
            assert_eq!(
                health(addr, service).await,
                Ok(ServingStatus::Serving),
                "{addr} {service:?}"
            );
        }
        assert_eq!(
            health(addr, "breakglass.v1.NoSuchService").await,
            Err(tonic::Code::NotFound)
        );
    }

    // Reflection: the services are listed and described, as grpcurl needs.
    let listed = listed_services(&scheduler_addr).await;
    for name in [
        "breakglass.v1.ConfigService",
        "breakglass.v1.RunHistory",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(listed.iter().any(|s| s == name), "{name} not in {listed:?}");
    }
    describes(&scheduler_addr, "breakglass.v1.RunHistory", "ListRuns").await;
    describes(&uploader_addr, "breakglass.v1.DestinationTest", "Run").await;
    describes(&uploader_addr, "grpc.health.v1.Health", "Check").await;

    // The APIs themselves still refuse a call without the token.
    let mut runs = breakglass_proto::v1::run_history_client::RunHistoryClient::new(
        channel(&scheduler_addr).await,
    );
    let refused = runs
        .list_runs(breakglass_proto::v1::ListRunsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // On SIGTERM health turns NOT_SERVING or the port closes: never SERVING
    // from a process that is going away.
    drop(scheduler);
    uploader.terminate(Duration::from_secs(30)).unwrap();
    iso.cleanup_bus().await;
}
