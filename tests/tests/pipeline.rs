//! The whole run across processes: the four services as separate OS
//! processes against real NATS JetStream and PostgreSQL, a trigger published
//! the way the Mavis core does, the workbook read back with calamine.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_bus::Bus;
use breakglass_e2e::{
    Isolation, Moto, ServiceProcess, database_url, nats_url, read_object_store, read_stream,
    write_config,
};
use breakglass_proto::v1;
use calamine::{Data, Reader, Xlsx, open_workbook};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use std::path::Path;
use std::time::Duration;

const PASSPHRASE: &str = "e2e break-glass passphrase 2026";

const CHINESE_40: &str =
    "財務部門核心資料庫伺服器群組緊急存取帳號清單與相關連線資訊備份專案一二三四五六七";

/// (project, device, account, password, port, extra credential)
const ROWS: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("Payments", "web-10", "root", "=1+1", "22", ""),
    ("Payments", "web-2", "root", "0012", "0022", "TRUE"),
    ("Payments", "WEB-2", "admin", "tab\there\nnewline", "22", ""),
    (
        "Payments",
        "db-1",
        "postgres",
        "emoji 🔐 pass",
        "5432",
        "1E5",
    ),
    ("ops/dev", "jump-1", "root", "+1", "22", ""),
    (
        "ops:dev",
        "jump-1",
        "root",
        "=HYPERLINK(\"http://x\",\"y\")",
        "22",
        "",
    ),
    (CHINESE_40, "主機-3", "管理員", "密碼-3", "3389", ""),
    (CHINESE_40, "主機-1", "管理員", "密碼-1", "3389", ""),
];

async fn seed_inventory(schema: &str) -> anyhow::Result<()> {
    let mut db = PgConnection::connect(&database_url()).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.devices (
            project text, provider text, device_name text, protocol text,
            public_ip text, private_ip text, url text, port text, access_type text,
            account text, password text, pem_file_name text, extra_credential text);
         CREATE VIEW {schema}.breakglass_inventory AS SELECT * FROM {schema}.devices;"
    )))
    .execute(&mut db)
    .await?;
    for (project, device, account, password, port, extra) in ROWS {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {schema}.devices VALUES ($1, 'AWS', $2, 'SSH', '203.0.113.1', '10.0.0.1', NULL, $3, 'password', $4, $5, NULL, $6)"
        )))
        .bind(project)
        .bind(device)
        .bind(port)
        .bind(account)
        .bind(password)
        .bind(extra)
        .execute(&mut db)
        .await?;
    }
    db.close().await?;
    Ok(())
}

async fn drop_schema(schema: &str) {
    if let Ok(mut db) = PgConnection::connect(&database_url()).await {
        let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut db)
            .await;
    }
}

fn text(cell: &Data) -> String {
    match cell {
        Data::String(s) => s.clone(),
        Data::Empty => String::new(),
        other => panic!("every cell must be a string cell, found {other:?}"),
    }
}

fn sheet(workbook: &mut Xlsx<std::io::BufReader<std::fs::File>>, name: &str) -> Vec<Vec<String>> {
    let range = workbook.worksheet_range(name).expect("sheet exists");
    range.rows().map(|r| r.iter().map(text).collect()).collect()
}

