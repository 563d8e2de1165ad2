//! The hand-written writer cannot drift from what Excel expects without this
//! failing: the same small workbook is written by rust_xlsxwriter (the
//! reference writer, constant-memory mode, which like ours writes every text
//! cell as an inline string) and by breakglass, and each device sheet's
//! cells are compared as XML: reference, type, and the exact `<is>` markup
//! (escapes of `& < >`, control characters as `_xHHHH_`, a literal
//! `_xHHHH_`, `xml:space="preserve"` on padded text). Style indexes differ
//! between the two (each numbers its own formats) and are not compared.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_core::{COLUMNS, DeviceRow, Inventory, Secret};
use breakglass_render::{RenderOptions, render_inventory};
use quick_xml::events::Event;
use std::io::Read;
use std::path::Path;

/// Values that exercise every escaping rule.
const HOSTILE: [&str; 14] = [
    "plain",
    "=1+1",
    "a & b < c > d",
    "\"quoted\" 'single'",
    "0012",
    "tab\there",
    "line\nfeed",
    "carriage\rreturn",
    "ctrl\u{1}\u{1f}chars",
    "_x0041_ literal escape",
    "  padded  ",
    "emoji 🔐 and ümlaut",
    "\u{fffe} noncharacter",
    "trailing space ",
];

fn device(i: usize, value: &str) -> DeviceRow {
    DeviceRow {
        provider: "AWS".into(),
        device_name: format!("host-{i:02}"),
        protocol: "SSH".into(),
        public_ip: "203.0.113.9".into(),
        private_ip: String::new(),
        url: value.into(),
        port: "0022".into(),
        access_type: "password".into(),
        account: value.into(),
        password: Secret::new(value),
        pem_file_name: String::new(),
        extra_credential: Secret::new(value),
    }
}

/// One cell as the comparison sees it.
#[derive(Debug, PartialEq, Eq)]
struct Cell {
    reference: String,
    kind: Option<String>,
    /// The cell's inner XML, exactly as written.
    inner: String,
}

/// The cells of one sheet's XML, in order.
fn cells(xml: &str) -> Vec<Cell> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut found = Vec::new();
    loop {
        match reader.read_event().unwrap() {
            Event::Start(start) if start.name().as_ref() == b"c" => {
                let attribute = |name: &[u8]| {
                    start
                        .attributes()
                        .map(Result::unwrap)
                        .find(|a| a.key.as_ref() == name)
                        .map(|a| String::from_utf8(a.value.to_vec()).unwrap())
                };
                let reference = attribute(b"r").unwrap();
                let kind = attribute(b"t");
                let begin = reader.buffer_position() as usize;
                let end_tag = reader.read_to_end(start.name()).unwrap();
                let inner = xml[begin..end_tag.start as usize].to_owned();
                found.push(Cell {
                    reference,
                    kind,
                    inner,
                });
            }
            Event::Eof => return found,
            _ => {}
        }
    }
}

/// The XML of the first worksheet part that holds `marker`.
fn sheet_holding(path: &Path, marker: &str) -> String {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().unwrap().into_owned())
        .filter(|n| n.starts_with("xl/worksheets/") && n.ends_with(".xml"))
        .collect();
    for name in names {
        let mut xml = String::new();
        zip.by_name(&name)
            .unwrap()
            .read_to_string(&mut xml)
            .unwrap();
        if xml.contains(marker) {
            return xml;
        }
    }
    panic!("no worksheet of {} holds {marker}", path.display());
}

#[test]
fn device_sheet_cells_match_rust_xlsxwriter_byte_for_byte() {
    let rows: Vec<DeviceRow> = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, value)| device(i, value))
        .collect();
    let dir = tempfile::tempdir().unwrap();

    // breakglass.
    let mut inventory = Inventory::new();
    for row in &rows {
        inventory.push("Compat", row.clone()).unwrap();
    }
    let ours = dir.path().join("ours.xlsx");
    render_inventory(
        &inventory.into_sorted().unwrap(),
        RenderOptions {
            run_id: "compat".into(),
            generated_at: chrono::Utc::now(),
            source: "test".into(),
            temp_dir: dir.path().to_path_buf(),
            max_rows_per_sheet: 1_048_575,
        },
        &ours,
        || {},
    )
    .unwrap();

    // rust_xlsxwriter, constant memory: the header, then each row's
    // non-empty cells as strings (breakglass leaves empty cells out).
    let reference = dir.path().join("reference.xlsx");
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let sheet = workbook.add_worksheet_with_constant_memory().unwrap();
    sheet.set_name("Compat").unwrap();
    for (column, name) in COLUMNS.iter().enumerate() {
        sheet.write_string(0, column as u16, *name).unwrap();
    }
    for (i, row) in rows.iter().enumerate() {
        for (column, value) in row.cells().into_iter().enumerate() {
            if !value.is_empty() {
                sheet
                    .write_string(i as u32 + 1, column as u16, value)
                    .unwrap();
            }
        }
    }
    workbook.save(&reference).unwrap();

    let ours = cells(&sheet_holding(&ours, "203.0.113.9"));
    let theirs = cells(&sheet_holding(&reference, "203.0.113.9"));
    assert_eq!(ours.len(), theirs.len(), "cell count");
    assert!(ours.len() > COLUMNS.len() * 2, "the sheet has its rows");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a, b, "breakglass (left) and rust_xlsxwriter (right) differ");
    }
}
