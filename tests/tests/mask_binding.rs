//! Issue #12 part 2: a masked secret is only ever sent where it was meant
//! to go. A caller holding the gRPC token sends the settings page's mask
//! for a stored secret together with an endpoint of their own (a listener
//! this test starts and records): the uploader's Test and the config API's
//! Validate and Update refuse with INVALID_ARGUMENT naming the secret, and
//! the listener receives nothing. The same fields left unchanged (or
//! re-typed in another spelling) keep working, and a new endpoint with a
//! freshly typed secret is accepted; that last case also proves the
//! listener would have seen a signature had the secret been sent.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_e2e::{
    Azurite, Isolation, Moto, RecordingListener, ServiceProcess, bin, database_url, nats_url,
    write_config,
};
use breakglass_proto::v1;
use breakglass_proto::v1::config_service_client::ConfigServiceClient;
use breakglass_proto::v1::destination_test_client::DestinationTestClient;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const TOKEN: &str = "mask-binding-token-0123456789";
const MASK: &str = "********";
const PUT_ONLY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:PutObject"],"Resource":"*"}]}"#;

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn with(base: &HashMap<String, String>, changes: &[(&str, &str)]) -> HashMap<String, String> {
    let mut next = base.clone();
    for (key, value) in changes {
        next.insert((*key).to_owned(), (*value).to_owned());
    }
    next
}

/// An uploader serving the Test on a free port, with `config`.
async fn uploader(config: &Path, dir: &Path) -> (ServiceProcess, DestinationTestClient<Channel>) {
    let addr = breakglass_e2e::free_loopback_addr();
    let mut process = ServiceProcess::start_with_env(
        "uploader",
        config,
        dir,
        &[("BREAKGLASS_GRPC_ADDR", Path::new(&addr))],
    )
    .unwrap();
    process
        .wait_for_log("gRPC API listening", Duration::from_secs(60))
        .await
        .unwrap();
    let client = DestinationTestClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (process, client)
}

