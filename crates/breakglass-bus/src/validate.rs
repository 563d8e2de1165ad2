//! Field rules for every event that arrives on the bus.
//!
//! Nothing from the stream is used before it passed these checks: triggers
//! come from outside (the Mavis core, `breakglass trigger`, the scheduler)
//! and are believed only as far as NATS permissions allow publishing them;
//! the services' own events are authenticated by [`crate::envelope`] and
//! still checked field by field, because a bug or a changed peer must not
//! become a forged file or a panic. Each rule failure is one
//! [`FieldError`] that names the field, the offending value (escaped, so a
//! CR/LF or terminal escape never reaches a log line or a header) and the
//! rule. Callers turn it into a permanent stage failure: dead-lettered at
//! once, nothing changed.

use breakglass_core::RunId;
use breakglass_proto::v1;
use std::time::Duration;

/// How far a timestamp may lie in the future of the receiver's clock.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The longest `requested_by`, in characters.
pub const MAX_REQUESTED_BY: usize = 128;
/// The longest trigger `note`, in characters.
pub const MAX_NOTE: usize = 1024;
/// The longest free text from a service (source, key id, location, error).
pub const MAX_TEXT: usize = 8192;
/// The longest project, device, sheet or field name in a count or warning.
pub const MAX_NAME: usize = 4096;
/// The most projects one event may list (Excel's own sheet limit is lower
/// per workbook only by memory; this bounds what a message can ask for).
pub const MAX_PROJECTS: usize = 1 << 20;
/// The largest payload object a reference may name: 64 GiB.
pub const MAX_PAYLOAD_BYTES: u64 = 64 << 30;
/// The longest object name in a payload reference.
pub const MAX_OBJECT_NAME: usize = 200;
/// The most runs a snapshot may come in. The renderer holds a few chunks
/// of every run at once, so this bounds its memory; the collector merges
/// its rows past this many runs itself (one last, bigger run).
pub const MAX_SNAPSHOT_RUNS: usize = 32;

/// One field broke one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {rule}")]
pub struct FieldError {
    /// The field, as a path (`snapshot.trigger.run_id`).
    pub field: String,
    /// The value, escaped and shortened (never a secret: no event field
    /// checked here holds one).
    pub value: String,
    /// The rule it breaks.
    pub rule: String,
}

impl FieldError {
    fn new(field: &str, value: impl std::fmt::Display, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            value: escaped(&value.to_string()),
            rule: rule.into(),
        }
    }
}

/// `value` quoted with every control character escaped (`"a\r\nb"`), cut to
/// 80 characters: safe in a log line, a dead letter or an error reply.
pub fn escaped(value: &str) -> String {
    let cut: String = value.chars().take(80).collect();
    let mut out = format!("{cut:?}");
    if value.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// A run id: 1-64 characters from `[A-Za-z0-9_-]` (events.proto).
pub fn run_id(field: &str, value: &str) -> Result<RunId, FieldError> {
    RunId::parse(value).map_err(|_| {
        FieldError::new(
            field,
            value,
            "a run id is 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'",
        )
    })
}

/// Text of at most `max` characters without control characters.
pub fn plain_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.chars().count() > max {
        return Err(FieldError::new(
            field,
            value,
            format!("longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            value,
            "must not contain control characters (CR, LF, ESC, ...)",
        ));
    }
    Ok(())
}

/// Text of at most `max` characters (any characters: inventory names and
/// warnings about them may hold what the inventory holds).
pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.chars().count() > max {
        return Err(FieldError::new(
            field,
            value,
            format!("longer than {max} characters"),
        ));
    }
    Ok(())
}

