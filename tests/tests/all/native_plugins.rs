//! Native plugins loaded from real shared libraries: the example plugin
//! `plugins/native-kv`, built here with a nested `$CARGO build`, a copy of it built
//! for another ABI version, and a system library that is no plugin at all.
//!
//! Every test of this module loads the same `libnative_kv.so`, and the dynamic
//! loader maps a library once: the key-value store is shared, so each test keeps
//! to keys of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use arkline::native::{NativeCallError, NativeError, NativePlugin, NativePlugins};
use semver::Version;
use serde_json::{Value, json};

/// Builds `native-kv` (once per test process) in `target_dir` (the workspace's
/// when `None`), declaring ABI `abi` (its own when `None`), and returns the path
/// of the shared library cargo reports.
fn build_native_kv(target_dir: Option<&Path>, abi: Option<&str>) -> PathBuf {
    let mut cmd = Command::new(arkline_testkit::cargo());
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(arkline_testkit::workspace_root().join("Cargo.toml"))
        .args([
            "-p",
            "native-kv",
            "--message-format",
            "json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(dir) = target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    match abi {
        Some(abi) => cmd.env("ARKLINE_NATIVE_KV_ABI", abi),
        None => cmd.env_remove("ARKLINE_NATIVE_KV_ABI"),
    };
    let output = cmd.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "`cargo build -p native-kv` failed (diagnostics above)"
    );
    let suffix = std::env::consts::DLL_SUFFIX;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "native_kv")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("cargo reported no {suffix} artifact for native-kv"))
}

/// `libnative_kv.so` as the workspace builds it.
fn native_kv() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build_native_kv(None, None))
}

/// A copy of `native-kv` declaring ABI 2.0.0, in a target directory of its own so
/// the two builds never overwrite each other (kept between runs: built once).
fn native_kv_for_abi_2() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("native-kv-abi-2.0.0");
        build_native_kv(Some(&dir), Some("2.0.0"))
    })
}

fn loaded() -> NativePlugins {
    let plugins = NativePlugins::new();
    plugins.load(native_kv()).expect("native-kv loads");
    plugins
}

