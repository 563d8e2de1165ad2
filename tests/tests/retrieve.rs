//! The emergency path as the on-call person runs it: `run-once` stores a
//! backup with a write-only credential, then `fetch`, `verify`, `show` and
//! `drill` get it back with a separate read-only account — against moto
//! with IAM enforced and against Azurite — and every bad input gets one
//! clear message and a non-zero exit.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::{Azurite, Moto, bin};
use calamine::{Reader, Xlsx, open_workbook};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASSPHRASE: &str = "Correct-Horse-Battery-9";
const CANARY: &str = "Canary-Vault-Pw-4711";

fn breakglass(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin("breakglass"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("BREAKGLASS_PASSPHRASE");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("breakglass runs")
}

/// `breakglass fetch --config CONFIG [--out OUT] EXTRA...`.
fn fetch(
    dir: &Path,
    config: &str,
    out: Option<&Path>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let mut args = vec!["fetch", "--config", config];
    if let Some(out) = out {
        args.extend(["--out", out.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    breakglass(dir, &args, env)
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// A small inventory with one device whose password is the canary.
fn canary_inventory(dir: &Path) -> PathBuf {
    write(
        dir,
        "inventory.csv",
        &format!(
            "Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential\n\
             Vault,AWS,vault-db-01,SSH,198.51.100.7,10.9.0.7,,2222,password,breakglass,{CANARY},,\n\
             Vault,AWS,vault-db-02,SSH,198.51.100.8,10.9.0.8,,22,password,root,other-pw,,\n\
             Web,GCP,web-01,RDP,,10.1.0.1,,3389,password,Administrator,0012,,\n"
        ),
    )
}

fn s3_config(moto: &Moto, key: &(String, String), extra: &str) -> String {
    format!(
        "storage_provider: s3\ns3_bucket: vault\ns3_url: {}\ns3_protocol: http\ns3_region: us-east-1\n\
         s3_access_key_id: {}\ns3_secret_access_key: {}\npath_prefix: prod\n{extra}",
        moto.endpoint, key.0, key.1
    )
}

fn only_file_ending(dir: &Path, ending: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ending))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backup_is_fetched_verified_shown_and_drilled_with_a_read_only_account() {
    let mut moto = Moto::start();
    moto.tool(&["create-bucket", "vault"]);
    let writer = moto.iam_user(
        "writer",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:PutObject"],"Resource":"arn:aws:s3:::vault/*"}]}"#,
    );
    let reader = moto.iam_user(
        "reader",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":["arn:aws:s3:::vault","arn:aws:s3:::vault/*"]}]}"#,
    );
    moto.enforce_iam();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let writer_conf = write(
        d,
        "writer.conf",
        &s3_config(
            &moto,
            &writer,
            &format!(
                "rotation: unique\nencryption: password\nencryption_passphrase: {PASSPHRASE}\n"
            ),
        ),
    );
    let reader_conf = write(d, "reader.conf", &s3_config(&moto, &reader, ""));
    let writer_path = writer_conf.to_str().unwrap();
    let reader_path = reader_conf.to_str().unwrap();

    // An older backup of the bundled sample, then the newest of the canary
    // inventory: fetch must choose the newest.
    let first = breakglass(d, &["run-once", "--config", writer_path], &[]);
    assert!(first.status.success(), "{}", text(&first).1);
    let inventory = canary_inventory(d);
    let second = breakglass(
        d,
        &[
            "run-once",
            "--config",
            writer_path,
            "--inventory",
            inventory.to_str().unwrap(),
        ],
        &[],
    );
    assert!(second.status.success(), "{}", text(&second).1);
    let keys = moto.tool(&["list", "vault", "prod/"]);
    assert_eq!(
        keys.matches(".manifest.json").count(),
        2,
        "a sidecar per backup: {keys}"
    );

    let out = d.join("out");
    let fetched = fetch(
        d,
        reader_path,
        Some(&out),
        &[],
        &[("BREAKGLASS_PASSPHRASE", PASSPHRASE)],
    );
    let (_, stderr) = text(&fetched);
    assert!(fetched.status.success(), "{stderr}");
    assert!(
        stderr.contains("matches") || stderr.contains("as its manifest records"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(PASSPHRASE) && !stderr.contains(CANARY),
        "{stderr}"
    );
    let decrypted = only_file_ending(&out, ".decrypted.xlsx");
    // The newest backup, read back by an independent reader.
    let mut workbook: Xlsx<_> = open_workbook(&decrypted).unwrap();
    assert_eq!(workbook.sheet_names(), vec!["Summary", "Vault", "Web"]);
    let vault = workbook.worksheet_range("Vault").unwrap();
    assert_eq!(vault.get_value((1, 9)).unwrap().to_string(), CANARY);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&decrypted).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the decrypted workbook is private");
    }

    // verify: the stored copy against the manifest written beside it.
    let stored_copy = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".xlsx") && !name.ends_with(".decrypted.xlsx")
        })
        .unwrap();
    let verified = breakglass(d, &["verify", stored_copy.to_str().unwrap()], &[]);
    let (stdout, stderr) = text(&verified);
    assert!(verified.status.success(), "{stderr}");
    assert!(
        stdout.contains("OK") && stdout.contains("3 rows in 2 projects"),
        "{stdout}"
    );
    assert!(stdout.contains("key id passphrase "), "{stdout}");

    // show: from the decrypted file, and from the stored one with the passphrase.
    let shown = breakglass(
        d,
        &["show", "VAULT-DB-01", "--file", decrypted.to_str().unwrap()],
        &[],
    );
    let (stdout, stderr) = text(&shown);
    assert!(shown.status.success(), "{stderr}");
    assert!(
        stdout.contains(CANARY) && stdout.contains("2222") && stdout.contains("breakglass"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("other-pw"),
        "an exact match shows that device only: {stdout}"
    );
    let shown = breakglass(
        d,
        &["show", "web-01", "--file", stored_copy.to_str().unwrap()],
        &[("BREAKGLASS_PASSPHRASE", PASSPHRASE)],
    );
    let (stdout, stderr) = text(&shown);
    assert!(shown.status.success(), "{stderr}");
    assert!(
        stdout.contains("0012") && stdout.contains("3389"),
        "{stdout}"
    );
    let missing = breakglass(
        d,
        &[
            "show",
            "no-such-host",
            "--file",
            decrypted.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).1.contains("no device name contains"),
        "{}",
        text(&missing).1
    );

    // --stdout-table prints every row instead of writing a workbook.
    let table = fetch(
        d,
        reader_path,
        None,
        &["--stdout-table"],
        &[("BREAKGLASS_PASSPHRASE", PASSPHRASE)],
    );
    let (stdout, stderr) = text(&table);
    assert!(table.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 4, "header and three rows: {stdout}");
    assert!(
        stdout
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("Vault\tAWS\tvault-db-01"),
        "{stdout}"
    );

    // The drill, unattended, with the passphrase from a file.
    let passphrase_file = write(d, "pass.txt", &format!("{PASSPHRASE}\n"));
    let drill = breakglass(
        d,
        &[
            "drill",
            "--config",
            reader_path,
            "--passphrase-file",
            passphrase_file.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    let (stdout, stderr) = text(&drill);
    assert!(drill.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["passed"], true, "{report}");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    assert!(steps.iter().all(|s| s["status"] == "ok"), "{report}");
    assert!(
        steps[3]["detail"]
            .as_str()
            .unwrap()
            .contains("3 rows in 2 projects"),
        "{report}"
    );

    // --- Bad input, each one message and a non-zero exit ---
    // A wrong passphrase names the key id the file needs, never the value.
    let wrong = fetch(
        d,
        reader_path,
        Some(&d.join("wrong")),
        &[],
        &[("BREAKGLASS_PASSPHRASE", "Not-The-Pass-77")],
    );
    let (_, stderr) = text(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("passphrase does not open") && stderr.contains("key id"),
        "{stderr}"
    );
    assert!(!stderr.contains("Not-The-Pass-77"), "{stderr}");
    // No passphrase anywhere and no terminal: say how to give one.
    let none = fetch(d, reader_path, Some(&d.join("none")), &[], &[]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        text(&none).1.contains("BREAKGLASS_PASSPHRASE"),
        "{}",
        text(&none).1
    );
    // Nothing under the prefix.
    let empty = fetch(
        d,
        reader_path,
        Some(&d.join("e")),
        &["--set", "path_prefix=nothing-here"],
        &[("BREAKGLASS_PASSPHRASE", PASSPHRASE)],
    );
    assert_eq!(empty.status.code(), Some(1));
    assert!(
        text(&empty).1.contains("no breakglass backup under"),
        "{}",
        text(&empty).1
    );
    // Older than --max-age: fetched and verified, but exit 2 with a warning;
    // the drill fails.
    let stale = fetch(
        d,
        reader_path,
        Some(&d.join("stale")),
        &["--max-age", "0.00001"],
        &[("BREAKGLASS_PASSPHRASE", PASSPHRASE)],
    );
    assert_eq!(stale.status.code(), Some(2), "{}", text(&stale).1);
    assert!(
        text(&stale).1.contains("older than the allowed"),
        "{}",
        text(&stale).1
    );
    let stale_drill = breakglass(
        d,
        &[
            "drill",
            "--config",
            reader_path,
            "--max-age",
            "0.00001",
            "--passphrase-file",
            passphrase_file.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, _) = text(&stale_drill);
    assert_eq!(stale_drill.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED  freshness") && stdout.contains("skipped"),
        "{stdout}"
    );
    // A manifest that does not match the file.
    let manifest_path = PathBuf::from(format!("{}.manifest.json", stored_copy.display()));
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    let sha = serde_json::from_str::<serde_json::Value>(&manifest).unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(&manifest_path, manifest.replace(&sha, &"0".repeat(64))).unwrap();
    let mismatch = breakglass(d, &["verify", stored_copy.to_str().unwrap()], &[]);
    assert_eq!(mismatch.status.code(), Some(1));
    assert!(
        text(&mismatch).1.contains("does not match its manifest"),
        "{}",
        text(&mismatch).1
    );
    // A revoked (wrong) reader key: the drill fails at its first step.
    let revoked = write(
        d,
        "revoked.conf",
        &s3_config(&moto, &(reader.0.clone(), "x".repeat(40)), ""),
    );
    let revoked_drill = breakglass(
        d,
        &[
            "drill",
            "--config",
            revoked.to_str().unwrap(),
            "--passphrase-file",
            passphrase_file.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, _) = text(&revoked_drill);
    assert_eq!(revoked_drill.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED  download and verify") && stdout.contains("s3_secret_access_key"),
        "{stdout}"
    );
    assert!(!stdout.contains(&"x".repeat(40)), "{stdout}");
    // --record: the drill's result goes to the run log, and the scheduler
    // (what Prometheus scrapes) exports when each destination last passed
    // and last failed a drill.
    let iso = breakglass_e2e::Isolation::new("drill");
    let db = breakglass_e2e::database_url();
    let recording = write(
        d,
        "recording.conf",
        &s3_config(
            &moto,
            &reader,
            &format!("database_url: {db}\ndatabase_schema: {}\n", iso.schema),
        ),
    );
    let recording_path = recording.to_str().unwrap();
    // The scheduler creates and migrates the run log; the drill only
    // inserts into it (here the test plays the scheduler's part first).
    let log = breakglass_runlog::RunLog::connect(&db, &iso.schema)
        .await
        .unwrap();
    for (max_age, expected) in [("26", 0), ("0.00001", 1)] {
        let drill = breakglass(
            d,
            &[
                "drill",
                "--config",
                recording_path,
                "--record",
                "--max-age",
                max_age,
                "--passphrase-file",
                passphrase_file.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(
            drill.status.code(),
            Some(expected),
            "{}{}",
            text(&drill).0,
            text(&drill).1
        );
    }
    let times = log.drill_times().await.unwrap();
    assert_eq!(times.len(), 1, "{times:?}");
    assert!(
        times[0].destination.starts_with("s3:")
            && times[0].last_pass.is_some()
            && times[0].last_fail.is_some()
    );
    let no_db = breakglass(d, &["drill", "--config", reader_path, "--record"], &[]);
    assert_eq!(no_db.status.code(), Some(1));
    assert!(
        text(&no_db).1.contains("set database_url"),
        "{}",
        text(&no_db).1
    );
    let key = breakglass_bus::payload::PayloadKey::generate();
    let nats = breakglass_e2e::nats_url();
    let scheduler_conf = d.join("scheduler");
    std::fs::create_dir_all(&scheduler_conf).unwrap();
    let scheduler_conf = breakglass_e2e::write_config(
        &scheduler_conf,
        &[
            ("nats_url", nats.as_str()),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", key.expose()),
            ("encryption", "none"),
            ("database_url", db.as_str()),
            ("database_schema", iso.schema.as_str()),
        ],
    );
    let mut scheduler =
        breakglass_e2e::ServiceProcess::start("scheduler", &scheduler_conf, d).unwrap();
    scheduler
        .wait_for_log(
            "recording runs in the run log",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let metrics = loop {
        let (_, body) = scheduler.http_get("/metrics").await.unwrap();
        if body.contains("breakglass_drill_last_failure_timestamp_seconds{")
            || std::time::Instant::now() > deadline
        {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        metrics.contains("breakglass_drill_last_success_timestamp_seconds{destination=\"s3:"),
        "{metrics}"
    );
    assert!(
        metrics.contains("breakglass_drill_last_failure_timestamp_seconds{destination=\"s3:"),
        "{metrics}"
    );
    drop(scheduler);
    iso.cleanup_bus().await;

    // Tampered and truncated objects: refused, nothing left under the name.
    let newest = serde_json::from_str::<Vec<String>>(&moto.tool(&["list", "vault", "prod/"]))
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with(".xlsx"))
        .max()
        .unwrap();
    for mode in ["flip", "truncate"] {
        moto.tool(&["tamper", "vault", &newest, mode]);
        let target = d.join(format!("tampered-{mode}"));
        let tampered = fetch(
            d,
            reader_path,
            Some(&target),
            &[],
            &[("BREAKGLASS_PASSPHRASE", PASSPHRASE)],
        );
        let (_, stderr) = text(&tampered);
        assert_eq!(tampered.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("does not match its manifest"), "{stderr}");
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "no partial or unverified file is left"
        );
    }
}

fn age_keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let output = Command::new(breakglass_e2e::age_cli().with_file_name("age-keygen"))
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_owned();
    (path, public)
}

#[test]
fn azure_age_backup_opens_with_the_team_identity_only() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "vault"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (team, public) = age_keygen(d, "team.key");
    let (stranger, _) = age_keygen(d, "stranger.key");
    let endpoint = &azurite.endpoint;
    let writer = write(
        d,
        "writer.conf",
        &format!(
            "storage_provider: blob\nblob_container: vault\nblob_account_name: {}\nblob_account_key: {}\nblob_protocol: http\nblob_endpoint: {endpoint}\npath_prefix: prod\nrotation: overwrite\nencryption: age\nage_recipients: {public}\n",
            Azurite::ACCOUNT,
            Azurite::KEY
        ),
    );
    let inventory = canary_inventory(d);
    let stored = breakglass(
        d,
        &[
            "run-once",
            "--config",
            writer.to_str().unwrap(),
            "--inventory",
            inventory.to_str().unwrap(),
        ],
        &[],
    );
    assert!(stored.status.success(), "{}", text(&stored).1);
    // The break-glass account: a SAS that may only read and list.
    let sas = azurite.sas("vault", "rl");
    let reader = write(
        d,
        "reader.conf",
        &format!(
            "storage_provider: blob\nblob_container: vault\nblob_sas_token: {sas}\nblob_protocol: http\nblob_endpoint: {endpoint}\npath_prefix: prod\n"
        ),
    );
    let reader_path = reader.to_str().unwrap();

    let out = d.join("out");
    let fetched = fetch(
        d,
        reader_path,
        Some(&out),
        &["--identity", team.to_str().unwrap()],
        &[],
    );
    let (_, stderr) = text(&fetched);
    assert!(fetched.status.success(), "{stderr}");
    assert!(out.join("breakglass-backup.xlsx.age").exists());
    assert!(
        out.join("breakglass-backup.xlsx.age.manifest.json")
            .exists()
    );
    let decrypted = out.join("breakglass-backup.decrypted.xlsx");
    let mut workbook: Xlsx<_> = open_workbook(&decrypted).unwrap();
    let vault = workbook.worksheet_range("Vault").unwrap();
    assert_eq!(vault.get_value((1, 9)).unwrap().to_string(), CANARY);
    let verified = breakglass(
        d,
        &[
            "verify",
            out.join("breakglass-backup.xlsx.age").to_str().unwrap(),
        ],
        &[],
    );
    assert!(verified.status.success(), "{}", text(&verified).1);
    assert!(
        text(&verified).0.contains("encryption age"),
        "{}",
        text(&verified).0
    );

    let shown = breakglass(
        d,
        &[
            "show",
            "vault-db-01",
            "--file",
            out.join("breakglass-backup.xlsx.age").to_str().unwrap(),
            "--identity",
            team.to_str().unwrap(),
        ],
        &[],
    );
    assert!(shown.status.success(), "{}", text(&shown).1);
    assert!(text(&shown).0.contains(CANARY));

    // Another identity: refused, naming the recipient the file needs.
    let refused = fetch(
        d,
        reader_path,
        Some(&d.join("x")),
        &["--identity", stranger.to_str().unwrap()],
        &[],
    );
    let (_, stderr) = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("none of the age identities") && stderr.contains(&public),
        "{stderr}"
    );
    // No identity at all: say which flag.
    let missing = fetch(d, reader_path, Some(&d.join("y")), &[], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).1.contains("--identity"),
        "{}",
        text(&missing).1
    );

    let drill = breakglass(
        d,
        &[
            "drill",
            "--config",
            reader_path,
            "--identity",
            team.to_str().unwrap(),
        ],
        &[],
    );
    let (stdout, stderr) = text(&drill);
    assert!(drill.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("PASSED"), "{stdout}");
}