/// A timestamp in Unix epoch milliseconds: set, and not in the future of
/// `now_ms` by more than [`CLOCK_SKEW`]; not before `not_before_ms` (less
/// the skew) when given.
pub fn timestamp(
    field: &str,
    value_ms: i64,
    now_ms: i64,
    not_before_ms: Option<i64>,
) -> Result<(), FieldError> {
    let skew = CLOCK_SKEW.as_millis() as i64;
    if value_ms <= 0 {
        return Err(FieldError::new(field, value_ms, "must be set (Unix ms)"));
    }
    if value_ms > now_ms.saturating_add(skew) {
        return Err(FieldError::new(
            field,
            value_ms,
            format!(
                "lies {} s in the future (more than the allowed clock skew of {} s)",
                (value_ms - now_ms) / 1000,
                CLOCK_SKEW.as_secs()
            ),
        ));
    }
    if let Some(before) = not_before_ms
        && before > 0
        && value_ms < before.saturating_sub(skew)
    {
        return Err(FieldError::new(
            field,
            value_ms,
            format!("is earlier than the event it follows ({before})"),
        ));
    }
    Ok(())
}

/// A trigger, as it arrives from outside. `requested_at_unix_ms` may be 0
/// (not given); otherwise it must not lie in the future.
pub fn trigger(
    field: &str,
    trigger: &v1::TriggerRequested,
    now_ms: i64,
) -> Result<RunId, FieldError> {
    let run = run_id(&format!("{field}run_id"), &trigger.run_id)?;
    match v1::TriggerReason::try_from(trigger.reason) {
        Ok(reason) if reason != v1::TriggerReason::Unspecified => {}
        _ => {
            return Err(FieldError::new(
                &format!("{field}reason"),
                trigger.reason,
                "must be SCHEDULED (1), ON_DEMAND (2) or CATCH_UP (3)",
            ));
        }
    }
    plain_text(
        &format!("{field}requested_by"),
        &trigger.requested_by,
        MAX_REQUESTED_BY,
    )?;
    plain_text(&format!("{field}note"), &trigger.note, MAX_NOTE)?;
    if trigger.requested_at_unix_ms != 0 {
        timestamp(
            &format!("{field}requested_at_unix_ms"),
            trigger.requested_at_unix_ms,
            now_ms,
            None,
        )?;
    }
    Ok(run)
}

/// A payload reference: in this installation's bucket, named for `run`,
/// a plausible size and a lowercase hex SHA-256.
pub fn payload_ref(
    field: &str,
    reference: Option<&v1::PayloadRef>,
    bucket: &str,
    run: &RunId,
) -> Result<(), FieldError> {
    let Some(reference) = reference else {
        return Err(FieldError::new(field, "", "is missing"));
    };
    if reference.bucket != bucket {
        return Err(FieldError::new(
            &format!("{field}.bucket"),
            &reference.bucket,
            format!("must be this installation's payload bucket {bucket}"),
        ));
    }
    let name = &reference.name;
    if name.len() > MAX_OBJECT_NAME
        || !name.starts_with(&format!("{run}."))
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        || name.contains("..")
    {
        return Err(FieldError::new(
            &format!("{field}.name"),
            name,
            format!(
                "must be `{run}.<suffix>` of at most {MAX_OBJECT_NAME} characters from A-Z, a-z, 0-9, '.', '_' and '-'"
            ),
        ));
    }
    size(&format!("{field}.size"), reference.size)?;
    sha256(&format!("{field}.sha256"), &reference.sha256)
}

