//! The `process` capability through the real `shell` biz: granted programs only,
//! outputs, streaming, scrubbed environment, rlimits, Landlock confinement, and the
//! process group killed on timeout and on cancel.

use std::sync::Arc;
use std::time::Duration;

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::host::LogSource;
use arkline::runtime::{
    Activation, BizLease, BizRegistry, CancelToken, Runtime, RuntimeConfig, StepCall, StepFailure,
    StepFault,
};
use serde_json::json;

async fn shell(grant: &[&str]) -> (BizRegistry, BizLease) {
    let ark = Ark::open(arkline_testkit::plugin("shell")).expect("shell archive");
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(16)).expect("runtime");
    let registry = BizRegistry::new(runtime, "proc");
    let grants = Capabilities {
        process: grant.iter().map(|s| s.to_string()).collect(),
        ..Capabilities::default()
    };
    registry
        .install(Arc::new(ark), &grants, Activation::IfNone)
        .await
        .expect("installs");
    let lease = registry.resolve("shell").expect("resolves");
    (registry, lease)
}

fn script(script: &str) -> StepCall {
    StepCall::new("run", json!({ "script": script }))
}

/// Live (not zombie) processes whose command line contains `marker`.
fn live_processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let path = entry.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(marker) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        if !matches!(state, Some("Z") | Some("X") | None) {
            found.push(cmdline);
        }
    }
    found
}

