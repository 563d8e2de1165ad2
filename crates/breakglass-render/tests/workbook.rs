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
        inventory
            .push("P", row(&format!("host-{i}"), "root", password))
            .unwrap();
    }
    let sorted = inventory.into_sorted().unwrap();
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
        inventory.push(project, row("web-10", "root", "x")).unwrap();
        inventory.push(project, row("web-2", "root", "y")).unwrap();
        inventory.push(project, row("WEB-2", "admin", "z")).unwrap();
    }
    let sorted = inventory.into_sorted().unwrap();
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
        inventory
            .push("big", row(&format!("host-{i}"), "root", &format!("pw-{i}")))
            .unwrap();
    }
    let sorted = inventory.into_sorted().unwrap();
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

#[test]
fn carriage_returns_survive_and_cut_values_are_reported_on_the_summary() {
    let long = "x".repeat(40_000);
    let mut inventory = Inventory::new();
    inventory
        .push("P", row("host-1", "root", "line1\r\nline2\rend"))
        .unwrap();
    inventory.push("P", row("host-2", "root", &long)).unwrap();
    let sorted = inventory.into_sorted().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.xlsx");
    let report = render_inventory(&sorted, options(dir.path(), 1_048_575), &path, || {}).unwrap();
    assert_eq!(report.warning_count, 1);

    let mut workbook: Xlsx<_> = open_workbook(&path).unwrap();
    let rows = cells(&mut workbook, "P");
    assert_eq!(text(&rows[1][9]), "line1\r\nline2\rend", "CR is kept");
    assert_eq!(text(&rows[2][9]).len(), 32_767, "cut to Excel's cell limit");
    let summary = cells(&mut workbook, SUMMARY_SHEET);
    let warning = summary
        .iter()
        .find(|r| r.len() >= 4 && text(&r[1]) == "host-2")
        .expect("the warning is listed on the Summary");
    assert_eq!(text(&warning[2]), "Password");
    assert!(
        !text(&warning[3]).contains("xxxx"),
        "never quotes the value"
    );
}

#[test]
fn an_unfinished_workbook_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut builder =
        breakglass_render::WorkbookBuilder::new(options(dir.path(), 1_048_575)).unwrap();
    builder.begin_project("P", 2).unwrap();
    builder.write_row(&row("host-1", "root", "secret")).unwrap();
    assert!(
        builder.finish(&dir.path().join("out.xlsx")).is_err(),
        "fewer rows than announced"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Parts without ZIP64 extensions: LibreOffice 7.4 refuses a workbook in
/// which any part has them (the old writer's files could not be opened).
#[test]
fn no_part_uses_zip64_extensions() {
    let mut inventory = Inventory::new();
    inventory.push("P", row("host-1", "root", "pw")).unwrap();
    let sorted = inventory.into_sorted().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.xlsx");
    render_inventory(&sorted, options(dir.path(), 1_048_575), &path, || {}).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let eocd = bytes.len() - 22;
    assert_eq!(
        u32_at(eocd),
        0x0605_4b50,
        "end of central directory, no comment"
    );
    let entries = u16_at(eocd + 10);
    let mut at = u32_at(eocd + 16) as usize;
    let mut names = Vec::new();
    for _ in 0..entries {
        assert_eq!(u32_at(at), 0x0201_4b50, "central directory entry");
        let (name_len, extra_len, comment_len) =
            (u16_at(at + 28), u16_at(at + 30), u16_at(at + 32));
        let name = String::from_utf8(bytes[at + 46..at + 46 + name_len].to_vec()).unwrap();
        assert_ne!(u32_at(at + 20), u32::MAX, "{name}: sizes in ZIP64 fields");
        assert_eq!(extra_len, 0, "{name}: extra fields");
        names.push(name);
        at += 46 + name_len + extra_len + comment_len;
    }
    assert!(
        names.iter().any(|n| n == "xl/worksheets/sheet1.xml"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "[Content_Types].xml"),
        "{names:?}"
    );
}
