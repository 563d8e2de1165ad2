//! One run is one trace across the four processes, checked on the spans the
//! services really export over OTLP/gRPC to a receiver inside the test
//! ([`TraceReceiver`]).
//!
//! The trigger carries the `traceparent` of a span the test made up, the way
//! the Mavis core would send its own; the run writes to two destinations
//! (S3 on moto, and a local folder that fails the first time), and after the
//! services are stopped with SIGTERM (which flushes their exporters) every
//! span of the run must hang off that one trace, parent links must cross
//! the process boundaries, and no span may carry a password.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use async_nats::HeaderMap;
use breakglass_bus::Bus;
use breakglass_e2e::{
    Isolation, Moto, ReceivedSpan, ServiceProcess, TraceReceiver, database_url, nats_url,
    write_config,
};
use breakglass_proto::v1;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

const CANARY_PASSWORD: &str = "CANARY-trace-pw-9b41d7";
const CANARY_EXTRA: &str = "CANARY-trace-extra-2c8e5f";
const CANARY_PASSPHRASE: &str = "CANARY-trace-passphrase-6a0f3e";

async fn connect(iso: &Isolation) -> Bus {
    iso.connect_bus().await
}

/// Random lower-case hex of `bytes` bytes (never all zero: uuid v4 bits).
fn random_hex(bytes: usize) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..bytes * 2].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_is_one_trace_whose_links_cross_the_processes() {
    let iso = Isolation::new("trace");
    let receiver = TraceReceiver::start().await.unwrap();
    let moto = Moto::start();
    moto.tool(&["create-bucket", "trace-backups"]);
    let dir = tempfile::tempdir().unwrap();

    // Two projects, so two `sheet` spans; canaries in every secret column.
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(
        &inventory,
        format!(
            "Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential\n\
             Vault,AWS,db-1,SSH,203.0.113.5,10.0.0.5,,22,password,root,{CANARY_PASSWORD},,{CANARY_EXTRA}\n\
             Vault,AWS,db-2,SSH,203.0.113.6,10.0.0.6,,22,password,root,{CANARY_PASSWORD},,\n\
             Ops,GCP,jump-1,SSH,203.0.113.7,10.0.0.7,,22,password,admin,{CANARY_PASSWORD},,\n"
        ),
    )
    .unwrap();
    // The local destination fails (transiently: an I/O error) until the
    // test moves this file out of the way: `local_dir` is a file, not a folder.
    let out = dir.path().join("out");
    std::fs::write(&out, b"in the way").unwrap();

    let key = breakglass_bus::payload::PayloadKey::generate();
    let db = database_url();
    let nats = nats_url();
    let inventory_url = inventory.display().to_string();
    let out_dir = out.display().to_string();
    let config = write_config(
        dir.path(),
        &[
            ("nats_url", nats.as_str()),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", key.expose()),
            ("ack_wait_seconds", "3"),
            // These tests exercise retry by redelivery: no retry inside one delivery.
            ("upload_retry_budget_seconds", "0"),
            ("max_deliver", "3"),
            ("inventory_url", inventory_url.as_str()),
            ("encryption", "password"),
            ("encryption_passphrase", CANARY_PASSPHRASE),
            ("database_url", db.as_str()),
            ("database_schema", iso.schema.as_str()),
            ("storage_provider", "local,s3"),
            ("local_dir", out_dir.as_str()),
            ("s3_bucket", "trace-backups"),
            ("s3_url", moto.endpoint.as_str()),
            ("s3_protocol", "http"),
            ("s3_access_key_id", "AKIATESTKEY"),
            ("s3_secret_access_key", "test-secret-access-key"),
        ],
    );
    let endpoint = receiver.endpoint.clone();
    let env: [(&str, &Path); 2] = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", Path::new(&endpoint)),
        // Export every 200 ms rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", Path::new("200")),
    ];
    let bus = connect(&iso).await;
    let mut services: Vec<ServiceProcess> = ["scheduler", "collector", "renderer", "uploader"]
        .iter()
        .map(|name| ServiceProcess::start_with_env(name, &config, dir.path(), &env).unwrap())
        .collect();

    // The trigger, sent as the Mavis core sends it, with the trace context
    // of the test's own (made-up) span.
    let trace_id = random_hex(16);
    let root_span_id = random_hex(8);
    let run_id = format!("trace-{}", iso.prefix);
    let trigger = v1::TriggerRequested {
        run_id: run_id.clone(),
        reason: v1::TriggerReason::OnDemand as i32,
        requested_by: "mavis-core".into(),
        requested_at_unix_ms: 0,
        note: "e2e trace".into(),
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", run_id.as_str());
    headers.insert(
        "traceparent",
        format!("00-{trace_id}-{root_span_id}-01").as_str(),
    );
    bus.jetstream()
        .publish_with_headers(
            bus.subjects().trigger(),
            headers,
            trigger.encode_to_vec().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // The first upload to the local folder fails; then the folder can be made.
    let uploader = services.iter_mut().find(|s| s.name == "uploader").unwrap();
    uploader
        .wait_for_log("retrying with the next delivery", Duration::from_secs(120))
        .await
        .unwrap_or_else(|err| panic!("{err}:\n{}", uploader.log_text()));
    std::fs::remove_file(&out).unwrap();
    std::fs::create_dir(&out).unwrap();

    let finished = bus
        .wait_for_run(&run_id, Duration::from_secs(120))
        .await
        .unwrap();
    let logs: String = services
        .iter()
        .map(|s| format!("--- {}\n{}", s.name, s.log_text()))
        .collect();
    let finished = finished.unwrap_or_else(|| panic!("the run did not finish:\n{logs}"));
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}\n{logs}"
    );
    assert_eq!(finished.destinations.len(), 2, "{finished:?}");

    // The scheduler records run.finished in the run log; give it the event
    // before stopping it, so its span of that event is part of the trace.
    let log = breakglass_runlog::RunLog::connect(&db, &iso.schema)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log
        .get(&run_id)
        .await
        .unwrap()
        .is_none_or(|run| run.finished_at.is_none())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the run log never recorded the run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGTERM: each service flushes its exporter before it exits. The wait
    // blocks, so the receiver's tasks move to another thread meanwhile.
    for service in &mut services {
        let status =
            tokio::task::block_in_place(|| service.terminate(Duration::from_secs(20))).unwrap();
        assert!(status.success(), "{} exited with {status}", service.name);
    }
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans
                .iter()
                .any(|s| s.name == "uploader" && s.trace_id == trace_id)
        })
        .await;
    let dump = || {
        spans
            .iter()
            .map(|s| {
                format!(
                    "{} {} {}<-{} {:?} {:?}\n",
                    s.service, s.trace_id, s.span_id, s.parent_span_id, s.name, s.attributes
                )
            })
            .collect::<String>()
    };

    // Every span the run's processes exported belongs to the test's trace.
    let run: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    assert!(!run.is_empty(), "no span of the run arrived:\n{}", dump());
    for span in &spans {
        if span.attribute("run_id").is_some_and(|id| id == run_id)
            || [
                "breakglass-collector",
                "breakglass-renderer",
                "breakglass-uploader",
            ]
            .contains(&span.service.as_str())
        {
            assert_eq!(
                span.trace_id,
                trace_id,
                "span {:?} of {} is outside the run's trace:\n{}",
                span.name,
                span.service,
                dump()
            );
        }
    }
    let by_id: HashMap<&str, &ReceivedSpan> =
        run.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let service_of_parent = |span: &ReceivedSpan| {
        by_id
            .get(span.parent_span_id.as_str())
            .map(|p| p.service.as_str())
    };
    let stage = |name: &str| -> Vec<&ReceivedSpan> {
        run.iter()
            .copied()
            .filter(|s| s.name == name && s.attribute("run_id") == Some(run_id.as_str()))
            .collect()
    };

    // The collector's stage span is the child of the test's span...
    let collector = stage("collector");
    assert_eq!(collector.len(), 1, "{}", dump());
    assert_eq!(collector[0].service, "breakglass-collector");
    assert_eq!(collector[0].parent_span_id, root_span_id);
    // ...the renderer's of a span of the collector process...
    let renderer = stage("renderer");
    assert_eq!(renderer.len(), 1, "{}", dump());
    assert_eq!(renderer[0].service, "breakglass-renderer");
    assert_eq!(
        service_of_parent(renderer[0]),
        Some("breakglass-collector"),
        "{}",
        dump()
    );
    // ...and each delivery of the uploader's of a span of the renderer's.
    let uploader = stage("uploader");
    assert_eq!(
        uploader.len(),
        2,
        "one failed delivery and its retry:\n{}",
        dump()
    );
    for span in &uploader {
        assert_eq!(span.service, "breakglass-uploader");
        assert_eq!(
            service_of_parent(span),
            Some("breakglass-renderer"),
            "{}",
            dump()
        );
    }
    // The scheduler's run log recorded the run's events inside the trace.
    assert!(
        run.iter().any(|s| s.service == "breakglass-scheduler"
            && s.name == "runlog"
            && service_of_parent(s).is_some_and(|p| p != "breakglass-scheduler")),
        "{}",
        dump()
    );

    // The work inside the stages, each span under its own process's stage.
    let named = |name: &str| -> Vec<&ReceivedSpan> {
        run.iter().copied().filter(|s| s.name == name).collect()
    };
    let under = |span: &ReceivedSpan, stage_span: &[&ReceivedSpan]| {
        // Walk up within the process until a stage span is found.
        let ids: HashSet<&str> = stage_span.iter().map(|s| s.span_id.as_str()).collect();
        let mut current = span;
        for _ in 0..16 {
            if ids.contains(current.span_id.as_str()) {
                return true;
            }
            match by_id.get(current.parent_span_id.as_str()) {
                Some(parent) => current = parent,
                None => return false,
            }
        }
        false
    };
    let inventory_query = named("inventory query");
    assert_eq!(inventory_query.len(), 1, "{}", dump());
    assert!(under(inventory_query[0], &collector), "{}", dump());

    let sheets = named("sheet");
    let projects: HashSet<&str> = sheets
        .iter()
        .filter_map(|s| s.attribute("project"))
        .collect();
    assert_eq!(
        projects,
        HashSet::from(["Vault", "Ops"]),
        "one sheet span per project tab:\n{}",
        dump()
    );
    assert_eq!(sheets.len(), 2, "{}", dump());
    for sheet in &sheets {
        assert!(under(sheet, &renderer), "{}", dump());
        let expected = if sheet.attribute("project") == Some("Vault") {
            "2"
        } else {
            "1"
        };
        assert_eq!(sheet.attribute("rows"), Some(expected), "{sheet:?}");
    }

    let encrypt = named("encrypt");
    assert_eq!(encrypt.len(), 1, "{}", dump());
    assert!(under(encrypt[0], &renderer), "{}", dump());
    assert_eq!(encrypt[0].attribute("encryption"), Some("password"));
    assert!(
        encrypt[0]
            .attribute("bytes")
            .and_then(|b| b.parse::<u64>().ok())
            .is_some_and(|b| b > 0),
        "{:?}",
        encrypt[0]
    );

    // Each destination's upload, on both deliveries.
    let uploads = named("upload");
    for prefix in ["local:", "s3:"] {
        let count = uploads
            .iter()
            .filter(|s| {
                s.attribute("destination")
                    .is_some_and(|d| d.starts_with(prefix))
            })
            .count();
        assert_eq!(count, 2, "{prefix} uploads:\n{}", dump());
    }
    for upload in &uploads {
        assert!(under(upload, &uploader), "{}", dump());
    }
    // The retry: a span inside the failed local upload.
    let retries = named("retry");
    assert_eq!(retries.len(), 1, "{}", dump());
    let failed_upload = by_id
        .get(retries[0].parent_span_id.as_str())
        .unwrap_or_else(|| panic!("the retry span has no parent:\n{}", dump()));
    assert_eq!(failed_upload.name, "upload");
    assert!(
        failed_upload
            .attribute("destination")
            .is_some_and(|d| d.starts_with("local:"))
    );
    assert_eq!(retries[0].attribute("attempt"), Some("1"));

    // No secret in any span or event attribute of any process.
    for span in &spans {
        let values = span
            .attributes
            .iter()
            .chain(span.events.iter().flat_map(|(_, a)| a.iter()))
            .map(|(_, v)| v.as_str())
            .chain(span.events.iter().map(|(name, _)| name.as_str()))
            .chain([span.name.as_str()]);
        for value in values {
            for canary in [
                CANARY_PASSWORD,
                CANARY_EXTRA,
                CANARY_PASSPHRASE,
                "test-secret-access-key",
            ] {
                assert!(
                    !value.contains(canary),
                    "{canary} leaked into span {:?} of {}",
                    span.name,
                    span.service
                );
            }
        }
    }

    bus.close().await;
    iso.cleanup_bus().await;
}
