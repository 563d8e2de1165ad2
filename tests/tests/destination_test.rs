//! The destination Test (issue #5) against real servers: moto (S3) and
//! Azurite (Azure Blob), over HTTP and HTTPS with a CA the test generates.
//! Through `breakglass test --config FILE --json` (exit codes and JSON
//! shape) and through the uploader's gRPC API (streaming and unary, bearer
//! token, masked secrets).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::{Azurite, Isolation, Moto, ServiceProcess, TestCa, bin, nats_url};
use breakglass_proto::v1;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const PUT_ONLY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:PutObject"],"Resource":"*"}]}"#;
const READ_ONLY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:ListBucket"],"Resource":"*"}]}"#;
const STAGES: [&str; 6] = [
    "connection",
    "authentication",
    "container_exists",
    "upload",
    "least_privilege",
    "retention",
];

/// Writes `entries` as a config file in a fresh folder under `dir`.
fn config(dir: &Path, name: &str, entries: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(format!("{name}.conf"));
    let text: String = entries.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// `breakglass test --config FILE --json` with the machine's CA variables
/// removed (a TLS failure must not depend on them): exit code and JSON.
fn run_test(config: &Path) -> (i32, Value, String) {
    let output = Command::new(bin("breakglass"))
        .args(["test", "--json", "--config"])
        .arg(config)
        .env_remove("SSL_CERT_FILE")
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {stdout}\nstderr: {stderr}"));
    (output.status.code().unwrap(), json, stdout + &stderr)
}

/// The stage results as (name, status, message), checking the shape.
fn stages_of(json: &Value) -> Vec<(String, String, String)> {
    let list = json["stages"].as_array().unwrap();
    assert_eq!(list.len(), 6, "{json:#}");
    list.iter()
        .zip(STAGES)
        .map(|(stage, name)| {
            assert_eq!(stage["stage"], name, "{json:#}");
            assert!(stage["duration_ms"].is_u64(), "{json:#}");
            assert!(stage["title"].is_string(), "{json:#}");
            assert!(stage["destination"].is_string(), "{json:#}");
            (
                stage["stage"].as_str().unwrap().to_owned(),
                stage["status"].as_str().unwrap().to_owned(),
                stage["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn status_of<'a>(stages: &'a [(String, String, String)], name: &str) -> (&'a str, &'a str) {
    let (_, status, message) = stages.iter().find(|(n, _, _)| n == name).unwrap();
    (status, message)
}

/// Asserts that `stage` failed with a message containing `needle`, that the
/// later stages were skipped with the reason, and that the exit code is 1.
fn assert_fails_at(code: i32, json: &Value, stage: &str, needle: &str) {
    assert_eq!(code, 1, "{json:#}");
    assert_eq!(json["passed"], false);
    let stages = stages_of(json);
    let index = STAGES.iter().position(|s| *s == stage).unwrap();
    for (i, (name, status, message)) in stages.iter().enumerate() {
        if i < index {
            assert_ne!(status, "failed", "{name}: {message}");
        } else if i == index {
            assert_eq!(status, "failed", "{name}: {message}");
            assert!(
                message.to_lowercase().contains(&needle.to_lowercase()),
                "{name}: {message:?} lacks {needle:?}"
            );
        } else {
            assert_eq!(status, "skipped", "{name}: {message}");
            assert!(message.contains("stage failed"), "{message}");
        }
    }
}

fn s3_entries<'a>(
    endpoint: &'a str,
    bucket: &'a str,
    key: &'a str,
    secret: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("storage_provider", "s3"),
        ("s3_url", endpoint),
        (
            "s3_protocol",
            if endpoint.starts_with("https") {
                "https"
            } else {
                "http"
            },
        ),
        ("s3_region", "us-east-1"),
        ("s3_bucket", bucket),
        ("s3_access_key_id", key),
        ("s3_secret_access_key", secret),
        ("path_prefix", "mavis/prod"),
    ]
}

#[test]
fn s3_create_only_credential_over_https_passes_every_stage() {
    let ca = TestCa::generate();
    let mut moto = Moto::start_tls(&ca);
    moto.tool(&["create-bucket", "backups"]);
    let (key, secret) = moto.iam_user("writer", PUT_ONLY);
    moto.enforce_iam();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.ca_pem.display().to_string();
    let mut entries = s3_entries(&moto.endpoint, "backups", &key, &secret);
    entries.push(("ca_bundle", ca_path.as_str()));
    let file = config(dir.path(), "ok", &entries);

    let (code, json, output) = run_test(&file);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["passed"], true);
    let stages = stages_of(&json);
    for (name, status, message) in &stages {
        assert_eq!(status, "ok", "{name}: {message}");
    }
    // HeadBucket is denied to a PutObject-only writer: decided from the upload.
    let (_, exists) = status_of(&stages, "container_exists");
    assert!(exists.contains("decided from the probe upload"), "{exists}");
    assert!(
        status_of(&stages, "connection")
            .1
            .contains("certificate trusted")
    );
    assert!(
        status_of(&stages, "least_privilege")
            .1
            .contains("cannot read")
    );
    assert!(!output.contains(&secret), "the secret leaked: {output}");
    moto.tool(&["list", "backups", "mavis/prod/"]);

    // A second Test writes the same name: nothing piles up.
    let (code, _, _) = run_test(&file);
    assert_eq!(code, 0);
    let listed: Vec<String> =
        serde_json::from_str(&moto.tool(&["list", "backups", "mavis/prod/"])).unwrap();
    assert_eq!(
        listed,
        vec!["mavis/prod/breakglass-destination-test.txt".to_owned()]
    );

    // Unique rotation: a conditional create of the same name is refused as
    // "exists", which is what unique rotation needs, and still passes.
    let mut unique = entries.clone();
    unique.push(("rotation", "unique"));
    let (code, json, _) = run_test(&config(dir.path(), "unique", &unique));
    assert_eq!(code, 0, "{json:#}");
    let stages = stages_of(&json);
    assert!(status_of(&stages, "upload").1.contains("already there"));
    let (status, message) = status_of(&stages, "retention");
    assert_eq!(status, "warning");
    assert!(message.contains("no lifecycle rule"), "{message}");
}

#[test]
fn s3_failures_name_the_stage_and_the_fix() {
    let mut moto = Moto::start();
    moto.tool(&["create-bucket", "backups"]);
    let (writer, writer_secret) = moto.iam_user("writer", PUT_ONLY);
    let (reader, reader_secret) = moto.iam_user("reader", READ_ONLY);
    moto.enforce_iam();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = moto.endpoint.clone();

    // Wrong secret key.
    let wrong = "wrong-secret-key-0123456789abcdefghijklmn";
    let (code, json, output) = run_test(&config(
        dir.path(),
        "wrong-secret",
        &s3_entries(&endpoint, "backups", &writer, wrong),
    ));
    assert_fails_at(code, &json, "authentication", "s3_secret_access_key");
    assert!(!output.contains(wrong));

    // Unknown key id.
    let (code, json, _) = run_test(&config(
        dir.path(),
        "unknown-key",
        &s3_entries(&endpoint, "backups", "AKIAUNKNOWNKEY000000", &writer_secret),
    ));
    assert_fails_at(code, &json, "authentication", "s3_access_key_id");

    // No such bucket, decided from the upload (HeadBucket is denied).
    let (code, json, _) = run_test(&config(
        dir.path(),
        "no-bucket",
        &s3_entries(&endpoint, "no-such-bucket", &writer, &writer_secret),
    ));
    assert_fails_at(code, &json, "container_exists", "does not exist");
    let stages_ = stages_of(&json);
    assert!(
        status_of(&stages_, "container_exists")
            .1
            .contains("decided from the upload")
    );

    // PutObject denied.
    let (code, json, output) = run_test(&config(
        dir.path(),
        "read-only",
        &s3_entries(&endpoint, "backups", &reader, &reader_secret),
    ));
    assert_fails_at(code, &json, "upload", "lacks s3:PutObject");
    assert!(!output.contains(&reader_secret));

    // Connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("http://127.0.0.1:{port}");
    let (code, json, _) = run_test(&config(
        dir.path(),
        "refused",
        &s3_entries(&closed, "backups", &writer, &writer_secret),
    ));
    assert_fails_at(code, &json, "connection", "refused");

    // DNS failure.
    let (code, json, _) = run_test(&config(
        dir.path(),
        "dns",
        &s3_entries(
            "http://nonexistent.invalid:9000",
            "backups",
            &writer,
            &writer_secret,
        ),
    ));
    assert_fails_at(code, &json, "connection", "does not resolve");
}

#[test]
fn s3_unknown_ca_over_https_fails_the_connection_with_the_fix() {
    let ca = TestCa::generate();
    let moto = Moto::start_tls(&ca);
    moto.tool(&["create-bucket", "backups"]);
    let dir = tempfile::tempdir().unwrap();
    let (code, json, _) = run_test(&config(
        dir.path(),
        "unknown-ca",
        &s3_entries(&moto.endpoint, "backups", "any", "any-secret-value"),
    ));
    assert_fails_at(code, &json, "connection", "unknown CA");
    assert!(
        json["stages"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ca_bundle")
    );
}

#[test]
fn s3_over_privileged_and_versioned_get_warnings() {
    // moto without IAM: every credential may do everything.
    let moto = Moto::start();
    moto.tool(&["create-bucket", "versioned", "versioned"]);
    let dir = tempfile::tempdir().unwrap();
    let mut entries = s3_entries(
        &moto.endpoint,
        "versioned",
        "AKIAADMIN",
        "admin-secret-value",
    );
    entries.push(("encryption", "none"));
    let (code, json, _) = run_test(&config(dir.path(), "admin", &entries));
    assert_eq!(code, 0, "warnings do not fail the Test: {json:#}");
    assert_eq!(json["passed"], true);
    let stages = stages_of(&json);
    let (status, message) = status_of(&stages, "connection");
    assert_eq!(status, "warning");
    assert!(message.contains("plain HTTP"), "{message}");
    let (status, message) = status_of(&stages, "least_privilege");
    assert_eq!(status, "warning");
    assert!(message.contains("can also read"), "{message}");
    let (status, message) = status_of(&stages, "retention");
    assert_eq!(status, "warning", "{message}");
    assert!(message.contains("versioning is Enabled"), "{message}");
    assert!(
        message.contains("allows rotation overwrite, unique, prune"),
        "{message}"
    );
    let (status, message) = status_of(&stages, "upload");
    assert_eq!(status, "warning");
    assert!(message.contains("encryption is none"), "{message}");

    // Unique rotation with a lifecycle rule over the prefix: reported, and
    // no warning that old copies pile up.
    moto.tool(&["create-bucket", "expiring"]);
    moto.tool(&["lifecycle", "expiring", "mavis/prod/", "30"]);
    let mut unique = s3_entries(
        &moto.endpoint,
        "expiring",
        "AKIAADMIN",
        "admin-secret-value",
    );
    unique.push(("rotation", "unique"));
    let (code, json, _) = run_test(&config(dir.path(), "lifecycle", &unique));
    assert_eq!(code, 0, "{json:#}");
    let stages = stages_of(&json);
    let (status, message) = status_of(&stages, "retention");
    assert_eq!(status, "ok", "{message}");
    assert!(
        message.contains(
            "breakglass-expire (enabled, prefix \"mavis/prod/\", objects expire after 30 days)"
        ),
        "{message}"
    );

    // A bucket in another region than s3_region.
    moto.tool(&["create-bucket", "regional", "", "eu-west-1"]);
    let (code, json, _) = run_test(&config(
        dir.path(),
        "region",
        &s3_entries(
            &moto.endpoint,
            "regional",
            "AKIAADMIN",
            "admin-secret-value",
        ),
    ));
    assert_fails_at(code, &json, "container_exists", "set s3_region: eu-west-1");

    // No bucket at all, asked directly (HeadBucket is allowed here).
    let (code, json, _) = run_test(&config(
        dir.path(),
        "missing",
        &s3_entries(&moto.endpoint, "missing", "AKIAADMIN", "admin-secret-value"),
    ));
    assert_fails_at(code, &json, "container_exists", "HeadBucket answered 404");
}

fn blob_entries<'a>(azurite: &'a Azurite, container: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("storage_provider", "blob"),
        ("blob_endpoint", azurite.endpoint.as_str()),
        (
            "blob_protocol",
            if azurite.endpoint.starts_with("https") {
                "https"
            } else {
                "http"
            },
        ),
        ("blob_container", container),
        ("path_prefix", "mavis/prod"),
    ]
}

#[test]
fn azure_create_write_sas_over_https_passes_every_stage() {
    let ca = TestCa::generate();
    let azurite = Azurite::start_tls(&ca);
    azurite.tool(&["create-container", "backups"]);
    let sas = azurite.sas("backups", "cw");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.ca_pem.display().to_string();
    let mut entries = blob_entries(&azurite, "backups");
    entries.push(("blob_sas_token", sas.as_str()));
    entries.push(("ca_bundle", ca_path.as_str()));
    let (code, json, output) = run_test(&config(dir.path(), "ok", &entries));
    assert_eq!(code, 0, "{json:#}");
    for (name, status, message) in stages_of(&json) {
        assert_eq!(status, "ok", "{name}: {message}");
    }
    let signature = sas.split("sig=").nth(1).unwrap().split('&').next().unwrap();
    assert!(!output.contains(signature), "the SAS leaked: {output}");

    // The same Azurite without ca_bundle: unknown CA.
    let mut no_ca = blob_entries(&azurite, "backups");
    no_ca.push(("blob_sas_token", sas.as_str()));
    let (code, json, _) = run_test(&config(dir.path(), "no-ca", &no_ca));
    assert_fails_at(code, &json, "connection", "unknown CA");
}

#[test]
fn azure_create_only_sas_fits_unique_and_is_refused_for_overwrite() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "backups"]);
    let create_only = azurite.sas("backups", "c");
    let dir = tempfile::tempdir().unwrap();
    let mut unique = blob_entries(&azurite, "backups");
    unique.push(("blob_sas_token", create_only.as_str()));
    unique.push(("rotation", "unique"));
    let file = config(dir.path(), "unique", &unique);
    for round in 0..2 {
        let (code, json, _) = run_test(&file);
        assert_eq!(code, 0, "round {round}: {json:#}");
        let stages = stages_of(&json);
        let (status, message) = status_of(&stages, "least_privilege");
        assert_eq!(status, "ok", "{message}");
        let (_, message) = status_of(&stages, "retention");
        assert!(message.contains("allows rotation unique;"), "{message}");
        assert!(
            status_of(&stages, "container_exists")
                .1
                .contains("decided from the probe upload")
        );
    }
    // Overwrite needs to replace the file every run: c alone is refused.
    let mut overwrite = blob_entries(&azurite, "backups");
    overwrite.push(("blob_sas_token", create_only.as_str()));
    let (code, json, _) = run_test(&config(dir.path(), "overwrite", &overwrite));
    assert_fails_at(code, &json, "upload", "sp=cw");
}

