//! The collector service: on `breakglass.trigger`, reads the inventory and
//! stores an encrypted snapshot for the renderer.
//!
//! The stage work (reading, grouping, sorting) is `breakglass-collect`;
//! this crate only binds it to the bus: decode the trigger, collect, and
//! store the snapshot encrypted to the payload key in the object store, in
//! sorted runs (no temp file): each time the inventory's sort buffer fills
//! while it is read, the run is encoded and handed to the object store at
//! once ([`RunStore`]), which takes it in while the next rows are read;
//! what no run took is the last run. Then publish `snapshot.ready`, listing
//! the runs, sealed (breakglass-bus `envelope`) with
//! `Nats-Msg-Id = snapshot-<run id>` so a redelivered trigger adds no
//! second snapshot event; the renderer merges the runs (docs/ARCHITECTURE.md,
//! decision 37). A trigger comes from outside: every field is checked
//! before anything is read (`validate::trigger`).

use async_nats::jetstream;
use breakglass_bus::payload::attempt_object_name;
use breakglass_bus::payload::{PayloadKey, PendingPayload, warning_to_proto, write_snapshot};
use breakglass_bus::validate::MAX_SNAPSHOT_RUNS;
use breakglass_bus::worker::{Attempt, Stage, StageFailure, decode, read_trigger};
use breakglass_bus::{Bus, BusError, EventKind, worker};
use breakglass_collect::{AnySource, RowCounter, Source};
use breakglass_core::{DeviceRow, Inventory, RunId, RunSink, sorted_run_items};
use breakglass_proto::v1;
use breakglass_service::ConfigSource;
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

/// Rows per snapshot run unless `BREAKGLASS_SNAPSHOT_RUN_ROWS` says
/// otherwise: less than the inventory's own 50,000-row sort buffer, which
/// put the collector at 57–65 MiB at 1M rows against issue #13's 64 MiB;
/// at 40,000 it peaks near 54 and the renderer, merging 25 runs instead
/// of 20, near 50 (docs/BENCHMARKS.md).
pub const DEFAULT_RUN_ROWS: usize = 40_000;

/// The collect stage bound to the bus.
pub struct Collector {
    config: ConfigSource,
    key: PayloadKey,
    run_rows: usize,
}

impl Collector {
    /// A collector reading the inventory the settings name, read again for
    /// every run, in snapshot runs of [`DEFAULT_RUN_ROWS`] rows.
    pub fn new(config: ConfigSource, key: PayloadKey) -> Self {
        Self {
            config,
            key,
            run_rows: DEFAULT_RUN_ROWS,
        }
    }

    /// The same collector storing a snapshot run every `rows` rows (at
    /// least one): fewer rows, less memory here and more runs for the
    /// renderer to merge (at most [`MAX_SNAPSHOT_RUNS`]; past that the
    /// collector merges the rest itself).
    pub fn with_run_rows(mut self, rows: usize) -> Self {
        self.run_rows = rows.max(1);
        self
    }
}

/// The snapshot runs stored so far, in order, and the one the object store
/// may still be taking in.
#[derive(Default)]
struct StoredRuns {
    stored: Vec<v1::PayloadRef>,
    pending: Option<PendingPayload>,
}

impl StoredRuns {
    /// Every run handed over, once the last of them is stored whole.
    async fn finish(&mut self) -> Result<Vec<v1::PayloadRef>, BusError> {
        if let Some(pending) = self.pending.take() {
            self.stored.push(pending.finish().await?);
        }
        Ok(std::mem::take(&mut self.stored))
    }
}

/// Stores each sorted run the inventory hands over as a snapshot run
/// payload, until the snapshot has all but one of the runs it may have;
/// then declines, and the inventory spills to its temp files instead.
/// A run is handed over once it is written (encoded and encrypted); the
/// server takes its chunks in while the next rows are read, and the next
/// run is handed over only once it has them all: one run waits at most
/// ([`breakglass_bus::payload::RUN_AHEAD_BYTES`] of memory).
struct RunStore {
    bus: Bus,
    key: PayloadKey,
    run_id: RunId,
    runtime: tokio::runtime::Handle,
    runs: Arc<Mutex<StoredRuns>>,
}