fn call(plugins: &NativePlugins, handler: &str, request: Value) -> Value {
    let reply = plugins
        .call(handler, request.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{handler}: {e}"));
    serde_json::from_slice(&reply).expect("native-kv replies with JSON")
}

#[test]
fn native_kv_loads_with_its_name_version_abi_and_handlers() {
    let plugins = NativePlugins::new();
    let info = plugins.load(native_kv()).expect("native-kv loads");
    assert_eq!(info.name, "native-kv");
    assert_eq!(
        info.version,
        Version::parse(env!("CARGO_PKG_VERSION")).expect("version")
    );
    assert_eq!(info.abi.to_string(), arkline::native::ABI_VERSION);
    assert_eq!(
        info.path,
        native_kv().canonicalize().expect("the library exists")
    );
    assert_eq!(
        info.handlers,
        ["kv.get", "kv.put", "kv.delete", "kv.list", "kv.panic"]
    );
    assert_eq!(
        plugins.handlers(),
        ["kv.delete", "kv.get", "kv.list", "kv.panic", "kv.put"]
    );
    assert_eq!(plugins.plugins(), [info]);
}

#[test]
fn put_get_list_delete_round_trip() {
    let kv = loaded();
    assert_eq!(
        call(&kv, "kv.put", json!({"key": "trip/a", "value": 1})),
        json!({"previous": null})
    );
    assert_eq!(
        call(&kv, "kv.put", json!({"key": "trip/a", "value": {"n": 2}})),
        json!({"previous": 1})
    );
    call(&kv, "kv.put", json!({"key": "trip/b", "value": "two"}));
    assert_eq!(
        call(&kv, "kv.get", json!({"key": "trip/a"})),
        json!({"found": true, "value": {"n": 2}})
    );
    assert_eq!(
        call(&kv, "kv.list", json!({"prefix": "trip/"})),
        json!({"keys": ["trip/a", "trip/b"]})
    );
    assert_eq!(
        call(&kv, "kv.delete", json!({"key": "trip/a"})),
        json!({"deleted": true})
    );
    assert_eq!(
        call(&kv, "kv.delete", json!({"key": "trip/a"})),
        json!({"deleted": false})
    );
    assert_eq!(
        call(&kv, "kv.get", json!({"key": "trip/a"})),
        json!({"found": false, "value": null})
    );
    assert_eq!(
        call(&kv, "kv.list", json!({"prefix": "trip/"})),
        json!({"keys": ["trip/b"]})
    );
}

#[test]
fn unknown_handlers_and_bad_requests_fail_with_clear_errors() {
    let kv = loaded();
    let err = kv.call("kv.nope", b"{}").expect_err("unknown handler");
    assert_eq!(err, NativeCallError::UnknownHandler("kv.nope".into()));
    assert_eq!(
        err.to_string(),
        "no loaded native plugin serves the handler `kv.nope`"
    );

    match kv.call("kv.get", b"not json") {
        Err(NativeCallError::Failed { handler, message }) => {
            assert_eq!(handler, "kv.get");
            assert!(
                message.starts_with("kv.get: invalid request ("),
                "{message}"
            );
            assert!(
                message.ends_with(r#"expected {"key": "<non-empty string>"}"#),
                "{message}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn a_panicking_handler_is_reported_and_the_host_keeps_working() {
    let kv = loaded();
    let err = kv.call("kv.panic", b"xyz").expect_err("panics");
    let NativeCallError::Panicked { handler, message } = &err else {
        panic!("expected Panicked, got {err:?}");
    };
    assert_eq!(handler, "kv.panic");
    // The message, and where the plugin panicked.
    assert!(
        message.starts_with("kv.panic called with 3 byte(s): this handler always panics (at "),
        "{message}"
    );
    assert!(message.contains("native-kv/src/lib.rs:"), "{message}");
    assert!(
        err.to_string()
            .starts_with("native handler `kv.panic` panicked: kv.panic called with 3 byte(s)"),
        "{err}"
    );

    // The plugin and the host carry on.
    call(&kv, "kv.put", json!({"key": "panic/after", "value": true}));
    assert_eq!(
        call(&kv, "kv.get", json!({"key": "panic/after"})),
        json!({"found": true, "value": true})
    );
    assert!(matches!(
        kv.call("kv.panic", b""),
        Err(NativeCallError::Panicked { .. })
    ));
}

#[test]
fn handlers_serve_concurrent_calls_from_many_threads() {
    let kv = loaded();
    std::thread::scope(|scope| {
        for t in 0..8 {
            let kv = kv.clone();
            scope.spawn(move || {
                for i in 0..25 {
                    call(
                        &kv,
                        "kv.put",
                        json!({"key": format!("threads/{t}/{i:02}"), "value": i}),
                    );
                }
            });
        }
    });
    let keys = call(&kv, "kv.list", json!({"prefix": "threads/"}));
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(200), "{keys}");
}

#[test]
fn registries_loading_the_same_library_share_its_state() {
    let a = loaded();
    let b = loaded();
    call(&a, "kv.put", json!({"key": "shared/x", "value": "from a"}));
    assert_eq!(
        call(&b, "kv.get", json!({"key": "shared/x"})),
        json!({"found": true, "value": "from a"})
    );
}

#[test]
fn loading_the_same_library_twice_into_one_registry_is_a_duplicate() {
    let kv = loaded();
    let err = kv.load(native_kv()).expect_err("duplicate handlers");
    let path = native_kv().canonicalize().expect("the library exists");
    match &err {
        NativeError::DuplicateHandler {
            handler,
            plugin,
            existing_plugin,
            path: p,
            existing_path,
        } => {
            assert_eq!(handler, "kv.get");
            assert_eq!(
                (plugin.as_str(), existing_plugin.as_str()),
                ("native-kv", "native-kv")
            );
            assert_eq!((p, existing_path), (&path, &path));
        }
        other => panic!("expected DuplicateHandler, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "handler `kv.get` of native plugin `native-kv` ({0}) is already registered by native plugin `native-kv` ({0}); handler names must be unique across loaded native plugins",
            path.display()
        )
    );
    // The first registration is untouched.
    assert_eq!(kv.plugins().len(), 1);
    call(&kv, "kv.put", json!({"key": "dup/ok", "value": 1}));
}

#[test]
fn a_plugin_built_for_another_abi_major_is_refused() {
    let path = native_kv_for_abi_2();
    let err = NativePlugins::new()
        .load(path)
        .expect_err("ABI 2.0.0 on a 1.0.0 host");
    let canonical = path.canonicalize().expect("the library exists");
    match &err {
        NativeError::IncompatibleAbi {
            path: p,
            plugin,
            host,
        } => {
            assert_eq!(p, &canonical);
            assert_eq!(plugin, &Version::new(2, 0, 0));
            assert_eq!(host, &Version::new(1, 0, 0));
        }
        other => panic!("expected IncompatibleAbi, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "native plugin {} was built for ABI 2.0.0, but this host implements ABI 1.0.0: rebuild the plugin against ABI 1.0.0, or load it into a host whose ABI matches ^2.0.0",
            canonical.display()
        )
    );
}

/// A shared library every Debian/Ubuntu system has, which is no arkline plugin.
fn system_library() -> PathBuf {
    let candidates = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib/aarch64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no system libm found; looked at {candidates:?}"))
}

#[test]
fn a_library_without_the_abi_symbol_is_not_a_plugin() {
    let libm = system_library();
    let err = NativePlugin::open(&libm).expect_err("libm is no plugin");
    assert!(matches!(err, NativeError::NotAPlugin { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not an arkline native plugin: it does not export the `ARKLINE_NATIVE_ABI` symbol declaring the native plugin ABI version it was built for",
            libm.canonicalize().expect("exists").display()
        )
    );
}

#[test]
fn missing_files_and_files_that_are_no_library_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("libmissing.so");
    let err = NativePlugins::new().load(&missing).expect_err("missing");
    assert!(matches!(err, NativeError::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "cannot open native plugin {}: ",
            missing.display()
        )),
        "{err}"
    );

    let text = dir.path().join("libtext.so");
    std::fs::write(&text, "not a library\n").expect("write");
    let err = NativePlugins::new().load(&text).expect_err("not a library");
    assert!(matches!(err, NativeError::NotALibrary { .. }), "{err:?}");
    let message = err.to_string();
    let text = text.canonicalize().expect("exists");
    assert!(
        message.starts_with(&format!(
            "{} is not a loadable shared library: ",
            text.display()
        )),
        "{message}"
    );
}

/// A guest's `host-call` reaches a loaded native handler only when granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_host_call_is_dispatched_to_the_native_handler_when_granted() {
    use std::sync::Arc;

    use arkline::ark::Ark;
    use arkline::host::Capabilities;
    use arkline::runtime::{Activation, BizRegistry, Runtime, RuntimeConfig, StepCall};

    let ark = Arc::new(Ark::open(arkline_testkit::plugin("faults")).expect("faults archive"));
    let runtime = Runtime::new(RuntimeConfig::default().max_instances(8)).expect("runtime");
    let call = || StepCall::new("call-capability", json!({ "capability": "host-call" }));
    let engine = |name: &str, grant: &[&str]| {
        let registry = BizRegistry::new(runtime.clone(), name);
        let grants = Capabilities {
            host_call: grant.iter().map(|s| s.to_string()).collect(),
            ..Capabilities::default()
        };
        let ark = ark.clone();
        async move {
            registry
                .install(ark, &grants, Activation::IfNone)
                .await
                .expect("installs");
            registry
        }
    };

    // Not granted: denied before any plugin is looked at.
    let denied = engine("no-grant", &[]).await;
    let report = denied
        .resolve("faults")
        .expect("resolves")
        .invoke(call())
        .await;
    let out = report.outputs().expect("ok");
    assert_eq!(out["kind"], "denied", "{}", out["error"]);

    // Granted, but no plugin serves it yet.
    let granted = engine("granted", &["kv.get"]).await;
    let report = granted
        .resolve("faults")
        .expect("resolves")
        .invoke(call())
        .await;
    let out = report.outputs().expect("ok");
    assert_eq!(out["kind"], "invalid-argument", "{}", out["error"]);
    assert!(out["error"].contains("kv.get"), "{}", out["error"]);

    // Loaded: the call reaches native-kv, which answers the empty payload with its
    // own error (it expects a JSON request).
    runtime
        .native_plugins()
        .load(native_kv())
        .expect("native-kv loads");
    let report = granted
        .resolve("faults")
        .expect("resolves")
        .invoke(call())
        .await;
    let out = report.outputs().expect("ok");
    assert_eq!(out["kind"], "failed", "{}", out["error"]);
    assert!(out["error"].contains("kv.get"), "{}", out["error"]);
}
