//! Only the services' own events are believed (DESIGN.md invariant 8).
//!
//! The four services run as processes. Someone who may publish on the
//! stream (but does not hold `payload_key`) sends random bytes, forged
//! events of a valid shape (one pointing at a workbook they stored
//! themselves, with a far-future `collected_at` and a hostile extension),
//! genuine events replayed from an earlier run, and CR/LF run ids, on every
//! subject the services consume. No service dies, no file at the
//! destination changes, each message is dead-lettered with a reason that
//! names what failed, and the next good trigger still runs.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_bus::payload::{PAYLOAD_CHUNK_SIZE, PayloadKey};
use breakglass_bus::{Age, Bus, EventKind, envelope};
use breakglass_e2e::{
    Isolation, ServiceProcess, database_url, nats_url, read_stream, write_config,
};
use breakglass_proto::v1;
use prost::Message;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const INVENTORY: &str = "Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential\n\
Payments,AWS,web-1,SSH,1.2.3.4,,,22,password,root,pw-one,,\n\
Payments,AWS,web-2,SSH,1.2.3.5,,,22,password,root,pw-two,,\n";

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn trigger(run_id: &str) -> v1::TriggerRequested {
    v1::TriggerRequested {
        run_id: run_id.into(),
        reason: v1::TriggerReason::OnDemand as i32,
        requested_by: "mavis-core".into(),
        requested_at_unix_ms: now_ms(),
        note: "bus trust".into(),
    }
}

/// Publishes bytes as anyone with publish rights can: any subject, any
/// message id. Returns JetStream's "duplicate" flag.
async fn publish_raw(bus: &Bus, subject: &str, msg_id: &str, body: Vec<u8>) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    bus.jetstream()
        .publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .unwrap()
        .await
        .unwrap()
        .duplicate
}

