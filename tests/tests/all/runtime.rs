//! The isolation runtime with real components: install, resolve, switch, leases,
//! uninstall, faults, cancellation, file-system confinement, the compiled cache.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arkline::ark::{Ark, write_ark};
use arkline::host::Capabilities;
use arkline::host::LogSource;
use arkline::runtime::{
    Activation, BizRegistry, BizState, CacheOutcome, CancelToken, LifecycleError, LifecycleEvent,
    Runtime, RuntimeConfig, StepCall, StepFailure, StepFault, UninstallMode,
};
use semver::Version;
use serde_json::json;

fn faults() -> Ark {
    let path = arkline_testkit::plugin("faults");
    Ark::open(&path).expect("the faults archive reads back")
}

/// The same component repackaged as another biz name and/or version.
fn variant(ark: &Ark, name: &str, version: &str) -> Ark {
    let mut manifest = ark.manifest.clone();
    manifest.name = name.to_owned();
    manifest.version = Version::parse(version).expect("version");
    let (bytes, _) = write_ark(manifest, &ark.component, &ark.files).expect("rewrites");
    Ark::from_bytes(&bytes).expect("reads back")
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default().max_instances(32)).expect("runtime starts")
}

fn registry(engine: &str) -> BizRegistry {
    BizRegistry::new(runtime(), engine)
}

fn no_grants() -> Capabilities {
    Capabilities::default()
}

async fn install(registry: &BizRegistry, ark: Ark) {
    registry
        .install(Arc::new(ark), &no_grants(), Activation::IfNone)
        .await
        .expect("installs");
}

