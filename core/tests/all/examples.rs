//! Every example pipeline parses, and survives parse → serialize → parse.

use std::path::PathBuf;

use arkline::model::{self, Pipeline, Resource};

fn examples() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("examples/pipelines exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p).expect("readable example");
            (name, text)
        })
        .collect();
    out.sort();
    out
}

fn parse(name: &str, src: &str) -> Pipeline {
    match model::parse_pipeline(name, src) {
        Ok(p) => p,
        Err(d) => panic!("{name} does not parse:\n{}", d.render(src)),
    }
}

#[test]
fn there_are_examples() {
    assert!(examples().len() >= 4);
}

#[test]
fn examples_round_trip_through_yaml() {
    for (name, src) in examples() {
        let first = parse(&name, &src);
        let yaml = model::to_pipeline_file(&first).expect("serializable");
        let second = parse(&format!("{name} (re-serialized)"), &yaml);
        assert_eq!(
            first, second,
            "{name} changed on a YAML round trip:\n{yaml}"
        );
    }
}

#[test]
fn a_stored_resource_reads_back_with_warnings_for_store_fields() {
    let (_, src) = examples()
        .into_iter()
        .find(|(n, _)| n == "minimal.yaml")
        .expect("minimal.yaml");
    let mut p = parse("minimal.yaml", &src);
    p.metadata.uid = "0b0c".into();
    p.metadata.resource_version = 7;
    p.status.next_run = 3;
    let yaml = model::to_yaml(&p).expect("serializable");
    let parsed = model::parse_pipeline_file("stored.yaml", &yaml).expect("stored resource parses");
    let codes: Vec<&str> = parsed.warnings.iter().map(|d| d.code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "ignored-field",
            "ignored-field",
            "ignored-field",
            "ignored-field"
        ],
        "{yaml}"
    );
    assert_eq!(parsed.pipeline.spec, p.spec);
    // Store-owned values and status are not taken from a file.
    assert_eq!(parsed.pipeline.metadata.uid, "");
    assert_eq!(parsed.pipeline.status.next_run, 0);
}

#[test]
fn examples_round_trip_through_json_and_dynamic_object() {
    for (name, src) in examples() {
        let p = parse(&name, &src);
        let json = serde_json::to_string(&p).expect("serializable");
        let back: Pipeline = serde_json::from_str(&json).expect("deserializable");
        assert_eq!(p, back, "{name} changed on a JSON round trip");
        let dynamic = p.to_dynamic().expect("to dynamic");
        assert_eq!(dynamic.kind, "Pipeline");
        assert_eq!(Pipeline::from_dynamic(dynamic).expect("from dynamic"), p);
    }
}

#[test]
fn the_full_example_uses_every_feature() {
    let (_, src) = examples()
        .into_iter()
        .find(|(n, _)| n == "full.yaml")
        .expect("full.yaml");
    let p = parse("full.yaml", &src);
    let spec = &p.spec;
    assert_eq!(p.metadata.name, "build-and-deploy");
    assert_eq!(p.metadata.engine, "team-a");
    assert_eq!(spec.params.len(), 5);
    assert_eq!(spec.triggers.len(), 3);
    assert!(spec.fail_fast);
    assert_eq!(spec.timeout.map(|t| t.0.as_secs()), Some(3600));
    assert_eq!(spec.stages.len(), 3);
    assert_eq!(spec.finally.len(), 2);
    assert!(
        spec.concurrency
            .as_ref()
            .is_some_and(|c| c.cancel_in_progress)
    );
    let unit = &spec.stages[1].steps[0];
    let cells: Vec<String> = unit.instances().into_iter().map(|i| i.name).collect();
    assert_eq!(
        cells,
        [
            "unit (linux, stable)",
            "unit (linux, beta)",
            "unit (macos, stable)"
        ]
    );
    assert_eq!(spec.stages[1].steps[1].needs, ["unit (linux, stable)"]);
    let compile = &spec.stages[0].steps[0];
    assert_eq!(
        compile.uses.as_ref().map(ToString::to_string).as_deref(),
        Some("rust/cargo@^1.2")
    );
    assert_eq!(compile.retries.as_ref().map(|r| r.count), Some(2));
    assert_eq!(
        spec.stages[0].steps[1].retries.as_ref().map(|r| r.count),
        Some(1)
    );
    assert_eq!(compile.with.get("jobs"), Some(&serde_json::json!(2)));
    assert_eq!(compile.cache.as_ref().map(|c| c.paths.len()), Some(2));
    let deploy = spec.stages[2].when.as_ref().expect("deploy has a when");
    assert!(deploy.branch.matches("main") && !deploy.branch.matches("dev"));
    assert!(deploy.event.matches("push") && !deploy.event.matches("pull_request"));
    let model::Trigger::Webhook { branch, .. } = &spec.triggers[2] else {
        panic!("third trigger is a webhook");
    };
    assert!(branch.matches("release/1.2") && !branch.matches("release/old-1"));
}

#[test]
fn the_resource_form_keeps_metadata() {
    let (_, src) = examples()
        .into_iter()
        .find(|(n, _)| n == "resource.yaml")
        .expect("resource.yaml");
    let p = parse("resource.yaml", &src);
    assert_eq!(p.api_version, model::API_VERSION);
    assert_eq!(p.metadata.name, "nightly");
    assert_eq!(
        p.metadata.annotations.get("owner").map(String::as_str),
        Some("ops@example.com")
    );
}

#[test]
fn long_and_odd_keys_survive_a_round_trip() {
    // Found by fuzzing: YAML caps implicit keys at 1024 characters.
    let long = "k".repeat(1500);
    let src = format!(
        "name: p\nstages:\n  - name: s\n    steps:\n      - name: a\n        uses: shell\n        with:\n          ? \"{long}\"\n          : 1\n          \"true\": {{ \"null\": [] }}\n          \"a: b\": \"#x\"\n"
    );
    let first = parse("keys.yaml", &src);
    let yaml = model::to_pipeline_file(&first).expect("serializable");
    assert_eq!(parse("again.yaml", &yaml), first, "{yaml}");
}

#[test]
fn the_format_described_in_the_module_docs_is_valid() {
    // The annotated example in `src/model.rs` is the format's reference; keep it true.
    let docs = include_str!("../../src/model.rs");
    let start = docs.find("//! ```yaml\n").expect("yaml block") + "//! ```yaml\n".len();
    let end = start + docs[start..].find("//! ```\n").expect("end of block");
    let yaml: String = docs[start..end]
        .lines()
        .map(|l| {
            l.strip_prefix("//! ")
                .or_else(|| l.strip_prefix("//!"))
                .unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let p = parse("model.rs docs", &yaml);
    assert_eq!(p.spec.stages.len(), 2);
    assert_eq!(p.spec.finally.len(), 1);
}
