//! The Prometheus metrics every service exposes on `/metrics`.
//!
//! One process-wide registry ([`metrics`]) so the bus worker, the stages and
//! the HTTP endpoint share it without threading handles through every call.
//! Above all, `breakglass_last_success_timestamp_seconds{destination}` makes
//! "no fresh break-glass copy for 26 hours" a one-line alert (see
//! `deploy/alerts/`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

/// Labels: a stage and what happened to a message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageOutcome {
    /// `collector`, `renderer`, `uploader`.
    pub stage: String,
    /// `ok`, `retry`, `dead_letter`.
    pub outcome: String,
}

/// Label: a stage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// `collector`, `renderer`, `uploader`.
    pub stage: String,
}

/// Label: a destination, as described (no secrets).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    /// e.g. `s3:https://s3.eu-west-1.amazonaws.com/bucket/prefix`.
    pub destination: String,
}

/// Label: a run's outcome or trigger reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `succeeded`, `partially_failed`, `failed`; or a trigger reason.
    pub status: String,
}

/// Every metric breakglass records.
pub struct Metrics {
    registry: Registry,
    /// Messages handled per stage and outcome.
    pub messages: Family<StageOutcome, Counter>,
    /// Time spent handling one message, per stage.
    pub stage_seconds: Family<StageLabel, Histogram>,
    /// Runs started, by trigger reason.
    pub runs_started: Family<StatusLabel, Counter>,
    /// Runs finished, by status.
    pub runs_finished: Family<StatusLabel, Counter>,
    /// Rows in the last collected inventory.
    pub last_run_rows: Gauge,
    /// Bytes of the last stored workbook.
    pub last_workbook_bytes: Gauge,
    /// Upload attempts that failed transiently and will be retried.
    pub upload_retries: Family<DestinationLabel, Counter>,
    /// Upload time per destination.
    pub upload_seconds: Family<DestinationLabel, Histogram>,
    /// When each destination last received a verified copy (Unix seconds).
    pub last_success: Family<DestinationLabel, Gauge<f64, AtomicU64>>,
    /// When the last passing drill of each destination ran (Unix seconds).
    pub drill_last_success: Family<DestinationLabel, Gauge<f64, AtomicU64>>,
    /// When the last failing drill of each destination ran (Unix seconds).
    pub drill_last_failure: Family<DestinationLabel, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("breakglass");
        let duration_buckets = || Histogram::new(exponential_buckets(0.05, 2.0, 16));
        let messages = Family::<StageOutcome, Counter>::default();
        let stage_seconds = Family::<StageLabel, Histogram>::new_with_constructor(
            duration_buckets as fn() -> Histogram,
        );
        let runs_started = Family::<StatusLabel, Counter>::default();
        let runs_finished = Family::<StatusLabel, Counter>::default();
        let last_run_rows = Gauge::default();
        let last_workbook_bytes = Gauge::default();
        let upload_retries = Family::<DestinationLabel, Counter>::default();
        let upload_seconds = Family::<DestinationLabel, Histogram>::new_with_constructor(
            duration_buckets as fn() -> Histogram,
        );
        let last_success = Family::<DestinationLabel, Gauge<f64, AtomicU64>>::default();
        let drill_last_success = Family::<DestinationLabel, Gauge<f64, AtomicU64>>::default();
        let drill_last_failure = Family::<DestinationLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "messages",
            "Bus messages handled, by stage and outcome",
            messages.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Time to handle one message, by stage",
            stage_seconds.clone(),
        );
        registry.register(
            "runs_started",
            "Runs started, by trigger reason",
            runs_started.clone(),
        );
        registry.register(
            "runs_finished",
            "Runs finished, by status",
            runs_finished.clone(),
        );
        registry.register(
            "last_run_rows",
            "Rows in the last collected inventory",
            last_run_rows.clone(),
        );
        registry.register(
            "last_workbook_bytes",
            "Bytes of the last stored workbook",
            last_workbook_bytes.clone(),
        );
        registry.register(
            "upload_retries",
            "Uploads that failed transiently and are retried",
            upload_retries.clone(),
        );
        registry.register(
            "upload_duration_seconds",
            "Upload time per destination",
            upload_seconds.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the destination last received a verified copy (Unix time)",
            last_success.clone(),
        );
        registry.register(
            "drill_last_success_timestamp_seconds",
            "When the last passing drill of the destination ran (Unix time; from the run log)",
            drill_last_success.clone(),
        );
        registry.register(
            "drill_last_failure_timestamp_seconds",
            "When the last failing drill of the destination ran (Unix time; from the run log)",
            drill_last_failure.clone(),
        );
        Self {
            registry,
            messages,
            stage_seconds,
            runs_started,
            runs_finished,
            last_run_rows,
            last_workbook_bytes,
            upload_retries,
            upload_seconds,
            last_success,
            drill_last_success,
            drill_last_failure,
        }
    }

    /// Counts one handled message.
    pub fn message(&self, stage: &str, outcome: &str, seconds: f64) {
        self.messages
            .get_or_create(&StageOutcome {
                stage: stage.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.stage_seconds
            .get_or_create(&StageLabel {
                stage: stage.into(),
            })
            .observe(seconds);
    }

    /// Records a verified copy at `unix_seconds` (keeps the latest).
    pub fn destination_succeeded(&self, destination: &str, unix_seconds: f64) {
        let gauge = self.last_success.get_or_create(&DestinationLabel {
            destination: destination.into(),
        });
        if unix_seconds > gauge.get() {
            gauge.set(unix_seconds);
        }
    }

    /// The text exposition format (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_success_keeps_the_latest_and_encodes() {
        let m = metrics();
        m.destination_succeeded("local:/x", 100.0);
        m.destination_succeeded("local:/x", 50.0);
        m.message("uploader", "ok", 0.2);
        let text = m.encode();
        assert!(
            text.contains(
                "breakglass_last_success_timestamp_seconds{destination=\"local:/x\"} 100.0"
            ),
            "{text}"
        );
        assert!(
            text.contains("breakglass_messages_total{stage=\"uploader\",outcome=\"ok\"} 1"),
            "{text}"
        );
    }
}
