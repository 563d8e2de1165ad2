//! An inventory grouped by project and put in workbook order.
//!
//! Rows are held here once (DESIGN.md asks for no second copy); sorting
//! happens in place. Problems found while reading are kept as
//! [`RowWarning`]s: a bad row is still written where at all possible, and the
//! run names it (invariant 2).

use crate::device::DeviceRow;
use crate::spill::{Run, SortedItem, SortedStream};
use std::collections::HashMap;

/// How many warnings are listed in full; the rest are only counted, so a
/// broken inventory cannot blow up a message or a log.
pub const MAX_LISTED_WARNINGS: usize = 100;

/// The project name used for rows whose project is empty.
pub const UNNAMED_PROJECT: &str = "(no project)";

/// A non-fatal problem in one row. Names the place and the rule, never the
/// value of a secret column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowWarning {
    /// Project of the row.
    pub project: String,
    /// Device name of the row (may be empty: that can be the problem).
    pub device: String,
    /// Column header of the field, or empty for the whole row.
    pub field: String,
    /// What is wrong and what was done about it.
    pub message: String,
}

/// One project's rows in workbook order.
#[derive(Debug, Default)]
pub struct ProjectRows {
    /// The project name as the inventory spells it.
    pub name: String,
    /// Its device rows, sorted by [`device_order`].
    pub rows: Vec<DeviceRow>,
}

/// Takes the sorted runs of an [`Inventory`] as it reads, instead of its
/// temp files: the collector stores each run as a payload, so the merge
/// happens downstream (in the renderer) rather than after the last row.
pub trait RunSink: Send {
    /// Takes one run: `rows`, already in workbook order, each with its
    /// project's index in `names`. Returns `false` to decline it and every
    /// later run (the inventory then spills them to temp files, in runs of
    /// at least [`crate::spill::DEFAULT_SPILL_ROWS`] rows, and merges them
    /// at the end);
    /// an `Err` stops the reading. May take the rows out of `rows` (best
    /// by draining it: its capacity then serves the next run).
    fn take(&mut self, rows: &mut Vec<(u32, DeviceRow)>, names: &[String])
    -> std::io::Result<bool>;
}

/// Rows grouped by project, with the warnings found on the way. Past
/// [`crate::spill::DEFAULT_SPILL_ROWS`] rows, sorted runs go to unnamed temp
/// files (or to a [`RunSink`]), so memory stays bounded whatever the
/// inventory's size.
pub struct Inventory {
    names: Vec<String>,
    index: HashMap<String, u32>,
    /// Tab order of `names`, updated as projects are added.
    ranks: crate::spill::ProjectRanks,
    /// Rows per project, in all.
    counts: Vec<u64>,
    /// Rows per project still here (buffer and temp files), not handed to
    /// the sink.
    kept: Vec<u64>,
    buffer: Vec<(u32, DeviceRow)>,
    runs: Vec<Run>,
    sink: Option<Box<dyn RunSink>>,
    spill_rows: usize,
    /// The least run size once a sink declined.
    fallback_spill_rows: usize,
    spill_key: Option<age::x25519::Identity>,
    warnings: Vec<RowWarning>,
    warning_count: u64,
    rows: u64,
}

