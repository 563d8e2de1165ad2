//! The scheduler and live configuration, across processes: two scheduler
//! replicas catch up a missed slot with exactly one run, and a changed
//! config file takes effect without restarting anything.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_bus::Bus;
use breakglass_config::DailyTime;
use breakglass_e2e::{Isolation, ServiceProcess, nats_url, read_stream, write_config};
use breakglass_proto::v1;
use prost::Message;
use std::path::Path;
use std::time::Duration;

async fn connect(iso: &Isolation) -> Bus {
    iso.connect_bus().await
}

fn base_config(
    dir: &Path,
    iso: &Isolation,
    key: &str,
    out: &Path,
    extra: &[(&str, &str)],
) -> std::path::PathBuf {
    let nats = nats_url();
    let out = out.display().to_string();
    let mut entries = vec![
        ("nats_url", nats.as_str()),
        ("bus_prefix", iso.prefix.as_str()),
        ("payload_key", key),
        ("local_dir", out.as_str()),
        ("ack_wait_seconds", "3"),
        ("max_deliver", "3"),
    ];
    if !extra.iter().any(|(key, _)| *key == "encryption") {
        // Tests read the workbook with calamine; the password mode has tests of its own.
        entries.push(("encryption", "none"));
    }
    entries.extend_from_slice(extra);
    write_config(dir, &entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_replicas_catch_up_a_missed_slot_with_one_run() {
    let iso = Isolation::new("catchup");
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    // A slot five minutes ago, with no run since: it was missed.
    let earlier = chrono::Utc::now() - chrono::Duration::minutes(5);
    let execute_time = earlier.format("%H:%M").to_string();
    let slot = breakglass_scheduler::last_slot(
        chrono::Utc::now(),
        DailyTime::parse(&execute_time).unwrap(),
        chrono_tz::UTC,
    );
    let config = base_config(
        dir.path(),
        &iso,
        key.expose(),
        &dir.path().join("out"),
        &[("execute_time", &execute_time), ("time_zone", "UTC")],
    );
    let bus = connect(&iso).await;
    let _workers: Vec<ServiceProcess> = ["collector", "renderer", "uploader"]
        .iter()
        .map(|name| ServiceProcess::start(name, &config, dir.path()).unwrap())
        .collect();
    let mut first = ServiceProcess::start("scheduler", &config, dir.path()).unwrap();
    let mut second = ServiceProcess::start("scheduler", &config, dir.path()).unwrap();

    let finished = bus
        .wait_for_run(&slot.run_id, Duration::from_secs(120))
        .await
        .unwrap();
    let finished = finished.unwrap_or_else(|| {
        panic!(
            "no catch-up run:\n{}\n{}",
            first.log_text(),
            second.log_text()
        )
    });
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}"
    );
    first
        .wait_for_log("catch-up run triggered", Duration::from_secs(10))
        .await
        .unwrap();
    second
        .wait_for_log("catch-up run triggered", Duration::from_secs(10))
        .await
        .unwrap();
    let duplicates = [&first, &second]
        .iter()
        .filter(|s| s.log_text().contains("\"duplicate\":true"))
        .count();
    assert_eq!(duplicates, 1, "one replica's publish was the duplicate");

    // A scheduler starting now sees the success and does not catch up again.
    let mut third = ServiceProcess::start("scheduler", &config, dir.path()).unwrap();
    third
        .wait_for_log("no catch-up", Duration::from_secs(20))
        .await
        .unwrap();
    let messages = read_stream(&iso.prefix).await.unwrap();
    let triggers: Vec<v1::TriggerRequested> = messages
        .iter()
        .filter(|m| m.subject.ends_with(".trigger"))
        .map(|m| v1::TriggerRequested::decode(m.payload.as_slice()).unwrap())
        .collect();
    assert_eq!(triggers.len(), 1, "one trigger for the slot: {triggers:?}");
    assert_eq!(triggers[0].reason, v1::TriggerReason::CatchUp as i32);
    assert_eq!(triggers[0].run_id, slot.run_id);
    bus.close().await;
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_file_takes_effect_without_a_restart() {
    let iso = Isolation::new("live");
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let (first_out, second_out) = (dir.path().join("first"), dir.path().join("second"));
    let config = base_config(dir.path(), &iso, key.expose(), &first_out, &[]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let bus = connect(&iso).await;
    let mut services: Vec<ServiceProcess> = ["collector", "renderer", "uploader"]
        .iter()
        .map(|name| ServiceProcess::start(name, &config, dir.path()).unwrap())
        .collect();
    let trigger = |run_id: &str| v1::TriggerRequested {
        run_id: run_id.into(),
        reason: v1::TriggerReason::OnDemand as i32,
        requested_by: "test".into(),
        requested_at_unix_ms: 0,
        note: String::new(),
    };
    bus.trigger(&trigger("live-1")).await.unwrap();
    let finished = bus
        .wait_for_run("live-1", Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}"
    );
    assert!(first_out.join("breakglass-backup.xlsx").exists());

    // Kubernetes swaps a mounted secret atomically; do the same.
    let staged = dir.path().join("staged");
    std::fs::create_dir_all(&staged).unwrap();
    let next = base_config(&staged, &iso, key.expose(), &second_out, &[]);
    std::fs::rename(&next, &config).unwrap();
    bus.trigger(&trigger("live-2")).await.unwrap();
    let finished = bus
        .wait_for_run("live-2", Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}"
    );
    assert!(
        second_out.join("breakglass-backup.xlsx").exists(),
        "the new local_dir was used without a restart"
    );

    let uploader = services.iter_mut().find(|s| s.name == "uploader").unwrap();
    uploader
        .wait_for_log("readable by group or others", Duration::from_secs(5))
        .await
        .unwrap();
    bus.close().await;
    iso.cleanup_bus().await;
}
