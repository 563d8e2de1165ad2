//! The config API (option 2) against real NATS, PostgreSQL and the four
//! services: settings saved through gRPC are validated per field, stored
//! with their secrets sealed, versioned and audited, carried to the
//! services over the bus and used by the next run; the mounted file wins
//! when it holds settings; the port refuses callers without the token and,
//! with mutual TLS, without a client certificate.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::{
    Isolation, ServiceProcess, TestCa, bin, database_url, nats_url, write_config,
};
use breakglass_proto::v1;
use breakglass_proto::v1::config_service_client::ConfigServiceClient;
use breakglass_proto::v1::run_history_client::RunHistoryClient;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use tonic_types::StatusExt;

const TOKEN: &str = "config-api-token-0123456789";
const CANARY_PASSPHRASE: &str = "CANARY-settings-passphrase-7q";
const MASK: &str = "********";

fn call<T>(message: T, token: &str, actor: &str) -> tonic::Request<T> {
    let mut request = breakglass_e2e::authorized(message, token);
    request
        .metadata_mut()
        .insert("x-breakglass-actor", actor.parse().unwrap());
    request
}

/// An Update of the whole form, as `actor`.
async fn update(
    client: &mut ConfigServiceClient<tonic::transport::Channel>,
    fields: HashMap<String, String>,
    expected_version: Option<u64>,
    actor: &str,
) -> Result<tonic::Response<v1::ConfigSnapshot>, tonic::Status> {
    client
        .update(call(
            v1::UpdateConfigRequest {
                fields,
                expected_version,
            },
            TOKEN,
            actor,
        ))
        .await
}

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn cli(dir: &Path, url: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin("breakglass"));
    command
        .args(args)
        .current_dir(dir)
        .env("BREAKGLASS_GRPC_URL", url)
        .env("BREAKGLASS_GRPC_TOKEN", TOKEN)
        .env("BREAKGLASS_ACTOR", "carol")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The wiring-only service secret: no settings-page key, so the settings
