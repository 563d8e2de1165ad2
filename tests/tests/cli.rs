//! The `breakglass` command and the service binaries as a person runs them:
//! exit codes, the one-line errors, and what is (not) left on disk.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::bin;
use calamine::{Data, Reader, Xlsx, open_workbook};
use sqlx::{AssertSqlSafe, ConnectOptions};
use std::path::Path;
use std::process::{Command, Output};

fn breakglass(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("breakglass"))
        .args(args)
        .current_dir(dir)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("breakglass runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn run_once_with_no_arguments_writes_the_sample_workbook() {
    let dir = tempfile::tempdir().unwrap();
    let output = breakglass(dir.path(), &["run-once"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("48 rows in 6 projects"), "{stdout}");
    assert!(stdout.contains("stored"), "{stdout}");
    // Encrypted by default, with a passphrase made for this run and shown once.
    let marker = "encrypted with a new passphrase, shown only now: ";
    let passphrase = stdout
        .lines()
        .find_map(|l| l.split_once(marker).map(|(_, p)| p.trim().to_string()))
        .unwrap_or_else(|| panic!("no passphrase shown: {stdout}"));
    assert!(passphrase.len() >= 16);
    let stored = dir.path().join("breakglass-out/breakglass-backup.xlsx");
    assert!(
        open_workbook::<Xlsx<_>, _>(&stored).is_err(),
        "not readable without the passphrase"
    );
    let path = dir.path().join("decrypted.xlsx");
    breakglass_e2e::office_decrypt(&stored, &passphrase, &path).unwrap();
    let mut workbook: Xlsx<_> = open_workbook(&path).expect("an xlsx calamine can read");
    let names = workbook.sheet_names();
    assert_eq!(names.len(), 7, "{names:?}");
    assert_eq!(names[0], "Summary");
    assert!(names.iter().any(|n| n == "核心業務系統"), "{names:?}");
    assert!(names.iter().any(|n| n == "legacy_ops__old_"), "{names:?}");
    let payments = workbook.worksheet_range("Payments").unwrap();
    assert_eq!(payments.height(), 9, "header and 8 devices");
    assert!(
        payments
            .used_cells()
            .all(|(_, _, c)| matches!(c, Data::String(_))),
        "all text cells"
    );
}

#[test]
fn run_once_reads_a_sqlite_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inventory.sqlite");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql(AssertSqlSafe(
            "CREATE TABLE devices (project TEXT, provider TEXT, device_name TEXT, protocol TEXT, public_ip TEXT,
               private_ip TEXT, url TEXT, port INTEGER, access_type TEXT, account TEXT, password TEXT,
               pem_file_name TEXT, extra_credential TEXT);
             INSERT INTO devices VALUES ('Ops', 'GCP', 'vm-10', 'SSH', NULL, '10.1.1.1', NULL, 22, 'key', 'ubuntu', NULL, 'vm.pem', NULL);
             INSERT INTO devices VALUES ('Ops', 'GCP', 'vm-9', 'RDP', NULL, '10.1.1.2', NULL, 3389, 'password', 'admin', '=SUM(A1)', NULL, NULL);
             CREATE VIEW breakglass_inventory AS SELECT * FROM devices;"
                .to_string(),
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    });
    let out = dir.path().join("out");
    let output = breakglass(
        dir.path(),
        &[
            "run-once",
            "--inventory",
            db.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--encryption",
            "none",
        ],
    );
    assert!(
        stderr(&output).contains("UNENCRYPTED"),
        "encryption none always warns"
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let mut workbook: Xlsx<_> = open_workbook(out.join("breakglass-backup.xlsx")).unwrap();
    let ops = workbook.worksheet_range("Ops").unwrap();
    let devices: Vec<String> = (1..3)
        .map(|r| ops.get((r, 1)).unwrap().to_string())
        .collect();
    assert_eq!(devices, ["vm-9", "vm-10"]);
    assert_eq!(ops.get((1, 9)), Some(&Data::String("=SUM(A1)".into())));
    assert_eq!(
        ops.get((2, 6)),
        Some(&Data::String("22".into())),
        "an integer port becomes text"
    );
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_input_gives_one_clear_line_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "Project,Provider,Device\n").unwrap();
    let short = dir.path().join("short.csv");
    std::fs::write(
        &short,
        "Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential\nP,AWS,web-1\n",
    )
    .unwrap();
    let cases = [
        (
            bad.display().to_string(),
            format!(
                "{}:1: inventory header is wrong: column 3 is \"Device\", expected \"Device name\"",
                bad.display()
            ),
        ),
        (
            short.display().to_string(),
            format!(
                "{}:2: field \"row\": expected 13 fields, found 3",
                short.display()
            ),
        ),
        (
            "/nonexistent/inventory.csv".to_string(),
            "/nonexistent/inventory.csv: cannot read inventory file".to_string(),
        ),
        (
            format!(
                "postgres://reader:canary-pw@127.0.0.1:{}/inv",
                closed_port()
            ),
            "cannot connect".to_string(),
        ),
        (
            "inventory.xls".to_string(),
            "--: inventory_url = \"inventory.xls\": must be a postgres://"
                .replace("--", "--inventory"),
        ),
    ];
    for (inventory, expected) in cases {
        let output = breakglass(dir.path(), &["run-once", "--inventory", &inventory]);
        let err = stderr(&output);
        assert!(!output.status.success(), "{inventory} must fail");
        assert!(
            err.contains(&expected),
            "{inventory}: expected {expected:?} in {err:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !err.contains("canary-pw"),
            "the database password is masked: {err}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one error line for {inventory}: {err}"
        );
        assert!(
            !dir.path().join("breakglass-out").exists(),
            "nothing written for {inventory}"
        );
    }
}

