//! TLS to the inventory and run-log databases (issue #12 part 1), against
//! real PostgreSQL servers of the tests' own: one that accepts only TLS
//! with a certificate from a test CA, one that speaks only plain text.
//!
//! The server certificate names only this machine's host name (a name that
//! is not `localhost` and not a loopback address, so the policy treats it
//! as remote and defaults to `verify-full`), which resolves to this machine.
//! Every `breakglass` run gets `SSL_CERT_FILE` pointing at an unrelated CA,
//! so the system roots never hold the test CA and only `sslrootcert` /
//! `ca_bundle` can make the server trusted.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::{TestCa, TestPostgres, bin};
use std::path::Path;
use std::process::{Command, Output};

const READER_PASSWORD: &str = "canary-Reader-pw-4471";
const OWNER_PASSWORD: &str = "canary-Owner-pw-9035";

/// This machine's host name: not `localhost`, not an IP address, and it
/// resolves to an address of this machine (the servers listen on all).
fn remote_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    assert!(
        !name.is_empty() && name != "localhost" && name.parse::<std::net::IpAddr>().is_err(),
        "the tests need a host name other than localhost, got {name:?}"
    );
    use std::net::ToSocketAddrs;
    assert!(
        (name.as_str(), 5432).to_socket_addrs().is_ok(),
        "the host name {name:?} must resolve"
    );
    name
}

/// A TLS-only server whose certificate names only [`remote_name`].
fn tls_server(ca: &TestCa, dir: &Path) -> TestPostgres {
    let (cert, key) = ca.server_cert(&[&remote_name()], dir);
    TestPostgres::start(Some((&cert, &key)))
}

