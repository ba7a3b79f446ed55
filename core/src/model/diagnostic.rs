//! Diagnostics: positioned errors that render like rustc's on a terminal and
//! serialize to JSON for tools.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::work;

/// Longest part of a source line shown in a rendered diagnostic.
const MAX_SHOWN: usize = 120;

/// Longest offending text kept in a diagnostic, in bytes (a value can be a whole
/// file long; the start is what a reader needs to find it).
const MAX_TEXT: usize = 240;

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The byte offset `n` characters before `at` in `text`, stopping at its start.
fn back_chars(text: &str, at: usize, n: usize) -> usize {
    text[..at]
        .char_indices()
        .rev()
        .take(n)
        .last()
        .map_or(at, |(i, _)| i)
}

/// The byte offset `n` characters after `at` in `text`, stopping at its end.
fn forward_chars(text: &str, at: usize, n: usize) -> usize {
    text[at..]
        .char_indices()
        .nth(n)
        .map_or(text.len(), |(i, _)| at + i)
}

/// A region of a source file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
    /// 1-based line of `start`.
    pub line: usize,
    /// 1-based column of `start`, in characters.
    pub column: usize,
}

impl Span {
    /// The span moved `offset` bytes right and shortened to `len` bytes; used to
    /// point inside a scalar (e.g. at one reference in an expression). Only valid
    /// when the scalar's text maps one-to-one onto the source (plain or simple
    /// quoted scalars on one line), which the caller checks. It counts the
    /// characters from the span's start, so calling it for many points of one
    /// long span is quadratic; [`SourceMap::span_in`] uses an index instead.
    ///
    /// [`SourceMap::span_in`]: crate::model::SourceMap::span_in
    pub fn narrow(self, source: &str, offset: usize, len: usize) -> Span {
        let start = (self.start + offset).min(self.end);
        let end = (start + len).min(self.end).max(start);
        let column = source
            .get(self.start..start)
            .map_or(self.column, |s| self.column + s.chars().count());
        Span {
            start,
            end,
            line: self.line,
            column,
        }
    }
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The pipeline is refused.
    Error,
    /// The pipeline is accepted but probably not what was meant.
    Warning,
}

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Severity.
    pub severity: Severity,
    /// Stable kebab-case identifier, e.g. `unknown-field`.
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// File name as given to the parser.
    pub file: String,
    /// Where; `None` for a spec that did not come from a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span: Option<Span>,
    /// The offending text.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A new error.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code: code.to_owned(),
            message: message.into(),
            file: String::new(),
            span: None,
            text: String::new(),
            hint: None,
        }
    }

    /// Sets the hint.
    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the location and the offending text, taken from `source`.
    #[must_use]
    pub fn at(mut self, file: &str, source: &str, span: Option<Span>) -> Self {
        self.file = file.to_owned();
        self.span = span;
        if let Some(span) = span {
            // A span over a whole mapping would quote the entire block; its first
            // line is what a reader needs to find it.
            let text = source.get(span.start..span.end).unwrap_or_default();
            let first = text.lines().next().unwrap_or_default().trim_end();
            self.text = shorten(first, MAX_TEXT);
        }
        self
    }

    /// Renders rustc-style: header, location, the source line with the span
    /// underlined, then the hint.
    pub fn render(&self, source: &str) -> String {
        self.render_with(source, &Palette::PLAIN)
    }

    /// Like [`render`](Self::render), with ANSI colours in rustc's scheme, for
    /// terminals (the caller decides when, e.g. with `anstream`).
    pub fn render_colored(&self, source: &str) -> String {
        self.render_with(source, &Palette::ANSI)
    }

    fn render_with(&self, source: &str, p: &Palette) -> String {
        let mut out = String::new();
        let (sev, accent) = match self.severity {
            Severity::Error => ("error", p.error),
            Severity::Warning => ("warning", p.warning),
        };
        let (blue, bold, reset) = (p.gutter, p.bold, p.reset);
        out.push_str(&format!(
            "{accent}{sev}[{}]{reset}{bold}: {}{reset}\n",
            self.code, self.message
        ));
        let Some(span) = self.span else {
            out.push_str(&format!("  {blue}-->{reset} {}\n", self.file));
            if let Some(hint) = &self.hint {
                out.push_str(&format!("   {blue}={reset} {bold}help{reset}: {hint}\n"));
            }
            return out;
        };
        let gutter = span.line.to_string().len().max(2);
        let pad = " ".repeat(gutter);
        out.push_str(&format!(
            "{pad}{blue}-->{reset} {}:{}:{}\n",
            self.file, span.line, span.column
        ));
        out.push_str(&format!("{pad} {blue}|{reset}\n"));
        // The line is found from the span's offset (a scan of that line only,
        // not of every line before it), and only a window of it is looked at.
        let mut at = span.start.min(source.len());
        while !source.is_char_boundary(at) {
            at -= 1;
        }
        let line_start = source[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[at..].find('\n').map_or(source.len(), |i| at + i);
        let line = source[line_start..line_end].trim_end();
        let caret = (at - line_start).min(line.len());
        let long = line.len() > MAX_SHOWN && line.chars().nth(MAX_SHOWN).is_some();
        let (from, to) = if long {
            let from = back_chars(line, caret, MAX_SHOWN / 3);
            (from, forward_chars(line, from, MAX_SHOWN))
        } else {
            (0, line.len())
        };
        work::add(to - from);
        let span_end = span
            .end
            .saturating_sub(line_start)
            .clamp(caret, to.max(caret));
        // Underline at most to the end of the first line (a multi-line span, a
        // whole mapping, is shown by its first line) and of the window.
        let width = line[caret..span_end].chars().count().max(1);
        // Tabs become one space each so the caret line stays aligned.
        let mut shown: String = line[from..to]
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        let mut caret_at = line[from..caret].chars().count();
        if from > 0 {
            shown.insert(0, '…');
            caret_at += 1;
        }
        if to < line.len() {
            shown.push('…');
        }
        out.push_str(&format!("{blue}{:>gutter$} |{reset} {shown}\n", span.line));
        out.push_str(&format!(
            "{pad} {blue}|{reset} {}{accent}{}{reset}\n",
            " ".repeat(caret_at),
            "^".repeat(width)
        ));
        if let Some(hint) = &self.hint {
            out.push_str(&format!("{pad} {blue}={reset} {bold}help{reset}: {hint}\n"));
        }
        out
    }
}

