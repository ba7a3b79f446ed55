//! `arkline validate` on pipeline files and container archives: the real binary,
//! human and JSON output, exit codes.

use std::process::Command;

use serde_json::Value;

use crate::support::arkc::{self, TestEngine};

fn arkline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arkline"))
}

const GOOD: &str = "\
name: hello
stages:
  - name: greet
    steps:
      - name: say
        uses: faults/upper
        with: { text: hi }
";

// Line 5 has a misspelt field, line 8 a reference to a step that does not exist.
const BAD: &str = "\
name: hello
stages:
  - name: greet
    steps:
      - name: say
        uses: faults/upper
        tiemout: 10m
        with: { text: \"${{ steps.nope.outputs.x }}\" }
";

#[test]
fn pipeline_files_valid_and_invalid_in_human_and_json_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = tmp.path().join("good.yaml");
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&good, GOOD).expect("write");
    std::fs::write(&bad, BAD).expect("write");

    let out = arkline().arg("validate").arg(&good).output().expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("good.yaml: ok (pipeline `hello`)"),
        "{stdout}"
    );

    let out = arkline()
        .arg("validate")
        .arg(&good)
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bad.yaml:7:9"), "line and column: {stdout}");
    assert!(stdout.contains("tiemout"), "{stdout}");
    assert!(
        stdout.contains("did you mean `timeout`?"),
        "the hint: {stdout}"
    );
    assert!(stdout.contains("nope"), "{stdout}");
    assert!(stdout.contains("good.yaml: ok"), "{stdout}");
    assert!(stdout.contains("1 of 2 file(s) invalid"), "{stdout}");

    let out = arkline()
        .args(["validate", "--json"])
        .arg(&good)
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    assert!(all.len() >= 2, "{all:?}");
    for d in &all {
        for field in [
            "file",
            "line",
            "column",
            "end_line",
            "end_column",
            "severity",
            "code",
            "message",
            "hint",
            "text",
        ] {
            assert!(d.get(field).is_some(), "`{field}` missing in {d}");
        }
        assert_eq!(d["file"], bad.display().to_string());
    }
    let typo = all
        .iter()
        .find(|d| d["code"] == "unknown-field")
        .unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!(
        (typo["line"].as_u64(), typo["column"].as_u64()),
        (Some(7), Some(9))
    );
    assert_eq!(
        (typo["end_line"].as_u64(), typo["end_column"].as_u64()),
        (Some(7), Some(16))
    );
    assert_eq!(typo["severity"], "error");
    assert_eq!(typo["text"], "tiemout");
    assert!(
        typo["hint"].as_str().is_some_and(|h| h.contains("timeout")),
        "{typo}"
    );
    let reference = all
        .iter()
        .find(|d| d["message"].as_str().is_some_and(|m| m.contains("nope")))
        .unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!(reference["line"], 8);

    // An unreadable file is an error of its own, not a crash.
    let out = arkline()
        .args(["validate", "--json"])
        .arg(tmp.path().join("missing.yaml"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(all[0]["code"], "io");
    assert_eq!(all[0]["line"], Value::Null);
}

#[test]
fn container_archives_are_read_with_the_hardened_reader_and_checked_against_step_schemas() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = arkc::write(
        tmp.path(),
        "good.arkc",
        &[TestEngine {
            name: "team-a",
            bizes: &[("faults", &[])],
            quota: 1,
            pipelines: &[("hello.yaml", GOOD)],
        }],
    );
    let out = arkline().arg("validate").arg(&good).output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "good.arkc: ok (container test 0.1.0: 1 engine(s), 1 pipeline(s), 1 biz(es))"
        ),
        "{stdout}"
    );

    // `upper` has no setting `txt`: only the step schema (from the biz) knows.
    let wrong_config = GOOD.replace("text: hi", "txt: hi");
    let bad = arkc::write_unchecked(
        tmp.path(),
        "bad.arkc",
        &[TestEngine {
            name: "team-a",
            bizes: &[("faults", &[])],
            quota: 1,
            pipelines: &[("hello.yaml", &wrong_config)],
        }],
    );
    let out = arkline()
        .args(["validate", "--json"])
        .arg(&bad)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let d = all
        .iter()
        .find(|d| {
            d["code"] == "config-schema" && d["message"].as_str().is_some_and(|m| m.contains("txt"))
        })
        .unwrap_or_else(|| panic!("{all:?}"));
    assert!(
        all.iter().any(|d| d["message"]
            .as_str()
            .is_some_and(|m| m.contains("required setting `text` is missing"))),
        "every problem, not just the first: {all:?}"
    );
    assert_eq!(
        d["file"],
        format!("{}!/engines/team-a/pipelines/hello.yaml", bad.display())
    );
    assert_eq!(d["line"], 7, "{d}");
    assert!(
        d["message"].as_str().is_some_and(|m| m.contains("txt")),
        "{d}"
    );

    let out = arkline().arg("validate").arg(&bad).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("has step configs that do not match their schemas"),
        "{stdout}"
    );
    assert!(stdout.contains("hello.yaml:7:"), "{stdout}");

    // Damaged archives are reported, not crashed on.
    let mut bytes = std::fs::read(&good).expect("read");
    let at = bytes.len() / 2;
    bytes.truncate(at);
    let torn = tmp.path().join("torn.arkc");
    std::fs::write(&torn, bytes).expect("write");
    let out = arkline()
        .args(["validate", "--json"])
        .arg(&torn)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["code"], "archive");
    assert!(
        all[0]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("cargo ark container")),
        "{all:?}"
    );
}