fn run_once(dir: &Path, args: &[&str], unrelated_ca: &Path) -> Output {
    Command::new(bin("breakglass"))
        .arg("run-once")
        .args(args)
        .current_dir(dir)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("SSL_CERT_FILE", unrelated_ca)
        .env_remove("SSL_CERT_DIR")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGHOST")
        .env_remove("PGHOSTADDR")
        .output()
        .unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_read(output: &Output, what: &str) {
    let (out, err) = text(output);
    assert!(output.status.success(), "{what}: {out}{err}");
    assert!(out.contains("2 rows in 2 projects"), "{what}: {out}");
    assert!(
        !out.contains(READER_PASSWORD) && !err.contains(READER_PASSWORD),
        "{what}: the database password is masked"
    );
}

fn assert_one_line_failure(output: &Output, what: &str, expected: &[&str]) {
    let (out, err) = text(output);
    assert!(!output.status.success(), "{what} must fail: {out}{err}");
    for fragment in expected {
        assert!(
            err.contains(fragment),
            "{what}: expected {fragment:?} in {err:?}"
        );
    }
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    assert!(
        !err.contains(READER_PASSWORD),
        "{what}: password leaked: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
}

fn inventory_url(host: &str, port: u16, query: &str) -> String {
    format!("postgres://reader:{READER_PASSWORD}@{host}:{port}/inv{query}")
}

#[test]
fn the_collector_verifies_the_server_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let other = TestCa::generate();
    let server = tls_server(&ca, dir.path());
    server.create_inventory(READER_PASSWORD);
    let host = remote_name();
    let ca_pem = ca.ca_pem.to_str().unwrap();

    // No sslmode to a remote name: verify-full, trusting sslrootcert.
    let url = inventory_url(&host, server.port, &format!("?sslrootcert={ca_pem}"));
    assert_read(
        &run_once(dir.path(), &["--inventory", &url], &other.ca_pem),
        "default verify-full with sslrootcert",
    );
    // Written out, the same.
    let url = inventory_url(
        &host,
        server.port,
        &format!("?sslmode=verify-full&sslrootcert={ca_pem}"),
    );
    assert_read(
        &run_once(dir.path(), &["--inventory", &url], &other.ca_pem),
        "verify-full with sslrootcert",
    );

    // ca_bundle is trusted when no sslrootcert is given.
    let config = dir.path().join("ca.conf");
    std::fs::write(
        &config,
        format!(
            "inventory_url: {}\nca_bundle: {ca_pem}\n",
            inventory_url(&host, server.port, "")
        ),
    )
    .unwrap();
    assert_read(
        &run_once(
            dir.path(),
            &["--config", config.to_str().unwrap()],
            &other.ca_pem,
        ),
        "default verify-full with ca_bundle",
    );

    // An unknown CA: neither sslrootcert nor ca_bundle, and the system
    // roots (SSL_CERT_FILE) hold another CA.
    let url = inventory_url(&host, server.port, "");
    assert_one_line_failure(
        &run_once(dir.path(), &["--inventory", &url], &other.ca_pem),
        "unknown CA",
        &["not signed by a trusted CA", "sslrootcert", "ca_bundle"],
    );
    // sslrootcert names the wrong CA.
    let url = inventory_url(
        &host,
        server.port,
        &format!("?sslrootcert={}", other.ca_pem.display()),
    );
    assert_one_line_failure(
        &run_once(dir.path(), &["--inventory", &url], &other.ca_pem),
        "wrong sslrootcert",
        &["not signed by a trusted CA", "sslrootcert"],
    );

    // A name the certificate does not hold (localhost reaches the same
    // server), verify-full written out.
    let url = inventory_url(
        "localhost",
        server.port,
        &format!("?sslmode=verify-full&sslrootcert={ca_pem}"),
    );
    assert_one_line_failure(
        &run_once(dir.path(), &["--inventory", &url], &other.ca_pem),
        "wrong host name",
        &["localhost", "does not match", "sslmode=verify-ca"],
    );
    // verify-ca checks the CA but not the name.
    let url = inventory_url(
        "localhost",
        server.port,
        &format!("?sslmode=verify-ca&sslrootcert={ca_pem}"),
    );
    assert_read(
        &run_once(dir.path(), &["--inventory", &url], &other.ca_pem),
        "verify-ca by another name",
    );
    assert!(
        !server.log_text().contains(READER_PASSWORD),
        "the server never logs the password"
    );
}

#[test]
fn the_collector_refuses_a_plain_only_server_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let server = TestPostgres::start(None);
    server.create_inventory(READER_PASSWORD);
    let host = remote_name();
    let ca_pem = ca.ca_pem.to_str().unwrap();

    // No sslmode to a remote name: verify-full, and the server has no TLS.
    let url = inventory_url(&host, server.port, &format!("?sslrootcert={ca_pem}"));
    assert_one_line_failure(
        &run_once(dir.path(), &["--inventory", &url], &ca.ca_pem),
        "plain-only server, default",
        &["does not accept TLS", "sslmode=disable"],
    );
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = inventory_url(&host, server.port, &format!("?sslmode={mode}"));
        assert_one_line_failure(
            &run_once(dir.path(), &["--inventory", &url], &ca.ca_pem),
            mode,
            &["does not accept TLS", "sslmode=disable"],
        );
    }

    // Written out, plain text to a remote host works, and every run warns.
    for mode in ["disable", "prefer"] {
        let url = inventory_url(&host, server.port, &format!("?sslmode={mode}"));
        let output = run_once(dir.path(), &["--inventory", &url], &ca.ca_pem);
        assert_read(&output, mode);
        let (_, err) = text(&output);
        assert!(
            err.contains("inventory_url") && err.contains(&format!("sslmode={mode}")),
            "{mode}: the run warns: {err}"
        );
    }

    // Loopback without sslmode: TLS when offered, plain otherwise, no warning.
    let url = inventory_url("127.0.0.1", server.port, "");
    let output = run_once(dir.path(), &["--inventory", &url], &ca.ca_pem);
    assert_read(&output, "loopback default");
    assert!(!text(&output).1.contains("sslmode"), "{}", text(&output).1);
}

fn run_log_url(host: &str, port: u16, query: &str) -> String {
    format!("postgres://owner:{OWNER_PASSWORD}@{host}:{port}/runs{query}")
}

async fn run_log_error(url: &str) -> String {
    match breakglass_runlog::RunLog::connect(url, "bgt_tls").await {
        Ok(_) => panic!("{} must fail", url.replace(OWNER_PASSWORD, "***")),
        Err(err) => err.to_string(),
    }
}

fn assert_one_line(err: &str, what: &str, expected: &[&str]) {
    for fragment in expected {
        assert!(
            err.contains(fragment),
            "{what}: expected {fragment:?} in {err:?}"
        );
    }
    assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
    assert!(
        !err.contains(OWNER_PASSWORD),
        "{what}: password leaked: {err}"
    );
}

