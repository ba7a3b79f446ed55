//! Diagnostics: positioned errors that render like rustc's on a terminal and
//! serialize to JSON for tools.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest part of a source line shown in a rendered diagnostic.
const MAX_SHOWN: usize = 120;

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
    /// quoted scalars on one line), which the caller checks.
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
            self.text = text
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end()
                .to_owned();
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
        let line_text = source
            .lines()
            .nth(span.line.saturating_sub(1))
            .unwrap_or_default();
        // Tabs become one space each so the caret line stays aligned.
        let line: Vec<char> = line_text
            .trim_end()
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        let start_col = span.column.saturating_sub(1).min(line.len());
        let span_chars = source
            .get(span.start..span.end)
            .map_or(1, |s| s.chars().count());
        // Underline at most to the end of the first line: a multi-line span
        // (a whole mapping) is shown by its first line.
        let width = span_chars.min(line.len().saturating_sub(start_col)).max(1);
        // Show a window of a long line around the span so the caret stays on screen.
        let from = if line.len() > MAX_SHOWN {
            start_col.saturating_sub(MAX_SHOWN / 3)
        } else {
            0
        };
        let to = line.len().min(from + MAX_SHOWN);
        let mut shown: String = line
            .get(from..to)
            .map(|c| c.iter().collect())
            .unwrap_or_default();
        let mut caret_at = start_col - from;
        if from > 0 {
            shown.insert(0, '…');
            caret_at += 1;
        }
        if to < line.len() {
            shown.push('…');
        }
        let width = width.min((to - start_col.min(to)).max(1));
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

/// The candidate closest to `word` by edit distance, when close enough to be a
/// plausible typo (at most a third of the word's length, at least 1).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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
