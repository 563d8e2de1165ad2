//! The destination Test (issue #5): with the settings as currently filled
//! in, check each destination stage by stage and say what to fix.
//!
//! # Stages, in order
//! 1. [`Stage::Connection`]: DNS, TCP, TLS handshake (certificate problems
//!    named, with the `ca_bundle` fix); plain HTTP is a warning.
//! 2. [`Stage::Authentication`]: the credential is accepted (unknown key,
//!    bad signature or SAS, clock skew are failures of this stage).
//! 3. [`Stage::ContainerExists`]: the bucket/container exists (and, for S3,
//!    is in the configured region). Asked directly when the credential may
//!    ask; otherwise inferred from the probe upload's answer
//!    (`NoSuchBucket`, `ContainerNotFound`), and the message says which.
//! 4. [`Stage::Upload`]: writes one small test object under the prefix,
//!    with the rotation's write rule (conditional create for `unique` and
//!    `prune`), at a fixed name so repeated Tests do not pile up files.
//! 5. [`Stage::LeastPrivilege`]: whether the credential can also read,
//!    delete or list, asked without harm (read the test object, delete a
//!    name never written, list one key); a warning when it can.
//! 6. [`Stage::Retention`]: which rotation modes the credential allows and
//!    whether the configured one is among them; versioning and lifecycle
//!    rules where readable.
//!
//! When a stage fails, the later ones are reported as skipped, with the
//! reason. Results go to a callback as each stage finishes, so the gRPC
//! streaming call, the unary call and the CLI share [`run`].
//!
//! No message carries a secret: they are built from the storage crate's
//! scrubbed explanations and from names, never from credential values.
#![warn(missing_docs)]

mod azure;
mod local;
pub mod request;
mod s3;

use breakglass_config::{Encryption, Settings, StorageKind};
use std::time::{Duration, Instant};

/// One stage of the Test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// DNS, TCP, TLS.
    Connection,
    /// The credential is accepted.
    Authentication,
    /// The bucket or container exists (in the configured region).
    ContainerExists,
    /// A small test object is written.
    Upload,
    /// The credential cannot also read, delete or list.
    LeastPrivilege,
    /// Rotation modes the credential allows; versioning and lifecycle.
    Retention,
}

impl Stage {
    /// Every stage, in the order they run.
    pub const ALL: [Stage; 6] = [
        Stage::Connection,
        Stage::Authentication,
        Stage::ContainerExists,
        Stage::Upload,
        Stage::LeastPrivilege,
        Stage::Retention,
    ];

    /// The machine name (JSON, logs): `connection`, `authentication`,
    /// `container_exists`, `upload`, `least_privilege`, `retention`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Authentication => "authentication",
            Self::ContainerExists => "container_exists",
            Self::Upload => "upload",
            Self::LeastPrivilege => "least_privilege",
            Self::Retention => "retention",
        }
    }

    /// The title shown to people.
    pub fn title(self) -> &'static str {
        match self {
            Self::Connection => "Connection",
            Self::Authentication => "Authentication",
            Self::ContainerExists => "Container or bucket exists",
            Self::Upload => "Upload",
            Self::LeastPrivilege => "Least privilege audit",
            Self::Retention => "Retention and rotation fit",
        }
    }
}

/// How a stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Nothing to fix.
    Ok,
    /// Works, but something should be looked at.
    Warning,
    /// Does not work; the message says what to fix.
    Failed,
    /// Not run because an earlier stage failed.
    Skipped,
}

impl Status {
    /// `ok`, `warning`, `failed`, `skipped`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// The result of one stage for one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageResult {
    /// The destination, described without secrets (`s3:https://…/bucket/prefix`).
    pub destination: String,
    /// Which stage.
    pub stage: Stage,
    /// How it ended.
    pub status: Status,
    /// How long it took.
    pub duration: Duration,
    /// Plain words: what was found and, when not ok, what to check.
    pub message: String,
}

impl StageResult {
    /// The result as JSON (the CLI's `--json` shape).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "destination": self.destination,
            "stage": self.stage.name(),
            "title": self.stage.title(),
            "status": self.status.name(),
            "duration_ms": self.duration.as_millis() as u64,
            "message": self.message,
        })
    }
}

/// Every stage result of one Test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// In the order they finished: per destination, stage 1 to 6.
    pub results: Vec<StageResult>,
}

impl Report {
    /// True when a stage failed.
    pub fn failed(&self) -> bool {
        self.results.iter().any(|r| r.status == Status::Failed)
    }

