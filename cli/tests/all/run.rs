//! `arkline run` as a user runs it: the real binary on real `.arkc` files (bizes
//! built by the testkit), real redb data dirs, SIGKILL for the crash test.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::arkc::{self, TestEngine};

fn arkline() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arkline"));
    cmd.env_remove("ARKLINE_DATA_DIR").env_remove("ARKLINE_LOG");
    cmd
}

const GREEN_A: &str = "\
name: build
stages:
  - name: compile
    steps:
      - name: shout
        uses: faults/upper
        with: { text: hello }
      - name: nap
        uses: faults/sleep
        with: { ms: 50 }
  - name: ship
    steps:
      - name: payload
        uses: faults/echo
        with: { data: \"${{ steps.shout.outputs.text }}\" }
";

const GREEN_B: &str = "\
name: report
stages:
  - name: only
    steps:
      - name: shout
        uses: faults/upper
        with: { text: report }
";

const CRON_ONLY: &str = "\
name: nightly
triggers:
  - type: cron
    schedule: \"0 2 * * *\"
stages:
  - name: only
    steps:
      - name: shout
        uses: faults/upper
        with: { text: never here }
";

const FAILING: &str = "\
name: broken
stages:
  - name: test
    steps:
      - name: unit
        uses: shell
        with:
          script: |
            echo \"checking the widget\"
            printf 'title \\033]0;owned\\007 then \\033[2Kerased\\n'
            echo \"widget is bent\" >&2
            exit 3
  - name: never
    steps:
      - name: after
        uses: shell
        with: { script: echo unreachable }
";

fn green(dir: &Path) -> std::path::PathBuf {
    arkc::write(
        dir,
        "green.arkc",
        &[
            TestEngine {
                name: "team-a",
                bizes: &[("faults", &[])],
                quota: 2,
                pipelines: &[("build.yaml", GREEN_A), ("nightly.yaml", CRON_ONLY)],
            },
            TestEngine {
                name: "team-b",
                bizes: &[("faults", &[])],
                quota: 1,
                pipelines: &[("report.yaml", GREEN_B)],
            },
        ],
    )
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn a_green_container_runs_every_manual_pipeline_of_every_engine_and_exits_0() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = green(tmp.path());
    let data = tmp.path().join("data");
    let out = arkline()
        .arg("run")
        .arg(&archive)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The summary table: one row per execution, the cron-only pipeline not run.
    let rows: Vec<&str> = stdout.lines().collect();
    assert!(rows[0].starts_with("ENGINE"), "{stdout}");
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(
        stdout.lines().any(
            |l| l.split_whitespace().collect::<Vec<_>>()[..].starts_with(&[
                "team-a",
                "build",
                "build-1",
                "Succeeded"
            ]) && l.ends_with("3/3")
        ),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("team-b") && l.contains("report-1") && l.ends_with("1/1")),
        "{stdout}"
    );
    assert!(!stdout.contains("nightly"), "{stdout}");
    // Plain progress (stderr is not a terminal), step by step.
    assert!(
        stderr.contains("Ok team-a/build-1 ship/payload"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Finished team-b/report-1 Succeeded"),
        "{stderr}"
    );
    assert!(
        data.join("node-id").is_file(),
        "the data dir is the one given"
    );
}

#[test]
fn json_events_are_ordered_per_execution_with_stable_fields() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = green(tmp.path());
    let out = arkline()
        .arg("run")
        .arg(&archive)
        .args([
            "--json",
            "--pipeline",
            "team-a/build",
            "--pipeline",
            "nightly",
        ])
        .env("ARKLINE_DATA_DIR", tmp.path().join("data"))
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = json_lines(&out.stdout);
    assert!(!events.is_empty());
    let mut executions: Vec<&str> = events
        .iter()
        .map(|e| e["execution"].as_str().expect("execution"))
        .collect();
    executions.sort_unstable();
    executions.dedup();
    assert_eq!(
        executions,
        ["build-1", "nightly-1"],
        "--pipeline picks exactly these"
    );
    for e in &events {
        for field in [
            "event",
            "time",
            "engine",
            "pipeline",
            "execution",
            "run",
            "stage",
            "step",
            "phase",
            "attempt",
            "duration_ms",
            "reason",
        ] {
            assert!(e.get(field).is_some(), "`{field}` missing in {e}");
        }
    }
    let build: Vec<&Value> = events
        .iter()
        .filter(|e| e["execution"] == "build-1")
        .collect();
    assert_eq!(build[0]["event"], "execution_started");
    assert_eq!(build[0]["resumed"], false);
    assert_eq!(build[0]["engine"], "team-a");
    assert_eq!(build[0]["pipeline"], "build");
    assert_eq!(build[0]["run"], 1);
    let last = build.last().expect("events");
    assert_eq!(last["event"], "execution_finished");
    assert_eq!(last["phase"], "Succeeded");
    assert_eq!(
        (last["steps_ok"].as_u64(), last["steps_total"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(last["duration_ms"].is_u64(), "{last}");
    let middle = &build[1..build.len() - 1];
    assert!(
        middle
            .iter()
            .all(|e| e["event"] == "step" || e["event"] == "execution_phase"),
        "only steps and phase changes between start and finish: {middle:?}"
    );
    // Each step: Running, then Succeeded with a duration; `payload` only after
    // both steps of the first stage succeeded.
    let position = |step: &str, phase: &str| {
        build
            .iter()
            .position(|e| e["step"] == step && e["phase"] == phase)
            .unwrap_or_else(|| panic!("no {step} {phase} in {build:?}"))
    };
    for step in ["shout", "nap", "payload"] {
        assert!(position(step, "Running") < position(step, "Succeeded"));
        let done = &build[position(step, "Succeeded")];
        assert!(done["duration_ms"].is_u64(), "{done}");
        assert_eq!(done["attempt"], 1);
    }
    assert_eq!(build[position("payload", "Running")]["stage"], "ship");
    assert!(position("payload", "Running") > position("shout", "Succeeded"));
    assert!(position("payload", "Running") > position("nap", "Succeeded"));
}

#[test]
fn a_failing_pipeline_exits_1_and_shows_the_failing_steps_log_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = arkc::write(
        tmp.path(),
        "failing.arkc",
        &[
            TestEngine {
                name: "team-a",
                bizes: &[("shell", &["process=sh"])],
                quota: 0,
                pipelines: &[("broken.yaml", FAILING)],
            },
            TestEngine {
                name: "team-b",
                bizes: &[("faults", &[])],
                quota: 1,
                pipelines: &[("report.yaml", GREEN_B)],
            },
        ],
    );
    let out = arkline()
        .arg("run")
        .arg(&archive)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .expect("runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("team-a")
            && l.contains("broken-1")
            && l.contains("Failed")
            && l.ends_with("0/2")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("team-b") && l.contains("Succeeded")),
        "the other engine's pipeline still ran: {stdout}"
    );
    assert!(
        stderr.contains("Failed team-a/broken-1 test/unit"),
        "{stderr}"
    );
    assert!(
        stderr.contains("widget is bent"),
        "the log tail is shown: {stderr}"
    );
    // What the step printed cannot drive the terminal: escapes are shown, not sent.
    assert!(
        stderr.contains("title \\u{1b}]0;owned\\u{7} then \\u{1b}[2Kerased"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    assert!(
        !stderr.contains("Running team-a/broken-1 never/after"),
        "{stderr}"
    );
}

#[test]
fn a_missing_or_malformed_archive_is_a_usage_error_with_a_clear_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let out = arkline()
        .arg("run")
        .arg(tmp.path().join("nope.arkc"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nope.arkc"), "{stderr}");
    assert!(stderr.contains("No such file"), "{stderr}");

    let bad = tmp.path().join("bad.arkc");
    std::fs::write(&bad, b"this is not a zip archive").expect("write");
    let out = arkline()
        .arg("run")
        .arg(&bad)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot use")
            && stderr.contains("bad.arkc")
            && stderr.contains("as a container archive"),
        "{stderr}"
    );
    assert!(
        !data.exists(),
        "nothing is created for an archive that cannot be read"
    );

    // A pipeline the archive does not have is a usage error too.
    let archive = green(tmp.path());
    let out = arkline()
        .arg("run")
        .arg(&archive)
        .args(["--pipeline", "team-b/build", "--data-dir"])
        .arg(&data)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--pipeline team-b/build: the archive has no such pipeline"),
        "{stderr}"
    );
    assert!(
        stderr.contains("team-a/build"),
        "lists what exists: {stderr}"
    );
}

const SLOW: &str = "\
name: slow
stages:
  - name: first
    steps:
      - name: once
        uses: faults/upper
        with: { text: done once }
  - name: second
    steps:
      - name: nap
        uses: faults/sleep
        retries: 1
        with: { ms: 3000 }
";

#[test]
fn a_run_killed_mid_step_resumes_the_same_execution_on_the_same_data_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = arkc::write(
        tmp.path(),
        "slow.arkc",
        &[TestEngine {
            name: "team-a",
            bizes: &[("faults", &[])],
            quota: 1,
            pipelines: &[("slow.yaml", SLOW)],
        }],
    );
    let data = tmp.path().join("data");
    let mut child = arkline()
        .arg("run")
        .arg(&archive)
        .arg("--data-dir")
        .arg(&data)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait until the store has `nap` Running (the events come from its watch).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first_run = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|e| {
            panic!("no `nap` Running event before the deadline ({e}): {first_run:?}")
        });
        let event: Value = serde_json::from_str(&line).expect("JSON line");
        let running = event["step"] == "nap" && event["phase"] == "Running";
        first_run.push(event);
        if running {
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    reader.join().expect("reader");
    assert!(
        !first_run.iter().any(|e| e["event"] == "execution_finished"),
        "killed before the end: {first_run:?}"
    );

    let out = arkline()
        .arg("run")
        .arg(&archive)
        .arg("--data-dir")
        .arg(&data)
        .arg("--json")
        .output()
        .expect("runs again");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = json_lines(&out.stdout);
    let started: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "execution_started")
        .collect();
    assert_eq!(started.len(), 1, "no second execution: {events:?}");
    assert_eq!(started[0]["execution"], "slow-1", "the same execution");
    assert_eq!(started[0]["resumed"], true);
    assert!(
        events.iter().all(|e| e["execution"] == "slow-1"),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["step"] == "once" && e["phase"] == "Running"),
        "a completed step does not run again: {events:?}"
    );
    let nap_again = events
        .iter()
        .find(|e| e["step"] == "nap" && e["phase"] == "Succeeded")
        .unwrap_or_else(|| panic!("nap finished: {events:?}"));
    assert_eq!(nap_again["attempt"], 2, "the interrupted attempt counted");
    let finished = events.last().expect("events");
    assert_eq!(finished["event"], "execution_finished");
    assert_eq!(finished["phase"], "Succeeded");
    assert_eq!(finished["steps_ok"], 2);

    // Finished: a third run on the same data dir starts a new execution.
    let out = arkline()
        .arg("run")
        .arg(&archive)
        .arg("--data-dir")
        .arg(&data)
        .arg("--json")
        .args(["--pipeline", "slow"])
        .output()
        .expect("runs a third time");
    assert_eq!(out.status.code(), Some(0));
    let events = json_lines(&out.stdout);
    assert_eq!(events[0]["execution"], "slow-2");
    assert_eq!(events[0]["resumed"], false);
}