/// `arkline validate` applies the API's name rule and the parser's caps: names
/// the store would refuse, and bomb files, are refused with one clear diagnostic.
#[test]
fn validate_refuses_names_the_api_refuses_and_bombs_over_the_caps() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let long = "n".repeat(10_000);
    for (file, name, expected) in [
        ("traversal.yaml", "\"../../etc/passwd\"", "contains `/`"),
        ("nul.yaml", "\"a\\0b\"", "control character"),
        ("long.yaml", long.as_str(), "10000 bytes long"),
    ] {
        let path = tmp.path().join(file);
        std::fs::write(&path, GOOD.replace("name: hello", &format!("name: {name}")))
            .expect("write");
        let out = arkline()
            .args(["validate", "--json"])
            .arg(&path)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1), "{file}");
        let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let diags = json.as_array().expect("array");
        assert!(
            diags.iter().any(|d| d["code"] == "invalid-name"
                && d["message"].as_str().is_some_and(|m| m.contains(expected))),
            "{file}: {json}"
        );
    }

    // 400,000 one-line steps (22 MiB): refused by the byte cap, one diagnostic.
    let steps: String = (0..400_000)
        .map(|i| format!("      - {{name: s{i}, uses: faults/upper}}\n"))
        .collect();
    let bomb = tmp.path().join("bomb.yaml");
    std::fs::write(
        &bomb,
        format!("name: hello\nstages:\n  - name: s\n    steps:\n{steps}"),
    )
    .expect("write");
    let out = arkline()
        .args(["validate", "--json"])
        .arg(&bomb)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let diags = json.as_array().expect("array");
    assert_eq!(diags.len(), 1, "{json}");
    assert_eq!(diags[0]["code"], "limit-exceeded");
    assert!(
        diags[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than the limit of 1048576 bytes")),
        "{json}"
    );
}

/// `--ark` checks a standalone pipeline file's `with:` against the biz
/// archives' schemas, `$ref`s included; without it only the model is checked.
#[test]
fn standalone_pipelines_are_checked_against_the_schemas_of_given_arks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = arkline_testkit::plugin("faults");
    let path = tmp.path().join("flood.yaml");
    std::fs::write(
        &path,
        "name: flood\nstages:\n  - name: s\n    steps:\n      - name: f\n        uses: faults/log-flood\n        with: { lines: 1, bytes_per_line: 8, via: stdot }\n",
    )
    .expect("write");
    let out = arkline().arg("validate").arg(&path).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "without --ark: {out:?}");

    let out = arkline()
        .args(["validate", "--json", "--ark"])
        .arg(&faults)
        .arg(&path)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let diags: Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &diags[0];
    assert_eq!(d["code"], "config-schema", "{diags}");
    assert_eq!(d["line"], 7, "{diags}");
    assert!(
        d["message"]
            .as_str()
            .is_some_and(|m| m.contains(r#"`via` must be one of "log", "stdout", "stderr""#)),
        "{diags}"
    );
    assert_eq!(d["hint"], "did you mean `stdout`?", "{diags}");

    // A file given to --ark that is not a biz archive is refused, saying so.
    let out = arkline()
        .args(["validate", "--ark"])
        .arg(&path)
        .arg(&path)
        .output()
        .expect("runs");
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("with --ark"),
        "{out:?}"
    );
}
