//! The consume loop every service runs.
//!
//! Each stage has one durable pull consumer (shared by all replicas of the
//! service) with explicit acks. While a message is being worked on, the
//! loop sends in-progress acks every third of `ack_wait`, so long work is
//! not redelivered, while a crashed worker's message is redelivered after
//! `ack_wait`. A retryable failure is nak'ed with exponential back-off; a
//! permanent one, or the `max_deliver`-th failure, goes to
//! `<prefix>.dead.<stage>` with the error, the stage reports the run as
//! failed, and the message is terminated.
//!
//! Shutdown cancels only the wait for the next message, never the work on
//! one: a message in hand is finished and acked (or nak'ed) first.

use crate::{Bus, BusError, trace_headers};
use async_nats::jetstream::{self, AckKind, consumer};
use breakglass_proto::v1;
use futures::StreamExt;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Why a stage could not handle a message.
#[derive(Debug, Clone)]
pub struct StageFailure {
    /// True when a later attempt may succeed (a database down, NATS busy);
    /// false when the input itself is wrong (a bad CSV header).
    pub retryable: bool,
    /// What went wrong, in plain words, without secrets.
    pub message: String,
}

impl StageFailure {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Which delivery of a message this is, against the configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first delivery.
    pub number: i64,
    /// The configured `max_deliver`.
    pub limit: i64,
}

impl Attempt {
    /// True on the last attempt: a retryable failure now is final.
    pub fn is_last(&self) -> bool {
        self.number >= self.limit
    }
}

/// One pipeline stage bound to the bus.
pub trait Stage: Send + Sync {
    /// The service name: the durable consumer and the dead-letter subject
    /// use it (`collector`, `renderer`, `uploader`).
    fn name(&self) -> &'static str;

    /// The stage as named in a failed run's `failed_stage` (`collect`...).
    fn failed_stage(&self) -> &'static str;

    /// Handles one message. Must be idempotent: a message can be delivered
    /// again after a crash.
    fn handle(
        &self,
        bus: &Bus,
        message: &jetstream::Message,
        attempt: Attempt,
    ) -> impl Future<Output = Result<(), StageFailure>> + Send;

    /// The trigger a message belongs to, to report a run that is given up.
    /// Only a trigger whose run id is valid and, for the services' own
    /// events, whose envelope opened and is fresh: a forged or replayed
    /// message is dead-lettered without reporting any run.
    fn trigger_of(&self, bus: &Bus, message: &jetstream::Message) -> Option<v1::TriggerRequested>;
}

/// The stages and the subjects their consumers read. `runlog` (the
/// scheduler's recorder of the PostgreSQL run log) reads every event.
pub fn stage_subjects(bus: &Bus) -> [(&'static str, String); 4] {
    stage_subjects_for(bus.subjects())
}

/// [`stage_subjects`] for an installation's names (the NATS permissions
/// are generated from them).
pub fn stage_subjects_for(subjects: &crate::Subjects) -> [(&'static str, String); 4] {
    [
        ("collector", subjects.trigger()),
        ("renderer", subjects.snapshot_ready()),
        ("uploader", subjects.workbook_ready()),
        ("runlog", subjects.all()),
    ]
}

impl Bus {
    /// Creates every stage's durable consumer if missing. Called on connect,
    /// so a trigger published by any breakglass process is never missed,
    /// even before the service that consumes it first starts. New consumers
    /// start at new messages: a re-created consumer never replays old runs.
    pub async fn ensure_consumers(&self) -> Result<(), BusError> {
        for (name, _) in stage_subjects(self) {
            self.consumer(name).await?;
        }
        Ok(())
    }

    /// The durable consumer of stage `name`.
    ///
    /// The server's delivery bound is one more than `max_deliver`: the
    /// worker enforces `max_deliver` itself, so a message whose last
    /// attempt crashed or timed out arrives once more and is dead-lettered
    /// and reported instead of vanishing.
    pub async fn consumer(&self, name: &str) -> Result<consumer::PullConsumer, BusError> {
        let Some((_, subject)) = stage_subjects(self)
            .into_iter()
            .find(|(stage, _)| *stage == name)
        else {
            return Err(BusError::Setup {
                what: format!("consumer {name}"),
                reason: "no such stage".into(),
            });
        };
        let stream = self
            .jetstream()
            .get_stream(self.subjects().stream())
            .await
            .map_err(|err| BusError::Setup {
                what: format!("stream {}", self.subjects().stream()),
                reason: err.to_string(),
            })?;
        stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.into()),
                    description: Some(format!("breakglass {name}")),
                    filter_subject: subject,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.options().ack_wait,
                    max_deliver: self.options().max_deliver + 1,
                    deliver_policy: consumer::DeliverPolicy::New,
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| BusError::Setup {
                what: format!("consumer {name}"),
                reason: err.to_string(),
            })
    }
}