#[test]
fn config_check_reports_every_problem_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.conf");
    std::fs::write(
        &file,
        "execute_time: 24:00\ntime_zone: Mars/Base\nexecute_tim: 09:30\npayload_key: canary-not-a-key\nrotation: overwrite\n",
    )
    .unwrap();
    let output = breakglass(dir.path(), &["config", "check", file.to_str().unwrap()]);
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(err.contains("secret.conf:3: execute_tim"), "{err}");
    assert!(err.contains("did you mean `execute_time`"), "{err}");
    assert!(!err.contains("canary"), "{err}");
    std::fs::write(
        &file,
        "execute_time: 24:00\ntime_zone: Mars/Base\npayload_key: canary-not-a-key\n",
    )
    .unwrap();
    let output = breakglass(dir.path(), &["config", "check", file.to_str().unwrap()]);
    let err = stderr(&output);
    assert!(
        err.contains("secret.conf:1: execute_time = \"24:00\": hour must be 00 to 23"),
        "{err}"
    );
    assert!(
        err.contains("secret.conf:2: time_zone = \"Mars/Base\""),
        "{err}"
    );
    assert!(
        err.contains("secret.conf:3: payload_key = \"********\""),
        "{err}"
    );
    assert!(err.contains("3 problem(s) found"), "{err}");
    assert!(!err.contains("canary"), "{err}");
}

#[test]
fn a_service_without_nats_exits_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let config = breakglass_e2e::write_config(
        dir.path(),
        &[
            ("nats_url", &format!("nats://127.0.0.1:{port}")),
            ("payload_key", key.expose()),
            ("encryption", "none"),
        ],
    );
    for service in ["collector", "renderer", "uploader", "scheduler"] {
        let output = Command::new(bin(service))
            .args(["--config", config.to_str().unwrap()])
            .env("BREAKGLASS_LOG_FORMAT", "text")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{service}");
        let err = stderr(&output);
        let last = err
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        assert!(
            last.starts_with(&format!(
                "{service}: cannot connect to NATS at nats://127.0.0.1:{port}"
            )),
            "{service}: {err}"
        );
        assert!(
            !err.contains(key.expose()),
            "{service} leaked the payload key"
        );
    }
}

