//! Writes the break-glass workbook: a `Summary` tab, then one tab per
//! project with the 12 columns, rows in workbook order.
//!
//! # Layout
//! - [`WorkbookBuilder`]: the streaming writer. Callers announce each
//!   project with its row count, then hand over its rows in order; big
//!   projects go to constant-memory sheets, so a project is never held as
//!   cells in memory.
//! - [`sheet_names`]: Excel's sheet-name rules, applied deterministically.
//! - [`cells`]: what a value may hold in a cell (length, characters).
//!
//! Every inventory value is written as a string cell: `=1+1`, `0012`,
//! `TRUE` and `1E5` stay exactly as typed (invariant 7). This crate knows
//! nothing of NATS or storage; it writes one file into a folder the caller
//! keeps private.
#![warn(missing_docs)]

pub mod cells;
pub mod sheet_names;

use breakglass_core::{COLUMNS, DeviceRow, RowWarning};
use chrono::{DateTime, Utc};
use rust_xlsxwriter::{Format, Workbook, Worksheet, XlsxError};
use sheet_names::SheetNames;
use std::path::{Path, PathBuf};

/// Excel's last row index is 1,048,575; with the header row that leaves
/// this many data rows per sheet.
pub const EXCEL_MAX_DATA_ROWS: u32 = 1_048_575;

/// Projects with at least this many rows are written in constant-memory
/// mode (one temp file each, rows streamed to disk); smaller ones stay in
/// memory so thousands of small projects do not need thousands of open
/// files.
pub const CONSTANT_MEMORY_FROM_ROWS: u64 = 2_000;

/// Column widths, in Excel character units, in [`COLUMNS`] order.
const WIDTHS: [f64; 12] = [
    14.0, 28.0, 11.0, 17.0, 17.0, 34.0, 7.0, 13.0, 18.0, 24.0, 20.0, 24.0,
];

/// The tab that comes first and explains the file.
pub const SUMMARY_SHEET: &str = "Summary";

/// Facts printed on the Summary tab.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// The run that made the file.
    pub run_id: String,
    /// When the inventory was read.
    pub generated_at: DateTime<Utc>,
    /// Where the inventory came from (no password).
    pub source: String,
    /// Folder for the writer's temp files; must be private to this process.
    pub temp_dir: PathBuf,
    /// Data rows per sheet before a continuation tab; Excel's limit unless a
    /// test wants to see continuation without a million rows.
    pub max_rows_per_sheet: u32,
}

/// One project's place in the workbook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectSheets {
    /// The project name as the inventory spells it.
    pub project: String,
    /// Its tabs, first to last.
    pub sheets: Vec<String>,
    /// Rows written.
    pub rows: u64,
}

/// What was written.
#[derive(Clone, Debug, Default)]
pub struct RenderReport {
    /// Projects in tab order.
    pub projects: Vec<ProjectSheets>,
    /// Rows written in all.
    pub rows: u64,
    /// Warnings raised while writing (e.g. a value cut to the cell limit),
    /// listed in full up to [`breakglass_core::inventory::MAX_LISTED_WARNINGS`].
    pub warnings: Vec<RowWarning>,
    /// All render warnings, counted.
    pub warning_count: u64,
}

/// Why the workbook could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The Excel writer failed (disk full, too many open files...).
    #[error("writing the workbook failed: {0}")]
    Xlsx(String),
    /// The caller broke the protocol (rows without a project, more rows
    /// than announced); a bug, not bad input.
    #[error("workbook writer misused: {0}")]
    Misuse(&'static str),
}

impl From<XlsxError> for RenderError {
    fn from(err: XlsxError) -> Self {
        Self::Xlsx(err.to_string())
    }
}

/// The project currently being written.
struct OpenProject {
    index: usize,
    expected: u64,
    written: u64,
    /// Row within the current sheet (1 = first data row).
    sheet_row: u32,
    sheet_index: usize,
    constant_memory: bool,
}

/// Streams projects and rows into one workbook file.
pub struct WorkbookBuilder {
    workbook: Workbook,
    options: RenderOptions,
    names: SheetNames,
    header: Format,
    report: RenderReport,
    current: Option<OpenProject>,
    /// Warnings handed in by the caller (from collecting), for the Summary.
    inherited_warnings: Vec<RowWarning>,
    inherited_warning_count: u64,
}

impl WorkbookBuilder {
    /// Starts a workbook; the Summary tab is created first so it is the
    /// first tab, and filled in by [`WorkbookBuilder::finish`].
    pub fn new(options: RenderOptions) -> Result<Self, RenderError> {
        let mut workbook = Workbook::new();
        workbook.set_tempdir(&options.temp_dir)?;
        workbook.use_zip_large_file(true);
        let mut names = SheetNames::new();
        let summary = names.reserve(SUMMARY_SHEET);
        workbook.add_worksheet().set_name(summary)?;
        Ok(Self {
            workbook,
            options,
            names,
            header: Format::new().set_bold(),
            report: RenderReport::default(),
            current: None,
            inherited_warnings: Vec::new(),
            inherited_warning_count: 0,
        })
    }

