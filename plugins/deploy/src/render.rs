//! Rendering a bundle: `{{ name }}` placeholders filled from `values`, files
//! joined into one multi-document YAML stream, and the resources it declares
//! (`kind` and `metadata.name`/`namespace` of each document) read back.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// One resource a rendered stream declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `kind`, e.g. `Deployment`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, when the document sets it.
    pub namespace: Option<String>,
}

impl Resource {
    /// `Kind/name`, as outputs name it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// Whether `kubectl rollout status` applies to it.
    pub fn rolls_out(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "Deployment" | "StatefulSet" | "DaemonSet"
        )
    }
}

/// Whether a bundle file is a manifest: `.yaml`, `.yml` or `.json` (one
/// object, or a `…List` of them).
pub fn is_manifest(name: &str) -> bool {
    [".yaml", ".yml", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Fills every `{{ name }}` (spaces inside the braces optional; names of
/// letters, digits, `_`, `-` and `.`) from `values`. A placeholder without a
/// value is an error naming it and the file; other `{{` text is left as it is.
pub fn substitute(
    file: &str,
    text: &str,
    values: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut missing = BTreeSet::new();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = after[..end].trim();
        let is_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if is_name {
            match values.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    missing.insert(name.to_owned());
                }
            }
        } else {
            out.push_str(&rest[start..start + 2 + end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "{file} uses {} but `values` has no such entry; add {} to `values`",
            missing
                .iter()
                .map(|m| format!("`{{{{ {m} }}}}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        ))
    }
}

/// Joins rendered files (in name order) into one YAML stream. A `.json`
/// manifest becomes one document per object (each item of a `…List`), written
/// as a one-line JSON flow mapping (JSON is YAML), so that kubectl reads it
/// in the stream and [`resources`] reads it back.
pub fn join(files: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    for (name, text) in files {
        out.push_str(&format!("---\n# Source: {name}\n"));
        if name.ends_with(".json") {
            let value: Value = serde_json::from_str(text)
                .map_err(|e| format!("{name} is not a JSON manifest: {e}"))?;
            let objects = match value.get("items").and_then(Value::as_array) {
                Some(items)
                    if value
                        .get("kind")
                        .and_then(Value::as_str)
                        .is_some_and(|k| k.ends_with("List")) =>
                {
                    items.clone()
                }
                _ => vec![value],
            };
            for (i, object) in objects.iter().enumerate() {
                if i > 0 {
                    out.push_str(&format!("---\n# Source: {name}\n"));
                }
                out.push_str(&flow(object));
                out.push('\n');
            }
            continue;
        }
        let text = text
            .strip_prefix("---\r\n")
            .or_else(|| text.strip_prefix("---\n"))
            .unwrap_or(text);
        out.push_str(text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// A JSON value on one line with a space after each `:` and `,` (a YAML flow
/// collection that YAML 1.1 parsers, as kubectl's, read too).
fn flow(value: &Value) -> String {
    struct Flow;
    impl serde_json::ser::Formatter for Flow {
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
        ) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }
    }
    let mut bytes = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut bytes, Flow);
    // Serialising a `Value` into memory cannot fail.
    if serde::Serialize::serialize(value, &mut serializer).is_err() {
        return value.to_string();
    }
    String::from_utf8(bytes).unwrap_or_else(|_| value.to_string())
}

/// One document of a rendered stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Its text (lines without their `\r`), ending with a newline.
    pub text: String,
    /// The resource it declares, when it has `kind` and `metadata.name`.
    pub resource: Option<Resource>,
}

/// The resources a YAML stream declares, in order (see [`documents`]).
pub fn resources(stream: &str) -> Vec<Resource> {
    documents(stream)
        .into_iter()
        .filter_map(|d| d.resource)
        .collect()
}

/// The documents of a YAML stream that hold more than comments, each with
/// the resource it declares: its top-level `kind` and its `metadata`'s `name`
/// and `namespace`, read from block style (as manifests and `helm template`
/// write them) or from a JSON document. Documents are split as kubectl splits
/// them: at a line of `---` followed by nothing but spaces or a comment; LF
/// and CRLF line ends alike.
pub fn documents(stream: &str) -> Vec<Document> {
    let mut texts = vec![String::new()];
    for line in stream.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let is_separator = line.strip_prefix("---").is_some_and(|rest| {
            let rest = rest.trim();
            rest.is_empty() || rest.starts_with('#')
        });
        if is_separator {
            texts.push(String::new());
        } else if let Some(last) = texts.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    texts
        .into_iter()
        .filter(|text| {
            text.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|text| {
            let resource = resource(&text);
            Document { text, resource }
        })
        .collect()
}

/// The resource one document declares.
fn resource(document: &str) -> Option<Resource> {
    let content = document
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let (kind, name, namespace) = if content.trim_start().starts_with('{') {
        let value: Value = serde_json::from_str(&content).ok()?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let metadata = value.get("metadata");
        (
            text(value.get("kind")),
            text(metadata.and_then(|m| m.get("name"))),
            text(metadata.and_then(|m| m.get("namespace"))),
        )
    } else {
        block_resource(document)
    };
    match (kind, name) {
        (Some(kind), Some(name)) if !kind.is_empty() && !name.is_empty() => Some(Resource {
            kind,
            name,
            namespace: namespace.filter(|n| !n.is_empty()),
        }),
        _ => None,
    }
}

/// `kind`, `metadata.name` and `metadata.namespace` of a block-style document.
fn block_resource(document: &str) -> (Option<String>, Option<String>, Option<String>) {
    let mut kind = None;
    let mut name = None;
    let mut namespace = None;
    let mut in_metadata = false;
    let mut metadata_indent = None;
    for line in document.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            in_metadata = line.trim_end() == "metadata:";
            metadata_indent = None;
            if let Some(value) = line.strip_prefix("kind:") {
                kind = Some(scalar(value));
            }
            continue;
        }
        if !in_metadata {
            continue;
        }
        let level = *metadata_indent.get_or_insert(indent);
        if indent != level {
            continue;
        }
        let entry = line.trim_start();
        if let Some(value) = entry.strip_prefix("name:") {
            name = Some(scalar(value));
        } else if let Some(value) = entry.strip_prefix("namespace:") {
            namespace = Some(scalar(value));
        }
    }
    (kind, name, namespace)
}

/// A plain or quoted scalar, without a trailing comment.
fn scalar(value: &str) -> String {
    let value = value.trim();
    let value = match value.find(" #") {
        Some(i) => value[..i].trim_end(),
        None => value,
    };
    value
        .trim_matches(|c| c == '"' || c == '\'')
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_a_missing_one_is_named() {
        let values = BTreeMap::from([
            ("image".to_owned(), "r/app@sha256:ab".to_owned()),
            ("replicas".to_owned(), "3".to_owned()),
        ]);
        assert_eq!(
            substitute(
                "a.yaml",
                "image: {{image}}\nreplicas: {{ replicas }}\n",
                &values
            )
            .as_deref(),
            Ok("image: r/app@sha256:ab\nreplicas: 3\n")
        );
        assert_eq!(
            substitute("a.yaml", "x: {{ .Values.x | quote }} {{", &values).as_deref(),
            Ok("x: {{ .Values.x | quote }} {{")
        );
        let err = substitute("a.yaml", "x: {{ tag }}", &values).unwrap_err();
        assert!(
            err.contains("a.yaml") && err.contains("`{{ tag }}`"),
            "{err}"
        );
    }

    #[test]
    fn resources_are_read_from_each_document() {
        let stream = "---\n# Source: a.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  labels:\n    name: not-this\n  name: web\n  namespace: \"shop\"\nspec:\n  template:\n    metadata:\n      name: nor-this\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web # the service\n---\n# empty\n";
        assert_eq!(
            resources(stream),
            vec![
                Resource {
                    kind: "Deployment".into(),
                    name: "web".into(),
                    namespace: Some("shop".into()),
                },
                Resource {
                    kind: "Service".into(),
                    name: "web".into(),
                    namespace: None,
                },
            ]
        );
        assert!(resources(stream)[0].rolls_out());
        assert!(!resources(stream)[1].rolls_out());
    }

    #[test]
    fn crlf_documents_and_separators_are_split_as_kubectl_splits_them() {
        // CRLF throughout, a separator with a comment, and a last separator
        // without its line end.
        let stream = "kind: ConfigMap\r\nmetadata:\r\n  name: a\r\n  namespace: x\r\n--- # next\r\nkind: Secret\r\nmetadata:\r\n  name: b\r\n---\r\nkind: Service\r\nmetadata:\r\n  name: c\r\n---\r";
        let ids: Vec<String> = resources(stream).iter().map(Resource::id).collect();
        assert_eq!(ids, ["ConfigMap/a", "Secret/b", "Service/c"]);
        assert_eq!(resources(stream)[0].namespace.as_deref(), Some("x"));
        // `--- text` is not a separator for kubectl: not for us either.
        assert_eq!(documents("kind: A\n--- x\n").len(), 1);
        // A CRLF file's leading separator adds no empty document.
        let files = BTreeMap::from([("a.yaml".to_owned(), "---\r\n".to_owned() + stream)]);
        let joined = join(&files).expect("joins");
        assert_eq!(documents(&joined).len(), 3, "{joined}");
    }

    #[test]
    fn json_manifests_and_lists_become_documents_with_their_resources() {
        let files = BTreeMap::from([
            (
                "a.json".to_owned(),
                "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"List\",\n  \"items\": [\n    {\"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"one\", \"namespace\": \"x\"}, \"data\": {\"k\": \"a: b, c\"}},\n    {\"kind\": \"Deployment\", \"metadata\": {\"name\": \"two\"}}\n  ]\n}\n"
                    .to_owned(),
            ),
            (
                "b.json".to_owned(),
                "{\"kind\": \"Service\", \"metadata\": {\"name\": \"three\"}}".to_owned(),
            ),
        ]);
        let stream = join(&files).expect("joins");
        assert_eq!(
            resources(&stream),
            vec![
                Resource {
                    kind: "ConfigMap".into(),
                    name: "one".into(),
                    namespace: Some("x".into()),
                },
                Resource {
                    kind: "Deployment".into(),
                    name: "two".into(),
                    namespace: None,
                },
                Resource {
                    kind: "Service".into(),
                    name: "three".into(),
                    namespace: None,
                },
            ]
        );
        // Each object is one line of JSON with spaces after `:` and `,`.
        assert!(
            stream.contains("\n{\"data\": {\"k\": \"a: b, c\"}, \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"one\", \"namespace\": \"x\"}}\n"),
            "{stream}"
        );
        let bad = BTreeMap::from([("c.json".to_owned(), "{ nope".to_owned())]);
        assert!(join(&bad).unwrap_err().contains("c.json"));
    }
}
