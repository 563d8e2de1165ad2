//! The renderer service: on `breakglass.snapshot.ready`, turns the stored
//! snapshot into the workbook and stores it, encrypted, for the uploader.
//!
//! The workbook itself is `breakglass-render`; this crate fetches the
//! snapshot's runs all at once and renders them while they arrive,
//! merged into workbook order (decrypted record by record, never whole in
//! memory, in a blocking task), hashes the finished file
//! (the destinations verify against that hash), stores it encrypted in the
//! object store while it is encrypted, and publishes `workbook.ready`
//! (`Nats-Msg-Id = workbook-<run id>`). A render counts only if the fetch
//! then proved every run the exact payload the event names. Both
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
use breakglass_core::{DeviceRow, RunRead, SortedItem, SortedStream};
use breakglass_core::{RowWarning, RunId};
use breakglass_proto::v1;
use breakglass_render::encrypt::SealedWorkbook;
use breakglass_render::{EXCEL_MAX_DATA_ROWS, RenderOptions, RenderReport, WorkbookBuilder};
use breakglass_service::ConfigSource;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

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
        let projects = ready.projects.clone();
        let span = tracing::info_span!(
            "render workbook",
            rows = ready.rows,
            runs = ready.runs.len()
        );
        // The snapshot's runs are merged and rendered while they arrive;
        // the render counts only if every fetch then proved its run the
        // exact payload the event names (a failed fetch is the error,
        // whatever the render made of it).
        let rendered = bus
            .read_payloads(&ready.runs, move |runs| {
                let _entered = span.enter();
                let snapshot = Snapshot {
                    runs,
                    projects: &projects,
                };
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

/// A snapshot as it arrives: its runs' readers (in the event's order) and
/// the event's per-project totals.
struct Snapshot<'a> {
    runs: Vec<PayloadReader>,
    projects: &'a [v1::ProjectCount],
}

/// One run of the snapshot, decrypted and decoded as the merge asks for
/// its rows. Holds the run to the snapshot stream's shape: every row after
/// its project's start, as many as the start announces, projects listed in
/// the event and in tab order (so the merge starts each project once: a
/// project started twice would take a second tab, and its rows could then
/// stand in for another project's).
struct FetchedRun<R: Read> {
    reader: SnapshotReader<R>,
    /// Each listed project's index, by name.
    projects: Arc<HashMap<String, u32>>,
    /// Each listed project's rank in tab order, by index.
    ranks: Arc<Vec<u32>>,
    number: usize,
    current: Option<u32>,
    left: u64,
}

impl<R: Read + Send> RunRead for FetchedRun<R> {
    fn next_row(&mut self) -> std::io::Result<Option<(u32, Box<DeviceRow>)>> {
        let damaged = |what: String| std::io::Error::other(format!("run {}: {what}", self.number));
        loop {
            match self.reader.next_item()? {
                None if self.left == 0 => return Ok(None),
                None => {
                    return Err(damaged(format!(
                        "ends {} rows short of its last project",
                        self.left
                    )));
                }
                Some(SnapshotItem::Project { name, rows }) => {
                    if self.left != 0 {
                        return Err(damaged(format!(
                            "starts a project {} rows short of the one before",
                            self.left
                        )));
                    }
                    let Some(&project) = self.projects.get(&name) else {
                        return Err(damaged("names a project the event does not list".into()));
                    };
                    if rows == 0 {
                        return Err(damaged("starts a project with no rows".into()));
                    }
                    let ranks = &self.ranks;
                    if self
                        .current
                        .is_some_and(|before| ranks[before as usize] >= ranks[project as usize])
                    {
                        return Err(damaged(
                            "starts its projects out of tab order, or one twice".into(),
                        ));
                    }
                    (self.current, self.left) = (Some(project), rows);
                }
                Some(SnapshotItem::Row(row)) => {
                    let Some(project) = self.current.filter(|_| self.left > 0) else {
                        return Err(damaged(
                            "holds a row its project start does not count".into(),
                        ));
                    };
                    self.left -= 1;
                    return Ok(Some((project, Box::new(row))));
                }
            }
        }
    }
}

/// Merges the runs into workbook order and writes them: each listed
/// project gets exactly its count (the builder refuses more or fewer rows
/// than a project start announces), and every listed project is written (a
/// project that no run holds is never started by the merge). Merged here,
/// as `run-once` merges its spilled runs: the workbook's deflating runs on
/// a thread of its own, and rows are freed on the thread that decoded them.
fn write_merged(
    runs: Vec<Box<dyn RunRead>>,
    projects: &[v1::ProjectCount],
    builder: &mut WorkbookBuilder,
) -> Result<(), StageFailure> {
    let names: Vec<String> = projects.iter().map(|p| p.project.clone()).collect();
    let counts: Vec<u64> = projects.iter().map(|p| p.rows).collect();
    let mut started = 0usize;
    for item in SortedStream::merge(names, counts, runs) {
        let item =
            item.map_err(|err| StageFailure::permanent(format!("snapshot is damaged: {err}")))?;
        let result = match item {
            SortedItem::Project { name, rows } => {
                started += 1;
                builder.begin_project(&name, rows)
            }
            SortedItem::Row(row) => builder.write_row(&row),
        };
        result.map_err(|err| StageFailure::permanent(err.to_string()))?;
    }
    if started != projects.len() {
        return Err(StageFailure::permanent(format!(
            "snapshot is damaged: its runs hold {started} of the {} projects the event lists",
            projects.len()
        )));
    }
    Ok(())
}

/// Decrypts the snapshot's runs as they arrive, merges them into workbook
/// order, writes the workbook, and protects and
/// hashes it. Blocking: runs on a blocking thread.
fn render_sealed(
    key: &PayloadKey,
    snapshot: Snapshot<'_>,
    dir: &Path,
    options: RenderOptions,
    warnings: &[RowWarning],
    warning_count: u64,
    encryption: &Encryption,
) -> Result<Rendered, StageFailure> {
    let names: Vec<String> = snapshot
        .projects
        .iter()
        .map(|p| p.project.clone())
        .collect();
    // Names are unique (validate::snapshot_ready).
    let index: Arc<HashMap<String, u32>> = Arc::new(
        names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i as u32))
            .collect(),
    );
    let ranks = Arc::new(breakglass_core::spill::project_ranks(&names));
    let mut runs: Vec<Box<dyn RunRead>> = Vec::with_capacity(snapshot.runs.len());
    for (number, reader) in snapshot.runs.into_iter().enumerate() {
        let decrypted = key
            .decrypt(reader)
            .map_err(|err| StageFailure::permanent(format!("snapshot run {number}: {err}")))?;
        runs.push(Box::new(FetchedRun {
            reader: SnapshotReader::new(decrypted),
            projects: index.clone(),
            ranks: ranks.clone(),
            number,
            current: None,
            left: 0,
        }));
    }
    // Made ready first: the passphrase's hashes use what CPU the render
    // leaves (nice 19); sealing hashes again whatever is not done by then.
    let sealer = breakglass_render::encrypt::Sealer::new(encryption.clone());
    let mut builder =
        WorkbookBuilder::new(options).map_err(|err| StageFailure::retry(err.to_string()))?;
    builder.add_collect_warnings(warnings, warning_count);
    write_merged(runs, snapshot.projects, &mut builder)?;
    let (report, plain) = builder
        .finish_unnamed()
        .map_err(|err| StageFailure::retry(err.to_string()))?;
    // The file the destinations will hold: the workbook protected as the
    // settings say. Its size and hash are what every upload is verified by.
    let sealed = sealer.seal_and_hash(plain, dir).map_err(|err| match err {
        breakglass_render::encrypt::SealError::Config(_) => {
            StageFailure::permanent(err.to_string())
        }
        _ => StageFailure::retry(err.to_string()),
    })?;
    Ok(Rendered { report, sealed })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use breakglass_bus::payload::write_snapshot;

    fn row(device: &str) -> SortedItem {
        SortedItem::Row(DeviceRow {
            device_name: device.into(),
            ..DeviceRow::default()
        })
    }

    fn start(name: &str, rows: u64) -> SortedItem {
        SortedItem::Project {
            name: name.into(),
            rows,
        }
    }

    /// A run of `items` as the renderer reads it, among the projects "b"
    /// and "a" (listed in that order; "a" comes first in tab order).
    fn fetched_run(items: Vec<SortedItem>, number: usize) -> FetchedRun<std::io::Cursor<Vec<u8>>> {
        let mut bytes = Vec::new();
        write_snapshot(items.into_iter().map(Ok), &mut bytes).unwrap();
        let projects: HashMap<String, u32> = [("b".to_string(), 0), ("a".to_string(), 1)].into();
        FetchedRun {
            reader: SnapshotReader::new(std::io::Cursor::new(bytes)),
            projects: Arc::new(projects),
            ranks: Arc::new(vec![1, 0]),
            number,
            current: None,
            left: 0,
        }
    }

    /// The rows a run yields, or the error that stopped it.
    fn read_run(items: Vec<SortedItem>) -> Result<Vec<(u32, String)>, String> {
        let mut run = fetched_run(items, 3);
        let mut rows = Vec::new();
        while let Some((project, row)) = run.next_row().map_err(|err| err.to_string())? {
            rows.push((project, row.device_name));
        }
        Ok(rows)
    }

    /// A run is read as the collector wrote it, and one that breaks the
    /// snapshot stream's shape is refused, naming the run and the break,
    /// instead of feeding the merge rows it cannot place.
    #[test]
    fn a_run_is_read_only_in_the_shape_the_collector_writes() {
        assert_eq!(
            read_run(vec![
                start("a", 2),
                row("x"),
                row("y"),
                start("b", 1),
                row("z")
            ])
            .unwrap(),
            [(1, "x".into()), (1, "y".into()), (0, "z".into())]
        );
        assert_eq!(read_run(vec![]).unwrap(), []);
        for (items, rule) in [
            (
                vec![row("x")],
                "holds a row its project start does not count",
            ),
            (
                vec![start("a", 1), row("x"), row("y")],
                "holds a row its project start does not count",
            ),
            (vec![start("a", 2), row("x")], "ends 1 rows short"),
            (
                vec![start("a", 2), row("x"), start("b", 1), row("z")],
                "starts a project 1 rows short",
            ),
            (
                vec![start("c", 1), row("x")],
                "names a project the event does not list",
            ),
            (
                vec![start("a", 1), row("x"), start("a", 1), row("y")],
                "starts its projects out of tab order, or one twice",
            ),
            (
                vec![start("b", 1), row("x"), start("a", 1), row("y")],
                "starts its projects out of tab order",
            ),
            (vec![start("a", 0)], "starts a project with no rows"),
        ] {
            let err = read_run(items).unwrap_err();
            assert!(err.starts_with("run 3: ") && err.contains(rule), "{err}");
        }
    }

    /// Runs merge into the event's projects, each with exactly its count;
    /// runs that together miss a project the event lists, or hold fewer or
    /// more rows of one than it counts, fail the render as damaged.
    #[test]
    fn merged_runs_must_hold_every_listed_project_with_its_count() {
        let dir = tempfile::tempdir().unwrap();
        let write = |runs: Vec<Vec<SortedItem>>, counts: &[(&str, u64)]| {
            let mut builder = WorkbookBuilder::new(RenderOptions {
                run_id: "run-1".into(),
                generated_at: chrono::Utc::now(),
                source: "test".into(),
                temp_dir: dir.path().to_path_buf(),
                max_rows_per_sheet: EXCEL_MAX_DATA_ROWS,
            })
            .unwrap();
            let runs: Vec<Box<dyn RunRead>> = runs
                .into_iter()
                .enumerate()
                .map(|(number, items)| Box::new(fetched_run(items, number)) as Box<dyn RunRead>)
                .collect();
            let projects: Vec<v1::ProjectCount> = counts
                .iter()
                .map(|(name, rows)| v1::ProjectCount {
                    project: (*name).into(),
                    sheets: vec![],
                    rows: *rows,
                })
                .collect();
            write_merged(runs, &projects, &mut builder)
                .map(|()| builder.finish_unnamed().unwrap().0)
                .map_err(|err| format!("{err:?}"))
        };
        let two_runs = || {
            vec![
                vec![start("a", 1), row("a-2"), start("b", 1), row("b-1")],
                vec![start("a", 1), row("a-10")],
            ]
        };
        let report = write(two_runs(), &[("b", 1), ("a", 2)]).unwrap();
        assert_eq!(report.rows, 3);
        assert_eq!(
            report
                .projects
                .iter()
                .map(|p| (p.project.as_str(), p.rows))
                .collect::<Vec<_>>(),
            [("a", 2), ("b", 1)]
        );
        let err = write(vec![vec![start("a", 1), row("a-2")]], &[("b", 1), ("a", 1)]).unwrap_err();
        assert!(
            err.contains("its runs hold 1 of the 2 projects the event lists"),
            "{err}"
        );
        let err = write(two_runs(), &[("b", 1), ("a", 3)]).unwrap_err();
        assert!(err.contains("fewer rows than announced"), "{err}");
        let err = write(two_runs(), &[("b", 1), ("a", 1)]).unwrap_err();
        assert!(err.contains("more rows than announced"), "{err}");
    }
}
