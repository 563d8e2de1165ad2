//! The uploader service: on `breakglass.workbook.ready`, stores the workbook
//! in every configured destination and reports the run.
//!
//! It fetches the encrypted workbook and decrypts it into a private temp
//! file as it arrives (hashing on the way), checks it against the SHA-256
//! the renderer recorded, then hands it to
//! [`breakglass_storage::deliver::store_all`]: every destination
//! independently, transient failures retried within
//! `upload_retry_budget_seconds` (the bus worker's in-progress acks keep
//! the message meanwhile), a destination that already holds this run's
//! verified copy skipped; the run is `succeeded` only when all succeeded
//! (`partially_failed` when some did). The outcome goes out as `run.finished` (`Nats-Msg-Id =
//! finished-<run id>`), authenticated. A `workbook.ready` that does not
//! open, is stale, or breaks a field rule (a future `collected_at`, an
//! `extension` other than the one its encryption makes) is dead-lettered
//! before anything is fetched or stored.
//!
//! [`grpc`] serves the destination Test (`--grpc ADDR`).

pub mod grpc;

use async_nats::jetstream;
use breakglass_bus::payload::PayloadKey;
use breakglass_bus::worker::{Attempt, Stage, StageFailure};
use breakglass_bus::{Bus, EventKind, validate, worker};
use breakglass_core::RunId;
use breakglass_proto::v1;
use breakglass_service::ConfigSource;
use breakglass_storage::Upload;
use breakglass_storage::deliver::{self, RetryBudget};
use breakglass_storage::manifest::ProjectRows;
use breakglass_telemetry::metrics::{DestinationLabel, StatusLabel};

/// Seeds the last-success gauges from the run outcomes the stream still
/// holds, so a restarted uploader does not report "never" (and set off the
/// freshness alert) until its next run.
pub async fn seed_last_success(bus: &Bus) {
    match bus.recent_runs().await {
        Ok(runs) => {
            let metrics = breakglass_telemetry::metrics::metrics();
            for run in runs {
                for destination in run
                    .destinations
                    .iter()
                    .filter(|d| d.status == v1::RunStatus::Succeeded as i32)
                {
                    metrics.destination_succeeded(
                        &destination.destination,
                        run.finished_at_unix_ms as f64 / 1000.0,
                    );
                }
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read earlier runs; last-success gauges start empty")
        }
    }
}

/// The lower-case name of a run status, for metrics labels.
pub fn status_name(status: v1::RunStatus) -> &'static str {
    match status {
        v1::RunStatus::Succeeded => "succeeded",
        v1::RunStatus::PartiallyFailed => "partially_failed",
        v1::RunStatus::Failed => "failed",
        v1::RunStatus::Unspecified => "unspecified",
    }
}

fn unix_seconds_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Opens a `workbook.ready` and checks every field, and that the event
/// names the run its envelope is bound to.
fn read_workbook_ready(
    bus: &Bus,
    message: &jetstream::Message,
) -> Result<(v1::WorkbookReady, RunId), StageFailure> {
    let opened = worker::open::<v1::WorkbookReady>(bus, EventKind::WorkbookReady, message)?;
    let run_id = validate::workbook_ready(
        &opened.event,
        &bus.subjects().payload_bucket(),
        worker::chrono_now_ms(),
    )
    .map_err(|err| StageFailure::permanent(format!("workbook.ready refused: {err}")))?;
    if run_id != opened.run_id {
        return Err(StageFailure::permanent(format!(
            "workbook.ready refused: the event names run {run_id} but its envelope run {}",
            opened.run_id
        )));
    }
    Ok((opened.event, run_id))
}

/// The upload stage bound to the bus.
pub struct Uploader {
    config: ConfigSource,
    key: PayloadKey,
}

impl Uploader {
    /// An uploader for the destinations the settings name, read again for every run.
    pub fn new(config: ConfigSource, key: PayloadKey) -> Self {
        Self { config, key }
    }
}

