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

/// What `schemars` emits for a config with an enum and an optional nested
/// struct: `$ref`s into `$defs`, which the checker must follow.
fn schemars_style_schema() -> serde_json::Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Config",
        "type": "object",
        "properties": {
            "mode": { "$ref": "#/$defs/Mode" },
            "tls": { "anyOf": [{ "$ref": "#/$defs/Tls" }, { "type": "null" }] },
            "retries": { "type": "integer", "format": "uint32", "minimum": 0 }
        },
        "required": ["mode"],
        "additionalProperties": false,
        "$defs": {
            "Mode": { "type": "string", "enum": ["fast", "safe"] },
            "Tls": {
                "type": "object",
                "properties": { "cert": { "type": "string" } },
                "required": ["cert"],
                "additionalProperties": false
            }
        }
    })
}

#[test]
fn refs_and_defs_are_followed() {
    let schema = schemars_style_schema();
    let violations = config_schema::check_value(
        &schema,
        &json!({ "mode": "fastt", "tls": { "cert": 1 }, "retries": -1 }),
    );
    let found: Vec<(&str, &str)> = violations
        .iter()
        .map(|v| (v.path.as_str(), v.message.as_str()))
        .collect();
    assert!(
        found.contains(&("mode", r#"`mode` must be one of "fast", "safe""#)),
        "{found:#?}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v.path == "mode" && v.hint.as_deref() == Some("did you mean `fast`?")),
        "{violations:#?}"
    );
    // Inside the `Option<Tls>` (`anyOf: [Tls, null]`): what is wrong in the `Tls`.
    assert!(
        found.contains(&("tls.cert", "`tls.cert` must be string, found integer")),
        "{found:#?}"
    );
    assert!(
        found.contains(&("retries", "`retries` must be at least 0")),
        "{found:#?}"
    );
    // Valid values pass, through the `$ref`s.
    assert_eq!(
        config_schema::check_value(&schema, &json!({ "mode": "safe", "tls": { "cert": "c" } })),
        []
    );
    assert_eq!(
        config_schema::check_value(&schema, &json!({ "mode": "fast", "tls": null })),
        []
    );
}

#[test]
fn templated_values_wait_for_run_time_but_their_keys_are_checked() {
    let schema = schemars_style_schema();
    assert_eq!(
        config_schema::check_value(
            &schema,
            &json!({ "mode": "${{ params.mode }}", "tls": { "cert": "${{ secrets.cert }}" } })
        ),
        []
    );
    let violations =
        config_schema::check_value(&schema, &json!({ "mode": "${{ params.mode }}", "mod": 1 }));
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(violations[0].message, "unknown setting `mod`");
    assert_eq!(violations[0].hint.as_deref(), Some("did you mean `mode`?"));
}

#[test]
fn an_invalid_schema_is_reported_not_ignored() {
    let violations = config_schema::check_value(&json!({ "type": 12 }), &json!({}));
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert!(
        violations[0].message.contains("not a valid JSON Schema"),
        "{violations:#?}"
    );
}

#[test]
fn an_enum_of_documented_constants_names_its_values() {
    // `schemars` for an enum whose variants have doc comments.
    let schema = json!({
        "type": "object",
        "properties": { "via": { "$ref": "#/$defs/Via", "default": "log" } },
        "$defs": { "Via": { "oneOf": [
            { "type": "string", "const": "log", "description": "The log." },
            { "type": "string", "const": "stdout", "description": "Standard output." }
        ] } }
    });
    let violations = config_schema::check_value(&schema, &json!({ "via": "stdot" }));
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(
        violations[0].message,
        r#"`via` must be one of "log", "stdout""#
    );
    assert_eq!(
        violations[0].hint.as_deref(),
        Some("did you mean `stdout`?")
    );
}