fn random_bytes() -> Vec<u8> {
    // Leading 0xff bytes never form a protobuf field key that decodes.
    let mut bytes = vec![0xff; 12];
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// One hostile message and what must become of it.
struct Attack {
    what: &'static str,
    subject: String,
    body: Vec<u8>,
    /// The stage whose dead letter must name the reason.
    stage: &'static str,
    /// Words the dead letter's error must hold.
    reason: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_malformed_events_change_nothing() {
    let iso = Isolation::new("trust");
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(&inventory, INVENTORY).unwrap();
    let out = dir.path().join("out");
    let key = PayloadKey::generate();
    let db = database_url();
    let nats = nats_url();
    let inventory_url = inventory.display().to_string();
    let out_text = out.display().to_string();
    let log_schema = format!("{}_log", iso.schema);
    let config = write_config(
        dir.path(),
        &[
            ("nats_url", nats.as_str()),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", key.expose()),
            ("local_dir", out_text.as_str()),
            ("ack_wait_seconds", "3"),
            ("max_deliver", "3"),
            ("encryption", "none"),
            ("inventory_url", inventory_url.as_str()),
            ("database_url", db.as_str()),
            ("database_schema", log_schema.as_str()),
        ],
    );
    // The attacker: may publish and use the object store, has no payload_key.
    let attacker = iso.connect_bus().await;
    // The test's own view as a service (to check outcomes and to make an
    // authentic but stale event, as a service a day ago would have).
    let service = iso.connect_bus_with(Some(key.clone())).await;
    let mut services: Vec<ServiceProcess> = ["scheduler", "collector", "renderer", "uploader"]
        .iter()
        .map(|name| ServiceProcess::start(name, &config, dir.path()).unwrap())
        .collect();
    let logs = |services: &[ServiceProcess]| -> String {
        services
            .iter()
            .map(|s| format!("--- {}\n{}", s.name, s.log_text()))
            .collect()
    };

    // A good run first: the file that must survive everything below.
    let good = format!("good1-{}", iso.prefix);
    attacker.trigger(&trigger(&good)).await.unwrap();
    let finished = service
        .wait_for_run(&good, Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the first run did not finish\n{}", logs(&services)));
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}"
    );
    let before = tree(&out);
    assert!(!before.is_empty());

    let subjects = attacker.subjects().clone();
    let stored = read_stream(&iso.prefix).await.unwrap();
    let genuine = |subject: &str| {
        stored
            .iter()
            .find(|m| m.subject == subject)
            .unwrap_or_else(|| panic!("no {subject} in the stream"))
            .clone()
    };
    let genuine_snapshot = genuine(&subjects.snapshot_ready());
    let genuine_workbook = genuine(&subjects.workbook_ready());
    let genuine_finished = genuine(&subjects.run_finished(&good));
    let headers_of = |m: &breakglass_e2e::StoredMessage| {
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in &m.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        headers
    };
    let good_workbook: v1::WorkbookReady = service
        .open_event(
            EventKind::WorkbookReady,
            &genuine_workbook.subject,
            Some(&headers_of(&genuine_workbook)),
            &genuine_workbook.payload,
            Age::Any,
        )
        .unwrap()
        .event;

    // The attacker's own workbook in the object store, encrypted to the
    // services' public key (age needs nothing more), with a plausible event.
    let forged_file = dir.path().join("forged.age");
    PayloadKey::parse(&key)
        .unwrap()
        .encrypt_to_file(&forged_file, |out| out.write_all(b"FORGED WORKBOOK"))
        .unwrap();
    let forged_ref = attacker
        .store_payload("forged-w.1.workbook.age", &forged_file)
        .await
        .unwrap();
    let mut forged_workbook = good_workbook.clone();
    forged_workbook.workbook = Some(forged_ref.clone());
    forged_workbook.workbook_size = 15;
    forged_workbook.workbook_sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"FORGED WORKBOOK"))
    };
    forged_workbook.extension = "/../x".into();
    let snapshot = forged_workbook.snapshot.as_mut().unwrap();
    snapshot.collected_at_unix_ms = 32_503_680_000_000; // the year 3000
    snapshot.trigger.as_mut().unwrap().run_id = "forged-w".into();
    let mut forged_newline = forged_workbook.clone();
    forged_newline.extension = ".xlsx\n".into();

    // An authentic event a service made 25 hours ago, for a run whose id
    // the stream has long forgotten.
    let stale = {
        let mut event = good_workbook.clone();
        event
            .snapshot
            .as_mut()
            .unwrap()
            .trigger
            .as_mut()
            .unwrap()
            .run_id = "stale-1".into();
        envelope::seal(
            &envelope::event_key(&key),
            envelope::Mode::Sealed,
            envelope::Binding {
                subject: &subjects.workbook_ready(),
                msg_id: "workbook-stale-1",
                run_id: "stale-1",
            },
            now_ms() - 25 * 3600 * 1000,
            &event.encode_to_vec(),
        )
        .unwrap()
        .encode_to_vec()
    };
    // Authentic envelope, CR/LF inside: the event's own run id.
    let crlf_inside = {
        let mut event = good_workbook.clone();
        event
            .snapshot
            .as_mut()
            .unwrap()
            .trigger
            .as_mut()
            .unwrap()
            .run_id = "crlf\r\nNats-Msg-Id: x".into();
        envelope::seal(
            &envelope::event_key(&key),
            envelope::Mode::Sealed,
            envelope::Binding {
                subject: &subjects.workbook_ready(),
                msg_id: "workbook-crlf-w",
                run_id: "crlf-w",
            },
            now_ms(),
            &event.encode_to_vec(),
        )
        .unwrap()
        .encode_to_vec()
    };
    let bad_envelope = |run_id: &str, mode: v1::EnvelopeMode| {
        v1::Envelope {
            version: 1,
            mode: mode as i32,
            run_id: run_id.into(),
            created_at_unix_ms: now_ms(),
            nonce: vec![7; 12],
            body: random_bytes(),
            tag: if mode == v1::EnvelopeMode::Authenticated {
                vec![9; 16]
            } else {
                Vec::new()
            },
        }
        .encode_to_vec()
    };
    let forged_finished = v1::RunFinished {
        run_id: "forged-f".into(),
        status: v1::RunStatus::Succeeded as i32,
        finished_at_unix_ms: 32_503_680_000_000,
        ..Default::default()
    };
    // A dead letter that would mark the good run failed in the run log.
    let forged_dead = v1::DeadLetter {
        stage: "collector".into(),
        original_subject: subjects.trigger(),
        original_payload: Vec::new(),
        error: "FORGED: the inventory is gone".into(),
        deliveries: 1,
        run_id: good.clone(),
    };
    let forged_dead_envelope = envelope::seal(
        &envelope::event_key(&PayloadKey::generate()),
        envelope::Mode::Authenticated,
        envelope::Binding {
            subject: &subjects.dead_letter("collector"),
            msg_id: "dead-collector-999001",
            run_id: &good,
        },
        now_ms(),
        &forged_dead.encode_to_vec(),
    )
    .unwrap()
    .encode_to_vec();
    // Dead letters made with the services' own key, then misused: moved to
    // another stage's subject, naming another stage than their subject, or
    // under a message id that is not a stream sequence.
    let genuine_dead = |subject: &str, msg_id: &str, stage: &str| {
        envelope::seal(
            &envelope::event_key(&key),
            envelope::Mode::Authenticated,
            envelope::Binding {
                subject,
                msg_id,
                run_id: &good,
            },
            now_ms(),
            &v1::DeadLetter {
                stage: stage.into(),
                run_id: good.clone(),
                ..forged_dead.clone()
            }
            .encode_to_vec(),
        )
        .unwrap()
        .encode_to_vec()
    };
    let moved_dead = genuine_dead(
        &subjects.dead_letter("collector"),
        "dead-collector-424242",
        "collector",
    );
    let other_stage_dead = genuine_dead(
        &subjects.dead_letter("collector"),
        "dead-collector-424243",
        "renderer",
    );
    let bad_id_dead = genuine_dead(
        &subjects.dead_letter("collector"),
        "dead-collector-x",
        "collector",
    );
    let crlf_trigger = v1::TriggerRequested {
        run_id: "x\r\nNats-Msg-Id: y".into(),
        ..trigger("unused")
    };

    let attacks: Vec<(Attack, &str)> = vec![
        (
            Attack {
                what: "random bytes as a trigger",
                subject: subjects.trigger(),
                body: random_bytes(),
                stage: "collector",
                reason: "not a valid TriggerRequested",
            },
            "rand-trigger",
        ),
        (
            Attack {
                what: "random bytes as snapshot.ready",
                subject: subjects.snapshot_ready(),
                body: random_bytes(),
                stage: "renderer",
                reason: "not an event envelope",
            },
            "snapshot-rand",
        ),
        (
            Attack {
                what: "random bytes as workbook.ready",
                subject: subjects.workbook_ready(),
                body: random_bytes(),
                stage: "uploader",
                reason: "not an event envelope",
            },
            "workbook-rand",
        ),
        (
            Attack {
                what: "random bytes as run.finished",
                subject: subjects.run_finished("rand-f"),
                body: random_bytes(),
                stage: "runlog",
                reason: "not an event envelope",
            },
            "finished-rand-f",
        ),
        (
            Attack {
                what: "a forged plain snapshot.ready",
                subject: subjects.snapshot_ready(),
                body: good_workbook.snapshot.clone().unwrap().encode_to_vec(),
                stage: "renderer",
                reason: "not an event envelope",
            },
            "snapshot-forged-s",
        ),
        (
            Attack {
                what: "a forged plain workbook.ready (own workbook, year 3000, /../x)",
                subject: subjects.workbook_ready(),
                body: forged_workbook.encode_to_vec(),
                stage: "uploader",
                reason: "not an event envelope",
            },
            "workbook-forged-w",
        ),
        (
            Attack {
                what: "a forged plain workbook.ready (extension with LF)",
                subject: subjects.workbook_ready(),
                body: forged_newline.encode_to_vec(),
                stage: "uploader",
                reason: "not an event envelope",
            },
            "workbook-forged-w2",
        ),
        (
            Attack {
                what: "a forged envelope on workbook.ready",
                subject: subjects.workbook_ready(),
                body: bad_envelope("forged-e", v1::EnvelopeMode::Sealed),
                stage: "uploader",
                reason: "does not open",
            },
            "workbook-forged-e",
        ),
        (
            Attack {
                what: "a forged plain run.finished",
                subject: subjects.run_finished("forged-f"),
                body: forged_finished.encode_to_vec(),
                stage: "runlog",
                reason: "not an event envelope",
            },
            "finished-forged-f",
        ),
        (
            Attack {
                what: "a forged authenticated run.finished",
                subject: subjects.run_finished("forged-g"),
                body: bad_envelope("forged-g", v1::EnvelopeMode::Authenticated),
                stage: "runlog",
                reason: "does not open",
            },
            "finished-forged-g",
        ),
        (
            Attack {
                what: "the earlier run's workbook.ready under a new message id",
                subject: subjects.workbook_ready(),
                body: genuine_workbook.payload.clone(),
                stage: "uploader",
                reason: "Nats-Msg-Id",
            },
            "workbook-replayed",
        ),
        (
            Attack {
                what: "the earlier run's snapshot.ready on workbook.ready",
                subject: subjects.workbook_ready(),
                body: genuine_snapshot.payload.clone(),
                stage: "uploader",
                reason: "Nats-Msg-Id",
            },
            "workbook-moved",
        ),
        (
            Attack {
                what: "the earlier run's snapshot.ready under a new message id",
                subject: subjects.snapshot_ready(),
                body: genuine_snapshot.payload.clone(),
                stage: "renderer",
                reason: "Nats-Msg-Id",
            },
            "snapshot-replayed",
        ),
        (
            Attack {
                what: "the earlier run's run.finished on another run",
                subject: subjects.run_finished("other-run"),
                body: genuine_finished.payload.clone(),
                stage: "runlog",
                reason: "belongs on",
            },
            "finished-other-run",
        ),
        (
            Attack {
                what: "an authentic workbook.ready made 25 hours ago",
                subject: subjects.workbook_ready(),
                body: stale,
                stage: "uploader",
                reason: "stale event",
            },
            "workbook-stale-1",
        ),
        (
            Attack {
                what: "a trigger with a CR/LF run id",
                subject: subjects.trigger(),
                body: crlf_trigger.encode_to_vec(),
                stage: "collector",
                reason: "run_id",
            },
            "crlf-trigger",
        ),
        (
            Attack {
                what: "an envelope with a CR/LF run id on snapshot.ready",
                subject: subjects.snapshot_ready(),
                body: bad_envelope("a\r\nb", v1::EnvelopeMode::Sealed),
                stage: "renderer",
                reason: "envelope.run_id",
            },
            "snapshot-crlf",
        ),
        (
            Attack {
                what: "an authentic workbook.ready whose run id holds CR/LF",
                subject: subjects.workbook_ready(),
                body: crlf_inside,
                stage: "uploader",
                reason: "snapshot.trigger.run_id",
            },
            "workbook-crlf-w",
        ),
        (
            Attack {
                what: "an envelope with a CR/LF run id on run.finished",
                subject: subjects.run_finished("crlf-f"),
                body: bad_envelope("a\r\nb", v1::EnvelopeMode::Authenticated),
                stage: "runlog",
                reason: "envelope.run_id",
            },
            "finished-crlf-f",
        ),
        (
            Attack {
                what: "a trigger naming the good run under another message id",
                subject: subjects.trigger(),
                body: trigger(&good).encode_to_vec(),
                stage: "collector",
                reason: "Nats-Msg-Id",
            },
            "not-the-good-run-id",
        ),
        (
            Attack {
                what: "a forged plain dead letter naming the good run",
                subject: subjects.dead_letter("collector"),
                body: forged_dead.encode_to_vec(),
                stage: "runlog",
                reason: "not an event envelope",
            },
            "dead-collector-999000",
        ),
        (
            Attack {
                what: "a genuine dead letter moved to another stage's subject",
                subject: subjects.dead_letter("renderer"),
                body: moved_dead,
                stage: "runlog",
                reason: "does not open",
            },
            "dead-renderer-424242",
        ),
        (
            Attack {
                what: "a genuine dead letter naming another stage than its subject",
                subject: subjects.dead_letter("collector"),
                body: other_stage_dead,
                stage: "runlog",
                reason: "another stage or run",
            },
            "dead-collector-424243",
        ),
        (
            Attack {
                what: "a genuine dead letter under a message id that is no stream sequence",
                subject: subjects.dead_letter("collector"),
                body: bad_id_dead,
                stage: "runlog",
                reason: "Nats-Msg-Id",
            },
            "dead-collector-x",
        ),
        (
            Attack {
                what: "a dead letter authenticated under another key",
                subject: subjects.dead_letter("collector"),
                body: forged_dead_envelope,
                stage: "runlog",
                reason: "does not open",
            },
            "dead-collector-999001",
        ),
    ];

    // A genuine event replayed unchanged is not even stored: the stream
    // remembers its message id.
    for genuine in [&genuine_snapshot, &genuine_workbook, &genuine_finished] {
        let msg_id = genuine
            .headers
            .iter()
            .find(|(k, _)| k == "Nats-Msg-Id")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(
            publish_raw(
                &attacker,
                &genuine.subject,
                &msg_id,
                genuine.payload.clone()
            )
            .await,
            "a replay of {} within the duplicate window is dropped",
            genuine.subject
        );
    }
    for (attack, msg_id) in &attacks {
        assert!(
            !publish_raw(&attacker, &attack.subject, msg_id, attack.body.clone()).await,
            "{} was stored",
            attack.what
        );
    }

    // Every attack ends as a dead letter naming what failed.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<String>;
    loop {
        // The services' own dead letters are authenticated: the test reads
        // them as a service does, so a forged one would not count.
        let letters: Vec<v1::DeadLetter> = read_stream(&iso.prefix)
            .await
            .unwrap()
            .iter()
            .filter(|m| m.subject.starts_with(&subjects.dead_letter("")))
            .filter_map(|m| {
                service
                    .open_dead_letter(&m.subject, Some(&headers_of(m)), &m.payload)
                    .ok()
            })
            .collect();
        missing = attacks
            .iter()
            .filter_map(|(attack, _)| {
                let letter = letters.iter().find(|l| {
                    l.stage == attack.stage
                        && l.original_subject == attack.subject
                        && l.original_payload == attack.body
                });
                match letter {
                    Some(l) if l.error.contains(attack.reason) => {
                        assert_eq!(l.deliveries, 1, "{}: dead-lettered at once", attack.what);
                        assert!(
                            !l.error.contains('\n') && !l.error.contains('\r'),
                            "{}: {:?}",
                            attack.what,
                            l.error
                        );
                        None
                    }
                    Some(l) => Some(format!(
                        "{}: dead letter says {:?}, expected it to name {:?}",
                        attack.what, l.error, attack.reason
                    )),
                    None => Some(format!(
                        "{}: no dead letter from {}",
                        attack.what, attack.stage
                    )),
                }
            })
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        missing.is_empty(),
        "{}\n{}",
        missing.join("\n"),
        logs(&services)
    );

    for service in services.iter_mut() {
        assert!(
            service.is_running(),
            "{} exited\n{}",
            service.name,
            service.log_text()
        );
        assert!(
            !service.log_text().contains("panicked"),
            "{} panicked\n{}",
            service.name,
            service.log_text()
        );
    }
    assert!(
        tree(&out) == before,
        "the destination changed: {:?} versus {:?}",
        tree(&out).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    let runs: Vec<String> = service
        .recent_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(
        runs.as_slice(),
        std::slice::from_ref(&good),
        "no other run reported an outcome"
    );

    // The run log believed none of it: the good run has no dead letter.
    let log = breakglass_runlog::RunLog::connect(&db, &log_schema)
        .await
        .unwrap();
    let recorded = log.events_after(&good, 0).await.unwrap();
    assert!(
        recorded.iter().any(|e| e.stage == "finished"),
        "the good run is in the log: {recorded:?}"
    );
    assert!(
        !recorded.iter().any(|e| e.stage.starts_with("dead_letter")),
        "a forged dead letter was recorded: {recorded:?}"
    );
    assert_eq!(log.get(&good).await.unwrap().unwrap().status, "succeeded");

    // The next good trigger still runs.
    let next = format!("good2-{}", iso.prefix);
    attacker.trigger(&trigger(&next)).await.unwrap();
    let finished = service
        .wait_for_run(&next, Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the next run did not finish\n{}", logs(&services)));
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}\n{}",
        logs(&services)
    );
    for service in services.iter_mut() {
        assert!(service.is_running(), "{} exited", service.name);
    }

    attacker.close().await;
    service.close().await;
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_finished_is_readable_without_the_key_but_only_believed_with_it() {
    let iso = Isolation::new("trustrf");
    let key = PayloadKey::generate();
    let service = iso.connect_bus_with(Some(key.clone())).await;
    let core = iso.connect_bus().await;
    let run = breakglass_core::RunId::parse("rf-1").unwrap();
    let finished = v1::RunFinished {
        run_id: "rf-1".into(),
        status: v1::RunStatus::Succeeded as i32,
        finished_at_unix_ms: now_ms(),
        trigger: Some(trigger("rf-1")),
        ..Default::default()
    };
    service
        .publish_event(EventKind::RunFinished, &run, &finished)
        .await
        .unwrap();
    // The Mavis core (no payload_key) reads the outcome.
    let read = core
        .wait_for_run("rf-1", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.status, v1::RunStatus::Succeeded as i32);
    // A forgery on another run's subject: a keyless reader cannot tell, a
    // service (with the key) ignores it and keeps waiting.
    let forged = envelope::seal(
        &envelope::event_key(&PayloadKey::generate()),
        envelope::Mode::Authenticated,
        envelope::Binding {
            subject: &service.subjects().run_finished("rf-2"),
            msg_id: "finished-rf-2",
            run_id: "rf-2",
        },
        now_ms(),
        &v1::RunFinished {
            run_id: "rf-2".into(),
            ..finished.clone()
        }
        .encode_to_vec(),
    )
    .unwrap();
    publish_raw(
        &core,
        &service.subjects().run_finished("rf-2"),
        "finished-rf-2",
        forged.encode_to_vec(),
    )
    .await;
    assert!(
        service
            .wait_for_run("rf-2", Duration::from_secs(2))
            .await
            .unwrap()
            .is_none(),
        "a service does not believe a forged outcome"
    );
    let runs = service.recent_runs().await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    // The sealed events are not readable without the key at all.
    let sealed = service
        .publish_event(
            EventKind::SnapshotReady,
            &run,
            &v1::SnapshotReady::default(),
        )
        .await;
    assert!(sealed.is_ok());
    let stream = read_stream(&iso.prefix).await.unwrap();
    let snapshot = stream
        .iter()
        .find(|m| m.subject == service.subjects().snapshot_ready())
        .unwrap();
    let parsed = envelope::parse(&snapshot.payload).unwrap();
    assert!(envelope::read_unverified(&parsed).is_err());
    service.close().await;
    core.close().await;
    iso.cleanup_bus().await;
}

