//! The first-party `shell` plugin, packaged through arkline-testkit.

use arkline::ark::Ark;
use arkline::runtime::inspect_component;

#[test]
fn shell_plugin_packages_with_its_step_schema_and_capabilities() {
    let path = arkline_testkit::plugin("shell");
    let ark = Ark::open(&path).expect("the packaged shell plugin reads back");
    let m = &ark.manifest;
    assert_eq!(m.name, "shell");
    assert_eq!(m.host_api.to_string(), "^0.1.0");
    assert_eq!(m.capabilities.process, vec!["sh", "bash"]);
    assert_eq!(m.steps.len(), 1);
    assert_eq!(m.steps[0].id, "run");

    let schema = ark.step_schema("run").expect("schema of `run`");
    assert_eq!(schema["required"], serde_json::json!(["script"]));
    for field in ["script", "shell", "env", "working_dir", "errexit"] {
        assert!(
            schema["properties"].get(field).is_some(),
            "no `{field}` in {schema}"
        );
    }

    // The component in the archive describes the same step type, without its
    // schema: cargo ark ships it built without schemars and keeps the schema
    // (from a build with arkline-sdk/schema) in the archive.
    let info = inspect_component(&ark.component).expect("a step plugin component");
    assert_eq!(info.steps[0].id, "run");
    assert_eq!(info.steps[0].config_schema, serde_json::Value::Null);
    assert!(
        !ark.component
            .windows(b"schemars".len())
            .any(|w| w == b"schemars"),
        "the shipped component carries no schemars code"
    );
    assert!(
        info.imports
            .iter()
            .any(|i| i.starts_with("arkline:step/process@")),
        "shell imports process: {:?}",
        info.imports
    );
}

#[test]
fn testkit_packages_a_plugin_once_per_process() {
    let a = arkline_testkit::plugin("shell");
    let b = arkline_testkit::plugin("shell");
    assert_eq!(a, b);
    let err = arkline_testkit::try_plugin("no-such-plugin").expect_err("unknown package");
    assert!(err.contains("no-such-plugin"), "{err}");
}
