//! The `process` capability through the real `shell` biz: granted programs only,
//! outputs, streaming, scrubbed environment, rlimits, Landlock confinement, the
//! process group killed on timeout and on cancel, and the namespace sandbox (no
//! network unless granted, no host process visible or signalable, nothing left
//! after the step, loader variables refused, secrets and devices hidden, a
//! `noexec` workspace unless granted).

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
    shell_granted(Capabilities {
        process: grant.iter().map(|s| s.to_string()).collect(),
        ..Capabilities::default()
    })
    .await
}

async fn shell_granted(grants: Capabilities) -> (BizRegistry, BizLease) {
    let ark = Ark::open(arkline_testkit::plugin("shell")).expect("shell archive");
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(16)).expect("runtime");
    let registry = BizRegistry::new(runtime, "proc");
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

/// Runs `script` (errors not fatal) in a fresh workspace and returns it.
async fn run_script(lease: &BizLease, script: &str) -> tempfile::TempDir {
    let ws = tempfile::tempdir().expect("tempdir");
    let report = lease
        .invoke(
            StepCall::new("run", json!({ "script": script, "errexit": false }))
                .workspace(ws.path()),
        )
        .await;
    assert!(
        report.result.is_ok(),
        "{:?}\n{}",
        report.result,
        report.log.text()
    );
    ws
}