fn check_workbook(path: &Path) {
    let mut workbook: Xlsx<_> = open_workbook(path).expect("the workbook opens");
    let cut: String = CHINESE_40.chars().take(31).collect();
    assert_eq!(
        workbook.sheet_names(),
        vec![
            "Summary",
            "ops_dev",
            "ops_dev (2)",
            "Payments",
            cut.as_str()
        ]
    );

    let payments = sheet(&mut workbook, "Payments");
    assert_eq!(
        payments[0],
        [
            "Provider",
            "Device name",
            "Protocol",
            "Public IP address",
            "Private IP address",
            "URL",
            "Port",
            "Access type",
            "Account",
            "Password",
            "PEM file name",
            "Extra credential"
        ]
    );
    let expected = [
        [
            "AWS",
            "db-1",
            "SSH",
            "203.0.113.1",
            "10.0.0.1",
            "",
            "5432",
            "password",
            "postgres",
            "emoji 🔐 pass",
            "",
            "1E5",
        ],
        [
            "AWS",
            "WEB-2",
            "SSH",
            "203.0.113.1",
            "10.0.0.1",
            "",
            "22",
            "password",
            "admin",
            "tab\there\nnewline",
            "",
            "",
        ],
        [
            "AWS",
            "web-2",
            "SSH",
            "203.0.113.1",
            "10.0.0.1",
            "",
            "0022",
            "password",
            "root",
            "0012",
            "",
            "TRUE",
        ],
        [
            "AWS",
            "web-10",
            "SSH",
            "203.0.113.1",
            "10.0.0.1",
            "",
            "22",
            "password",
            "root",
            "=1+1",
            "",
            "",
        ],
    ];
    assert_eq!(payments.len(), 5);
    for (got, want) in payments[1..].iter().zip(expected) {
        assert_eq!(got, &want.map(String::from).to_vec());
    }
    let first = sheet(&mut workbook, "ops_dev");
    assert_eq!(
        first[1][9], "+1",
        "ops/dev comes first and keeps its own row"
    );
    let second = sheet(&mut workbook, "ops_dev (2)");
    assert_eq!(second[1][9], "=HYPERLINK(\"http://x\",\"y\")");
    let chinese = sheet(&mut workbook, &cut);
    assert_eq!(chinese[1][1], "主機-1");
    assert_eq!(chinese[2][1], "主機-3");
    assert_eq!(chinese[1][9], "密碼-1");

    // The Summary holds counts as numbers; look only at its text cells.
    let summary = workbook.worksheet_range("Summary").expect("Summary exists");
    assert!(
        summary
            .used_cells()
            .any(|(_, _, cell)| matches!(cell, Data::String(s) if s == CHINESE_40)),
        "the Summary names the full project name"
    );
}