const ABORTABLE: &str = "\
name: long
stages:
  - name: only
    steps:
      - name: nap
        uses: faults/sleep
        with: { ms: 600000 }
finally:
  - name: cleanup
    uses: faults/echo
    with: { data: cleaned up }
";

#[test]
fn ctrl_c_aborts_the_executions_and_finally_still_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = arkc::write(
        tmp.path(),
        "long.arkc",
        &[TestEngine {
            name: "team-a",
            bizes: &[("faults", &[])],
            quota: 1,
            pipelines: &[("long.yaml", ABORTABLE)],
        }],
    );
    let mut child = arkline()
        .arg("run")
        .arg(&archive)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut events: Vec<Value> = Vec::new();
    while !events
        .iter()
        .any(|e| e["step"] == "nap" && e["phase"] == "Running")
    {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| panic!("no `nap` Running event ({e}): {events:?}"));
        events.push(serde_json::from_str(&line).expect("JSON line"));
    }
    // SIGINT, as Ctrl-C in a terminal sends.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let out = child.wait_with_output().expect("exits");
    reader.join().expect("reader");
    events.extend(
        rx.try_iter()
            .map(|l| serde_json::from_str(&l).expect("JSON line")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "aborted is not success: {stderr}"
    );
    let nap = events
        .iter()
        .find(|e| e["step"] == "nap" && e["phase"] == "Aborted")
        .unwrap_or_else(|| panic!("nap aborted: {events:?}"));
    assert_eq!(nap["event"], "step");
    assert!(
        events
            .iter()
            .any(|e| e["step"] == "cleanup" && e["phase"] == "Succeeded" && e["stage"].is_null()),
        "finally ran after the abort: {events:?}"
    );
    let last = events.last().expect("events");
    assert_eq!(last["event"], "execution_finished");
    assert_eq!(last["phase"], "Aborted");
}

#[test]
fn require_sandbox_runs_process_steps_where_the_sandbox_can_be_built() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = arkc::write(
        tmp.path(),
        "sandboxed.arkc",
        &[TestEngine {
            name: "team-a",
            bizes: &[("shell", &["process=sh"])],
            quota: 1,
            pipelines: &[(
                "sandboxed.yaml",
                "name: sandboxed\nstages:\n  - name: s\n    steps:\n      - name: ps\n        uses: shell\n        with: { script: 'test \"$(id -u)\" = 1000' }\n",
            )],
        }],
    );
    let out = arkline()
        .arg("run")
        .arg(&archive)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .arg("--require-sandbox")
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