impl Default for Inventory {
    fn default() -> Self {
        Self::with_spill_rows(crate::spill::DEFAULT_SPILL_ROWS)
    }
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("rows", &self.rows)
            .field("projects", &self.names.len())
            .field("runs", &self.runs.len())
            .finish_non_exhaustive()
    }
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty inventory that spills a sorted run every `rows` rows.
    pub fn with_spill_rows(rows: usize) -> Self {
        Self {
            names: Vec::new(),
            index: HashMap::new(),
            ranks: crate::spill::ProjectRanks::default(),
            counts: Vec::new(),
            kept: Vec::new(),
            buffer: Vec::new(),
            runs: Vec::new(),
            sink: None,
            spill_rows: rows.max(1),
            fallback_spill_rows: crate::spill::DEFAULT_SPILL_ROWS,
            spill_key: None,
            warnings: Vec::new(),
            warning_count: 0,
            rows: 0,
        }
    }

    /// Hands every full sort buffer to `sink` first (see [`RunSink`]).
    pub fn with_run_sink(mut self, sink: Box<dyn RunSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Adds one row to its project. An empty project or device name is
    /// kept and reported, never dropped. Fails only when a sorted run cannot
    /// be written to temp storage (disk full): the caller stops reading.
    pub fn push(&mut self, project: &str, row: DeviceRow) -> std::io::Result<()> {
        let project = if project.trim().is_empty() {
            self.warn(RowWarning {
                project: UNNAMED_PROJECT.into(),
                device: row.device_name.clone(),
                field: "Project".into(),
                message: format!("project name is empty; row kept under \"{UNNAMED_PROJECT}\""),
            });
            UNNAMED_PROJECT
        } else {
            project
        };
        if row.device_name.trim().is_empty() {
            self.warn(RowWarning {
                project: project.into(),
                device: String::new(),
                field: "Device name".into(),
                message: "device name is empty; row kept, sorted first".into(),
            });
        }
        self.rows += 1;
        let index = match self.index.get(project) {
            Some(index) => *index,
            None => {
                let index = self.names.len() as u32;
                self.names.push(project.to_owned());
                self.counts.push(0);
                self.kept.push(0);
                self.index.insert(project.to_owned(), index);
                index
            }
        };
        self.counts[index as usize] += 1;
        self.kept[index as usize] += 1;
        if self.buffer.capacity() == 0 {
            // Reserved whole, once: grown by doubling, the buffer's rows
            // were copied about twice over and twice its pages touched
            // before the first run was full (20-50 ms of every run-once).
            // Untouched, the reservation costs no memory.
            self.buffer
                .reserve_exact(self.spill_rows.min(crate::spill::DEFAULT_SPILL_ROWS));
        }
        self.buffer.push((index, row));
        if self.buffer.len() >= self.spill_rows {
            crate::spill::sort_buffer(&mut self.buffer, self.ranks.update(&self.names));
            if let Some(sink) = self.sink.as_mut() {
                for (project, _) in &self.buffer {
                    self.kept[*project as usize] -= 1;
                }
                if sink.take(&mut self.buffer, &self.names)? {
                    self.buffer.clear();
                    return Ok(());
                }
                for (project, _) in &self.buffer {
                    self.kept[*project as usize] += 1;
                }
                // Declined for good: the rest goes to temp files, in runs
                // no smaller than the default (a small run size chosen for
                // the sink must not make thousands of files).
                self.sink = None;
                self.spill_rows = self.spill_rows.max(self.fallback_spill_rows);
            }
            let key = self
                .spill_key
                .get_or_insert_with(age::x25519::Identity::generate);
            self.runs.push(Run::write(&self.buffer, key)?);
            self.buffer.clear();
        }
        Ok(())
    }

    /// Records a warning; only the first [`MAX_LISTED_WARNINGS`] are kept in
    /// full, all are counted.
    pub fn warn(&mut self, warning: RowWarning) {
        self.warning_count += 1;
        if self.warnings.len() < MAX_LISTED_WARNINGS {
            self.warnings.push(warning);
        }
    }

    /// Number of rows added so far.
    pub fn row_count(&self) -> u64 {
        self.rows
    }

    /// Number of warnings recorded so far.
    pub fn warning_count(&self) -> u64 {
        self.warning_count
    }

    /// The warnings listed in full.
    pub fn warnings(&self) -> &[RowWarning] {
        &self.warnings
    }

    /// Number of projects seen so far.
    pub fn project_count(&self) -> usize {
        self.names.len()
    }

    /// Every project with its number of rows, in tab order.
    pub fn project_totals(&self) -> Vec<(String, u64)> {
        let mut totals: Vec<(String, u64)> = self
            .names
            .iter()
            .cloned()
            .zip(self.counts.iter().copied())
            .collect();
        totals.sort_unstable_by(|a, b| crate::order::project_order(&a.0, &b.0));
        totals
    }

    /// Consumes the inventory into a stream in workbook order (projects in
    /// tab order, rows in sheet order), with the counts and warnings. With
    /// a [`RunSink`], the stream holds only the rows the sink did not take
    /// (and each project start counts those).
    pub fn into_sorted_stream(self) -> std::io::Result<SortedRows> {
        Ok(SortedRows {
            rows: self.rows,
            projects: self.names.len() as u64,
            warnings: self.warnings,
            warning_count: self.warning_count,
            stream: SortedStream::new(self.names, self.kept, self.runs, self.buffer, self.ranks),
        })
    }

    /// Consumes the inventory into memory, in workbook order. For small
    /// inventories and tests; big ones use [`Inventory::into_sorted_stream`].
    pub fn into_sorted(self) -> std::io::Result<SortedInventory> {
        let sorted = self.into_sorted_stream()?;
        let mut projects: Vec<ProjectRows> = Vec::new();
        let (rows, warnings, warning_count) = (sorted.rows, sorted.warnings, sorted.warning_count);
        for item in sorted.stream {
            match item? {
                SortedItem::Project { name, rows } => projects.push(ProjectRows {
                    name,
                    rows: Vec::with_capacity(rows.min(1 << 20) as usize),
                }),
                SortedItem::Row(row) => {
                    if let Some(project) = projects.last_mut() {
                        project.rows.push(row);
                    }
                }
            }
        }
        Ok(SortedInventory {
            projects,
            warnings,
            warning_count,
            rows,
        })
    }
}

