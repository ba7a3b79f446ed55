//! Guest text made safe to print on a terminal.
//!
//! A step's outputs, summary, log lines and failure messages are written by the
//! guest. Printed raw, an escape sequence among them can recolour, move the
//! cursor, retitle the window, rewrite earlier lines (`\r`, cursor-up) to hide a
//! failure, or, on some terminals, answer back into the input. Bidirectional
//! overrides ("Trojan Source") make text read differently from what it is.
//!
//! [`escape_line`] and [`escape_text`] replace every such character by a visible
//! escape (`\u{1b}`, `\r`, `\u{202e}`), the form Rust's `escape_debug` uses, and
//! leave everything else, including non-ASCII letters, as it is. Use them where
//! guest text meets a person; machine formats (JSON, the store) keep the
//! original.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `text` on one line: every control character (C0, DEL, C1), newline included,
/// and every bidirectional formatting character escaped; tabs kept.
pub fn escape_line(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// `text` with its lines kept: as [`escape_line`], except that `\n` stays a
/// line break (a `\r` is still escaped, so no line can overwrite another).
pub fn escape_text(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

fn escape(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| needs_escape(c) && !(keep_newlines && c == '\n');
    let Some(first) = text.find(unsafe_char) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        if !unsafe_char(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// Whether `c` can change what a terminal shows beyond printing itself.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            // Bidirectional embeddings, overrides, isolates and marks.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in ["", "build ok", "naïve café ✓ 日本", "a\tb"] {
            assert!(
                matches!(escape_line(s), Cow::Borrowed(t) if t == s),
                "{s:?}"
            );
        }
    }

    #[test]
    fn escape_sequences_become_visible() {
        assert_eq!(
            escape_line("\x1b[31mred\x1b[0m"),
            "\\u{1b}[31mred\\u{1b}[0m"
        );
        // OSC (window title), with BEL as its terminator.
        assert_eq!(escape_line("\x1b]0;pwned\x07"), "\\u{1b}]0;pwned\\u{7}");
        // C1 CSI, DEL and NUL.
        assert_eq!(
            escape_line("a\u{9b}2Jb\u{7f}\0"),
            "a\\u{9b}2Jb\\u{7f}\\u{0}"
        );
    }

    #[test]
    fn carriage_returns_cannot_overwrite_a_line() {
        assert_eq!(escape_line("FAILED\rok    "), "FAILED\\rok    ");
        assert_eq!(escape_text("FAILED\rok\nnext"), "FAILED\\rok\nnext");
    }

    #[test]
    fn newlines_are_kept_only_by_escape_text() {
        assert_eq!(escape_line("one\ntwo"), "one\\ntwo");
        assert_eq!(escape_text("one\ntwo"), "one\ntwo");
    }

    #[test]
    fn bidirectional_overrides_are_escaped() {
        assert_eq!(
            escape_line("access\u{202e}level\u{2066}"),
            "access\\u{202e}level\\u{2066}"
        );
    }
}
