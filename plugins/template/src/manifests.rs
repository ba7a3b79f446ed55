//! Checks rendered Kubernetes manifests: every YAML document is a mapping with a
//! string `apiVersion`, `kind` and `metadata.name`.

use saphyr_parser::{Event, Parser};

/// A YAML node, as much of it as the checks need.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Scalar(String),
    Sequence,
    Mapping(Vec<(Node, Node)>),
    Alias,
}

impl Node {
    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Mapping(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Node::Scalar(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) if !s.is_empty() && s != "~" && s != "null" => Some(s),
            _ => None,
        }
    }
}

/// Returns `Kind/name` for each document that holds an object; empty documents
/// (only comments, a stray `---`) are skipped.
pub fn check(text: &str) -> Result<Vec<String>, String> {
    let mut events = Parser::new_from_str(text);
    let mut objects = Vec::new();
    let mut document = 0;
    loop {
        let (event, span) = match events.next() {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(format!("not valid YAML: {e}")),
            None => break,
        };
        match event {
            Event::DocumentStart(_) => {
                document += 1;
                let line = span.start.line();
                let root = next_node(&mut events)?;
                let Some(root) = root else { continue };
                if matches!(&root, Node::Scalar(s) if s.is_empty() || s == "~" || s == "null") {
                    continue;
                }
                objects.push(
                    object(&root)
                        .map_err(|why| format!("document {document} (line {line}): {why}"))?,
                );
            }
            Event::StreamEnd => break,
            _ => {}
        }
    }
    Ok(objects)
}

fn object(root: &Node) -> Result<String, String> {
    if !matches!(root, Node::Mapping(_)) {
        return Err(
            "is not a mapping; a Kubernetes object has `apiVersion`, `kind` and `metadata`".into(),
        );
    }
    let field = |node: Option<&Node>, name: &str| -> Result<String, String> {
        node.and_then(Node::text)
            .map(str::to_owned)
            .ok_or_else(|| format!("has no `{name}` (a non-empty string is required)"))
    };
    field(root.get("apiVersion"), "apiVersion")?;
    let kind = field(root.get("kind"), "kind")?;
    let name = field(
        root.get("metadata").and_then(|m| m.get("name")),
        "metadata.name",
    )?;
    Ok(format!("{kind}/{name}"))
}

/// Reads one node; `None` at the end of a document.
fn next_node(events: &mut Parser<'_, saphyr_parser::StrInput<'_>>) -> Result<Option<Node>, String> {
    let event = match events.next() {
        Some(Ok((event, _))) => event,
        Some(Err(e)) => return Err(format!("not valid YAML: {e}")),
        None => return Ok(None),
    };
    let node = match event {
        Event::Scalar(value, ..) => Node::Scalar(value.into_owned()),
        Event::Alias(_) => Node::Alias,
        Event::SequenceStart(..) => {
            while next_node(events)?.is_some() {}
            Node::Sequence
        }
        Event::MappingStart(..) => {
            let mut entries = Vec::new();
            while let Some(key) = next_node(events)? {
                let value = next_node(events)?;
                let value = value.ok_or("a mapping key has no value")?;
                entries.push((key, value));
            }
            Node::Mapping(entries)
        }
        // SequenceEnd, MappingEnd, DocumentEnd close the enclosing collection.
        _ => return Ok(None),
    };
    Ok(Some(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_objects_and_skips_empty_documents() {
        let text = "# leading comment\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{port: 80}]\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: {a: b}}\n";
        assert_eq!(
            check(text).expect("valid"),
            ["Service/web", "Deployment/web"]
        );
    }

    #[test]
    fn names_the_missing_field_and_the_document() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {}\n";
        let err = check(text).expect_err("no name");
        assert!(err.contains("document 2 (line 5)"), "{err}");
        assert!(err.contains("`metadata.name`"), "{err}");
        let err = check("kind: Pod\nmetadata: {name: p}\n").expect_err("no apiVersion");
        assert!(err.contains("`apiVersion`"), "{err}");
        let err = check("- a\n- b\n").expect_err("a list");
        assert!(err.contains("not a mapping"), "{err}");
        let err = check("a: [b\n").expect_err("broken");
        assert!(err.contains("not valid YAML"), "{err}");
    }
}
