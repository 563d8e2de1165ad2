//! The renderer service: on `breakglass.snapshot.ready`, turns the stored
//! snapshot into the workbook and stores it, encrypted, for the uploader.
//!
//! The workbook itself is `breakglass-render`; this crate fetches the
//! snapshot and renders it while it arrives (decrypted record by record,
//! never whole in memory, in a blocking task), hashes the finished file
//! (the destinations verify against that hash), stores it encrypted in the
//! object store while it is encrypted, and publishes `workbook.ready`
//! (`Nats-Msg-Id = workbook-<run id>`). A render counts only if the fetch
//! then proved the snapshot the exact payload the event names. Both
//! events travel sealed (breakglass-bus `envelope`): a `snapshot.ready`
//! that does not open, is stale, or breaks a field rule is dead-lettered
//! before anything is fetched. All of it happens in one private, locked
//! working folder ([`breakglass_render::workdir`]) that is removed
//! afterwards, on success, failure and panic alike, and by the next
//! renderer to start if this one is killed. The snapshot and the stored
//! payload pass through bounded pipes and never touch the disk; the plain
//! workbook and the sealed one only ever live in unnamed files there.

use async_nats::jetstream;
use breakglass_bus::payload::attempt_object_name;
use breakglass_bus::payload::{
    PayloadKey, PayloadReader, SnapshotItem, SnapshotReader, warning_from_proto, warning_to_proto,
};
use breakglass_bus::worker::{Attempt, Stage, StageFailure};
use breakglass_bus::{Bus, EventKind, validate, worker};
use breakglass_config::Encryption;
use breakglass_core::{RowWarning, RunId};
use breakglass_proto::v1;
use breakglass_render::encrypt::SealedWorkbook;
use breakglass_render::{EXCEL_MAX_DATA_ROWS, RenderOptions, RenderReport, WorkbookBuilder};
use breakglass_service::ConfigSource;
use std::path::Path;

/// The prefix of the renderer's working folders in the temp dir.
pub const WORK_DIR_PREFIX: &str = "breakglass-renderer-";

/// Removes the working folders of renderers that are no longer running
/// (killed mid-run), whatever their age; call at start-up. Returns how many.
pub fn sweep_crashed_work_dirs() -> usize {
    let removed = breakglass_render::workdir::sweep_orphans(&[WORK_DIR_PREFIX]);
    if !removed.is_empty() {
        tracing::info!(
            swept = removed.len(),
            "removed working folders of renderers that did not finish"
        );
    }
    removed.len()
}

/// The render stage bound to the bus.
pub struct Renderer {
    key: PayloadKey,
    config: ConfigSource,
}

impl Renderer {
    /// A renderer decrypting and encrypting payloads with `key`.
    pub fn new(key: PayloadKey, config: ConfigSource) -> Self {
        Self { key, config }
    }
}

impl Stage for Renderer {
    fn name(&self) -> &'static str {
        "renderer"
    }

    fn failed_stage(&self) -> &'static str {
        "render"
    }

    fn trigger_of(&self, bus: &Bus, message: &jetstream::Message) -> Option<v1::TriggerRequested> {
        let opened =
            worker::open::<v1::SnapshotReady>(bus, EventKind::SnapshotReady, message).ok()?;
        opened
            .event
            .trigger
            .filter(|t| t.run_id == opened.run_id.as_str())
    }

    async fn handle(
        &self,
        bus: &Bus,
        message: &jetstream::Message,
        _attempt: Attempt,
    ) -> Result<(), StageFailure> {
        let (ready, run_id) = read_snapshot_ready(bus, message)?;
        tracing::info!(
            rows = ready.rows,
            projects = ready.projects.len(),
            "rendering started"
        );
        let reference = ready.snapshot.clone().ok_or_else(|| {
            StageFailure::permanent("snapshot.ready carries no snapshot reference")
        })?;
        let temp = breakglass_render::workdir::WorkDir::create(WORK_DIR_PREFIX).map_err(|err| {
            StageFailure::retry(format!("cannot create a private temp directory: {err}"))
        })?;
        let encryption = self.config.load_for_run()?.encryption;
        if encryption == Encryption::None {
            tracing::warn!("the workbook is stored unencrypted (encryption: none)");
        }
        let key = self.key.clone();
        let work_dir = temp.path().to_path_buf();
        let options = RenderOptions {
            run_id: run_id.to_string(),
            generated_at: chrono::DateTime::from_timestamp_millis(ready.collected_at_unix_ms)
                .unwrap_or_else(chrono::Utc::now),
            source: ready.source.clone(),
            temp_dir: work_dir.clone(),
            max_rows_per_sheet: EXCEL_MAX_DATA_ROWS,
        };
        let warnings: Vec<RowWarning> = ready.warnings.iter().map(warning_from_proto).collect();
        let warning_count = ready.warning_count;
        let span = tracing::info_span!("render workbook", rows = ready.rows);
        // The snapshot is rendered while it arrives; the render counts only
        // if the fetch then proved it the exact payload the event names
        // (a failed fetch is the error, whatever the render made of it).
        let rendered = bus
            .read_payload(&reference, move |snapshot| {
                let _entered = span.enter();
                render_sealed(
                    &key,
                    snapshot,
                    &work_dir,
                    options,
                    &warnings,
                    warning_count,
                    &encryption,
                )
            })
            .await
            .map_err(|err| StageFailure::retry(err.to_string()))??;
        let Rendered {
            report,
            sealed:
                SealedWorkbook {
                    sealed,
                    file: mut stored,
                    size,
                    sha256,
                },
        } = rendered;
        let (workbook_ref, ()) = bus
            .store_payload_with(
                &attempt_object_name(&run_id, "workbook"),
                &self.key,
                move |out| std::io::copy(&mut stored, out).map(|_| ()),
            )
            .await
            .map_err(|err| StageFailure::retry(err.to_string()))?;
        let mut warnings = ready.warnings.clone();
        warnings.extend(report.warnings.iter().map(warning_to_proto));
        let mut warning_count = ready.warning_count + report.warning_count;
        if sealed.encryption == "none" {
            warnings.insert(0, unencrypted_warning());
            warning_count += 1;
        }
        warnings.truncate(breakglass_core::inventory::MAX_LISTED_WARNINGS);
        let event = v1::WorkbookReady {
            workbook: Some(workbook_ref),
            workbook_size: size,
            workbook_sha256: sha256,
            projects: report
                .projects
                .iter()
                .map(|p| v1::ProjectCount {
                    project: p.project.clone(),
                    sheets: p.sheets.clone(),
                    rows: p.rows,
                })
                .collect(),
            warnings,
            warning_count,
            rendered_at_unix_ms: worker::chrono_now_ms(),
            encryption: sealed.encryption.into(),
            extension: sealed.extension.into(),
            key_id: sealed.key_id.clone(),
            snapshot: Some(ready),
        };
        bus.publish_event(EventKind::WorkbookReady, &run_id, &event)
            .await
            .map_err(|err| StageFailure::retry(err.to_string()))?;
        tracing::info!(
            bytes = event.workbook_size,
            rows = report.rows,
            "workbook stored"
        );
        Ok(())
    }
}

