//! A corpus of wrong pipelines (`tests/invalid/*.yaml`): each must be refused
//! with exactly the diagnostic codes its first line expects, and the rendered
//! diagnostics are snapshotted so their wording and positions are reviewed.

use std::collections::BTreeSet;
use std::path::PathBuf;

use arkline::model;

fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("tests/invalid exists")
        .map(|e| e.expect("readable dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read_to_string(&p).expect("readable"))
        })
        .collect();
    out.sort();
    out
}

fn expected_codes(src: &str) -> BTreeSet<String> {
    let first = src.lines().next().unwrap_or_default();
    let list = first
        .strip_prefix("# expect:")
        .expect("first line is `# expect: codes`");
    list.split(',').map(|c| c.trim().to_owned()).collect()
}

#[test]
fn corpus_has_at_least_25_distinct_mistakes() {
    let codes: BTreeSet<String> = corpus()
        .iter()
        .flat_map(|(_, src)| expected_codes(src))
        .collect();
    assert!(corpus().len() >= 25);
    assert!(
        codes.len() >= 25,
        "only {} distinct codes: {codes:?}",
        codes.len()
    );
}

#[test]
fn every_wrong_pipeline_is_refused_with_the_expected_diagnostics() {
    let mut failures = Vec::new();
    for (name, src) in corpus() {
        let Err(diags) = model::parse_pipeline(&name, &src) else {
            failures.push(format!("{name}: accepted"));
            continue;
        };
        let got: BTreeSet<String> = diags.errors().map(|d| d.code.clone()).collect();
        if got != expected_codes(&src) {
            failures.push(format!(
                "{name}: expected {:?}, got {got:?}\n{}",
                expected_codes(&src),
                diags.render(&src)
            ));
        }
        for d in diags.errors() {
            assert_eq!(d.file, name);
            assert!(d.hint.is_some(), "{name}: `{}` has no hint", d.code);
        }
        let snapshot = format!("{src}\n---- diagnostics ----\n{}", diags.render(&src));
        insta::assert_snapshot!(name.trim_end_matches(".yaml"), snapshot);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn diagnostics_carry_positions_and_serialize_to_json() {
    let src = "name: p\nstages:\n  - name: s\n    steps:\n      - name: a\n        uses: shell\n        tiemout: 10m\n";
    let diags = model::parse_pipeline("p.yaml", src).expect_err("misspelled field");
    let json = serde_json::to_value(&diags).expect("serializable");
    assert_eq!(
        json,
        serde_json::json!([{
            "severity": "error",
            "code": "unknown-field",
            "message": "unknown field `tiemout` in a step",
            "file": "p.yaml",
            "span": { "start": 83, "end": 90, "line": 7, "column": 9 },
            "text": "tiemout",
            "hint": "did you mean `timeout`?"
        }])
    );
    let back: model::Diagnostics = serde_json::from_value(json).expect("deserializable");
    assert_eq!(back, diags);
}

#[test]
fn a_reference_inside_a_string_is_underlined_exactly() {
    let src = "name: p\nparams: [{name: target}]\nstages:\n  - name: s\n    steps:\n      - name: a\n        uses: shell\n        env: { X: \"to ${{ params.taget }}\" }\n";
    let diags = model::parse_pipeline("p.yaml", src).expect_err("unknown param");
    let d = diags.errors().next().expect("one error");
    assert_eq!(d.text, "params.taget");
    assert_eq!(d.hint.as_deref(), Some("did you mean `params.target`?"));
    let span = d.span.expect("positioned");
    assert_eq!((span.line, span.column), (8, 27));
}
