//! Writes the break-glass workbook: a `Summary` tab, then one tab per
//! project with the 12 columns, rows in workbook order.
//!
//! # Layout
//! - [`WorkbookBuilder`]: the streaming writer. Callers announce each
//!   project with its row count, then hand over its rows in order; each
//!   tab is written completely, straight into the compressed file, before
//!   the next begins, so memory stays flat and no file is opened per tab.
//! - [`sheet_names`]: Excel's sheet-name rules, applied deterministically.
//! - [`cells`]: what a value may hold in a cell (length, characters).
//! - `xlsx` (private): the minimal SpreadsheetML package writer underneath.
//!
//! Every inventory value is written as a string cell: `=1+1`, `0012`,
//! `TRUE` and `1E5` stay exactly as typed (invariant 7). This crate knows
//! nothing of NATS or storage; it writes one file into a folder the caller
//! keeps private.
#![warn(missing_docs)]

pub mod agile;
pub mod cells;
mod coalesce;
pub mod encrypt;
pub mod sheet_names;
pub mod workdir;
mod xlsx;

use breakglass_core::{COLUMNS, DeviceRow, RowWarning};
use chrono::{DateTime, Utc};
use coalesce::Coalescing;
use sheet_names::SheetNames;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use xlsx::{Package, Placement, SheetSetup, Style};

/// Excel's last row index is 1,048,575; with the header row that leaves
/// this many data rows per sheet.
pub const EXCEL_MAX_DATA_ROWS: u32 = 1_048_575;

/// Column widths, in Excel character units, in [`COLUMNS`] order.
const WIDTHS: [f64; 12] = [
    14.0, 28.0, 11.0, 17.0, 17.0, 34.0, 7.0, 13.0, 18.0, 24.0, 20.0, 24.0,
];

/// Column widths of the Summary tab.
const SUMMARY_WIDTHS: [f64; 4] = [34.0, 60.0, 12.0, 40.0];

/// Buffer between the compressor and the file: the bytes held back before
/// a write, inside which each part's local header is patched in memory
/// ([`Coalescing`]), not by a flush and seeks on the file.
const FILE_BUFFER: usize = 256 * 1024;

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
    /// Folder the workbook is streamed into while it is written: one
    /// unnamed file (`O_TMPFILE`, or unlinked at once where that is not
    /// supported), so the plain workbook never has a name another process
    /// could open and nothing is left on disk by a crash. Must be private
    /// to this process.
    pub temp_dir: PathBuf,
    /// Data rows per sheet before a continuation tab; Excel's limit unless a
    /// test wants to see continuation without a million rows. Values
    /// outside `1..=`[`EXCEL_MAX_DATA_ROWS`] are taken as the nearest bound.
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
    /// Writing the file failed (disk full, no such folder...).
    #[error("writing the workbook failed: {0}")]
    Xlsx(String),
    /// The caller broke the protocol (rows without a project, more rows
    /// than announced); a bug, not bad input.
    #[error("workbook writer misused: {0}")]
    Misuse(&'static str),
}

impl RenderError {
    fn io(action: &str, err: impl std::fmt::Display) -> Self {
        Self::Xlsx(format!("{action}: {err}"))
    }
}

impl From<std::io::Error> for RenderError {
    fn from(err: std::io::Error) -> Self {
        Self::Xlsx(err.to_string())
    }
}

/// The project currently being written.
struct OpenProject {
    index: usize,
    expected: u64,
    written: u64,
    /// Data rows on the current sheet (1 = first data row, on row 2).
    sheet_row: u32,
    /// The project's `sheet` span: one per project (not per row), closed
    /// when the project's last tab ends; counts only, never a cell value.
    span: tracing::Span,
}

/// Streams projects and rows into one workbook file.
///
/// Tabs are written one after another as the rows arrive; the Summary tab,
/// which needs the totals, is written last but listed first.
pub struct WorkbookBuilder {
    /// Writes into an unnamed file in [`RenderOptions::temp_dir`].
    package: Package<Coalescing<File>>,
    options: RenderOptions,
    max_rows: u32,
    /// Sheet XML after which a project goes on in a continuation tab.
    sheet_bytes_limit: u64,
    names: SheetNames,
    summary_name: String,
    report: RenderReport,
    current: Option<OpenProject>,
    /// Warnings handed in by the caller (from collecting), for the Summary.
    inherited_warnings: Vec<RowWarning>,
    inherited_warning_count: u64,
}

