//! The fault matrix (issue 16; `docs/FAULTS.md` maps each scenario to its
//! test): services killed mid-run, NATS restarted, the run log's PostgreSQL
//! down, storage outages, duplicate and parallel triggers, SIGTERM with
//! NATS gone, the text of a destination failure, and one trace per run.
//!
//! Every scenario checks what an SRE would: the run ends (succeeded, or
//! failed with a reason naming the stage and destination); the previous
//! verified copy stays intact until a newer one is verified; no plaintext
//! workbook, snapshot or password is left in the services' temp folders
//! (each child gets a test-owned `TMPDIR`, scanned for canary passwords);
//! the services recover without a manual restart; metrics and the run log
//! record what happened. `ack_wait_seconds: 3` keeps the matrix short.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_bus::Bus;
use breakglass_e2e::{
    Azurite, Isolation, Moto, NatsCluster, OutageProxy, PrivateNats, PrivatePostgres,
    ServiceProcess, TraceReceiver, bin, free_port, nats_url, read_stream, write_config,
};
use breakglass_proto::v1;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every password and extra credential of the test inventories starts so.
const CANARY: &str = "CANARY-faults-";
const PASSPHRASE: &str = "CANARY-faults-passphrase-5d1e";
const SERVICES: [&str; 3] = ["collector", "renderer", "uploader"];

/// One scenario's world: a bus prefix, a folder with the inventory, the
/// config, the local destination and the children's `TMPDIR`.
struct Rig {
    iso: Isolation,
    dir: tempfile::TempDir,
    tmp: PathBuf,
    nats: String,
    config: PathBuf,
    max_deliver: i64,
    replicas: usize,
}

impl Rig {
    /// `rows` inventory rows with canary credentials; `extra` config keys
    /// laid over the defaults (local folder, password encryption).
    fn new(test: &str, nats: &str, rows: usize, extra: &[(&str, &str)]) -> Self {
        let iso = Isolation::new(test);
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let inventory = dir.path().join("inventory.csv");
        let mut csv = String::from(
            "Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential\n",
        );
        for i in 0..rows {
            csv.push_str(&format!(
                "project-{},AWS,host-{i:07},SSH,203.0.113.{},10.0.{}.{},,22,password,root,{CANARY}pw-{i},,{CANARY}extra-{i}\n",
                i % 20,
                i % 250,
                i % 200,
                i % 250
            ));
        }
        std::fs::write(&inventory, csv).unwrap();
        let key = breakglass_bus::payload::PayloadKey::generate();
        let inventory_url = inventory.display().to_string();
        let out = dir.path().join("out").display().to_string();
        let mut entries: Vec<(&str, &str)> = vec![
            ("nats_url", nats),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", key.expose()),
            ("ack_wait_seconds", "3"),
            // These tests exercise retry by redelivery: no retry inside one delivery.
            ("upload_retry_budget_seconds", "0"),
            ("max_deliver", "6"),
            ("inventory_url", inventory_url.as_str()),
            ("encryption", "password"),
            ("encryption_passphrase", PASSPHRASE),
            ("storage_provider", "local"),
            ("local_dir", out.as_str()),
        ];
        for (key, value) in extra {
            entries.retain(|(k, _)| k != key);
            entries.push((key, value));
        }
        let config = write_config(dir.path(), &entries);
        let max_deliver = entries
            .iter()
            .find(|(k, _)| *k == "max_deliver")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap();
        let replicas = entries
            .iter()
            .find(|(k, _)| *k == "bus_replicas")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(1);
        Self {
            iso,
            dir,
            tmp,
            nats: nats.to_owned(),
            config,
            max_deliver,
            replicas,
        }
    }

    fn start(&self, name: &str) -> ServiceProcess {
        self.start_with(name, &[])
    }

    fn start_with(&self, name: &str, env: &[(&str, &Path)]) -> ServiceProcess {
        let mut all: Vec<(&str, &Path)> = vec![("TMPDIR", self.tmp.as_path())];
        all.extend_from_slice(env);
        ServiceProcess::start_with_env(name, &self.config, self.dir.path(), &all).unwrap()
    }

    fn start_all(&self) -> Vec<ServiceProcess> {
        SERVICES.iter().map(|name| self.start(name)).collect()
    }

    async fn bus(&self) -> Bus {
        self.iso
            .connect_bus_at(&self.nats, self.max_deliver, self.replicas)
            .await
    }

    /// The local destination's backup (overwrite rotation).
    fn local_copy(&self) -> PathBuf {
        self.dir.path().join("out/breakglass-backup.xlsx")
    }

