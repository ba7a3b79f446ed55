//! Rendering a bundle: `{{ name }}` placeholders filled from `values`, files
//! joined into one multi-document YAML stream, and the resources it declares
//! (`kind` and `metadata.name`/`namespace` of each document) read back.

use std::collections::{BTreeMap, BTreeSet};

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

/// Whether a bundle file is a manifest: `.yaml`, `.yml` or `.json`.
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

/// Joins rendered files (in name order) into one YAML stream.
pub fn join(files: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (name, text) in files {
        out.push_str(&format!("---\n# Source: {name}\n"));
        out.push_str(text.trim_start_matches("---\n"));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The resources a YAML stream declares, in order: each document's top-level
/// `kind` and its `metadata`'s `name` and `namespace` (block style, as
/// manifests and `helm template` write them). Documents without both are
/// skipped (comments, empty documents).
pub fn resources(stream: &str) -> Vec<Resource> {
    let mut found = Vec::new();
    for document in documents(stream) {
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
        if let (Some(kind), Some(name)) = (kind, name)
            && !kind.is_empty()
            && !name.is_empty()
        {
            found.push(Resource {
                kind,
                name,
                namespace: namespace.filter(|n| !n.is_empty()),
            });
        }
    }
    found
}

/// The documents of a YAML stream (split at `---` lines).
fn documents(stream: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in stream.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs
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
}