    /// The report as JSON: `{"passed": bool, "stages": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "passed": !self.failed(),
            "stages": self.results.iter().map(StageResult::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Runs every stage for every destination the settings name, calling
/// `sink` with each result as it finishes, and returns them all.
pub async fn run(settings: &Settings, sink: &mut (dyn FnMut(&StageResult) + Send)) -> Report {
    let mut report = Report::default();
    for kind in &settings.storage {
        let mut recorder = Recorder::new(describe(settings, *kind), sink);
        match kind {
            StorageKind::S3 => match &settings.s3 {
                Some(s3) => s3::run(settings, s3, &mut recorder).await,
                None => recorder.fail(Stage::Connection, Instant::now(), "no S3 settings".into()),
            },
            StorageKind::Blob => match &settings.blob {
                Some(blob) => azure::run(settings, blob, &mut recorder).await,
                None => recorder.fail(
                    Stage::Connection,
                    Instant::now(),
                    "no Azure Blob settings".into(),
                ),
            },
            StorageKind::Local => local::run(settings, &mut recorder).await,
        }
        report.results.extend(recorder.results);
    }
    report
}

fn describe(settings: &Settings, kind: StorageKind) -> String {
    use breakglass_storage::Destination;
    breakglass_storage::destinations(settings)
        .into_iter()
        .find(|d| {
            matches!(
                (d, kind),
                (
                    breakglass_storage::AnyDestination::Local(_),
                    StorageKind::Local
                ) | (breakglass_storage::AnyDestination::S3(_), StorageKind::S3)
                    | (
                        breakglass_storage::AnyDestination::Blob(_),
                        StorageKind::Blob
                    )
            )
        })
        .map(|d| d.describe())
        .unwrap_or_else(|| format!("{kind:?}").to_ascii_lowercase())
}

/// The warning every Test gives when the workbook would be stored
/// unencrypted.
pub(crate) fn encryption_warning(settings: &Settings) -> Option<String> {
    (settings.encryption == Encryption::None).then(|| {
        "encryption is none: the workbook with every password would be stored unencrypted; set encryption: password (or age)".to_owned()
    })
}

/// Collects warnings and notes for one stage.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    warnings: Vec<String>,
    notes: Vec<String>,
}

impl Notes {
    pub(crate) fn warn(&mut self, text: impl Into<String>) {
        self.warnings.push(text.into());
    }

    pub(crate) fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// A note when `Ok`, a warning when `Err`.
    pub(crate) fn note_or_warn(&mut self, said: Result<String, String>) {
        match said {
            Ok(text) => self.note(text),
            Err(text) => self.warn(text),
        }
    }

    fn status(&self) -> Status {
        if self.warnings.is_empty() {
            Status::Ok
        } else {
            Status::Warning
        }
    }

    fn message(self) -> String {
        self.warnings
            .into_iter()
            .chain(self.notes)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Records one destination's stage results and hands each to the sink.
pub(crate) struct Recorder<'a> {
    destination: String,
    sink: &'a mut (dyn FnMut(&StageResult) + Send),
    results: Vec<StageResult>,
}

impl<'a> Recorder<'a> {
    fn new(destination: String, sink: &'a mut (dyn FnMut(&StageResult) + Send)) -> Self {
        Self {
            destination,
            sink,
            results: Vec::new(),
        }
    }

    fn emit(&mut self, stage: Stage, status: Status, duration: Duration, message: String) {
        let result = StageResult {
            destination: self.destination.clone(),
            stage,
            status,
            duration,
            message,
        };
        tracing::info!(
            destination = %result.destination,
            stage = stage.name(),
            status = status.name(),
            duration_ms = duration.as_millis() as u64,
            "destination test stage"
        );
        (self.sink)(&result);
        self.results.push(result);
    }

    /// Records a finished stage from its notes.
    pub(crate) fn finish(&mut self, stage: Stage, started: Instant, notes: Notes) {
        let status = notes.status();
        self.emit(stage, status, started.elapsed(), notes.message());
    }

    /// Records an ok stage.
    pub(crate) fn ok(&mut self, stage: Stage, started: Instant, message: String) {
        self.emit(stage, Status::Ok, started.elapsed(), message);
    }

    /// Records a stage that was not applicable (e.g. no network for a
    /// local folder).
    pub(crate) fn not_applicable(&mut self, stage: Stage, message: &str) {
        self.emit(stage, Status::Skipped, Duration::ZERO, message.to_owned());
    }