    /// No plaintext left behind: no file in the children's temp folder holds
    /// a canary credential or the passphrase, and none is a plain (zip)
    /// workbook.
    fn assert_no_plaintext_in_temp(&self) {
        for file in walk(&self.tmp) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.starts_with(b"PK\x03\x04"),
                "a plain workbook is left in temp: {}",
                file.display()
            );
            assert!(
                !contains(&bytes, CANARY.as_bytes()),
                "a canary credential is left in temp: {}",
                file.display()
            );
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn sha(path: &Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn trigger(run_id: &str) -> v1::TriggerRequested {
    v1::TriggerRequested {
        run_id: run_id.into(),
        reason: v1::TriggerReason::OnDemand as i32,
        requested_by: "mavis-core".into(),
        requested_at_unix_ms: 0,
        note: "fault matrix".into(),
    }
}

fn logs(services: &[&ServiceProcess]) -> String {
    services
        .iter()
        .map(|s| format!("--- {}\n{}", s.name, s.log_text()))
        .collect()
}

/// The run's outcome; panics with the services' logs when it never comes.
async fn finished(
    bus: &Bus,
    run_id: &str,
    timeout: Duration,
    services: &[&ServiceProcess],
) -> v1::RunFinished {
    bus.wait_for_run(run_id, timeout)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("run {run_id} did not finish:\n{}", logs(services)))
}

/// Waits until `needle` is in the service's log `count` times.
async fn wait_for_nth(service: &ServiceProcess, needle: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while service.log_text().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "{} did not log {needle:?} {count} times:\n{}",
            service.name,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A first, successful run: the "previous verified copy" of a scenario.
async fn prior_run(rig: &Rig, bus: &Bus, services: &[&ServiceProcess]) -> String {
    let run_id = format!("prior-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    let done = finished(bus, &run_id, Duration::from_secs(120), services).await;
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    sha(&rig.local_copy())
}

/// The run succeeded and every destination holds its verified copy, which
/// replaced the prior one.
fn assert_new_copy(rig: &Rig, done: &v1::RunFinished, prior: &str) {
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    let local = done
        .destinations
        .iter()
        .find(|d| d.destination.starts_with("local:"))
        .unwrap();
    let now = sha(&rig.local_copy());
    assert_eq!(local.sha256, now, "the stored copy is the verified one");
    assert_ne!(now, prior, "the newer run's copy replaced the prior one");
}

/// How many stream messages of `kind` (`snapshot.ready`...) belong to `run_id`.
async fn count_for_run(prefix: &str, kind: &str, run_id: &str) -> usize {
    read_stream(prefix)
        .await
        .unwrap()
        .iter()
        .filter(|m| m.subject.ends_with(kind) || m.subject.ends_with(&format!("{kind}.{run_id}")))
        .filter(|m| contains(&m.payload, run_id.as_bytes()) || m.subject.contains(run_id))
        .count()
}

async fn killed_mid_run_completes(victim: &str) {
    let nats = nats_url();
    let rig = Rig::new(&format!("kill{victim}"), &nats, 20_000, &[]);
    let bus = rig.bus().await;
    let mut services = rig.start_all();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let prior = prior_run(&rig, &bus, &refs).await;

    let run_id = format!("kill-{victim}-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    let index = SERVICES.iter().position(|s| *s == victim).unwrap();
    wait_for_nth(
        &services[index],
        "message received",
        2,
        Duration::from_secs(60),
    )
    .await;
    services[index].kill();
    let log = services[index].log_text();
    let done_marker = if victim == "collector" {
        "snapshot stored"
    } else {
        "run finished"
    };
    assert_eq!(
        log.matches(done_marker).count(),
        1,
        "the kill came too late to be mid-run:\n{log}"
    );
    assert_eq!(
        sha(&rig.local_copy()),
        prior,
        "the prior copy is intact while the run is unfinished"
    );
    services[index] = rig.start(victim);
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = finished(&bus, &run_id, Duration::from_secs(120), &refs).await;
    assert_new_copy(&rig, &done, &prior);
    services[index]
        .wait_for_log("\"delivery\":2", Duration::from_secs(5))
        .await
        .expect("the restarted service got the redelivered message");
    // One run: one snapshot, one workbook, one outcome for this run id.
    for kind in [".snapshot.ready", ".workbook.ready"] {
        assert_eq!(
            count_for_run(&rig.iso.prefix, kind, &run_id).await,
            1,
            "{kind}"
        );
    }
    rig.assert_no_plaintext_in_temp();
    // The restarted service is healthy and counts what it did.
    let (status, _) = services[index].http_get("/readyz").await.unwrap();
    assert_eq!(status, 200);
    let (_, metrics) = services[index].http_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains(&format!("stage=\"{victim}\"")) && l.contains("outcome=\"ok\"")),
        "{metrics}"
    );
    bus.close().await;
    rig.iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_killed_mid_run_is_restarted_and_the_run_completes_once() {
    killed_mid_run_completes("collector").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uploader_killed_mid_run_is_restarted_and_the_run_completes_once() {
    killed_mid_run_completes("uploader").await;
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a {size} tmpfs at {} needs root (the test machines run as root)",
            at.display()
        );
        Self(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remounting {}", self.0.display());
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The renderer's temp space fills up mid-run: the run fails naming the
/// render stage and the cause, the previous copy stays, nothing plain is
/// left in the full folder, and once there is room again the same renderer
/// (no restart) renders the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_renderers_temp_space_full_fails_the_run_plainly_and_it_recovers() {
    let nats = nats_url();
    let rig = Rig::new("tmpfull", &nats, 50_000, &[("max_deliver", "2")]);
    let bus = rig.bus().await;
    let mut services = rig.start_all();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let prior = prior_run(&rig, &bus, &refs).await;

    // The renderer again, its TMPDIR on a 1 MiB file system: the 50,000-row
    // workbook (about 4 MB) cannot be written there.
    let small = SmallTmpfs::mount(&rig.dir.path().join("small-tmp"), "1m");
    services[1].kill();
    services[1] = rig.start_with("renderer", &[("TMPDIR", small.0.as_path())]);
    let run_id = format!("tmpfull-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = finished(&bus, &run_id, Duration::from_secs(120), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Failed as i32, "{done:?}");
    assert_eq!(done.failed_stage, "render", "{done:?}");
    assert!(
        done.error.contains("No space left on device"),
        "the cause is named: {}",
        done.error
    );
    assert!(
        !done.error.contains("Os {") && !done.error.contains("kind:"),
        "plain words, no debug dump: {}",
        done.error
    );
    assert_eq!(sha(&rig.local_copy()), prior, "the prior copy is intact");
    assert!(services[1].is_running(), "the renderer did not die");
    for file in walk(&small.0) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes.starts_with(b"PK\x03\x04") && !contains(&bytes, CANARY.as_bytes()),
            "plaintext left in the full temp folder: {}",
            file.display()
        );
    }

    // Room again: the same renderer process renders the next run.
    small.resize("256m");
    let again = format!("tmpfull-again-{}", rig.iso.prefix);
    bus.trigger(&trigger(&again)).await.unwrap();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = finished(&bus, &again, Duration::from_secs(120), &refs).await;
    assert_new_copy(&rig, &done, &prior);
    bus.close().await;
    rig.iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_is_ridden_out() {
    let mut nats = PrivateNats::start();
    let rig = Rig::new("natsrestart", &nats.url, 20_000, &[]);
    let bus = rig.bus().await;
    let mut services = rig.start_all();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let prior = prior_run(&rig, &bus, &refs).await;

    let run_id = format!("natsrestart-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    wait_for_nth(&services[1], "message received", 2, Duration::from_secs(60)).await;
    nats.stop();
    // A deliberate outage of a few seconds (not a readiness wait).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sha(&rig.local_copy()), prior);
    nats.restart();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = finished(&bus, &run_id, Duration::from_secs(180), &refs).await;
    assert_new_copy(&rig, &done, &prior);
    // The renderer's interrupted attempt leaves no plain workbook: it only
    // ever writes unnamed files (issue 16 item 1). Every folder is checked.
    rig.assert_no_plaintext_in_temp();
    // Every service is connected again without a restart.
    for service in &mut services {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = service.http_get("/readyz").await.unwrap();
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready: {body}",
                service.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // And it runs again.
    let again = format!("natsrestart-again-{}", rig.iso.prefix);
    bus.trigger(&trigger(&again)).await.unwrap();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = finished(&bus, &again, Duration::from_secs(120), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
}

/// The server that leads the events stream now (its `server_name`).
async fn stream_leader(bus: &Bus) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut stream) = bus.jetstream().get_stream(bus.subjects().stream()).await
            && let Ok(info) = stream.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "the stream has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The routes are mutual TLS: a nats-server that knows the cluster's name
/// and can reach the route ports, but holds no certificate from the route
/// CA, gets no route, while the three nodes keep theirs.
#[tokio::test]
async fn a_node_without_the_route_certificate_cannot_join_the_cluster() {
    let cluster = NatsCluster::start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ["n1", "n2", "n3"]
        .iter()
        .any(|node| cluster.route_count(node) != Some(2))
    {
        assert!(
            Instant::now() < deadline,
            "the nodes did not route to each other over TLS\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cluster.intruder_routes(Duration::from_secs(4)),
        0,
        "a node without the route certificate joined\n{}",
        cluster.logs()
    );
    for node in ["n1", "n2", "n3"] {
        assert_eq!(cluster.route_count(node), Some(2), "{node}");
    }
}

/// Issue 15 part 3: on a three-node JetStream cluster with every stream
/// and bucket replicated three times, killing the events stream's leader
/// mid-run neither loses nor duplicates the backup, and the services carry
/// on without a restart. `unique` rotation makes a duplicate visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_of_a_nats_cluster_mid_run_loses_and_duplicates_nothing() {
    let mut cluster = NatsCluster::start();
    let url = cluster.url();
    let rig = Rig::new(
        "natscluster",
        &url,
        20_000,
        &[("bus_replicas", "3"), ("rotation", "unique")],
    );
    // The first stream create on a fresh cluster can time out on a loaded
    // machine while the stream's peers are placed: try for a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    let bus = loop {
        match rig
            .iso
            .try_connect_bus_at(&rig.nats, rig.max_deliver, rig.replicas)
            .await
        {
            Ok(bus) => break bus,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "the cluster took no R3 stream: {err}\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let info = bus
        .jetstream()
        .get_stream(bus.subjects().stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.config.num_replicas, 3, "the stream is replicated");
    let mut services = rig.start_all();
    let run_id = format!("natscluster-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    // Mid-run: the renderer has the snapshot in hand.
    wait_for_nth(&services[1], "message received", 1, Duration::from_secs(60)).await;
    let leader = stream_leader(&bus).await;
    cluster.kill(&leader);
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = bus
        .wait_for_run(&run_id, Duration::from_secs(180))
        .await
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "run {run_id} did not finish after killing {leader}:\n{}{}",
                logs(&refs),
                cluster.logs()
            )
        });
    // Finished, or failed with a reason and tried again by a new trigger.
    let backups = |rig: &Rig| -> Vec<PathBuf> {
        walk(&rig.dir.path().join("out"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "xlsx"))
            .collect()
    };
    if done.status != v1::RunStatus::Succeeded as i32 {
        assert!(
            !done.error.is_empty() && !done.failed_stage.is_empty(),
            "a failure names its stage and reason: {done:?}"
        );
        assert!(backups(&rig).is_empty(), "a failed run stored nothing");
        let retry = format!("natscluster-retry-{}", rig.iso.prefix);
        bus.trigger(&trigger(&retry)).await.unwrap();
        let again = finished(&bus, &retry, Duration::from_secs(180), &refs).await;
        assert_eq!(again.status, v1::RunStatus::Succeeded as i32, "{again:?}");
    }
    let stored = backups(&rig);
    assert_eq!(stored.len(), 1, "one backup, never two: {stored:?}");
    rig.assert_no_plaintext_in_temp();
    // The services reconnected to the surviving nodes without a restart,
    // and the next run goes through on the two-node majority.
    for service in &mut services {
        assert!(service.is_running(), "{} exited", service.name);
    }
    let next = format!("natscluster-next-{}", rig.iso.prefix);
    bus.trigger(&trigger(&next)).await.unwrap();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = finished(&bus, &next, Duration::from_secs(180), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    assert_eq!(backups(&rig).len(), 2, "the next run added its own copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_log_down_during_a_run_catches_up_and_the_run_succeeds() {
    let postgres = PrivatePostgres::start();
    let nats = nats_url();
    let schema = format!(
        "bgt_faults_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let rig = Rig::new(
        "runlogdown",
        &nats,
        200,
        &[
            ("database_url", postgres.url.as_str()),
            ("database_schema", schema.as_str()),
        ],
    );
    let bus = rig.bus().await;
    let mut scheduler = rig.start("scheduler");
    scheduler
        .wait_for_log("recording runs in the run log", Duration::from_secs(60))
        .await
        .unwrap();
    let services = rig.start_all();
    postgres.stop();
    let run_id = format!("runlogdown-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    let mut refs: Vec<&ServiceProcess> = services.iter().collect();
    refs.push(&scheduler);
    let done = finished(&bus, &run_id, Duration::from_secs(120), &refs).await;
    assert_eq!(
        done.status,
        v1::RunStatus::Succeeded as i32,
        "the pipeline does not need the run log: {done:?}"
    );
    // /readyz says the run log is down (the scheduler checks every few seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    while scheduler.http_get("/readyz").await.unwrap().0 != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz never said the run log is down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    postgres.restart();
    let log = breakglass_runlog::RunLog::connect(&postgres.url, &schema)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(run) = log.get(&run_id).await.unwrap()
            && run.finished_at.is_some()
        {
            assert_eq!(run.status, "succeeded", "{run:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run log did not catch up:\n{}",
            scheduler.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rig.assert_no_plaintext_in_temp();
    bus.close().await;
    rig.iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_parallel_triggers_make_one_run_per_run_id() {
    let nats = nats_url();
    let rig = Rig::new("dupes", &nats, 200, &[]);
    let bus = rig.bus().await;
    let services = rig.start_all();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let ids: Vec<String> = (0..3)
        .map(|n| format!("dupes-{n}-{}", rig.iso.prefix))
        .collect();
    // Each run id three times, all at once.
    let sends = ids.iter().flat_map(|id| {
        let bus = bus.clone();
        (0..3).map(move |_| {
            let bus = bus.clone();
            let id = id.clone();
            async move { bus.trigger(&trigger(&id)).await.unwrap() }
        })
    });
    let duplicates = futures::future::join_all(sends).await;
    assert_eq!(
        duplicates.iter().filter(|d| !**d).count(),
        3,
        "one new trigger per run id: {duplicates:?}"
    );
    for id in &ids {
        let done = finished(&bus, id, Duration::from_secs(120), &refs).await;
        assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    }
    for id in &ids {
        for kind in [".snapshot.ready", ".workbook.ready"] {
            assert_eq!(
                count_for_run(&rig.iso.prefix, kind, id).await,
                1,
                "{id} {kind}"
            );
        }
        let outcomes = read_stream(&rig.iso.prefix)
            .await
            .unwrap()
            .iter()
            .filter(|m| m.subject.ends_with(&format!("run.finished.{id}")))
            .count();
        assert_eq!(outcomes, 1, "{id}");
    }
    rig.assert_no_plaintext_in_temp();
    bus.close().await;
    rig.iso.cleanup_bus().await;
}

fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap()
}

/// A storage outage shorter than the retry budget: the run waits it out,
/// the prior copy is intact meanwhile, and the newer copy lands after.
async fn storage_outage_is_ridden_out(
    rig: &Rig,
    proxy: &mut OutageProxy,
    read_remote: impl Fn(&Path) -> String,
) {
    let bus = rig.bus().await;
    let services = rig.start_all();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let prior_run_id = format!("prior-{}", rig.iso.prefix);
    bus.trigger(&trigger(&prior_run_id)).await.unwrap();
    let done = finished(&bus, &prior_run_id, Duration::from_secs(120), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    let prior = read_remote(&rig.dir.path().join("prior.xlsx"));

    proxy.down();
    let run_id = format!("outage-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    wait_for_nth(
        &services[2],
        "retrying with the next delivery",
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        read_remote(&rig.dir.path().join("during.xlsx")),
        prior,
        "the prior copy is intact during the outage"
    );
    proxy.up().await;
    let done = finished(&bus, &run_id, Duration::from_secs(120), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    let now = read_remote(&rig.dir.path().join("after.xlsx"));
    assert_ne!(now, prior);
    assert_eq!(
        done.destinations[0].sha256, now,
        "the verified copy is stored"
    );
    rig.assert_no_plaintext_in_temp();
    let mut uploader = services.into_iter().nth(2).unwrap();
    let (_, metrics) = uploader.http_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("breakglass_upload_retries") && !l.ends_with(" 0")),
        "the retries are counted:\n{metrics}"
    );
    bus.close().await;
    rig.iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_s3_outage_is_ridden_out_and_the_prior_copy_kept() {
    let moto = Moto::start();
    moto.tool(&["create-bucket", "outage"]);
    let mut proxy = OutageProxy::start(([127, 0, 0, 1], port_of(&moto.endpoint)).into()).await;
    let nats = nats_url();
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let rig = Rig::new(
        "s3outage",
        &nats,
        200,
        &[
            ("storage_provider", "s3"),
            ("s3_bucket", "outage"),
            ("s3_url", url.as_str()),
            ("s3_protocol", "http"),
            ("s3_access_key_id", "AKIATESTKEY"),
            ("s3_secret_access_key", "test-secret-access-key"),
        ],
    );
    storage_outage_is_ridden_out(&rig, &mut proxy, |out| {
        moto.tool(&[
            "get",
            "outage",
            "breakglass-backup.xlsx",
            out.to_str().unwrap(),
        ]);
        sha(out)
    })
    .await;
}

/// Issue 16 item 2: a redelivery after one destination failed does not
/// send again to the destination that already stored the run. The local
/// folder stores on the first delivery while S3 (moto behind a proxy) is
/// down; the redeliveries find the local copy verified and skip it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_skips_the_destination_that_already_stored_the_run() {
    use std::os::unix::fs::MetadataExt;
    let moto = Moto::start();
    moto.tool(&["create-bucket", "redelivery"]);
    let mut proxy = OutageProxy::start(([127, 0, 0, 1], port_of(&moto.endpoint)).into()).await;
    let nats = nats_url();
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let rig = Rig::new(
        "redeliveryskip",
        &nats,
        20,
        &[
            ("storage_provider", "local,s3"),
            ("s3_bucket", "redelivery"),
            ("s3_url", url.as_str()),
            ("s3_protocol", "http"),
            ("s3_access_key_id", "AKIATESTKEY"),
            ("s3_secret_access_key", "test-secret-access-key"),
        ],
    );
    let bus = rig.bus().await;
    let services = rig.start_all();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    proxy.down();
    let run_id = format!("skip-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    wait_for_nth(
        &services[2],
        "retrying with the next delivery",
        1,
        Duration::from_secs(120),
    )
    .await;
    let stored = std::fs::metadata(rig.local_copy()).unwrap();
    let (inode, modified) = (stored.ino(), stored.modified().unwrap());
    // Let at least one more delivery find the local copy, then S3 return.
    wait_for_nth(
        &services[2],
        "retrying with the next delivery",
        2,
        Duration::from_secs(120),
    )
    .await;
    proxy.up().await;
    let done = finished(&bus, &run_id, Duration::from_secs(120), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    let local = done
        .destinations
        .iter()
        .find(|d| d.destination.starts_with("local:"))
        .unwrap();
    assert!(local.already_stored, "{local:?}");
    assert_eq!(local.sha256, sha(&rig.local_copy()));
    let s3 = done
        .destinations
        .iter()
        .find(|d| d.destination.starts_with("s3:"))
        .unwrap();
    assert!(!s3.already_stored, "{s3:?}");
    let after = std::fs::metadata(rig.local_copy()).unwrap();
    assert_eq!(
        (after.ino(), after.modified().unwrap()),
        (inode, modified),
        "the local file was not written again"
    );
    assert!(
        services[2]
            .log_text()
            .contains("already stored and verified by an earlier delivery"),
        "{}",
        services[2].log_text()
    );
    rig.assert_no_plaintext_in_temp();
    bus.close().await;
    rig.iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_azurite_outage_is_ridden_out_and_the_prior_copy_kept() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "outage"]);
    let mut proxy = OutageProxy::start(
        (
            [127, 0, 0, 1],
            port_of(&azurite.endpoint.replace("/devstoreaccount1", "")),
        )
            .into(),
    )
    .await;
    let nats = nats_url();
    let endpoint = format!("http://127.0.0.1:{}/{}", proxy.port, Azurite::ACCOUNT);
    let rig = Rig::new(
        "bloboutage",
        &nats,
        200,
        &[
            ("storage_provider", "blob"),
            ("blob_container", "outage"),
            ("blob_account_name", Azurite::ACCOUNT),
            ("blob_account_key", Azurite::KEY),
            ("blob_protocol", "http"),
            ("blob_endpoint", endpoint.as_str()),
        ],
    );
    storage_outage_is_ridden_out(&rig, &mut proxy, |out| {
        azurite.tool(&[
            "get",
            "outage",
            "breakglass-backup.xlsx",
            out.to_str().unwrap(),
        ]);
        sha(out)
    })
    .await;
}

/// Item 8: with NATS gone, SIGTERM still stops every service within its
/// grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exits_within_its_grace_period_when_nats_is_down() {
    let mut nats = PrivateNats::start();
    let rig = Rig::new("sigterm", &nats.url, 10, &[]);
    let grace = Path::new("4");
    let mut services: Vec<ServiceProcess> = ["scheduler", "collector", "renderer", "uploader"]
        .iter()
        .map(|name| rig.start_with(name, &[("BREAKGLASS_SHUTDOWN_GRACE_SECONDS", grace)]))
        .collect();
    for service in &mut services {
        let needle = if service.name == "scheduler" {
            "no execute_time configured"
        } else {
            "waiting for messages"
        };
        service
            .wait_for_log(needle, Duration::from_secs(60))
            .await
            .unwrap();
    }
    nats.stop();
    // Each service sees the bus gone (/readyz says so) before it is asked to stop.
    for service in &mut services {
        let deadline = Instant::now() + Duration::from_secs(30);
        while service.http_get("/readyz").await.unwrap().0 == 200 {
            assert!(
                Instant::now() < deadline,
                "{} never saw NATS go",
                service.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for service in &mut services {
        let started = Instant::now();
        // The grace period, plus a second for the process to be reaped.
        let status = tokio::task::block_in_place(|| service.terminate(Duration::from_secs(5)))
            .unwrap_or_else(|err| panic!("{err}:\n{}", service.log_text()));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{} took {:?}",
            service.name,
            started.elapsed()
        );
        assert!(status.success(), "{} exited with {status}", service.name);
    }
}

/// Item 4: a destination failure is told in plain words, once, without a
/// Rust debug dump, in the run result, the CLI and the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_failure_is_told_in_plain_words_without_debug_dumps() {
    let nats = nats_url();
    let closed = free_port();
    let url = format!("http://127.0.0.1:{closed}");
    let rig = Rig::new(
        "errtext",
        &nats,
        10,
        &[
            ("max_deliver", "2"),
            ("storage_provider", "s3"),
            ("s3_bucket", "nowhere"),
            ("s3_url", url.as_str()),
            ("s3_protocol", "http"),
            ("s3_access_key_id", "AKIATESTKEY"),
            ("s3_secret_access_key", "test-secret-access-key"),
        ],
    );
    let services = rig.start_all();
    let run_id = format!("errtext-{}", rig.iso.prefix);
    let output = tokio::task::spawn_blocking({
        let config = rig.config.clone();
        let run_id = run_id.clone();
        move || {
            std::process::Command::new(bin("breakglass"))
                .args(["trigger", "--wait", "--timeout", "120", "--run-id", &run_id])
                .arg("--config")
                .arg(config)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let cli = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{cli}");
    let bus = rig.bus().await;
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = finished(&bus, &run_id, Duration::from_secs(10), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Failed as i32, "{done:?}");
    assert_eq!(done.failed_stage, "upload");
    let s3 = &done.destinations[0];
    let expected = format!("connection refused to {url}");
    let uploader_log: String = services[2]
        .log_text()
        .lines()
        .filter(|l| l.contains("refused"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!uploader_log.is_empty(), "{}", services[2].log_text());
    for (what, text) in [
        ("destination error", s3.error.as_str()),
        ("run error", done.error.as_str()),
        ("CLI", cli.as_str()),
        ("uploader log", uploader_log.as_str()),
    ] {
        assert!(
            text.to_ascii_lowercase().contains(&expected),
            "{what} names the plain cause {expected:?}: {text}"
        );
        assert!(text.contains("s3:"), "{what} names the destination: {text}");
        for dump in [
            "DispatchFailure(",
            "ConnectorError",
            "Some(",
            "{ ",
            "os error",
        ] {
            assert!(
                !text.contains(dump),
                "{what} carries a debug dump ({dump}): {text}"
            );
        }
    }
    for (what, text) in [
        ("destination error", s3.error.as_str()),
        ("run error", done.error.as_str()),
    ] {
        assert_eq!(
            text.to_ascii_lowercase().matches("refused").count(),
            1,
            "{what} says the cause once: {text}"
        );
    }
    for line in uploader_log.lines() {
        assert_eq!(
            line.to_ascii_lowercase().matches("refused").count(),
            1,
            "each log line says the cause once: {line}"
        );
    }
    assert_eq!(
        cli.to_ascii_lowercase().matches("refused").count(),
        1,
        "the CLI says the cause once: {cli}"
    );
    bus.close().await;
    rig.iso.cleanup_bus().await;
}

/// Item 5: a trigger without `traceparent` (as the Mavis core may send)
/// is one trace however often it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_of_a_trigger_without_traceparent_stay_in_one_trace() {
    let receiver = TraceReceiver::start().await.unwrap();
    let nats = nats_url();
    // An inventory database that refuses connections: every delivery of
    // the trigger fails and is retried, up to max_deliver.
    let inventory = format!("postgres://postgres@127.0.0.1:{}/inventory", free_port());
    let rig = Rig::new(
        "tracedeliveries",
        &nats,
        1,
        &[("max_deliver", "3"), ("inventory_url", inventory.as_str())],
    );
    let endpoint = receiver.endpoint.clone();
    let mut collector = rig.start_with(
        "collector",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", Path::new(&endpoint)),
            ("OTEL_BSP_SCHEDULE_DELAY", Path::new("200")),
        ],
    );
    let bus = rig.bus().await;
    let run_id = format!("tracedeliveries-{}", rig.iso.prefix);
    // Published as a bare JetStream message: no trace headers at all.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", run_id.as_str());
    bus.jetstream()
        .publish_with_headers(
            bus.subjects().trigger(),
            headers,
            prost::Message::encode_to_vec(&trigger(&run_id)).into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let done = finished(&bus, &run_id, Duration::from_secs(60), &[&collector]).await;
    assert_eq!(done.status, v1::RunStatus::Failed as i32);
    tokio::task::block_in_place(|| collector.terminate(Duration::from_secs(20))).unwrap();
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans
                .iter()
                .filter(|s| s.name == "collector" && s.attribute("run_id") == Some(&run_id))
                .count()
                >= 3
        })
        .await;
    let deliveries: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "collector" && s.attribute("run_id") == Some(run_id.as_str()))
        .collect();
    assert!(deliveries.len() >= 3, "{deliveries:?}");
    let traces: std::collections::HashSet<&str> =
        deliveries.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(traces.len(), 1, "one run, one trace: {deliveries:#?}");
    bus.close().await;
    rig.iso.cleanup_bus().await;
}

/// The keys of the bucket's objects, sorted.
fn bucket_keys(moto: &Moto, bucket: &str) -> Vec<String> {
    serde_json::from_str(&moto.tool(&["list", bucket, ""])).unwrap()
}

/// `prune` rotation on S3 with the uploader killed while a request of the
/// upload hangs (`stall_suffix` picks which: the object's PUT, or the
/// sidecar's after the object is stored). Until the newer copy is verified
/// the prior copy and its sidecar stay; the restarted uploader finishes the
/// run from the redelivery, and then only the newer copy and its sidecar
/// remain: nothing half-written, nothing pruned early, nothing duplicated.
async fn prune_survives_the_uploader_killed_during(test: &str, stall_suffix: &str) -> Vec<String> {
    let moto = Moto::start();
    moto.tool(&["create-bucket", "prune"]);
    let proxy = OutageProxy::start(([127, 0, 0, 1], port_of(&moto.endpoint)).into()).await;
    let nats = nats_url();
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let rig = Rig::new(
        test,
        &nats,
        200,
        &[
            ("storage_provider", "s3"),
            ("rotation", "prune"),
            ("s3_bucket", "prune"),
            ("s3_url", url.as_str()),
            ("s3_protocol", "http"),
            ("s3_access_key_id", "AKIATESTKEY"),
            ("s3_secret_access_key", "test-secret-access-key"),
        ],
    );
    let bus = rig.bus().await;
    let mut services = rig.start_all();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let prior_id = format!("prior-{}", rig.iso.prefix);
    bus.trigger(&trigger(&prior_id)).await.unwrap();
    let prior = finished(&bus, &prior_id, Duration::from_secs(120), &refs).await;
    assert_eq!(prior.status, v1::RunStatus::Succeeded as i32, "{prior:?}");
    let prior_keys = bucket_keys(&moto, "prune");
    assert_eq!(
        prior_keys.len(),
        2,
        "one copy and its sidecar: {prior_keys:?}"
    );

    proxy.stall("PUT", stall_suffix);
    let run_id = format!("{test}-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while proxy.stalled() == 0 {
        assert!(
            Instant::now() < deadline,
            "no PUT …{stall_suffix} came:\n{}",
            logs(&refs)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(refs);
    services[2].kill();
    let crashed = bucket_keys(&moto, "prune");
    for key in &prior_keys {
        assert!(
            crashed.contains(key),
            "{key} was pruned before the newer copy was verified: {crashed:?}"
        );
    }
    proxy.release();
    services[2] = rig.start("uploader");
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = finished(&bus, &run_id, Duration::from_secs(120), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    let after = bucket_keys(&moto, "prune");
    assert_eq!(
        after.len(),
        2,
        "only the newer copy and its sidecar: {after:?}"
    );
    for key in &prior_keys {
        assert!(!after.contains(key), "{key} was not pruned: {after:?}");
    }
    let object = after
        .iter()
        .find(|k| !k.ends_with(".manifest.json"))
        .unwrap();
    assert!(
        after.contains(&format!("{object}.manifest.json")),
        "the newer copy has its sidecar: {after:?}"
    );
    let copy = rig.dir.path().join("after.xlsx");
    moto.tool(&["get", "prune", object, copy.to_str().unwrap()]);
    assert_eq!(
        done.destinations[0].sha256,
        sha(&copy),
        "the verified copy is stored"
    );
    rig.assert_no_plaintext_in_temp();
    drop(refs);
    let (_, metrics) = services[2].http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("breakglass_runs_finished_total{status=\"succeeded\"} 1"),
        "the restarted uploader counts the run it finished:\n{metrics}"
    );
    bus.close().await;
    rig.iso.cleanup_bus().await;
    crashed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_with_the_uploader_killed_mid_upload_keeps_the_prior_copy_until_the_new_one_is_verified()
 {
    let crashed = prune_survives_the_uploader_killed_during("prunemid", ".xlsx").await;
    // The held PUT reached nothing: only the prior copy and its sidecar.
    assert_eq!(crashed.len(), 2, "{crashed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_with_the_uploader_killed_between_object_and_sidecar_completes_the_sidecar() {
    let crashed = prune_survives_the_uploader_killed_during("prunesidecar", ".manifest.json").await;
    assert_eq!(
        crashed.len(),
        3,
        "the newer object is stored, its sidecar not yet: {crashed:?}"
    );
}

/// The local destination's disk fills up (`s3,local`): S3 stores the run,
/// the local folder fails with the cause in plain words, the prior local
/// copy stays whole and no partial file is left beside it; the redeliveries
/// do not send to S3 again; once there is room the next run stores both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_disk_fails_that_destination_only_and_keeps_its_prior_copy() {
    let moto = Moto::start();
    moto.tool(&["create-bucket", "diskfull"]);
    let nats = nats_url();
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallTmpfs::mount(&dir.path().join("disk"), "4m");
    let local_dir = disk.0.display().to_string();
    let rig = Rig::new(
        "diskfull",
        &nats,
        20_000,
        &[
            ("storage_provider", "s3,local"),
            ("local_dir", local_dir.as_str()),
            ("max_deliver", "3"),
            ("s3_bucket", "diskfull"),
            ("s3_url", moto.endpoint.as_str()),
            ("s3_protocol", "http"),
            ("s3_access_key_id", "AKIATESTKEY"),
            ("s3_secret_access_key", "test-secret-access-key"),
        ],
    );
    let local_copy = disk.0.join("breakglass-backup.xlsx");
    let bus = rig.bus().await;
    let mut services = rig.start_all();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let prior_id = format!("prior-{}", rig.iso.prefix);
    bus.trigger(&trigger(&prior_id)).await.unwrap();
    let done = finished(&bus, &prior_id, Duration::from_secs(120), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    let prior = sha(&local_copy);
    let mut prior_files = walk(&disk.0);
    prior_files.sort();

    // Fill the disk, leaving 64 KiB: far less than a workbook.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(64 * 1024)).unwrap();
    }
    let run_id = format!("diskfull-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    let done = finished(&bus, &run_id, Duration::from_secs(180), &refs).await;
    assert_eq!(
        done.status,
        v1::RunStatus::PartiallyFailed as i32,
        "{done:?}"
    );
    assert_eq!(done.failed_stage, "upload", "{done:?}");
    let local = done
        .destinations
        .iter()
        .find(|d| d.destination.starts_with("local:"))
        .unwrap();
    assert_eq!(local.status, v1::RunStatus::Failed as i32, "{local:?}");
    assert!(
        local.error.contains("No space left on device"),
        "the cause is named: {}",
        local.error
    );
    assert!(
        !local.error.contains("Os {") && !local.error.contains("kind:"),
        "plain words, no debug dump: {}",
        local.error
    );
    let s3 = done
        .destinations
        .iter()
        .find(|d| d.destination.starts_with("s3:"))
        .unwrap();
    assert_eq!(s3.status, v1::RunStatus::Succeeded as i32, "{s3:?}");
    let copy = rig.dir.path().join("s3.xlsx");
    moto.tool(&[
        "get",
        "diskfull",
        "breakglass-backup.xlsx",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(s3.sha256, sha(&copy), "S3 holds this run's verified copy");
    assert_eq!(sha(&local_copy), prior, "the prior local copy is intact");
    let mut left = walk(&disk.0);
    left.retain(|f| *f != filler);
    left.sort();
    assert_eq!(left, prior_files, "no partial file beside the prior copy");
    let stored = services[2]
        .log_text()
        .matches(r#""message":"stored and verified""#)
        .count();
    assert_eq!(
        stored,
        3,
        "S3 got this run once (prior: S3 and local; this run: S3), however often it was delivered:\n{}",
        services[2].log_text()
    );
    rig.assert_no_plaintext_in_temp();
    drop(refs);
    let (_, metrics) = services[2].http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("breakglass_runs_finished_total{status=\"partially_failed\"} 1"),
        "the partial failure is counted:\n{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("breakglass_upload_retries")
                && l.contains("local:")
                && !l.ends_with(" 0")),
        "the local destination's retries are counted:\n{metrics}"
    );

    // Room again: the next run stores in both.
    std::fs::remove_file(&filler).unwrap();
    let again = format!("diskfull-again-{}", rig.iso.prefix);
    bus.trigger(&trigger(&again)).await.unwrap();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let done = finished(&bus, &again, Duration::from_secs(120), &refs).await;
    assert_eq!(done.status, v1::RunStatus::Succeeded as i32, "{done:?}");
    assert_ne!(sha(&local_copy), prior);
    bus.close().await;
    rig.iso.cleanup_bus().await;
}

/// The renderer is stopped (SIGSTOP) mid-run for longer than `ack_wait`:
/// a second renderer replica gets the redelivered snapshot and the run
/// completes; the stopped one, continued, finishes its stale copy without
/// making a second workbook or outcome, and both serve the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renderer_stopped_past_ack_wait_does_not_stall_or_duplicate_the_run() {
    let nats = nats_url();
    let rig = Rig::new("renderstop", &nats, 20_000, &[]);
    let bus = rig.bus().await;
    let mut services = rig.start_all();
    let refs: Vec<&ServiceProcess> = services.iter().collect();
    let prior = prior_run(&rig, &bus, &refs).await;

    let run_id = format!("renderstop-{}", rig.iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    wait_for_nth(&services[1], "message received", 2, Duration::from_secs(60)).await;
    services[1].signal("STOP");
    assert_eq!(
        services[1].log_text().matches("workbook stored").count(),
        1,
        "the stop came too late to be mid-run:\n{}",
        services[1].log_text()
    );
    let second = rig.start("renderer");
    let mut all: Vec<&ServiceProcess> = services.iter().collect();
    all.push(&second);
    let done = finished(&bus, &run_id, Duration::from_secs(120), &all).await;
    assert_new_copy(&rig, &done, &prior);
    drop(all);
    let mut second = second;
    second
        .wait_for_log("message received", Duration::from_secs(5))
        .await
        .expect(
            "the other replica got the redelivered snapshot (delivery 1 went to the stopped one)",
        );
    services[1].signal("CONT");
    // The continued renderer gets to the end of its stale delivery: it
    // renders and publishes again, and the bus drops the duplicate.
    wait_for_nth(&services[1], "workbook stored", 2, Duration::from_secs(60)).await;
    assert!(services[1].is_running(), "{}", services[1].log_text());
    for kind in [".workbook.ready", ".run.finished"] {
        assert_eq!(
            count_for_run(&rig.iso.prefix, kind, &run_id).await,
            1,
            "{kind}"
        );
    }
    let stored = sha(&rig.local_copy());
    assert_eq!(
        done.destinations[0].sha256, stored,
        "the copy is the verified one"
    );
    rig.assert_no_plaintext_in_temp();
    let (_, metrics) = second.http_get("/metrics").await.unwrap();
    assert!(
        metrics.lines().any(|l| l.contains("stage=\"renderer\"")
            && l.contains("outcome=\"ok\"")
            && l.ends_with(" 1")),
        "the replica that took over counts its render:\n{metrics}"
    );

    let again = format!("renderstop-again-{}", rig.iso.prefix);
    bus.trigger(&trigger(&again)).await.unwrap();
    let mut all: Vec<&ServiceProcess> = services.iter().collect();
    all.push(&second);
    let done = finished(&bus, &again, Duration::from_secs(120), &all).await;
    assert_new_copy(&rig, &done, &stored);
    bus.close().await;
    rig.iso.cleanup_bus().await;
}