impl WorkbookBuilder {
    /// Starts a workbook in [`RenderOptions::temp_dir`]; the Summary tab's
    /// name is reserved now, and the tab is written by
    /// [`WorkbookBuilder::finish`] (but listed first).
    pub fn new(options: RenderOptions) -> Result<Self, RenderError> {
        let file = tempfile::tempfile_in(&options.temp_dir).map_err(|err| {
            RenderError::io(
                &format!("creating a file in {}", options.temp_dir.display()),
                err,
            )
        })?;
        let out = Coalescing::with_limit(file, FILE_BUFFER)
            .map_err(|err| RenderError::io("starting the workbook file", err))?;
        let package = Package::new(out, options.generated_at)?;
        let mut names = SheetNames::new();
        let summary_name = names.reserve(SUMMARY_SHEET);
        Ok(Self {
            package,
            max_rows: options.max_rows_per_sheet.clamp(1, EXCEL_MAX_DATA_ROWS),
            sheet_bytes_limit: xlsx::SHEET_PART_LIMIT,
            options,
            names,
            summary_name,
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
    /// will follow; past [`RenderOptions::max_rows_per_sheet`] (or should a
    /// tab's XML near 4 GiB) they continue on further tabs.
    ///
    /// Each project is traced as one `sheet` span (`project`, `rows`, and
    /// `tabs` once it ends) that lasts until the next project or
    /// [`WorkbookBuilder::finish`]; rows are not traced one by one.
    pub fn begin_project(&mut self, name: &str, rows: u64) -> Result<(), RenderError> {
        self.end_project()?;
        let span = tracing::info_span!(
            "sheet",
            project = %name,
            rows,
            tabs = tracing::field::Empty,
        );
        let sheet = self.names.allocate(name);
        self.start_data_sheet(&sheet)?;
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
            span,
        });
        Ok(())
    }

    /// Writes the next row of the current project.
    pub fn write_row(&mut self, row: &DeviceRow) -> Result<(), RenderError> {
        let Some(open) = self.current.as_mut() else {
            return Err(RenderError::Misuse("write_row before begin_project"));
        };
        if open.written >= open.expected {
            return Err(RenderError::Misuse("more rows than announced"));
        }
        let index = open.index;
        if open.sheet_row == self.max_rows || self.package.sheet_bytes() >= self.sheet_bytes_limit {
            // Continue on a new tab past Excel's row limit, or before the
            // sheet's XML could reach 4 GiB (huge values in a huge project).
            open.sheet_row = 0;
            let project = &mut self.report.projects[index];
            let part = u32::try_from(project.sheets.len() + 1).unwrap_or(u32::MAX);
            let sheet = self.names.continuation(&project.sheets[0], part);
            project.sheets.push(sheet.clone());
            self.package.end_sheet()?;
            self.start_data_sheet(&sheet)?;
        }
        let open = self
            .current
            .as_mut()
            .ok_or(RenderError::Misuse("project vanished"))?;
        open.sheet_row += 1;
        open.written += 1;
        // Row 1 is the header; max_rows <= EXCEL_MAX_DATA_ROWS keeps this
        // within Excel's last row.
        self.package.start_row(open.sheet_row + 1)?;
        for (column, value) in (1u16..).zip(row.cells()) {
            if value.is_empty() {
                continue;
            }
            match cells::fit(value) {
                cells::Fitted::AsIs => self.package.text_cell(column, value, Style::Normal)?,
                cells::Fitted::Changed { text, problem } => {
                    self.package.text_cell(column, &text, Style::Normal)?;
                    self.report.warning_count += 1;
                    if self.report.warnings.len() < breakglass_core::inventory::MAX_LISTED_WARNINGS
                    {
                        self.report.warnings.push(RowWarning {
                            project: self.report.projects[index].project.clone(),
                            device: row.device_name.clone(),
                            field: COLUMNS[usize::from(column) - 1].into(),
                            message: problem,
                        });
                    }
                }
            }
        }
        self.package.end_row()?;
        self.report.projects[index].rows += 1;
        self.report.rows += 1;
        Ok(())
    }

    /// Writes the Summary tab and the workbook's index, and copies the
    /// workbook to `path` (replacing what is there, `0600`): for callers
    /// that want the plain file named (tests, `encryption: none` callers
    /// that keep it). The services and `run-once` use
    /// [`WorkbookBuilder::finish_unnamed`] instead.
    pub fn finish(self, path: &Path) -> Result<RenderReport, RenderError> {
        let (report, mut file) = self.finish_unnamed()?;
        let mut out = breakglass_core::private_fs::create_or_truncate(path)
            .map_err(|err| RenderError::io(&format!("creating {}", path.display()), err))?;
        std::io::copy(&mut file, &mut out)
            .and_then(|_| out.sync_all())
            .map_err(|err| RenderError::io(&format!("writing {}", path.display()), err))?;
        Ok(report)
    }

    /// Writes the Summary tab and the workbook's index, and hands back the
    /// workbook as the unnamed file it was written to, positioned at its
    /// start: it disappears when the file is closed, whatever happens.
    pub fn finish_unnamed(mut self) -> Result<(RenderReport, File), RenderError> {
        use std::io::Seek;
        self.end_project()?;
        self.write_summary()?;
        let out = self.package.finish()?;
        let mut file = out
            .into_inner()
            .map_err(|err| RenderError::io("finishing the workbook", err))?;
        file.rewind()?;
        Ok((self.report, file))
    }

    /// Checks the open project got all its rows and ends its last tab.
    fn end_project(&mut self) -> Result<(), RenderError> {
        if let Some(open) = self.current.take() {
            if open.written != open.expected {
                return Err(RenderError::Misuse("fewer rows than announced"));
            }
            let _entered = open.span.enter();
            self.package.end_sheet()?;
            open.span
                .record("tabs", self.report.projects[open.index].sheets.len() as u64);
        }
        Ok(())
    }

    /// Starts a project tab: widths, frozen bold header, autofilter.
    fn start_data_sheet(&mut self, name: &str) -> Result<(), RenderError> {
        self.package.start_sheet(
            name,
            &SheetSetup {
                widths: &WIDTHS,
                freeze_header: true,
                filter_columns: Some(COLUMNS.len() as u16),
                selected: false,
                placement: Placement::Next,
            },
        )?;
        self.package.start_row(1)?;
        for (column, title) in (1u16..).zip(COLUMNS) {
            self.package.text_cell(column, title, Style::Bold)?;
        }
        self.package.end_row()?;
        Ok(())
    }

    /// Writes the Summary tab (listed first): facts, how to use the file,
    /// the projects and their tabs, and the warnings.
    fn write_summary(&mut self) -> Result<(), RenderError> {
        let options = &self.options;
        let report = &self.report;
        let collect_warnings = &self.inherited_warnings;
        let total_warnings = self.inherited_warning_count + report.warning_count;
        let sheet = &mut self.package;
        sheet.start_sheet(
            &self.summary_name,
            &SheetSetup {
                widths: &SUMMARY_WIDTHS,
                freeze_header: false,
                filter_columns: None,
                selected: true,
                placement: Placement::First,
            },
        )?;
        let mut row = 1u32;
        text_row(
            sheet,
            row,
            &[("breakglass emergency access backup", Style::Bold)],
        )?;
        let facts: [(&str, String); 6] = [
            (
                "Generated at (UTC)",
                options
                    .generated_at
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string(),
            ),
            ("Run id", cells::fit_lossy(&options.run_id)),
            ("Source", cells::fit_lossy(&options.source)),
            ("Projects", report.projects.len().to_string()),
            ("Devices (rows)", report.rows.to_string()),
            ("Warnings", total_warnings.to_string()),
        ];
        row += 1;
        for (label, value) in &facts {
            row += 1;
            text_row(sheet, row, &[(label, Style::Bold), (value, Style::Normal)])?;
        }
        row += 2;
        let how_to = [
            "Each project has its own tab, named after the project (cut or numbered where Excel's tab rules demand).",
            "Rows are sorted by device name (numbers in natural order), then account.",
            "Every value is text exactly as stored in Mavis: copy it, do not retype it.",
            "This file holds live credentials: keep it only as long as the emergency lasts, then delete it.",
            "After the emergency, rotate every password you used from this file.",
        ];
        // The heading shares its row with the first line.
        text_row(
            sheet,
            row,
            &[
                ("How to use this file", Style::Bold),
                (how_to[0], Style::Normal),
            ],
        )?;
        for line in &how_to[1..] {
            row += 1;
            sheet.start_row(row)?;
            sheet.text_cell(2, line, Style::Normal)?;
            sheet.end_row()?;
        }
        row += 2;
        text_row(
            sheet,
            row,
            &[
                ("Project", Style::Bold),
                ("Tabs", Style::Bold),
                ("Devices", Style::Bold),
            ],
        )?;
        for project in &report.projects {
            row += 1;
            sheet.start_row(row)?;
            sheet.text_cell(1, &cells::fit_lossy(&project.project), Style::Normal)?;
            sheet.text_cell(
                2,
                &cells::fit_lossy(&project.sheets.join(", ")),
                Style::Normal,
            )?;
            sheet.number_cell(3, project.rows, Style::Normal)?;
            sheet.end_row()?;
        }
        if total_warnings > 0 {
            row += 2;
            text_row(
                sheet,
                row,
                &[(
                    "Warnings (the rows are in the workbook; check these values)",
                    Style::Bold,
                )],
            )?;
            row += 1;
            text_row(
                sheet,
                row,
                &[
                    ("Project", Style::Bold),
                    ("Device", Style::Bold),
                    ("Field", Style::Bold),
                    ("Problem", Style::Bold),
                ],
            )?;
            for warning in collect_warnings.iter().chain(&report.warnings) {
                row += 1;
                let values = [
                    cells::fit_lossy(&warning.project),
                    cells::fit_lossy(&warning.device),
                    cells::fit_lossy(&warning.field),
                    cells::fit_lossy(&warning.message),
                ];
                sheet.start_row(row)?;
                for (column, value) in (1u16..).zip(&values) {
                    if !value.is_empty() {
                        sheet.text_cell(column, value, Style::Normal)?;
                    }
                }
                sheet.end_row()?;
            }
            let listed = (collect_warnings.len() + report.warnings.len()) as u64;
            if listed < total_warnings {
                row += 1;
                let more = format!("... and {} more", total_warnings - listed);
                text_row(sheet, row, &[(&more, Style::Normal)])?;
            }
        }
        sheet.end_sheet()?;
        Ok(())
    }
}

/// Writes `cells` from column A on as row `row` (empty ones left blank).
fn text_row<W: Write + std::io::Seek + Send + 'static>(
    package: &mut Package<W>,
    row: u32,
    cells: &[(&str, Style)],
) -> Result<(), RenderError> {
    package.start_row(row)?;
    for (column, (text, style)) in (1u16..).zip(cells) {
        if !text.is_empty() {
            package.text_cell(column, text, *style)?;
        }
    }
    package.end_row()?;
    Ok(())
}

