//! `cargo ark run` on the workspace's `faults` plugin: the real binary, the real
//! component, the real runtime.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

/// The faults archive, packaged once per test process.
fn faults_ark() -> PathBuf {
    arkline_testkit::plugin("faults")
}

fn cargo_ark() -> Command {
    let mut cmd = Command::cargo_bin("cargo-ark").expect("cargo-ark is built");
    cmd.env("NO_COLOR", "1");
    cmd
}

/// `cargo ark run STEP --ark <faults> ARGS…` in a workspace shared by the tests
/// whose steps write nothing.
fn run(step: &str, args: &[&str]) -> Command {
    let workspace = Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-workspace");
    let mut cmd = run_without_workspace(step, args);
    cmd.arg("--workspace").arg(workspace);
    cmd
}

/// `cargo ark run STEP --ark <faults> ARGS…`.
fn run_without_workspace(step: &str, args: &[&str]) -> Command {
    let mut cmd = cargo_ark();
    cmd.args(["ark", "run", step, "--ark"])
        .arg(faults_ark())
        .args(args);
    cmd
}

fn stdout_json(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_step_runs_and_prints_its_outputs() {
    run("upper", &["--with", r#"{"text":"hi there"}"#])
        .assert()
        .success()
        .stdout("outputs:\n  text = HI THERE\n")
        .stderr(predicate::str::contains("Installing faults v0.1.0"))
        .stderr(predicate::str::contains("Running faults/upper"))
        .stderr(predicate::str::contains("Finished faults/upper"));
}

#[test]
fn json_prints_outputs_summary_and_fuel() {
    let json = stdout_json(&mut run("upper", &["--with", r#"{"text":"hi"}"#, "--json"]));
    assert_eq!(json["outputs"], serde_json::json!({ "text": "HI" }));
    assert_eq!(json["summary"], serde_json::Value::Null);
    assert!(
        json["fuel_consumed"].as_u64().is_some_and(|f| f > 0),
        "{json}"
    );
}

#[test]
fn the_log_is_printed_live_with_level_and_source() {
    run(
        "print",
        &["--with", r#"{"stdout":"out line\n","stderr":"err line\n"}"#],
    )
    .assert()
    .success()
    .stdout("outputs: (none)\n")
    .stderr(predicate::str::contains(" info stdout | out line\n"))
    .stderr(predicate::str::contains(" warn stderr | err line\n"));
}

#[test]
fn a_failing_step_exits_1_with_its_message() {
    run("fail", &["--with", r#"{"message":"boom"}"#])
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            "error: step `faults/fail` failed: boom",
        ));

    let mut cmd = run("fail", &["--with", r#"{"message":"boom"}"#, "--json"]);
    cmd.assert().code(1);
    assert_eq!(
        stdout_json(&mut cmd),
        serde_json::json!({ "error": { "kind": "failed", "message": "boom" } })
    );
}

#[test]
fn faults_name_the_limit_that_stopped_the_step() {
    let mut cmd = run("spin", &["--timeout", "300ms", "--json"]);
    cmd.assert()
        .code(1)
        .stderr(predicate::str::contains("the step timed out after 300ms"));
    assert_eq!(stdout_json(&mut cmd)["error"]["kind"], "timeout");

    run("spin", &["--fuel", "100000"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("ran out of fuel (100000 units)"));

    run("panic", &["--with", r#"{"message":"guest gave up"}"#])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("the step trapped"))
        .stderr(predicate::str::contains("guest gave up"))
        .stderr(predicate::str::contains("\n\nguest backtrace:\n    0: "));
}

#[test]
fn invalid_with_is_refused_before_anything_runs() {
    run("upper", &["--with", "{text: hi}"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "invalid value '{text: hi}' for '--with <JSON>'",
        ))
        .stderr(predicate::str::contains("not valid JSON"));
    run("upper", &["--with", r#"["hi"]"#])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "the step configuration must be a JSON object",
        ));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("with.json");
    std::fs::write(&file, "{\"text\": ").expect("write");
    run("upper", &["--with-file", &file.to_string_lossy()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("with.json: not valid JSON"));
}

#[test]
fn a_config_the_step_rejects_is_an_invalid_config_failure() {
    let mut cmd = run("upper", &["--with", r#"{"txt":"hi"}"#, "--json"]);
    cmd.assert()
        .code(1)
        .stderr(predicate::str::contains("invalid configuration"));
    assert_eq!(stdout_json(&mut cmd)["error"]["kind"], "invalid_config");
}

#[test]
fn a_bad_grant_names_itself_and_the_accepted_forms() {
    run("upper", &["--grant", "network=example.com"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("'network=example.com'"))
        .stderr(predicate::str::contains("unknown capability `network`"))
        .stderr(predicate::str::contains(
            "`process=PROG[,PROG…]`, `http=HOST[,HOST…]`, `cache` and `host-call=NAME[,NAME…]`",
        ));
    run("upper", &["--grant", "process"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`process` needs a list"));
}

#[test]
fn an_unknown_step_type_lists_the_step_types() {
    run("nope", &[])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "biz `faults@0.1.0` has no step type `nope` (it has: upper, echo, fail,",
        ))
        .stderr(predicate::str::contains("call-capability"));
}

#[test]
fn the_workspace_directory_receives_the_files_a_step_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    run_without_workspace(
        "write-file",
        &[
            "--with",
            r#"{"path":"/workspace/x.txt","content":"written by the guest"}"#,
        ],
    )
    .arg("--workspace")
    .arg(&workspace)
    .assert()
    .success();
    assert_eq!(
        std::fs::read_to_string(workspace.join("x.txt")).expect("the file is on the host"),
        "written by the guest"
    );
}

#[test]
fn without_workspace_a_fresh_directory_is_kept_and_named() {
    let out = run_without_workspace(
        "write-file",
        &[
            "--with",
            r#"{"path":"/workspace/kept.txt","content":"still here"}"#,
        ],
    )
    .output()
    .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir = stderr
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Workspace "))
        .and_then(|rest| rest.strip_suffix(" (fresh; kept after the run)"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no workspace line in:\n{stderr}"));
    let content = std::fs::read_to_string(dir.join("kept.txt"));
    std::fs::remove_dir_all(&dir).expect("clean up the kept workspace");
    assert_eq!(content.expect("the file is kept"), "still here");
}

#[test]
fn capabilities_are_denied_unless_granted() {
    run("call-capability", &["--with", r#"{"capability":"process"}"#])
        .assert()
        .success()
        .stdout(predicate::str::contains("kind = denied"))
        .stdout(predicate::str::contains(
            "capability `process` denied to biz `faults@0.1.0` in engine `local`: the engine does not grant `process: true`",
        ));
    run(
        "call-capability",
        &[
            "--with",
            r#"{"capability":"process"}"#,
            "--grant",
            "process=true",
        ],
    )
    .assert()
    .success()
    .stdout(predicate::str::contains("denied").not());
    // A grant the manifest does not request changes nothing, and says so.
    run(
        "call-capability",
        &[
            "--with",
            r#"{"capability":"process"}"#,
            "--grant",
            "process=sh",
        ],
    )
    .assert()
    .success()
    .stdout(predicate::str::contains("kind = denied"))
    .stderr(predicate::str::contains(
        "warning: `faults` does not request `process: sh`, so that grant has no effect",
    ));
}

#[test]
fn without_ark_the_current_crate_is_packaged_and_its_compiled_code_cached() {
    let faults_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/testing/faults");
    let upper = |cmd: &mut Command| {
        cmd.current_dir(&faults_dir)
            .args(["ark", "run", "upper", "--with", r#"{"text":"built"}"#])
            .arg("--workspace")
            .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("run-workspace"))
            .assert()
            .success()
            .stdout("outputs:\n  text = BUILT\n")
            .stderr(predicate::str::contains("Packaged faults v0.1.0"))
            .stderr(predicate::str::contains("target/ark/faults-0.1.0.ark"))
    };
    upper(&mut cargo_ark());
    // The second run loads the compiled component from target/ark/compiled.
    upper(&mut cargo_ark()).stderr(predicate::str::contains(
        "Installing faults v0.1.0 (compiled cache)",
    ));
}

#[test]
fn help_documents_the_grant_syntax() {
    cargo_ark()
        .args(["ark", "run", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("process=PROG[,PROG…]"))
        .stdout(predicate::str::contains(
            "--grant http=api.example.com,*.internal",
        ))
        .stdout(predicate::str::contains("--with-file"));
}
