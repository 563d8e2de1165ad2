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

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
            .env("BREAKGLASS_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
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

    /// SIGKILL: the process gets no chance to ack or clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let client = async_nats::connect(nats_url()).await?;
    let js = async_nats::jetstream::new(client);
    let subjects = breakglass_bus::Subjects::new(prefix);
    let mut stream = js.get_stream(subjects.stream()).await?;
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
