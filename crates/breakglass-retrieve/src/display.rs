//! Printing inventory values: they come from the Mavis database, where
//! anyone who can name a device or set a password writes them.
//!
//! - On a terminal ([`for_terminal`]), a value could carry escape
//!   sequences: CSI (`ESC [`) moves the cursor or clears the screen, OSC
//!   (`ESC ]` … `BEL`) sets the window title, writes hyperlinks or, on some
//!   terminals, the clipboard. Every C0 and C1 control character, DEL and
//!   the Unicode bidirectional overrides (which reorder what is shown) are
//!   printed as visible escapes (`\x1b`, `\u{9b}`, `\u{202e}`), and a
//!   backslash as `\\` so the escaped text reads back exactly. Values with
//!   none of these print unchanged.
//! - In the tab-separated table ([`table_cell`]), every cell is escaped the
//!   same way (tab `\t`, newline `\n`, CR `\r`; PostgreSQL's `COPY` text
//!   format, so a row stays one line), and a cell that starts with `=`,
//!   `+`, `-`, `@`, a tab or a CR gets a leading `'`, as OWASP's
//!   CSV-injection guidance says, so a spreadsheet shows it as text instead
//!   of running it. A cell that itself starts with `'` gets one more, so
//!   removing exactly one leading `'` always gives the value back.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters shown escaped: C0 and C1 controls, DEL, and the bidi
/// embeddings, overrides and isolates.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `value` safe to print on a terminal: unchanged when it holds nothing to
/// escape (`Cow::Borrowed`), else fully escaped (`Cow::Owned`; tell the
/// reader the text is escaped).
pub fn for_terminal(value: &str) -> Cow<'_, str> {
    if !value.chars().any(needs_escape) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    escape_into(&mut out, value);
    Cow::Owned(out)
}

/// Whether a spreadsheet could take a cell starting like this for a
/// formula (or it starts with the marker itself).
fn looks_like_formula(value: &str) -> bool {
    value.starts_with(['=', '+', '-', '@', '\t', '\r', '\''])
}

/// One cell of the tab-separated table: escaped, and marked with a
/// leading `'` when a spreadsheet could run it.
pub fn table_cell(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    if looks_like_formula(value) {
        out.push('\'');
    }
    escape_into(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_are_shown_not_run() {
        assert!(matches!(
            for_terminal("web-01 核心"),
            Cow::Borrowed("web-01 核心")
        ));
        // A plain backslash is left alone when nothing else is escaped.
        assert_eq!(for_terminal(r"dom\user"), r"dom\user");
        assert_eq!(
            for_terminal("evil\x1b[2J\x1b]0;title\x07"),
            r"evil\x1b[2J\x1b]0;title\x07"
        );
        assert_eq!(
            for_terminal("a\tb\nc\rd\\e"),
            r"a\tb\nc\rd\\e",
            "the escaped text reads back exactly"
        );
        assert_eq!(for_terminal("\u{9b}31m\u{7f}"), r"\u{9b}31m\x7f");
        assert_eq!(for_terminal("abc\u{202e}fed"), r"abc\u{202e}fed");
        assert_eq!(for_terminal("\0"), r"\x00");
    }

    #[test]
    fn table_cells_stay_on_one_line_and_formulas_are_marked() {
        assert_eq!(table_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(table_cell("+1"), "'+1");
        assert_eq!(table_cell("-2+3"), "'-2+3");
        assert_eq!(table_cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(table_cell("\t=1"), r"'\t=1");
        assert_eq!(table_cell("\r=1"), r"'\r=1");
        assert_eq!(table_cell("'quoted"), "''quoted");
        assert_eq!(table_cell("a=b"), "a=b");
        assert_eq!(table_cell("0012"), "0012");
        assert_eq!(table_cell("a\tb\nc\\d"), r"a\tb\nc\\d");
        assert_eq!(table_cell("x\x1b]8;;u\x1b\\"), r"x\x1b]8;;u\x1b\\");
        assert!(!table_cell("a\u{85}b").contains('\u{85}'));
    }
}
