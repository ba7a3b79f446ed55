//! A YAML tree that keeps positions (built from `saphyr-parser` events), and a
//! small emitter for writing resources back as YAML.

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

use crate::model::diagnostic::Span;

/// Nesting deeper than this is refused: no pipeline needs it, and it keeps the
/// recursive decoder's stack use bounded on hostile input.
const MAX_DEPTH: usize = 64;

/// A YAML node with its source span.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub(crate) kind: NodeKind,
    pub(crate) span: Span,
}

/// The shape of a node.
#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    /// A scalar; `quoted` is false only for plain scalars, which are the only ones
    /// YAML resolves to null/bool/number.
    Scalar {
        value: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A short name of the node's type for messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { value, quoted } if !quoted => match plain_scalar(value) {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                _ => "a string",
            },
            NodeKind::Scalar { .. } => "a string",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }

    /// Whether the node is a plain `null`/`~`/empty scalar.
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, quoted: false } if plain_scalar(value).is_null())
    }

    /// The node as a JSON value (YAML 1.2 core schema resolution of plain scalars).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            NodeKind::Scalar {
                value,
                quoted: false,
            } => plain_scalar(value),
            NodeKind::Scalar {
                value,
                quoted: true,
            } => serde_json::Value::String(value.clone()),
            NodeKind::Seq(items) => items.iter().map(Node::to_json).collect(),
            NodeKind::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.scalar_text().unwrap_or_default().to_owned(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }

    /// The text of a scalar.
    pub(crate) fn scalar_text(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Byte offset of the scalar's value inside its span, when the value is the
    /// source text verbatim (so positions inside it can be mapped back).
    pub(crate) fn verbatim_offset(&self, source: &str) -> Option<usize> {
        let NodeKind::Scalar { value, .. } = &self.kind else {
            return None;
        };
        let text = source.get(self.span.start..self.span.end)?;
        if text == value {
            Some(0)
        } else if text.len() == value.len() + 2
            && text.get(1..text.len() - 1) == Some(value.as_str())
        {
            Some(1)
        } else {
            None
        }
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub(crate) fn plain_scalar(s: &str) -> serde_json::Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => serde_json::Value::Null,
        "true" | "True" | "TRUE" => serde_json::Value::Bool(true),
        "false" | "False" | "FALSE" => serde_json::Value::Bool(false),
        _ => {
            let looks_numeric =
                s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.');
            if looks_numeric {
                if let Ok(i) = s.parse::<i64>() {
                    return i.into();
                }
                if let Ok(f) = s.parse::<f64>()
                    && f.is_finite()
                    && let Some(n) = serde_json::Number::from_f64(f)
                {
                    return n.into();
                }
            }
            serde_json::Value::String(s.to_owned())
        }
    }
}

/// A YAML syntax error.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub(crate) message: String,
    pub(crate) span: Span,
}

/// Maps parser markers (character indexes) to byte spans.
struct Positions<'a> {
    source: &'a str,
    /// Byte offset of each character; empty when the source is ASCII.
    char_bytes: Vec<usize>,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

impl<'a> Positions<'a> {
    fn new(source: &'a str) -> Self {
        let char_bytes = if source.is_ascii() {
            Vec::new()
        } else {
            source.char_indices().map(|(i, _)| i).collect()
        };
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            source,
            char_bytes,
            line_starts,
        }
    }

    fn byte(&self, m: Marker) -> usize {
        if self.char_bytes.is_empty() {
            m.index().min(self.source.len())
        } else {
            self.char_bytes
                .get(m.index())
                .copied()
                .unwrap_or(self.source.len())
        }
    }

    /// Line and column are computed from the byte offset rather than taken from
    /// the marker, so they agree with the offsets whatever the parser's notion
    /// of columns in flow collections.
    fn span(&self, start: Marker, end: Marker) -> Span {
        let s = self.byte(start);
        let line = self.line_starts.partition_point(|&ls| ls <= s).max(1);
        let line_start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let column = self
            .source
            .get(line_start..s)
            .map_or(1, |t| t.chars().count() + 1);
        Span {
            start: s,
            end: self.byte(end).max(s),
            line,
            column,
        }
    }
}

enum Frame {
    Seq(Vec<Node>, Span),
    Map(Vec<(Node, Node)>, Option<Node>, Span),
}