    /// Records a failed stage and every later stage as skipped.
    pub(crate) fn fail(&mut self, stage: Stage, started: Instant, message: String) {
        self.emit(stage, Status::Failed, started.elapsed(), message);
        for later in Stage::ALL.iter().skip_while(|s| **s != stage).skip(1) {
            self.emit(
                *later,
                Status::Skipped,
                Duration::ZERO,
                format!("skipped: the {} stage failed", stage.title()),
            );
        }
    }
}

/// The access key id shortened for messages (`AKIA…1234`).
pub(crate) fn key_hint(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        key.to_owned()
    } else {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{head}…{tail}")
    }
}

/// Whether a probe found a right allowed (`Some(true)`; "not found" means
/// the request was let through), refused (`Some(false)`) or unknown.
pub(crate) fn allowed<T>(
    answer: &Result<T, breakglass_storage::probe_support::Failure>,
) -> Option<bool> {
    use breakglass_storage::probe_support::FailureKind;
    match answer {
        Ok(_) => Some(true),
        Err(f) if f.kind == FailureKind::NotFound => Some(true),
        Err(f) if f.kind == FailureKind::AccessDenied => Some(false),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_stage_skips_the_later_ones_with_the_reason() {
        let mut seen = Vec::new();
        let mut sink = |r: &StageResult| seen.push((r.stage, r.status));
        let mut recorder = Recorder::new("s3:x".into(), &mut sink);
        recorder.ok(Stage::Connection, Instant::now(), "fine".into());
        recorder.fail(Stage::Authentication, Instant::now(), "wrong key".into());
        let results = recorder.results;
        assert_eq!(results.len(), 6);
        assert_eq!(results[1].status, Status::Failed);
        assert!(results[2..].iter().all(|r| r.status == Status::Skipped));
        assert_eq!(
            results[5].message,
            "skipped: the Authentication stage failed"
        );
        assert_eq!(seen.len(), 6);
        let report = Report { results };
        assert!(report.failed());
        assert_eq!(report.to_json()["passed"], false);
        assert_eq!(report.to_json()["stages"][1]["stage"], "authentication");
    }

    /// Every provider answer the Test must turn into plain, actionable
    /// words, with the stage it belongs to (through its kind).
    #[test]
    fn provider_errors_become_actionable_messages() {
        use breakglass_storage::probe_support::FailureKind;
        use breakglass_storage::s3::probe::explain_code;
        let explain = |code, detail| {
            explain_code(
                code,
                "PutObject",
                "backups",
                "mavis",
                "AKIAEXAMPLEKEY1234",
                detail,
            )
        };
        let cases = [
            (
                "SignatureDoesNotMatch",
                "",
                FailureKind::Authentication,
                "check s3_secret_access_key",
            ),
            (
                "InvalidAccessKeyId",
                "",
                FailureKind::Authentication,
                "check s3_access_key_id",
            ),
            (
                "NoSuchBucket",
                "",
                FailureKind::NoSuchContainer,
                "bucket backups does not exist",
            ),
            (
                "AccessDenied",
                "",
                FailureKind::AccessDenied,
                "lacks s3:PutObject on backups/mavis/*",
            ),
            (
                "AuthorizationHeaderMalformed",
                "",
                FailureKind::WrongRegion,
                "set s3_region",
            ),
            (
                "RequestTimeTooSkewed",
                "",
                FailureKind::ClockSkew,
                "fix the time (NTP)",
            ),
            (
                "connection",
                "dns error: failed to lookup address information",
                FailureKind::Connection,
                "does not resolve (DNS)",
            ),
            (
                "connection",
                "tcp connect error: Connection refused (os error 111)",
                FailureKind::Connection,
                "connection refused",
            ),
            (
                "connection",
                "invalid peer certificate: UnknownIssuer",
                FailureKind::Connection,
                "set ca_bundle",
            ),
        ];
        for (code, detail, kind, words) in cases {
            let failure = explain(code, detail);
            assert_eq!(failure.kind, kind, "{code}");
            assert!(
                failure.message.contains(words),
                "{code}: {}",
                failure.message
            );
            assert!(!failure.message.contains("AKIAEXAMPLEKEY1234"));
        }
    }

    #[test]
    fn key_ids_are_shortened() {
        assert_eq!(key_hint("AKIAEXAMPLEKEY1234"), "AKIA…1234");
        assert_eq!(key_hint("short"), "short");
    }
}
