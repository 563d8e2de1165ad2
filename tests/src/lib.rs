//! Helpers for the end-to-end tests: real servers, real processes.
//!
//! - [`nats_url`] / [`database_url`]: the servers `scripts/with-test-services.sh`
//!   provides (defaults: the standard loopback ports).
//! - [`Isolation`]: a unique bus prefix and PostgreSQL schema per test, so
//!   tests run in parallel against shared servers.
//! - [`ServiceProcess`]: one service binary as a child process, its stderr
//!   captured to a file, killed on drop.
//! - [`read_stream`]: every message a test's stream holds, for counting and
//!   for searching.
//! - [`Moto`] / [`Azurite`]: an S3-compatible server or the Azure Blob
//!   emulator of a test's own (HTTP, or HTTPS with a [`TestCa`]), with an
//!   independent client (boto3 / azure-storage-blob) to read back.
//! - [`TestPostgres`]: a PostgreSQL server of a test's own, with TLS from a
//!   [`TestCa`] certificate or plain only.
//! - [`RecordingListener`]: a plain TCP listener that keeps every byte it
//!   is sent, to prove a secret never reached a host it was pointed at.
//! - [`TraceReceiver`]: an in-test OTLP/gRPC receiver keeping every span the
//!   services export, to check a run's trace across processes.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// NATS with JetStream for tests.
pub fn nats_url() -> String {
    std::env::var("BREAKGLASS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// PostgreSQL for tests (trust auth).
pub fn database_url() -> String {
    std::env::var("BREAKGLASS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The folder that holds the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    // target/debug/deps/<test-binary> -> target/debug
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The path of a workspace binary; panics with the fix when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// Names that keep one test's state apart from every other test's.
#[derive(Debug, Clone)]
pub struct Isolation {
    /// Bus prefix: subjects, stream, consumers and bucket derive from it.
    pub prefix: String,
    /// PostgreSQL schema.
    pub schema: String,
}

impl Isolation {
    /// Fresh unique names.
    pub fn new(test: &str) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let short = &id[..10];
        Self {
            prefix: format!("bgt{short}"),
            schema: format!("bgt_{test}_{short}"),
        }
    }

    /// Connects to the test NATS under this isolation's prefix, with the
    /// short ack wait and delivery limit the tests' service configs use.
    pub async fn connect_bus(&self) -> breakglass_bus::Bus {
        self.connect_bus_with(None).await
    }

    /// Like [`Isolation::connect_bus`], holding the services' `payload_key`
    /// (so it seals and verifies events as a service does).
    pub async fn connect_bus_with(
        &self,
        payload_key: Option<breakglass_core::Secret>,
    ) -> breakglass_bus::Bus {
        breakglass_bus::Bus::connect(breakglass_bus::BusOptions {
            url: nats_url().into(),
            prefix: self.prefix.clone(),
            ack_wait: std::time::Duration::from_secs(3),
            max_deliver: 3,
            payload_ttl: std::time::Duration::from_secs(3600),
            replicas: 1,
            payload_key,
            ca_bundle: None,
        })
        .await
        .expect("NATS with JetStream is reachable (make test starts it)")
    }

    /// Removes the stream and object store (best effort).
    pub async fn cleanup_bus(&self) {
        if let Ok(client) = async_nats::connect(nats_url()).await {
            let js = async_nats::jetstream::new(client);
            let subjects = breakglass_bus::Subjects::new(&self.prefix);
            let _ = js.delete_object_store(subjects.payload_bucket()).await;
            let _ = js.delete_stream(subjects.stream()).await;
        }
    }
}

/// A service binary running as a child process.
pub struct ServiceProcess {
    /// Which binary.
    pub name: String,
    child: Child,
    /// Where its stderr (the JSON log) goes.
    pub log: PathBuf,
}

impl ServiceProcess {
    /// Starts `name --config config`, logging to `log_dir/name-N.log`.
    pub fn start(name: &str, config: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with_env(name, config, log_dir, &[])
    }

    /// Like [`ServiceProcess::start`], with extra environment variables.
    pub fn start_with_env(
        name: &str,
        config: &Path,
        log_dir: &Path,
        env: &[(&str, &Path)],
    ) -> anyhow::Result<Self> {
        let mut n = 0;
        let log = loop {
            let candidate = log_dir.join(format!("{name}-{n}.log"));
            if !candidate.exists() {
                break candidate;
            }
            n += 1;
        };
        let stderr = std::fs::File::create(&log)?;
        let child = Command::new(bin(name))
            .arg("--config")
            .arg(config)
            .args(["--http", "127.0.0.1:0"])
            .env("BREAKGLASS_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.into(),
            child,
            log,
        })
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} did not log {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The health/metrics endpoint's address, from the start-up log line.
    pub async fn http_addr(&mut self) -> anyhow::Result<String> {
        self.wait_for_log(
            "health and metrics endpoint listening",
            Duration::from_secs(30),
        )
        .await?;
        let log = self.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("health and metrics endpoint listening"))
            .context("no endpoint line")?;
        let json: serde_json::Value = serde_json::from_str(line)?;
        Ok(json["fields"]["addr"]
            .as_str()
            .context("no addr field")?
            .to_owned())
    }

    /// GETs `path` from the service's endpoint: (status, body).
    pub async fn http_get(&mut self, path: &str) -> anyhow::Result<(u16, String)> {
        use std::io::{Read, Write};
        let addr = self.http_addr().await?;
        let mut stream = std::net::TcpStream::connect(&addr)?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .context("no status")?
            .parse()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// True while the process has not exited (no crash, no restart).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: the process gets no chance to ack or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`STOP`, `CONT`...) without waiting for anything.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message as stored in the stream.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its subject.
    pub subject: String,
    /// Its body.
    pub payload: Vec<u8>,
    /// Its headers, as text.
    pub headers: Vec<(String, String)>,
}

/// Every message in the prefix's stream, in order.
pub async fn read_stream(prefix: &str) -> anyhow::Result<Vec<StoredMessage>> {
    read_named_stream(&breakglass_bus::Subjects::new(prefix).stream()).await
}

/// Every stored message of the object store that holds the prefix's
/// payloads (its chunks and metadata), as the server keeps them.
pub async fn read_object_store(prefix: &str) -> anyhow::Result<Vec<StoredMessage>> {
    read_named_stream(&format!(
        "OBJ_{}",
        breakglass_bus::Subjects::new(prefix).payload_bucket()
    ))
    .await
}

/// Every message of the JetStream stream `name`, in order.
pub async fn read_named_stream(name: &str) -> anyhow::Result<Vec<StoredMessage>> {
    let client = async_nats::connect(nats_url()).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(name).await?;
    let last = stream.info().await?.state.last_sequence;
    let mut out = Vec::new();
    for sequence in 1..=last {
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let headers = message
            .headers
            .iter()
            .map(|(k, vs)| {
                (
                    k.to_string(),
                    vs.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                )
            })
            .collect();
        out.push(StoredMessage {
            subject: message.subject.to_string(),
            payload: message.payload.to_vec(),
            headers,
        });
    }
    Ok(out)
}

/// Writes a service config file into `dir` and returns its path.
pub fn write_config(dir: &Path, entries: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("breakglass.conf");
    let text: String = entries.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    std::fs::write(&path, text).expect("write config");
    path
}

/// A free loopback address (`127.0.0.1:PORT`) for a service's gRPC port.
pub fn free_loopback_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port();
    format!("127.0.0.1:{port}")
}

/// A scheduler serving its gRPC APIs on `addr`, once it listens and its
/// run log is connected.
pub async fn start_grpc_scheduler(config: &Path, dir: &Path, addr: &str) -> ServiceProcess {
    let mut scheduler = ServiceProcess::start_with_env(
        "scheduler",
        config,
        dir,
        &[("BREAKGLASS_GRPC_ADDR", Path::new(addr))],
    )
    .expect("the scheduler starts");
    for line in ["gRPC API listening", "recording runs in the run log"] {
        scheduler
            .wait_for_log(line, Duration::from_secs(60))
            .await
            .expect("the scheduler says it is ready");
    }
    scheduler
}

/// A gRPC request carrying `authorization: Bearer <token>`.
pub fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    request
}

/// The Python with boto3/moto that `make test` provides.
pub fn test_python() -> PathBuf {
    PathBuf::from(std::env::var("BREAKGLASS_TEST_PYTHON").expect(
        "BREAKGLASS_TEST_PYTHON is not set: run the tests through `make test` (scripts/with-test-services.sh installs moto and boto3)",
    ))
}

/// A private CA and a server certificate for 127.0.0.1/localhost it signed.
pub struct TestCa {
    _dir: tempfile::TempDir,
    /// The CA certificate (what `ca_bundle` points to).
    pub ca_pem: PathBuf,
    /// The server certificate chain.
    pub cert_pem: PathBuf,
    /// The server key.
    pub key_pem: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// Generates a fresh CA and server certificate.
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "breakglass test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        let ca_pem = dir.path().join("ca.pem");
        let cert_pem = dir.path().join("server.pem");
        let key_pem = dir.path().join("server.key");
        std::fs::write(&ca_pem, ca_cert.pem()).expect("write CA");
        std::fs::write(&cert_pem, server_cert.pem()).expect("write cert");
        std::fs::write(&key_pem, server_key.serialize_pem()).expect("write key");
        Self {
            _dir: dir,
            ca_pem,
            cert_pem,
            key_pem,
            issuer,
        }
    }

    /// A client certificate for `name` signed by this CA, for mutual TLS:
    /// the certificate and key files, written under `dir`.
    pub fn client_cert(&self, name: &str, dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("client key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        let cert_pem = dir.join(format!("{name}.pem"));
        let key_pem = dir.join(format!("{name}.key"));
        std::fs::write(&cert_pem, cert.pem()).expect("write client cert");
        std::fs::write(&key_pem, key.serialize_pem()).expect("write client key");
        (cert_pem, key_pem)
    }
    /// A server certificate for exactly `names` (DNS names or IP
    /// addresses) signed by this CA: the certificate and key files, written
    /// under `dir`.
    pub fn server_cert(&self, names: &[&str], dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        let cert_pem = dir.join("server-named.pem");
        let key_pem = dir.join("server-named.key");
        std::fs::write(&cert_pem, cert.pem()).expect("write server cert");
        std::fs::write(&key_pem, key.serialize_pem()).expect("write server key");
        (cert_pem, key_pem)
    }
}

/// A PostgreSQL server of a test's own (Debian's binaries, run as the
/// `postgres` user when the test runs as root), listening on every address
/// of a free port, password (SCRAM) authentication over TCP, trust over its
/// private Unix socket for [`TestPostgres::psql`]. With a certificate it
/// accepts only TLS connections (`hostssl`); without, only plain ones
/// (`ssl = off`). Stopped on drop.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    /// The TCP port.
    pub port: u16,
}

