//! Checks a step's `with` config against the JSON Schema its biz declares.
//!
//! The model does not know which bizes are installed: the caller passes a
//! lookup from `uses` to schema, so this works the same in `cargo ark`, in the
//! CLI and in the engine. Schemas are checked by the `jsonschema` crate (draft
//! 2020-12 unless the schema says otherwise, `$ref` and `$defs` resolved: what
//! `schemars` emits for enums and nested structs), and its errors are worded
//! for a pipeline author: `unknown setting`, `required setting … is missing`,
//! `must be one of`, with a did-you-mean where one fits. A string holding a
//! `${{ … }}` interpolation is only known at run time, so a value that holds one
//! is not checked (its keys still are).

use std::collections::HashMap;

use jsonschema::error::ValidationErrorKind;
use jsonschema::paths::LocationSegment;
use serde_json::Value;

use crate::model::decode::SourceMap;
use crate::model::diagnostic::{Collector, Diagnostic, did_you_mean};
use crate::model::pipeline::{PipelineSpec, Uses};

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

/// Whether `v` is, or holds, a string with a `${{ … }}` interpolation.
fn holds_template(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("${{"),
        Value::Array(items) => items.iter().any(holds_template),
        Value::Object(map) => map.values().any(holds_template),
        _ => false,
    }
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A compiled schema, to check many values against.
pub struct ConfigSchema {
    schema: Value,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for ConfigSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSchema")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl ConfigSchema {
    /// Compiles `schema`.
    ///
    /// # Errors
    ///
    /// What makes it an invalid JSON Schema.
    pub fn new(schema: &Value) -> Result<ConfigSchema, String> {
        let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        Ok(ConfigSchema {
            schema: schema.clone(),
            validator,
        })
    }

    /// Checks `value`, collecting every violation.
    pub fn check(&self, value: &Value) -> Vec<SchemaViolation> {
        let mut out = Vec::new();
        for error in self.validator.iter_errors(value) {
            self.describe(&error, &mut out);
        }
        out
    }

