//! Binds the PostgreSQL run log to the bus: the `runlog` consumer reads
//! every event on the stream and records it (trigger, snapshot, workbook,
//! outcome, dead letters). Two scheduler replicas share the durable
//! consumer, so each event is recorded once; the log's writes are
//! idempotent, so a redelivery changes nothing. Nothing is recorded before
//! it checks out: a trigger by its field rules, the services' events by
//! their envelope (authentic, on their own subject and message id) and
//! field rules, a dead letter by its field rules; anything else is
//! dead-lettered to `breakglass.dead.runlog` and recorded nowhere.
//!
//! A run log that cannot be written never fails a run: its messages are
//! retried and, in the end, dead-lettered to `breakglass.dead.runlog`
//! without reporting the run as failed.

use async_nats::jetstream;
use breakglass_bus::worker::{Attempt, Stage, StageFailure, read_trigger};
use breakglass_bus::{Age, Bus, EventKind, validate, worker};
use breakglass_proto::v1;
use breakglass_runlog::RunLog;
use chrono::{DateTime, Utc};

/// The recorder stage.
pub struct RunLogStage {
    log: RunLog,
}

impl RunLogStage {
    /// Records into `log`.
    pub fn new(log: RunLog) -> Self {
        Self { log }
    }
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

impl Stage for RunLogStage {
    fn name(&self) -> &'static str {
        "runlog"
    }

    fn failed_stage(&self) -> &'static str {
        "runlog"
    }

    /// Records one event. While PostgreSQL is away it keeps trying (the
    /// worker keeps the message alive with progress acks) for up to
    /// [`OUTAGE_PATIENCE`] before giving the delivery back, so an outage
    /// does not burn through `max_deliver` and dead-letter the events.
    async fn handle(
        &self,
        bus: &Bus,
        message: &jetstream::Message,
        _attempt: Attempt,
    ) -> Result<(), StageFailure> {
        let started = std::time::Instant::now();
        loop {
            match self.record(bus, message).await {
                Err(failure) if failure.retryable && started.elapsed() < OUTAGE_PATIENCE => {
                    tracing::warn!(error = %failure, "the run log is unavailable; trying again in 5 s");
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Always `None`: a run log that cannot record a message must not
    /// report that run as failed.
    fn trigger_of(
        &self,
        _bus: &Bus,
        _message: &jetstream::Message,
    ) -> Option<v1::TriggerRequested> {
        None
    }
}

/// How long one event waits for PostgreSQL before its delivery is retried.
const OUTAGE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

impl RunLogStage {
    async fn record(&self, bus: &Bus, message: &jetstream::Message) -> Result<(), StageFailure> {
        let subjects = bus.subjects();
        let subject = message.subject.as_str();
        let failed = |err: breakglass_runlog::RunLogError| StageFailure::retry(err.to_string());
        let refused = |what: &str, err: &dyn std::fmt::Display| {
            StageFailure::permanent(format!("{what} refused: {err}"))
        };
        let now = worker::chrono_now_ms();
        let bucket = subjects.payload_bucket();
        if subject == subjects.trigger() {
            let (trigger, _) = read_trigger(message)?;
            self.log.record_trigger(&trigger).await.map_err(failed)
        } else if subject == subjects.snapshot_ready() {
            let opened = worker::open::<v1::SnapshotReady>(bus, EventKind::SnapshotReady, message)?;
            let ready = opened.event;
            let run = validate::snapshot_ready(&ready, &bucket, now)
                .map_err(|err| refused("snapshot.ready", &err))?;
            if run != opened.run_id {
                return Err(refused(
                    "snapshot.ready",
                    &"the event names another run than its envelope",
                ));
            }
            let detail = format!(
                "collected {} rows in {} projects from {}; {} warnings",
                ready.rows,
                ready.projects.len(),
                ready.source,
                ready.warning_count
            );
            self.log
                .record_stage(
                    &ready.trigger.unwrap_or_default(),
                    "collected",
                    at(ready.collected_at_unix_ms),
                    &detail,
                )
                .await
                .map_err(failed)
        } else if subject == subjects.workbook_ready() {
            let opened = worker::open::<v1::WorkbookReady>(bus, EventKind::WorkbookReady, message)?;
            let ready = opened.event;
            let run = validate::workbook_ready(&ready, &bucket, now)
                .map_err(|err| refused("workbook.ready", &err))?;
            if run != opened.run_id {
                return Err(refused(
                    "workbook.ready",
                    &"the event names another run than its envelope",
                ));
            }
            let detail = format!(
                "rendered {} bytes, encryption {}",
                ready.workbook_size, ready.encryption
            );
            let trigger = ready.snapshot.and_then(|s| s.trigger).unwrap_or_default();
            self.log
                .record_stage(&trigger, "rendered", at(ready.rendered_at_unix_ms), &detail)
                .await
                .map_err(failed)
        } else if subject.starts_with(&subjects.run_finished("")) {
            // Authentic and fresh: an old outcome replayed is not recorded.
            bus.open_event::<v1::RunFinished>(
                EventKind::RunFinished,
                subject,
                message.headers.as_ref(),
                &message.payload,
                Age::MustBeFresh,
            )
            .map_err(|err| StageFailure::permanent(err.to_string()))?;
            let finished = bus
                .read_run_finished(subject, message.headers.as_ref(), &message.payload)
                .map_err(|err| StageFailure::permanent(err.to_string()))?;
            self.log.record_finished(&finished).await.map_err(failed)
        } else if let Some(stage) = subject.strip_prefix(&subjects.dead_letter("")) {
            if stage == self.name() {
                // Our own give-ups: recording them would loop.
                return Ok(());
            }
            // Authentic only: whoever may publish on dead.* must not be
            // able to mark a run failed in the log.
            let dead = bus
                .open_dead_letter(subject, message.headers.as_ref(), &message.payload)
                .map_err(|err| StageFailure::permanent(err.to_string()))?;
            if validate::dead_letter(&dead)
                .map_err(|err| refused("dead letter", &err))?
                .is_none()
            {
                return Ok(());
            }
            let trigger = v1::TriggerRequested {
                run_id: dead.run_id.clone(),
                requested_at_unix_ms: breakglass_bus::worker::chrono_now_ms(),
                ..Default::default()
            };
            self.log
                .record_stage(
                    &trigger,
                    &format!("dead_letter:{stage}"),
                    Utc::now(),
                    &format!(
                        "{} gave up after {} deliveries: {}",
                        dead.stage, dead.deliveries, dead.error
                    ),
                )
                .await
                .map_err(failed)
        } else {
            Ok(())
        }
    }
}