    /// Warnings found before rendering (while collecting), listed on the
    /// Summary tab with the renderer's own.
    pub fn add_collect_warnings(&mut self, warnings: &[RowWarning], count: u64) {
        self.inherited_warnings.extend_from_slice(warnings);
        self.inherited_warning_count += count;
    }

    /// Starts a project's tab(s). `rows` is the exact number of rows that
    /// will follow; it decides the sheet mode and continuation tabs.
    pub fn begin_project(&mut self, name: &str, rows: u64) -> Result<(), RenderError> {
        self.end_project()?;
        let constant_memory = rows >= CONSTANT_MEMORY_FROM_ROWS;
        let sheet = self.names.allocate(name);
        self.add_sheet(
            &sheet,
            constant_memory,
            rows.min(u64::from(self.options.max_rows_per_sheet)),
        )?;
        self.report.projects.push(ProjectSheets {
            project: name.into(),
            sheets: vec![sheet],
            rows: 0,
        });
        self.current = Some(OpenProject {
            index: self.report.projects.len() - 1,
            expected: rows,
            written: 0,
            sheet_row: 0,
            sheet_index: self.workbook_sheet_count() - 1,
            constant_memory,
        });
        Ok(())
    }

    /// Writes the next row of the current project.
    pub fn write_row(&mut self, row: &DeviceRow) -> Result<(), RenderError> {
        let max = self.options.max_rows_per_sheet;
        let Some(open) = self.current.as_mut() else {
            return Err(RenderError::Misuse("write_row before begin_project"));
        };
        if open.written >= open.expected {
            return Err(RenderError::Misuse("more rows than announced"));
        }
        if open.sheet_row == max {
            // Continue on a new tab past Excel's row limit.
            let project = &mut self.report.projects[open.index];
            let part = project.sheets.len() as u32 + 1;
            let remaining = open.expected - open.written;
            let first = project.sheets[0].clone();
            let sheet = self.names.continuation(&first, part);
            self.report.projects[open.index].sheets.push(sheet.clone());
            let constant_memory = open.constant_memory;
            self.add_sheet(&sheet, constant_memory, remaining.min(u64::from(max)))?;
            let open = self
                .current
                .as_mut()
                .ok_or(RenderError::Misuse("project vanished"))?;
            open.sheet_row = 0;
            open.sheet_index = self.workbook.worksheets().len() - 1;
        }
        let open = self
            .current
            .as_mut()
            .ok_or(RenderError::Misuse("project vanished"))?;
        open.sheet_row += 1;
        open.written += 1;
        let (sheet_index, sheet_row, project_index) =
            (open.sheet_index, open.sheet_row, open.index);
        let project_name = self.report.projects[project_index].project.clone();
        let worksheet = self.workbook.worksheet_from_index(sheet_index)?;
        for (column, value) in row.cells().into_iter().enumerate() {
            if value.is_empty() {
                continue;
            }
            match cells::fit(value) {
                cells::Fitted::AsIs => {
                    worksheet.write_string(sheet_row, column as u16, value)?;
                }
                cells::Fitted::Changed { text, problem } => {
                    worksheet.write_string(sheet_row, column as u16, text)?;
                    let warning = RowWarning {
                        project: project_name.clone(),
                        device: row.device_name.clone(),
                        field: COLUMNS[column].into(),
                        message: problem,
                    };
                    self.report.warning_count += 1;
                    if self.report.warnings.len() < breakglass_core::inventory::MAX_LISTED_WARNINGS
                    {
                        self.report.warnings.push(warning);
                    }
                }
            }
        }
        self.report.projects[project_index].rows += 1;
        self.report.rows += 1;
        Ok(())
    }

    /// Fills in the Summary tab and writes the file to `path`.
    pub fn finish(mut self, path: &Path) -> Result<RenderReport, RenderError> {
        self.end_project()?;
        self.write_summary()?;
        self.workbook.save(path)?;
        Ok(self.report)
    }

    fn end_project(&mut self) -> Result<(), RenderError> {
        if let Some(open) = self.current.take()
            && open.written != open.expected
        {
            return Err(RenderError::Misuse("fewer rows than announced"));
        }
        Ok(())
    }

    fn workbook_sheet_count(&mut self) -> usize {
        self.workbook.worksheets().len()
    }

