//! An outside check: openpyxl (the common Python reader) loads a rendered
//! workbook and reports what it sees — tab names, header, values, the
//! frozen pane and the autofilter. Runs when `BREAKGLASS_OPENPYXL` names a
//! Python interpreter with openpyxl installed, e.g.
//! `python3 -m venv target/pyvenv && target/pyvenv/bin/pip install openpyxl`
//! then `BREAKGLASS_OPENPYXL=$PWD/target/pyvenv/bin/python`; otherwise it
//! says so and passes.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_core::{COLUMNS, DeviceRow, Inventory, Secret};
use breakglass_render::{RenderOptions, SUMMARY_SHEET, render_inventory};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// Prints, hex-encoded so any text survives: the sheet names, then per
/// sheet its title, freeze pane, autofilter range and every row.
const SCRIPT: &str = r#"
import sys, openpyxl
def h(s): return s.encode("utf-8").hex() if s else "-"
def cell(v):
    if v is None: return "e"
    if isinstance(v, str): return "s" + h(v)
    return "n" + str(v)
wb = openpyxl.load_workbook(sys.argv[1])
print("sheets", *[h(n) for n in wb.sheetnames])
for ws in wb.worksheets:
    print("sheet", h(ws.title), h(ws.freeze_panes), h(ws.auto_filter.ref))
    for row in ws.iter_rows(values_only=True):
        print("row", *[cell(v) for v in row])
"#;

fn unhex(text: &str) -> String {
    if text == "-" {
        return String::new();
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

/// What openpyxl saw in one sheet.
#[derive(Debug, Default)]
struct Seen {
    freeze_panes: String,
    auto_filter: String,
    /// Cells as `s<text>` (text), `n<number>` or empty.
    rows: Vec<Vec<String>>,
}

fn row(device: &str, password: &str) -> DeviceRow {
    DeviceRow {
        provider: "AWS".into(),
        device_name: device.into(),
        protocol: "SSH".into(),
        public_ip: "203.0.113.9".into(),
        private_ip: "10.0.0.9".into(),
        url: String::new(),
        port: "0022".into(),
        access_type: "password".into(),
        account: "root".into(),
        password: Secret::new(password),
        pem_file_name: String::new(),
        extra_credential: Secret::new("TRUE"),
    }
}

fn read_with_openpyxl(python: &str, path: &Path) -> (Vec<String>, HashMap<String, Seen>) {
    let output = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openpyxl failed to load the workbook: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut names = Vec::new();
    let mut sheets: HashMap<String, Seen> = HashMap::new();
    let mut current = String::new();
    for line in stdout.lines() {
        let mut fields = line.split(' ');
        match fields.next() {
            Some("sheets") => names = fields.map(unhex).collect(),
            Some("sheet") => {
                let fields: Vec<String> = fields.map(unhex).collect();
                current = fields[0].clone();
                sheets.insert(
                    current.clone(),
                    Seen {
                        freeze_panes: fields[1].clone(),
                        auto_filter: fields[2].clone(),
                        rows: Vec::new(),
                    },
                );
            }
            Some("row") => {
                let cells = fields
                    .map(|f| match f.split_at(1) {
                        ("s", hex) => format!("s{}", unhex(hex)),
                        ("e", _) => String::new(),
                        (_, _) => f.to_string(),
                    })
                    .collect();
                sheets.get_mut(&current).unwrap().rows.push(cells);
            }
            _ => panic!("unexpected line from the script: {line}"),
        }
    }
    (names, sheets)
}

#[test]
fn openpyxl_reads_tabs_values_frozen_header_and_autofilter() {
    let Ok(python) = std::env::var("BREAKGLASS_OPENPYXL") else {
        eprintln!("not checked: set BREAKGLASS_OPENPYXL to a Python with openpyxl");
        return;
    };
    // Not here: control characters and a literal `_x0041_`. openpyxl does
    // not decode Excel's `_xHHHH_` escapes in inline strings (it shows
    // `ctrl_x0001_char`, `_x005F_x0041_`); Excel, LibreOffice and calamine
    // do, and tests/workbook.rs checks them with calamine.
    let hostile = ["=1+1", "0012", "1E5", "emoji 🔐🙂", "a & <b>", "  padded  "];
    let mut inventory = Inventory::new();
    for (i, password) in hostile.iter().enumerate() {
        inventory
            .push("Ops/DB", row(&format!("db-{i}"), password))
            .unwrap();
    }
    for i in 0..5 {
        inventory
            .push("財務 'core' 系統", row(&format!("web-{i}"), "pw"))
            .unwrap();
    }
    let sorted = inventory.into_sorted().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.xlsx");
    let options = RenderOptions {
        run_id: "run-openpyxl".into(),
        generated_at: chrono::Utc::now(),
        source: "test".into(),
        temp_dir: dir.path().to_path_buf(),
        max_rows_per_sheet: 3,
    };
    let report = render_inventory(&sorted, options, &path, || {}).unwrap();

    let (names, sheets) = read_with_openpyxl(&python, &path);
    let expected_names: Vec<String> = std::iter::once(SUMMARY_SHEET.to_string())
        .chain(report.projects.iter().flat_map(|p| p.sheets.clone()))
        .collect();
    assert_eq!(names, expected_names);
    assert_eq!(
        names,
        [
            "Summary",
            "Ops_DB",
            "Ops_DB ~2",
            "財務 'core' 系統",
            "財務 'core' 系統 ~2"
        ]
    );

    let summary = &sheets[SUMMARY_SHEET];
    assert_eq!(summary.freeze_panes, "", "the Summary scrolls freely");
    assert_eq!(summary.auto_filter, "");
    assert!(
        summary
            .rows
            .iter()
            .any(|r| r.first().map(String::as_str) == Some("sRun id")
                && r.get(1).map(String::as_str) == Some("srun-openpyxl")),
        "{:?}",
        summary.rows
    );
    assert!(
        summary
            .rows
            .iter()
            .any(|r| r.len() >= 3 && r[0] == "sOps/DB" && r[2] == "n6"),
        "device counts are numbers: {:?}",
        summary.rows
    );

    let header: Vec<String> = COLUMNS.iter().map(|c| format!("s{c}")).collect();
    let mut passwords = Vec::new();
    for name in &names[1..] {
        let seen = &sheets[name];
        assert_eq!(seen.freeze_panes, "A2", "frozen header on {name}");
        let last = seen.rows.len();
        assert_eq!(seen.auto_filter, format!("A1:L{last}"), "filter on {name}");
        assert_eq!(seen.rows[0], header, "header on {name}");
        for line in &seen.rows[1..] {
            assert_eq!(line[6], "s0022", "port stays text");
            assert_eq!(line[11], "sTRUE", "booleans stay text");
            if name.starts_with("Ops_DB") {
                passwords.push(line[9].clone());
            }
        }
    }
    let expected: Vec<String> = hostile.iter().map(|p| format!("s{p}")).collect();
    assert_eq!(passwords, expected, "hostile values round-trip as text");
}