/// The delivery settings in force: the server's, since an existing durable
/// consumer keeps the configuration it was created with.
#[derive(Debug, Clone, Copy)]
struct Effective {
    ack_wait: Duration,
    limit: i64,
}

/// Runs `stage` until `shutdown` is cancelled.
///
/// Messages are pulled one at a time and only while idle, so nothing waits
/// in a local buffer (without progress acks) while a long job runs.
pub async fn run(bus: Bus, stage: impl Stage, shutdown: CancellationToken) -> Result<(), BusError> {
    let consumer = bus.consumer(stage.name()).await?;
    let config = &consumer.cached_info().config;
    let effective = Effective {
        ack_wait: config.ack_wait,
        limit: (config.max_deliver - 1).max(1),
    };
    if effective.ack_wait != bus.options().ack_wait || effective.limit != bus.options().max_deliver
    {
        tracing::warn!(
            stage = stage.name(),
            server_ack_wait_s = effective.ack_wait.as_secs(),
            server_max_deliver = effective.limit,
            "the durable consumer keeps the settings it was created with; delete it to apply new ack_wait/max_deliver"
        );
    }
    tracing::info!(stage = stage.name(), stream = %bus.subjects().stream(), "waiting for messages");
    loop {
        let pull = async {
            consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(10))
                .messages()
                .await
        };
        let mut batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            batch = pull => match batch {
                Ok(batch) => batch,
                Err(err) => {
                    tracing::warn!(stage = stage.name(), error = %err, "pull failed; retrying");
                    pause(&shutdown).await;
                    continue;
                }
            },
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = batch.next() => next,
        };
        match next {
            None => {}
            Some(Err(err)) => {
                tracing::warn!(stage = stage.name(), error = %err, "pull failed; retrying");
                pause(&shutdown).await;
            }
            Some(Ok(message)) => process(&bus, &stage, &message, effective).await,
        }
    }
    tracing::info!(stage = stage.name(), "stopped pulling; shutting down");
    Ok(())
}

/// Half a second before the next pull, cut short by a shutdown.
async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
}

async fn process(
    bus: &Bus,
    stage: &impl Stage,
    message: &jetstream::Message,
    effective: Effective,
) {
    let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
    let stream_sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
    let trigger = stage
        .trigger_of(bus, message)
        .filter(|t| crate::validate::run_id("run_id", &t.run_id).is_ok());
    let run_id = trigger
        .as_ref()
        .map(|t| t.run_id.clone())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "stage",
        otel.name = stage.name(),
        stage = stage.name(),
        run_id = %run_id,
        delivery = delivered,
        trace_id = tracing::field::Empty,
    );
    // A trigger without trace context (as the Mavis core may send) joins
    // the trace its run id derives, so its redeliveries share one trace.
    breakglass_telemetry::set_parent_or_run_root(
        &span,
        trace_headers(message.headers.as_ref()),
        &run_id,
    );
    if let Some(trace_id) = breakglass_telemetry::trace_id(&span) {
        span.record("trace_id", trace_id.as_str());
    }
    async {
        tracing::info!(delivery = delivered, "message received");
        let started = std::time::Instant::now();
        let metrics = breakglass_telemetry::metrics::metrics();
        let attempt = Attempt { number: delivered, limit: effective.limit };
        let result = if delivered > effective.limit {
            // The previous attempt was the last allowed and never finished.
            Err(StageFailure::permanent(format!(
                "gave up after {} attempts: the last one did not finish (the service crashed or stopped acknowledging)",
                effective.limit
            )))
        } else {
            with_progress_acks(message, effective.ack_wait, stage.handle(bus, message, attempt)).await
        };
        match result {
            Ok(()) => {
                metrics.message(stage.name(), "ok", started.elapsed().as_secs_f64());
                if let Err(err) = message.double_ack().await {
                    tracing::warn!(error = %err, "ack failed; the message may be handled again");
                }
            }
            Err(failure) if !failure.retryable || attempt.is_last() => {
                tracing::error!(error = %failure.message, delivery = delivered, retryable = failure.retryable, "giving up: dead-lettering");
                metrics.message(stage.name(), "dead_letter", started.elapsed().as_secs_f64());
                let dead = v1::DeadLetter {
                    stage: stage.name().into(),
                    original_subject: message.subject.to_string(),
                    original_payload: message.payload.to_vec(),
                    error: failure.message.clone(),
                    deliveries: delivered as u64,
                    run_id: run_id.clone(),
                };
                if let Err(err) = bus.publish_dead_letter(stream_sequence, &dead).await {
                    // The server allows one delivery past the limit, which
                    // lands in the branch above and tries again.
                    tracing::error!(error = %err, "dead letter not published; leaving the message for redelivery");
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
                    return;
                }
                report_failed_run(bus, trigger, stage.failed_stage(), &failure).await;
                if let Err(err) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %err, "terminating the message failed");
                }
            }
            Err(failure) => {
                metrics.message(stage.name(), "retry", started.elapsed().as_secs_f64());
                let delay = backoff(delivered);
                tracing::warn!(error = %failure.message, delivery = delivered, retry_in_ms = delay.as_millis() as u64, "failed; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Drives `work` to completion while telling JetStream the message is still
/// being worked on.
async fn with_progress_acks<T>(
    message: &jetstream::Message,
    ack_wait: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut ticker = tokio::time::interval((ack_wait / 3).max(Duration::from_millis(200)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    tokio::pin!(work);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticker.tick() => {
                if let Err(err) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %err, "in-progress ack failed");
                }
            }
        }
    }
}