    fn add_sheet(
        &mut self,
        name: &str,
        constant_memory: bool,
        data_rows: u64,
    ) -> Result<(), RenderError> {
        let header = self.header.clone();
        let worksheet: &mut Worksheet = if constant_memory {
            self.workbook.add_worksheet_with_constant_memory()?
        } else {
            self.workbook.add_worksheet()
        };
        worksheet.set_name(name)?;
        for (column, (title, width)) in COLUMNS.iter().zip(WIDTHS).enumerate() {
            worksheet.set_column_width(column as u16, width)?;
            worksheet.write_string_with_format(0, column as u16, *title, &header)?;
        }
        worksheet.set_freeze_panes(1, 0)?;
        let last_row = u32::try_from(data_rows)
            .unwrap_or(EXCEL_MAX_DATA_ROWS)
            .max(1);
        worksheet.autofilter(0, 0, last_row, (COLUMNS.len() - 1) as u16)?;
        Ok(())
    }

    fn write_summary(&mut self) -> Result<(), RenderError> {
        let bold = self.header.clone();
        let options = self.options.clone();
        let report = self.report.clone();
        let collect_warnings = std::mem::take(&mut self.inherited_warnings);
        let total_warnings = self.inherited_warning_count + report.warning_count;
        let sheet = self.workbook.worksheet_from_index(0)?;
        sheet.set_column_width(0, 34.0)?;
        sheet.set_column_width(1, 60.0)?;
        sheet.set_column_width(2, 12.0)?;
        sheet.set_column_width(3, 40.0)?;
        sheet.write_string_with_format(0, 0, "breakglass emergency access backup", &bold)?;
        let facts: [(&str, String); 6] = [
            (
                "Generated at (UTC)",
                options
                    .generated_at
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string(),
            ),
            ("Run id", options.run_id.clone()),
            ("Source", options.source.clone()),
            ("Projects", report.projects.len().to_string()),
            ("Devices (rows)", report.rows.to_string()),
            ("Warnings", total_warnings.to_string()),
        ];
        let mut row = 2u32;
        for (label, value) in facts {
            sheet.write_string_with_format(row, 0, label, &bold)?;
            sheet.write_string(row, 1, value)?;
            row += 1;
        }
        row += 1;
        sheet.write_string_with_format(row, 0, "How to use this file", &bold)?;
        for line in [
            "Each project has its own tab, named after the project (cut or numbered where Excel's tab rules demand).",
            "Rows are sorted by device name (numbers in natural order), then account.",
            "Every value is text exactly as stored in Mavis: copy it, do not retype it.",
            "This file holds live credentials: keep it only as long as the emergency lasts, then delete it.",
            "After the emergency, rotate every password you used from this file.",
        ] {
            sheet.write_string(row, 1, line)?;
            row += 1;
        }
        row += 1;
        for (column, title) in ["Project", "Tabs", "Devices"].iter().enumerate() {
            sheet.write_string_with_format(row, column as u16, *title, &bold)?;
        }
        for project in &report.projects {
            row += 1;
            sheet.write_string(row, 0, cells::fit_lossy(&project.project))?;
            sheet.write_string(row, 1, project.sheets.join(", "))?;
            sheet.write_number(row, 2, project.rows as f64)?;
        }
        if total_warnings > 0 {
            row += 2;
            sheet.write_string_with_format(
                row,
                0,
                "Warnings (the rows are in the workbook; check these values)",
                &bold,
            )?;
            row += 1;
            for (column, title) in ["Project", "Device", "Field", "Problem"].iter().enumerate() {
                sheet.write_string_with_format(row, column as u16, *title, &bold)?;
            }
            for warning in collect_warnings.iter().chain(&report.warnings) {
                row += 1;
                sheet.write_string(row, 0, cells::fit_lossy(&warning.project))?;
                sheet.write_string(row, 1, cells::fit_lossy(&warning.device))?;
                sheet.write_string(row, 2, cells::fit_lossy(&warning.field))?;
                sheet.write_string(row, 3, cells::fit_lossy(&warning.message))?;
            }
            let listed = (collect_warnings.len() + report.warnings.len()) as u64;
            if listed < total_warnings {
                row += 1;
                sheet.write_string(row, 0, format!("... and {} more", total_warnings - listed))?;
            }
        }
        Ok(())
    }
}

/// Renders a whole in-memory inventory (the embedded mode's path).
pub fn render_inventory(
    inventory: &breakglass_core::SortedInventory,
    options: RenderOptions,
    path: &Path,
    mut on_row: impl FnMut(),
) -> Result<RenderReport, RenderError> {
    let mut builder = WorkbookBuilder::new(options)?;
    builder.add_collect_warnings(&inventory.warnings, inventory.warning_count);
    for project in &inventory.projects {
        builder.begin_project(&project.name, project.rows.len() as u64)?;
        for row in &project.rows {
            builder.write_row(row)?;
            on_row();
        }
    }
    builder.finish(path)
}