fn drain_events(rx: &mut tokio::sync::broadcast::Receiver<LifecycleEvent>) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(e) = rx.try_recv() {
        seen.push(format!("{}@{} {}", e.name, e.version, e.state));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_runs_in_a_fresh_instance_and_its_output_and_log_come_back() {
    let registry = registry("team-a");
    install(&registry, faults()).await;
    let lease = registry.resolve("faults@^0.1").expect("resolves");
    assert_eq!(lease.id(), "faults@0.1.0");

    let report = lease
        .invoke(StepCall::new("upper", json!({ "text": "hello" })))
        .await;
    assert_eq!(
        report
            .outputs()
            .expect("succeeds")
            .get("text")
            .map(String::as_str),
        Some("HELLO")
    );

    let report = lease
        .invoke(StepCall::new(
            "print",
            json!({ "stdout": "to stdout\nsecond line", "stderr": "to stderr\n" }),
        ))
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    let stdout: Vec<_> = report
        .log
        .from_source(LogSource::Stdout)
        .map(|l| l.message.as_str())
        .collect();
    let stderr: Vec<_> = report
        .log
        .from_source(LogSource::Stderr)
        .map(|l| l.message.as_str())
        .collect();
    assert_eq!(stdout, ["to stdout", "second line"]);
    assert_eq!(stderr, ["to stderr"]);

    // The step's own errors come back typed, not as faults.
    let report = lease
        .invoke(StepCall::new("fail", json!({ "message": "nope" })))
        .await;
    assert_eq!(report.result, Err(StepFailure::Failed("nope".into())));
    let report = lease
        .invoke(StepCall::new("upper", json!({ "txt": "typo" })))
        .await;
    match report.result {
        Err(StepFailure::InvalidConfig { message, .. }) => {
            assert!(message.contains("txt"), "{message}")
        }
        other => panic!("expected invalid-config, got {other:?}"),
    }
    let report = lease.invoke(StepCall::new("nosuch", json!({}))).await;
    match report.result {
        Err(e @ StepFailure::UnknownStepType { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("nosuch") && msg.contains("upper"), "{msg}");
        }
        other => panic!("expected unknown-step-type, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_reaches_the_guest_and_the_workspace_is_its_only_directory() {
    let registry = registry("ctx-engine");
    install(&registry, faults()).await;
    let lease = registry.resolve("faults").expect("resolves");
    let workspace = tempfile::tempdir().expect("tempdir");
    let call = StepCall::new("context", json!({}))
        .workspace(workspace.path())
        .context(arkline::runtime::CallContext {
            pipeline: "build".into(),
            run: 7,
            stage: "test".into(),
            step_name: "ctx".into(),
            attempt: 2,
            env: vec![("GREETING".into(), "hi".into())],
        });
    let report = lease.invoke(call).await;
    let out = report.outputs().expect("succeeds");
    assert_eq!(out["engine"], "ctx-engine");
    assert_eq!(out["pipeline"], "build");
    assert_eq!(out["run"], "7");
    assert_eq!(out["stage"], "test");
    assert_eq!(out["step_name"], "ctx");
    assert_eq!(out["step_type"], "context");
    assert_eq!(out["attempt"], "2");
    assert_eq!(out["workspace"], "/workspace");
    assert!(out["env"].contains("GREETING=hi"), "{}", out["env"]);

    let report = lease
        .invoke(
            StepCall::new(
                "write-file",
                json!({ "path": "/workspace/made.txt", "content": "from the guest" }),
            )
            .workspace(workspace.path()),
        )
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("made.txt")).expect("file written"),
        "from the guest"
    );
    // Without a workspace the guest sees no files at all.
    let report = lease
        .invoke(StepCall::new(
            "read-file",
            json!({ "path": "/workspace/made.txt" }),
        ))
        .await;
    assert!(
        matches!(report.result, Err(StepFailure::Failed(_))),
        "{:?}",
        report.result
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_contained_while_another_biz_keeps_working() {
    let registry = registry("faulty");
    let ark = faults();
    install(&registry, ark.clone()).await;
    install(&registry, variant(&ark, "neighbour", "1.0.0")).await;
    let faulty = Arc::new(registry.resolve("faults").expect("resolves"));
    let neighbour = Arc::new(registry.resolve("neighbour").expect("resolves"));

    // The neighbour runs calls the whole time the faults happen.
    let stop = CancelToken::new();
    let background = tokio::spawn({
        let neighbour = neighbour.clone();
        let stop = stop.clone();
        async move {
            let mut ok = 0u32;
            while !stop.is_cancelled() {
                let report = neighbour
                    .invoke(StepCall::new("upper", json!({ "text": "still here" })))
                    .await;
                assert_eq!(
                    report.outputs().expect("neighbour works")["text"],
                    "STILL HERE"
                );
                ok += 1;
                tokio::task::yield_now().await;
            }
            ok
        }
    });

    let cases: Vec<(&str, serde_json::Value, StepCall)> = vec![
        (
            "spin",
            json!({}),
            StepCall::new("spin", json!({})).timeout(Duration::from_millis(300)),
        ),
        (
            "sleep",
            json!({}),
            StepCall::new("sleep", json!({ "ms": 60_000 })).timeout(Duration::from_millis(200)),
        ),
        (
            "memory-bomb",
            json!({}),
            StepCall::new("memory-bomb", json!({})).memory_limit(64 << 20),
        ),
        ("recurse", json!({}), StepCall::new("recurse", json!({}))),
        (
            "panic",
            json!({}),
            StepCall::new("panic", json!({ "message": "kaboom 42" })),
        ),
        (
            "out-of-fuel",
            json!({}),
            StepCall::new("spin", json!({})).fuel(5_000_000),
        ),
        (
            "huge-output",
            json!({}),
            StepCall::new("huge-output", json!({ "bytes": 200_000 })).output_limit(64 << 10),
        ),
    ];
    let mut kinds = BTreeMap::new();
    for (label, _, call) in cases {
        let report = faulty.invoke(call).await;
        let fault = report
            .fault()
            .unwrap_or_else(|| panic!("{label}: expected a fault, got {:?}", report.result))
            .clone();
        match (&fault, label) {
            (StepFault::Timeout { after }, "spin") => {
                assert_eq!(*after, Duration::from_millis(300))
            }
            (StepFault::Timeout { .. }, "sleep") => {}
            (StepFault::MemoryLimit { limit }, "memory-bomb") => assert_eq!(*limit, 64 << 20),
            (StepFault::StackOverflow { .. }, "recurse") => {}
            (StepFault::Trap { message, .. }, "panic") => {
                assert!(message.contains("kaboom 42"), "{message}")
            }
            (StepFault::OutOfFuel { fuel }, "out-of-fuel") => assert_eq!(*fuel, 5_000_000),
            (StepFault::OutputTooLarge { size, limit }, "huge-output") => {
                assert!(*size >= 200_000 && *limit == 64 << 10, "{size} {limit}")
            }
            (other, label) => panic!("{label}: unexpected fault {other:?}"),
        }
        kinds.insert(label, fault.kind());
        // The faulty biz itself still serves the next call.
        let report = faulty
            .invoke(StepCall::new("upper", json!({ "text": "again" })))
            .await;
        assert_eq!(report.outputs().expect("recovers")["text"], "AGAIN");
    }
    stop.cancel();
    let neighbour_calls = background.await.expect("the neighbour never failed");
    assert!(neighbour_calls > 0);
    assert_eq!(kinds.len(), 7, "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_is_capped_with_a_marker_and_the_step_still_succeeds() {
    let registry = registry("flood");
    install(&registry, faults()).await;
    let lease = registry.resolve("faults").expect("resolves");
    for via in ["log", "stdout", "stderr"] {
        let report = lease
            .invoke(
                StepCall::new(
                    "log-flood",
                    json!({ "lines": 5000, "bytes_per_line": 100, "via": via }),
                )
                .log_limit(32 << 10),
            )
            .await;
        assert!(report.result.is_ok(), "{via}: {:?}", report.result);
        assert!(report.log.truncated(), "{via}");
        assert!(report.log.bytes <= 32 << 10, "{via}: {}", report.log.bytes);
        let last = report.log.lines.last().expect("lines");
        assert_eq!(last.source, LogSource::Host, "{via}");
        assert!(last.message.contains("log truncated"), "{}", last.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_interrupts_a_computing_and_a_waiting_guest() {
    let registry = registry("cancel");
    install(&registry, faults()).await;
    let lease = Arc::new(registry.resolve("faults").expect("resolves"));

    for (step, config) in [("spin", json!({})), ("sleep", json!({ "ms": 600_000 }))] {
        let token = CancelToken::new();
        let call = StepCall::new(step, config)
            .timeout(Duration::from_secs(600))
            .cancel_on(token.clone());
        // The guest logs a line once it is running; cancel only then.
        let running = arkline_testkit::spawn_started(lease.clone(), call, |_| true).await;
        token.cancel();
        let report = running.await.expect("joins");
        assert_eq!(report.fault(), Some(&StepFault::Cancelled), "{step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_leads_out_of_the_workspace() {
    let registry = registry("escape");
    install(&registry, faults()).await;
    let lease = registry.resolve("faults").expect("resolves");

    let root = tempfile::tempdir().expect("tempdir");
    let workspace = root.path().join("workspace");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&workspace).expect("mkdir");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("secret.txt"), "top secret").expect("write");
    std::os::unix::fs::symlink(&outside, workspace.join("outside")).expect("symlink");
    let stray = std::path::Path::new("/tmp/arkline-escaped.txt");
    let stray_before = stray.exists();

    for step in ["escape-dotdot", "escape-absolute", "escape-symlink"] {
        let report = lease
            .invoke(StepCall::new(step, json!({})).workspace(&workspace))
            .await;
        let out = report
            .outputs()
            .unwrap_or_else(|| panic!("{step}: {:?}", report.result));
        let attempts: u32 = out["attempts"].parse().expect("attempts");
        assert!(attempts >= 3, "{step}: {attempts}");
        assert_eq!(out["escaped"], "0", "{step} escaped:\n{}", out["details"]);
    }
    // Nothing appeared outside.
    let mut names: Vec<_> = std::fs::read_dir(&outside)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["secret.txt"]);
    assert!(!root.path().join("escaped.txt").exists());
    assert!(!root.path().join("escaped-dir").exists());
    assert_eq!(stray.exists(), stray_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_side_by_side_resolve_and_switch() {
    let registry = registry("versions");
    let mut events = registry.subscribe();
    let ark = faults();
    install(&registry, variant(&ark, "faults", "0.1.0")).await;
    install(&registry, variant(&ark, "faults", "0.2.0")).await;
    assert_eq!(
        drain_events(&mut events),
        [
            "faults@0.1.0 resolved",
            "faults@0.1.0 activated",
            "faults@0.2.0 resolved"
        ]
    );
    assert_eq!(
        registry.resolve("faults").expect("resolves").id(),
        "faults@0.1.0"
    );
    assert_eq!(
        registry.resolve("faults@^0.1").expect("resolves").id(),
        "faults@0.1.0"
    );
    // 0.2.0 is installed but not activated: a requirement only it meets fails, and
    // says what is installed.
    let err = registry.resolve("faults@^0.2").expect_err("not activated");
    assert!(matches!(err, LifecycleError::NoMatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("0.1.0 (activated)") && msg.contains("0.2.0 (resolved)"),
        "{msg}"
    );

    registry
        .switch("faults", &Version::new(0, 2, 0))
        .expect("switches");
    assert_eq!(
        drain_events(&mut events),
        ["faults@0.1.0 deactivated", "faults@0.2.0 activated"]
    );
    assert_eq!(
        registry.resolve("faults").expect("resolves").id(),
        "faults@0.2.0"
    );
    assert!(registry.resolve("faults@^0.1").is_err());
    // An exact lease still reaches the deactivated version (a resumed execution).
    let old = registry
        .lease("faults", &Version::new(0, 1, 0))
        .expect("exact lease");
    let report = old
        .invoke(StepCall::new("upper", json!({ "text": "old" })))
        .await;
    assert_eq!(report.biz, "faults@0.1.0");
    assert_eq!(report.outputs().expect("ok")["text"], "OLD");

    assert!(matches!(
        registry.resolve("nosuch"),
        Err(LifecycleError::NotInstalled { .. })
    ));
    assert!(matches!(
        registry.resolve("faults@not-a-version"),
        Err(LifecycleError::InvalidReference(_))
    ));
    let dup = registry
        .install(
            Arc::new(variant(&ark, "faults", "0.2.0")),
            &no_grants(),
            Activation::IfNone,
        )
        .await
        .expect_err("duplicate");
    assert!(dup.to_string().contains("already installed"), "{dup}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_waits_for_in_flight_executions_and_new_calls_use_the_new_version() {
    let registry = registry("drain");
    let ark = faults();
    install(&registry, variant(&ark, "faults", "0.1.0")).await;
    registry
        .install(
            Arc::new(variant(&ark, "faults", "0.2.0")),
            &no_grants(),
            Activation::Never,
        )
        .await
        .expect("installs 0.2.0");
    let order = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = {
        let order = order.clone();
        move |s: &str| order.lock().expect("lock").push(s.to_owned())
    };

    // An execution resolved 0.1.0 and holds its lease between and during steps.
    let execution = registry.resolve("faults@^0.1").expect("resolves");
    assert_eq!(execution.id(), "faults@0.1.0");

    // Upgrade: switch to 0.2.0, uninstall 0.1.0.
    registry
        .switch("faults", &Version::new(0, 2, 0))
        .expect("switches");
    let uninstall = tokio::spawn({
        let registry = registry.clone();
        let record = record.clone();
        async move {
            registry
                .uninstall("faults", &Version::new(0, 1, 0), UninstallMode::Wait)
                .await
                .expect("uninstalls");
            record("0.1.0 uninstalled");
        }
    });
    while registry
        .get("faults", &Version::new(0, 1, 0))
        .map(|i| i.state)
        != Some(BizState::Draining)
    {
        tokio::task::yield_now().await;
    }

    // While it drains: no new lease on 0.1.0, new calls go to 0.2.0 ...
    assert!(matches!(
        registry.lease("faults", &Version::new(0, 1, 0)),
        Err(LifecycleError::WrongState { .. })
    ));
    let new = registry.resolve("faults").expect("resolves");
    let report = new
        .invoke(StepCall::new("upper", json!({ "text": "new" })))
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    record(&format!("new call done on {}", report.biz));

    // ... and the execution's next step still runs on the version it leased.
    let report = execution
        .invoke(StepCall::new("sleep", json!({ "ms": 50 })))
        .await;
    assert!(report.result.is_ok(), "{:?}", report.result);
    record(&format!("in-flight step done on {}", report.biz));
    assert!(!uninstall.is_finished(), "uninstall finished under a lease");
    assert_eq!(
        registry
            .get("faults", &Version::new(0, 1, 0))
            .map(|i| i.leases),
        Some(1)
    );

    drop(execution);
    uninstall.await.expect("uninstall");
    let order = order.lock().expect("lock").clone();
    assert_eq!(
        order,
        [
            "new call done on faults@0.2.0",
            "in-flight step done on faults@0.1.0",
            "0.1.0 uninstalled"
        ]
    );
    assert!(registry.get("faults", &Version::new(0, 1, 0)).is_none());
    let listed: Vec<_> = registry
        .list()
        .into_iter()
        .map(|b| format!("{}@{} {}", b.name, b.version, b.state))
        .collect();
    assert_eq!(listed, ["faults@0.2.0 activated"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_uninstall_cancels_the_holders() {
    let registry = registry("force");
    install(&registry, faults()).await;
    let mut events = registry.subscribe();
    let lease = Arc::new(registry.resolve("faults").expect("resolves"));
    let call = StepCall::new("spin", json!({})).timeout(Duration::from_secs(600));
    let in_flight = arkline_testkit::spawn_started(lease, call, |_| true).await;
    registry
        .uninstall("faults", &Version::new(0, 1, 0), UninstallMode::Force)
        .await
        .expect("forced uninstall");
    let report = in_flight.await.expect("joins");
    assert_eq!(report.fault(), Some(&StepFault::Cancelled));
    assert_eq!(
        drain_events(&mut events),
        ["faults@0.1.0 draining", "faults@0.1.0 uninstalled"]
    );
    assert!(registry.list().is_empty());
    assert!(registry.resolve("faults").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_outside_the_grant_are_refused_with_a_value_naming_biz_and_engine() {
    let ark = faults();
    let registry = registry("team-b");
    install(&registry, ark.clone()).await;
    let lease = registry.resolve("faults").expect("resolves");
    for capability in ["process", "http", "cache", "host-call"] {
        let report = lease
            .invoke(StepCall::new(
                "call-capability",
                json!({ "capability": capability }),
            ))
            .await;
        let out = report
            .outputs()
            .unwrap_or_else(|| panic!("{capability}: {:?}", report.result));
        assert_eq!(out["result"], "error", "{capability}");
        let error = &out["error"];
        assert!(
            error.contains(&format!("capability `{capability}` denied"))
                && error.contains("biz `faults@0.1.0`")
                && error.contains("engine `team-b`")
                && error.contains("does not grant"),
            "{capability}: {error}"
        );
    }

    // Granted in another engine: no longer a denial.
    let granting = BizRegistry::new(registry.runtime().clone(), "team-c");
    let grants = Capabilities {
        process: vec!["true".into()],
        ..Capabilities::default()
    };
    granting
        .install(Arc::new(ark), &grants, Activation::IfNone)
        .await
        .expect("installs");
    let report = granting
        .resolve("faults")
        .expect("resolves")
        .invoke(StepCall::new(
            "call-capability",
            json!({ "capability": "process" }),
        ))
        .await;
    let out = report.outputs().expect("ok");
    assert!(!out["error"].contains("denied"), "{}", out["error"]);
    assert_eq!(
        granting.list()[0].capabilities.process,
        vec!["true".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compiled_cache_is_reused_and_a_corrupt_entry_is_recompiled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ark = faults();
    let prepare = || {
        let runtime = Runtime::new(
            RuntimeConfig::default()
                .max_instances(4)
                .cache_dir(dir.path()),
        )
        .expect("runtime");
        let prepared = runtime.prepare(&ark).expect("prepares");
        (runtime, prepared)
    };
    let (_, first) = prepare();
    assert_eq!(first.cache, CacheOutcome::Compiled);
    // A second runtime (a restart) loads it.
    let (runtime, second) = prepare();
    assert_eq!(second.cache, CacheOutcome::Hit);
    let path = runtime
        .compiled_cache()
        .expect("cache")
        .artifact_path(runtime.engine(), &ark.manifest.component.sha256);
    // Loaded artifacts are mapped; let go of them before damaging the file.
    drop((runtime, first, second));

    // Corrupt the artifact: the next load refuses it, recompiles, and works.
    let mut bytes = std::fs::read(&path).expect("artifact exists");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).expect("corrupt");
    let (runtime, third) = prepare();
    match &third.cache {
        CacheOutcome::Recovered(reason) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("expected a recovered entry, got {other:?}"),
    }
    let registry = BizRegistry::new(runtime.clone(), "cache");
    registry
        .register(
            third,
            ark.manifest.clone(),
            &no_grants(),
            Activation::IfNone,
        )
        .expect("registers");
    let report = registry
        .resolve("faults")
        .expect("resolves")
        .invoke(StepCall::new("upper", json!({ "text": "cached" })))
        .await;
    assert_eq!(report.outputs().expect("ok")["text"], "CACHED");
    drop((registry, runtime));
    // And the rewritten entry is good again.
    let (runtime, fourth) = prepare();
    assert_eq!(fourth.cache, CacheOutcome::Hit);
    drop((runtime, fourth));

    // A truncated artifact is refused too.
    std::fs::write(&path, b"\x7fELF").expect("truncate");
    let (_, fifth) = prepare();
    assert!(
        matches!(fifth.cache, CacheOutcome::Recovered(_)),
        "{:?}",
        fifth.cache
    );
}

/// Resident bytes of this process's mappings of files under `dir`.
fn resident_under(dir: &std::path::Path) -> u64 {
    let dir = dir.canonicalize().expect("canonical");
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let mut inside = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|path| std::path::Path::new(path).starts_with(&dir));
        } else if inside && first == "Rss:" {
            kib += fields
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_biz_gives_its_compiled_code_back_and_its_next_call_brings_it_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(
        RuntimeConfig::default()
            .max_instances(4)
            .cache_dir(dir.path())
            .idle_release(Some(Duration::from_secs(1))),
    )
    .expect("runtime");
    let registry = BizRegistry::new(runtime, "idle");
    install(&registry, faults()).await;
    let call = || async {
        let report = registry
            .resolve("faults")
            .expect("resolves")
            .invoke(StepCall::new("upper", json!({ "text": "idle" })))
            .await;
        assert_eq!(report.outputs().expect("ok")["text"], "IDLE");
    };
    call().await;
    let used = resident_under(dir.path());
    assert!(
        used > 256 << 10,
        "a called biz's code is resident: {used} bytes"
    );

    // Once idle for the release period, its pages leave the process.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let released = loop {
        let now = resident_under(dir.path());
        if now < used / 4 {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {now} bytes resident of {used} after 30 s idle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The next call runs as before and faults back in what it needs.
    call().await;
    let again = resident_under(dir.path());
    assert!(
        again > released,
        "{again} bytes resident after the call, {released} before"
    );
}

#[test]
fn an_archive_needing_an_unsupported_host_api_is_refused() {
    let ark = faults();
    let mut manifest = ark.manifest.clone();
    manifest.host_api = semver::VersionReq::parse("^0.2").expect("req");
    let (bytes, _) = write_ark(manifest, &ark.component, &ark.files).expect("writes");
    let err = Ark::from_bytes(&bytes).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("needs arkline:step ^0.2") && msg.contains("serves 0.1.0"),
        "{msg}"
    );
}

#[test]
fn a_step_waiting_or_computing_holds_no_thread() {
    // One thread for everything: a call that waits in a host call (sleep) and a
    // call that computes (spin, yielding at epochs) must both leave it free for a
    // third call to start and finish.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let registry = registry("one-thread");
        install(&registry, faults()).await;
        let lease = Arc::new(registry.resolve("faults").expect("resolves"));
        for (step, config) in [("sleep", json!({ "ms": 600_000 })), ("spin", json!({}))] {
            let token = CancelToken::new();
            let call = StepCall::new(step, config)
                .timeout(Duration::from_secs(600))
                .cancel_on(token.clone());
            let blocked = arkline_testkit::spawn_started(lease.clone(), call, |_| true).await;
            let report = lease
                .invoke(StepCall::new("upper", json!({ "text": "meanwhile" })))
                .await;
            assert_eq!(report.outputs().expect("ok")["text"], "MEANWHILE", "{step}");
            assert!(!blocked.is_finished(), "{step} ended early");
            token.cancel();
            let report = blocked.await.expect("joins");
            assert_eq!(report.fault(), Some(&StepFault::Cancelled), "{step}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_is_a_capacity_fault_not_a_broken_biz() {
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(1)).expect("runtime");
    assert!(runtime.is_pooling());
    let registry = BizRegistry::new(runtime, "tiny");
    install(&registry, faults()).await;
    let lease = Arc::new(registry.resolve("faults").expect("resolves"));
    let token = CancelToken::new();
    let call = StepCall::new("sleep", json!({ "ms": 600_000 })).cancel_on(token.clone());
    let occupying = arkline_testkit::spawn_started(lease.clone(), call, |_| true).await;
    let report = lease
        .invoke(StepCall::new("upper", json!({ "text": "no room" })))
        .await;
    match report.fault() {
        Some(StepFault::Capacity(_)) => {}
        other => panic!("expected a capacity fault, got {other:?}"),
    }
    assert_eq!(registry.list()[0].state, BizState::Activated);
    token.cancel();
    occupying.await.expect("joins");
    let report = lease
        .invoke(StepCall::new("upper", json!({ "text": "room again" })))
        .await;
    assert_eq!(report.outputs().expect("ok")["text"], "ROOM AGAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_room_for_the_pool_the_runtime_falls_back_to_on_demand_allocation() {
    // 100 million 1 GiB slots cannot be reserved in a 47-bit address space.
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(100_000_000))
        .expect("falls back instead of failing");
    assert!(!runtime.is_pooling());
    let registry = BizRegistry::new(runtime, "fallback");
    install(&registry, faults()).await;
    let report = registry
        .resolve("faults")
        .expect("resolves")
        .invoke(StepCall::new("upper", json!({ "text": "on demand" })))
        .await;
    assert_eq!(report.outputs().expect("ok")["text"], "ON DEMAND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reaches_only_granted_http_hosts() {
    let ark = faults();
    let runtime = runtime();
    let call = || StepCall::new("call-capability", json!({ "capability": "http" }));

    let ungranted = BizRegistry::new(runtime.clone(), "no-http");
    install(&ungranted, ark.clone()).await;
    let report = ungranted
        .resolve("faults")
        .expect("resolves")
        .invoke(call())
        .await;
    let out = report.outputs().expect("ok");
    assert_eq!(out["kind"], "denied", "{}", out["error"]);

    // Granted: the request goes out (to a closed port, so it fails to connect).
    let granted = BizRegistry::new(runtime, "http");
    let grants = Capabilities {
        http: vec!["127.0.0.1".into()],
        ..Capabilities::default()
    };
    granted
        .install(Arc::new(ark), &grants, Activation::IfNone)
        .await
        .expect("installs");
    let report = granted
        .resolve("faults")
        .expect("resolves")
        .invoke(call())
        .await;
    let out = report.outputs().expect("ok");
    assert_eq!(out["kind"], "failed", "{}", out["error"]);
}

/// Engines share the guest threads by weight, not one slice per call: with
/// one guest thread, two spinning calls of `noisy` and one long `burn` of
/// `quiet` at weight 250, `noisy` gets less of the thread than `quiet` while
/// `quiet`'s call runs (first come, first served would give it two slices for
/// each of `quiet`'s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_share_the_guest_threads_by_weight() {
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(8).guest_threads(1))
        .expect("runtime starts");
    let ark = faults();
    let noisy = BizRegistry::new(runtime.clone(), "noisy");
    let quiet = BizRegistry::new(runtime.clone(), "quiet");
    install(&noisy, ark.clone()).await;
    install(&quiet, ark).await;
    let stop = CancelToken::new();
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let lease = noisy.resolve("faults").expect("resolves");
            let stop = stop.clone();
            tokio::spawn(async move {
                lease
                    .invoke(
                        StepCall::new("spin", json!({}))
                            .timeout(Duration::from_secs(600))
                            .cancel_on(stop),
                    )
                    .await
            })
        })
        .collect();
    // Let both spinners reach the guest thread.
    let polls = |engine: &str| {
        runtime
            .guest_cpu()
            .into_iter()
            .find(|(name, _)| name == engine)
            .map(|(_, cpu)| cpu)
            .unwrap_or_default()
    };
    while polls("noisy").polls < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let noisy_before = polls("noisy").polls;
    let report = quiet
        .resolve("faults")
        .expect("resolves")
        .invoke(StepCall::new("burn", json!({ "iterations": 400_000_000u64 })).cpu_weight(250))
        .await;
    let noisy_during = polls("noisy").polls - noisy_before;
    stop.cancel();
    for spinner in spinners {
        let report = spinner.await.expect("spinner task");
        assert!(
            matches!(report.result, Err(StepFailure::Fault(StepFault::Cancelled))),
            "{:?}",
            report.result
        );
    }
    let outputs = report.outputs().expect("burn succeeds");
    assert_eq!(outputs["iterations"], "400000000");
    let quiet_cpu = polls("quiet");
    assert_eq!(
        quiet_cpu.weight, 250,
        "the call's weight reached the threads"
    );
    assert!(
        quiet_cpu.polls >= 3,
        "the burn outlasted its first slice and ran on the guest thread: {quiet_cpu:?}"
    );
    assert!(
        noisy_during <= quiet_cpu.polls,
        "noisy's two spinners got {noisy_during} slices while quiet (weight 250) got {}: \
         not weighted shares",
        quiet_cpu.polls
    );
}
