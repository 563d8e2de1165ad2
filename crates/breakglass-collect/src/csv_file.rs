//! A CSV inventory: header exactly [`CSV_HEADER`], one row per device
//! account, UTF-8 (a leading byte-order mark is accepted).
//!
//! A row with the wrong number of fields or a field that is not UTF-8 cannot
//! be mapped to columns safely, so it stops the run with `file:line` and the
//! field. Anything that can still be written (an empty device name, an
//! empty project) becomes a warning instead.

use crate::{CSV_HEADER, CollectError, RowCounter, Source};
use breakglass_core::{DeviceRow, Inventory};
use std::io::Read;
use std::path::PathBuf;

/// The sample inventory compiled into the binary: a few projects (two with
/// Chinese names), dozens of devices. The default of `run-once`.
pub const BUNDLED_SAMPLE: &str = include_str!("../sample/inventory.csv");

/// A CSV inventory, from a file or the bundled sample.
#[derive(Debug, Clone)]
pub struct CsvSource {
    origin: Origin,
}

#[derive(Debug, Clone)]
enum Origin {
    File(PathBuf),
    Bundled,
}

impl CsvSource {
    /// Reads the file at `path`.
    pub fn file(path: PathBuf) -> Self {
        Self {
            origin: Origin::File(path),
        }
    }

    /// Reads the bundled sample.
    pub fn bundled_sample() -> Self {
        Self {
            origin: Origin::Bundled,
        }
    }

    fn name(&self) -> String {
        match &self.origin {
            Origin::File(path) => path.display().to_string(),
            Origin::Bundled => "bundled-sample.csv".into(),
        }
    }
}

impl Source for CsvSource {
    fn describe(&self) -> String {
        match &self.origin {
            Origin::File(path) => format!("CSV {}", path.display()),
            Origin::Bundled => "bundled sample inventory".into(),
        }
    }

    async fn collect_into(
        &self,
        inventory: Inventory,
        counter: &RowCounter,
    ) -> Result<Inventory, CollectError> {
        let source = self.clone();
        let counter = counter.clone();
        // csv is a blocking reader; keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            let name = source.name();
            match &source.origin {
                Origin::Bundled => {
                    read_csv_into(BUNDLED_SAMPLE.as_bytes(), &name, &counter, inventory)
                }
                Origin::File(path) => {
                    let file = std::fs::File::open(path).map_err(|err| CollectError::Io {
                        path: name.clone(),
                        reason: err.to_string(),
                    })?;
                    read_csv_into(
                        std::io::BufReader::with_capacity(1 << 16, file),
                        &name,
                        &counter,
                        inventory,
                    )
                }
            }
        })
        .await
        .map_err(|err| CollectError::Io {
            path: self.name(),
            reason: format!("reader task failed: {err}"),
        })?
    }
}

/// Reads CSV text into an inventory; `name` labels errors (`name:line`).
pub fn read_csv(
    reader: impl Read,
    name: &str,
    counter: &RowCounter,
) -> Result<Inventory, CollectError> {
    read_csv_into(reader, name, counter, Inventory::new())
}

/// Reads CSV text into `inventory`, as [`read_csv`] does.
pub fn read_csv_into(
    reader: impl Read,
    name: &str,
    counter: &RowCounter,
    mut inventory: Inventory,
) -> Result<Inventory, CollectError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(reader);
    let mut record = csv::ByteRecord::new();
    let read_error = |err: csv::Error| match err.kind() {
        csv::ErrorKind::Io(io) => CollectError::Io {
            path: name.into(),
            reason: io.to_string(),
        },
        _ => CollectError::Row {
            location: format!("{name}:{}", err.position().map_or(0, |p| p.line())),
            field: "row".into(),
            rule: "is not valid CSV".into(),
        },
    };
    if !csv.read_byte_record(&mut record).map_err(read_error)? {
        return Err(CollectError::Header {
            location: format!("{name}:1"),
            rule: "the file is empty; the first line must be the header".into(),
        });
    }
    check_header(&record, name)?;
    while csv.read_byte_record(&mut record).map_err(read_error)? {
        let line = record.position().map_or(0, |p| p.line());
        let location = || format!("{name}:{line}");
        if record.len() == 1 && record.get(0).is_some_and(<[u8]>::is_empty) {
            continue; // a blank line
        }
        if record.len() != CSV_HEADER.len() {
            return Err(CollectError::Row {
                location: location(),
                field: "row".into(),
                rule: format!(
                    "expected {} fields, found {}",
                    CSV_HEADER.len(),
                    record.len()
                ),
            });
        }
        let mut fields: [String; 13] = Default::default();
        for (index, slot) in fields.iter_mut().enumerate() {
            let bytes = record.get(index).unwrap_or_default();
            *slot = String::from_utf8(bytes.to_vec()).map_err(|_| CollectError::Row {
                location: location(),
                field: CSV_HEADER[index].into(),
                rule: "is not valid UTF-8 (save the file as UTF-8)".into(),
            })?;
        }
        let [project, cells @ ..] = fields;
        inventory
            .push(&project, DeviceRow::from_cells(cells))
            .map_err(|err| CollectError::Io {
                path: name.into(),
                reason: format!("sorting needs temp space: {err}"),
            })?;
        counter.add();
    }
    Ok(inventory)
}