/// Waits (bounded) for SIGKILLed processes to disappear; returns those left.
async fn survivors(marker: &str) -> Vec<String> {
    for _ in 0..500 {
        if live_processes_with(marker).is_empty() {
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    live_processes_with(marker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_shell_runs_in_the_workspace_with_outputs_and_a_streamed_log() {
    let (_registry, lease) = shell(&["sh"]).await;
    let ws = tempfile::tempdir().expect("tempdir");
    let report = lease
        .invoke(
            script(
                "echo hello from sh\necho oops >&2\nprintf 'made' > made.txt\necho answer=42 >> \"$ARKLINE_OUTPUT\"\npwd > pwd.txt",
            )
            .workspace(ws.path()),
        )
        .await;
    let out = report
        .outputs()
        .unwrap_or_else(|| panic!("{:?}\n{}", report.result, report.log.text()));
    assert_eq!(out["answer"], "42");
    assert_eq!(out["exit_code"], "0");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("made.txt")).expect("file"),
        "made"
    );
    let pwd = std::fs::read_to_string(ws.path().join("pwd.txt")).expect("pwd");
    assert_eq!(
        std::path::Path::new(pwd.trim()),
        ws.path().canonicalize().expect("canonical")
    );
    let streamed: Vec<_> = report
        .log
        .lines
        .iter()
        .filter(|l| l.fields.iter().any(|(k, v)| k == "program" && v == "sh"))
        .map(|l| (l.source, l.message.as_str()))
        .collect();
    assert!(
        streamed.contains(&(LogSource::Stdout, "hello from sh")),
        "{streamed:?}"
    );
    assert!(
        streamed.contains(&(LogSource::Stderr, "oops")),
        "{streamed:?}"
    );

    // A failing script fails the step with its exit code.
    let report = lease.invoke(script("exit 3").workspace(ws.path())).await;
    match &report.result {
        Err(StepFailure::Failed(message)) => assert!(message.contains('3'), "{message}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_program_is_refused_and_the_environment_is_scrubbed() {
    let (_registry, lease) = shell(&["sh"]).await;
    let ws = tempfile::tempdir().expect("tempdir");
    // bash is requested by the manifest but not granted here.
    let report = lease
        .invoke(
            StepCall::new("run", json!({ "script": "true", "shell": "bash" })).workspace(ws.path()),
        )
        .await;
    let text = format!("{:?} {}", report.result, report.log.text());
    assert!(
        text.contains("capability `process` denied") && text.contains("bash"),
        "{text}"
    );

    let report = lease
        .invoke(script("env | sort > env.txt\nulimit -t > cpu.txt").workspace(ws.path()))
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    let env = std::fs::read_to_string(ws.path().join("env.txt")).expect("env");
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    // The test process has CARGO_* variables; none reach the program.
    assert!(!names.iter().any(|n| n.starts_with("CARGO")), "{env}");
    let home = env
        .lines()
        .find_map(|l| l.strip_prefix("HOME="))
        .expect("HOME");
    assert_eq!(
        std::path::Path::new(home),
        ws.path().canonicalize().expect("canonical")
    );
    let path = env
        .lines()
        .find_map(|l| l.strip_prefix("PATH="))
        .expect("PATH");
    assert!(
        !path.contains(':') || path.split(':').all(|d| !d.is_empty()),
        "{path}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("cpu.txt"))
            .expect("cpu")
            .trim(),
        "3600"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landlock_confines_the_program_to_the_workspace() {
    if !arkline::host::process::landlock_available() {
        eprintln!("Landlock is not available on this kernel: confinement not tested here");
        return;
    }
    let (_registry, lease) = shell(&["sh"]).await;
    let root = tempfile::tempdir().expect("tempdir");
    let ws = root.path().join("ws");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&ws).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret.txt"), "top secret").expect("write");
    let outside_dir = outside.display().to_string();
    let report = lease
        .invoke(
            StepCall::new(
                "run",
                json!({
                    "script": format!(
                        "cat {outside_dir}/secret.txt > read.txt 2>&1 || echo denied-read >> result.txt\n\
                         echo x > {outside_dir}/planted.txt 2>/dev/null || echo denied-write >> result.txt\n\
                         cat /etc/hostname > /dev/null && echo system-read >> result.txt\n\
                         echo inside > inside.txt && echo workspace-write >> result.txt",
                    ),
                    "errexit": false,
                }),
            )
            .workspace(&ws),
        )
        .await;
    assert!(
        report.result.is_ok(),
        "{:?}\n{}",
        report.result,
        report.log.text()
    );
    let result = std::fs::read_to_string(ws.join("result.txt")).expect("result");
    let lines: Vec<&str> = result.lines().collect();
    assert_eq!(
        lines,
        [
            "denied-read",
            "denied-write",
            "system-read",
            "workspace-write"
        ],
        "read.txt: {:?}",
        std::fs::read_to_string(ws.join("read.txt"))
    );
    assert!(!outside.join("planted.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_or_a_cancel_kills_the_whole_process_group() {
    let (_registry, lease) = shell(&["sh"]).await;
    let ws = tempfile::tempdir().expect("tempdir");

    // Timeout: a background child and a foreground one, both gone afterwards.
    let marker = format!("1000.{}1", std::process::id());
    let report = lease
        .invoke(
            script(&format!("sleep {marker} &\necho started\nsleep {marker}"))
                .workspace(ws.path())
                .timeout(Duration::from_secs(2)),
        )
        .await;
    assert!(
        matches!(report.fault(), Some(StepFault::Timeout { .. }))
            || matches!(&report.result, Err(StepFailure::Failed(m)) if m.contains("timed out")),
        "{:?}",
        report.result
    );
    assert_eq!(survivors(&marker).await, Vec::<String>::new());

    // Cancel: once the script has started, cancel the step.
    let marker = format!("1000.{}2", std::process::id());
    let token = CancelToken::new();
    let call = script(&format!("sleep {marker} &\necho started\nsleep {marker}"))
        .workspace(ws.path())
        .cancel_on(token.clone());
    let running =
        arkline_testkit::spawn_started(Arc::new(lease), call, |line| line.message == "started")
            .await;
    // The script's shell (its command line holds the marker) and its children run.
    assert!(!live_processes_with(&marker).is_empty(), "the script runs");
    token.cancel();
    let report = running.await.expect("joins");
    assert_eq!(report.fault(), Some(&StepFault::Cancelled));
    assert_eq!(survivors(&marker).await, Vec::<String>::new());
}
