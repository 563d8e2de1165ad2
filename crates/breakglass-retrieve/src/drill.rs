//! The drill: what the on-call person would do, rehearsed — list with the
//! reader credential, download the newest copy, verify it, check its age,
//! decrypt it, and count the rows of every project against the manifest.
//! Each step is reported; the first failure skips the rest, with the
//! reason, and fails the drill.

use crate::fetch::{decrypt_fetched, fetch_latest, human};
use crate::unseal::OpenKey;
use crate::workbook::count_rows;
use breakglass_storage::manifest::Manifest;
use breakglass_storage::{AnyDestination, Destination};
use chrono::{DateTime, TimeDelta, Utc};
use std::time::Instant;

/// How one step went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    /// Done and as expected.
    Ok,
    /// The step failed: the drill fails.
    Failed,
    /// Not run because an earlier step failed.
    Skipped,
}

/// One step of the drill.
#[derive(Clone, Debug)]
pub struct Step {
    /// `download and verify`, `freshness`, `decrypt`, `read back`.
    pub name: &'static str,
    /// How it went.
    pub status: StepStatus,
    /// What was found, in plain words; no secrets.
    pub detail: String,
    /// How long it took.
    pub seconds: f64,
}

/// The whole drill.
#[derive(Clone, Debug)]
pub struct DrillReport {
    /// The destination drilled, without secrets.
    pub destination: String,
    /// The steps in order.
    pub steps: Vec<Step>,
    /// The newest backup's run id, when it was found.
    pub run_id: Option<String>,
    /// When the newest backup's run collected the inventory.
    pub created_at: Option<DateTime<Utc>>,
}

impl DrillReport {
    /// True when no step failed.
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.status == StepStatus::Ok)
    }
}

const STEPS: [&str; 4] = ["download and verify", "freshness", "decrypt", "read back"];

/// Runs the drill against `destination` in a private temp folder that is
/// removed afterwards, whatever happens.
pub async fn run_drill(
    destination: &AnyDestination,
    key: &OpenKey,
    max_age: TimeDelta,
) -> DrillReport {
    let mut report = DrillReport {
        destination: destination.describe(),
        steps: Vec::new(),
        run_id: None,
        created_at: None,
    };
    let work = match tempfile::Builder::new()
        .prefix("breakglass-drill-")
        .tempdir()
    {
        Ok(dir) => dir,
        Err(err) => {
            record(
                &mut report,
                STEPS[0],
                Instant::now(),
                Err(format!("cannot create a private temp folder: {err}")),
            );
            return skip_rest(report);
        }
    };

    let started = Instant::now();
    let fetched = fetch_latest(destination, work.path(), None, Utc::now()).await;
    let fetched = match fetched {
        Ok(fetched) => {
            let mut detail = format!(
                "{} ({} bytes, SHA-256 {}…) matches its manifest",
                fetched.object.name,
                fetched.manifest.size,
                &fetched.manifest.sha256[..fetched.manifest.sha256.len().min(12)]
            );
            for warning in &fetched.warnings {
                detail.push_str("; ");
                detail.push_str(warning);
            }
            record(&mut report, STEPS[0], started, Ok(detail));
            fetched
        }
        Err(err) => {
            record(&mut report, STEPS[0], started, Err(err.to_string()));
            return skip_rest(report);
        }
    };
    report.run_id = Some(fetched.manifest.run_id.clone());
    report.created_at = Some(fetched.manifest.created_at);

    let started = Instant::now();
    let fresh = if fetched.age > max_age {
        Err(format!(
            "the newest backup is {} old (run {}), older than {}: the scheduled runs are not succeeding",
            human(fetched.age),
            fetched.manifest.run_id,
            human(max_age)
        ))
    } else {
        Ok(format!(
            "{} old (run {})",
            human(fetched.age),
            fetched.manifest.run_id
        ))
    };
    if !record(&mut report, STEPS[1], started, fresh) {
        return skip_rest(report);
    }

    let started = Instant::now();
    let plain = match decrypt_fetched(&fetched, key) {
        Ok(plain) => {
            let how = match fetched.manifest.encryption.as_str() {
                "none" => "not encrypted (encryption: none)".to_owned(),
                other => format!("{other}, key id {}", fetched.manifest.key_id),
            };
            record(&mut report, STEPS[2], started, Ok(format!("opened: {how}")));
            plain
        }
        Err(err) => {
            record(&mut report, STEPS[2], started, Err(err.to_string()));
            return skip_rest(report);
        }
    };

    let started = Instant::now();
    let counted = count_rows(&plain)
        .map_err(|err| err.to_string())
        .and_then(|counts| compare_counts(&fetched.manifest, &counts));
    record(&mut report, STEPS[3], started, counted);
    drop(work);
    report
}