impl TestPostgres {
    /// Starts a server; `tls` is the server certificate and key files.
    pub fn start(tls: Option<(&Path, &Path)>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian PostgreSQL is installed (/usr/lib/postgresql)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("a PostgreSQL bin folder");
        let dir = tempfile::tempdir().expect("temp dir");
        // initdb refuses root: the server runs as `postgres` then.
        let own_uid = std::fs::metadata("/proc/self").ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        });
        let owner = if own_uid == Some(0) {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("id postgres");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("the postgres user exists")
            };
            Some((id("-u"), id("-g")))
        } else {
            None
        };
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("0.0.0.0:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = Self {
            dir,
            bin,
            owner,
            port,
        };
        server.chown(server.dir.path());
        server.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '*'\nunix_socket_directories = '{}'\n",
            server.dir.path().display()
        );
        let hba = if let Some((cert, key)) = tls {
            for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                let target = data.join(to);
                std::fs::copy(from, &target).expect("copy server certificate");
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
                server.chown(&target);
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
            "local all all trust\nhostssl all all all scram-sha-256\n"
        } else {
            conf.push_str("ssl = off\n");
            "local all all trust\nhost all all all scram-sha-256\n"
        };
        let mut existing = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        existing.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), existing).expect("write conf");
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write hba");
        let log = server.dir.path().join("server.log");
        server.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf-8 path"),
                "-l",
                log.to_str().expect("utf-8 path"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        server
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        command.current_dir(self.dir.path());
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("{program} runs: {err}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs SQL as the superuser in `database` (over the Unix socket).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let socket = self.dir.path().to_str().expect("utf-8 path").to_owned();
        self.run(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &socket,
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
        )
    }

    /// Creates database `inv` with the inventory view contract over a
    /// small table (as deploy/compose/inventory.sql) and a login role
    /// `reader` with `password` that may only read the view.
    pub fn create_inventory(&self, password: &str) {
        self.psql("postgres", "CREATE DATABASE inv");
        self.psql(
            "inv",
            &format!(
                "CREATE TABLE devices (project text, provider text, device_name text, protocol text, \
                 public_ip text, private_ip text, url text, port text, access_type text, \
                 account text, password text, pem_file_name text, extra_credential text); \
                 INSERT INTO devices VALUES \
                 ('Payments', 'AWS', 'web-1', 'SSH', '203.0.113.1', '10.0.0.1', NULL, '22', 'password', 'root', 'device-pass-1', NULL, NULL), \
                 ('Core', 'Azure', 'db-1', 'PostgreSQL', NULL, '10.1.0.1', NULL, '5432', 'password', 'postgres', 'device-pass-2', NULL, NULL); \
                 CREATE VIEW breakglass_inventory AS SELECT * FROM devices; \
                 CREATE ROLE reader LOGIN PASSWORD '{password}'; \
                 GRANT SELECT ON breakglass_inventory TO reader;"
            ),
        );
    }

    /// Creates a login role `owner` with `password` owning a fresh database
    /// `runs` (for the run log, which creates its schema).
    pub fn create_run_log_database(&self, password: &str) {
        self.psql(
            "postgres",
            &format!("CREATE ROLE owner LOGIN PASSWORD '{password}'"),
        );
        self.psql("postgres", "CREATE DATABASE runs OWNER owner");
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data.to_string_lossy(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A moto S3-compatible server of this test's own.
pub struct Moto {
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub endpoint: String,
    /// The CA that signed its certificate, for HTTPS.
    pub ca_pem: Option<PathBuf>,
    child: Child,
    /// Credential for the tool after [`Moto::enforce_iam`].
    admin: Option<(String, String)>,
}

impl Moto {
    /// Starts moto over HTTP.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// Starts moto over HTTPS with a certificate from `ca`.
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::spawn(Some(ca))
    }

    fn spawn(tls: Option<&TestCa>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let moto = std::env::var("BREAKGLASS_TEST_MOTO")
            .expect("BREAKGLASS_TEST_MOTO is not set: run the tests through `make test`");
        let mut command = Command::new(moto);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(ca) = tls {
            command
                .arg("-c")
                .arg(&ca.cert_pem)
                .arg("-k")
                .arg(&ca.key_pem);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let (scheme, host) = if tls.is_some() {
            ("https", "localhost")
        } else {
            ("http", "127.0.0.1")
        };
        let moto = Self {
            endpoint: format!("{scheme}://{host}:{port}"),
            ca_pem: tls.map(|ca| ca.ca_pem.clone()),
            child,
            admin: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto.tool(&["ping"]);
        moto
    }

    /// Runs tests/py/s3tool.py against this server and returns its stdout.
    pub fn tool(&self, args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/s3tool.py");
        let ca = self
            .ca_pem
            .as_ref()
            .map_or("-".to_string(), |p| p.display().to_string());
        let mut command = Command::new(test_python());
        command.arg(script).arg(&self.endpoint).arg(ca).args(args);
        if let Some((key, secret)) = &self.admin {
            command.env("S3TOOL_KEY", key).env("S3TOOL_SECRET", secret);
        }
        let output = command.output().expect("python runs");
        assert!(
            output.status.success(),
            "s3tool {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Creates an IAM user with `policy` and returns its (key id, secret).
    pub fn iam_user(&self, name: &str, policy: &str) -> (String, String) {
        let json: serde_json::Value =
            serde_json::from_str(&self.tool(&["iam-user", name, policy])).expect("json");
        (
            json["id"].as_str().unwrap_or_default().to_owned(),
            json["secret"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Makes moto check credentials and policies from now on; the tool
    /// keeps working through an admin user made first.
    pub fn enforce_iam(&mut self) {
        let admin = self.iam_user(
            "test-admin",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        );
        self.tool(&["enforce-iam"]);
        self.admin = Some(admin);
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Azurite Blob server of this test's own, in memory, killed on drop.
pub struct Azurite {
    /// The account URL: `http://127.0.0.1:PORT/devstoreaccount1` or
    /// `https://localhost:PORT/devstoreaccount1`.
    pub endpoint: String,
    /// The CA that signed its certificate, for HTTPS.
    pub ca_pem: Option<PathBuf>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Azurite {
    /// The development account every Azurite has.
    pub const ACCOUNT: &'static str = "devstoreaccount1";
    /// Its well-known key (public, documented by Microsoft).
    pub const KEY: &'static str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// Starts Azurite over HTTP.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// Starts Azurite over HTTPS with a certificate from `ca`.
    pub fn start_tls(ca: &TestCa) -> Self {
        Self::spawn(Some(ca))
    }

    fn spawn(tls: Option<&TestCa>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let azurite = std::env::var("BREAKGLASS_TEST_AZURITE").expect(
            "BREAKGLASS_TEST_AZURITE is not set: run the tests through `make test` (scripts/with-test-services.sh installs Azurite)",
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(azurite);
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args([
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--loose",
            ])
            // In memory: nothing is written, but run it in a folder of its own.
            .current_dir(dir.path());
        if let Some(ca) = tls {
            command
                .arg("--cert")
                .arg(&ca.cert_pem)
                .arg("--key")
                .arg(&ca.key_pem);
        }
        let log = std::fs::File::create(dir.path().join("azurite.log")).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("azurite-blob starts");
        let (scheme, host) = if tls.is_some() {
            ("https", "localhost")
        } else {
            ("http", "127.0.0.1")
        };
        let mut azurite = Self {
            endpoint: format!("{scheme}://{host}:{port}/{}", Self::ACCOUNT),
            ca_pem: tls.map(|ca| ca.ca_pem.clone()),
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = azurite.child.try_wait() {
                panic!("azurite exited ({status}): {}", azurite.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "azurite did not start: {}",
                azurite.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening is not serving yet: wait for a real request to succeed.
        loop {
            match azurite.try_tool(&["ping"]) {
                Ok(_) => break,
                Err(err) => assert!(
                    Instant::now() < deadline,
                    "azurite does not answer: {err}\n{}",
                    azurite.log_text()
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        azurite
    }

    /// Azurite's own output so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("azurite.log")).unwrap_or_default()
    }

    /// Runs tests/py/blobtool.py against this server; stdout or stderr.
    pub fn try_tool(&self, args: &[&str]) -> Result<String, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/blobtool.py");
        let ca = self
            .ca_pem
            .as_ref()
            .map_or("-".to_string(), |p| p.display().to_string());
        let output = Command::new(test_python())
            .arg(script)
            .arg(&self.endpoint)
            .arg(ca)
            .args(args)
            .output()
            .map_err(|err| err.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Runs tests/py/blobtool.py and returns its stdout; panics on failure.
    pub fn tool(&self, args: &[&str]) -> String {
        self.try_tool(args)
            .unwrap_or_else(|err| panic!("blobtool {args:?} failed: {err}"))
    }

    /// A container SAS token with `permissions` (e.g. `c`, `cw`), signed by
    /// the independent client.
    pub fn sas(&self, container: &str, permissions: &str) -> String {
        self.tool(&["sas", container, permissions])
            .trim()
            .to_owned()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Decrypts an ECMA-376 (Excel password) file with msoffcrypto-tool, the
/// independent implementation; returns its stderr on failure (e.g. a wrong
/// password).
pub fn office_decrypt(input: &Path, password: &str, output: &Path) -> Result<(), String> {
    let result = Command::new(test_python())
        .args(["-m", "msoffcrypto", "-p", password])
        .arg(input)
        .arg(output)
        .output()
        .map_err(|err| err.to_string())?;
    if result.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&result.stderr).into_owned())
    }
}

/// The `age` command-line tool that `make test` provides.
pub fn age_cli() -> PathBuf {
    PathBuf::from(std::env::var("BREAKGLASS_TEST_AGE").unwrap_or_else(|_| "age".into()))
}

/// A TCP proxy that forwards to `target` until `cut_after` bytes have gone
/// upstream, then drops every connection and stops listening: the server
/// "goes away" in the middle of an upload.
pub async fn cutting_proxy(target: std::net::SocketAddr, cut_after: u64) -> u16 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let sent = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if cut.load(Ordering::SeqCst) {
                break; // drops the listener: later connects are refused
            }
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                break;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let (sent, cut) = (sent.clone(), cut.clone());
            let downstream = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 << 10];
                while let Ok(n) = client_read.read(&mut buffer).await {
                    if n == 0 || cut.load(Ordering::SeqCst) {
                        break;
                    }
                    if sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > cut_after {
                        cut.store(true, Ordering::SeqCst);
                        break;
                    }
                    if server_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
                // Both directions die at once, as when the server process stops.
                downstream.abort();
            });
        }
    });
    port
}

/// An OTLP/gRPC trace receiver of a test's own: the services export to it
/// (`OTEL_EXPORTER_OTLP_ENDPOINT=`[`TraceReceiver::endpoint`]) and the test
/// reads back every span they sent, to check parent/child links across
/// processes. No collector is packaged; this is the generated
/// `TraceService` server of `opentelemetry-proto`, served with tonic on
/// 127.0.0.1 at a free port, keeping the spans in memory. Stopped on drop.
pub struct TraceReceiver {
    /// `http://127.0.0.1:<port>`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

/// One span as an exporter sent it to a [`TraceReceiver`]. Ids are lower-case
/// hex, as in a `traceparent` header.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// The span's name (`otel.name` when the code set one).
    pub name: String,
    /// The exporting process's `service.name` resource attribute.
    pub service: String,
    /// The span's attributes, each value rendered as text.
    pub attributes: Vec<(String, String)>,
    /// The span's events (log lines inside it): name and attributes.
    pub events: Vec<(String, Vec<(String, String)>)>,
}

impl ReceivedSpan {
    /// The attribute `key` as text, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

mod otlp {
    use super::ReceivedSpan;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use std::sync::{Arc, Mutex};

    pub(super) struct Collect(pub(super) Arc<Mutex<Vec<ReceivedSpan>>>);

    fn text(value: Option<&AnyValue>) -> String {
        match value.and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            Some(any_value::Value::BoolValue(b)) => b.to_string(),
            Some(any_value::Value::IntValue(i)) => i.to_string(),
            Some(any_value::Value::DoubleValue(d)) => d.to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        }
    }

    fn pairs(attributes: &[KeyValue]) -> Vec<(String, String)> {
        attributes
            .iter()
            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
            .collect()
    }

    #[tonic::async_trait]
    impl TraceService for Collect {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut received = Vec::new();
            for resource_spans in request.into_inner().resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                    .map(|kv| text(kv.value.as_ref()))
                    .unwrap_or_default();
                for scope_spans in resource_spans.scope_spans {
                    for span in scope_spans.spans {
                        received.push(ReceivedSpan {
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent_span_id: hex::encode(&span.parent_span_id),
                            name: span.name.clone(),
                            service: service.clone(),
                            attributes: pairs(&span.attributes),
                            events: span
                                .events
                                .iter()
                                .map(|e| (e.name.clone(), pairs(&e.attributes)))
                                .collect(),
                        });
                    }
                }
            }
            self.0
                .lock()
                .map_err(|_| tonic::Status::internal("span store poisoned"))?
                .extend(received);
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }
}

impl TraceReceiver {
    /// Starts the receiver on 127.0.0.1 at a free port. Call inside the
    /// test's Tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(otlp::Collect(spans.clone()));
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            if let Err(err) = tonic::transport::Server::builder()
                .serve_with_incoming(service, incoming)
                .await
            {
                eprintln!("OTLP test receiver stopped: {err}");
            }
        });
        Ok(Self {
            endpoint,
            spans,
            task,
        })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .map(|spans| spans.clone())
            .unwrap_or_default()
    }

    /// Polls until `done` holds for the spans received, or `timeout`
    /// passes; returns the spans either way.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TraceReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A plain TCP listener on `127.0.0.1` that records every byte any peer
/// sends it: the stand-in for a host an attacker points a setting at. Each
/// connection is read until the peer closes it or is quiet for a second;
/// after a request's headers it answers `403` so an HTTP client gives up
/// rather than retrying. Stops on drop.
pub struct RecordingListener {
    /// The port it listens on.
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingListener {
    /// Starts listening on a free loopback port.
    pub async fn start() -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback listener");
        let port = listener.local_addr().expect("its address").port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (into, counter) = (received.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let into = into.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buffer = [0u8; 8192];
                    let mut answered = false;
                    loop {
                        let read =
                            tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer))
                                .await;
                        let n = match read {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => break,
                        };
                        seen.extend_from_slice(&buffer[..n]);
                        if let Ok(mut all) = into.lock() {
                            all.extend_from_slice(&buffer[..n]);
                        }
                        if !answered && seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            answered = true;
                            let _ = stream
                                .write_all(
                                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                                )
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            port,
            received,
            connections,
            task,
        }
    }

    /// Every byte received so far, from all connections, as text.
    pub fn received(&self) -> String {
        let bytes = self.received.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RecordingListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Isolation {
    /// Like [`Isolation::connect_bus`], to the NATS at `url` (a test's own
    /// [`PrivateNats`]), with the services' `max_deliver`: the first
    /// connection creates the durable consumers, which keep its settings.
    /// `replicas` is the services' `bus_replicas`, for the same reason.
    pub async fn connect_bus_at(
        &self,
        url: &str,
        max_deliver: i64,
        replicas: usize,
    ) -> breakglass_bus::Bus {
        self.try_connect_bus_at(url, max_deliver, replicas)
            .await
            .expect("the test's NATS is reachable")
    }

    /// [`Isolation::connect_bus_at`], returning the error.
    pub async fn try_connect_bus_at(
        &self,
        url: &str,
        max_deliver: i64,
        replicas: usize,
    ) -> Result<breakglass_bus::Bus, breakglass_bus::BusError> {
        breakglass_bus::Bus::connect(breakglass_bus::BusOptions {
            url: url.to_owned().into(),
            prefix: self.prefix.clone(),
            ack_wait: std::time::Duration::from_secs(3),
            max_deliver,
            payload_ttl: std::time::Duration::from_secs(3600),
            replicas,
            payload_key: None,
            ca_bundle: None,
        })
        .await
    }
}

/// A nats-server with JetStream of one test's own: its own port and store
/// folder, so the test may stop it and start it again on the same port
/// (the services reconnect to the same URL) with the stream intact.
pub struct PrivateNats {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    monitor: u16,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts it and waits until JetStream answers.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Like [`PrivateNats::start`], with `config` (nats-server's config
    /// syntax, e.g. `max_payload: 200KB`) as its config file.
    pub fn start_with_config(config: &str) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = (!config.is_empty()).then(|| {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, config).expect("config file");
            path
        });
        let mut nats = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            monitor: free_port(),
            dir,
            config,
            child: None,
        };
        nats.restart();
        nats
    }

    /// Stops the server at once (SIGKILL): every client loses its connection.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is
    /// answered until [`PrivateNats::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Starts the server again on the same port and store; waits until
    /// JetStream is ready.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("log file");
        let mut command = Command::new("nats-server");
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("nats-server starts (Debian package nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if Self::healthy(self.monitor) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(monitor: u16) -> bool {
        Self::healthy_at(monitor, "/healthz?js-enabled-only=true")
    }

    /// True when the monitor port answers `path` with 200.
    fn healthy_at(monitor: u16, path: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", monitor)) else {
            return false;
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{monitor}\r\nConnection: close\r\n\r\n"
        );
        let mut response = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut response).is_ok()
            && response.starts_with("HTTP/1.1 200")
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three nats-server processes in one JetStream cluster of a test's own
/// (own client, route and monitor ports, own store folders), their routes
/// on mutual TLS from a CA of the test's own: the shape the K3s StatefulSet
/// runs, on loopback. A node may be killed (SIGKILL) and started again on
/// the same ports and store.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<ClusterNode>,
    routes: Vec<u16>,
    _ca: TestCa,
}

struct ClusterNode {
    name: String,
    client: u16,
    monitor: u16,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts three nodes and waits until each answers its health check
    /// with JetStream on and the cluster has a meta leader. Free ports are
    /// picked by binding and releasing them, so a concurrent test may take
    /// one in between: a node that exits at start-up (its port taken) makes
    /// the cluster start again on fresh ports, up to three times.
    pub fn start() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start() {
                Ok(cluster) => return cluster,
                Err(logs) => last = logs,
            }
        }
        panic!("the NATS cluster did not start in three tries:\n{last}");
    }

    /// One try of [`NatsCluster::start`]; the nodes' logs when a node died.
    fn try_start() -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::generate();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let client = free_port();
            let monitor = free_port();
            let others: Vec<String> = routes
                .iter()
                .filter(|r| *r != route)
                .map(|r| format!("nats-route://127.0.0.1:{r}"))
                .collect();
            let store = dir.path().join(&name);
            // The cluster block of deploy/k8s/nats.yaml: routes on mutual
            // TLS, every node with a certificate from the one route CA.
            let conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{ name: breakglass-test, listen: 127.0.0.1:{route}, \
                 tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, timeout: 5 }}, \
                 routes: [{}] }}\n",
                ca.cert_pem,
                ca.key_pem,
                ca.ca_pem,
                others.join(", ")
            );
            std::fs::write(dir.path().join(format!("{name}.conf")), conf).expect("node config");
            nodes.push(ClusterNode {
                name,
                client,
                monitor,
                child: None,
            });
        }
        let mut cluster = Self {
            dir,
            nodes,
            routes,
            _ca: ca,
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        for i in 0..cluster.nodes.len() {
            // Plain /healthz also waits for the JetStream meta leader.
            while !PrivateNats::healthy_at(cluster.nodes[i].monitor, "/healthz") {
                if cluster.any_node_exited() {
                    return Err(cluster.logs());
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node {} did not become healthy\n{}",
                    cluster.nodes[i].name,
                    cluster.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // And until every node sees the meta group whole and current: only
        // then does an R3 stream find its three peers at once (on a loaded
        // machine the first create otherwise times out).
        while !cluster
            .nodes
            .iter()
            .all(|node| meta_group_whole(node.monitor))
        {
            assert!(
                Instant::now() < deadline,
                "the JetStream meta group did not form\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(cluster)
    }

    /// True when a node's process has ended.
    fn any_node_exited(&mut self) -> bool {
        self.nodes.iter_mut().any(|node| {
            node.child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))))
        })
    }

    fn spawn(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(self.dir.path().join(format!("{name}.conf")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("nats-server starts (Debian package nats-server)");
        self.nodes[i].child = Some(child);
    }

    /// Every node's client URL, comma separated (as `nats_url` takes them).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills the node whose `server_name` is `name` (SIGKILL).
    pub fn kill(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no cluster node {name}"));
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on its ports and store.
    pub fn restart(&mut self, name: &str) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no cluster node {name}"));
        self.spawn(i);
    }

    /// The routes node `name` holds now (its monitor's `/routez`).
    pub fn route_count(&self, name: &str) -> Option<u64> {
        let node = self.nodes.iter().find(|n| n.name == name)?;
        let body = http_body(node.monitor, "/routez")?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["num_routes"].as_u64()
    }

    /// Starts a fourth nats-server with JetStream and the cluster's name that
    /// routes to every node without the route certificate, as a pod that
    /// merely wears the NATS label would; returns how many routes it got
    /// after `wait`, and stops it.
    pub fn intruder_routes(&self, wait: Duration) -> u64 {
        let client = free_port();
        let monitor = free_port();
        let route = free_port();
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|r| format!("nats-route://127.0.0.1:{r}"))
            .collect();
        let store = self.dir.path().join("intruder");
        let conf = format!(
            "server_name: intruder\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
             jetstream {{ store_dir: {store:?} }}\n\
             cluster {{ name: breakglass-test, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
            routes.join(", ")
        );
        let path = self.dir.path().join("intruder.conf");
        std::fs::write(&path, conf).expect("intruder config");
        let log = std::fs::File::create(self.dir.path().join("intruder.log")).expect("log file");
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        std::thread::sleep(wait);
        let got = http_body(monitor, "/routez")
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|json| json["num_routes"].as_u64())
            .unwrap_or(0);
        let _ = child.kill();
        let _ = child.wait();
        got
    }

    /// The nodes' logs, for a failing test's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- nats {}\n{}\n",
                    n.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// True when the node's `/jsz` shows a meta leader and both other peers
/// current.
fn meta_group_whole(monitor: u16) -> bool {
    let Some(json) = http_body(monitor, "/jsz")
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
    else {
        return false;
    };
    let meta = &json["meta_cluster"];
    let leader = meta["leader"].as_str().is_some_and(|l| !l.is_empty());
    // Only the leader lists its followers; the others see a leader.
    let followers_current = match meta["replicas"].as_array() {
        Some(replicas) => {
            replicas.len() == 2
                && replicas
                    .iter()
                    .all(|r| r["current"].as_bool() == Some(true))
        }
        None => true,
    };
    leader && followers_current && meta["cluster_size"].as_u64() == Some(3)
}

/// The body of `GET path` on a loopback monitor port, if it answers 200.
fn http_body(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// A PostgreSQL cluster of one test's own (`initdb` as user `postgres`, its
/// own port and socket folder, trust auth), which the test may stop and start
/// again on the same port.
pub struct PrivatePostgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

impl PrivatePostgres {
    /// Creates the cluster and starts it.
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (Debian package postgresql)")
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .filter(|path| path.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let port = free_port();
        // Under /tmp, not a test's temp folder: the postgres user must
        // reach it.
        let dir = std::env::temp_dir().join(format!(
            "breakglass-test-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("pg folder");
        Self::as_postgres(&format!("chown postgres {}", dir.display()), true);
        let postgres = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            bin,
            dir,
        };
        Self::as_postgres(
            &format!(
                "{}/initdb -D {}/data -A trust -U postgres >{}/initdb.log 2>&1",
                postgres.bin.display(),
                postgres.dir.display(),
                postgres.dir.display()
            ),
            false,
        );
        postgres.restart();
        postgres
    }

    fn as_postgres(command: &str, as_root: bool) {
        let status = if as_root {
            Command::new("sh").args(["-c", command]).status()
        } else {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", command])
                .status()
        }
        .expect("sh runs");
        assert!(status.success(), "{command} failed ({status})");
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`).
    pub fn stop(&self) {
        Self::as_postgres(
            &format!(
                "{}/pg_ctl -D {}/data -m immediate -w stop >/dev/null 2>&1 || true",
                self.bin.display(),
                self.dir.display()
            ),
            false,
        );
    }

    /// Starts the server (again) on the same port; `pg_ctl -w` waits until
    /// it accepts connections.
    pub fn restart(&self) {
        Self::as_postgres(
            &format!(
                "{bin}/pg_ctl -D {dir}/data -o \"-p {port} -k {dir} -c listen_addresses=127.0.0.1\" -l {dir}/pg.log -w start >/dev/null",
                bin = self.bin.display(),
                dir = self.dir.display(),
                port = self.port
            ),
            false,
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP forwarder on a fixed loopback port in front of a server, that a
/// test can take down (connections refused, open ones cut, as when the
/// server process stops) and bring back on the same port. Emulates a
/// storage outage without losing an in-memory server's (moto's,
/// Azurite's) objects, so the previous copy can be checked afterwards.
/// It can also hold chosen HTTP requests forever ([`OutageProxy::stall`]),
/// so a test can stop a client in the middle of one step.
pub struct OutageProxy {
    /// The port clients use.
    pub port: u16,
    target: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
    stall: Arc<Mutex<Option<(String, String)>>>,
    stalled: Arc<std::sync::atomic::AtomicUsize>,
}

impl OutageProxy {
    /// Starts forwarding `127.0.0.1:<new port>` to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let mut proxy = Self {
            port: free_port(),
            target,
            task: None,
            stall: Arc::default(),
            stalled: Arc::default(),
        };
        proxy.up().await;
        proxy
    }

    /// Takes the "server" down: the listener closes and every open
    /// connection is cut.
    pub fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// From now on, an HTTP request `METHOD /path…` whose path (query
    /// left out) ends with `path_suffix` is never forwarded: the client
    /// waits on it forever, as on a server that hangs mid-request.
    pub fn stall(&self, method: &str, path_suffix: &str) {
        *self.stall.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((method.to_owned(), path_suffix.to_owned()));
    }

    /// Forwards every request again (held ones stay held).
    pub fn release(&self) {
        *self.stall.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// How many requests [`OutageProxy::stall`] has held so far.
    pub fn stalled(&self) -> usize {
        self.stalled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Brings it back on the same port.
    pub async fn up(&mut self) {
        self.down();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(listener) => break listener,
                Err(err) => {
                    assert!(Instant::now() < deadline, "cannot rebind the proxy: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let target = self.target;
        let (stall, stalled) = (self.stall.clone(), self.stalled.clone());
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (stall, stalled) = (stall.clone(), stalled.clone());
                connections.spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(target).await {
                        forward(client, server, stall, stalled).await;
                    }
                });
            }
        }));
    }
}

/// Copies both ways; client bytes that start a stalled request are held.
async fn forward(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    stall: Arc<Mutex<Option<(String, String)>>>,
    stalled: Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let held = stall
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|(method, suffix)| starts_request(&buffer[..n], method, suffix));
            if held {
                stalled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// Whether `bytes` begin an HTTP request `method` for a path ending with `suffix`.
fn starts_request(bytes: &[u8], method: &str, suffix: &str) -> bool {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    parts.next() == Some(method)
        && parts
            .next()
            .map(|target| target.split('?').next().unwrap_or_default())
            .is_some_and(|path| path.ends_with(suffix))
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.down();
    }
}