impl RunSink for RunStore {
    fn take(
        &mut self,
        rows: &mut Vec<(u32, DeviceRow)>,
        names: &[String],
    ) -> std::io::Result<bool> {
        let mut runs = self
            .runs
            .lock()
            .map_err(|_| std::io::Error::other("a snapshot run store panicked"))?;
        let handed_over = runs.stored.len() + usize::from(runs.pending.is_some());
        // The last run is the collector's own (what no run took). And
        // block_in_place needs a multi-threaded runtime (the service's);
        // on any other the runs stay in temp files, merged here.
        if handed_over + 1 >= MAX_SNAPSHOT_RUNS
            || self.runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread
        {
            return Ok(false);
        }
        // Drained, so the inventory's buffer keeps its capacity for the
        // next run (a new buffer each run cost 13 MiB more at the peak).
        let items = sorted_run_items(rows, names);
        let name = attempt_object_name(&self.run_id, "snapshot");
        // Called by the inventory on the reading thread: a blocking thread
        // (CSV) or an async worker (SQL), which block_in_place hands its
        // other tasks off first. The run is encoded here, so its rows are
        // freed on the thread that made them.
        tokio::task::block_in_place(|| -> Result<(), BusError> {
            if let Some(previous) = runs.pending.take() {
                let reference = self.runtime.block_on(previous.finish())?;
                runs.stored.push(reference);
            }
            let (pending, ()) = self.bus.start_snapshot_run_blocking(
                &self.runtime,
                &name,
                &self.key,
                move |out| {
                    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
                    write_snapshot(items.map(Ok), &mut out)?;
                    out.flush()
                },
            )?;
            runs.pending = Some(pending);
            Ok(())
        })
        .map_err(std::io::Error::other)?;
        Ok(true)
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
        // Each full sort buffer is stored as a run while the inventory is
        // read; the renderer merges the runs while it renders.
        let stored_runs = Arc::new(Mutex::new(StoredRuns::default()));
        let inventory =
            Inventory::with_spill_rows(self.run_rows).with_run_sink(Box::new(RunStore {
                bus: bus.clone(),
                key: self.key.clone(),
                run_id: run_id.clone(),
                runtime: tokio::runtime::Handle::current(),
                runs: stored_runs.clone(),
            }));
        let collected = async { source.collect_into(inventory, &RowCounter::new()).await }
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
        let projects = collected.project_totals();
        // The rows no run took (the last buffer, and any past the most runs
        // a snapshot may have, merged here) are the last run: sorted,
        // encoded and encrypted on a blocking thread straight into the
        // object store. No run ever exists in plaintext, nor on disk.
        let (last_run, (rows, warnings, warning_count)) = bus
            .store_snapshot_run_with(
                &attempt_object_name(&run_id, "snapshot"),
                &self.key,
                move |out| {
                    let sorted = collected.into_sorted_stream()?;
                    let summary = (sorted.rows, sorted.warnings.clone(), sorted.warning_count);
                    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
                    // Merged on a thread of its own while this one encodes
                    // and encrypts.
                    write_snapshot(sorted.stream.merged_ahead()?, &mut out)?;
                    out.flush()?;
                    Ok(summary)
                },
            )
            .await
            .map_err(|err| StageFailure::retry(format!("storing the snapshot failed: {err}")))?;
        // The run handed over last has been taken in meanwhile, on a task
        // of its own; a failure of it shows here and the stage retries.
        let mut handed_over = std::mem::take(
            &mut *stored_runs
                .lock()
                .map_err(|_| StageFailure::retry("a snapshot run store panicked"))?,
        );
        let mut runs = handed_over
            .finish()
            .await
            .map_err(|err| StageFailure::retry(format!("storing the snapshot failed: {err}")))?;
        runs.push(last_run);
        let ready = v1::SnapshotReady {
            runs,
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
        tracing::info!(
            rows = ready.rows,
            runs = ready.runs.len(),
            "snapshot stored"
        );
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
