//! `with` configs are checked against the schemas of known step types.

use arkline::model::{self, Uses, config_schema};
use serde_json::json;

const PIPELINE: &str = r#"name: p
stages:
  - name: build
    steps:
      - name: compile
        uses: rust/cargo@^1
        with:
          comand: build
          release: "yes"
          jobs: 0
          profile: debugg
      - name: templated
        uses: rust/cargo@^1
        with:
          command: "${{ params.cmd }}"
          release: true
          jobs: 2
      - name: unknown-biz
        uses: someone/else@1
        with: { anything: [1, 2] }
params: [{name: cmd}]
"#;

fn cargo_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["command"],
        "properties": {
            "command": { "type": "string" },
            "release": { "type": "boolean" },
            "jobs": { "type": "integer", "minimum": 1 },
            "profile": { "enum": ["debug", "release"] }
        }
    })
}

fn schema_for(uses: &Uses) -> Option<serde_json::Value> {
    (uses.biz == "rust" && uses.step.as_deref() == Some("cargo")).then(cargo_schema)
}

#[test]
fn with_is_checked_against_the_step_schema() {
    let parsed = model::parse_pipeline_file("p.yaml", PIPELINE).expect("structurally valid");
    let diags =
        model::validate_with_schemas(&parsed.pipeline.spec, &parsed.source_map, &schema_for);
    let rendered = model::Diagnostics(diags.clone()).render(PIPELINE);
    insta::assert_snapshot!(rendered);
    let messages: Vec<&str> = diags.iter().map(|d| d.message.as_str()).collect();
    // Exactly the first step's five mistakes: the templated step passes (its
    // command is only known at run time) and the unknown biz is not checked.
    assert_eq!(diags.len(), 5, "{messages:#?}");
    assert!(
        diags
            .iter()
            .all(|d| d.message.starts_with("step `compile`"))
    );
    assert!(
        diags
            .iter()
            .any(|d| d.hint.as_deref() == Some("did you mean `command`?"))
    );
    assert!(
        diags
            .iter()
            .any(|d| d.hint.as_deref() == Some("did you mean `debug`?"))
    );
}

#[test]
fn a_spec_without_a_file_gets_unpositioned_diagnostics() {
    let parsed = model::parse_pipeline("p.yaml", PIPELINE).expect("valid");
    let map = model::SourceMap::detached("<store>");
    let diags = model::validate_with_schemas(&parsed.spec, &map, &schema_for);
    assert_eq!(diags.len(), 5);
    assert!(
        diags
            .iter()
            .all(|d| d.span.is_none() && d.file == "<store>")
    );
}

#[test]
fn nested_values_and_arrays_are_checked() {
    let schema = json!({
        "type": "object",
        "properties": {
            "ports": { "type": "array", "items": { "type": "integer", "maximum": 65535 } },
            "tls": { "type": "object", "required": ["cert"], "properties": { "cert": { "type": "string" } } }
        }
    });
    let value = json!({ "ports": [80, 70000, "x"], "tls": {} });
    let violations = config_schema::check_value(&schema, &value);
    let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
    assert_eq!(paths, ["ports[1]", "ports[2]", "tls"]);
    assert!(
        config_schema::check_value(&schema, &json!({ "ports": [1], "tls": { "cert": "c" } }))
            .is_empty()
    );
}
