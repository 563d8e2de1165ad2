//! An inventory grouped by project and put in workbook order.
//!
//! Rows are held here once (DESIGN.md asks for no second copy); sorting
//! happens in place. Problems found while reading are kept as
//! [`RowWarning`]s: a bad row is still written where at all possible, and the
//! run names it (invariant 2).

use crate::device::DeviceRow;
use crate::order::{device_order, project_order};
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

/// Rows grouped by project, with the warnings found on the way.
#[derive(Debug, Default)]
pub struct Inventory {
    projects: HashMap<String, Vec<DeviceRow>>,
    warnings: Vec<RowWarning>,
    warning_count: u64,
    rows: u64,
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one row to its project. An empty project or device name is
    /// kept and reported, never dropped.
    pub fn push(&mut self, project: &str, row: DeviceRow) {
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
        match self.projects.get_mut(project) {
            Some(rows) => rows.push(row),
            None => {
                self.projects.insert(project.to_owned(), vec![row]);
            }
        }
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

    /// Consumes the inventory: projects in tab order, rows in workbook order.
    pub fn into_sorted(self) -> SortedInventory {
        let mut projects: Vec<ProjectRows> = self
            .projects
            .into_iter()
            .map(|(name, mut rows)| {
                rows.sort_unstable_by(device_order);
                ProjectRows { name, rows }
            })
            .collect();
        projects.sort_unstable_by(|a, b| project_order(&a.name, &b.name));
        SortedInventory {
            projects,
            warnings: self.warnings,
            warning_count: self.warning_count,
            rows: self.rows,
        }
    }
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
        inventory.push("b", row("web-10"));
        inventory.push("b", row("web-2"));
        inventory.push("a", row(""));
        inventory.push("", row("orphan"));
        let sorted = inventory.into_sorted();
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
    fn warnings_are_capped_but_counted() {
        let mut inventory = Inventory::new();
        for _ in 0..(MAX_LISTED_WARNINGS + 5) {
            inventory.push("p", row(""));
        }
        assert_eq!(inventory.warnings().len(), MAX_LISTED_WARNINGS);
        assert_eq!(inventory.warning_count(), (MAX_LISTED_WARNINGS + 5) as u64);
    }
}