impl Stage for Uploader {
    fn name(&self) -> &'static str {
        "uploader"
    }

    fn failed_stage(&self) -> &'static str {
        "upload"
    }

    fn trigger_of(&self, bus: &Bus, message: &jetstream::Message) -> Option<v1::TriggerRequested> {
        let opened =
            worker::open::<v1::WorkbookReady>(bus, EventKind::WorkbookReady, message).ok()?;
        opened
            .event
            .snapshot
            .and_then(|s| s.trigger)
            .filter(|t| t.run_id == opened.run_id.as_str())
    }

    async fn handle(
        &self,
        bus: &Bus,
        message: &jetstream::Message,
        attempt: Attempt,
    ) -> Result<(), StageFailure> {
        let (ready, run_id) = read_workbook_ready(bus, message)?;
        let settings = self.config.load_for_run()?;
        let temp = tempfile::Builder::new()
            .prefix("breakglass-uploader-")
            .tempdir()
            .map_err(|err| {
                StageFailure::retry(format!("cannot create a private temp directory: {err}"))
            })?;
        let workbook = fetch_workbook(bus, &self.key, &ready, temp.path()).await?;
        let projects: Vec<ProjectRows> = ready
            .projects
            .iter()
            .map(|p| ProjectRows {
                project: p.project.clone(),
                sheets: p.sheets.clone(),
                rows: p.rows,
            })
            .collect();
        let snapshot = ready.snapshot.clone().unwrap_or_default();
        let upload = Upload {
            file: &workbook.path,
            size: workbook.size,
            sha256: &workbook.sha256,
            run_id: run_id.as_str(),
            // Checked by `validate::workbook_ready`: not in the future, and
            // the extension is the one the encryption makes.
            created_at: chrono::DateTime::from_timestamp_millis(snapshot.collected_at_unix_ms)
                .unwrap_or_else(chrono::Utc::now),
            extension: &ready.extension,
            encryption: &ready.encryption,
            key_id: &ready.key_id,
            projects: &projects,
        };
        let destinations = breakglass_storage::destinations(&settings);
        let budget = RetryBudget::new(settings.upload_retry_budget);
        let delivery = deliver::store_all(&destinations, &upload, budget).await;
        let results: Vec<v1::DestinationResult> = delivery
            .outcomes
            .iter()
            .map(|outcome| record_outcome(outcome, attempt))
            .collect();
        let transient: Vec<String> = delivery
            .outcomes
            .iter()
            .filter_map(|outcome| outcome.result.as_ref().err())
            .filter(|err| err.is_transient())
            .map(ToString::to_string)
            .collect();
        // The working files go before the run is reported: whoever acts on
        // run.finished (a test, an operator stopping the pod) finds nothing
        // of this run left on disk.
        if let Err(err) = temp.close() {
            tracing::warn!(error = %err, "could not remove the working folder; the next start sweeps it");
        }
        if !transient.is_empty() && !attempt.is_last() {
            // Try the whole message again later; destinations that already
            // hold this run's verified file are skipped then.
            return Err(StageFailure::retry(transient.join("; ")));
        }
        report_run(bus, &run_id, &ready, &delivery, results).await?;
        breakglass_telemetry::metrics::metrics()
            .last_workbook_bytes
            .set(workbook.size as i64);
        Ok(())
    }
}

/// The plain workbook of a run, decrypted into the uploader's private temp
/// folder and checked against the renderer's record.
struct FetchedWorkbook {
    path: std::path::PathBuf,
    size: u64,
    sha256: String,
}

/// Fetches the sealed workbook from the payload store, decrypts it into
/// `folder` and refuses it unless size and SHA-256 match what the renderer
/// recorded in the (authenticated) `workbook.ready`.
async fn fetch_workbook(
    bus: &Bus,
    key: &PayloadKey,
    ready: &v1::WorkbookReady,
    folder: &std::path::Path,
) -> Result<FetchedWorkbook, StageFailure> {
    let reference = ready
        .workbook
        .as_ref()
        .ok_or_else(|| StageFailure::permanent("workbook.ready carries no workbook reference"))?;
    // Fetched, decrypted, written and hashed in one pass; the file counts
    // only if the fetch proved the payload exact and the hash matches the
    // renderer's record.
    let plain = folder.join("workbook.xlsx");
    let key = key.clone();
    let dst = plain.clone();
    let (size, sha256) = bus
        .read_payload(
            reference,
            move |payload| -> std::io::Result<(u64, String)> {
                let mut reader = key.decrypt(payload)?;
                let mut hashing = breakglass_core::private_fs::HashingFile::create(&dst)?;
                std::io::copy(&mut reader, &mut hashing)?;
                // A scratch copy: the destinations sync their own.
                hashing.finish_unsynced()
            },
        )
        .await
        .map_err(|err| StageFailure::retry(err.to_string()))?
        .map_err(|err| StageFailure::permanent(format!("workbook payload: {err}")))?;
    if size != ready.workbook_size || sha256 != ready.workbook_sha256 {
        return Err(StageFailure::permanent(format!(
            "workbook payload does not match the renderer's record: {size} bytes / {sha256} versus {} bytes / {}",
            ready.workbook_size, ready.workbook_sha256
        )));
    }
    Ok(FetchedWorkbook {
        path: plain,
        size,
        sha256,
    })
}