/// Adds a step's outcome; true when it went well.
fn record(
    report: &mut DrillReport,
    name: &'static str,
    started: Instant,
    outcome: Result<String, String>,
) -> bool {
    let (status, detail) = match outcome {
        Ok(detail) => (StepStatus::Ok, detail),
        Err(detail) => (StepStatus::Failed, detail),
    };
    report.steps.push(Step {
        name,
        status,
        detail,
        seconds: started.elapsed().as_secs_f64(),
    });
    status == StepStatus::Ok
}

fn skip_rest(mut report: DrillReport) -> DrillReport {
    let reason = report
        .steps
        .last()
        .map_or_else(String::new, |s| format!("skipped: {} failed", s.name));
    for name in STEPS.iter().skip(report.steps.len()) {
        report.steps.push(Step {
            name,
            status: StepStatus::Skipped,
            detail: reason.clone(),
            seconds: 0.0,
        });
    }
    report
}

/// Compares the rows read back per tab with the manifest: per project when
/// the manifest lists them (the sidecar), else the total.
pub fn compare_counts(manifest: &Manifest, counts: &[(String, u64)]) -> Result<String, String> {
    let total: u64 = counts.iter().map(|(_, rows)| rows).sum();
    if manifest.projects.is_empty() {
        return if total == manifest.rows {
            Ok(format!(
                "{total} rows, as the object's metadata records (no per-project counts: the sidecar manifest is missing)"
            ))
        } else {
            Err(format!(
                "the workbook holds {total} rows, the manifest records {}",
                manifest.rows
            ))
        };
    }
    let mut problems = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for project in &manifest.projects {
        let found: u64 = project
            .sheets
            .iter()
            .map(|sheet| {
                listed.insert(sheet.as_str());
                counts
                    .iter()
                    .find(|(name, _)| name == sheet)
                    .map_or(0, |(_, rows)| *rows)
            })
            .sum();
        if found != project.rows {
            problems.push(format!(
                "project {:?}: {found} rows read back, {} in the manifest",
                project.project, project.rows
            ));
        }
    }
    for (sheet, _) in counts {
        if !listed.contains(sheet.as_str()) {
            problems.push(format!("tab {sheet:?} is not in the manifest"));
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{total} rows in {} projects, every count as the manifest records",
            manifest.projects.len()
        ))
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use breakglass_storage::manifest::{MANIFEST_VERSION, ProjectRows};

    fn manifest(projects: Vec<ProjectRows>, rows: u64) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            object: "o".into(),
            run_id: "r".into(),
            created_at: Utc::now(),
            size: 0,
            sha256: String::new(),
            format: "xlsx".into(),
            encryption: "none".into(),
            key_id: String::new(),
            rows,
            projects,
        }
    }

    #[test]
    fn counts_are_compared_per_project_across_continuation_tabs() {
        let projects = vec![
            ProjectRows {
                project: "Web".into(),
                sheets: vec!["Web".into(), "Web ~2".into()],
                rows: 3,
            },
            ProjectRows {
                project: "DB".into(),
                sheets: vec!["DB".into()],
                rows: 1,
            },
        ];
        let counts = vec![
            ("DB".to_owned(), 1),
            ("Web".to_owned(), 2),
            ("Web ~2".to_owned(), 1),
        ];
        assert!(compare_counts(&manifest(projects.clone(), 4), &counts).is_ok());
        let short = vec![("DB".to_owned(), 1), ("Web".to_owned(), 2)];
        let err = compare_counts(&manifest(projects.clone(), 4), &short).unwrap_err();
        assert!(err.contains("\"Web\": 2 rows read back, 3"), "{err}");
        let extra = [counts.clone(), vec![("Stray".to_owned(), 1)]].concat();
        let err = compare_counts(&manifest(projects, 4), &extra).unwrap_err();
        assert!(err.contains("Stray"), "{err}");
        assert!(compare_counts(&manifest(vec![], 4), &counts).is_ok());
        assert!(compare_counts(&manifest(vec![], 5), &counts).is_err());
    }
}