#[test]
fn azure_failures_and_over_privileged_credentials() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "backups"]);
    let dir = tempfile::tempdir().unwrap();

    // The account key: works, but holds every right.
    let mut key = blob_entries(&azurite, "backups");
    key.push(("blob_account_name", Azurite::ACCOUNT));
    key.push(("blob_account_key", Azurite::KEY));
    let (code, json, output) = run_test(&config(dir.path(), "key", &key));
    assert_eq!(code, 0, "{json:#}");
    let stages_ = stages_of(&json);
    let (status, message) = status_of(&stages_, "least_privilege");
    assert_eq!(status, "warning");
    assert!(
        message.contains("account key grants every right"),
        "{message}"
    );
    assert!(!output.contains(Azurite::KEY));

    // A SAS with every right: the audit finds read, delete and list.
    let all = azurite.sas("backups", "racwdl");
    let mut wide = blob_entries(&azurite, "backups");
    wide.push(("blob_sas_token", all.as_str()));
    let (code, json, _) = run_test(&config(dir.path(), "wide", &wide));
    assert_eq!(code, 0, "{json:#}");
    let stages_ = stages_of(&json);
    let (status, message) = status_of(&stages_, "least_privilege");
    assert_eq!(status, "warning");
    assert!(
        message.contains("read (r)") && message.contains("delete (d)"),
        "{message}"
    );

    // A wrong account key.
    let wrong_key =
        "d3JvbmcgYWNjb3VudCBrZXkgZm9yIHRoZSB0ZXN0IG9ubHksIG5vdCBhIHJlYWwgb25lISEhISEhISEhISE=";
    let mut wrong = blob_entries(&azurite, "backups");
    wrong.push(("blob_account_name", Azurite::ACCOUNT));
    wrong.push(("blob_account_key", wrong_key));
    let (code, json, output) = run_test(&config(dir.path(), "wrong-key", &wrong));
    assert_fails_at(code, &json, "authentication", "blob_account_key");
    assert!(!output.contains(wrong_key));

    // No such container.
    let mut missing = blob_entries(&azurite, "missing");
    missing.push(("blob_account_name", Azurite::ACCOUNT));
    missing.push(("blob_account_key", Azurite::KEY));
    let (code, json, _) = run_test(&config(dir.path(), "missing", &missing));
    assert_fails_at(code, &json, "container_exists", "does not exist");

    // DNS failure and a refused connection.
    let mut dns = blob_entries(&azurite, "backups");
    dns[1] = (
        "blob_endpoint",
        "http://nonexistent.invalid:10000/devstoreaccount1",
    );
    dns.push(("blob_sas_token", all.as_str()));
    let (code, json, _) = run_test(&config(dir.path(), "dns", &dns));
    assert_fails_at(code, &json, "connection", "does not resolve");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("http://127.0.0.1:{port}/devstoreaccount1");
    let mut refused = blob_entries(&azurite, "backups");
    refused[1] = ("blob_endpoint", closed.as_str());
    refused.push(("blob_sas_token", all.as_str()));
    let (code, json, _) = run_test(&config(dir.path(), "refused", &refused));
    assert_fails_at(code, &json, "connection", "refused");

    // A read-only SAS: the upload is refused.
    let read_only = azurite.sas("backups", "rl");
    let mut reader = blob_entries(&azurite, "backups");
    reader.push(("blob_sas_token", read_only.as_str()));
    let (code, json, _) = run_test(&config(dir.path(), "read-only", &reader));
    assert_fails_at(code, &json, "upload", "does not allow Put Blob");
}