fn read(ws: &tempfile::TempDir, name: &str) -> String {
    std::fs::read_to_string(ws.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_step_has_no_network_unless_the_engine_grants_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    // bash, for its /dev/tcp.
    let probe = format!(
        "if bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>err.txt; then echo connected > net.txt; else echo refused > net.txt; fi"
    );
    let (_registry, lease) = shell(&["sh", "bash"]).await;
    let ws = run_script(&lease, &probe).await;
    assert_eq!(
        read(&ws, "net.txt").trim(),
        "refused",
        "{}",
        read(&ws, "err.txt")
    );

    let (_registry, lease) = shell_granted(
        arkline::host::parse_grants(&["process=sh,bash", "process-net=host"]).expect("grants"),
    )
    .await;
    let ws = run_script(&lease, &probe).await;
    assert_eq!(
        read(&ws, "net.txt").trim(),
        "connected",
        "{}",
        read(&ws, "err.txt")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_under_a_private_directory_is_reachable_in_the_sandbox() {
    // A `0700` directory of the host's user (like `/root`, or what `mktemp -d`
    // makes) holding the workspace: the sandbox's uid may not search it, yet
    // the workspace is bound from a descriptor opened by the host.
    let private = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod 0700");
    let ws = private.path().join("deeper").join("workspace");
    std::fs::create_dir_all(&ws).expect("workspace");
    let (_registry, lease) = shell(&["sh"]).await;
    let report = lease
        .invoke(
            StepCall::new(
                "run",
                json!({ "script": "echo from the sandbox > out.txt; cat out.txt" }),
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
    assert_eq!(
        std::fs::read_to_string(ws.join("out.txt")).expect("written in the workspace"),
        "from the sandbox\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_step_cannot_signal_a_host_process() {
    let (_registry, lease) = shell(&["sh"]).await;
    assert_cannot_kill_a_host_process(&lease, "3124").await;
}

/// Starts a host `sleep` (its argument marked with `tag`), has the step
/// `kill -9` it, and checks it is alive and the kill failed.
async fn assert_cannot_kill_a_host_process(lease: &BizLease, tag: &str) {
    let marker = format!("{tag}.{}1", std::process::id());
    let mut victim = std::process::Command::new("sleep")
        .arg(&marker)
        .spawn()
        .expect("sleep");
    let ws = run_script(
        lease,
        &format!("kill -9 {} 2> kill.txt; echo $? >> kill.txt", victim.id()),
    )
    .await;
    let alive = victim.try_wait().expect("try_wait").is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(
        alive,
        "the step killed a host process: {}",
        read(&ws, "kill.txt")
    );
    assert_ne!(read(&ws, "kill.txt").lines().last(), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_step_is_never_host_root_towards_files() {
    // A root-only file in a directory the sandbox shows read-only, not in
    // the masked list: as root, the sandbox's uid must not own it.
    let visible = tempfile::tempdir().expect("tempdir");
    let dir = visible.path().canonicalize().expect("canonical");
    std::fs::write(dir.join("secret.txt"), "root only").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(
        dir.join("secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let shown = dir.clone();
    let (_registry, lease) = shell_limited(move |limits| limits.read_only_paths.push(shown)).await;
    let ws = run_script(
        &lease,
        &format!(
            "id -u > uid.txt\ncat {}/secret.txt > secret.txt 2>&1\nmkdir -p made/deep && echo mine > made/deep/mine.txt",
            dir.display()
        ),
    )
    .await;
    assert_eq!(read(&ws, "uid.txt").trim(), "1000");
    // /proc/self belongs to the effective uid.
    let root = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
    };
    let (host_uid, _) = arkline::host::process::sandbox_host_ids();
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(ws.path().join("made/deep/mine.txt"))
            .expect("written")
            .uid()
    };
    assert_eq!(
        owner, host_uid,
        "what the program writes is owned by its host id"
    );
    if root {
        assert_ne!(
            host_uid, 0,
            "as root, the sandbox maps to an unprivileged id"
        );
        let secret = read(&ws, "secret.txt");
        assert!(
            !secret.contains("root only"),
            "read a root-only file: {secret}"
        );
        assert!(secret.contains("Permission denied"), "{secret}");
        // A later run can still write what an earlier step (the host, as
        // root) left in the workspace.
        std::fs::write(ws.path().join("from-host.txt"), "host").expect("write");
        let report = lease
            .invoke(
                StepCall::new(
                    "run",
                    json!({ "script": "echo more >> from-host.txt", "errexit": true }),
                )
                .workspace(ws.path()),
            )
            .await;
        assert!(
            report.result.is_ok(),
            "{:?}\n{}",
            report.result,
            report.log.text()
        );
        assert_eq!(read(&ws, "from-host.txt"), "hostmore\n");
    } else {
        eprintln!("not running as root: the host-root case is exercised in CI (root)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landlock_scopes_stop_abstract_sockets_and_signals_the_namespaces_let_through() {
    let abi = arkline::host::process::landlock_abi();
    assert!(
        abi >= 6,
        "this test needs Landlock ABI 6 (Linux 6.12 or later with CONFIG_SECURITY_LANDLOCK); this kernel has ABI {abi}"
    );
    // With the host network, the host's abstract unix sockets are in reach
    // of the namespaces; the abstract-socket scope stops them.
    let name = format!("arkline-test-{}", std::process::id());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name")
    };
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).expect("abstract listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let (_registry, lease) = shell_granted(
        arkline::host::parse_grants(&["process=sh", "process=perl", "process-net=host"])
            .expect("grants"),
    )
    .await;
    let probe = format!(
        "perl -MSocket -e 'socket(S, PF_UNIX, SOCK_STREAM, 0) or die \"socket: $!\"; connect(S, pack_sockaddr_un(\"\\0{name}\")) or die \"refused: $!\"; print \"connected\"' > abstract.txt 2>&1; true"
    );
    let ws = run_script(&lease, &probe).await;
    let outcome = read(&ws, "abstract.txt");
    assert!(
        listener.accept().is_err(),
        "the step reached a host abstract socket: {outcome}"
    );
    assert!(outcome.contains("refused"), "{outcome}");

    // Without the namespace sandbox (the fallback), the signal scope still
    // keeps host processes out of reach.
    let (_registry, lease) = shell_limited(|limits| limits.sandbox = false).await;
    assert_cannot_kill_a_host_process(&lease, "3125").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_step_sees_no_host_process_in_proc() {
    let (_registry, lease) = shell(&["sh"]).await;
    let me = std::process::id();
    let ws = run_script(
        &lease,
        &format!(
            "for p in /proc/[0-9]*; do echo ${{p#/proc/}}; done > pids.txt\n\
             if cat /proc/{me}/environ > environ.txt 2>/dev/null; then echo read; else echo unreadable; fi > result.txt\n\
             cat /proc/1/cmdline > init.txt"
        ),
    )
    .await;
    let pids: Vec<u32> = read(&ws, "pids.txt")
        .lines()
        .map(|l| l.parse().expect("a pid"))
        .collect();
    // The script's shell is PID 1; nothing of the host shows.
    assert!(pids.contains(&1), "{pids:?}");
    assert!(!pids.contains(&me), "{pids:?}");
    assert!(pids.len() <= 3, "{pids:?}");
    assert_eq!(read(&ws, "result.txt").trim(), "unreadable");
    assert!(!read(&ws, "environ.txt").contains("CARGO"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_child_does_not_outlive_its_step() {
    let (_registry, lease) = shell(&["sh"]).await;
    let marker = format!("3123.{}45", std::process::id());
    let _ws = run_script(
        &lease,
        &format!("setsid sleep {marker} > /dev/null 2>&1 < /dev/null &\necho started"),
    )
    .await;
    assert_eq!(survivors(&marker).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loader_variables_from_the_guest_are_refused() {
    let (_registry, lease) = shell(&["sh"]).await;
    let ws = tempfile::tempdir().expect("tempdir");
    for name in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PATH",
        "GCONV_PATH",
        "BASH_ENV",
    ] {
        let report = lease
            .invoke(
                StepCall::new(
                    "run",
                    json!({ "script": "echo ran > ran.txt", "env": { name: "/workspace/lib.so" } }),
                )
                .workspace(ws.path()),
            )
            .await;
        match &report.result {
            Err(StepFailure::Failed(message)) => assert!(
                message.contains(&format!("`{name}` is refused")),
                "{name}: {message}"
            ),
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
        assert!(!ws.path().join("ran.txt").exists(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_host_devices_are_hidden() {
    let (_registry, lease) = shell(&["sh"]).await;
    let ws = run_script(
        &lease,
        "cat /etc/shadow /etc/gshadow > shadow.txt 2>&1\nls /dev > dev.txt\ncat /etc/passwd > passwd.txt",
    )
    .await;
    let shadow = read(&ws, "shadow.txt");
    assert!(!shadow.contains("root:"), "{shadow}");
    // The rest of /etc is there.
    assert!(read(&ws, "passwd.txt").contains("root:"));
    for dev in read(&ws, "dev.txt").lines() {
        assert!(
            [
                "null", "zero", "full", "random", "urandom", "tty", "fd", "stdin", "stdout",
                "stderr"
            ]
            .contains(&dev),
            "{dev} is visible"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_is_noexec_unless_the_engine_grants_it() {
    // The workspace, and the sandbox's /tmp beside it.
    let copy_and_run = "cp \"$(command -v sh)\" ./mysh && ./mysh -c 'echo ran' > ran.txt 2> err.txt; \
         cp \"$(command -v sh)\" /tmp/mysh && /tmp/mysh -c 'echo tmp' >> ran.txt 2>> err.txt; true";
    let (_registry, lease) = shell(&["sh"]).await;
    let ws = run_script(&lease, copy_and_run).await;
    assert!(ws.path().join("mysh").exists(), "the copy is made");
    assert_eq!(read(&ws, "ran.txt"), "", "{}", read(&ws, "err.txt"));

    let (_registry, lease) = shell_granted(
        arkline::host::parse_grants(&["process=sh", "process-exec=workspace"]).expect("grants"),
    )
    .await;
    let ws = run_script(&lease, copy_and_run).await;
    assert_eq!(
        read(&ws, "ran.txt"),
        "ran\ntmp\n",
        "{}",
        read(&ws, "err.txt")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_requires_the_sandbox_runs_nothing_without_it() {
    let ark = Ark::open(arkline_testkit::plugin("shell")).expect("shell archive");
    let mut config = RuntimeConfig::default().max_instances(4);
    config.process_limits.sandbox = false;
    config.process_limits.require_sandbox = true;
    let registry = BizRegistry::new(Runtime::new(config).expect("runtime"), "proc");
    let grants = Capabilities {
        process: vec!["sh".into()],
        ..Capabilities::default()
    };
    registry
        .install(Arc::new(ark), &grants, Activation::IfNone)
        .await
        .expect("installs");
    let lease = registry.resolve("shell").expect("resolves");
    let ws = tempfile::tempdir().expect("tempdir");
    let report = lease
        .invoke(script("echo ran > ran.txt").workspace(ws.path()))
        .await;
    match &report.result {
        Err(StepFailure::Failed(message)) => assert!(
            message.contains("this host requires it") && message.contains("turned off"),
            "{message}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!ws.path().join("ran.txt").exists());
}

/// The shell biz granted `sh`, in a runtime with `limits` changed by `set`.
async fn shell_limited(
    set: impl FnOnce(&mut arkline::host::ProcessLimits),
) -> (BizRegistry, BizLease) {
    let ark = Ark::open(arkline_testkit::plugin("shell")).expect("shell archive");
    let mut config = RuntimeConfig::default().max_instances(4);
    set(&mut config.process_limits);
    let registry = BizRegistry::new(Runtime::new(config).expect("runtime"), "proc");
    let grants = Capabilities {
        process: vec!["sh".into()],
        ..Capabilities::default()
    };
    registry
        .install(Arc::new(ark), &grants, Activation::IfNone)
        .await
        .expect("installs");
    let lease = registry.resolve("shell").expect("resolves");
    (registry, lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_stopped_by_the_runs_pids_limit() {
    let (_registry, lease) = shell_limited(|limits| limits.max_pids = Some(32)).await;
    let ws = tempfile::tempdir().expect("tempdir");
    // Each child records itself before becoming a long sleep; without the
    // limit all 300 would start.
    let report = lease
        .invoke(
            script(
                "for i in $(seq 1 300); do { echo x >> started.txt; exec sleep 3107; } & done 2>/dev/null\necho looped > looped.txt",
            )
            .workspace(ws.path()),
        )
        .await;
    let started = std::fs::read_to_string(ws.path().join("started.txt")).unwrap_or_default();
    let started = started.lines().count();
    assert!(
        (1..32).contains(&started),
        "{started} children started under a pids limit of 32: {:?}\n{}",
        report.result,
        report.log.text()
    );
    assert_eq!(survivors("sleep 3107").await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_by_the_runs_memory_limit() {
    let (_registry, lease) = shell_limited(|limits| limits.max_memory = Some(64 << 20)).await;
    let ws = tempfile::tempdir().expect("tempdir");
    // `tail -n 1` keeps the whole newline-free input: 400 MiB without a limit.
    let report = lease
        .invoke(
            script("head -c 400M /dev/zero | tail -n 1 > /dev/null\necho $? > status.txt")
                .workspace(ws.path()),
        )
        .await;
    // The kernel kills `tail` (the pipeline then reports 137) or, when it
    // picks the script's shell, the whole step ends with 137 or, when the shell
    // is the sandbox's PID 1, with signal 9 itself.
    let status = std::fs::read_to_string(ws.path().join("status.txt")).unwrap_or_default();
    match &report.result {
        Ok(_) => assert_eq!(
            status.trim(),
            "137",
            "tail was not killed by the memory limit"
        ),
        Err(StepFailure::Failed(message)) => assert!(
            message.contains("exit code 137") || message.contains("signal 9"),
            "{message}\n{}",
            report.log.text()
        ),
        other => panic!("expected the hog to be killed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_requires_the_sandbox_makes_its_runtime_require_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let container = arkline::Container::builder()
        .data_dir(data.path())
        .require_process_sandbox(true)
        .build()
        .expect("builds");
    assert!(container.runtime().config().process_limits.require_sandbox);
    container.shutdown().await;

    // A shared runtime that does not require it is refused, not silently kept.
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(2)).expect("runtime");
    let refused = arkline::Container::builder()
        .data_dir(data.path().join("other"))
        .runtime(runtime)
        .require_process_sandbox(true)
        .build();
    match refused {
        Err(e) => assert!(
            e.to_string().contains("requires the process sandbox"),
            "{e}"
        ),
        Ok(_) => panic!("a shared runtime without require_sandbox was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_requires_the_sandbox_refuses_process_steps_without_it() {
    use arkline::model::PipelineSettingSpec;
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = RuntimeConfig::default().max_instances(4);
    config.process_limits.sandbox = false;
    let container = arkline::Container::builder()
        .data_dir(data.path())
        .runtime_config(config)
        .build()
        .expect("builds");
    let engine = container.engine("team-a").await.expect("engine");
    engine
        .install(
            Ark::open(arkline_testkit::plugin("shell")).expect("shell archive"),
            &Capabilities {
                process: vec!["sh".into()],
                ..Capabilities::default()
            },
        )
        .await
        .expect("installs");
    engine
        .apply_settings(PipelineSettingSpec {
            require_sandbox: true,
            ..PipelineSettingSpec::default()
        })
        .await
        .expect("settings");
    let p = engine
        .apply_pipeline_yaml(
            "t.yaml",
            "name: t\nstages:\n  - name: s\n    steps:\n      - name: sh\n        uses: shell\n        with: { script: echo ran }\n",
        )
        .await
        .expect("pipeline");
    let exec = engine
        .trigger(&p.metadata.name, arkline::TriggerRequest::default())
        .await
        .expect("trigger");
    let done = tokio::time::timeout(Duration::from_secs(120), engine.wait(&exec.metadata.name))
        .await
        .expect("the execution finishes")
        .expect("wait");
    let text = format!("{:?}", done.status);
    assert!(
        text.contains("this engine requires it") && text.contains("turned off"),
        "{text}"
    );
    container.shutdown().await;
}

/// Builder mode (`process-builder=sh`): the program is root of its own user
/// namespace and may mount there, yet it still sees only the sandbox's view:
/// system directories read-only, root-only host files unreadable (their
/// owner is not mapped), no host path outside the view. Files it gives other
/// ids keep them across runs. Without root on the host it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_is_root_of_its_namespace_and_still_confined() {
    let visible = tempfile::tempdir().expect("tempdir");
    let dir = visible.path().canonicalize().expect("canonical");
    std::fs::write(dir.join("secret.txt"), "root only").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(
        dir.join("secret.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let ark = Ark::open(arkline_testkit::plugin("shell")).expect("shell archive");
    let mut config = RuntimeConfig::default().max_instances(4);
    config.process_limits.read_only_paths.push(dir.clone());
    let registry = BizRegistry::new(Runtime::new(config).expect("runtime"), "proc");
    let grants = arkline::host::parse_grants(&["process=sh", "process-builder=sh"])
        .expect("the grants parse");
    assert_eq!(grants.process_builder, ["sh"]);
    registry
        .install(Arc::new(ark), &grants, Activation::IfNone)
        .await
        .expect("installs");
    let lease = registry.resolve("shell").expect("resolves");

    // /proc/self belongs to the effective uid.
    let root = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0
    };
    let ws = tempfile::tempdir().expect("tempdir");
    let report = lease
        .invoke(
            StepCall::new(
                "run",
                json!({ "script": format!(
                    "id -u > uid.txt\n\
                     mkdir m && mount -t tmpfs none m && echo mounted > m/x && cat m/x > mount.txt\n\
                     cat {}/secret.txt > secret.txt 2>&1\n\
                     touch /usr/builder-was-here > usr.txt 2>&1\n\
                     mount -o remount,bind,rw /usr > remount.txt 2>&1; echo $? >> remount.txt\n\
                     mount -o remount,rw / > remount-root.txt 2>&1; echo $? >> remount-root.txt\n\
                     umount /etc/shadow > umount.txt 2>&1; echo $? >> umount.txt\n\
                     cat /proc/1/environ > /dev/null 2> init.txt; echo $? >> init.txt\n\
                     touch /usr/builder-was-here-too 2> usr-again.txt\n\
                     ls /root > root.txt 2>&1; ls {} > data.txt 2>&1\n\
                     echo theirs > theirs.txt && chown 1000:1000 theirs.txt",
                    dir.display(),
                    env!("CARGO_MANIFEST_DIR"),
                ), "errexit": false }),
            )
            .workspace(ws.path()),
        )
        .await;
    if !root {
        let failure = format!("{:?}", report.result);
        assert!(failure.contains("only a host running as root"), "{failure}");
        eprintln!("not running as root: builder mode is exercised in CI (root)");
        return;
    }
    assert!(
        report.result.is_ok(),
        "{:?}\n{}",
        report.result,
        report.log.text()
    );
    assert_eq!(read(&ws, "uid.txt").trim(), "0");
    assert_eq!(read(&ws, "mount.txt").trim(), "mounted");
    let secret = read(&ws, "secret.txt");
    assert!(
        !secret.contains("root only"),
        "read a root-only file: {secret}"
    );
    assert!(read(&ws, "usr.txt").contains("Read-only file system"));
    // Its mounts are locked: the read-only binds, the read-only root and the
    // masks stay as the sandbox made them.
    // Nor reach the sandbox's init (root of the outer namespace, whose mounts
    // are not locked) as a debugger would: it is in the outer user namespace,
    // where the builder has no capability (and it is not dumpable).
    for file in ["remount.txt", "remount-root.txt", "umount.txt", "init.txt"] {
        let said = read(&ws, file);
        assert_ne!(
            said.lines().last().map(str::trim),
            Some("0"),
            "{file}: {said}"
        );
    }
    assert!(read(&ws, "usr-again.txt").contains("Read-only file system"));
    assert!(!std::path::Path::new("/usr/builder-was-here-too").exists());
    assert!(!std::path::Path::new("/usr/builder-was-here").exists());
    assert!(read(&ws, "root.txt").contains("No such file"));
    assert!(read(&ws, "data.txt").contains("No such file"));
    let owner = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(ws.path().join(name))
            .expect("written")
            .uid()
    };
    let (host_uid, _) = arkline::host::process::sandbox_host_ids();
    assert_eq!(
        owner("uid.txt"),
        host_uid,
        "its root is the sandbox's host id"
    );
    assert_eq!(owner("theirs.txt"), host_uid + 1000);
    // A second run keeps the ids the first gave.
    let again = lease
        .invoke(script("cat theirs.txt > again.txt").workspace(ws.path()))
        .await;
    assert!(again.result.is_ok(), "{:?}", again.result);
    assert_eq!(owner("theirs.txt"), host_uid + 1000);
}