/// ANSI escape sequences for rendering; empty strings for plain text.
struct Palette {
    error: &'static str,
    warning: &'static str,
    gutter: &'static str,
    bold: &'static str,
    reset: &'static str,
}

impl Palette {
    const PLAIN: Palette = Palette {
        error: "",
        warning: "",
        gutter: "",
        bold: "",
        reset: "",
    };
    const ANSI: Palette = Palette {
        error: "\x1b[1;31m",
        warning: "\x1b[1;33m",
        gutter: "\x1b[1;34m",
        bold: "\x1b[1m",
        reset: "\x1b[0m",
    };
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.span {
            Some(s) => write!(f, "{}:{}:{}: {}", self.file, s.line, s.column, self.message)?,
            None => write!(f, "{}: {}", self.file, self.message)?,
        }
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Every problem found in one file, in source order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.errors().count();
        write!(f, "pipeline has {errors} error(s)")?;
        for d in &self.0 {
            write!(f, "\n{d}")?;
        }
        Ok(())
    }
}

impl Diagnostics {
    /// The errors (not warnings).
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    /// Whether there is at least one error.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// Renders every diagnostic, separated by blank lines.
    pub fn render(&self, source: &str) -> String {
        self.0
            .iter()
            .map(|d| d.render(source))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sorts by position so output reads top to bottom.
    pub(crate) fn sort(&mut self) {
        self.0
            .sort_by_key(|d| d.span.map_or((usize::MAX, 0), |s| (s.start, s.end)));
    }
}

/// Collects a file's diagnostics up to a cap; past it only counts them, and
/// [`finish`](Self::finish) sums the rest up in one note.
#[derive(Debug)]
pub(crate) struct Collector {
    diags: Vec<Diagnostic>,
    max: usize,
    dropped: usize,
    dropped_error: bool,
}

impl Collector {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            diags: Vec::new(),
            max,
            dropped: 0,
            dropped_error: false,
        }
    }

    /// Whether the cap is reached: callers skip work that only serves a
    /// diagnostic's text (suggestions, positions), and call [`count`](Self::count).
    pub(crate) fn full(&self) -> bool {
        self.diags.len() >= self.max
    }

    /// Counts a diagnostic that is not kept.
    pub(crate) fn count(&mut self, severity: Severity) {
        self.dropped += 1;
        self.dropped_error |= severity == Severity::Error;
    }

    pub(crate) fn push(&mut self, d: Diagnostic) {
        if self.full() {
            self.count(d.severity);
        } else {
            self.diags.push(d);
        }
    }

    /// The diagnostics kept, then a note for those past the cap (an error when
    /// any of them is one, so the outcome does not depend on the cap).
    pub(crate) fn finish(mut self, file: &str) -> Vec<Diagnostic> {
        if self.dropped > 0 {
            let mut note = Diagnostic::error(
                "more-diagnostics",
                format!(
                    "{} more problem(s) not shown; at most {} are reported per file",
                    self.dropped, self.max
                ),
            )
            .with_hint("fix the problems shown and check the file again")
            .at(file, "", None);
            if !self.dropped_error {
                note.severity = Severity::Warning;
            }
            self.diags.push(note);
        }
        self.diags
    }
}

