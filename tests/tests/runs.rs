//! The run history over gRPC: the scheduler serves TriggerNow, GetRun,
//! ListRuns and WatchRun from the PostgreSQL run log, and `breakglass runs`
//! shows them — against real NATS, PostgreSQL and the four services.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::{Isolation, ServiceProcess, bin, database_url, nats_url, write_config};
use breakglass_proto::v1;
use breakglass_proto::v1::run_history_client::RunHistoryClient;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const TOKEN: &str = "run-history-token-0123456789";

fn runs(dir: &Path, addr: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(bin("breakglass"));
    command
        .arg("runs")
        .args(args)
        .current_dir(dir)
        .env("BREAKGLASS_GRPC_URL", format!("http://{addr}"))
        .env_remove("BREAKGLASS_GRPC_TOKEN")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    if let Some(token) = token {
        command.env("BREAKGLASS_GRPC_TOKEN", token);
    }
    command.output().unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_triggered_watched_listed_and_shown_over_grpc() {
    let iso = Isolation::new("runs");
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let nats = nats_url();
    let db = database_url();
    let out = dir.path().join("out").display().to_string();
    let config = write_config(
        dir.path(),
        &[
            ("nats_url", nats.as_str()),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", key.expose()),
            ("local_dir", out.as_str()),
            ("encryption", "none"),
            ("database_url", db.as_str()),
            ("database_schema", iso.schema.as_str()),
            ("grpc_token", TOKEN),
        ],
    );
    let addr = breakglass_e2e::free_loopback_addr();
    let mut scheduler = breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &addr).await;
    let _others: Vec<ServiceProcess> = ["collector", "renderer", "uploader"]
        .iter()
        .map(|name| ServiceProcess::start(name, &config, dir.path()).unwrap())
        .collect();
    let (status, body) = scheduler.http_get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");

    // TriggerNow + WatchRun through the CLI: the stages as they happen.
    let triggered = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        let addr = addr.clone();
        move || {
            runs(
                &dir,
                &addr,
                Some(TOKEN),
                &["trigger", "--note", "before maintenance"],
            )
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = text(&triggered);
    assert!(triggered.status.success(), "{stdout}{stderr}");
    let run_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("triggered run "))
        .unwrap()
        .to_owned();
    let stages: Vec<&str> = stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        stages,
        ["triggered", "collected", "rendered", "finished"],
        "{stdout}"
    );
    assert!(stdout.contains("succeeded: 48 rows"), "{stdout}");

    // ListRuns and GetRun through the CLI.
    let listed = runs(dir.path(), &addr, Some(TOKEN), &[]);
    let (stdout, stderr) = text(&listed);
    assert!(listed.status.success(), "{stderr}");
    let line = stdout.lines().find(|l| l.starts_with(&run_id)).unwrap();
    assert!(
        line.contains("on_demand") && line.contains("succeeded"),
        "{stdout}"
    );
    let shown = runs(dir.path(), &addr, Some(TOKEN), &["show", &run_id]);
    let (stdout, stderr) = text(&shown);
    assert!(shown.status.success(), "{stderr}");
    assert!(
        stdout.contains("before maintenance") && stdout.contains("breakglass-backup.xlsx"),
        "{stdout}"
    );

    // The API itself: NOT_FOUND for an unknown run; a watch of a finished
    // run replays its events and ends with the final one.
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RunHistoryClient::new(channel);
    let missing = client
        .get_run(breakglass_e2e::authorized(
            v1::GetRunRequest {
                run_id: "no-such-run".into(),
            },
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut events = client
        .watch_run(breakglass_e2e::authorized(
            v1::WatchRunRequest {
                run_id: run_id.clone(),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(event) = events.message().await.unwrap() {
        seen.push((event.stage, event.ends_run));
    }
    assert_eq!(seen.last(), Some(&("finished".to_owned(), true)));
    assert_eq!(seen.len(), 4);
    let run = client
        .get_run(breakglass_e2e::authorized(
            v1::GetRunRequest {
                run_id: run_id.clone(),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((run.status.as_str(), run.rows), ("succeeded", 48));
    assert_eq!(run.destinations.len(), 1);

    // No token, or a wrong one: refused, and the refusal is logged without it.
    let no_token = runs(dir.path(), &addr, None, &[]);
    assert_eq!(no_token.status.code(), Some(1));
    assert!(
        text(&no_token).1.contains("BREAKGLASS_GRPC_TOKEN"),
        "{}",
        text(&no_token).1
    );
    let wrong = "wrong-run-history-token-42";
    let refused = runs(dir.path(), &addr, Some(wrong), &[]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).1.to_lowercase().contains("bearer token"),
        "{}",
        text(&refused).1
    );
    scheduler
        .wait_for_log(
            "refused an unauthenticated gRPC call",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(!scheduler.log_text().contains(wrong));
    assert!(!scheduler.log_text().contains(TOKEN));
    iso.cleanup_bus().await;
}

#[test]
fn the_run_history_needs_a_database() {
    let iso = Isolation::new("runs_no_db");
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let nats = nats_url();
    let config = write_config(
        dir.path(),
        &[
            ("nats_url", nats.as_str()),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", key.expose()),
            ("encryption", "none"),
            ("grpc_token", TOKEN),
        ],
    );
    let output = Command::new(bin("scheduler"))
        .arg("--config")
        .arg(&config)
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("set database_url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_when_the_run_logs_postgresql_does_not_answer() {
    let iso = Isolation::new("runs_down");
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let nats = nats_url();
    // Nothing listens on port 1.
    let config = write_config(
        dir.path(),
        &[
            ("nats_url", nats.as_str()),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", key.expose()),
            ("encryption", "none"),
            (
                "database_url",
                "postgres://runlog:pg-canary-pw@127.0.0.1:1/breakglass",
            ),
        ],
    );
    let mut scheduler = ServiceProcess::start("scheduler", &config, dir.path()).unwrap();
    scheduler
        .wait_for_log("the run log is unavailable", Duration::from_secs(60))
        .await
        .unwrap();
    let (status, body) = scheduler.http_get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("PostgreSQL"), "{body}");
    // The schedule goes on meanwhile, and the password shows nowhere.
    assert!(
        scheduler.log_text().contains("next scheduled run")
            || scheduler.log_text().contains("on-demand runs only")
    );
    assert!(!scheduler.log_text().contains("pg-canary-pw") && !body.contains("pg-canary-pw"));
    iso.cleanup_bus().await;
}