fn check_header(record: &csv::ByteRecord, name: &str) -> Result<(), CollectError> {
    let found: Vec<String> = record
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let text = String::from_utf8_lossy(field);
            if i == 0 {
                text.trim_start_matches('\u{feff}').to_string()
            } else {
                text.into_owned()
            }
        })
        .collect();
    let expected = CSV_HEADER.join(",");
    for (index, want) in CSV_HEADER.iter().enumerate() {
        match found.get(index) {
            Some(got) if got == want => {}
            Some(got) => {
                return Err(CollectError::Header {
                    location: format!("{name}:1"),
                    rule: format!(
                        "column {} is {got:?}, expected {want:?} (the header must be exactly: {expected})",
                        index + 1
                    ),
                });
            }
            None => {
                return Err(CollectError::Header {
                    location: format!("{name}:1"),
                    rule: format!(
                        "column {} {want:?} is missing (the header must be exactly: {expected})",
                        index + 1
                    ),
                });
            }
        }
    }
    if found.len() > CSV_HEADER.len() {
        return Err(CollectError::Header {
            location: format!("{name}:1"),
            rule: format!(
                "has {} columns, expected {} (the header must be exactly: {expected})",
                found.len(),
                CSV_HEADER.len()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Project,Provider,Device name,Protocol,Public IP address,Private IP address,URL,Port,Access type,Account,Password,PEM file name,Extra credential\n";

    fn read(text: &[u8]) -> Result<Inventory, CollectError> {
        read_csv(text, "inv.csv", &RowCounter::new())
    }

    #[test]
    fn the_bundled_sample_reads_cleanly() {
        let counter = RowCounter::new();
        let inventory = read_csv(BUNDLED_SAMPLE.as_bytes(), "sample", &counter).unwrap();
        assert!(inventory.row_count() >= 24);
        assert_eq!(counter.get(), inventory.row_count());
        assert_eq!(inventory.warning_count(), 0);
        let sorted = inventory.into_sorted().unwrap();
        assert!(sorted.projects.len() >= 3);
        assert!(sorted.projects.iter().any(|p| {
            p.name
                .chars()
                .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
        }));
    }

    #[test]
    fn values_are_kept_exactly() {
        let text = format!("{HEADER}P,AWS,web-1,SSH,,,,0022,password,root,\"=1+1,\nx\",,TRUE\n");
        let sorted = read(text.as_bytes()).unwrap().into_sorted().unwrap();
        let row = &sorted.projects[0].rows[0];
        assert_eq!(row.port, "0022");
        assert_eq!(row.password.expose(), "=1+1,\nx");
        assert_eq!(row.extra_credential.expose(), "TRUE");
    }

    #[test]
    fn a_wrong_header_names_the_column() {
        let err = read(b"Project,Vendor\n").unwrap_err().to_string();
        assert!(err.starts_with("inv.csv:1: inventory header is wrong: column 2 is \"Vendor\", expected \"Provider\""), "{err}");
        let err = read(b"").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn a_short_row_names_file_and_line() {
        let text = format!("{HEADER}P,AWS,web-1,SSH,,,,22,password,root,pw,,\nP,AWS,web-2\n");
        let err = read(text.as_bytes()).unwrap_err().to_string();
        assert_eq!(err, "inv.csv:3: field \"row\": expected 13 fields, found 3");
    }

    #[test]
    fn invalid_utf8_names_the_field() {
        let mut text = HEADER.as_bytes().to_vec();
        text.extend_from_slice(b"P,AWS,web-1,SSH,,,,22,password,root,\xff\xfe,,\n");
        let err = read(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "inv.csv:2: field \"Password\": is not valid UTF-8 (save the file as UTF-8)"
        );
    }

    #[test]
    fn a_byte_order_mark_is_accepted() {
        let text = format!("\u{feff}{HEADER}P,AWS,web-1,SSH,,,,22,password,root,pw,,\n");
        assert_eq!(read(text.as_bytes()).unwrap().row_count(), 1);
    }

    #[tokio::test]
    async fn a_missing_file_is_one_clear_error() {
        let source = CsvSource::file("/nonexistent/inv.csv".into());
        let err = source
            .collect(&RowCounter::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/nonexistent/inv.csv: cannot read inventory file:"),
            "{err}"
        );
    }
}
