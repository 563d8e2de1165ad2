//! What a cell may hold: at most 32,767 characters (UTF-16 units, as Excel
//! counts), and only characters XML 1.0 allows. The writer already escapes
//! C0 control characters as `_xHHHH_`, which Excel and other readers turn
//! back into the original character, so tabs, newlines and other controls
//! survive. What cannot be stored (U+FFFE, U+FFFF, too long a value) is
//! changed minimally and reported, never silently.

/// Excel's longest cell text, in UTF-16 units.
pub const MAX_CELL_UTF16: usize = 32_767;

/// The outcome of fitting a value into a cell.
#[derive(Debug, PartialEq, Eq)]
pub enum Fitted {
    /// Store the value unchanged.
    AsIs,
    /// Store `text` instead, and report `problem` (which never quotes the
    /// value, since it may be a password).
    Changed {
        /// What to store.
        text: String,
        /// What was changed and why.
        problem: String,
    },
}

/// Fits a value into a cell.
pub fn fit(value: &str) -> Fitted {
    let forbidden = |c: char| matches!(c, '\u{FFFE}' | '\u{FFFF}');
    let too_long = value.len() > MAX_CELL_UTF16 && value.encode_utf16().count() > MAX_CELL_UTF16;
    let has_forbidden = value.contains(forbidden);
    if !too_long && !has_forbidden {
        return Fitted::AsIs;
    }
    let mut problems = Vec::new();
    let mut text: String = if has_forbidden {
        problems
            .push("held characters XML forbids (U+FFFE/U+FFFF), replaced by U+FFFD".to_string());
        value
            .chars()
            .map(|c| if forbidden(c) { '\u{FFFD}' } else { c })
            .collect()
    } else {
        value.to_owned()
    };
    if too_long {
        let total = text.encode_utf16().count();
        let mut units = 0;
        let cut = text
            .char_indices()
            .find(|(_, c)| {
                units += c.len_utf16();
                units > MAX_CELL_UTF16
            })
            .map_or(text.len(), |(index, _)| index);
        text.truncate(cut);
        problems.push(format!(
            "is {total} characters long; Excel cells hold {MAX_CELL_UTF16}, so it was cut; get the full value from Mavis"
        ));
    }
    Fitted::Changed {
        text,
        problem: problems.join("; "),
    }
}

/// Fits a value, ignoring the report (for Summary-tab labels).
pub fn fit_lossy(value: &str) -> String {
    match fit(value) {
        Fitted::AsIs => value.to_owned(),
        Fitted::Changed { text, .. } => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_values_pass_unchanged() {
        assert_eq!(fit("=HYPERLINK(\"x\")\t\n0012"), Fitted::AsIs);
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let value = format!("{}🔥", "a".repeat(MAX_CELL_UTF16 - 1));
        let Fitted::Changed { text, problem } = fit(&value) else {
            panic!("must change")
        };
        assert_eq!(text.encode_utf16().count(), MAX_CELL_UTF16 - 1);
        assert!(problem.contains("32768 characters"), "{problem}");
        assert!(!problem.contains("aaaa"));
    }

    #[test]
    fn xml_forbidden_characters_are_replaced_and_reported() {
        let Fitted::Changed { text, problem } = fit("a\u{FFFF}b") else {
            panic!("must change")
        };
        assert_eq!(text, "a\u{FFFD}b");
        assert!(problem.contains("U+FFFE"));
    }
}
