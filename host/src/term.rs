//! Text for a terminal: what a guest or a provider wrote, made visible.
//!
//! Tool outputs, error messages, descriptions and model answers are
//! guest- or provider-controlled. Printed raw, an escape sequence in them
//! retitles the window (OSC), clears the screen, a carriage return
//! overwrites what the line said, a bidi override reorders it. In text
//! output every such character is written as an escape (`\u{1b}`), so
//! it is seen, never executed; JSON output is left exact.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` would do something to a terminal instead of being shown:
/// C0 controls but newline and tab, DEL, C1 controls, and the Unicode
/// characters that reorder or hide text.
fn acts(c: char) -> bool {
    match c {
        '\n' | '\t' => false,
        '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        // Bidi embeddings, overrides, isolates and marks; line and
        // paragraph separators; zero-width characters that hide text.
        '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}'
        | '\u{061c}'
        | '\u{feff}' => true,
        _ => false,
    }
}

/// `text` with every character that acts on a terminal (controls, escapes,
/// bidirectional overrides) escaped.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if acts(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::visible;

    #[test]
    fn controls_and_bidi_are_shown_not_executed() {
        let hostile = "ok\x1b]0;pwned\x07\x1b[2J\rover\0\u{85}\u{9b}31m\u{202e}txt.exe\u{2066}";
        let shown = visible(hostile);
        assert_eq!(
            shown,
            concat!(
                "ok\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{d}over\\u{0}",
                "\\u{85}\\u{9b}31m\\u{202e}txt.exe\\u{2066}"
            )
        );
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n'));
        // Plain text, newlines, tabs and other scripts are untouched.
        let plain = "line one\n\tzwei — 三 ✓";
        assert!(matches!(visible(plain), std::borrow::Cow::Borrowed(_)));
    }
}
