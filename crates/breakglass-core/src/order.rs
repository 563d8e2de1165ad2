//! The workbook's row order: device name in natural, case-insensitive order
//! (`web-2` before `web-10`, `DB` next to `db`), then account.
//!
//! The order is total and deterministic: names equal under those rules are
//! finally ordered by their raw text, so two runs over the same inventory
//! give byte-identical sheets.

use crate::device::DeviceRow;
use std::cmp::Ordering;

/// Compares two strings naturally: runs of ASCII digits compare by numeric
/// value (any length, no overflow), other text case-insensitively; leading
/// zeros only break a tie of everything else (`x7` < `x007a` < `x7b`).
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    // Leading zeros (`7` before `007`) decide only a full tie, as in
    // `sort -V` and natsort: the first run of digits where they differ.
    let mut zeros_tie = Ordering::Equal;
    loop {
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return zeros_tie,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            _ => {}
        }
        let a_digits = a.starts_with(|c: char| c.is_ascii_digit());
        let b_digits = b.starts_with(|c: char| c.is_ascii_digit());
        let (a_run, a_rest) = split_run(a, a_digits);
        let (b_run, b_rest) = split_run(b, b_digits);
        let ordering = match (a_digits, b_digits) {
            (true, true) => {
                if zeros_tie == Ordering::Equal {
                    zeros_tie = a_run.len().cmp(&b_run.len());
                }
                cmp_numeric(a_run, b_run)
            }
            // Digits sort before letters, as in file managers.
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => cmp_caseless(a_run, b_run),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
        a = a_rest;
        b = b_rest;
    }
}

/// The workbook order of two rows: device name naturally, then account
/// naturally, then the raw text of every column, so the order is total:
/// rows that compare equal are identical, and the same inventory always
/// gives the same sheets, however it was read or spilled.
pub fn device_order(a: &DeviceRow, b: &DeviceRow) -> Ordering {
    natural_cmp(&a.device_name, &b.device_name)
        .then_with(|| natural_cmp(&a.account, &b.account))
        .then_with(|| a.cells().cmp(&b.cells()))
}

/// The order of project tabs: natural, then raw text.
pub fn project_order(a: &str, b: &str) -> Ordering {
    natural_cmp(a, b).then_with(|| a.cmp(b))
}

fn split_run(s: &str, digits: bool) -> (&str, &str) {
    let end = s
        .find(|c: char| c.is_ascii_digit() != digits)
        .unwrap_or(s.len());
    s.split_at(end)
}

/// Compares two digit runs by value alone (leading zeros ignored).
fn cmp_numeric(a: &str, b: &str) -> Ordering {
    let a_trim = a.trim_start_matches('0');
    let b_trim = b.trim_start_matches('0');
    a_trim
        .len()
        .cmp(&b_trim.len())
        .then_with(|| a_trim.cmp(b_trim))
}

fn cmp_caseless(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        // The common case, without Unicode case tables.
        return a
            .bytes()
            .map(|c| c.to_ascii_lowercase())
            .cmp(b.bytes().map(|c| c.to_ascii_lowercase()));
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .cmp(b.chars().flat_map(char::to_lowercase))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut names: Vec<&str>) -> Vec<&str> {
        names.sort_by(|a, b| natural_cmp(a, b).then_with(|| a.cmp(b)));
        names
    }

    #[test]
    fn numbers_in_names_sort_by_value() {
        assert_eq!(
            sorted(vec!["web-10", "web-2", "web-1", "Web-3", "db", "DB-01"]),
            vec!["db", "DB-01", "web-1", "web-2", "Web-3", "web-10"]
        );
    }

    #[test]
    fn case_is_ignored_but_order_stays_total() {
        assert_eq!(natural_cmp("ALPHA", "alpha"), Ordering::Equal);
        assert_eq!(sorted(vec!["b", "B", "a"]), vec!["a", "B", "b"]);
    }

    #[test]
    fn huge_numbers_do_not_overflow() {
        assert_eq!(
            natural_cmp("n99999999999999999999999", "n100000000000000000000000"),
            Ordering::Less
        );
        assert_eq!(natural_cmp("x7", "x007"), Ordering::Less);
    }

    #[test]
    fn leading_zeros_only_break_a_full_tie() {
        // As `sort -V` and natsort: equal numbers compare on the rest of
        // the name first.
        assert_eq!(natural_cmp("x007a", "x7b"), Ordering::Less);
        assert_eq!(natural_cmp("x7b", "x007a"), Ordering::Greater);
        assert_eq!(natural_cmp("web-01-b", "web-1-a"), Ordering::Greater);
        assert_eq!(
            sorted(vec!["x7b", "x007a", "x07", "x7"]),
            vec!["x7", "x07", "x007a", "x7b"]
        );
        // The first differing run of zeros decides a full tie.
        assert_eq!(natural_cmp("a01b7", "a1b007"), Ordering::Greater);
    }

    #[test]
    fn rows_tie_break_on_account() {
        let row = |device: &str, account: &str| DeviceRow {
            device_name: device.into(),
            account: account.into(),
            ..DeviceRow::default()
        };
        let mut rows = [
            row("web-10", "a"),
            row("web-2", "root"),
            row("web-2", "admin"),
        ];
        rows.sort_by(device_order);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.device_name.as_str(), r.account.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![("web-2", "admin"), ("web-2", "root"), ("web-10", "a")]
        );
    }
}