/// Exponential back-off for redelivery: 1 s, 2 s, 4 s ... capped at 64 s.
fn backoff(delivered: i64) -> Duration {
    let exponent = u32::try_from(delivered.saturating_sub(1))
        .unwrap_or(0)
        .min(6);
    Duration::from_secs(1u64 << exponent)
}

/// Decodes a message body as the plain event `T` (a trigger, a dead
/// letter): a permanent failure when it does not decode.
pub fn decode<T: prost::Message + Default>(
    message: &jetstream::Message,
    expected: &'static str,
) -> Result<T, StageFailure> {
    T::decode(message.payload.as_ref()).map_err(|err| {
        StageFailure::permanent(
            BusError::Decode {
                subject: crate::validate::escaped(&message.subject),
                expected,
                reason: err.to_string(),
            }
            .to_string(),
        )
    })
}

/// Opens one of the services' events ([`Bus::open_event`], fresh only): a
/// permanent failure, naming what failed, when it does not.
pub fn open<T: prost::Message + Default>(
    bus: &Bus,
    kind: crate::EventKind,
    message: &jetstream::Message,
) -> Result<crate::Authentic<T>, StageFailure> {
    bus.open_event(
        kind,
        &message.subject,
        message.headers.as_ref(),
        &message.payload,
        crate::Age::MustBeFresh,
    )
    .map_err(|err| StageFailure::permanent(err.to_string()))
}

/// A trigger as it arrives on `trigger`: decoded, every field checked
/// ([`crate::validate::trigger`]), and published with `Nats-Msg-Id` = its
/// run id as the contract says.
pub fn read_trigger(
    message: &jetstream::Message,
) -> Result<(v1::TriggerRequested, breakglass_core::RunId), StageFailure> {
    let trigger: v1::TriggerRequested = decode(message, "TriggerRequested")?;
    let run_id = crate::validate::trigger("", &trigger, chrono_now_ms())
        .map_err(|err| StageFailure::permanent(format!("trigger refused: {err}")))?;
    let msg_id = Bus::msg_id(message.headers.as_ref()).unwrap_or_default();
    if msg_id != run_id.as_str() {
        return Err(StageFailure::permanent(format!(
            "trigger refused: Nats-Msg-Id {} must be the run id {run_id}",
            crate::validate::escaped(msg_id)
        )));
    }
    Ok((trigger, run_id))
}

/// Publishes the failed `RunFinished` event for a run that a stage gave up on.
pub async fn report_failed_run(
    bus: &Bus,
    trigger: Option<v1::TriggerRequested>,
    stage: &str,
    failure: &StageFailure,
) {
    let Some(trigger) = trigger else {
        tracing::error!("cannot report the failed run: the message names no run");
        return;
    };
    let Ok(run_id) = crate::validate::run_id("run_id", &trigger.run_id) else {
        tracing::error!("cannot report the failed run: its run id is not valid");
        return;
    };
    let finished = v1::RunFinished {
        run_id: trigger.run_id.clone(),
        status: v1::RunStatus::Failed as i32,
        failed_stage: stage.into(),
        error: failure.message.clone(),
        finished_at_unix_ms: chrono_now_ms(),
        // A trigger whose other fields break the rules is not repeated.
        trigger: crate::validate::trigger("", &trigger, chrono_now_ms())
            .is_ok()
            .then(|| trigger.clone()),
        ..Default::default()
    };
    breakglass_telemetry::metrics::metrics()
        .runs_finished
        .get_or_create(&breakglass_telemetry::metrics::StatusLabel {
            status: "failed".into(),
        })
        .inc();
    if let Err(err) = bus
        .publish_event(crate::EventKind::RunFinished, &run_id, &finished)
        .await
    {
        tracing::error!(error = %err, "failed run could not be reported");
    }
}

/// Now, as Unix epoch milliseconds.
pub fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(50), Duration::from_secs(64));
    }
}
