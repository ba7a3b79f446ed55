//! A YAML tree that keeps positions (built from `saphyr-parser` events), and a
//! small emitter for writing resources back as YAML.

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

use crate::model::diagnostic::Span;
use crate::model::limits::{Counted, Limits};
use crate::model::position::SourceIndex;

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
    index: &'a SourceIndex,
}

impl Positions<'_> {
    fn byte(&self, m: Marker) -> usize {
        self.index.byte_of_char(self.source, m.index())
    }

    /// Line and column are computed from the byte offset rather than taken from
    /// the marker, so they agree with the offsets whatever the parser's notion
    /// of columns in flow collections.
    fn span(&self, start: Marker, end: Marker) -> Span {
        let s = self.byte(start);
        let (line, column) = self.index.line_column(self.source, s);
        Span {
            start: s,
            end: self.byte(end).max(s),
            line,
            column,
        }
    }
}

/// A collection being read, with the key it is the value of (`[]` for a list
/// item) and which capped list it is, if any.
struct Frame {
    kind: FrameKind,
    span: Span,
    key: String,
    counted: Option<Counted>,
}

enum FrameKind {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

/// The first list that went over its cap while loading.
#[derive(Debug, Clone)]
pub(crate) struct Exceeded {
    pub(crate) what: Counted,
    /// How many items the list holds (all of them: counting goes on to the end
    /// of the file, without building the tree).
    pub(crate) count: usize,
    /// Whether the count stopped short of the end of the file (a syntax error
    /// after the cap was reached), so the file holds at least `count`.
    pub(crate) at_least: bool,
    pub(crate) limit: usize,
    /// The first item over the cap.
    pub(crate) span: Span,
}

/// What [`load`] found.
pub(crate) enum Loaded {
    /// The document's tree; `None` for an empty file.
    Tree(Option<Node>),
    /// A list went over its cap; no tree was kept.
    Exceeded(Exceeded),
}

/// Parses one YAML document into a tree, counting the items of the capped lists
/// of a pipeline as it goes. At the first item over a cap it stops building the
/// tree and only counts to the end, so a hostile file costs its parse and no
/// more memory than its nesting.
pub(crate) fn load(
    source: &str,
    index: &SourceIndex,
    limits: &Limits,
) -> Result<Loaded, SyntaxError> {
    let pos = Positions { source, index };
    let mut parser = Parser::new_from_str(source);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    let mut counts = [0usize; Counted::ALL.len()];
    let mut exceeded: Option<Exceeded> = None;
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(ok) => ok,
            Err(e) => {
                if let Some(mut ex) = exceeded {
                    ex.at_least = true;
                    return Ok(Loaded::Exceeded(ex));
                }
                return Err(SyntaxError {
                    message: e.info().to_owned(),
                    span: pos.span(*e.marker(), *e.marker()),
                });
            }
        };
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
                let key = match stack.last() {
                    Some(Frame {
                        kind: FrameKind::Map(_, Some(key)),
                        ..
                    }) => key.scalar_text().unwrap_or("?").to_owned(),
                    Some(Frame {
                        kind: FrameKind::Map(_, None),
                        ..
                    }) => "?".to_owned(),
                    _ => "[]".to_owned(),
                };
                let is_seq = matches!(event, Event::SequenceStart(..));
                // Only lists near the root can be capped ones.
                let counted = if is_seq && stack.len() <= 4 {
                    let path: Vec<&str> = stack
                        .iter()
                        .skip(1)
                        .map(|f| f.key.as_str())
                        .chain(std::iter::once(key.as_str()))
                        .collect();
                    Counted::of_path(&path)
                } else {
                    None
                };
                stack.push(Frame {
                    kind: if is_seq {
                        FrameKind::Seq(Vec::new())
                    } else {
                        FrameKind::Map(Vec::new(), None)
                    },
                    span,
                    key,
                    counted,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => stack.pop().map(|frame| {
                let span = join(frame.span, span);
                match frame.kind {
                    FrameKind::Seq(items) => Node {
                        kind: NodeKind::Seq(items),
                        span,
                    },
                    FrameKind::Map(entries, _) => Node {
                        kind: NodeKind::Map(entries),
                        span,
                    },
                }
            }),
            _ => None,
        };
        let Some(node) = done else { continue };
        let Some(parent) = stack.last_mut() else {
            root = Some(node);
            continue;
        };
        if let Some(what) = parent.counted {
            let count = &mut counts[what as usize];
            *count += 1;
            let limit = what.limit(limits);
            if *count > limit && exceeded.is_none() {
                exceeded = Some(Exceeded {
                    what,
                    count: *count,
                    at_least: false,
                    limit,
                    span: node.span,
                });
            }
            if let Some(ex) = exceeded.as_mut()
                && ex.what == what
            {
                ex.count = *count;
            }
        }
        match &mut parent.kind {
            // Past a cap only keys are kept (for the paths of lists below them).
            FrameKind::Seq(_) if exceeded.is_some() => {}
            FrameKind::Seq(items) => items.push(node),
            FrameKind::Map(entries, pending) => match pending.take() {
                Some(_) if exceeded.is_some() => {}
                Some(key) => entries.push((key, node)),
                None => *pending = Some(node),
            },
        }
    }
    Ok(match exceeded {
        Some(ex) => Loaded::Exceeded(ex),
        None => Loaded::Tree(root),
    })
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

#[cfg(test)]
mod example_tests {
    use super::*;

    /// Every pipeline file under `examples/` is valid against the published
    /// JSON Schema (`schema/pipeline.schema.json`, what editors check with),
    /// as well as against the decoder (other tests).
    #[test]
    fn every_example_pipeline_is_valid_against_the_published_schema() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let schema: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("schema/pipeline.schema.json")).expect("schema"),
        )
        .expect("the schema is JSON");
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        let mut files = Vec::new();
        let mut dirs = vec![root.join("examples")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("reads").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    if path.file_name().is_some_and(|n| n != "target") {
                        dirs.push(path);
                    }
                } else if path.extension().is_some_and(|e| e == "yaml")
                    && path.components().any(|c| c.as_os_str() == "pipelines")
                {
                    files.push(path);
                }
            }
        }
        assert!(files.len() >= 10, "found only {files:?}");
        for file in files {
            let source = std::fs::read_to_string(&file).expect("reads");
            let index = SourceIndex::new(&source);
            let Ok(Loaded::Tree(Some(tree))) = load(&source, &index, &Limits::default()) else {
                panic!("{} does not parse", file.display());
            };
            let value = tree.to_json();
            let problems: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                problems.is_empty(),
                "{} is not valid against schema/pipeline.schema.json: {problems:#?}",
                file.display()
            );
        }
    }
}
