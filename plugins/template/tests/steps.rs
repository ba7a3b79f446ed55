//! The `template` component in the real isolation runtime, against golden files.

use std::fs;
use std::path::{Path, PathBuf};

use arkline_testkit::{CallContext, Harness, StepCall, StepFailure, StepReport};
use serde_json::{Value, json};

fn template() -> Harness {
    Harness::current_crate(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A workspace holding a copy of `tests/fixtures`.
fn workspace() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).expect("mkdir");
        for entry in fs::read_dir(from).expect("list fixtures") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), target).expect("copy");
            }
        }
    }
    let ws = tempfile::tempdir().expect("tempdir");
    copy(&fixtures(), ws.path());
    ws
}

fn run(workspace: &Path, step: &str, config: Value) -> StepReport {
    let context = CallContext {
        pipeline: "web".into(),
        run: 7,
        step_name: "render-it".into(),
        ..CallContext::default()
    };
    template().call(
        StepCall::new(step, config)
            .workspace(workspace)
            .context(context),
    )
}

/// Compares with `tests/golden/<name>`; `ARKLINE_BLESS=1` rewrites the golden file.
fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("ARKLINE_BLESS").is_some() {
        fs::write(&path, actual).expect("bless");
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with ARKLINE_BLESS=1 to create it)",
            path.display()
        )
    });
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

fn site_values() -> Value {
    json!({
        "name": "web",
        "version": "1.4.2",
        "replicas": 3,
        "debug": false,
        "backends": [{ "host": "a.internal", "port": 8080 }, { "host": "b.internal" }],
        "features": ["metrics", "tracing"],
    })
}

#[test]
fn render_a_directory_matches_the_golden_files() {
    let ws = workspace();
    let report = run(
        ws.path(),
        "render",
        json!({ "source": "site", "destination": "out", "values": site_values(), "strip_suffix": ".j2" }),
    );
    let out = report.outputs().expect("render succeeds");
    // The partial is rendered too (it is a file of the directory).
    assert_eq!(out["files"], "3", "{out:?}");
    assert_golden(
        "app.conf",
        &fs::read_to_string(ws.path().join("out/app.conf")).expect("app.conf"),
    );
    assert_golden(
        "README.md",
        &fs::read_to_string(ws.path().join("out/README.md")).expect("README"),
    );
}

#[test]
fn render_one_file_to_a_named_destination() {
    let ws = workspace();
    let report = run(
        ws.path(),
        "render",
        json!({ "source": "site/README.md.j2", "destination": "docs/README.md", "values": site_values() }),
    );
    report.outputs().expect("render succeeds");
    assert_eq!(
        fs::read_to_string(ws.path().join("docs/README.md")).expect("rendered"),
        "Web 1.4.2\n"
    );
}

#[test]
fn an_undefined_variable_fails_naming_the_template_unless_lenient() {
    let ws = workspace();
    let mut values = site_values();
    values.as_object_mut().expect("object").remove("version");
    let config = json!({ "source": "site/README.md.j2", "destination": "r.md", "values": values });
    match &run(ws.path(), "render", config.clone()).result {
        Err(StepFailure::Failed(message)) => {
            assert!(message.contains("README.md.j2"), "{message}");
            assert!(message.contains("undefined"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    let mut lenient = config;
    lenient["strict"] = json!(false);
    run(ws.path(), "render", lenient)
        .outputs()
        .expect("lenient render succeeds");
    assert_eq!(
        fs::read_to_string(ws.path().join("r.md")).expect("rendered"),
        "Web \n"
    );
}

fn k8s_values() -> Value {
    json!({
        "name": "web",
        "version": "1.4.2",
        "replicas": 2,
        "image": "registry.local/web:1.4.2",
        "env": { "RUST_LOG": "info", "MODE": "prod" },
    })
}

#[test]
fn deploy_yaml_without_kubectl_writes_the_checked_bundle() {
    let ws = workspace();
    let report = run(
        ws.path(),
        "deploy-yaml",
        json!({ "source": "k8s", "values": k8s_values() }),
    );
    let out = report.outputs().expect("deploy-yaml succeeds");
    assert_eq!(out["applied"], "false");
    assert_eq!(out["bundle"], "rendered/render-it.yaml");
    assert_eq!(out["documents"], "3");
    assert_eq!(
        out["resources"],
        "Deployment/web,Service/web,ConfigMap/web-config"
    );
    assert_golden(
        "bundle.yaml",
        &fs::read_to_string(ws.path().join("rendered/render-it.yaml")).expect("bundle"),
    );
    assert!(
        report
            .log
            .text()
            .contains("grant `process: kubectl` to apply it"),
        "{}",
        report.log.text()
    );
}

#[test]
fn deploy_yaml_refuses_an_object_without_a_name() {
    let ws = workspace();
    fs::write(
        ws.path().join("k8s/30-bad.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata:\n  labels: {a: b}\n",
    )
    .expect("write");
    match &run(
        ws.path(),
        "deploy-yaml",
        json!({ "source": "k8s", "values": k8s_values() }),
    )
    .result
    {
        Err(StepFailure::Failed(message)) => {
            assert!(message.contains("k8s/30-bad.yaml"), "{message}");
            assert!(message.contains("document 1 (line 1)"), "{message}");
            assert!(message.contains("`metadata.name`"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(
        !ws.path().join("rendered").exists(),
        "no bundle is written for a bad set"
    );
}

#[test]
fn bad_configuration_names_the_field() {
    let ws = workspace();
    for (config, field, expected) in [
        (
            json!({ "source": "../etc", "destination": "x" }),
            "source",
            "not a path inside the workspace",
        ),
        (
            json!({ "source": "missing.j2", "destination": "x" }),
            "source",
            "cannot read",
        ),
        (
            json!({ "source": "site", "destination": "x", "values": [1] }),
            "values",
            "expected a map",
        ),
    ] {
        match &run(ws.path(), "render", config).result {
            Err(StepFailure::InvalidConfig { field: f, message }) => {
                assert_eq!(f.as_deref(), Some(field), "{message}");
                assert!(message.contains(expected), "{message}");
            }
            other => panic!("expected invalid-config on {field}, got {other:?}"),
        }
    }
}
