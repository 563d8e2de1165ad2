//! Reading a decrypted workbook back with calamine, an independent reader:
//! row counts per tab (for `drill` and `verify`) and the rows of one device
//! (for `show`). Cells are streamed one at a time, so a million-row tab
//! is never held in memory.

use crate::RetrieveError;
use breakglass_core::COLUMNS;
use calamine::{DataRef, Reader, Xlsx, open_workbook};
use std::io::BufReader;
use std::path::Path;

/// The tab that explains the file; it holds no device rows.
pub const SUMMARY_SHEET: &str = breakglass_render::SUMMARY_SHEET;

/// One device row as read back, with the tab it sits on.
#[derive(Clone, PartialEq, Eq)]
pub struct ReadRow {
    /// The tab (a project's name, sanitised for Excel).
    pub sheet: String,
    /// The 12 cells in [`COLUMNS`] order.
    pub cells: [String; 12],
}

impl std::fmt::Debug for ReadRow {
    /// Prints the device and tab only: the row holds passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadRow")
            .field("sheet", &self.sheet)
            .field("device", &self.cells[1])
            .finish_non_exhaustive()
    }
}

impl ReadRow {
    /// The cell under `column` (one of [`COLUMNS`]); empty when unknown.
    pub fn get(&self, column: &str) -> &str {
        COLUMNS
            .iter()
            .position(|c| *c == column)
            .map_or("", |i| self.cells[i].as_str())
    }
}

fn open(path: &Path) -> Result<Xlsx<BufReader<std::fs::File>>, RetrieveError> {
    open_workbook(path).map_err(|err: calamine::XlsxError| RetrieveError::Workbook {
        file: path.display().to_string(),
        reason: err.to_string(),
    })
}

fn text(value: &DataRef<'_>) -> String {
    match value {
        DataRef::String(s) => s.clone(),
        DataRef::SharedString(s) => (*s).to_owned(),
        DataRef::Int(i) => i.to_string(),
        DataRef::Float(f) => f.to_string(),
        DataRef::Bool(b) => b.to_string().to_uppercase(),
        _ => String::new(),
    }
}

/// Calls `visit` with every device row of every project tab, in order.
pub fn for_each_row(path: &Path, mut visit: impl FnMut(&ReadRow)) -> Result<(), RetrieveError> {
    let mut workbook = open(path)?;
    let bad = |err: calamine::XlsxError| RetrieveError::Workbook {
        file: path.display().to_string(),
        reason: err.to_string(),
    };
    for sheet in workbook.sheet_names() {
        if sheet == SUMMARY_SHEET {
            continue;
        }
        let mut cells = workbook.worksheet_cells_reader(&sheet).map_err(bad)?;
        let mut current: Option<(u32, ReadRow)> = None;
        while let Some(cell) = cells.next_cell().map_err(bad)? {
            let (row, column) = cell.get_position();
            if row == 0 {
                continue;
            }
            if current.as_ref().is_some_and(|(r, _)| *r != row)
                && let Some((_, done)) = current.take()
            {
                visit(&done);
            }
            let (_, entry) = current.get_or_insert_with(|| {
                (
                    row,
                    ReadRow {
                        sheet: sheet.clone(),
                        cells: Default::default(),
                    },
                )
            });
            if let Some(slot) = entry.cells.get_mut(column as usize) {
                *slot = text(cell.get_value());
            }
        }
        if let Some((_, done)) = current {
            visit(&done);
        }
    }
    Ok(())
}

/// Data rows per project tab (the header row not counted), in tab order.
pub fn count_rows(path: &Path) -> Result<Vec<(String, u64)>, RetrieveError> {
    let mut workbook = open(path)?;
    let bad = |err: calamine::XlsxError| RetrieveError::Workbook {
        file: path.display().to_string(),
        reason: err.to_string(),
    };
    let mut counts = Vec::new();
    for sheet in workbook.sheet_names() {
        if sheet == SUMMARY_SHEET {
            continue;
        }
        let mut cells = workbook.worksheet_cells_reader(&sheet).map_err(bad)?;
        let mut rows = 0u64;
        let mut last_row = 0u32;
        while let Some(cell) = cells.next_cell().map_err(bad)? {
            let (row, _) = cell.get_position();
            if row > 0 && row != last_row {
                rows += 1;
                last_row = row;
            }
        }
        counts.push((sheet, rows));
    }
    Ok(counts)
}

/// The rows whose device name matches `query`: exact matches (ignoring
/// case) when there are any, else every name that contains it.
pub fn find_device(path: &Path, query: &str) -> Result<Vec<ReadRow>, RetrieveError> {
    let wanted = query.trim().to_lowercase();
    let mut exact = Vec::new();
    let mut partial = Vec::new();
    for_each_row(path, |row| {
        let name = row.cells[1].to_lowercase();
        if name == wanted {
            exact.push(row.clone());
        } else if exact.is_empty() && name.contains(&wanted) {
            partial.push(row.clone());
        }
    })?;
    Ok(if exact.is_empty() { partial } else { exact })
}

#[cfg(test)]
mod tests {
    use super::*;
    use breakglass_core::{DeviceRow, Inventory, Secret};
    use breakglass_render::{EXCEL_MAX_DATA_ROWS, RenderOptions};

    fn render(dir: &Path, max_rows_per_sheet: u32) -> std::path::PathBuf {
        let mut inventory = Inventory::new();
        for (project, device, password) in [
            ("Web", "web-02", "=1+1"),
            ("Web", "web-01", "0012"),
            ("Web", "WEB-01-old", "x"),
            ("DB", "db-01", "p@ss"),
        ] {
            inventory
                .push(
                    project,
                    DeviceRow {
                        device_name: device.into(),
                        protocol: "SSH".into(),
                        port: "22".into(),
                        account: "root".into(),
                        password: Secret::new(password),
                        ..DeviceRow::default()
                    },
                )
                .unwrap();
        }
        let path = dir.join("book.xlsx");
        breakglass_render::render_inventory(
            &inventory.into_sorted().unwrap(),
            RenderOptions {
                run_id: "r".into(),
                generated_at: chrono::Utc::now(),
                source: "test".into(),
                temp_dir: dir.to_path_buf(),
                max_rows_per_sheet: max_rows_per_sheet.min(EXCEL_MAX_DATA_ROWS),
            },
            &path,
            || {},
        )
        .unwrap();
        path
    }

    #[test]
    fn rows_are_counted_per_tab_and_devices_found_exactly_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = render(dir.path(), 2);
        let counts = count_rows(&path).unwrap();
        assert_eq!(
            counts,
            vec![
                ("DB".to_owned(), 1),
                ("Web".to_owned(), 2),
                ("Web ~2".to_owned(), 1)
            ]
        );
        let found = find_device(&path, "WEB-01").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].get("Password"), "0012");
        assert_eq!(found[0].get("Port"), "22");
        let found = find_device(&path, "web").unwrap();
        assert_eq!(found.len(), 3);
        assert!(find_device(&path, "nothing").unwrap().is_empty());
        assert!(!format!("{:?}", found[0]).contains("0012"));
    }
}
