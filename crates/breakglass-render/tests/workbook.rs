//! Reads rendered workbooks back with an independent reader (calamine) and
//! checks tabs, headers, order and every value, including hostile ones.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_core::{COLUMNS, DeviceRow, Inventory, Secret};
use breakglass_render::{RenderOptions, SUMMARY_SHEET, render_inventory};
use calamine::{Data, Reader, Xlsx, open_workbook};
use std::path::Path;

fn row(device: &str, account: &str, password: &str) -> DeviceRow {
    DeviceRow {
        provider: "AWS".into(),
        device_name: device.into(),
        protocol: "SSH".into(),
        public_ip: "203.0.113.9".into(),
        private_ip: "10.0.0.9".into(),
        url: String::new(),
        port: "0022".into(),
        access_type: "password".into(),
        account: account.into(),
        password: Secret::new(password),
        pem_file_name: String::new(),
        extra_credential: Secret::new("TRUE"),
    }
}

fn options(dir: &Path, max_rows: u32) -> RenderOptions {
    RenderOptions {
        run_id: "run-test".into(),
        generated_at: chrono::Utc::now(),
        source: "test".into(),
        temp_dir: dir.to_path_buf(),
        max_rows_per_sheet: max_rows,
    }
}

fn cells(workbook: &mut Xlsx<std::io::BufReader<std::fs::File>>, sheet: &str) -> Vec<Vec<Data>> {
    let range = workbook.worksheet_range(sheet).unwrap();
    range.rows().map(<[Data]>::to_vec).collect()
}

fn text(cell: &Data) -> String {
    match cell {
        Data::String(s) => s.clone(),
        Data::Empty => String::new(),
        other => panic!("cell must be a string cell, found {other:?}"),
    }
}

#[test]
fn hostile_values_round_trip_exactly_as_text() {
    let hostile = [
        "=1+1",
        "=HYPERLINK(\"http://evil\",\"x\")",
        "0012",
        "+1",
        "1E5",
        "TRUE",
        "tab\there\nnewline",
        "emoji 🔐🙂",
        "ctrl\u{1}char",
        "_x0041_ literal",
        "  padded  ",
    ];
    let mut inventory = Inventory::new();
    for (i, password) in hostile.iter().enumerate() {
        inventory.push("P", row(&format!("host-{i}"), "root", password));
    }
    let sorted = inventory.into_sorted();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.xlsx");
    render_inventory(&sorted, options(dir.path(), 1_048_575), &path, || {}).unwrap();

    let mut workbook: Xlsx<_> = open_workbook(&path).unwrap();
    assert_eq!(
        workbook.sheet_names(),
        vec![SUMMARY_SHEET.to_string(), "P".to_string()]
    );
    let rows = cells(&mut workbook, "P");
    let header: Vec<String> = rows[0].iter().map(text).collect();
    assert_eq!(header, COLUMNS.to_vec());
    for (i, password) in hostile.iter().enumerate() {
        let line = &rows[i + 1];
        assert_eq!(text(&line[1]), format!("host-{i}"));
        assert_eq!(text(&line[6]), "0022", "port stays text");
        assert_eq!(text(&line[9]), *password, "password {i} must round-trip");
        assert_eq!(text(&line[11]), "TRUE", "booleans stay text");
    }
}

#[test]
fn projects_get_distinct_valid_tabs_in_natural_order() {
    let long_chinese = "財務部門核心資料庫伺服器群組緊急存取帳號清單與相關連線資訊備份專案";
    assert_eq!(long_chinese.chars().count(), 33);
    let forty = format!("{long_chinese}一二三四五六七");
    let mut inventory = Inventory::new();
    for project in ["a/b", "a:b", "History", &forty, "Summary", "'quoted'"] {
        inventory.push(project, row("web-10", "root", "x"));
        inventory.push(project, row("web-2", "root", "y"));
        inventory.push(project, row("WEB-2", "admin", "z"));
    }
    let sorted = inventory.into_sorted();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.xlsx");
    let report = render_inventory(&sorted, options(dir.path(), 1_048_575), &path, || {}).unwrap();
    assert_eq!(report.projects.len(), 6, "no two projects merged");

    let mut workbook: Xlsx<_> = open_workbook(&path).unwrap();
    let names = workbook.sheet_names();
    assert_eq!(names[0], SUMMARY_SHEET);
    assert_eq!(names.len(), 7);
    let mut folded: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    folded.sort();
    folded.dedup();
    assert_eq!(
        folded.len(),
        7,
        "tab names unique case-insensitively: {names:?}"
    );
    for name in &names {
        assert!(name.encode_utf16().count() <= 31, "{name}");
        assert!(
            !name.contains(['/', ':', '\\', '?', '*', '[', ']']),
            "{name}"
        );
        assert!(!name.starts_with('\'') && !name.ends_with('\''), "{name}");
        assert_ne!(name.to_lowercase(), "history");
    }
    for project in &report.projects {
        let rows = cells(&mut workbook, &project.sheets[0]);
        let order: Vec<(String, String)> = rows[1..]
            .iter()
            .map(|r| (text(&r[1]), text(&r[8])))
            .collect();
        assert_eq!(
            order,
            vec![
                ("WEB-2".to_string(), "admin".to_string()),
                ("web-2".to_string(), "root".to_string()),
                ("web-10".to_string(), "root".to_string()),
            ],
            "natural, case-insensitive order, ties by account, in {}",
            project.project
        );
    }
    let summary = cells(&mut workbook, SUMMARY_SHEET);
    let listed: Vec<String> = summary
        .iter()
        .filter_map(|r| r.first())
        .map(|c| match c {
            Data::String(s) => s.clone(),
            _ => String::new(),
        })
        .collect();
    assert!(
        listed.iter().any(|s| s == &forty),
        "the Summary names the full project"
    );
    assert!(listed.iter().any(|s| s == "Run id"));
}

#[test]
fn rows_past_the_sheet_limit_continue_on_another_tab() {
    let mut inventory = Inventory::new();
    for i in 0..2_500 {
        inventory.push("big", row(&format!("host-{i}"), "root", &format!("pw-{i}")));
    }
    let sorted = inventory.into_sorted();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.xlsx");
    let report = render_inventory(&sorted, options(dir.path(), 1_000), &path, || {}).unwrap();
    assert_eq!(report.projects[0].sheets, vec!["big", "big ~2", "big ~3"]);

    let mut workbook: Xlsx<_> = open_workbook(&path).unwrap();
    let mut devices = Vec::new();
    for sheet in &report.projects[0].sheets {
        let rows = cells(&mut workbook, sheet);
        assert_eq!(text(&rows[0][0]), "Provider", "every tab has the header");
        devices.extend(rows[1..].iter().map(|r| text(&r[1])));
    }
    let expected: Vec<String> = (0..2_500).map(|i| format!("host-{i}")).collect();
    assert_eq!(devices, expected, "all rows, in order, across tabs");
}
