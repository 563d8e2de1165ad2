//! Thousands of projects need no more open files than one: the workbook is
//! written tab after tab into one file (DESIGN.md §5: 10,000 projects must
//! render under `ulimit -n 1024`).
//!
//! The test re-runs itself in a child process under `ulimit -n 64`, so the
//! limit is real and touches no other test; the child also counts its open
//! descriptors (`/proc/self/fd`) while the projects stream in.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use breakglass_core::{DeviceRow, Secret};
use breakglass_render::{RenderOptions, WorkbookBuilder};
use calamine::{Data, Reader, Xlsx, open_workbook};
use std::process::Command;

const CHILD: &str = "BREAKGLASS_TEST_OPEN_FILES_CHILD";
const PROJECTS: usize = 3_000;
const ROWS: u64 = 3;
const LIMIT: u32 = 64;

fn row(device: &str) -> DeviceRow {
    DeviceRow {
        provider: "AWS".into(),
        device_name: device.into(),
        protocol: "SSH".into(),
        public_ip: "203.0.113.9".into(),
        private_ip: "10.0.0.9".into(),
        url: String::new(),
        port: "22".into(),
        access_type: "password".into(),
        account: "root".into(),
        password: Secret::new("pw"),
        pem_file_name: String::new(),
        extra_credential: Secret::new(""),
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn soft_open_file_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn thousands_of_projects_render_under_a_low_open_file_limit() {
    if std::env::var_os(CHILD).is_none() {
        let exe = std::env::current_exe().unwrap();
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {LIMIT} && exec \"$0\" \"$@\""))
            .arg(exe)
            .args([
                "thousands_of_projects_render_under_a_low_open_file_limit",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("1 passed"),
            "the child ran the test:\n{stdout}"
        );
        return;
    }

    assert_eq!(soft_open_file_limit(), u64::from(LIMIT), "the limit is set");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.xlsx");
    let options = RenderOptions {
        run_id: "run-fds".into(),
        generated_at: chrono::Utc::now(),
        source: "test".into(),
        temp_dir: dir.path().to_path_buf(),
        max_rows_per_sheet: 1_048_575,
    };
    let mut builder = WorkbookBuilder::new(options).unwrap();
    let mut counts = Vec::new();
    for project in 0..PROJECTS {
        builder
            .begin_project(&format!("project-{project:05}"), ROWS)
            .unwrap();
        for device in 0..ROWS {
            builder.write_row(&row(&format!("host-{device}"))).unwrap();
        }
        if project % 100 == 0 {
            counts.push(open_fds());
        }
    }
    let first = counts[0];
    assert!(
        counts.iter().all(|&count| count == first),
        "open descriptors must not grow with projects: {counts:?}"
    );
    let report = builder.finish(&path).unwrap();
    assert_eq!(report.projects.len(), PROJECTS);
    assert_eq!(report.rows, PROJECTS as u64 * ROWS);

    let mut workbook: Xlsx<_> = open_workbook(&path).unwrap();
    let names = workbook.sheet_names();
    assert_eq!(names.len(), PROJECTS + 1);
    assert_eq!(names[0], "Summary");
    assert_eq!(names[PROJECTS], "project-02999");
    let last = workbook.worksheet_range("project-02999").unwrap();
    assert_eq!(last.height(), 1 + ROWS as usize);
    assert_eq!(
        last.get_value((ROWS as u32, 1)),
        Some(&Data::String("host-2".into()))
    );
}