#[test]
fn the_human_table_lists_every_stage() {
    let moto = Moto::start();
    moto.tool(&["create-bucket", "backups"]);
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        dir.path(),
        "table",
        &s3_entries(&moto.endpoint, "backups", "AKIAADMIN", "admin-secret-value"),
    );
    let output = Command::new(bin("breakglass"))
        .args(["test", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    for title in [
        "Connection",
        "Authentication",
        "Container or bucket exists",
        "Upload",
        "Least privilege audit",
        "Retention and rotation fit",
    ] {
        assert!(text.contains(title), "{text}");
    }
    assert!(text.contains("passed"), "{text}");
    assert!(!text.contains("admin-secret-value"));
}

const GRPC_TOKEN: &str = "grpc-test-token-0123456789";

async fn grpc_client(
    addr: &str,
) -> v1::destination_test_client::DestinationTestClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    v1::destination_test_client::DestinationTestClient::new(channel)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_uploader_serves_the_test_over_grpc_with_masked_secrets() {
    let mut moto = Moto::start();
    moto.tool(&["create-bucket", "backups"]);
    let (key, secret) = moto.iam_user("writer", PUT_ONLY);
    moto.enforce_iam();
    let iso = Isolation::new("grpc_test");
    let dir = tempfile::tempdir().unwrap();
    let payload_key = breakglass_bus::payload::PayloadKey::generate();
    let nats = nats_url();
    let mut entries = s3_entries(&moto.endpoint, "backups", &key, &secret);
    entries.extend([
        ("nats_url", nats.as_str()),
        ("bus_prefix", iso.prefix.as_str()),
        ("payload_key", payload_key.expose()),
        ("encryption_passphrase", "grpc test passphrase 2026"),
        ("grpc_token", GRPC_TOKEN),
    ]);
    let file = config(dir.path(), "uploader", &entries);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut uploader = ServiceProcess::start_with_env(
        "uploader",
        &file,
        dir.path(),
        &[("BREAKGLASS_GRPC_ADDR", Path::new(&addr))],
    )
    .unwrap();
    uploader
        .wait_for_log("gRPC API listening", Duration::from_secs(60))
        .await
        .unwrap();
    let mut client = grpc_client(&addr).await;

    // The page sends the mask for the stored secret.
    let masked: std::collections::HashMap<String, String> = s3_entries(
        &moto.endpoint,
        "backups",
        &key,
        breakglass_core::secret::MASK,
    )
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let request = v1::TestRequest {
        settings: masked.clone(),
    };

    // Streaming: six results, in order, as they finish.
    let mut stream = client
        .run(breakglass_e2e::authorized(request.clone(), GRPC_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(result) = stream.message().await.unwrap() {
        streamed.push(result);
    }
    let names: Vec<&str> = streamed.iter().map(|r| r.stage_name.as_str()).collect();
    assert_eq!(names, STAGES);
    assert_eq!(streamed[0].stage, v1::Stage::Connection as i32);
    for result in &streamed[1..] {
        assert!(
            result.status == v1::StageStatus::Ok as i32,
            "{}: {}",
            result.stage_name,
            result.message
        );
    }
    // HTTP: the connection stage says so.
    assert_eq!(streamed[0].status, v1::StageStatus::Warning as i32);

    // Unary: the same stages at once.
    let report = client
        .run_unary(breakglass_e2e::authorized(request.clone(), GRPC_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert!(report.passed, "{report:?}");
    assert_eq!(report.stages.len(), 6);

    // A typed wrong secret replaces the stored one, and fails.
    let mut wrong = masked.clone();
    wrong.insert(
        "s3_secret_access_key".into(),
        "typed-wrong-secret-0123456789abcdef".into(),
    );
    let report = client
        .run_unary(breakglass_e2e::authorized(
            v1::TestRequest { settings: wrong },
            GRPC_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!report.passed);
    assert_eq!(report.stages[1].status, v1::StageStatus::Failed as i32);

    // Invalid settings: INVALID_ARGUMENT naming the field, secret masked.
    let mut invalid = masked.clone();
    invalid.insert("rotation".into(), "sometimes".into());
    let err = client
        .run_unary(breakglass_e2e::authorized(
            v1::TestRequest { settings: invalid },
            GRPC_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("rotation"), "{}", err.message());

    // No token, or a wrong one: UNAUTHENTICATED, and logged without it.
    let err = client.run_unary(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let wrong_token = "not-the-grpc-token-abcdefgh";
    let err = client
        .run(breakglass_e2e::authorized(request.clone(), wrong_token))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    uploader
        .wait_for_log(
            "refused an unauthenticated gRPC call",
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let log = uploader.log_text();
    let answers = format!("{streamed:?} {report:?} {err:?}");
    for secret_text in [
        secret.as_str(),
        GRPC_TOKEN,
        wrong_token,
        "typed-wrong-secret-0123456789abcdef",
        payload_key.expose(),
    ] {
        assert!(
            !log.contains(secret_text),
            "the uploader log holds a secret"
        );
        assert!(!answers.contains(secret_text), "an answer holds a secret");
    }
    uploader.terminate(Duration::from_secs(10)).unwrap();
    iso.cleanup_bus().await;
}

#[tokio::test]
async fn the_grpc_api_refuses_to_start_without_a_token() {
    let iso = Isolation::new("grpc_no_token");
    let dir = tempfile::tempdir().unwrap();
    let payload_key = breakglass_bus::payload::PayloadKey::generate();
    let nats = nats_url();
    let file = config(
        dir.path(),
        "no-token",
        &[
            ("nats_url", nats.as_str()),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", payload_key.expose()),
            ("encryption_passphrase", "grpc test passphrase 2026"),
        ],
    );
    let mut child = Command::new(bin("uploader"))
        .arg("--config")
        .arg(&file)
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .env_remove("BREAKGLASS_GRPC_TOKEN")
        .env("BREAKGLASS_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the uploader kept running without a gRPC token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("needs a bearer token"), "{stderr}");
    assert!(!stderr.contains(payload_key.expose()));
    iso.cleanup_bus().await;
}