/// Opens a `snapshot.ready` and checks every field, and that the event
/// names the run its envelope is bound to.
fn read_snapshot_ready(
    bus: &Bus,
    message: &jetstream::Message,
) -> Result<(v1::SnapshotReady, RunId), StageFailure> {
    let opened = worker::open::<v1::SnapshotReady>(bus, EventKind::SnapshotReady, message)?;
    let run_id = validate::snapshot_ready(
        &opened.event,
        &bus.subjects().payload_bucket(),
        worker::chrono_now_ms(),
    )
    .map_err(|err| StageFailure::permanent(format!("snapshot.ready refused: {err}")))?;
    if run_id != opened.run_id {
        return Err(StageFailure::permanent(format!(
            "snapshot.ready refused: the event names run {run_id} but its envelope run {}",
            opened.run_id
        )));
    }
    Ok((opened.event, run_id))
}

/// The rendered workbook, protected as the settings say, with its report.
struct Rendered {
    report: RenderReport,
    sealed: SealedWorkbook,
}

/// The warning every run with `encryption: none` carries.
fn unencrypted_warning() -> v1::Warning {
    v1::Warning {
        project: String::new(),
        device: String::new(),
        field: "encryption".into(),
        message: "the workbook is stored unencrypted (encryption: none); anyone who can read the storage reads every password".into(),
    }
}

/// Decrypts the snapshot as it arrives, writes the workbook, and protects
/// and hashes it. Blocking: runs on a blocking thread.
fn render_sealed(
    key: &PayloadKey,
    snapshot: PayloadReader,
    dir: &Path,
    options: RenderOptions,
    warnings: &[RowWarning],
    warning_count: u64,
    encryption: &Encryption,
) -> Result<Rendered, StageFailure> {
    let snapshot = key
        .decrypt(snapshot)
        .map_err(|err| StageFailure::permanent(format!("snapshot: {err}")))?;
    let mut reader = SnapshotReader::new(snapshot);
    let mut builder =
        WorkbookBuilder::new(options).map_err(|err| StageFailure::retry(err.to_string()))?;
    builder.add_collect_warnings(warnings, warning_count);
    while let Some(item) = reader
        .next_item()
        .map_err(|err| StageFailure::permanent(format!("snapshot is damaged: {err}")))?
    {
        let result = match item {
            SnapshotItem::Project { name, rows } => builder.begin_project(&name, rows),
            SnapshotItem::Row(row) => builder.write_row(&row),
        };
        result.map_err(|err| StageFailure::permanent(err.to_string()))?;
    }
    let (report, plain) = builder
        .finish_unnamed()
        .map_err(|err| StageFailure::retry(err.to_string()))?;
    // The file the destinations will hold: the workbook protected as the
    // settings say. Its size and hash are what every upload is verified by.
    let sealed = breakglass_render::encrypt::seal_and_hash(plain, encryption, dir).map_err(
        |err| match err {
            breakglass_render::encrypt::SealError::Config(_) => {
                StageFailure::permanent(err.to_string())
            }
            _ => StageFailure::retry(err.to_string()),
        },
    )?;
    Ok(Rendered { report, sealed })
}