// The test CA is made afresh by this test, so no system root store (the
// test process's SSL_CERT_FILE) can hold it: only sslrootcert trusts it.
#[tokio::test]
async fn the_run_log_verifies_the_server_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let other = TestCa::generate();
    let server = tls_server(&ca, dir.path());
    server.create_run_log_database(OWNER_PASSWORD);
    let plain = TestPostgres::start(None);
    plain.create_run_log_database(OWNER_PASSWORD);
    let host = remote_name();
    let ca_pem = ca.ca_pem.to_str().unwrap();

    let url = run_log_url(&host, server.port, &format!("?sslrootcert={ca_pem}"));
    let log = breakglass_runlog::RunLog::connect(&url, "bgt_tls")
        .await
        .unwrap_or_else(|err| panic!("default verify-full with sslrootcert: {err}"));
    assert!(log.is_reachable().await);

    let err = run_log_error(&run_log_url(&host, server.port, "")).await;
    assert_one_line(
        &err,
        "unknown CA",
        &["not signed by a trusted CA", "sslrootcert"],
    );
    let err = run_log_error(&run_log_url(
        &host,
        server.port,
        &format!("?sslrootcert={}", other.ca_pem.display()),
    ))
    .await;
    assert_one_line(
        &err,
        "wrong CA",
        &["not signed by a trusted CA", "sslrootcert"],
    );
    let err = run_log_error(&run_log_url(
        "localhost",
        server.port,
        &format!("?sslmode=verify-full&sslrootcert={ca_pem}"),
    ))
    .await;
    assert_one_line(
        &err,
        "wrong host name",
        &["localhost", "does not match", "sslmode=verify-ca"],
    );
    let err = run_log_error(&run_log_url(
        &host,
        plain.port,
        &format!("?sslrootcert={ca_pem}"),
    ))
    .await;
    assert_one_line(
        &err,
        "plain-only server",
        &["does not accept TLS", "sslmode=disable"],
    );
    // Written out, plain text works.
    let url = run_log_url(&host, plain.port, "?sslmode=disable");
    let log = breakglass_runlog::RunLog::connect(&url, "bgt_tls")
        .await
        .unwrap_or_else(|err| panic!("sslmode=disable: {err}"));
    let warning = log.transport_warning().unwrap_or_default();
    assert!(
        warning.contains("NOT encrypted (sslmode=disable)") && warning.contains(&host),
        "{warning:?}"
    );
    // ... and every run recorded over it carries the warning.
    let trigger = breakglass_proto::v1::TriggerRequested {
        run_id: "tls-warned-1".into(),
        reason: breakglass_proto::v1::TriggerReason::OnDemand as i32,
        requested_at_unix_ms: chrono::Utc::now().timestamp_millis(),
        ..Default::default()
    };
    log.record_trigger(&trigger).await.unwrap();
    let events = log.events_after("tls-warned-1", 0).await.unwrap();
    assert!(
        events.iter().any(|e| e.stage == breakglass_runlog::TRANSPORT_WARNING_STAGE
            && e.detail == warning),
        "the run carries the warning: {events:?}"
    );

    // ca_bundle is trusted when database_url names no sslrootcert.
    let bundle = breakglass_config::remote::read_ca_bundle(ca_pem).unwrap();
    let url = run_log_url(&host, server.port, "");
    let log = breakglass_runlog::RunLog::connect_with_ca(&url, "bgt_tls", Some(&bundle))
        .await
        .unwrap_or_else(|err| panic!("default verify-full with ca_bundle: {err}"));
    assert_eq!(log.transport_warning(), None);
    let trigger = breakglass_proto::v1::TriggerRequested {
        run_id: "tls-verified-1".into(),
        reason: breakglass_proto::v1::TriggerReason::OnDemand as i32,
        requested_at_unix_ms: chrono::Utc::now().timestamp_millis(),
        ..Default::default()
    };
    log.record_trigger(&trigger).await.unwrap();
    let events = log.events_after("tls-verified-1", 0).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.stage.as_str()).collect::<Vec<_>>(),
        ["triggered"],
        "a verified connection adds no warning"
    );
}
