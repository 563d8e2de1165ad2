//! The collector service: on `breakglass.trigger`, reads the inventory and
//! stores an encrypted snapshot for the renderer.
//!
//! The stage work (reading, grouping, sorting) is `breakglass-collect`;
//! this crate only binds it to the bus: decode the trigger, collect, store
//! the snapshot encrypted to the payload key in the object store while it
//! is sorted and written (no temp file), publish `snapshot.ready` sealed
//! (breakglass-bus `envelope`) with `Nats-Msg-Id = snapshot-<run id>` so a
//! redelivered trigger adds no second snapshot event. A trigger comes from
//! outside: every field is checked before anything is read
//! (`validate::trigger`).

use async_nats::jetstream;
use breakglass_bus::payload::attempt_object_name;
use breakglass_bus::payload::{PayloadKey, warning_to_proto, write_snapshot};
use breakglass_bus::worker::{Attempt, Stage, StageFailure, decode, read_trigger};
use breakglass_bus::{Bus, EventKind, worker};
use breakglass_collect::{AnySource, RowCounter, Source};
use breakglass_proto::v1;
use breakglass_service::ConfigSource;
use std::io::Write;
use tracing::Instrument;

/// The collect stage bound to the bus.
pub struct Collector {
    config: ConfigSource,
    key: PayloadKey,
}

impl Collector {
    /// A collector reading the inventory the settings name, read again for every run.
    pub fn new(config: ConfigSource, key: PayloadKey) -> Self {
        Self { config, key }
    }
}

impl Stage for Collector {
    fn name(&self) -> &'static str {
        "collector"
    }

    fn failed_stage(&self) -> &'static str {
        "collect"
    }

    /// The trigger when the run it names is the one its `Nats-Msg-Id`
    /// names (the worker checks the run id is valid), so a trigger refused
    /// for another field still reports its run as failed. A trigger whose
    /// message id differs names no run: otherwise anyone allowed to publish
    /// a trigger could have the collector sign a dead letter and a failed
    /// outcome for any run id (one in flight, or a predictable future one)
    /// by sending it under another message id, which the stream's
    /// duplicate window would not stop.
    fn trigger_of(&self, _bus: &Bus, message: &jetstream::Message) -> Option<v1::TriggerRequested> {
        let trigger = decode::<v1::TriggerRequested>(message, "TriggerRequested").ok()?;
        let msg_id = Bus::msg_id(message.headers.as_ref())?;
        (msg_id == trigger.run_id).then_some(trigger)
    }

    async fn handle(
        &self,
        bus: &Bus,
        message: &jetstream::Message,
        _attempt: Attempt,
    ) -> Result<(), StageFailure> {
        let (trigger, run_id) = read_trigger(message)?;
        let settings = self.config.load_for_run()?;
        let source = AnySource::for_settings(&settings);
        let described = source.describe();
        let collected = async { source.collect(&RowCounter::new()).await }
            .instrument(tracing::info_span!("inventory query", source = %described))
            .await
            .map_err(|err| {
                if err.is_transient() {
                    StageFailure::retry(err.to_string())
                } else {
                    StageFailure::permanent(err.to_string())
                }
            })?;
        tracing::info!(
            rows = collected.row_count(),
            projects = collected.project_count(),
            warnings = collected.warning_count(),
            "inventory read"
        );
        // Sorting (merging spilled runs), encoding and encrypting stream
        // together on a blocking thread straight into the object store: the
        // snapshot never exists in plaintext, nor on disk.
        let (reference, ((rows, warnings, warning_count), projects)) = bus
            .store_payload_with(
                &attempt_object_name(&run_id, "snapshot"),
                &self.key,
                move |out| {
                    let sorted = collected.into_sorted_stream()?;
                    let summary = (sorted.rows, sorted.warnings.clone(), sorted.warning_count);
                    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
                    // Merged on a thread of its own while this one encodes
                    // and encrypts.
                    let projects = write_snapshot(sorted.stream.merged_ahead()?, &mut out)?;
                    out.flush()?;
                    Ok((summary, projects))
                },
            )
            .await
            .map_err(|err| StageFailure::retry(format!("storing the snapshot failed: {err}")))?;
        let ready = v1::SnapshotReady {
            snapshot: Some(reference),
            source: described,
            rows,
            projects: projects
                .into_iter()
                .map(|(project, rows)| v1::ProjectCount {
                    project,
                    sheets: Vec::new(),
                    rows,
                })
                .collect(),
            warnings: warnings.iter().map(warning_to_proto).collect(),
            warning_count,
            collected_at_unix_ms: worker::chrono_now_ms(),
            trigger: Some(trigger),
        };
        bus.publish_event(EventKind::SnapshotReady, &run_id, &ready)
            .await
            .map_err(|err| StageFailure::retry(err.to_string()))?;
        tracing::info!(rows = ready.rows, "snapshot stored");
        let metrics = breakglass_telemetry::metrics::metrics();
        metrics.last_run_rows.set(ready.rows as i64);
        let reason = ready
            .trigger
            .as_ref()
            .and_then(|t| v1::TriggerReason::try_from(t.reason).ok())
            .map_or("unspecified", |r| match r {
                v1::TriggerReason::Scheduled => "scheduled",
                v1::TriggerReason::OnDemand => "on_demand",
                v1::TriggerReason::CatchUp => "catch_up",
                v1::TriggerReason::Unspecified => "unspecified",
            });
        metrics
            .runs_started
            .get_or_create(&breakglass_telemetry::metrics::StatusLabel {
                status: reason.into(),
            })
            .inc();
        Ok(())
    }
}