/// Longest word, in characters, for which a suggestion is looked for: typos are
/// made in names people type, and the cost of comparing grows with the length.
const MAX_SUGGEST_LEN: usize = 64;

/// Most candidates compared for one suggestion.
const MAX_CANDIDATES: usize = 1000;

/// The candidate closest to `word` by edit distance, when close enough to be a
/// plausible typo (at most a third of the word's length, at least 1).
///
/// The work is bounded whatever the input: words longer than 64 characters get
/// no suggestion, at most 1,000 candidates are compared, a candidate whose length
/// alone puts it out of reach is skipped, and a comparison stops as soon as it
/// cannot beat the best so far.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // Bytes first: a long word is refused without counting its characters.
    if word.len() > MAX_SUGGEST_LEN * 4 {
        return None;
    }
    let word: Vec<char> = word.chars().collect();
    if word.len() > MAX_SUGGEST_LEN {
        return None;
    }
    let limit = (word.len() / 3).max(1);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates.into_iter().take(MAX_CANDIDATES) {
        let reach = best.map_or(limit, |(d, _)| d.saturating_sub(1));
        // A candidate whose byte length is more than four times the longest
        // reachable character count cannot be within reach.
        if candidate.len() > (word.len() + reach) * 4 {
            continue;
        }
        let other: Vec<char> = candidate.chars().collect();
        if let Some(d) = levenshtein_within(&word, &other, reach) {
            best = Some((d, candidate));
            if d == 0 {
                break;
            }
        }
    }
    best.map(|(_, c)| c)
}

/// The edit distance between `a` and `b` when it is at most `max`. Only the
/// diagonal band of width `2 * max + 1` is computed, and the computation stops
/// at the first row whose every cell exceeds `max`.
fn levenshtein_within(a: &[char], b: &[char], max: usize) -> Option<usize> {
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    let out = max + 1;
    let mut prev: Vec<usize> = (0..=b.len()).map(|j| j.min(out)).collect();
    let mut cur = vec![out; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        let row = i + 1;
        let lo = row.saturating_sub(max).max(1);
        let hi = (row + max).min(b.len());
        cur[lo - 1] = if lo == 1 { row.min(out) } else { out };
        let mut row_min = cur[lo - 1];
        for j in lo..=hi {
            let cost = usize::from(*ca != b[j - 1]);
            let v = (prev[j - 1] + cost)
                .min(prev[j] + 1)
                .min(cur[j - 1] + 1)
                .min(out);
            cur[j] = v;
            row_min = row_min.min(v);
        }
        work::add((hi + 1).saturating_sub(lo));
        if row_min > max {
            return None;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let d = prev[b.len()];
    (d <= max).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colored_rendering_is_the_plain_text_plus_escapes() {
        let source = "name: p\ntiemout: 10m\n";
        let span = Span {
            start: 8,
            end: 15,
            line: 2,
            column: 1,
        };
        let d = Diagnostic::error("unknown-field", "unknown field `tiemout`")
            .with_hint("did you mean `timeout`?")
            .at("p.yaml", source, Some(span));
        let colored = d.render_colored(source);
        assert!(colored.contains("\x1b[1;31merror[unknown-field]"));
        let mut stripped = String::new();
        let mut rest = colored.as_str();
        while let Some(i) = rest.find('\x1b') {
            stripped.push_str(&rest[..i]);
            rest = rest[i..].split_once('m').map_or("", |(_, r)| r);
        }
        stripped.push_str(rest);
        assert_eq!(stripped, d.render(source));
        assert!(stripped.contains(" 2 | tiemout: 10m\n   | ^^^^^^^\n"));
    }

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(
            did_you_mean("tiemout", ["timeout", "retries"]),
            Some("timeout")
        );
        assert_eq!(did_you_mean("zzz", ["timeout", "retries"]), None);
    }
}