/// Moves the finished workbook from the temp folder to `path`: a rename
/// when both are on one file system, else a copy into a new `0600` file.
/// Renders an inventory streaming in workbook order (the embedded mode's
/// path): rows go from the sorted runs straight into an unnamed file, which
/// is handed back positioned at its start (see
/// [`WorkbookBuilder::finish_unnamed`]).
pub fn render_stream(
    rows: breakglass_core::SortedRows,
    options: RenderOptions,
    mut on_row: impl FnMut(),
) -> Result<(RenderReport, File), RenderError> {
    let mut builder = WorkbookBuilder::new(options)?;
    builder.add_collect_warnings(&rows.warnings, rows.warning_count);
    for item in rows.stream {
        match item.map_err(|err| RenderError::io("reading the sorted inventory", err))? {
            breakglass_core::SortedItem::Project { name, rows } => {
                builder.begin_project(&name, rows)?
            }
            breakglass_core::SortedItem::Row(row) => {
                builder.write_row(&row)?;
                on_row();
            }
        }
    }
    builder.finish_unnamed()
}

/// Renders a whole in-memory inventory (small inventories and tests).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use breakglass_core::Secret;
    use calamine::{Data, Reader, Xlsx, open_workbook};

    #[test]
    fn a_sheet_near_the_part_size_limit_continues_on_another_tab() {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = WorkbookBuilder::new(RenderOptions {
            run_id: "run".into(),
            generated_at: Utc::now(),
            source: "test".into(),
            temp_dir: dir.path().to_path_buf(),
            max_rows_per_sheet: EXCEL_MAX_DATA_ROWS,
        })
        .unwrap();
        // Stand-in for 4 GiB: a few rows' worth of XML.
        builder.sheet_bytes_limit = 3_000;
        builder.begin_project("big", 20).unwrap();
        for i in 0..20 {
            builder
                .write_row(&DeviceRow {
                    device_name: format!("host-{i:02}"),
                    password: Secret::new("x".repeat(200)),
                    ..DeviceRow::default()
                })
                .unwrap();
        }
        let path = dir.path().join("out.xlsx");
        let report = builder.finish(&path).unwrap();
        let sheets = &report.projects[0].sheets;
        assert!(sheets.len() > 2, "{sheets:?}");
        assert_eq!(sheets[1], "big ~2");

        let mut workbook: Xlsx<_> = open_workbook(&path).unwrap();
        let mut devices = Vec::new();
        for sheet in sheets {
            let range = workbook.worksheet_range(sheet).unwrap();
            let rows: Vec<_> = range.rows().collect();
            assert_eq!(rows[0][0], Data::String("Provider".into()));
            devices.extend(rows[1..].iter().map(|r| r[1].to_string()));
        }
        let expected: Vec<String> = (0..20).map(|i| format!("host-{i:02}")).collect();
        assert_eq!(devices, expected);
    }
}