/// Parses one YAML document into a tree. `Ok(None)` for an empty file.
pub(crate) fn load(source: &str) -> Result<Option<Node>, SyntaxError> {
    let pos = Positions::new(source);
    let mut parser = Parser::new_from_str(source);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| SyntaxError {
            message: e.info().to_owned(),
            span: pos.span(*e.marker(), *e.marker()),
        })?;
        let span = pos.span(span.start, span.end);
        let done = match event {
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        message: "a pipeline file holds one YAML document; found a second `---`"
                            .into(),
                        span,
                    });
                }
                None
            }
            Event::Alias(_) => {
                return Err(SyntaxError {
                    message: "YAML aliases (`*name`) are not supported in pipeline files".into(),
                    span,
                });
            }
            Event::Scalar(value, style, _, _) => {
                // In flow collections the parser's end marker can sit after
                // trailing blanks; trim them so underlines cover the value only.
                let text = source.get(span.start..span.end).unwrap_or_default();
                let end = span.start + text.trim_end().len();
                Some(Node {
                    kind: NodeKind::Scalar {
                        value: value.into_owned(),
                        quoted: style != ScalarStyle::Plain,
                    },
                    span: Span { end, ..span },
                })
            }
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError {
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                        span,
                    });
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq(Vec::new(), span)
                } else {
                    Frame::Map(Vec::new(), None, span)
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(items, start)) => Some(Node {
                    kind: NodeKind::Seq(items),
                    span: join(start, span),
                }),
                Some(Frame::Map(entries, _, start)) => Some(Node {
                    kind: NodeKind::Map(entries),
                    span: join(start, span),
                }),
                None => None,
            },
            _ => None,
        };
        if let Some(node) = done {
            match stack.last_mut() {
                Some(Frame::Seq(items, _)) => items.push(node),
                Some(Frame::Map(entries, pending, _)) => match pending.take() {
                    Some(key) => entries.push((key, node)),
                    None => *pending = Some(node),
                },
                None => root = Some(node),
            }
        }
    }
    Ok(root)
}

fn join(start: Span, end: Span) -> Span {
    Span {
        end: end.end.max(start.start),
        ..start
    }
}

/// Writes a JSON value as block-style YAML. Strings are always double-quoted
/// (JSON escaping is valid YAML), so no value changes type on the way back.
pub fn to_yaml_string(value: &serde_json::Value) -> String {
    let mut out = String::new();
    match value {
        serde_json::Value::Object(m) if !m.is_empty() => emit_map(m, 0, &mut out),
        serde_json::Value::Array(a) if !a.is_empty() => emit_seq(a, 0, &mut out),
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

fn inline(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) if m.is_empty() => "{}".into(),
        serde_json::Value::Array(a) if a.is_empty() => "[]".into(),
        // JSON is a subset of YAML's flow style, so any scalar prints as JSON.
        other => other.to_string(),
    }
}

fn is_block(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => !m.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn key_text(k: &str) -> String {
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(
            plain_scalar(k),
            serde_json::Value::Null | serde_json::Value::Bool(_)
        );
    if plain {
        k.to_owned()
    } else {
        serde_json::Value::String(k.to_owned()).to_string()
    }
}

/// Longest key written in the implicit `key: value` form (YAML allows 1024
/// characters; this leaves room for the quotes).
const MAX_IMPLICIT_KEY: usize = 1000;

fn emit_map(m: &serde_json::Map<String, serde_json::Value>, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for (k, v) in m {
        let key = key_text(k);
        if key.chars().count() > MAX_IMPLICIT_KEY {
            // YAML caps implicit keys at 1024 characters; longer ones need the
            // explicit `? key` form to read back.
            out.push_str(&format!("{pad}? {key}\n{pad}:"));
        } else {
            out.push_str(&format!("{pad}{key}:"));
        }
        if is_block(v) {
            out.push('\n');
            match v {
                serde_json::Value::Object(inner) => emit_map(inner, indent + 2, out),
                serde_json::Value::Array(items) => emit_seq(items, indent + 2, out),
                _ => {}
            }
        } else {
            out.push_str(&format!(" {}\n", inline(v)));
        }
    }
}

fn emit_seq(items: &[serde_json::Value], indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    for item in items {
        if is_block(item) {
            let mut nested = String::new();
            match item {
                serde_json::Value::Object(inner) => emit_map(inner, indent + 2, &mut nested),
                serde_json::Value::Array(inner) => emit_seq(inner, indent + 2, &mut nested),
                _ => {}
            }
            // The first line of the nested block goes on the dash's line.
            out.push_str(&pad);
            out.push_str("- ");
            out.push_str(nested.get(indent + 2..).unwrap_or_default());
        } else {
            out.push_str(&format!("{pad}- {}\n", inline(item)));
        }
    }
}