    /// Words one error of the validator for a pipeline author.
    fn describe(&self, error: &jsonschema::ValidationError<'_>, out: &mut Vec<SchemaViolation>) {
        {
            let path = instance_path(error.instance_path());
            let at_keys = matches!(
                error.kind(),
                ValidationErrorKind::AdditionalProperties { .. }
                    | ValidationErrorKind::Required { .. }
            );
            if !at_keys && holds_template(error.instance()) {
                return;
            }
            // The schema object holding the failed keyword.
            let keyword_at = error.schema_path().as_str();
            let parent = keyword_at.rsplit_once('/').map_or("", |(parent, _)| parent);
            let node = self.schema.pointer(parent);
            let named = if path.is_empty() {
                "with"
            } else {
                path.as_str()
            };
            match error.kind() {
                ValidationErrorKind::AdditionalProperties { unexpected } => {
                    let known: Vec<&str> = node
                        .and_then(|n| n.get("properties"))
                        .and_then(Value::as_object)
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    for key in unexpected {
                        let hint = match did_you_mean(key, known.iter().copied()) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None if known.is_empty() => "this step takes no settings".to_owned(),
                            None => format!("settings are: {}", known.join(", ")),
                        };
                        out.push(SchemaViolation {
                            path: child(&path, key),
                            message: format!("unknown setting `{key}`"),
                            hint: Some(hint),
                        });
                    }
                }
                ValidationErrorKind::Required { property } => {
                    let key = property.as_str().unwrap_or_default();
                    out.push(SchemaViolation {
                        path: path.clone(),
                        message: format!("required setting `{}` is missing", child(&path, key)),
                        hint: Some(if path.is_empty() {
                            format!("add `{key}:` under `with`")
                        } else {
                            format!("add `{key}:` under `{path}`")
                        }),
                    });
                }
                ValidationErrorKind::Type { .. } => {
                    let types = match node.and_then(|n| n.get("type")) {
                        Some(Value::String(t)) => t.clone(),
                        Some(Value::Array(ts)) => ts
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" or "),
                        _ => "of another type".to_owned(),
                    };
                    out.push(SchemaViolation {
                        path: path.clone(),
                        message: format!(
                            "`{named}` must be {types}, found {}",
                            type_of(error.instance())
                        ),
                        hint: None,
                    });
                }
                ValidationErrorKind::Enum { options } => {
                    let options = options.as_array().map(Vec::as_slice).unwrap_or_default();
                    let names: Vec<String> = options.iter().map(Value::to_string).collect();
                    let suggestion = error
                        .instance()
                        .as_str()
                        .and_then(|s| did_you_mean(s, options.iter().filter_map(Value::as_str)));
                    out.push(SchemaViolation {
                        path: path.clone(),
                        message: format!("`{named}` must be one of {}", names.join(", ")),
                        hint: suggestion.map(|s| format!("did you mean `{s}`?")),
                    });
                }
                ValidationErrorKind::Constant { expected_value } => out.push(SchemaViolation {
                    path: path.clone(),
                    message: format!("`{named}` must be {expected_value}"),
                    hint: None,
                }),
                ValidationErrorKind::Minimum { limit } => out.push(SchemaViolation {
                    path: path.clone(),
                    message: format!("`{named}` must be at least {limit}"),
                    hint: None,
                }),
                ValidationErrorKind::Maximum { limit } => out.push(SchemaViolation {
                    path: path.clone(),
                    message: format!("`{named}` must be at most {limit}"),
                    hint: None,
                }),
                ValidationErrorKind::AnyOf { context }
                | ValidationErrorKind::OneOfNotValid { context } => {
                    // Of the alternatives (`Option<T>` is `anyOf: [T, null]`), the
                    // one the value was meant for is not one it fails only by its
                    // type: say what is wrong inside that one.
                    let only_type = |branch: &Vec<jsonschema::ValidationError<'static>>| {
                        branch.iter().all(|e| {
                            matches!(e.kind(), ValidationErrorKind::Type { .. })
                                && e.instance_path() == error.instance_path()
                        })
                    };
                    // `schemars` writes an enum with documented variants as a
                    // `oneOf` of `const`s: say which values are allowed.
                    let constants: Option<Vec<&Value>> = context
                        .iter()
                        .map(|branch| match branch.as_slice() {
                            [e] if e.instance_path() == error.instance_path() => match e.kind() {
                                ValidationErrorKind::Constant { expected_value } => {
                                    Some(vec![&**expected_value])
                                }
                                ValidationErrorKind::Enum { options } => {
                                    options.as_array().map(|o| o.iter().collect())
                                }
                                _ => None,
                            },
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()
                        .map(|all| all.into_iter().flatten().collect());
                    if let Some(allowed) = constants.filter(|a| !a.is_empty()) {
                        let names: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
                        let suggestion = error.instance().as_str().and_then(|s| {
                            did_you_mean(s, allowed.iter().filter_map(|v| v.as_str()))
                        });
                        out.push(SchemaViolation {
                            path: path.clone(),
                            message: format!("`{named}` must be one of {}", names.join(", ")),
                            hint: suggestion.map(|s| format!("did you mean `{s}`?")),
                        });
                        return;
                    }
                    match context
                        .iter()
                        .filter(|branch| !branch.is_empty() && !only_type(branch))
                        .min_by_key(|branch| branch.len())
                    {
                        Some(branch) => {
                            for e in branch {
                                self.describe(e, out);
                            }
                        }
                        None => out.push(SchemaViolation {
                            path: path.clone(),
                            message: format!(
                                "`{named}` does not fit any of the forms it may take (found {})",
                                type_of(error.instance())
                            ),
                            hint: None,
                        }),
                    }
                }
                _ => out.push(SchemaViolation {
                    path: path.clone(),
                    message: format!("`{named}`: {error}"),
                    hint: None,
                }),
            }
        }
    }
}

/// `ports[1].name` from a JSON pointer's segments.
fn instance_path(location: &jsonschema::paths::Location) -> String {
    let mut out = String::new();
    for segment in location {
        match segment {
            LocationSegment::Property(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key);
            }
            LocationSegment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Checks `value` against `schema`, collecting every violation; a schema that
/// is not valid JSON Schema is one violation saying so.
pub fn check_value(schema: &Value, value: &Value) -> Vec<SchemaViolation> {
    match ConfigSchema::new(schema) {
        Ok(schema) => schema.check(value),
        Err(e) => vec![invalid_schema(&e)],
    }
}

fn invalid_schema(error: &str) -> SchemaViolation {
    SchemaViolation {
        path: String::new(),
        message: format!("its config schema is not a valid JSON Schema ({error}), so `with` cannot be checked"),
        hint: Some("this is a fault of the biz: report it to its author, or rebuild it with `cargo ark package`".to_owned()),
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
    // Each distinct schema is compiled once per pipeline.
    let mut compiled: HashMap<String, Result<ConfigSchema, String>> = HashMap::new();
    for (path, step) in steps {
        let Some(uses) = &step.uses else { continue };
        let Some(schema) = schema_for(uses) else {
            continue;
        };
        let checker = compiled
            .entry(schema.to_string())
            .or_insert_with(|| ConfigSchema::new(&schema));
        let with: serde_json::Map<String, Value> = step.with.clone().into_iter().collect();
        let violations = match checker {
            Ok(checker) => checker.check(&Value::Object(with)),
            Err(e) => vec![invalid_schema(e)],
        };
        for v in violations {
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
                    format!("step `{}` ({uses}): {}", step.name, v.message),
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
