//! Excel's worksheet-name rules (DESIGN.md §5), applied deterministically.
//!
//! A name is 1–31 characters (counted as Excel does, in UTF-16 units), holds
//! none of `: \ / ? * [ ]`, does not start or end with `'`, is not `History`,
//! and is unique case-insensitively. Forbidden characters become `_`; a name
//! that is too long is cut; a name already taken gets ` (2)`, ` (3)`... with
//! the base cut to fit. Names are handed out in call order, and callers call
//! in workbook order, so the same inventory always gets the same tabs and
//! two projects never share one.

use std::collections::HashSet;

/// Excel's longest sheet name, in UTF-16 units.
pub const MAX_SHEET_NAME: usize = 31;

/// Hands out unique, valid sheet names.
#[derive(Debug, Default)]
pub struct SheetNames {
    taken: HashSet<String>,
}

impl SheetNames {
    /// A namer with `History` (reserved by Excel) already taken.
    pub fn new() -> Self {
        let mut names = Self::default();
        names.taken.insert(fold("History"));
        names
    }

    /// Marks a name as used (e.g. the `Summary` tab) and returns it.
    pub fn reserve(&mut self, name: &str) -> String {
        self.unique(&clean(name))
    }

    /// A valid, unused sheet name for `wanted`.
    pub fn allocate(&mut self, wanted: &str) -> String {
        self.unique(&clean(wanted))
    }

    /// The name of continuation tab `part` (2, 3, ...) of a project whose
    /// first tab is `first`.
    pub fn continuation(&mut self, first: &str, part: u32) -> String {
        let suffix = format!(" ~{part}");
        let base = cut_utf16(first, MAX_SHEET_NAME - suffix.len());
        self.unique(&format!("{base}{suffix}"))
    }

    fn unique(&mut self, candidate: &str) -> String {
        if self.taken.insert(fold(candidate)) {
            return candidate.to_owned();
        }
        for n in 2u64.. {
            let suffix = format!(" ({n})");
            let base = cut_utf16(candidate, MAX_SHEET_NAME - suffix.len());
            let name = format!("{base}{suffix}");
            if self.taken.insert(fold(&name)) {
                return name;
            }
        }
        unreachable!("u64 suffixes cannot run out before memory does")
    }
}

/// Replaces forbidden characters, trims quotes and blanks, cuts to length.
fn clean(wanted: &str) -> String {
    let replaced: String = wanted
        .chars()
        .map(|c| match c {
            ':' | '\\' | '/' | '?' | '*' | '[' | ']' => '_',
            c if c.is_control() || is_noncharacter(c) => '_',
            c => c,
        })
        .collect();
    let trimmed = trim_quotes_and_blanks(&replaced);
    let name = if trimmed.is_empty() {
        "Project"
    } else {
        trimmed
    };
    // Cutting may expose a quote or blank at the end again.
    let cut = trim_quotes_and_blanks(cut_utf16(name, MAX_SHEET_NAME));
    if cut.is_empty() {
        "Project".into()
    } else {
        cut.into()
    }
}

/// Trims blanks and `'` from both ends until neither is left there (`' 'x`
/// becomes `x`, not `'x`).
fn trim_quotes_and_blanks(text: &str) -> &str {
    text.trim_matches(|c: char| c == '\'' || c.is_whitespace())
}

/// Unicode noncharacters, which XML 1.0 forbids (U+FFFE, U+FFFF) or which
/// no reader expects in a name.
fn is_noncharacter(c: char) -> bool {
    let code = c as u32;
    code & 0xFFFE == 0xFFFE || (0xFDD0..=0xFDEF).contains(&code)
}

fn cut_utf16(text: &str, max: usize) -> &str {
    let mut units = 0;
    for (index, c) in text.char_indices() {
        units += c.len_utf16();
        if units > max {
            return &text[..index];
        }
    }
    text
}

/// Case folding for the uniqueness check: Excel refuses two sheet names
/// that differ only in case.
fn fold(name: &str) -> String {
    name.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16_len(s: &str) -> usize {
        s.encode_utf16().count()
    }

    #[test]
    fn forbidden_characters_and_quotes_are_replaced() {
        let mut names = SheetNames::new();
        assert_eq!(names.allocate("a:b\\c/d?e*f[g]h"), "a_b_c_d_e_f_g_h");
        assert_eq!(names.allocate("'quoted'"), "quoted");
        assert_eq!(names.allocate("''"), "Project");
        assert_eq!(names.allocate("history"), "history (2)");
        assert_eq!(names.allocate("' 'x"), "x");
        assert_eq!(names.allocate("y' '"), "y");
        assert_eq!(names.allocate("a\u{FFFF}b\u{FFFE}"), "a_b_");
    }

    #[test]
    fn long_and_colliding_names_stay_distinct_and_valid() {
        let mut names = SheetNames::new();
        let long = "很長的專案名稱".repeat(6); // 42 characters
        let first = names.allocate(&long);
        let second = names.allocate(&format!("{long}-other"));
        assert_ne!(first.to_lowercase(), second.to_lowercase());
        assert!(utf16_len(&first) <= 31 && utf16_len(&second) <= 31);
        assert_eq!(names.allocate("A/B"), "A_B");
        assert_eq!(names.allocate("a_b"), "a_b (2)");
        assert_eq!(names.allocate("A:B"), "A_B (3)");
    }

    #[test]
    fn emoji_count_as_two_units() {
        let mut names = SheetNames::new();
        let name = names.allocate(&"🔥".repeat(20));
        assert_eq!(utf16_len(&name), 30);
    }

    #[test]
    fn continuation_names_are_unique() {
        let mut names = SheetNames::new();
        let first = names.allocate(&"x".repeat(40));
        let second = names.continuation(&first, 2);
        assert_eq!(second, format!("{} ~2", "x".repeat(28)));
        assert!(utf16_len(&second) <= 31);
    }
}
