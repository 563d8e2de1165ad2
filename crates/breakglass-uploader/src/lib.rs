//! The uploader service: on `breakglass.workbook.ready`, stores the workbook
//! in every configured destination and reports the run.
//!
//! It fetches the encrypted workbook, decrypts it into a private temp file,
//! checks it against the SHA-256 the renderer recorded, then hands it to each
//! destination independently: one failing does not stop the others, and the
//! run is `succeeded` only when all succeeded (`partially_failed` when some
//! did). The outcome goes out as `run.finished` (`Nats-Msg-Id =
//! finished-<run id>`).

use async_nats::jetstream;
use breakglass_bus::payload::{PayloadKey, hash_file};
use breakglass_bus::worker::{Attempt, Stage, StageFailure, decode};
use breakglass_bus::{Bus, worker};
use breakglass_config::Settings;
use breakglass_core::RunId;
use breakglass_proto::v1;
use breakglass_storage::{Destination, Upload};
use tracing::Instrument;

/// The upload stage bound to the bus.
pub struct Uploader {
    settings: Settings,
    key: PayloadKey,
}

impl Uploader {
    /// An uploader for the destinations the settings name.
    pub fn new(settings: Settings, key: PayloadKey) -> Self {
        Self { settings, key }
    }
}

impl Stage for Uploader {
    fn name(&self) -> &'static str {
        "uploader"
    }

    fn failed_stage(&self) -> &'static str {
        "upload"
    }

    fn trigger_of(&self, message: &jetstream::Message) -> Option<v1::TriggerRequested> {
        decode::<v1::WorkbookReady>(message, "WorkbookReady")
            .ok()
            .and_then(|r| r.snapshot)
            .and_then(|s| s.trigger)
    }

    async fn handle(
        &self,
        bus: &Bus,
        message: &jetstream::Message,
        attempt: Attempt,
    ) -> Result<(), StageFailure> {
        let ready: v1::WorkbookReady = decode(message, "WorkbookReady")?;
        let snapshot = ready.snapshot.clone().unwrap_or_default();
        let trigger = snapshot.trigger.clone().unwrap_or_default();
        let run_id = RunId::parse(&trigger.run_id)
            .map_err(|err| StageFailure::permanent(err.to_string()))?;
        let reference = ready.workbook.clone().ok_or_else(|| {
            StageFailure::permanent("workbook.ready carries no workbook reference")
        })?;
        let temp = tempfile::Builder::new()
            .prefix("breakglass-uploader-")
            .tempdir()
            .map_err(|err| {
                StageFailure::retry(format!("cannot create a private temp directory: {err}"))
            })?;
        let encrypted = temp.path().join("workbook.age");
        bus.fetch_payload(&reference, &encrypted)
            .await
            .map_err(|err| StageFailure::retry(err.to_string()))?;
        let plain = temp.path().join("workbook.xlsx");
        let key = self.key.clone();
        let (src, dst) = (encrypted.clone(), plain.clone());
        let (size, sha256) =
            tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String)> {
                let mut reader = key.decrypt_file(&src)?;
                let mut out = breakglass_core::private_fs::create_new(&dst)?;
                std::io::copy(&mut reader, &mut out)?;
                out.sync_all()?;
                hash_file(&dst)
            })
            .await
            .map_err(|err| StageFailure::retry(format!("decrypt task failed: {err}")))?
            .map_err(|err| StageFailure::permanent(format!("workbook payload: {err}")))?;
        if size != ready.workbook_size || sha256 != ready.workbook_sha256 {
            return Err(StageFailure::permanent(format!(
                "workbook payload does not match the renderer's record: {size} bytes / {sha256} versus {} bytes / {}",
                ready.workbook_size, ready.workbook_sha256
            )));
        }
        let created_at = chrono::DateTime::from_timestamp_millis(snapshot.collected_at_unix_ms)
            .unwrap_or_else(chrono::Utc::now);
        let upload = Upload {
            file: &plain,
            size,
            sha256: &sha256,
            run_id: run_id.as_str(),
            created_at,
        };
        let mut results = Vec::new();
        let mut transient = Vec::new();
        for destination in breakglass_storage::destinations(&self.settings) {
            let described = destination.describe();
            let span = tracing::info_span!("upload", destination = %described, bytes = size);
            let result = destination.upload(&upload).instrument(span).await;
            if let Err(err) = &result
                && err.is_transient()
            {
                transient.push(err.to_string());
            }
            results.push(match result {
                Ok(receipt) => {
                    tracing::info!(destination = %described, location = %receipt.location, "stored and verified");
                    v1::DestinationResult {
                        destination: described,
                        status: v1::RunStatus::Succeeded as i32,
                        location: receipt.location,
                        size: receipt.size,
                        sha256: receipt.sha256,
                        error: String::new(),
                    }
                }
                Err(err) => {
                    tracing::error!(destination = %described, error = %err, "upload failed; the previous copy is untouched");
                    v1::DestinationResult {
                        destination: described,
                        status: v1::RunStatus::Failed as i32,
                        error: err.to_string(),
                        ..Default::default()
                    }
                }
            });
        }
        if !transient.is_empty() && !attempt.is_last() {
            // Try the whole message again later; destinations that already
            // hold this run's file accept the same bytes again.
            return Err(StageFailure::retry(transient.join("; ")));
        }
        let succeeded = results
            .iter()
            .filter(|r| r.status == v1::RunStatus::Succeeded as i32)
            .count();
        let status = if results.is_empty() || succeeded == 0 {
            v1::RunStatus::Failed
        } else if succeeded < results.len() {
            v1::RunStatus::PartiallyFailed
        } else {
            v1::RunStatus::Succeeded
        };
        let error = results
            .iter()
            .filter(|r| !r.error.is_empty())
            .map(|r| r.error.clone())
            .collect::<Vec<_>>()
            .join("; ");
        let finished = v1::RunFinished {
            run_id: run_id.to_string(),
            status: status as i32,
            failed_stage: if status == v1::RunStatus::Succeeded {
                String::new()
            } else {
                "upload".into()
            },
            error: if results.is_empty() {
                "no destination is configured".into()
            } else {
                error
            },
            destinations: results,
            rows: ready.projects.iter().map(|p| p.rows).sum(),
            projects: ready.projects.clone(),
            warning_count: ready.warning_count,
            warnings: ready.warnings.clone(),
            finished_at_unix_ms: worker::chrono_now_ms(),
            trigger: Some(trigger),
        };
        bus.publish(
            &bus.subjects().run_finished(run_id.as_str()),
            &format!("finished-{run_id}"),
            &finished,
        )
        .await
        .map_err(|err| StageFailure::retry(err.to_string()))?;
        tracing::info!(status = ?status, "run finished");
        Ok(())
    }
}