/// Logs, meters and traces one destination's outcome and turns it into the
/// run result's line (a transient failure is marked as retried by the
/// next delivery unless this was the last).
fn record_outcome(outcome: &deliver::Outcome, attempt: Attempt) -> v1::DestinationResult {
    let metrics = breakglass_telemetry::metrics::metrics();
    let described = &outcome.destination;
    let label = DestinationLabel {
        destination: described.clone(),
    };
    metrics
        .upload_seconds
        .get_or_create(&label)
        .observe(outcome.elapsed.as_secs_f64());
    if outcome.attempts > 1 {
        metrics
            .upload_retries
            .get_or_create(&label)
            .inc_by(u64::from(outcome.attempts - 1));
    }
    let waited_ms = u64::try_from(outcome.waited.as_millis()).unwrap_or(u64::MAX);
    match &outcome.result {
        Ok(receipt) => {
            if receipt.already_stored {
                tracing::info!(destination = %described, location = %receipt.location, "already stored and verified by an earlier delivery; not sent again");
            } else {
                tracing::info!(destination = %described, location = %receipt.location, waited_ms, "stored and verified");
            }
            for warning in &receipt.warnings {
                tracing::warn!(destination = %described, warning = %warning, "stored, with a warning");
            }
            metrics.destination_succeeded(described, unix_seconds_now());
            v1::DestinationResult {
                destination: described.clone(),
                status: v1::RunStatus::Succeeded as i32,
                location: receipt.location.clone(),
                size: receipt.size,
                sha256: receipt.sha256.clone(),
                error: String::new(),
                already_stored: receipt.already_stored,
                waited_ms,
            }
        }
        Err(err) => {
            if err.is_transient() && !attempt.is_last() {
                metrics.upload_retries.get_or_create(&label).inc();
                // A `retry` span inside this upload's span marks, in the
                // trace, that the message will come again for another try.
                let retry = tracing::warn_span!(
                    parent: &outcome.span,
                    "retry",
                    destination = %described,
                    attempt = attempt.number,
                    next_attempt = attempt.number + 1,
                );
                retry.in_scope(|| {
                    tracing::warn!(destination = %described, error = %err, waited_ms, "upload failed transiently; retrying with the next delivery");
                });
            }
            tracing::error!(destination = %described, error = %err, waited_ms, "upload failed; the previous copy is untouched");
            v1::DestinationResult {
                destination: described.clone(),
                status: v1::RunStatus::Failed as i32,
                error: err.to_string(),
                waited_ms,
                ..Default::default()
            }
        }
    }
}

/// Publishes the run's authenticated `run.finished` and counts it.
async fn report_run(
    bus: &Bus,
    run_id: &RunId,
    ready: &v1::WorkbookReady,
    delivery: &deliver::Delivery,
    results: Vec<v1::DestinationResult>,
) -> Result<(), StageFailure> {
    let status = match delivery.status {
        deliver::Status::Succeeded => v1::RunStatus::Succeeded,
        deliver::Status::PartiallyFailed => v1::RunStatus::PartiallyFailed,
        deliver::Status::Failed => v1::RunStatus::Failed,
    };
    let trigger = ready
        .snapshot
        .as_ref()
        .and_then(|s| s.trigger.clone())
        .unwrap_or_default();
    let finished = v1::RunFinished {
        run_id: run_id.to_string(),
        status: status as i32,
        failed_stage: if status == v1::RunStatus::Succeeded {
            String::new()
        } else {
            "upload".into()
        },
        error: delivery.error.clone(),
        destinations: results,
        rows: ready.projects.iter().map(|p| p.rows).sum(),
        projects: ready.projects.clone(),
        warning_count: ready.warning_count,
        warnings: ready.warnings.clone(),
        finished_at_unix_ms: worker::chrono_now_ms(),
        trigger: Some(trigger),
    };
    bus.publish_event(EventKind::RunFinished, run_id, &finished)
        .await
        .map_err(|err| StageFailure::retry(err.to_string()))?;
    tracing::info!(status = ?status, "run finished");
    breakglass_telemetry::metrics::metrics()
        .runs_finished
        .get_or_create(&StatusLabel {
            status: status_name(status).into(),
        })
        .inc();
    Ok(())
}
