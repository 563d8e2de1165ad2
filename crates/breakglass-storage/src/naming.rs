//! Object names for each rotation mode (DESIGN.md §4).
//!
//! `overwrite` uses one fixed name; `unique` and `prune` use a timestamped
//! name that sorts by time, so "the newest copy" is the greatest name.

use breakglass_config::Rotation;
use chrono::{DateTime, Utc};

/// The fixed name of `overwrite` rotation (for a plain or password-protected
/// workbook; an age file adds `.age`).
pub const FIXED_NAME: &str = "breakglass-backup.xlsx";
/// The start of every name breakglass writes; `prune` touches nothing else.
pub const NAME_PREFIX: &str = "breakglass-backup";
/// The ending of a plain or password-protected workbook.
pub const EXTENSION: &str = ".xlsx";
/// The ending of an age-encrypted workbook.
pub const AGE_EXTENSION: &str = ".xlsx.age";

/// The file name for one upload; `extension` is `.xlsx` or `.xlsx.age`.
pub fn object_name(
    rotation: Rotation,
    created_at: DateTime<Utc>,
    run_id: &str,
    extension: &str,
) -> String {
    match rotation {
        Rotation::Overwrite => format!("{NAME_PREFIX}{extension}"),
        Rotation::Unique | Rotation::Prune => {
            format!(
                "{NAME_PREFIX}-{}-{run_id}{extension}",
                created_at.format("%Y%m%dT%H%M%SZ")
            )
        }
    }
}

/// True for names that `unique`/`prune` rotation wrote.
pub fn is_rotated_name(name: &str) -> bool {
    name.strip_prefix(NAME_PREFIX)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| {
            rest.strip_suffix(AGE_EXTENSION)
                .or_else(|| rest.strip_suffix(EXTENSION))
        })
        .is_some_and(|middle| {
            let bytes = middle.as_bytes();
            bytes.len() > 17
                && bytes[..8].iter().all(u8::is_ascii_digit)
                && bytes[8] == b'T'
                && bytes[9..15].iter().all(u8::is_ascii_digit)
                && bytes[15] == b'Z'
                && bytes[16] == b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn unique_names_sort_by_time_and_are_recognised() {
        let at = |h| Utc.with_ymd_and_hms(2026, 11, 27, h, 0, 0).unwrap();
        let early = object_name(Rotation::Unique, at(1), "run-b", EXTENSION);
        let late = object_name(Rotation::Prune, at(2), "run-a", EXTENSION);
        assert!(early < late);
        assert_eq!(early, "breakglass-backup-20261127T010000Z-run-b.xlsx");
        assert!(is_rotated_name(&early));
        assert!(!is_rotated_name(FIXED_NAME));
        assert!(is_rotated_name(&object_name(
            Rotation::Unique,
            at(3),
            "r",
            AGE_EXTENSION
        )));
        assert_eq!(
            object_name(Rotation::Overwrite, at(3), "r", AGE_EXTENSION),
            "breakglass-backup.xlsx.age"
        );
        assert!(!is_rotated_name("breakglass-backup-notes.xlsx"));
    }
}