/// An inventory in workbook order, streaming, with its counts.
pub struct SortedRows {
    /// All rows, counted.
    pub rows: u64,
    /// Number of projects (tabs before continuation).
    pub projects: u64,
    /// Warnings listed in full (at most [`MAX_LISTED_WARNINGS`]).
    pub warnings: Vec<RowWarning>,
    /// All warnings, counted.
    pub warning_count: u64,
    /// Project starts and rows, in order.
    pub stream: SortedStream,
}

/// An inventory in workbook order, ready to render.
#[derive(Debug, Default)]
pub struct SortedInventory {
    /// Projects in tab order.
    pub projects: Vec<ProjectRows>,
    /// Warnings listed in full (at most [`MAX_LISTED_WARNINGS`]).
    pub warnings: Vec<RowWarning>,
    /// All warnings, counted.
    pub warning_count: u64,
    /// All rows, counted.
    pub rows: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str) -> DeviceRow {
        DeviceRow {
            device_name: device.into(),
            ..DeviceRow::default()
        }
    }

    /// The sort buffer is reserved whole when the first row comes, so
    /// filling it never moves the rows already in it: growing it by
    /// doubling copied them (and touched fresh pages) about twice per run,
    /// a cost paid again by every run-once however small the inventory.
    #[test]
    fn the_sort_buffer_is_reserved_once_and_never_moves() {
        let rows = 1_000;
        let mut inventory = Inventory::with_spill_rows(rows);
        inventory.push("a", row("web-0")).unwrap();
        let start = inventory.buffer.as_ptr();
        assert!(inventory.buffer.capacity() >= rows);
        for i in 1..rows - 1 {
            inventory.push("a", row(&format!("web-{i}"))).unwrap();
            assert_eq!(inventory.buffer.as_ptr(), start, "row {i} moved the buffer");
        }
        // Past a full buffer (a spilled run), the same memory serves again.
        for i in 0..rows {
            inventory.push("b", row(&format!("db-{i}"))).unwrap();
        }
        assert_eq!(inventory.runs.len(), 1);
        assert_eq!(inventory.buffer.as_ptr(), start);
        // An inventory that never spills reserves no more than the default.
        let mut unbounded = Inventory::with_spill_rows(usize::MAX);
        unbounded.push("a", row("web-0")).unwrap();
        assert!(unbounded.buffer.capacity() >= crate::spill::DEFAULT_SPILL_ROWS);
        assert!(unbounded.buffer.capacity() < 2 * crate::spill::DEFAULT_SPILL_ROWS);
    }

    #[test]
    fn groups_and_sorts_and_keeps_bad_rows() {
        let mut inventory = Inventory::new();
        inventory.push("b", row("web-10")).unwrap();
        inventory.push("b", row("web-2")).unwrap();
        inventory.push("a", row("")).unwrap();
        inventory.push("", row("orphan")).unwrap();
        let sorted = inventory.into_sorted().unwrap();
        let names: Vec<_> = sorted.projects.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec![UNNAMED_PROJECT, "a", "b"]);
        let b: Vec<_> = sorted.projects[2]
            .rows
            .iter()
            .map(|r| r.device_name.as_str())
            .collect();
        assert_eq!(b, vec!["web-2", "web-10"]);
        assert_eq!(sorted.rows, 4);
        assert_eq!(sorted.warning_count, 2);
        assert!(sorted.warnings.iter().any(|w| w.field == "Project"));
        assert!(
            sorted
                .warnings
                .iter()
                .any(|w| w.field == "Device name" && w.project == "a")
        );
    }

    #[test]
    fn spilled_runs_merge_into_the_same_order() {
        let names = ["web-10", "web-2", "db", "WEB-2", "app-1", "app-10", "app-9"];
        let mut small = Inventory::with_spill_rows(3);
        let mut whole = Inventory::with_spill_rows(usize::MAX);
        for i in 0..200u32 {
            let project = ["b", "a", "c"][(i % 3) as usize];
            let device = format!("{}-{}", names[(i % 7) as usize], i % 11);
            for inventory in [&mut small, &mut whole] {
                inventory
                    .push(
                        project,
                        DeviceRow {
                            device_name: device.clone(),
                            account: format!("acct{i}"),
                            ..DeviceRow::default()
                        },
                    )
                    .unwrap();
            }
        }
        assert!(small.runs.len() > 10, "the small inventory spilled");
        let a = small.into_sorted().unwrap();
        let b = whole.into_sorted().unwrap();
        let flat = |s: &SortedInventory| -> Vec<(String, String, String)> {
            s.projects
                .iter()
                .flat_map(|p| {
                    p.rows
                        .iter()
                        .map(move |r| (p.name.clone(), r.device_name.clone(), r.account.clone()))
                })
                .collect()
        };
        assert_eq!(flat(&a), flat(&b));
        assert_eq!(
            a.projects
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(a.rows, 200);
    }

    /// Keeps the runs it takes in memory, as items, up to `limit` runs.
    struct KeepRuns {
        runs: std::sync::Arc<std::sync::Mutex<Vec<Vec<SortedItem>>>>,
        limit: usize,
    }

    impl RunSink for KeepRuns {
        fn take(
            &mut self,
            rows: &mut Vec<(u32, DeviceRow)>,
            names: &[String],
        ) -> std::io::Result<bool> {
            let mut runs = self.runs.lock().unwrap();
            if runs.len() >= self.limit {
                return Ok(false);
            }
            runs.push(crate::sorted_run_items(rows, names).collect());
            Ok(true)
        }
    }

    /// A run of items read back as a merge source, checking each project
    /// start's count.
    struct ItemRun {
        items: std::vec::IntoIter<SortedItem>,
        index: HashMap<String, u32>,
        current: u32,
        left: u64,
    }

    impl crate::RunRead for ItemRun {
        fn next_row(&mut self) -> std::io::Result<Option<(u32, Box<DeviceRow>)>> {
            loop {
                match self.items.next() {
                    None => {
                        assert_eq!(self.left, 0, "a run holds what its starts count");
                        return Ok(None);
                    }
                    Some(SortedItem::Project { name, rows }) => {
                        assert_eq!(self.left, 0, "a run holds what its starts count");
                        (self.current, self.left) = (self.index[&name], rows);
                    }
                    Some(SortedItem::Row(row)) => {
                        self.left -= 1;
                        return Ok(Some((self.current, Box::new(row))));
                    }
                }
            }
        }
    }

    /// Runs handed to a sink (up to its limit; past it the inventory spills
    /// as before) and the rest of the inventory, merged, are the inventory
    /// in workbook order, with the same project starts and counts.
    #[test]
    fn runs_taken_by_a_sink_merge_with_the_rest_into_the_same_order() {
        for limit in [0, 5, usize::MAX] {
            let runs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let mut sunk = Inventory::with_spill_rows(7).with_run_sink(Box::new(KeepRuns {
                runs: runs.clone(),
                limit,
            }));
            // Small enough that the rows past the sink's limit spill to
            // several temp files, merged by into_sorted_stream.
            sunk.fallback_spill_rows = 11;
            let mut whole = Inventory::with_spill_rows(usize::MAX);
            for i in 0..200u32 {
                let project = ["b", "a", "c", "A-10", "A-9"][(i % 5) as usize];
                let row = DeviceRow {
                    device_name: format!("{}-{}", ["web", "WEB", "db"][(i % 3) as usize], i % 11),
                    account: format!("acct{i}"),
                    ..DeviceRow::default()
                };
                sunk.push(project, row.clone()).unwrap();
                whole.push(project, row).unwrap();
            }
            if limit < 200 / 7 {
                assert!(sunk.runs.len() > 2, "spilled after the sink declined");
                assert!(
                    sunk.sink.is_none(),
                    "a sink that declined is not asked again"
                );
            }
            let totals = sunk.project_totals();
            let rest: Vec<SortedItem> = sunk
                .into_sorted_stream()
                .unwrap()
                .stream
                .map(Result::unwrap)
                .collect();
            let mut taken = std::mem::take(&mut *runs.lock().unwrap());
            assert_eq!(
                taken.len(),
                limit.min(200 / 7),
                "runs taken with limit {limit}"
            );
            taken.push(rest);
            let index: HashMap<String, u32> = totals
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (name.clone(), i as u32))
                .collect();
            let sources: Vec<Box<dyn crate::RunRead>> = taken
                .into_iter()
                .map(|items| {
                    Box::new(ItemRun {
                        items: items.into_iter(),
                        index: index.clone(),
                        current: 0,
                        left: 0,
                    }) as Box<dyn crate::RunRead>
                })
                .collect();
            let flat = |items: Vec<SortedItem>| -> Vec<String> {
                items
                    .into_iter()
                    .map(|item| match item {
                        SortedItem::Project { name, rows } => format!("project {name} {rows}"),
                        SortedItem::Row(row) => format!("{} {}", row.device_name, row.account),
                    })
                    .collect()
            };
            let merged = crate::SortedStream::merge(
                totals.iter().map(|(name, _)| name.clone()).collect(),
                totals.iter().map(|(_, rows)| *rows).collect(),
                sources,
            );
            let merged = flat(merged.map(Result::unwrap).collect());
            let expected = flat(
                whole
                    .into_sorted_stream()
                    .unwrap()
                    .stream
                    .map(Result::unwrap)
                    .collect(),
            );
            assert_eq!(merged.len(), 205);
            assert!(merged == expected, "limit {limit}: {merged:?}");
        }
    }

    #[test]
    fn warnings_are_capped_but_counted() {
        let mut inventory = Inventory::new();
        for _ in 0..(MAX_LISTED_WARNINGS + 5) {
            inventory.push("p", row("")).unwrap();
        }
        assert_eq!(inventory.warnings().len(), MAX_LISTED_WARNINGS);
        assert_eq!(inventory.warning_count(), (MAX_LISTED_WARNINGS + 5) as u64);
    }
}