/// come from the API.
fn wiring(dir: &Path, iso: &Isolation, extra: &[(&str, &str)]) -> std::path::PathBuf {
    let nats = nats_url();
    let db = database_url();
    let payload_key = breakglass_bus::payload::PayloadKey::generate();
    let settings_key = breakglass_core::seal::SealKey::generate();
    let mut entries = vec![
        ("nats_url", nats.as_str()),
        ("bus_prefix", iso.prefix.as_str()),
        ("payload_key", payload_key.expose()),
        ("settings_key", settings_key.expose()),
        ("database_url", db.as_str()),
        ("database_schema", iso.schema.as_str()),
        ("grpc_token", TOKEN),
    ];
    entries.extend_from_slice(extra);
    write_config(dir, &entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_saved_through_the_api_are_checked_sealed_audited_and_used_by_the_next_run() {
    let iso = Isolation::new("configapi");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = wiring(dir.path(), &iso, &[]);
    let addr = breakglass_e2e::free_loopback_addr();
    let url = format!("http://{addr}");
    let mut scheduler = breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &addr).await;
    let mut services: Vec<ServiceProcess> = ["collector", "renderer", "uploader"]
        .iter()
        .map(|name| ServiceProcess::start(name, &config, dir.path()).unwrap())
        .collect();
    let mut client = ConfigServiceClient::connect(url.clone()).await.unwrap();

    // Nothing saved yet: every field empty, source API, version 0.
    let empty = client
        .get(call(v1::GetConfigRequest {}, TOKEN, "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty.source, v1::ConfigSource::Api as i32);
    assert_eq!(empty.version, 0);
    assert!(
        empty.fields.values().all(String::is_empty),
        "{:?}",
        empty.fields
    );
    assert!(
        empty
            .secret_keys
            .contains(&"s3_secret_access_key".to_owned())
    );

    // No token, or the wrong one: refused, and the token never logged.
    let refused = client
        .get(call(
            v1::GetConfigRequest {},
            "not-the-token-at-all-xx",
            "mallory",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = client
        .update(tonic::Request::new(v1::UpdateConfigRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Bad input: one field violation per problem, nothing stored.
    let bad = update(
        &mut client,
        fields(&[
            ("execute_time", "24:00"),
            ("time_zone", "Mars/Olympus_Mons"),
            ("storage_provider", "s3"),
            ("s3_protocol", "http"),
            ("s3_url", "https://s3.example.com"),
            ("s3_access_key_id", "AKIAEXAMPLE"),
            ("s3_secret_access_key", "CANARY-s3-secret-key"),
            ("execute_tme", "09:30"),
            ("payload_key", "AGE-SECRET-KEY-1CANARY"),
            ("encryption", "none"),
        ]),
        Some(0),
        "alice",
    )
    .await
    .unwrap_err();
    assert_eq!(
        bad.code(),
        tonic::Code::InvalidArgument,
        "{}",
        bad.message()
    );
    let details = bad.get_error_details();
    let violations = &details.bad_request().unwrap().field_violations;
    let named: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    for field in [
        "execute_time",
        "time_zone",
        "s3_bucket",
        "s3_url",
        "execute_tme",
        "payload_key",
    ] {
        assert!(
            named.contains(&field),
            "{field} not named in {violations:?}"
        );
    }
    let described: String = violations
        .iter()
        .map(|v| format!("{}: {}\n", v.field, v.description))
        .collect();
    assert!(
        described.contains("did you mean `execute_time`"),
        "{described}"
    );
    assert!(described.contains("service wiring"), "{described}");
    assert!(!described.contains("CANARY"), "{described}");
    // Validate gives the same problems and stores nothing either.
    let checked = client
        .validate(call(
            v1::UpdateConfigRequest {
                fields: fields(&[("execute_time", "9:5"), ("rotation", "sometimes")]),
                expected_version: Some(0),
            },
            TOKEN,
            "alice",
        ))
        .await
        .unwrap()
        .into_inner();
    let named: Vec<&str> = checked.problems.iter().map(|p| p.field.as_str()).collect();
    assert!(
        named.contains(&"execute_time") && named.contains(&"rotation"),
        "{named:?}"
    );

    // A valid save: version 1, the secret shown as the mask.
    let out_text = out.display().to_string();
    let saved = update(
        &mut client,
        fields(&[
            ("execute_time", "03:00"),
            ("time_zone", "Asia/Taipei"),
            ("storage_provider", "local"),
            ("local_dir", out_text.as_str()),
            ("encryption", "password"),
            ("encryption_passphrase", CANARY_PASSPHRASE),
        ]),
        Some(0),
        "alice",
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(saved.version, 1);
    assert_eq!(saved.updated_by, "alice");
    // A second "first save" (edited from version 0) is refused, not merged.
    let late = update(
        &mut client,
        fields(&[("storage_provider", "local"), ("encryption", "none")]),
        Some(0),
        "dave",
    )
    .await
    .unwrap_err();
    assert_eq!(late.code(), tonic::Code::Aborted, "{}", late.message());
    assert_eq!(saved.fields["encryption_passphrase"], MASK);
    assert_eq!(saved.fields["local_dir"], out_text);
    // The scheduler plans with the saved time at once, not at its next
    // minute, and does not run for it now.
    scheduler
        .wait_for_log("T0300", Duration::from_secs(20))
        .await
        .unwrap();
    assert!(
        scheduler
            .log_text()
            .lines()
            .any(|l| l.contains("next scheduled run") && l.contains("T0300")),
        "{}",
        scheduler.log_text()
    );

    // The mask sent back keeps the stored secret; an edit of an old
    // version is refused rather than overwriting the newer one.
    let mut form = saved.fields.clone();
    form.insert("rotation".into(), "unique".into());
    let second = update(&mut client, form.clone(), Some(1), "bob")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.version, 2);
    assert_eq!(second.fields["encryption_passphrase"], MASK);
    let stale = update(&mut client, form, Some(1), "bob").await.unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{}", stale.message());

    // The audit log: who and which fields, never a value.
    let history = client
        .history(call(v1::ConfigHistoryRequest { limit: 10 }, TOKEN, "alice"))
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].version, 2);
    assert_eq!(history[0].actor, "bob");
    assert_eq!(history[0].changed_fields, vec!["rotation".to_owned()]);
    assert_eq!(history[1].actor, "alice");
    assert!(
        history[1]
            .changed_fields
            .contains(&"encryption_passphrase".to_owned())
    );

    // The CLI: get shows the mask; set changes one field and keeps the rest.
    let got = cli(dir.path(), &url, &["config", "get"], &[]);
    assert!(got.status.success(), "{}", text(&got));
    assert!(
        text(&got).contains(&format!("encryption_passphrase: {MASK}")),
        "{}",
        text(&got)
    );
    assert!(text(&got).contains("# source: api"), "{}", text(&got));
    let set = cli(dir.path(), &url, &["config", "set", "rotation=prune"], &[]);
    assert!(set.status.success(), "{}", text(&set));
    assert!(
        text(&set).contains("# version: 3 (by carol"),
        "{}",
        text(&set)
    );
    let invalid = cli(
        dir.path(),
        &url,
        &["config", "validate", "execute_time=09:60"],
        &[],
    );
    assert_eq!(invalid.status.code(), Some(1), "{}", text(&invalid));
    assert!(
        text(&invalid).contains("execute_time: \"09:60\""),
        "{}",
        text(&invalid)
    );
    let refused = cli(
        dir.path(),
        &url,
        &["config", "set", "execute_time=9:5"],
        &[],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("execute_time"),
        "{}",
        text(&refused)
    );

    // The services follow the saved settings: a run now writes into the
    // API's local_dir, sealed with the API's passphrase.
    for service in &mut services {
        service
            .wait_for_log(
                "applying settings saved through the config API",
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    // Four saves and several seconds later, no run was started: neither a
    // trigger on the bus nor a run in the log.
    let messages = breakglass_e2e::read_stream(&iso.prefix).await.unwrap();
    let trigger_subject = format!("{}.trigger", iso.prefix);
    assert!(
        !messages.iter().any(|m| m.subject == trigger_subject),
        "saving settings published a trigger"
    );
    let mut runs = RunHistoryClient::connect(url.clone()).await.unwrap();
    let listed = runs
        .list_runs(call(v1::ListRunsRequest::default(), TOKEN, "alice"))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.runs.is_empty(), "{:?}", listed.runs);
    let triggered = cli(dir.path(), &url, &["runs", "trigger"], &[]);
    assert!(triggered.status.success(), "{}", text(&triggered));
    assert!(
        text(&triggered).contains("succeeded: 48 rows"),
        "{}",
        text(&triggered)
    );
    let stored: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "xlsx"))
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let decrypted = dir.path().join("decrypted.xlsx");
    breakglass_e2e::office_decrypt(&stored[0], CANARY_PASSPHRASE, &decrypted).unwrap();

    // The passphrase is nowhere in clear: not in PostgreSQL, not on the
    // bus's settings bucket, not in any log.
    let mut pg = PgConnection::connect(&database_url()).await.unwrap();
    let sealed: bool = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT sealed FROM {}.settings WHERE key = 'encryption_passphrase'",
        iso.schema
    )))
    .fetch_one(&mut pg)
    .await
    .unwrap();
    assert!(sealed);
    for table in ["settings", "settings_audit"] {
        let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT t::text FROM {}.{table} t",
            iso.schema
        )))
        .fetch_all(&mut pg)
        .await
        .unwrap();
        assert!(!rows.is_empty(), "{table} has rows");
        for row in rows {
            assert!(!row.contains(CANARY_PASSPHRASE), "{table}: {row}");
        }
    }
    let bucket = format!("KV_{}_settings", iso.prefix.replace('-', "_"));
    let published = breakglass_e2e::read_named_stream(&bucket).await.unwrap();
    assert!(
        !published.is_empty(),
        "the settings were published on {bucket}"
    );
    for message in &published {
        let bytes = &message.payload;
        assert!(
            !bytes
                .windows(CANARY_PASSPHRASE.len())
                .any(|w| w == CANARY_PASSPHRASE.as_bytes()),
            "the passphrase rides in clear on {bucket}"
        );
    }
    for process in services.iter().chain(std::iter::once(&scheduler)) {
        let log = process.log_text();
        assert!(!log.contains(CANARY_PASSPHRASE), "passphrase logged");
        assert!(!log.contains(TOKEN), "token logged");
        assert!(
            !log.contains("not-the-token-at-all-xx"),
            "presented token logged"
        );
    }
    assert!(
        scheduler
            .log_text()
            .contains("refused an unauthenticated gRPC call")
    );

    // A restarted scheduler serves the same version, and the mask keeps the
    // secret, which it opens with the mounted settings_key.
    scheduler.terminate(Duration::from_secs(20)).unwrap();
    let mut scheduler = breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &addr).await;
    let mut client = ConfigServiceClient::connect(url.clone()).await.unwrap();
    let after = client
        .get(call(v1::GetConfigRequest {}, TOKEN, "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.version, 3);
    assert_eq!(after.fields["rotation"], "prune");
    assert_eq!(after.fields["encryption_passphrase"], MASK);
    let mut form = after.fields.clone();
    form.insert("rotation".into(), "overwrite".into());
    let kept = update(&mut client, form.clone(), Some(3), "alice")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.version, 4);

    // After a settings_key change the stored passphrase does not open: the
    // mask cannot keep it, the error says so by field, and typing the
    // secret again is accepted.
    scheduler.terminate(Duration::from_secs(20)).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let new_key = breakglass_core::seal::SealKey::generate();
    let swapped: String = text
        .lines()
        .map(|line| {
            if line.starts_with("settings_key:") {
                format!("settings_key: {}\n", new_key.expose())
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(&config, swapped).unwrap();
    let scheduler = breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &addr).await;
    let mut client = ConfigServiceClient::connect(url.clone()).await.unwrap();
    let refused = update(&mut client, form.clone(), Some(4), "alice")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let details = refused.get_error_details();
    let violations = &details.bad_request().unwrap().field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "encryption_passphrase");
    assert!(
        violations[0].description.contains("settings_key"),
        "{violations:?}"
    );
    form.insert(
        "encryption_passphrase".into(),
        "a-new-passphrase-typed-again".into(),
    );
    let retyped = update(&mut client, form, Some(4), "alice")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retyped.version, 5);
    assert!(
        !scheduler
            .log_text()
            .contains("a-new-passphrase-typed-again")
    );
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_file_wins_over_the_api() {
    let iso = Isolation::new("configfile");
    let dir = tempfile::tempdir().unwrap();
    let config = wiring(
        dir.path(),
        &iso,
        &[
            ("execute_time", "09:30"),
            ("storage_provider", "local"),
            ("encryption", "password"),
            ("encryption_passphrase", CANARY_PASSPHRASE),
        ],
    );
    let addr = breakglass_e2e::free_loopback_addr();
    let scheduler = breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &addr).await;
    let mut client = ConfigServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let shown = client
        .get(call(v1::GetConfigRequest {}, TOKEN, "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.source, v1::ConfigSource::File as i32);
    assert_eq!(shown.fields["execute_time"], "09:30");
    assert_eq!(shown.fields["encryption_passphrase"], MASK);
    assert_eq!(shown.fields["s3_bucket"], "");
    let refused = update(
        &mut client,
        fields(&[("execute_time", "10:00")]),
        Some(0),
        "alice",
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("mounted config file"),
        "{}",
        refused.message()
    );
    // Validate still checks a change against the file: masks stand for the
    // file's secrets, and a bad value is named.
    let mut form = shown.fields.clone();
    form.insert("time_zone".into(), "Asia/Taipei".into());
    let checked = client
        .validate(call(
            v1::UpdateConfigRequest {
                fields: form.clone(),
                expected_version: None,
            },
            TOKEN,
            "alice",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(checked.problems.is_empty(), "{:?}", checked.problems);
    form.insert("time_zone".into(), "Asia/Taipie".into());
    let checked = client
        .validate(call(
            v1::UpdateConfigRequest {
                fields: form,
                expected_version: None,
            },
            TOKEN,
            "alice",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.problems.len(), 1, "{:?}", checked.problems);
    assert_eq!(checked.problems[0].field, "time_zone");
    assert!(!scheduler.log_text().contains(CANARY_PASSPHRASE));
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_port_speaks_tls_and_requires_client_certificates_when_told() {
    let iso = Isolation::new("configtls");
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate();
    let (client_cert, client_key) = ca.client_cert("settings-page", dir.path());
    let ca_pem = ca.ca_pem.display().to_string();
    let cert_pem = ca.cert_pem.display().to_string();
    let key_pem = ca.key_pem.display().to_string();
    let config = wiring(
        dir.path(),
        &iso,
        &[
            ("grpc_tls_cert", cert_pem.as_str()),
            ("grpc_tls_key", key_pem.as_str()),
            ("grpc_client_ca", ca_pem.as_str()),
        ],
    );
    let addr = breakglass_e2e::free_loopback_addr();
    let _scheduler = breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &addr).await;
    let https = format!("https://localhost:{}", addr.rsplit(':').next().unwrap());
    let client_cert = client_cert.display().to_string();
    let client_key = client_key.display().to_string();

    // Plain HTTP/2 does not get an answer.
    let plain = cli(
        dir.path(),
        &format!("http://{addr}"),
        &["config", "get"],
        &[],
    );
    assert!(!plain.status.success(), "{}", text(&plain));
    // TLS without a client certificate is refused in the handshake.
    let anonymous = cli(
        dir.path(),
        &https,
        &["config", "get"],
        &[("BREAKGLASS_GRPC_CA", ca_pem.as_str())],
    );
    assert!(!anonymous.status.success(), "{}", text(&anonymous));
    // A server certificate from an unknown CA is refused by the client.
    let other = TestCa::generate();
    let untrusted = cli(
        dir.path(),
        &https,
        &["config", "get"],
        &[
            ("BREAKGLASS_GRPC_CA", other.ca_pem.to_str().unwrap()),
            ("BREAKGLASS_GRPC_CERT", client_cert.as_str()),
            ("BREAKGLASS_GRPC_KEY", client_key.as_str()),
        ],
    );
    assert!(!untrusted.status.success(), "{}", text(&untrusted));
    // Mutual TLS and the token: served, and the audit row names the
    // client certificate.
    let mutual = [
        ("BREAKGLASS_GRPC_CA", ca_pem.as_str()),
        ("BREAKGLASS_GRPC_CERT", client_cert.as_str()),
        ("BREAKGLASS_GRPC_KEY", client_key.as_str()),
    ];
    let got = cli(dir.path(), &https, &["config", "get"], &mutual);
    assert!(got.status.success(), "{}", text(&got));
    assert!(text(&got).contains("# source: api"), "{}", text(&got));
    let set = cli(
        dir.path(),
        &https,
        &["config", "set", "encryption=none", "storage_provider=local"],
        &mutual,
    );
    assert!(set.status.success(), "{}", text(&set));
    let history = cli(dir.path(), &https, &["config", "history"], &mutual);
    assert!(history.status.success(), "{}", text(&history));
    assert!(
        text(&history).contains("by carol from") && text(&history).contains("client-cert sha256:"),
        "{}",
        text(&history)
    );
    // The token is still required over mutual TLS.
    let wrong_token = [
        mutual.as_slice(),
        &[("BREAKGLASS_GRPC_TOKEN", "a-wrong-token-of-length")],
    ]
    .concat();
    let no_token = cli(dir.path(), &https, &["config", "get"], &wrong_token);
    assert!(!no_token.status.success());
    assert!(
        text(&no_token).contains("Unauthenticated") || text(&no_token).contains("bearer token"),
        "{}",
        text(&no_token)
    );
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_test_fills_masked_secrets_from_the_settings_saved_through_the_api() {
    let mut moto = breakglass_e2e::Moto::start();
    moto.tool(&["create-bucket", "backups"]);
    let (key_id, secret) = moto.iam_user(
        "writer",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:PutObject"],"Resource":"*"}]}"#,
    );
    moto.enforce_iam();
    let iso = Isolation::new("configtest");
    let dir = tempfile::tempdir().unwrap();
    let config = wiring(dir.path(), &iso, &[]);
    let (scheduler_addr, uploader_addr) = (
        breakglass_e2e::free_loopback_addr(),
        breakglass_e2e::free_loopback_addr(),
    );
    let _scheduler =
        breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &scheduler_addr).await;
    let mut uploader = ServiceProcess::start_with_env(
        "uploader",
        &config,
        dir.path(),
        &[("BREAKGLASS_GRPC_ADDR", Path::new(&uploader_addr))],
    )
    .unwrap();
    uploader
        .wait_for_log("gRPC API listening", Duration::from_secs(60))
        .await
        .unwrap();
    let mut config_api = ConfigServiceClient::connect(format!("http://{scheduler_addr}"))
        .await
        .unwrap();
    let page = |secret: &str| {
        fields(&[
            ("storage_provider", "s3"),
            ("s3_url", moto.endpoint.as_str()),
            ("s3_protocol", "http"),
            ("s3_region", "us-east-1"),
            ("s3_bucket", "backups"),
            ("s3_access_key_id", key_id.as_str()),
            ("s3_secret_access_key", secret),
            ("encryption", "none"),
        ])
    };
    let mut test = v1::destination_test_client::DestinationTestClient::connect(format!(
        "http://{uploader_addr}"
    ))
    .await
    .unwrap();
    // Before anything is saved, the page's Test of typed-in settings works.
    let before = test
        .run_unary(breakglass_e2e::authorized(
            v1::TestRequest {
                settings: page(&secret),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(before.passed, "{before:?}");
    update(&mut config_api, page(&secret), Some(0), "alice")
        .await
        .unwrap();
    uploader
        .wait_for_log(
            "applying settings saved through the config API",
            Duration::from_secs(30),
        )
        .await
        .unwrap();

    // The page's Test sends the mask: the uploader fills in the secret
    // saved through the API, and the upload stage passes with it.
    let report = test
        .run_unary(breakglass_e2e::authorized(
            v1::TestRequest {
                settings: page(MASK),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(report.passed, "{report:?}");
    let authentication = report
        .stages
        .iter()
        .find(|s| s.stage_name == "authentication")
        .unwrap();
    assert_eq!(
        authentication.status,
        v1::StageStatus::Ok as i32,
        "{report:?}"
    );
    // A wrong secret typed into the page fails authentication: the mask,
    // not luck, made the first Test pass.
    let report = test
        .run_unary(breakglass_e2e::authorized(
            v1::TestRequest {
                settings: page("not-the-secret-key-at-all"),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!report.passed, "{report:?}");

    // An entry written on the bus without the payload key (here: one that
    // claims version 999 and points nowhere) is refused by the services
    // and replaced by the scheduler's periodic re-publish.
    let bus = iso.connect_bus().await;
    let kv = bus.settings_store().await.unwrap();
    let forged = v1::PublishedSettings {
        version: 999,
        sealed: b"storage_provider: local, encryption: none".to_vec(),
    };
    kv.put("current", prost::Message::encode_to_vec(&forged).into())
        .await
        .unwrap();
    uploader
        .wait_for_log(
            "does not open with this payload_key",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let payload_key = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("payload_key: ").map(str::to_owned))
        .unwrap();
    let bus_key =
        breakglass_bus::settings_kv::bus_settings_key(&breakglass_core::Secret::new(payload_key));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let healed = loop {
        if let Ok(Some(held)) = bus.published_settings(&bus_key).await {
            break held;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the forged entry stayed"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(healed.version, 1);
    // The uploader kept version 1 all along: the masked Test still passes.
    let report = test
        .run_unary(breakglass_e2e::authorized(
            v1::TestRequest {
                settings: page(MASK),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(report.passed, "{report:?}");
    assert!(!uploader.log_text().contains(&secret));
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_saving_the_first_settings_at_once_store_one_and_are_told_of_the_other() {
    let iso = Isolation::new("configrace");
    let dir = tempfile::tempdir().unwrap();
    let config = wiring(dir.path(), &iso, &[]);
    let addr = breakglass_e2e::free_loopback_addr();
    let _scheduler = breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &addr).await;
    let url = format!("http://{addr}");
    let save = |actor: &'static str, time: &'static str| {
        let url = url.clone();
        async move {
            let mut client = ConfigServiceClient::connect(url).await.unwrap();
            update(
                &mut client,
                fields(&[
                    ("execute_time", time),
                    ("storage_provider", "local"),
                    ("encryption", "none"),
                ]),
                Some(0),
                actor,
            )
            .await
        }
    };
    let (first, second) = tokio::join!(save("alice", "01:00"), save("bob", "02:00"));
    let codes = [&first, &second].map(|r| r.as_ref().map(|_| ()).map_err(|s| s.code()));
    assert!(
        codes.contains(&Ok(())) && codes.contains(&Err(tonic::Code::Aborted)),
        "{codes:?}"
    );
    let winner = if first.is_ok() { "alice" } else { "bob" };
    let mut client = ConfigServiceClient::connect(url).await.unwrap();
    let history = client
        .history(call(v1::ConfigHistoryRequest { limit: 10 }, TOKEN, "carol"))
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].actor, winner);
    iso.cleanup_bus().await;
}
