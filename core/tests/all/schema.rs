//! The published JSON Schema (`schema/pipeline.schema.json`) matches the types.
//! Regenerate it with
//! `UPDATE_SCHEMA=1 cargo test -p arkline --test all schema::published_schema_is_current`.

use std::path::PathBuf;

use arkline::model;

#[test]
fn published_schema_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schema/pipeline.schema.json");
    let generated =
        serde_json::to_string_pretty(&model::pipeline_file_schema()).expect("serializable") + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("schema written");
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == generated,
        "schema/pipeline.schema.json is out of date; run `UPDATE_SCHEMA=1 cargo test -p arkline --test all schema::published_schema_is_current` and commit it"
    );
}

#[test]
fn schema_describes_both_file_forms() {
    let schema = model::pipeline_file_schema();
    let forms = schema["oneOf"].as_array().expect("oneOf");
    assert_eq!(forms.len(), 2);
    let bare = &forms[0];
    assert_eq!(bare["required"], serde_json::json!(["name", "stages"]));
    assert!(bare["properties"]["fail_fast"].is_object());
    let resource = &forms[1];
    assert_eq!(resource["properties"]["kind"]["const"], "Pipeline");
    assert!(
        resource["properties"].get("status").is_none(),
        "files never carry status"
    );
    assert!(schema["$defs"]["Step"]["properties"]["retries"].is_object());
}
