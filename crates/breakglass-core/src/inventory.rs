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

/// Rows grouped by project, with the warnings found on the way. Past
/// [`crate::spill::DEFAULT_SPILL_ROWS`] rows, sorted runs go to unnamed temp
/// files, so memory stays bounded whatever the inventory's size.
pub struct Inventory {
    names: Vec<String>,
    index: HashMap<String, u32>,
    counts: Vec<u64>,
    buffer: Vec<(u32, DeviceRow)>,
    runs: Vec<Run>,
    spill_rows: usize,
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
            counts: Vec::new(),
            buffer: Vec::new(),
            runs: Vec::new(),
            spill_rows: rows.max(1),
            spill_key: None,
            warnings: Vec::new(),
            warning_count: 0,
            rows: 0,
        }
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
                self.index.insert(project.to_owned(), index);
                index
            }
        };
        self.counts[index as usize] += 1;
        self.buffer.push((index, row));
        if self.buffer.len() >= self.spill_rows {
            crate::spill::sort_buffer(&mut self.buffer, &self.names);
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

    /// Consumes the inventory into a stream in workbook order (projects in
    /// tab order, rows in sheet order), with the counts and warnings.
    pub fn into_sorted_stream(self) -> std::io::Result<SortedRows> {
        Ok(SortedRows {
            rows: self.rows,
            projects: self.names.len() as u64,
            warnings: self.warnings,
            warning_count: self.warning_count,
            stream: SortedStream::new(self.names, self.counts, self.runs, self.buffer),
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
