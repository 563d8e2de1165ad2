//! Least privilege on the bus (issue #15): a `nats-server` of the test's
//! own, over TLS (the test CA as `ca_bundle`), with the users and subject
//! permissions `breakglass_bus::permissions` generates (the same block
//! `breakglass nats-config` prints for the manifests). The four services,
//! each as its own user, run a trigger from the Mavis-core user to a
//! finished run; then each forbidden publish, read or subscription is
//! refused by the server, and a wrong password or an untrusted server
//! certificate stops a service with a masked error.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_bus::permissions::{Password, Role, User, authorization_block, inbox_prefix};
use breakglass_bus::{Bus, BusOptions, Subjects};
use breakglass_core::Secret;
use breakglass_e2e::{ServiceProcess, TestCa, database_url, write_config};
use breakglass_proto::v1;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server with JetStream, TLS and the generated authorization.
struct Nats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Nats {
    fn start(ca: &TestCa, authorization: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (port, monitor) = (free_port(), free_port());
        let conf = dir.path().join("nats.conf");
        let log = dir.path().join("nats.log");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 tls {{ cert_file: {cert:?}, key_file: {key:?} }}\n{authorization}",
                store = dir.path().join("js").display().to_string(),
                cert = ca.cert_pem.display().to_string(),
                key = ca.key_pem.display().to_string(),
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/nats-server")
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if healthz(monitor).is_some_and(|body| body.contains("ok")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not get ready: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            port,
            _dir: dir,
            log,
        }
    }

    fn url(&self, scheme: &str, user: &str, password: &str) -> String {
        format!("{scheme}://{user}:{password}@127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthz(monitor: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", monitor)).ok()?;
    write!(
        stream,
        "GET /healthz?js-enabled-only=true HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

/// A raw client as `user`, over TLS, that records the server's errors
/// (permission violations arrive as `-ERR`, not as call results).
async fn raw_client(
    nats: &Nats,
    ca: &TestCa,
    user: &str,
    password: &str,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .add_root_certificates(ca.ca_pem.clone())
        .require_tls(true)
        .custom_inbox_prefix(inbox_prefix(user))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(err) = event {
                    let _ = tx.send(err.to_string());
                }
            }
        })
        .connect(format!("tls://127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    (client, rx)
}

/// Waits for the server to report a permission violation naming `subject`.
async fn violation(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>, subject: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let error = tokio::time::timeout_at(deadline, errors.recv())
            .await
            .unwrap_or_else(|_| panic!("no permission violation for {subject}"))
            .unwrap();
        if error.to_lowercase().contains("permissions violation") && error.contains(subject) {
            return;
        }
    }
}

struct Users {
    passwords: Vec<(Role, String)>,
}

impl Users {
    fn new() -> Self {
        Self {
            passwords: Role::ALL
                .into_iter()
                .map(|role| (role, uuid::Uuid::new_v4().simple().to_string()))
                .collect(),
        }
    }

    fn password(&self, role: Role) -> &str {
        &self.passwords.iter().find(|(r, _)| *r == role).unwrap().1
    }

    fn block(&self, prefix: &str) -> String {
        let users: Vec<User> = self
            .passwords
            .iter()
            .map(|(role, password)| User {
                role: *role,
                name: role.user().into(),
                password: Password::Literal(Secret::new(password.clone())),
            })
            .collect();
        authorization_block(prefix, &users)
    }
}

