//! Checks a step's `with` config against the JSON schema its biz declares.
//!
//! The model does not know which bizes are installed: the caller passes a
//! lookup from `uses` to schema, so this works the same in `cargo ark`, in the
//! CLI and in the engine. The checker covers the JSON Schema keywords step
//! configs use (`type`, `properties`, `required`, `additionalProperties`,
//! `enum`, `const`, `items`, `minimum`, `maximum`); others are ignored rather
//! than guessed at. A string holding a `${{ … }}` interpolation is only known
//! at run time, so it is not checked against `type`, `enum` or `const`.

use serde_json::Value;

use crate::model::decode::SourceMap;
use crate::model::diagnostic::{Collector, Diagnostic, did_you_mean};
use crate::model::pipeline::{PipelineSpec, Uses};

/// Nested schemas deeper than this are not followed; real step schemas are shallow.
const MAX_DEPTH: usize = 32;

/// One mismatch between a value and a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// Dotted path below `with` (`image`, `ports[0]`); empty for `with` itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub hint: Option<String>,
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, v: &Value) -> bool {
    let actual = type_of(v);
    actual == expected || (expected == "number" && actual == "integer")
}

fn is_template(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.contains("${{"))
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Checks `value` against `schema`, collecting every violation.
pub fn check_value(schema: &Value, value: &Value) -> Vec<SchemaViolation> {
    let mut out = Vec::new();
    check(schema, value, "", 0, &mut out);
    out
}

fn check(schema: &Value, value: &Value, path: &str, depth: usize, out: &mut Vec<SchemaViolation>) {
    let Some(schema) = schema.as_object() else {
        if schema == &Value::Bool(false) {
            out.push(SchemaViolation {
                path: path.to_owned(),
                message: "no value is allowed here".into(),
                hint: None,
            });
        }
        return;
    };
    if depth > MAX_DEPTH {
        return;
    }
    let templated = is_template(value);
    if !templated {
        let types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| type_matches(t, value)) {
            out.push(SchemaViolation {
                path: path.to_owned(),
                message: format!(
                    "`{}` must be {}, found {}",
                    if path.is_empty() { "with" } else { path },
                    types.join(" or "),
                    type_of(value)
                ),
                hint: None,
            });
            return;
        }
        if let Some(Value::Array(options)) = schema.get("enum")
            && !options.contains(value)
        {
            let names: Vec<String> = options.iter().map(Value::to_string).collect();
            let suggestion = value
                .as_str()
                .and_then(|s| did_you_mean(s, options.iter().filter_map(Value::as_str)));
            out.push(SchemaViolation {
                path: path.to_owned(),
                message: format!("`{path}` must be one of {}", names.join(", ")),
                hint: suggestion.map(|s| format!("did you mean `{s}`?")),
            });
        }
        if let Some(c) = schema.get("const")
            && c != value
        {
            out.push(SchemaViolation {
                path: path.to_owned(),
                message: format!("`{path}` must be {c}"),
                hint: None,
            });
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && n < min
            {
                out.push(SchemaViolation {
                    path: path.to_owned(),
                    message: format!("`{path}` must be at least {min}"),
                    hint: None,
                });
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && n > max
            {
                out.push(SchemaViolation {
                    path: path.to_owned(),
                    message: format!("`{path}` must be at most {max}"),
                    hint: None,
                });
            }
        }
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            if let Some(Value::Array(required)) = schema.get("required") {
                for key in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(key) {
                        out.push(SchemaViolation {
                            path: path.to_owned(),
                            message: format!("required setting `{}` is missing", child(path, key)),
                            hint: Some(format!("add `{key}:` under `with`")),
                        });
                    }
                }
            }
            for (k, v) in map {
                let p = child(path, k);
                match props.and_then(|props| props.get(k)) {
                    Some(sub) => check(sub, v, &p, depth + 1, out),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            let known = props
                                .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>())
                                .unwrap_or_default();
                            let hint = match did_you_mean(k, known.iter().copied()) {
                                Some(s) => format!("did you mean `{s}`?"),
                                None if known.is_empty() => {
                                    "this step takes no settings".to_owned()
                                }
                                None => format!("settings are: {}", known.join(", ")),
                            };
                            out.push(SchemaViolation {
                                path: p,
                                message: format!("unknown setting `{k}`"),
                                hint: Some(hint),
                            });
                        }
                        Some(sub @ Value::Object(_)) => check(sub, v, &p, depth + 1, out),
                        _ => {}
                    },
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(sub, item, &format!("{path}[{i}]"), depth + 1, out);
                }
            }
        }
        _ => {}
    }
}

/// Checks every step's `with` against the schema `schema_for` gives for its
/// `uses` (`None`: unknown biz, not checked — a `uses` may be installed later).
/// `map` locates the diagnostics ([`SourceMap::detached`] for none).
pub fn validate_with_schemas(
    spec: &PipelineSpec,
    map: &SourceMap,
    schema_for: &dyn Fn(&Uses) -> Option<Value>,
) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let steps = spec
        .stages
        .iter()
        .enumerate()
        .flat_map(|(i, st)| {
            st.steps
                .iter()
                .enumerate()
                .map(move |(j, s)| (format!("stages[{i}].steps[{j}]"), s))
        })
        .chain(
            spec.finally
                .iter()
                .enumerate()
                .map(|(j, s)| (format!("finally[{j}]"), s)),
        );
    for (path, step) in steps {
        let Some(schema) = schema_for(&step.uses) else {
            continue;
        };
        let with: serde_json::Map<String, Value> = step.with.clone().into_iter().collect();
        for v in check_value(&schema, &Value::Object(with)) {
            let full = if v.path.is_empty() {
                format!("{path}.with")
            } else {
                format!("{path}.with.{}", v.path)
            };
            // Missing settings have no node of their own: point at `with`, or at
            // `uses` when the step has no `with` at all.
            let key_span = if v.message.starts_with("unknown setting") {
                map.span(&format!("{full}{}", crate::model::decode::KEY_SUFFIX))
            } else {
                None
            };
            let span = key_span
                .or_else(|| map.span(&full))
                .or_else(|| map.span(&format!("{path}.with")))
                .or_else(|| map.span(&format!("{path}.uses")));
            let mut d = map.locate(
                Diagnostic::error(
                    "config-schema",
                    format!("step `{}` ({}): {}", step.name, step.uses, v.message),
                ),
                span,
            );
            d.hint = v.hint;
            diags.push(d);
        }
    }
    let mut diags = crate::model::Diagnostics(diags);
    diags.sort();
    // As many as the parser reports at most, then a note for the rest.
    let mut capped = Collector::new(crate::model::Limits::default().max_diagnostics);
    for d in diags.0 {
        capped.push(d);
    }
    capped.finish(&map.file)
}