fn service_config(
    dir: &Path,
    iso: &Isolation,
    key: &str,
    extra: &[(&str, &str)],
) -> std::path::PathBuf {
    let out = dir.join("out").display().to_string();
    let nats = nats_url();
    let mut entries: Vec<(&str, &str)> = vec![
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

/// Waits until the run log holds run `run_id` as finished.
async fn wait_for_logged_run(
    log: &breakglass_runlog::RunLog,
    run_id: &str,
) -> breakglass_runlog::RunRecord {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(run) = log.get(run_id).await.unwrap()
            && run.finished_at.is_some()
        {
            return run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run log did not record run {run_id} as finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(iso: &Isolation) -> Bus {
    iso.connect_bus().await
}

/// Triggers run `run_id` and waits (two minutes at most) for it to
/// succeed; its outcome.
async fn run_to_success(bus: &Bus, run_id: &str) -> v1::RunFinished {
    bus.trigger(&trigger(run_id)).await.unwrap();
    let finished = bus
        .wait_for_run(run_id, Duration::from_secs(120))
        .await
        .unwrap()
        .expect("the run finishes");
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}"
    );
    finished
}

fn trigger(run_id: &str) -> v1::TriggerRequested {
    v1::TriggerRequested {
        run_id: run_id.into(),
        reason: v1::TriggerReason::OnDemand as i32,
        requested_by: "mavis-core".into(),
        requested_at_unix_ms: 0,
        note: "e2e".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_runs_the_whole_pipeline_across_processes() {
    let iso = Isolation::new("pipeline");
    seed_inventory(&iso.schema).await.expect("seed PostgreSQL");
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let view = format!("{}.breakglass_inventory", iso.schema);
    let run_log_schema = format!("{}_log", iso.schema);
    let db = database_url();
    let config = service_config(
        dir.path(),
        &iso,
        key.expose(),
        &[
            ("inventory_url", db.as_str()),
            ("inventory_view", view.as_str()),
            ("encryption", "password"),
            ("encryption_passphrase", PASSPHRASE),
            ("database_url", db.as_str()),
            ("database_schema", run_log_schema.as_str()),
        ],
    );
    let bus = connect(&iso).await;

    // Snapshot runs of 3 rows: the collector stores them from PostgreSQL's
    // async reader (block_in_place), and the renderer merges them.
    let mut services: Vec<ServiceProcess> = ["scheduler", "collector", "renderer", "uploader"]
        .iter()
        .map(|name| {
            ServiceProcess::start_with_env(
                name,
                &config,
                dir.path(),
                &[("BREAKGLASS_SNAPSHOT_RUN_ROWS", Path::new("3"))],
            )
            .unwrap()
        })
        .collect();

    let run_id = format!("e2e-{}", iso.prefix);
    assert!(
        !bus.trigger(&trigger(&run_id)).await.unwrap(),
        "first publish is new"
    );
    assert!(
        bus.trigger(&trigger(&run_id)).await.unwrap(),
        "the same trigger again is a duplicate"
    );

    let finished = bus
        .wait_for_run(&run_id, Duration::from_secs(120))
        .await
        .unwrap();
    let logs: String = services
        .iter()
        .map(|s| format!("--- {}\n{}", s.name, s.log_text()))
        .collect();
    let finished = finished.unwrap_or_else(|| panic!("run did not finish; logs:\n{logs}"));
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}\n{logs}"
    );
    assert_eq!(finished.rows, ROWS.len() as u64);
    assert!(
        services[1].log_text().contains(r#""runs":3"#),
        "8 rows in runs of 3: {}",
        services[1].log_text()
    );
    assert_eq!(finished.destinations.len(), 1);
    let stored = Path::new(&finished.destinations[0].location);
    assert!(stored.ends_with("breakglass-backup.xlsx"), "{stored:?}");
    // Stored encrypted the way Excel does it: msoffcrypto-tool opens it with
    // the passphrase only, and no password is visible in the file.
    let bytes = std::fs::read(stored).unwrap();
    assert!(
        !bytes
            .windows("密碼-1".len())
            .any(|w| w == "密碼-1".as_bytes())
    );
    let decrypted = dir.path().join("decrypted.xlsx");
    let wrong = breakglass_e2e::office_decrypt(stored, "not the passphrase at all", &decrypted)
        .unwrap_err();
    assert!(
        wrong.to_lowercase().contains("password") || wrong.to_lowercase().contains("key"),
        "{wrong}"
    );
    breakglass_e2e::office_decrypt(stored, PASSPHRASE, &decrypted).unwrap();
    check_workbook(&decrypted);

    // The scheduler recorded the run in PostgreSQL, stage by stage, with
    // what each destination holds.
    let log = breakglass_runlog::RunLog::connect(&db, &run_log_schema)
        .await
        .unwrap();
    let logged = wait_for_logged_run(&log, &run_id).await;
    assert_eq!(
        (
            logged.status.as_str(),
            logged.reason.as_str(),
            logged.requested_by.as_str()
        ),
        ("succeeded", "on_demand", "mavis-core")
    );
    assert_eq!(logged.rows, ROWS.len() as i64);
    assert_eq!(logged.destinations.len(), 1);
    assert_eq!(
        logged.destinations[0].sha256,
        finished.destinations[0].sha256
    );
    assert_eq!(
        logged.destinations[0].location,
        finished.destinations[0].location
    );
    let stages: Vec<String> = log
        .events_after(&run_id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.stage)
        .collect();
    assert_eq!(stages, ["triggered", "collected", "rendered", "finished"]);
    assert_eq!(log.list(10, None).await.unwrap()[0].run_id, run_id);

    // Give a second (duplicate) run a chance to show up, then count events.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let messages = read_stream(&iso.prefix).await.unwrap();
    let count = |suffix: &str| {
        messages
            .iter()
            .filter(|m| m.subject.ends_with(suffix))
            .count()
    };
    assert_eq!(count(".trigger"), 1, "the duplicate trigger was not stored");
    assert_eq!(count(".snapshot.ready"), 1);
    assert_eq!(count(".workbook.ready"), 1);
    assert_eq!(
        count(&format!(".run.finished.{run_id}")),
        1,
        "exactly one run"
    );
    assert!(
        messages.iter().all(|m| !m.subject.contains(".dead.")),
        "nothing dead-lettered"
    );
    // One trace across the services: the collector starts it (the core's
    // trigger carries none here), every later event continues it.
    let trace_ids: Vec<String> = messages
        .iter()
        .filter(|m| !m.subject.ends_with(".trigger"))
        .map(|m| {
            let parent = m
                .headers
                .iter()
                .find(|(k, _)| k == "traceparent")
                .map(|(_, v)| v.clone());
            let parent = parent.unwrap_or_else(|| panic!("{} carries no trace context", m.subject));
            parent
                .split('-')
                .nth(1)
                .expect("W3C traceparent")
                .to_string()
        })
        .collect();
    assert_eq!(trace_ids.len(), 3);
    assert!(
        trace_ids
            .iter()
            .all(|id| id == &trace_ids[0] && id != &"0".repeat(32)),
        "{trace_ids:?}"
    );
    // Every service's log lines for the run carry that trace id and the run id.
    for name in ["collector", "renderer", "uploader"] {
        let log = services.iter().find(|s| s.name == name).unwrap().log_text();
        let line = log
            .lines()
            .find(|l| l.contains("message received") && l.contains(&run_id))
            .unwrap_or_else(|| panic!("{name} logged no line for the run:\n{log}"));
        assert!(
            line.contains(&format!("\"trace_id\":\"{}\"", trace_ids[0])),
            "{name}: {line}"
        );
    }

    // `breakglass trigger --wait` runs it again the way an admin would.
    let output = std::process::Command::new(breakglass_e2e::bin("breakglass"))
        .args([
            "trigger",
            "--config",
            config.to_str().unwrap(),
            "--reason",
            "e2e via CLI",
            "--wait",
            "--timeout",
            "120",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(": triggered"), "{stdout}");
    assert!(
        stdout.contains("RUN_STATUS_SUCCEEDED (8 rows, 4 projects, 0 warnings)"),
        "{stdout}"
    );
    assert!(stdout.contains("breakglass-backup.xlsx"), "{stdout}");

    // `breakglass status`: fresh now, stale against a zero-hour limit.
    let status = |max_age: &str| {
        std::process::Command::new(breakglass_e2e::bin("breakglass"))
            .args([
                "status",
                "--config",
                config.to_str().unwrap(),
                "--max-age",
                max_age,
            ])
            .output()
            .unwrap()
    };
    let fresh = status("26");
    let text = String::from_utf8_lossy(&fresh.stdout).into_owned();
    assert!(
        fresh.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&fresh.stderr)
    );
    assert!(
        text.contains(&finished.destinations[0].destination),
        "{text}"
    );
    assert!(text.contains("newest copy: "), "{text}");
    assert!(text.contains("RUN_STATUS_SUCCEEDED"), "{text}");
    let stale = status("0");
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stdout).contains("STALE"));

    // Health, readiness and the freshness metric, as Kubernetes and
    // Prometheus see them.
    let uploader = services.iter_mut().find(|s| s.name == "uploader").unwrap();
    assert_eq!(uploader.http_get("/healthz").await.unwrap().0, 200);
    assert_eq!(uploader.http_get("/readyz").await.unwrap().0, 200);
    let (status, metrics) = uploader.http_get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    let destination = &finished.destinations[0].destination;
    assert!(
        metrics.contains(&format!(
            "breakglass_last_success_timestamp_seconds{{destination=\"{destination}\"}}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("breakglass_runs_finished_total{status=\"succeeded\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("breakglass_messages_total{stage=\"uploader\",outcome=\"ok\"} 2"),
        "{metrics}"
    );
    // A restarted uploader knows the last success from the stream at once.
    let mut fresh = ServiceProcess::start("uploader", &config, dir.path()).unwrap();
    let gauge =
        format!("breakglass_last_success_timestamp_seconds{{destination=\"{destination}\"}}");
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = fresh.http_get("/metrics").await.unwrap().1;
        if metrics.contains(&gauge) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.contains(&gauge),
        "a restarted uploader seeds its gauge: {metrics}"
    );
    drop(fresh);

    // Graceful shutdown on SIGTERM.
    for service in &mut services {
        let status = service.terminate(Duration::from_secs(15)).unwrap();
        assert!(
            status.success(),
            "{} exited with {status} on SIGTERM:\n{}",
            service.name,
            service.log_text()
        );
    }
    bus.close().await;
    drop_schema(&iso.schema).await;
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_renderer_mid_run_still_completes_the_run() {
    let iso = Isolation::new("kill");
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.csv");
    let file = std::fs::File::create(&inventory).unwrap();
    breakglass_collect::synthetic::write_csv(std::io::BufWriter::new(file), 150_000, 50, 7)
        .unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let inventory_url = inventory.display().to_string();
    let config = service_config(
        dir.path(),
        &iso,
        key.expose(),
        &[("inventory_url", inventory_url.as_str())],
    );
    let bus = connect(&iso).await;
    let _collector = ServiceProcess::start("collector", &config, dir.path()).unwrap();
    let _uploader = ServiceProcess::start("uploader", &config, dir.path()).unwrap();
    let mut renderer = ServiceProcess::start("renderer", &config, dir.path()).unwrap();

    let run_id = format!("kill-{}", iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    renderer
        .wait_for_log("rendering started", Duration::from_secs(120))
        .await
        .unwrap();
    renderer.kill();
    assert!(
        !renderer.log_text().contains("workbook stored"),
        "the kill came too late to be mid-run"
    );

    let mut restarted = ServiceProcess::start("renderer", &config, dir.path()).unwrap();
    let finished = bus
        .wait_for_run(&run_id, Duration::from_secs(180))
        .await
        .unwrap();
    let finished =
        finished.unwrap_or_else(|| panic!("run did not finish:\n{}", restarted.log_text()));
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}"
    );
    assert_eq!(finished.rows, 150_000);
    restarted
        .wait_for_log("\"delivery\":2", Duration::from_secs(5))
        .await
        .expect("the restarted renderer got the redelivered message");
    let messages = read_stream(&iso.prefix).await.unwrap();
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.subject.ends_with(".workbook.ready"))
            .count(),
        1
    );
    bus.close().await;
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_inventory_fails_the_run_with_a_dead_letter_and_no_file() {
    let iso = Isolation::new("bad");
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(&inventory, "Project,Vendor\nP,AWS\n").unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let inventory_url = inventory.display().to_string();
    let config = service_config(
        dir.path(),
        &iso,
        key.expose(),
        &[("inventory_url", inventory_url.as_str())],
    );
    let bus = connect(&iso).await;
    let _collector = ServiceProcess::start("collector", &config, dir.path()).unwrap();

    let run_id = format!("bad-{}", iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    let finished = bus
        .wait_for_run(&run_id, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the run is reported");
    assert_eq!(finished.status, v1::RunStatus::Failed as i32);
    assert_eq!(finished.failed_stage, "collect");
    assert_eq!(
        finished.error,
        format!(
            "{}:1: inventory header is wrong: column 2 is \"Vendor\", expected \"Provider\" (the header must be exactly: Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential)",
            inventory.display()
        )
    );
    let messages = read_stream(&iso.prefix).await.unwrap();
    let dead: Vec<_> = messages
        .iter()
        .filter(|m| m.subject == format!("{}.dead.collector", iso.prefix))
        .collect();
    assert_eq!(dead.len(), 1, "a permanent error is dead-lettered at once");
    let letter = breakglass_bus::Bus::read_dead_letter_unverified(&dead[0].payload).unwrap();
    assert_eq!(letter.deliveries, 1);
    assert!(letter.error.contains("inventory header is wrong"));
    assert!(
        !dir.path().join("out").exists(),
        "nothing written to the destination"
    );
    bus.close().await;
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_retried_then_dead_lettered() {
    let iso = Isolation::new("unreachable");
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://reader:canary-db-password@127.0.0.1:{port}/inventory");
    let key = breakglass_bus::payload::PayloadKey::generate();
    let config = service_config(
        dir.path(),
        &iso,
        key.expose(),
        &[("inventory_url", url.as_str())],
    );
    let bus = connect(&iso).await;
    let collector = ServiceProcess::start("collector", &config, dir.path()).unwrap();

    let run_id = format!("unreachable-{}", iso.prefix);
    bus.trigger(&trigger(&run_id)).await.unwrap();
    let finished = bus
        .wait_for_run(&run_id, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the run is reported");
    assert_eq!(finished.status, v1::RunStatus::Failed as i32);
    assert!(
        finished.error.contains("cannot connect"),
        "{}",
        finished.error
    );
    assert!(
        finished.error.contains(&format!("127.0.0.1:{port}")),
        "names where: {}",
        finished.error
    );
    let messages = read_stream(&iso.prefix).await.unwrap();
    let dead: Vec<_> = messages
        .iter()
        .filter(|m| m.subject.ends_with(".dead.collector"))
        .collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        breakglass_bus::Bus::read_dead_letter_unverified(&dead[0].payload)
            .unwrap()
            .deliveries,
        3,
        "bounded redelivery: max_deliver"
    );
    for message in &messages {
        assert!(
            !String::from_utf8_lossy(&message.payload).contains("canary-db-password"),
            "{}",
            message.subject
        );
    }
    assert!(!collector.log_text().contains("canary-db-password"));
    bus.close().await;
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_destination_reports_on_its_own_and_one_failure_is_partial() {
    let iso = Isolation::new("multi");
    let moto = Moto::start();
    moto.tool(&["create-bucket", "team-backups"]);
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let endpoint = moto.endpoint.clone();
    let both = |bucket: &str| {
        vec![
            ("storage_provider", "s3,local".to_string()),
            ("s3_bucket", bucket.to_string()),
            ("s3_url", endpoint.clone()),
            ("s3_protocol", "http".to_string()),
            ("s3_access_key_id", "AKIATESTKEY".to_string()),
            ("s3_secret_access_key", "test-secret-access-key".to_string()),
            ("path_prefix", "mavis".to_string()),
        ]
    };
    let bus = connect(&iso).await;

    for (bucket, expected) in [
        ("team-backups", v1::RunStatus::Succeeded),
        ("missing-bucket", v1::RunStatus::PartiallyFailed),
    ] {
        let run_dir = dir.path().join(bucket);
        std::fs::create_dir_all(&run_dir).unwrap();
        let entries = both(bucket);
        let extra: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let config = service_config(&run_dir, &iso, key.expose(), &extra);
        let services: Vec<ServiceProcess> = ["collector", "renderer", "uploader"]
            .iter()
            .map(|name| ServiceProcess::start(name, &config, &run_dir).unwrap())
            .collect();
        let run_id = format!("multi-{bucket}-{}", iso.prefix);
        bus.trigger(&trigger(&run_id)).await.unwrap();
        let finished = bus
            .wait_for_run(&run_id, Duration::from_secs(120))
            .await
            .unwrap();
        let logs: String = services
            .iter()
            .map(|s| format!("--- {}\n{}", s.name, s.log_text()))
            .collect();
        let finished = finished.unwrap_or_else(|| panic!("run did not finish:\n{logs}"));
        assert_eq!(finished.status, expected as i32, "{finished:?}");
        assert_eq!(finished.destinations.len(), 2);
        let s3 = &finished.destinations[0];
        let local = &finished.destinations[1];
        assert!(s3.destination.starts_with("s3:"), "{s3:?}");
        assert_eq!(
            local.status,
            v1::RunStatus::Succeeded as i32,
            "the local copy is kept either way: {local:?}"
        );
        assert!(run_dir.join("out/mavis/breakglass-backup.xlsx").exists());
        if expected == v1::RunStatus::Succeeded {
            assert_eq!(
                s3.location,
                "s3://team-backups/mavis/breakglass-backup.xlsx"
            );
            let out = run_dir.join("from-s3.xlsx");
            moto.tool(&[
                "get",
                "team-backups",
                "mavis/breakglass-backup.xlsx",
                out.to_str().unwrap(),
            ]);
            let workbook: Xlsx<_> = open_workbook(&out).unwrap();
            assert!(workbook.sheet_names().len() > 1);
        } else {
            assert_eq!(s3.status, v1::RunStatus::Failed as i32);
            assert!(
                s3.error.contains("bucket missing-bucket does not exist"),
                "{}",
                s3.error
            );
            assert!(!s3.error.contains("test-secret-access-key"));
        }
        drop(services);
    }
    bus.close().await;
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_credentials_appear_nowhere_but_in_the_decrypted_workbook() {
    const CANARY_PASSWORD: &str = "CANARY-pw-7f3a9c2e";
    const CANARY_EXTRA: &str = "CANARY-extra-51e0b4d8";
    const CANARY_PASSPHRASE: &str = "CANARY-passphrase-0c9d7e6f";
    let canaries = [CANARY_PASSWORD, CANARY_EXTRA, CANARY_PASSPHRASE];
    let iso = Isolation::new("canary");
    let dir = tempfile::tempdir().unwrap();
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(
        &inventory,
        format!(
            "Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential\n\
             Vault,AWS,db-1,SSH,203.0.113.5,10.0.0.5,,22,password,root,{CANARY_PASSWORD},,{CANARY_EXTRA}\n\
             Vault,AWS,,SSH,203.0.113.6,10.0.0.6,,22,password,root,{CANARY_PASSWORD},,\n"
        ),
    )
    .unwrap();
    let temp = dir.path().join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let db = database_url();
    let inventory_url = inventory.display().to_string();
    let config = service_config(
        dir.path(),
        &iso,
        key.expose(),
        &[
            ("inventory_url", inventory_url.as_str()),
            ("encryption", "password"),
            ("encryption_passphrase", CANARY_PASSPHRASE),
            ("database_url", db.as_str()),
            ("database_schema", iso.schema.as_str()),
        ],
    );
    let bus = connect(&iso).await;
    let services: Vec<ServiceProcess> = ["scheduler", "collector", "renderer", "uploader"]
        .iter()
        .map(|name| {
            ServiceProcess::start_with_env(name, &config, dir.path(), &[("TMPDIR", temp.as_path())])
                .unwrap()
        })
        .collect();
    let run_id = format!("canary-{}", iso.prefix);
    let finished = run_to_success(&bus, &run_id).await;
    assert_eq!(
        finished.warning_count, 1,
        "the row without a device name is kept and named: {finished:?}"
    );
    // The scheduler records the run in PostgreSQL before it is stopped.
    let log = breakglass_runlog::RunLog::connect(&db, &iso.schema)
        .await
        .unwrap();
    let logged = wait_for_logged_run(&log, &run_id).await;
    assert_eq!(logged.status, "succeeded");
    drop(services);

    let found_in = |what: &str, bytes: &[u8]| {
        for canary in canaries {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{canary} leaked into {what}"
            );
        }
    };
    // Every log line of every service.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            found_in(&path.display().to_string(), &std::fs::read(&path).unwrap());
        }
    }
    // Every message on the bus, headers included.
    for message in read_stream(&iso.prefix).await.unwrap() {
        found_in(&message.subject, &message.payload);
        found_in(
            &format!("{} headers", message.subject),
            format!("{:?}", message.headers).as_bytes(),
        );
    }
    // The object store as the server keeps it.
    let objects = read_object_store(&iso.prefix).await.unwrap();
    assert!(
        objects.len() >= 2,
        "snapshot and workbook payloads are stored"
    );
    for message in &objects {
        found_in(
            &format!("object store {}", message.subject),
            &message.payload,
        );
    }
    // Every row of every table of the run log in PostgreSQL.
    let mut pg = PgConnection::connect(&db).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(&iso.schema)
    .fetch_all(&mut pg)
    .await
    .unwrap();
    assert!(tables.len() >= 3, "the run log's tables exist: {tables:?}");
    for table in &tables {
        let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT t::text FROM {}.{table} t",
            iso.schema
        )))
        .fetch_all(&mut pg)
        .await
        .unwrap();
        for row in rows {
            found_in(&format!("database table {table}"), row.as_bytes());
        }
    }
    // The services' temp directory is left empty.
    let left: Vec<_> = walk(&temp);
    assert!(left.is_empty(), "temp files left behind: {left:?}");
    // The stored file is encrypted: no canary in its bytes...
    let stored = Path::new(&finished.destinations[0].location);
    found_in("the stored workbook", &std::fs::read(stored).unwrap());
    // ...and the decrypted workbook does hold them, so the search above
    // would have found a leak.
    let decrypted = dir.path().join("decrypted.xlsx");
    breakglass_e2e::office_decrypt(stored, CANARY_PASSPHRASE, &decrypted).unwrap();
    let mut workbook: Xlsx<_> = open_workbook(&decrypted).unwrap();
    let vault = workbook.worksheet_range("Vault").unwrap();
    assert!(
        vault
            .used_cells()
            .any(|(_, _, c)| matches!(c, Data::String(s) if s == CANARY_PASSWORD))
    );
    assert!(
        vault
            .used_cells()
            .any(|(_, _, c)| matches!(c, Data::String(s) if s == CANARY_EXTRA))
    );
    bus.close().await;
    iso.cleanup_bus().await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.push(path.clone());
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Every cell of every tab but the Summary (which names the run and its
/// time), tab by tab in workbook order.
fn data_tabs(path: &Path) -> Vec<(String, Vec<Vec<String>>)> {
    let mut workbook: Xlsx<_> = open_workbook(path).expect("the workbook opens");
    workbook
        .sheet_names()
        .into_iter()
        .filter(|name| name != "Summary")
        .map(|name| {
            let rows = sheet(&mut workbook, &name);
            (name, rows)
        })
        .collect()
}

/// A snapshot stored in many runs (the collector stores one each time its
/// sort buffer fills, as it reads) renders, merged by the renderer, the
/// very workbook `run-once` writes from the same inventory: same tabs,
/// same rows in the same order, ties (equal device names) kept in
/// inventory order. Past the most runs a snapshot may have, the collector
/// merges the rest itself into the last run, so the event never names
/// more than `MAX_SNAPSHOT_RUNS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_many_runs_renders_the_workbook_run_once_writes() {
    use breakglass_bus::validate::MAX_SNAPSHOT_RUNS;
    let iso = Isolation::new("runs");
    let dir = tempfile::tempdir().unwrap();
    let rows_per_run = 7;
    // More rows than MAX_SNAPSHOT_RUNS runs of 7 hold: the last run is a
    // merge of several spilled ones.
    let rows = rows_per_run * (MAX_SNAPSHOT_RUNS + 10);
    let mut csv = breakglass_collect::CSV_HEADER.join(",") + "\n";
    for i in 0..rows {
        let project = ["b", "a", "Payments", "A-10", "A-9"][i % 5];
        let device = format!("{}-{}", ["web", "WEB", "db"][i % 3], (i * 7919) % 40);
        csv += &format!(
            "{project},aws,{device},ssh,10.0.0.{},,,22,ssh,acct{i},pw-{i},,\n",
            i % 250
        );
    }
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(&inventory, csv).unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let inventory_url = inventory.display().to_string();
    let config = service_config(
        dir.path(),
        &iso,
        key.expose(),
        &[("inventory_url", inventory_url.as_str())],
    );
    let bus = connect(&iso).await;
    let run_rows = rows_per_run.to_string();
    let _services: Vec<ServiceProcess> = vec![
        ServiceProcess::start_with_env(
            "collector",
            &config,
            dir.path(),
            &[("BREAKGLASS_SNAPSHOT_RUN_ROWS", Path::new(&run_rows))],
        )
        .unwrap(),
        ServiceProcess::start("renderer", &config, dir.path()).unwrap(),
        ServiceProcess::start("uploader", &config, dir.path()).unwrap(),
    ];
    let run_id = format!("runs-{}", iso.prefix);
    let finished = run_to_success(&bus, &run_id).await;
    assert_eq!(finished.rows, rows as u64);

    // The collector stored the snapshot as the most runs it may, all of
    // this run.
    let store = bus.payload_store().await.unwrap();
    let mut names = store.list().await.unwrap();
    let mut snapshot_runs = 0;
    use futures::StreamExt;
    while let Some(info) = names.next().await {
        let info = info.unwrap();
        if info.name.starts_with(&format!("{run_id}.")) && info.name.ends_with(".snapshot.age") {
            snapshot_runs += 1;
        }
    }
    assert_eq!(snapshot_runs, MAX_SNAPSHOT_RUNS);

    let run_once_dir = dir.path().join("run-once");
    std::fs::create_dir(&run_once_dir).unwrap();
    let run_once_config = write_config(
        &run_once_dir,
        &[
            ("local_dir", run_once_dir.join("out").to_str().unwrap()),
            ("encryption", "none"),
        ],
    );
    let output = std::process::Command::new(breakglass_e2e::bin("breakglass"))
        .args(["run-once", "--config"])
        .arg(&run_once_config)
        .arg("--inventory")
        .arg(&inventory)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let expected = data_tabs(&run_once_dir.join("out/breakglass-backup.xlsx"));
    let got = data_tabs(Path::new(&finished.destinations[0].location));
    assert_eq!(expected.len(), 5, "one tab per project");
    assert_eq!(
        expected.iter().map(|(_, r)| r.len() - 1).sum::<usize>(),
        rows
    );
    assert!(
        got == expected,
        "the pipeline's tabs differ from run-once's"
    );
    bus.close().await;
    iso.cleanup_bus().await;
}