fn service_config(
    dir: &Path,
    name: &str,
    nats_url: &str,
    ca: &TestCa,
    prefix: &str,
    key: &str,
    extra: &[(&str, &str)],
) -> PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let ca_bundle = ca.ca_pem.display().to_string();
    let mut entries = vec![
        ("nats_url", nats_url),
        ("ca_bundle", ca_bundle.as_str()),
        ("bus_prefix", prefix),
        ("payload_key", key),
        ("ack_wait_seconds", "5"),
        ("max_deliver", "3"),
    ];
    entries.extend_from_slice(extra);
    write_config(&sub, &entries)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_service_works_as_its_own_user_and_nothing_more() {
    let ca = TestCa::generate();
    let users = Users::new();
    let prefix = format!("bga{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let nats = Nats::start(&ca, &users.block(&prefix));
    let subjects = Subjects::new(&prefix);
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let out = dir.path().join("out");
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(&inventory, breakglass_collect::csv_file::BUNDLED_SAMPLE).unwrap();
    let (out_text, inventory_text, db) = (
        out.display().to_string(),
        inventory.display().to_string(),
        database_url(),
    );
    let schema = format!("{prefix}_log");

    // The four services, each connecting as its own user over TLS.
    let mut services = Vec::new();
    let common = [
        ("inventory_url", inventory_text.as_str()),
        ("local_dir", out_text.as_str()),
        ("encryption", "none"),
    ];
    for (role, mut extra) in [
        (
            Role::Scheduler,
            vec![
                ("database_url", db.as_str()),
                ("database_schema", schema.as_str()),
            ],
        ),
        (Role::Collector, vec![]),
        (Role::Renderer, vec![]),
        (Role::Uploader, vec![]),
    ] {
        extra.extend_from_slice(&common);
        let url = nats.url("tls", role.user(), users.password(role));
        let config = service_config(
            dir.path(),
            role.user(),
            &url,
            &ca,
            &prefix,
            key.expose(),
            &extra,
        );
        let mut process =
            ServiceProcess::start(role.user(), &config, &dir.path().join(role.user())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = process.http_get("/readyz").await.unwrap();
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready: {body}\n{}\nnats: {}",
                role.user(),
                process.log_text(),
                nats.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        services.push((role, process));
    }

    // The Mavis core publishes a trigger and reads the run's result.
    let mavis = Bus::connect(BusOptions {
        url: nats
            .url("tls", "mavis", users.password(Role::MavisCore))
            .into(),
        prefix: prefix.clone(),
        ack_wait: Duration::from_secs(5),
        max_deliver: 3,
        payload_ttl: Duration::from_secs(3600),
        replicas: 1,
        payload_key: None,
        ca_bundle: Some(ca.ca_pem.clone()),
    })
    .await
    .unwrap();
    let run_id = format!("auth-{prefix}");
    mavis
        .trigger(&v1::TriggerRequested {
            run_id: run_id.clone(),
            reason: v1::TriggerReason::OnDemand as i32,
            requested_by: "mavis-core".into(),
            requested_at_unix_ms: 0,
            note: "nats auth e2e".into(),
        })
        .await
        .unwrap();
    let finished = mavis
        .wait_for_run(&run_id, Duration::from_secs(120))
        .await
        .unwrap();
    let logs: String = services
        .iter()
        .map(|(role, p)| format!("--- {}\n{}", role.user(), p.log_text()))
        .collect();
    let finished = finished
        .unwrap_or_else(|| panic!("the run did not finish\n{logs}\nnats: {}", nats.log_text()));
    assert_eq!(
        finished.status,
        v1::RunStatus::Succeeded as i32,
        "{finished:?}\n{logs}\nnats: {}",
        nats.log_text()
    );
    assert!(
        std::fs::read_dir(&out).unwrap().next().is_some(),
        "no workbook in {out:?}"
    );
    // No service hit a permission it lacks on the way, and no password
    // reached a log.
    assert!(
        !nats.log_text().to_lowercase().contains("violation"),
        "{}",
        nats.log_text()
    );
    for (role, _) in &users.passwords {
        assert!(
            !logs.contains(users.password(*role)),
            "a NATS password in a log"
        );
    }

    // Forbidden: the collector publishing what the renderer produces.
    let (collector, mut collector_errors) =
        raw_client(&nats, &ca, "collector", users.password(Role::Collector)).await;
    collector
        .publish(subjects.workbook_ready(), "forged".into())
        .await
        .unwrap();
    violation(&mut collector_errors, &subjects.workbook_ready()).await;
    // ... or a trigger, or settings.
    collector
        .publish(subjects.trigger(), "forged".into())
        .await
        .unwrap();
    violation(&mut collector_errors, &subjects.trigger()).await;
    let settings = format!("$KV.{}.settings", subjects.settings_bucket());
    collector
        .publish(settings.clone(), "forged".into())
        .await
        .unwrap();
    violation(&mut collector_errors, &settings).await;
    // ... or reading the payloads back (an object store read is a consumer).
    let object_stream = format!("OBJ_{}", subjects.payload_bucket());
    let js = async_nats::jetstream::new(collector.clone());
    let store = js
        .get_object_store(subjects.payload_bucket())
        .await
        .unwrap();
    // Listing the objects (like reading one) needs a consumer on the store.
    let _ = tokio::time::timeout(Duration::from_secs(6), store.list()).await;
    violation(
        &mut collector_errors,
        &format!("$JS.API.CONSUMER.CREATE.{object_stream}"),
    )
    .await;
    // ... or listening on another user's replies.
    let _sub = collector
        .subscribe(format!("{}.>", inbox_prefix("renderer")))
        .await
        .unwrap();
    violation(&mut collector_errors, &inbox_prefix("renderer")).await;

    // Forbidden: the Mavis core publishing a stage's event, reading the
    // payload object store, pulling a stage's consumer.
    let (core, mut core_errors) =
        raw_client(&nats, &ca, "mavis", users.password(Role::MavisCore)).await;
    core.publish(subjects.snapshot_ready(), "forged".into())
        .await
        .unwrap();
    violation(&mut core_errors, &subjects.snapshot_ready()).await;
    let js = async_nats::jetstream::new(core.clone());
    let _ = tokio::time::timeout(
        Duration::from_secs(6),
        js.get_object_store(subjects.payload_bucket()),
    )
    .await;
    violation(
        &mut core_errors,
        &format!("$JS.API.STREAM.INFO.{object_stream}"),
    )
    .await;
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{}.collector", subjects.stream());
    core.publish(next.clone(), "1".into()).await.unwrap();
    violation(&mut core_errors, &next).await;
    let _sub = core.subscribe(subjects.all()).await.unwrap();
    violation(&mut core_errors, &subjects.all()).await;

    // Forbidden: the renderer publishing a trigger; the uploader writing
    // payloads.
    let (renderer, mut renderer_errors) =
        raw_client(&nats, &ca, "renderer", users.password(Role::Renderer)).await;
    renderer
        .publish(subjects.trigger(), "forged".into())
        .await
        .unwrap();
    violation(&mut renderer_errors, &subjects.trigger()).await;
    let (uploader, mut uploader_errors) =
        raw_client(&nats, &ca, "uploader", users.password(Role::Uploader)).await;
    let chunk = format!("$O.{}.C.forged", subjects.payload_bucket());
    uploader
        .publish(chunk.clone(), "forged".into())
        .await
        .unwrap();
    violation(&mut uploader_errors, &chunk).await;

    // None of the forged events reached the stream: the scheduler's run
    // log consumer saw only the real run's events (read back as the
    // scheduler's user, who may read the stream).
    let scheduler_bus = Bus::connect(BusOptions {
        url: nats
            .url("tls", "scheduler", users.password(Role::Scheduler))
            .into(),
        prefix: prefix.clone(),
        ack_wait: Duration::from_secs(5),
        max_deliver: 3,
        payload_ttl: Duration::from_secs(3600),
        replicas: 1,
        payload_key: None,
        ca_bundle: Some(ca.ca_pem.clone()),
    })
    .await
    .unwrap();
    let stream = scheduler_bus
        .jetstream()
        .get_stream(subjects.stream())
        .await
        .unwrap();
    for subject in [subjects.workbook_ready(), subjects.snapshot_ready()] {
        let last = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap();
        assert_ne!(last.payload.as_ref(), b"forged", "{subject}");
    }
    let trigger = stream
        .get_last_raw_message_by_subject(&subjects.trigger())
        .await
        .unwrap();
    assert_ne!(trigger.payload.as_ref(), b"forged");

    for (_, mut process) in services {
        process.terminate(Duration::from_secs(30)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_or_an_untrusted_server_is_refused_and_the_password_stays_masked() {
    let ca = TestCa::generate();
    let users = Users::new();
    let prefix = format!("bga{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let nats = Nats::start(&ca, &users.block(&prefix));
    let dir = tempfile::tempdir().unwrap();
    let key = breakglass_bus::payload::PayloadKey::generate();
    let inventory = dir.path().join("inventory.csv");
    std::fs::write(&inventory, breakglass_collect::csv_file::BUNDLED_SAMPLE).unwrap();
    let inventory_text = inventory.display().to_string();
    let wrong = "not-the-collector-password-5f2c";
    let good = users.password(Role::Collector).to_owned();
    // A wrong password; the right one but without `ca_bundle` (the test CA
    // is then not trusted: the machine's CA variables are removed).
    for (name, password, with_ca) in [("wrong", wrong, true), ("untrusted", good.as_str(), false)] {
        let url = nats.url("tls", "collector", password);
        let mut config = service_config(
            dir.path(),
            name,
            &url,
            &ca,
            &prefix,
            key.expose(),
            &[
                ("inventory_url", inventory_text.as_str()),
                ("encryption", "none"),
            ],
        );
        if !with_ca {
            let text = std::fs::read_to_string(&config).unwrap();
            let kept: String = text
                .lines()
                .filter(|l| !l.starts_with("ca_bundle:"))
                .map(|l| format!("{l}\n"))
                .collect();
            config = dir.path().join(name).join("no-ca.conf");
            std::fs::write(&config, kept).unwrap();
        }
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(breakglass_e2e::bin("collector"))
                .arg("--config")
                .arg(&config)
                .args(["--http", "127.0.0.1:0"])
                .env_remove("SSL_CERT_FILE")
                .env_remove("SSL_CERT_DIR")
                .output(),
        )
        .await
        .expect("the collector gives up")
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{name}: {text}");
        assert!(
            !text.contains(wrong) && !text.contains(&good),
            "{name}: {text}"
        );
        if name == "wrong" {
            assert!(
                text.to_lowercase().contains("authorization"),
                "{name}: {text}"
            );
        }
    }
}