async fn test_call(
    client: &mut DestinationTestClient<Channel>,
    settings: HashMap<String, String>,
) -> Result<v1::TestReport, tonic::Status> {
    client
        .run_unary(breakglass_e2e::authorized(
            v1::TestRequest { settings },
            TOKEN,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Asserts `status` is INVALID_ARGUMENT with a field violation on `secret`
/// that names `changed` and asks for the secret again.
fn assert_refused(status: &tonic::Status, secret: &str, changed: &str) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let violations = &details
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest details: {status:?}"))
        .field_violations;
    let violation = violations
        .iter()
        .find(|v| v.field == secret)
        .unwrap_or_else(|| panic!("no violation on {secret}: {violations:?}"));
    assert!(
        violation
            .description
            .contains("the stored secret is only sent to the endpoint it was saved with")
            && violation
                .description
                .contains(&format!("{changed} changed"))
            && violation.description.contains("type the secret again"),
        "{violation:?}"
    );
}

/// Nothing reached the listener: no connection, no byte.
fn assert_untouched(listener: &RecordingListener, what: &str) {
    let received = listener.received();
    assert!(
        listener.connections() == 0 && received.is_empty(),
        "{what}: the listener was contacted ({} connections) and received:\n{received}",
        listener.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_azure_key_in_the_test_is_not_sent_to_another_endpoint() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "backups"]);
    let listener = RecordingListener::start().await;
    let iso = Isolation::new("maskblob");
    let dir = tempfile::tempdir().unwrap();
    let payload_key = breakglass_bus::payload::PayloadKey::generate();
    let nats = nats_url();
    // Option 1: the mounted file holds the settings and the key.
    let stored = [
        ("storage_provider", "blob"),
        ("blob_endpoint", azurite.endpoint.as_str()),
        ("blob_protocol", "http"),
        ("blob_account_name", Azurite::ACCOUNT),
        ("blob_container", "backups"),
        ("path_prefix", "mavis"),
    ];
    let mut entries = stored.to_vec();
    entries.extend([
        ("blob_account_key", Azurite::KEY),
        ("encryption_passphrase", "mask binding passphrase 2026"),
        ("nats_url", nats.as_str()),
        ("bus_prefix", iso.prefix.as_str()),
        ("payload_key", payload_key.expose()),
        ("grpc_token", TOKEN),
    ]);
    let config = write_config(dir.path(), &entries);
    let (_uploader, mut client) = uploader(&config, dir.path()).await;
    let page = with(&fields(&stored), &[("blob_account_key", MASK)]);

    // The attacker's request: the real account, the mask, their endpoint.
    let elsewhere = format!("http://127.0.0.1:{}/{}", listener.port, Azurite::ACCOUNT);
    let attack = with(&page, &[("blob_endpoint", &elsewhere)]);
    let unary = test_call(&mut client, attack.clone()).await;
    assert_untouched(&listener, "unary Test with a masked key");
    assert_refused(
        unary.as_ref().unwrap_err(),
        "blob_account_key",
        "blob_endpoint",
    );
    let streaming = client
        .run(breakglass_e2e::authorized(
            v1::TestRequest {
                settings: attack.clone(),
            },
            TOKEN,
        ))
        .await;
    let stream_error = match streaming {
        Ok(response) => {
            let mut stream = response.into_inner();
            while let Ok(Some(_)) = stream.message().await {}
            None
        }
        Err(status) => Some(status),
    };
    assert_untouched(&listener, "streaming Test with a masked key");
    assert_refused(
        &stream_error.expect("the streaming Test is refused"),
        "blob_account_key",
        "blob_endpoint",
    );
    // Another account on the same Azurite, or another protocol: refused too.
    let other_account = test_call(
        &mut client,
        with(&page, &[("blob_account_name", "attacker")]),
    )
    .await
    .unwrap_err();
    assert_refused(&other_account, "blob_account_key", "blob_account_name");
    assert!(!format!("{unary:?}{other_account:?}").contains(Azurite::KEY));

    // Unchanged, or the same endpoint re-typed with a trailing slash: the
    // mask keeps the file's key, and the Test passes against Azurite.
    for same in [azurite.endpoint.clone(), format!("{}/", azurite.endpoint)] {
        let report = test_call(&mut client, with(&page, &[("blob_endpoint", &same)]))
            .await
            .unwrap();
        assert!(report.passed, "{same}: {report:?}");
    }

    // A new endpoint with a freshly typed key is the admin's decision: the
    // call is accepted, and the listener sees the signed request, which
    // shows it would have seen one above.
    let fresh = test_call(
        &mut client,
        with(
            &attack,
            &[(
                "blob_account_key",
                "ZnJlc2hseS10eXBlZC1rZXktZm9yLXRoaXMtdGVzdA==",
            )],
        ),
    )
    .await
    .unwrap();
    assert!(!fresh.passed);
    assert!(
        listener.received().contains("sig="),
        "{}",
        listener.received()
    );
    iso.cleanup_bus().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_s3_secret_in_the_test_is_not_sent_to_another_endpoint() {
    let mut moto = Moto::start();
    moto.tool(&["create-bucket", "backups"]);
    let (key_id, secret) = moto.iam_user("writer", PUT_ONLY);
    moto.enforce_iam();
    let listener = RecordingListener::start().await;
    let iso = Isolation::new("masks3");
    let dir = tempfile::tempdir().unwrap();
    let payload_key = breakglass_bus::payload::PayloadKey::generate();
    let nats = nats_url();
    let stored = [
        ("storage_provider", "s3"),
        ("s3_url", moto.endpoint.as_str()),
        ("s3_protocol", "http"),
        ("s3_region", "us-east-1"),
        ("s3_bucket", "backups"),
        ("s3_access_key_id", key_id.as_str()),
        ("path_prefix", "mavis"),
    ];
    let mut entries = stored.to_vec();
    entries.extend([
        ("s3_secret_access_key", secret.as_str()),
        ("encryption_passphrase", "mask binding passphrase 2026"),
        ("nats_url", nats.as_str()),
        ("bus_prefix", iso.prefix.as_str()),
        ("payload_key", payload_key.expose()),
        ("grpc_token", TOKEN),
    ]);
    let config = write_config(dir.path(), &entries);
    let (uploader, mut client) = uploader(&config, dir.path()).await;
    let page = with(&fields(&stored), &[("s3_secret_access_key", MASK)]);

    let elsewhere = format!("http://127.0.0.1:{}", listener.port);
    let attack = with(&page, &[("s3_url", &elsewhere)]);
    let refused = test_call(&mut client, attack.clone()).await;
    assert_untouched(&listener, "Test with a masked S3 secret");
    let refused = refused.unwrap_err();
    assert_refused(&refused, "s3_secret_access_key", "s3_url");
    for (field, other) in [("s3_bucket", "other-bucket"), ("s3_region", "eu-west-1")] {
        let status = test_call(&mut client, with(&page, &[(field, other)]))
            .await
            .unwrap_err();
        assert_refused(&status, "s3_secret_access_key", field);
    }

    // Unchanged (the endpoint re-typed with a slash): the Test passes.
    let same = format!("{}/", moto.endpoint);
    let report = test_call(&mut client, with(&page, &[("s3_url", &same)]))
        .await
        .unwrap();
    assert!(report.passed, "{report:?}");

    // A freshly typed secret may go anywhere: the listener sees the
    // signature, so it would have seen the stored one.
    let fresh = test_call(
        &mut client,
        with(
            &attack,
            &[("s3_secret_access_key", "freshly-typed-secret-0123456789")],
        ),
    )
    .await
    .unwrap();
    assert!(!fresh.passed);
    let seen = listener.received();
    assert!(
        seen.contains("Signature=") || seen.to_ascii_lowercase().contains("authorization:"),
        "{seen}"
    );
    assert!(!seen.contains(&secret));
    assert!(!uploader.log_text().contains(&secret));
    assert!(!format!("{refused:?}").contains(&secret));
    iso.cleanup_bus().await;
}

/// The wiring-only service secret: the settings come from the config API.
fn wiring(dir: &Path, iso: &Isolation) -> std::path::PathBuf {
    let nats = nats_url();
    let db = database_url();
    let payload_key = breakglass_bus::payload::PayloadKey::generate();
    let settings_key = breakglass_core::seal::SealKey::generate();
    write_config(
        dir,
        &[
            ("nats_url", nats.as_str()),
            ("bus_prefix", iso.prefix.as_str()),
            ("payload_key", payload_key.expose()),
            ("settings_key", settings_key.expose()),
            ("database_url", db.as_str()),
            ("database_schema", iso.schema.as_str()),
            ("grpc_token", TOKEN),
        ],
    )
}

async fn update(
    client: &mut ConfigServiceClient<Channel>,
    fields: HashMap<String, String>,
) -> Result<v1::ConfigSnapshot, tonic::Status> {
    client
        .update(breakglass_e2e::authorized(
            v1::UpdateConfigRequest {
                fields,
                expected_version: None,
            },
            TOKEN,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_api_and_the_test_keep_a_saved_sas_on_its_endpoint() {
    let azurite = Azurite::start();
    azurite.tool(&["create-container", "backups"]);
    let sas = azurite.sas("backups", "cw");
    let signature = sas
        .split("sig=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let listener = RecordingListener::start().await;
    let iso = Isolation::new("masksas");
    let dir = tempfile::tempdir().unwrap();
    let config = wiring(dir.path(), &iso);
    let scheduler_addr = breakglass_e2e::free_loopback_addr();
    let _scheduler =
        breakglass_e2e::start_grpc_scheduler(&config, dir.path(), &scheduler_addr).await;
    let (mut uploader, mut test) = uploader(&config, dir.path()).await;
    let mut api = ConfigServiceClient::connect(format!("http://{scheduler_addr}"))
        .await
        .unwrap();
    let page = |sas: &str, endpoint: &str| {
        fields(&[
            ("storage_provider", "blob"),
            ("blob_endpoint", endpoint),
            ("blob_protocol", "http"),
            ("blob_container", "backups"),
            ("blob_sas_token", sas),
            ("encryption", "none"),
        ])
    };
    let saved = update(&mut api, page(&sas, &azurite.endpoint))
        .await
        .unwrap();
    assert_eq!(saved.version, 1);
    uploader
        .wait_for_log(
            "applying settings saved through the config API",
            Duration::from_secs(30),
        )
        .await
        .unwrap();

    let elsewhere = format!("http://127.0.0.1:{}/{}", listener.port, Azurite::ACCOUNT);
    let attack = page(MASK, &elsewhere);

    // Validate: the problem names the SAS.
    let problems = api
        .validate(breakglass_e2e::authorized(
            v1::UpdateConfigRequest {
                fields: attack.clone(),
                expected_version: Some(1),
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner()
        .problems;
    let problem = problems
        .iter()
        .find(|p| p.field == "blob_sas_token")
        .unwrap_or_else(|| panic!("Validate accepted the masked SAS: {problems:?}"));
    assert!(
        problem.description.contains("blob_endpoint changed")
            && problem.description.contains("type the secret again"),
        "{problem:?}"
    );

    // Update: refused, and the stored settings are unchanged.
    let status = update(&mut api, attack.clone()).await.unwrap_err();
    assert_refused(&status, "blob_sas_token", "blob_endpoint");
    let now = api
        .get(breakglass_e2e::authorized(v1::GetConfigRequest {}, TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.version, 1);
    assert_eq!(now.fields["blob_endpoint"], azurite.endpoint);

    // The CLI's `config set` sends the mask for the secret it does not
    // touch: the same rule answers, naming the secret to type again.
    let output = Command::new(bin("breakglass"))
        .args(["config", "set", &format!("blob_endpoint={elsewhere}")])
        .env("BREAKGLASS_GRPC_URL", format!("http://{scheduler_addr}"))
        .env("BREAKGLASS_GRPC_TOKEN", TOKEN)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    let cli_text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{cli_text}");
    assert!(
        cli_text.contains("blob_sas_token") && cli_text.contains("type the secret again"),
        "{cli_text}"
    );

    // The uploader's Test, with the settings saved through the API.
    let refused = test_call(&mut test, attack.clone()).await;
    assert_untouched(&listener, "Test with a masked SAS");
    assert_refused(&refused.unwrap_err(), "blob_sas_token", "blob_endpoint");

    // The mask with every bound field unchanged still works.
    let report = test_call(&mut test, page(MASK, &azurite.endpoint))
        .await
        .unwrap();
    assert!(report.passed, "{report:?}");
    // Re-typing the same endpoint is not a change.
    let retyped = format!("{}/", azurite.endpoint);
    let saved = update(&mut api, page(MASK, &retyped)).await.unwrap();
    assert_eq!(saved.version, 2);
    assert_eq!(saved.fields["blob_sas_token"], MASK);
    // A new endpoint with a freshly typed SAS is accepted and saved.
    let fresh_sas = "sv=2022-11-02&sr=c&sp=cw&sig=freshly-typed-signature";
    let saved = update(&mut api, page(fresh_sas, &elsewhere)).await.unwrap();
    assert_eq!(saved.version, 3);
    assert_eq!(saved.fields["blob_endpoint"], elsewhere);

    assert!(!listener.received().contains(&signature));
    assert!(!uploader.log_text().contains(&signature));
    assert!(!format!("{status:?}{problems:?}{cli_text}").contains(&signature));
    iso.cleanup_bus().await;
}