/// A payload is read back exactly when it matches its reference, chunk by
/// chunk, and refused otherwise: a reference promising fewer bytes than
/// the object holds stops the download as soon as it is exceeded (a
/// bogus object cannot fill the reader's disk), a wrong hash is refused,
/// and a name that is not there fails plainly.
#[tokio::test]
async fn a_payload_is_fetched_exactly_or_refused_as_soon_as_it_overruns_its_reference() {
    let iso = breakglass_e2e::Isolation::new("payloadfetch");
    let bus = iso.connect_bus().await;
    let dir = tempfile::tempdir().unwrap();
    // Five and a half chunks of non-repeating bytes.
    let body = pseudo_random(PAYLOAD_CHUNK_SIZE * 11 / 2);
    let source = dir.path().join("payload.age");
    std::fs::write(&source, &body).unwrap();
    let reference = bus
        .store_payload("fetch-test.1.workbook.age", &source)
        .await
        .unwrap();
    assert_eq!(reference.size, body.len() as u64);

    let exact = dir.path().join("exact");
    bus.fetch_payload(&reference, &exact).await.unwrap();
    assert!(
        std::fs::read(&exact).unwrap() == body,
        "the bytes read back are the bytes stored"
    );

    let short = v1::PayloadRef {
        size: 100_000,
        ..reference.clone()
    };
    let overrun = dir.path().join("overrun");
    let err = bus
        .fetch_payload(&short, &overrun)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than the expected 100000 bytes"), "{err}");
    let written = std::fs::metadata(&overrun).map(|m| m.len()).unwrap_or(0);
    assert!(
        written <= 100_000,
        "stopped before writing past the reference: {written}"
    );

    let forged = v1::PayloadRef {
        sha256: "0".repeat(64),
        ..reference.clone()
    };
    let err = bus
        .fetch_payload(&forged, &dir.path().join("forged"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("integrity check failed"), "{err}");

    let missing = v1::PayloadRef {
        name: "no-such.1.workbook.age".into(),
        ..reference
    };
    let err = bus
        .fetch_payload(&missing, &dir.path().join("missing"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such.1.workbook.age") && err.contains("cannot fetch"),
        "{err}"
    );
    bus.close().await;
    iso.cleanup_bus().await;
}

/// Non-repeating bytes (no two chunks alike).
fn pseudo_random(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// The plaintext of a stored payload, read while it is fetched.
async fn read_back(bus: &Bus, key: &PayloadKey, reference: &v1::PayloadRef) -> Vec<u8> {
    let key = key.clone();
    bus.read_payload(reference, move |payload| {
        use std::io::Read;
        let mut plain = Vec::new();
        key.decrypt(payload)?.read_to_end(&mut plain)?;
        Ok::<_, std::io::Error>(plain)
    })
    .await
    .unwrap()
    .unwrap()
}

/// A payload is stored while it is written (the snapshot and the workbook
/// never touch the disk on their way into the object store), and only
/// whole: a writer that fails or panics midway leaves no object under the
/// name, whatever chunks it sent, and says why. Read back while it is
/// fetched, the consumer gets the exact bytes; when the stored object does
/// not match its reference, the consumer's read fails (it never sees a
/// clean end it could mistake for the whole payload) and the fetch's
/// integrity error is what the caller gets.
#[tokio::test]
async fn a_streamed_payload_is_stored_only_whole_and_read_to_its_end_only_when_verified() {
    use std::io::Read;
    let iso = breakglass_e2e::Isolation::new("payloadstream");
    let bus = iso.connect_bus().await;
    let key = PayloadKey::parse(&PayloadKey::generate()).unwrap();
    let body = pseudo_random(PAYLOAD_CHUNK_SIZE * 5 + 12_345);

    let written = body.clone();
    let (reference, returned) = bus
        .store_payload_with("stream-test.1.snapshot.age", &key, move |out| {
            for piece in written.chunks(10_000) {
                out.write_all(piece)?;
            }
            Ok(42)
        })
        .await
        .unwrap();
    assert_eq!(returned, 42, "the writer's value comes back");
    assert!(
        reference.size > body.len() as u64,
        "stored encrypted: {} bytes for {} of plaintext",
        reference.size,
        body.len()
    );
    assert!(
        read_back(&bus, &key, &reference).await == body,
        "the bytes read back are the bytes written"
    );
    let store = bus.payload_store().await.unwrap();
    let stored = store.info("stream-test.1.snapshot.age").await.unwrap();
    assert_eq!(stored.size, reference.size as usize);
    assert!(
        stored.chunks > 1,
        "stored in chunks as it was written: {}",
        stored.chunks
    );

    // A writer failing after three chunks, and one panicking.
    let failing = body.clone();
    let err = bus
        .store_payload_with("stream-test.2.snapshot.age", &key, move |out| {
            out.write_all(&failing[..PAYLOAD_CHUNK_SIZE * 3])?;
            Err::<(), _>(std::io::Error::other("the inventory went away"))
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("stream-test.2.snapshot.age") && err.contains("the inventory went away"),
        "{err}"
    );
    let panicking = body.clone();
    let err = bus
        .store_payload_with("stream-test.3.snapshot.age", &key, move |out| {
            out.write_all(&panicking[..PAYLOAD_CHUNK_SIZE * 2])?;
            if panicking.len() > 1 {
                panic!("render bug");
            }
            Ok(())
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("stream-test.3.snapshot.age"), "{err}");
    for name in ["stream-test.2.snapshot.age", "stream-test.3.snapshot.age"] {
        assert!(
            store.info(name).await.is_err(),
            "{name}: a payload whose writer did not finish must not be stored"
        );
    }

    // The stored object against references it does not match.
    for forged in [
        v1::PayloadRef {
            sha256: "0".repeat(64),
            ..reference.clone()
        },
        v1::PayloadRef {
            size: reference.size - 1,
            ..reference.clone()
        },
    ] {
        let consumer_saw = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = consumer_saw.clone();
        let err = bus
            .read_payload(&forged, move |mut payload| {
                let mut raw = Vec::new();
                let outcome = payload.read_to_end(&mut raw).map(|_| raw.len());
                *seen.lock().unwrap() = Some(outcome.map_err(|err| err.to_string()));
            })
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("integrity check failed"), "{err}");
        let outcome = consumer_saw.lock().unwrap().take().unwrap();
        assert!(
            outcome.is_err(),
            "the consumer must not read a clean end of an unverified payload: {outcome:?}"
        );
    }

    // A forged object that does not even decrypt: the consumer gives up at
    // its first bytes, and still the verdict is the fetch's (a mismatch
    // with the sealed reference, retried and flagged as such), not the
    // consumer's "cannot decrypt", which would pass for a key problem.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, pseudo_random(PAYLOAD_CHUNK_SIZE * 3)).unwrap();
    let stored_garbage = bus
        .store_payload("stream-test.4.snapshot.age", &garbage)
        .await
        .unwrap();
    let claimed = v1::PayloadRef {
        sha256: reference.sha256.clone(),
        ..stored_garbage
    };
    let reader_key = key.clone();
    let err = bus
        .read_payload(&claimed, move |payload| {
            reader_key.decrypt(payload).map(|_| ())
        })
        .await
        .map(|consumed| format!("{consumed:?}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("integrity check failed"), "{err}");
    bus.close().await;
    iso.cleanup_bus().await;
}

/// Starts storing a snapshot run named `name` while the test's own
/// server is frozen (SIGSTOP), as the collector does
/// (`start_snapshot_run_blocking`, `fill` writing it); the server runs
/// again before this returns. `None` when writing the run did not return
/// within 20 s, that is, it waited for the frozen server; an `Err` inside
/// when the writing thread panicked.
#[allow(clippy::type_complexity)]
async fn start_run_while_frozen<T: Send + 'static>(
    nats: &breakglass_e2e::PrivateNats,
    bus: &Bus,
    key: &PayloadKey,
    name: &'static str,
    fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<T> + Send + 'static,
) -> Option<
    Result<
        Result<(breakglass_bus::payload::PendingPayload, T), breakglass_bus::BusError>,
        tokio::task::JoinError,
    >,
> {
    let (writer, key) = (bus.clone(), key.clone());
    let runtime = tokio::runtime::Handle::current();
    nats.pause();
    let started = tokio::task::spawn_blocking(move || {
        writer.start_snapshot_run_blocking(&runtime, name, &key, fill)
    });
    let outcome = tokio::time::timeout(Duration::from_secs(20), started).await;
    nats.resume();
    outcome.ok()
}

/// The collector hands a sorted run over and reads on while the server
/// still acknowledges the previous run's chunks one by one (issue 13):
/// with the server frozen (SIGSTOP), a run of several chunks is written
/// whole and handed over; its reference comes once the server runs again,
/// and the run reads back exactly. (A blocking store would wait for the
/// server here.)
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_run_is_handed_over_without_waiting_for_the_servers_acks() {
    use breakglass_bus::payload::RUN_CHUNK_SIZE;
    let nats = breakglass_e2e::PrivateNats::start();
    let iso = Isolation::new("runahead");
    let bus = iso.connect_bus_at(&nats.url, 5, 1).await;
    let key = PayloadKey::parse(&PayloadKey::generate()).unwrap();
    let body = pseudo_random(RUN_CHUNK_SIZE * 6 + 555);
    let written = body.clone();
    let (pending, ()) =
        start_run_while_frozen(&nats, &bus, &key, "ahead.1.snapshot.age", move |out| {
            out.write_all(&written)
        })
        .await
        .expect("the run is handed over while the server is frozen")
        .unwrap()
        .unwrap();
    let reference = pending.finish().await.unwrap();
    let stored = bus.payload_store().await.unwrap();
    let info = stored.info("ahead.1.snapshot.age").await.unwrap();
    assert_eq!(
        reference.size as usize, info.size,
        "the reference measures the stored object"
    );
    assert_eq!(read_back(&bus, &key, &reference).await, body);
}

/// A run whose writer fails is given up at once, not after the server has
/// taken the chunks already queued (up to `RUN_AHEAD_BYTES`): with the
/// server frozen, the writer's own error comes back, and once the server
/// runs again nothing is stored under the name.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_is_given_up_without_waiting_for_the_server() {
    use breakglass_bus::payload::RUN_CHUNK_SIZE;
    let nats = breakglass_e2e::PrivateNats::start();
    let iso = Isolation::new("runfails");
    let bus = iso.connect_bus_at(&nats.url, 5, 1).await;
    let key = PayloadKey::parse(&PayloadKey::generate()).unwrap();
    let body = pseudo_random(RUN_CHUNK_SIZE * 3);
    let err = start_run_while_frozen(&nats, &bus, &key, "fails.1.snapshot.age", move |out| {
        out.write_all(&body)?;
        Err::<(), _>(std::io::Error::other("the inventory went away"))
    })
    .await
    .expect("the failed run is given up while the server is frozen")
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("fails.1.snapshot.age") && err.contains("the inventory went away"),
        "{err}"
    );
    let store = bus.payload_store().await.unwrap();
    assert!(
        store.info("fails.1.snapshot.age").await.is_err(),
        "a run whose writer failed must not be stored"
    );
}

/// A run whose writer panics is given up as one that fails: the put is
/// stopped, and the chunks still queued in the pipe are never published.
/// With the server frozen the put cannot get going; the writer queues
/// three chunks (age holds back its last 64 KiB block until it is
/// finished, which a panicking writer never is) and panics. Once the
/// server runs again, at most one chunk (one already on the wire) reaches
/// the bucket, and no object is stored under the name. (A put left
/// running publishes the queued chunks after the panic, then fails on the
/// cut pipe.)
#[tokio::test(flavor = "multi_thread")]
async fn a_run_whose_writer_panics_is_given_up_without_publishing_its_queue() {
    use breakglass_bus::payload::RUN_CHUNK_SIZE;
    let nats = breakglass_e2e::PrivateNats::start();
    let iso = Isolation::new("runpanics");
    let bus = iso.connect_bus_at(&nats.url, 5, 1).await;
    let key = PayloadKey::parse(&PayloadKey::generate()).unwrap();
    bus.payload_store().await.unwrap();
    let stream_name = format!("OBJ_{}", bus.subjects().payload_bucket());
    let chunks_stored = || async {
        let mut stream = bus.jetstream().get_stream(&stream_name).await.unwrap();
        stream.info().await.unwrap().state.messages
    };
    let before = chunks_stored().await;
    let body = pseudo_random(RUN_CHUNK_SIZE * 4);
    let joined = start_run_while_frozen(&nats, &bus, &key, "panics.1.snapshot.age", move |out| {
        out.write_all(&body)?;
        out.flush()?;
        if !body.is_empty() {
            panic!("render bug");
        }
        Ok(())
    })
    .await
    .expect("a panicking writer returns while the server is frozen");
    assert!(joined.unwrap_err().is_panic(), "the writer's panic unwinds");
    // A put left running publishes a chunk per ack: on loopback, all
    // three are in long before this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published = chunks_stored().await - before;
    assert!(
        published <= 1,
        "{published} chunks of a panicked run were published after it was given up"
    );
    let store = bus.payload_store().await.unwrap();
    assert!(
        store.info("panics.1.snapshot.age").await.is_err(),
        "a run whose writer panicked must not be stored"
    );
}

/// A snapshot's runs are fetched all at once, each into its own reader,
/// so the renderer can merge them while they arrive: read a few bytes at a
/// time from each in turn (as a merge does), every reader gets exactly its
/// run. Runs are stored in chunks of `RUN_CHUNK_SIZE` (the renderer holds
/// a few chunks of every run). One run that does not match its reference
/// fails the whole read with that run's integrity error, by name, though
/// the consumer gave up at that run's first bytes (a forged run does not
/// decrypt) and every other run was whole: no render is ever made of the
/// other runs alone.
#[tokio::test]
async fn a_snapshots_runs_are_read_at_once_and_one_forged_run_fails_the_whole_read() {
    use breakglass_bus::payload::RUN_CHUNK_SIZE;
    use std::io::Read;
    let iso = breakglass_e2e::Isolation::new("payloadruns");
    let bus = iso.connect_bus().await;
    let key = PayloadKey::parse(&PayloadKey::generate()).unwrap();
    let bodies: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let mut body = pseudo_random(RUN_CHUNK_SIZE * (2 + i) + 777 * i);
            body.rotate_left(101 * i);
            body
        })
        .collect();
    let mut references = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let written = body.clone();
        let name = format!("runs-test.{i}.snapshot.age");
        let (reference, ()) = bus
            .store_snapshot_run_with(&name, &key, move |out| out.write_all(&written))
            .await
            .unwrap();
        let stored = bus
            .payload_store()
            .await
            .unwrap()
            .info(&name)
            .await
            .unwrap();
        assert_eq!(
            stored.chunks,
            (reference.size as usize).div_ceil(RUN_CHUNK_SIZE),
            "stored in chunks of RUN_CHUNK_SIZE"
        );
        references.push(reference);
    }

    let reader_key = key.clone();
    let read = bus
        .read_payloads(&references, move |readers| {
            let mut runs: Vec<_> = readers
                .into_iter()
                .map(|reader| reader_key.decrypt(reader).map(|r| (r, Vec::new(), false)))
                .collect::<std::io::Result<_>>()?;
            // Round robin, 4 KiB at a time: no run can be read whole
            // before the others start.
            while runs.iter().any(|(_, _, ended)| !ended) {
                for (reader, bytes, ended) in runs.iter_mut().filter(|run| !run.2) {
                    let mut piece = [0u8; 4096];
                    let n = reader.read(&mut piece)?;
                    bytes.extend_from_slice(&piece[..n]);
                    *ended = n == 0;
                }
            }
            Ok::<_, std::io::Error>(
                runs.into_iter()
                    .map(|(_, bytes, _)| bytes)
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap()
        .unwrap();
    assert!(read == bodies, "every reader got exactly its run");

    // Run 1 replaced by an object that is not what its reference names.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, pseudo_random(RUN_CHUNK_SIZE * 2)).unwrap();
    let stored_garbage = bus
        .store_payload("runs-test.forged.snapshot.age", &garbage)
        .await
        .unwrap();
    let mut forged = references.clone();
    forged[1] = v1::PayloadRef {
        sha256: references[1].sha256.clone(),
        ..stored_garbage
    };
    let reader_key = key.clone();
    let err = bus
        .read_payloads(&forged, move |readers| {
            for reader in readers {
                let mut plain = Vec::new();
                reader_key.decrypt(reader)?.read_to_end(&mut plain)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map(|consumed| format!("{consumed:?}"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("runs-test.forged.snapshot.age") && err.contains("integrity check failed"),
        "{err}"
    );
    // Nor does a consumer that panics on the forged bytes hide why.
    let reader_key = key.clone();
    let err = bus
        .read_payloads(&forged, move |readers| {
            for reader in readers {
                reader_key.decrypt(reader).expect("a run that decrypts");
            }
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("runs-test.forged.snapshot.age") && err.contains("integrity check failed"),
        "{err}"
    );
    bus.close().await;
    iso.cleanup_bus().await;
}

/// A NATS shared with other applications may run with a message limit
/// below the default 1 MiB: payloads are then stored in smaller chunks (half
/// the limit), not refused by the server.
#[tokio::test]
async fn payloads_fit_a_server_with_a_lower_message_limit() {
    let nats = breakglass_e2e::PrivateNats::start_with_config("max_payload: 200KB\n");
    let iso = breakglass_e2e::Isolation::new("smallmsg");
    let bus = iso.connect_bus_at(&nats.url, 5, 1).await;
    let key = PayloadKey::parse(&PayloadKey::generate()).unwrap();
    let body = pseudo_random(1_500_000);
    let written = body.clone();
    let (reference, ()) = bus
        .store_payload_with("small-msg.1.workbook.age", &key, move |out| {
            out.write_all(&written)
        })
        .await
        .unwrap();
    let store = bus.payload_store().await.unwrap();
    let info = store.info("small-msg.1.workbook.age").await.unwrap();
    assert!(
        info.chunks >= 15,
        "chunks of at most 100 KB: {} for {} bytes",
        info.chunks,
        info.size
    );
    assert!(
        read_back(&bus, &key, &reference).await == body,
        "the bytes read back are the bytes written"
    );
    bus.close().await;
}