/// A byte count: 1 to [`MAX_PAYLOAD_BYTES`].
pub fn size(field: &str, value: u64) -> Result<(), FieldError> {
    if value == 0 || value > MAX_PAYLOAD_BYTES {
        return Err(FieldError::new(
            field,
            value,
            format!("must be 1 to {MAX_PAYLOAD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// 64 lowercase hex digits.
pub fn sha256(field: &str, value: &str) -> Result<(), FieldError> {
    if value.len() != 64
        || !value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(FieldError::new(
            field,
            value,
            "must be a SHA-256: 64 lowercase hex digits",
        ));
    }
    Ok(())
}

/// How the stored file is protected, and the ending that goes with it.
pub fn encryption_and_extension(
    field: &str,
    encryption: &str,
    extension: &str,
) -> Result<(), FieldError> {
    let expected = match encryption {
        "password" | "none" => ".xlsx",
        "age" => ".xlsx.age",
        other => {
            return Err(FieldError::new(
                &format!("{field}encryption"),
                other,
                "must be password, age or none",
            ));
        }
    };
    if extension != expected {
        return Err(FieldError::new(
            &format!("{field}extension"),
            extension,
            format!("must be {expected:?} for encryption {encryption}"),
        ));
    }
    Ok(())
}

fn counts(field: &str, projects: &[v1::ProjectCount], rows: Option<u64>) -> Result<(), FieldError> {
    if projects.len() > MAX_PROJECTS {
        return Err(FieldError::new(
            field,
            projects.len(),
            format!("more than {MAX_PROJECTS} projects"),
        ));
    }
    let mut sum = 0u64;
    for (index, project) in projects.iter().enumerate() {
        bounded(
            &format!("{field}[{index}].project"),
            &project.project,
            MAX_NAME,
        )?;
        if project.sheets.len() > 4096 {
            return Err(FieldError::new(
                &format!("{field}[{index}].sheets"),
                project.sheets.len(),
                "more than 4096 sheets",
            ));
        }
        for sheet in &project.sheets {
            plain_text(&format!("{field}[{index}].sheets"), sheet, 31)?;
        }
        sum = sum.saturating_add(project.rows);
    }
    if let Some(rows) = rows
        && rows != sum
    {
        return Err(FieldError::new(
            "rows",
            rows,
            format!("differs from the sum of the project counts ({sum})"),
        ));
    }
    Ok(())
}

fn warnings(field: &str, list: &[v1::Warning], count: u64) -> Result<(), FieldError> {
    if list.len() > breakglass_core::inventory::MAX_LISTED_WARNINGS {
        return Err(FieldError::new(
            field,
            list.len(),
            format!(
                "more than {} listed warnings",
                breakglass_core::inventory::MAX_LISTED_WARNINGS
            ),
        ));
    }
    if (list.len() as u64) > count {
        return Err(FieldError::new(
            &format!("{field}_count"),
            count,
            "is smaller than the number of listed warnings",
        ));
    }
    for (index, warning) in list.iter().enumerate() {
        for (name, value) in [
            ("project", &warning.project),
            ("device", &warning.device),
            ("field", &warning.field),
            ("message", &warning.message),
        ] {
            bounded(&format!("{field}[{index}].{name}"), value, MAX_TEXT)?;
        }
    }
    Ok(())
}

/// A `snapshot.ready` event of run `run` (the run its envelope names).
pub fn snapshot_ready(
    ready: &v1::SnapshotReady,
    bucket: &str,
    now_ms: i64,
) -> Result<RunId, FieldError> {
    let Some(trigger_event) = ready.trigger.as_ref() else {
        return Err(FieldError::new("trigger", "", "is missing"));
    };
    let run = trigger("trigger.", trigger_event, now_ms)?;
    snapshot_runs(&ready.runs, bucket, &run)?;
    plain_text("source", &ready.source, MAX_TEXT)?;
    counts("projects", &ready.projects, Some(ready.rows))?;
    let mut names = std::collections::HashSet::with_capacity(ready.projects.len());
    for (index, project) in ready.projects.iter().enumerate() {
        if !names.insert(project.project.as_str()) {
            return Err(FieldError::new(
                &format!("projects[{index}].project"),
                &project.project,
                "is listed twice (the runs' rows are counted by project name)",
            ));
        }
    }
    warnings("warnings", &ready.warnings, ready.warning_count)?;
    timestamp(
        "collected_at_unix_ms",
        ready.collected_at_unix_ms,
        now_ms,
        Some(trigger_event.requested_at_unix_ms),
    )?;
    Ok(run)
}

/// The runs of a snapshot: 1 to [`MAX_SNAPSHOT_RUNS`] references, each a
/// payload of this run, no name twice (a run counted twice would double
/// its rows), at most [`MAX_PAYLOAD_BYTES`] in all.
fn snapshot_runs(runs: &[v1::PayloadRef], bucket: &str, run: &RunId) -> Result<(), FieldError> {
    if runs.is_empty() || runs.len() > MAX_SNAPSHOT_RUNS {
        return Err(FieldError::new(
            "runs",
            format!("{} references", runs.len()),
            format!("must hold 1 to {MAX_SNAPSHOT_RUNS} payload references"),
        ));
    }
    let mut names = std::collections::HashSet::with_capacity(runs.len());
    let mut total = 0u64;
    for (index, reference) in runs.iter().enumerate() {
        let field = format!("runs[{index}]");
        payload_ref(&field, Some(reference), bucket, run)?;
        if !names.insert(reference.name.as_str()) {
            return Err(FieldError::new(
                &format!("{field}.name"),
                &reference.name,
                "names a run already listed",
            ));
        }
        total = total.saturating_add(reference.size);
    }
    if total > MAX_PAYLOAD_BYTES {
        return Err(FieldError::new(
            "runs",
            format!("{total} bytes"),
            format!("must hold at most {MAX_PAYLOAD_BYTES} bytes in all"),
        ));
    }
    Ok(())
}

/// A `workbook.ready` event.
pub fn workbook_ready(
    ready: &v1::WorkbookReady,
    bucket: &str,
    now_ms: i64,
) -> Result<RunId, FieldError> {
    let Some(snapshot) = ready.snapshot.as_ref() else {
        return Err(FieldError::new("snapshot", "", "is missing"));
    };
    let run = snapshot_ready(snapshot, bucket, now_ms).map_err(|mut err| {
        err.field = format!("snapshot.{}", err.field);
        err
    })?;
    payload_ref("workbook", ready.workbook.as_ref(), bucket, &run)?;
    size("workbook_size", ready.workbook_size)?;
    sha256("workbook_sha256", &ready.workbook_sha256)?;
    counts("projects", &ready.projects, None)?;
    warnings("warnings", &ready.warnings, ready.warning_count)?;
    timestamp(
        "rendered_at_unix_ms",
        ready.rendered_at_unix_ms,
        now_ms,
        Some(snapshot.collected_at_unix_ms),
    )?;
    encryption_and_extension("", &ready.encryption, &ready.extension)?;
    plain_text("key_id", &ready.key_id, MAX_TEXT)?;
    Ok(run)
}

/// A `run.finished` event. History is read for a week, so only the future
/// is refused, not age.
pub fn run_finished(finished: &v1::RunFinished, now_ms: i64) -> Result<RunId, FieldError> {
    let run = run_id("run_id", &finished.run_id)?;
    match v1::RunStatus::try_from(finished.status) {
        Ok(status) if status != v1::RunStatus::Unspecified => {}
        _ => {
            return Err(FieldError::new(
                "status",
                finished.status,
                "must be SUCCEEDED (1), PARTIALLY_FAILED (2) or FAILED (3)",
            ));
        }
    }
    plain_text("failed_stage", &finished.failed_stage, 32)?;
    bounded("error", &finished.error, MAX_TEXT * 4)?;
    if finished.destinations.len() > 64 {
        return Err(FieldError::new(
            "destinations",
            finished.destinations.len(),
            "more than 64 destinations",
        ));
    }
    for (index, destination) in finished.destinations.iter().enumerate() {
        plain_text(
            &format!("destinations[{index}].destination"),
            &destination.destination,
            MAX_TEXT,
        )?;
        bounded(
            &format!("destinations[{index}].location"),
            &destination.location,
            MAX_TEXT,
        )?;
        bounded(
            &format!("destinations[{index}].error"),
            &destination.error,
            MAX_TEXT,
        )?;
    }
    counts("projects", &finished.projects, None)?;
    warnings("warnings", &finished.warnings, finished.warning_count)?;
    timestamp(
        "finished_at_unix_ms",
        finished.finished_at_unix_ms,
        now_ms,
        None,
    )?;
    if let Some(trigger_event) = &finished.trigger {
        let of = trigger("trigger.", trigger_event, now_ms)?;
        if of != run {
            return Err(FieldError::new(
                "trigger.run_id",
                of.as_str(),
                format!("differs from run_id {run}"),
            ));
        }
    }
    Ok(run)
}

/// A dead letter, before the run log records it.
pub fn dead_letter(dead: &v1::DeadLetter) -> Result<Option<RunId>, FieldError> {
    plain_text("stage", &dead.stage, 32)?;
    plain_text("original_subject", &dead.original_subject, 512)?;
    bounded("error", &dead.error, MAX_TEXT * 4)?;
    if dead.run_id.is_empty() {
        return Ok(None);
    }
    run_id("run_id", &dead.run_id).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn good_trigger() -> v1::TriggerRequested {
        v1::TriggerRequested {
            run_id: "run-1".into(),
            reason: v1::TriggerReason::OnDemand as i32,
            requested_by: "mavis-core".into(),
            requested_at_unix_ms: NOW - 1000,
            note: "before maintenance".into(),
        }
    }

    fn reference(run: &str) -> v1::PayloadRef {
        v1::PayloadRef {
            bucket: "bg_payloads".into(),
            name: format!("{run}.0123abcd.snapshot.age"),
            size: 10,
            sha256: "a".repeat(64),
        }
    }

    fn good_snapshot() -> v1::SnapshotReady {
        v1::SnapshotReady {
            trigger: Some(good_trigger()),
            runs: vec![reference("run-1"), {
                let mut second = reference("run-1");
                second.name = "run-1.4567cdef.snapshot.age".into();
                second
            }],
            source: "postgres://user:****@db/x".into(),
            rows: 3,
            projects: vec![
                v1::ProjectCount {
                    project: "a".into(),
                    sheets: vec![],
                    rows: 1,
                },
                v1::ProjectCount {
                    project: "主機".into(),
                    sheets: vec![],
                    rows: 2,
                },
            ],
            warnings: vec![],
            warning_count: 0,
            collected_at_unix_ms: NOW - 500,
        }
    }

    fn good_workbook() -> v1::WorkbookReady {
        let mut workbook = reference("run-1");
        workbook.name = "run-1.ff.workbook.age".into();
        v1::WorkbookReady {
            snapshot: Some(good_snapshot()),
            workbook: Some(workbook),
            workbook_size: 100,
            workbook_sha256: "0".repeat(64),
            projects: vec![],
            warnings: vec![],
            warning_count: 0,
            rendered_at_unix_ms: NOW - 100,
            encryption: "password".into(),
            extension: ".xlsx".into(),
            key_id: "passphrase x".into(),
        }
    }

    fn rule_of(result: Result<RunId, FieldError>) -> String {
        let err = result.expect_err("must be refused");
        assert!(
            !err.to_string().contains('\n') && !err.to_string().contains('\r'),
            "{err}"
        );
        format!("{}: {}", err.field, err.rule)
    }

    #[test]
    fn run_ids_follow_the_documented_charset() {
        assert!(run_id("run_id", "slot-2026-11-27T0930").is_ok());
        assert!(run_id("run_id", &"a".repeat(64)).is_ok());
        for bad in [
            "",
            "a\r\nNats-Msg-Id: x",
            "a b",
            "../x",
            "x.y",
            "a".repeat(65).as_str(),
        ] {
            let err = run_id("run_id", bad).unwrap_err();
            assert_eq!(err.field, "run_id");
            assert!(!err.value.contains('\n'), "{err}");
        }
        assert_eq!(run_id("run_id", "a\r\nb").unwrap_err().value, r#""a\r\nb""#);
    }

    #[test]
    fn a_good_trigger_passes_and_each_bad_field_is_named() {
        assert_eq!(trigger("", &good_trigger(), NOW).unwrap().as_str(), "run-1");
        let unset = v1::TriggerRequested {
            requested_at_unix_ms: 0,
            ..good_trigger()
        };
        assert!(trigger("", &unset, NOW).is_ok(), "0 means not given");
        let cases: Vec<(v1::TriggerRequested, &str)> = vec![
            (
                v1::TriggerRequested {
                    run_id: "x\r\n".into(),
                    ..good_trigger()
                },
                "run_id",
            ),
            (
                v1::TriggerRequested {
                    reason: 0,
                    ..good_trigger()
                },
                "reason",
            ),
            (
                v1::TriggerRequested {
                    reason: 99,
                    ..good_trigger()
                },
                "reason",
            ),
            (
                v1::TriggerRequested {
                    requested_by: "a\u{1b}[31m".into(),
                    ..good_trigger()
                },
                "requested_by",
            ),
            (
                v1::TriggerRequested {
                    requested_by: "a".repeat(MAX_REQUESTED_BY + 1),
                    ..good_trigger()
                },
                "requested_by",
            ),
            (
                v1::TriggerRequested {
                    note: "line\nbreak".into(),
                    ..good_trigger()
                },
                "note",
            ),
            (
                v1::TriggerRequested {
                    note: "n".repeat(MAX_NOTE + 1),
                    ..good_trigger()
                },
                "note",
            ),
            (
                v1::TriggerRequested {
                    requested_at_unix_ms: NOW + 3_600_000,
                    ..good_trigger()
                },
                "requested_at_unix_ms",
            ),
            (
                v1::TriggerRequested {
                    requested_at_unix_ms: -5,
                    ..good_trigger()
                },
                "requested_at_unix_ms",
            ),
        ];
        for (bad, field) in cases {
            let rule = rule_of(trigger("", &bad, NOW));
            assert!(rule.starts_with(field), "{field}: {rule}");
        }
    }

    #[test]
    fn timestamps_allow_a_small_skew_only() {
        let skew = CLOCK_SKEW.as_millis() as i64;
        assert!(timestamp("t", NOW + skew, NOW, None).is_ok());
        assert!(timestamp("t", NOW + skew + 1, NOW, None).is_err());
        assert!(timestamp("t", 0, NOW, None).is_err());
        assert!(timestamp("t", NOW - skew - 1, NOW, Some(NOW)).is_err());
        assert!(timestamp("t", NOW - skew, NOW, Some(NOW)).is_ok());
    }

    #[test]
    fn a_good_snapshot_passes_and_bad_fields_are_named() {
        assert!(snapshot_ready(&good_snapshot(), "bg_payloads", NOW).is_ok());
        let mut cases: Vec<(v1::SnapshotReady, &str)> = Vec::new();
        let mut s = good_snapshot();
        s.trigger = None;
        cases.push((s, "trigger"));
        let mut s = good_snapshot();
        s.collected_at_unix_ms = 32_503_680_000_000; // year 3000
        cases.push((s, "collected_at_unix_ms"));
        let mut s = good_snapshot();
        s.runs[0].bucket = "other_payloads".into();
        cases.push((s, "runs[0].bucket"));
        let mut s = good_snapshot();
        s.runs[1].name = "other-run.x.snapshot.age".into();
        cases.push((s, "runs[1].name"));
        let mut s = good_snapshot();
        s.runs[0].name = "run-1.../../x".into();
        cases.push((s, "runs[0].name"));
        let mut s = good_snapshot();
        s.runs[1].name = s.runs[0].name.clone();
        cases.push((s, "runs[1].name"));
        let mut s = good_snapshot();
        s.runs[0].size = 0;
        cases.push((s, "runs[0].size"));
        let mut s = good_snapshot();
        s.runs[0].size = MAX_PAYLOAD_BYTES + 1;
        cases.push((s, "runs[0].size"));
        let mut s = good_snapshot();
        s.runs[0].size = MAX_PAYLOAD_BYTES;
        s.runs[1].size = 1;
        cases.push((s, "runs"));
        let mut s = good_snapshot();
        s.runs[1].sha256 = "A".repeat(64);
        cases.push((s, "runs[1].sha256"));
        let mut s = good_snapshot();
        s.runs.clear();
        cases.push((s, "runs"));
        let mut s = good_snapshot();
        let extra = s.runs[0].clone();
        s.runs = (0..=MAX_SNAPSHOT_RUNS)
            .map(|i| v1::PayloadRef {
                name: format!("run-1.{i}.snapshot.age"),
                ..extra.clone()
            })
            .collect();
        cases.push((s, "runs"));
        let mut s = good_snapshot();
        s.projects[1].project = "a".into();
        cases.push((s, "projects[1].project"));
        let mut s = good_snapshot();
        s.source = "x\r\ny".into();
        cases.push((s, "source"));
        let mut s = good_snapshot();
        s.rows = 4;
        cases.push((s, "rows"));
        let mut s = good_snapshot();
        s.warnings = vec![v1::Warning::default()];
        cases.push((s, "warnings_count"));
        let mut s = good_snapshot();
        s.trigger.as_mut().unwrap().run_id = "bad id".into();
        cases.push((s, "trigger.run_id"));
        for (bad, field) in cases {
            let rule = rule_of(snapshot_ready(&bad, "bg_payloads", NOW));
            assert!(rule.starts_with(field), "{field}: {rule}");
        }
    }

    #[test]
    fn a_good_workbook_passes_and_bad_fields_are_named() {
        assert!(workbook_ready(&good_workbook(), "bg_payloads", NOW).is_ok());
        let mut age = good_workbook();
        age.encryption = "age".into();
        age.extension = ".xlsx.age".into();
        assert!(workbook_ready(&age, "bg_payloads", NOW).is_ok());
        let mut cases: Vec<(v1::WorkbookReady, &str)> = Vec::new();
        for extension in ["/../x", ".xlsx\n", ".xlsx.age", "", ".xlsm"] {
            let mut w = good_workbook();
            w.extension = extension.into();
            cases.push((w, "extension"));
        }
        let mut w = good_workbook();
        w.encryption = "rot13".into();
        cases.push((w, "encryption"));
        let mut w = good_workbook();
        w.rendered_at_unix_ms = 32_503_680_000_000;
        cases.push((w, "rendered_at_unix_ms"));
        let mut w = good_workbook();
        w.snapshot.as_mut().unwrap().collected_at_unix_ms = 32_503_680_000_000;
        cases.push((w, "snapshot.collected_at_unix_ms"));
        let mut w = good_workbook();
        w.workbook_size = 0;
        cases.push((w, "workbook_size"));
        let mut w = good_workbook();
        w.workbook_sha256 = "zz".into();
        cases.push((w, "workbook_sha256"));
        let mut w = good_workbook();
        w.workbook.as_mut().unwrap().name = "run-2.ff.workbook.age".into();
        cases.push((w, "workbook.name"));
        let mut w = good_workbook();
        w.key_id = "k\r\n".into();
        cases.push((w, "key_id"));
        let mut w = good_workbook();
        w.snapshot = None;
        cases.push((w, "snapshot"));
        for (bad, field) in cases {
            let rule = rule_of(workbook_ready(&bad, "bg_payloads", NOW));
            assert!(rule.starts_with(field), "{field}: {rule}");
        }
    }

    #[test]
    fn run_finished_and_dead_letters_are_checked() {
        let good = v1::RunFinished {
            run_id: "run-1".into(),
            status: v1::RunStatus::Succeeded as i32,
            finished_at_unix_ms: NOW,
            trigger: Some(good_trigger()),
            ..Default::default()
        };
        assert!(run_finished(&good, NOW).is_ok());
        for (bad, field) in [
            (
                v1::RunFinished {
                    run_id: "a\nb".into(),
                    ..good.clone()
                },
                "run_id",
            ),
            (
                v1::RunFinished {
                    status: 0,
                    ..good.clone()
                },
                "status",
            ),
            (
                v1::RunFinished {
                    finished_at_unix_ms: NOW + 86_400_000,
                    ..good.clone()
                },
                "finished_at_unix_ms",
            ),
            (
                v1::RunFinished {
                    run_id: "run-2".into(),
                    ..good.clone()
                },
                "trigger.run_id",
            ),
        ] {
            let rule = rule_of(run_finished(&bad, NOW));
            assert!(rule.starts_with(field), "{field}: {rule}");
        }
        let dead = v1::DeadLetter {
            stage: "collector".into(),
            run_id: "x\r\ny".into(),
            ..Default::default()
        };
        assert_eq!(dead_letter(&dead).unwrap_err().field, "run_id");
    }
}