#[test]
fn generate_writes_a_readable_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("gen.csv");
    let output = breakglass(
        dir.path(),
        &[
            "generate",
            "--rows",
            "2000",
            "--projects",
            "30",
            "--out",
            csv.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let output = breakglass(
        dir.path(),
        &["run-once", "--inventory", csv.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("2000 rows in 30 projects"));
}

#[test]
fn run_once_with_age_opens_only_with_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let keygen = |name: &str| {
        let path = dir.path().join(name);
        let status = Command::new(breakglass_e2e::age_cli().with_file_name("age-keygen"))
            .arg("-o")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let public = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .unwrap()
            .to_string();
        (path, public)
    };
    let (identity, public) = keygen("team.key");
    let (stranger, _) = keygen("stranger.key");
    let config = dir.path().join("breakglass.conf");
    std::fs::write(
        &config,
        format!("encryption: age\nage_recipients: {public}\n"),
    )
    .unwrap();
    let output = breakglass(
        dir.path(),
        &["run-once", "--config", config.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let stored = dir.path().join("breakglass-out/breakglass-backup.xlsx.age");
    assert!(stored.exists(), "an age file gets its own name");

    let decrypt = |key: &Path, out: &Path| {
        Command::new(breakglass_e2e::age_cli())
            .arg("-d")
            .arg("-i")
            .arg(key)
            .arg("-o")
            .arg(out)
            .arg(&stored)
            .output()
            .unwrap()
    };
    let refused = decrypt(&stranger, &dir.path().join("no.xlsx"));
    assert!(!refused.status.success(), "another identity cannot open it");
    let plain = dir.path().join("plain.xlsx");
    let opened = decrypt(&identity, &plain);
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let mut workbook: Xlsx<_> = open_workbook(&plain).unwrap();
    assert_eq!(workbook.sheet_names().len(), 7);
    assert!(workbook.worksheet_range("Payments").unwrap().height() > 1);
}

#[test]
fn config_secret_writes_a_checked_manifest_without_taking_secrets_from_argv_silently() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(bin("breakglass"));
        command.args(args).current_dir(d);
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    };
    let base = [
        "config",
        "secret",
        "--name",
        "bg-config",
        "--namespace",
        "mavis",
        "--set",
        "storage_provider=s3",
        "--set",
        "s3_bucket=mavis-breakglass",
        "--set",
        "s3_access_key_id=AKIAEXAMPLE",
        "--set",
        "execute_time=02:30",
        "--set",
        "time_zone=Asia/Taipei",
    ];
    // Secrets from the environment: no warning, and the manifest holds them.
    let out = d.join("secret.yaml");
    // A file already there with a wide mode is replaced, not reused.
    std::fs::write(&out, "old").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut args = base.to_vec();
    args.extend(["--out", out.to_str().unwrap()]);
    let output = run(
        &args,
        &[
            ("BREAKGLASS_S3_SECRET_ACCESS_KEY", "env-secret-key-123"),
            ("BREAKGLASS_ENCRYPTION_PASSPHRASE", "env-passphrase-456"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("warning"), "{}", stderr(&output));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the manifest holds credentials: private");
    }
    // An independent YAML reader takes the manifest apart; the file inside
    // passes `config check` and kept `02:30` a time.
    let conf = d.join("from-manifest.conf");
    let extract = Command::new(breakglass_e2e::test_python())
        .args([
            "-c",
            "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); \
             assert d['kind'] == 'Secret' and d['metadata']['name'] == 'bg-config' and d['metadata']['namespace'] == 'mavis'; \
             open(sys.argv[2], 'w').write(d['stringData']['breakglass.conf'])",
        ])
        .arg(&out)
        .arg(&conf)
        .output()
        .unwrap();
    assert!(extract.status.success(), "{}", stderr(&extract));
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("execute_time: \"02:30\"\n"), "{text}");
    assert!(
        text.contains("s3_secret_access_key: \"env-secret-key-123\"\n"),
        "{text}"
    );
    assert!(
        text.contains("encryption_passphrase: \"env-passphrase-456\"\n"),
        "{text}"
    );
    let check = run(&["config", "check", conf.to_str().unwrap()], &[]);
    assert!(check.status.success(), "{}", stderr(&check));

    // A secret on argv works but warns, naming the safer way.
    let mut args = base.to_vec();
    args.extend([
        "--format",
        "file",
        "--set",
        "s3_secret_access_key=argv-secret",
        "--set",
        "encryption=none",
    ]);
    let output = run(&args, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("warning: s3_secret_access_key given on the command line")
            && stderr(&output).contains("BREAKGLASS_S3_SECRET_ACCESS_KEY"),
        "{}",
        stderr(&output)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("# breakglass settings"));

    // Bad values: every problem at once, exit 1, nothing written.
    let bad_out = d.join("bad.yaml");
    let output = run(
        &[
            "config",
            "secret",
            "--set",
            "execute_time=24:00",
            "--set",
            "time_zone=Mars/Base",
            "--set",
            "storage_provider=s3",
            "--set",
            "s3_bucket=",
            "--out",
            bad_out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("execute_time") && err.contains("24:00") && err.contains("time_zone"),
        "{err}"
    );
    assert!(!bad_out.exists());
}
