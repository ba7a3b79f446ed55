//! # arkline-testkit
//!
//! Test support for arkline step plugins, with the real packager and runtime:
//!
//! - [`Harness`] runs a plugin's real component from the plugin's own tests: it
//!   packages the crate, installs it in the isolation runtime, and runs steps.
//! - [`plugin`] packages one of this workspace's plugins and hands tests the `.ark`.
//! - [`etcd`] starts a real etcd for a test, or names the shared test cluster.
//! - [`webdriver`] drives a headless Chromium (the dashboard's browser test and
//!   page-load bench).
//!
//! ```no_run
//! use arkline_testkit::{Harness, StepFailure};
//! use serde_json::json;
//!
//! let h = Harness::current_crate(env!("CARGO_MANIFEST_DIR"));
//! let report = h.run("fail", json!({ "message": "boom" }));
//! assert_eq!(report.result, Err(StepFailure::Failed("boom".into())));
//!
//! let shell = arkline_testkit::plugin("shell");
//! assert!(shell.exists());
//! ```
//!
//! Packaging goes through the `cargo-ark` library (`cargo_ark::package_crate`),
//! which runs `$CARGO build --target wasm32-wasip2` once per crate and test
//! process. Never call it from a `build.rs`: that nested cargo would wait forever
//! on the target-directory lock the outer build holds.

#![deny(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub mod etcd;
pub mod git;
mod harness;
pub mod registry;
pub mod s3;
pub mod webdriver;

pub use arkline::host::Capabilities;
pub use arkline::host::{LogLevel, LogLine, LogSource, StepLog};
pub use arkline::runtime::{
    BizLease, CallContext, StepCall, StepFailure, StepFault, StepOutcome, StepReport,
};
pub use harness::{DEFAULT_TIMEOUT, ENGINE, Harness, HarnessError};

/// Starts `call` on `lease` in a task and waits until the guest writes a log line
/// that `started` accepts, so the call is known to be running (not merely
/// scheduled); returns the task. For tests of what happens to a running call:
/// cancellation, forced uninstall, a full pool.
///
/// A log sink already set on `call` still sees every line.
pub async fn spawn_started(
    lease: Arc<BizLease>,
    mut call: StepCall,
    started: impl Fn(&LogLine) -> bool + Send + Sync + 'static,
) -> tokio::task::JoinHandle<StepReport> {
    let signal = Arc::new(tokio::sync::Notify::new());
    let previous = call.log_sink.take();
    call.log_sink = Some(Arc::new({
        let signal = signal.clone();
        move |line: &LogLine| {
            if let Some(previous) = &previous {
                previous(line);
            }
            if started(line) {
                // A stored permit: the waiter below sees it even if it is late.
                signal.notify_one();
            }
        }
    }));
    let task = tokio::spawn(async move { lease.invoke(call).await });
    signal.notified().await;
    task
}

/// The root of the arkline workspace this testkit belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The cargo running the tests (`$CARGO`), or `cargo`.
pub fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"))
}

type Slot = Arc<OnceLock<Result<PathBuf, String>>>;

fn slots() -> &'static Mutex<HashMap<String, Slot>> {
    static SLOTS: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    SLOTS.get_or_init(Default::default)
}

/// Builds and packages the workspace plugin package `name` (once per test
/// process) and returns the path of its `.ark`.
///
/// # Panics
/// When the build or packaging fails (cargo's diagnostics are on stderr): a test
/// cannot go on without its plugin.
pub fn plugin(name: &str) -> PathBuf {
    match try_plugin(name) {
        Ok(path) => path,
        Err(e) => panic!("arkline-testkit: cannot package plugin `{name}`:\n{e}"),
    }
}

/// Like [`plugin`], returning the failure instead of panicking.
pub fn try_plugin(name: &str) -> Result<PathBuf, String> {
    let slot = {
        let mut slots = slots().lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(name.to_owned()).or_default().clone()
    };
    slot.get_or_init(|| package(name)).clone()
}

fn package(name: &str) -> Result<PathBuf, String> {
    let out_dir = out_dir()?;
    // An archive per process: concurrent test processes never write the same file.
    let package = cargo_ark::cmd::PackageCmd {
        selection: cargo_ark::cmd::PackageSelection {
            manifest_path: Some(workspace_root().join("Cargo.toml")),
            package: Some(name.to_owned()),
        },
        output: Some(out_dir.join(format!("{name}.ark"))),
        ..cargo_ark::cmd::PackageCmd::default()
    };
    package
        .exec(&quiet_opts(), &quiet_shell())
        .map_err(|e| format!("`cargo ark package -p {name}` failed: {e:#}"))
}

/// The `.ark` of a plugin of this repository written in another language
/// (`plugins/<dir>`, e.g. `changelog-py`), built once per test process by its
/// `build.sh` (componentize-py, componentize-js: which must be installed;
/// `.ci/deps.sh --test` installs them) and packaged as `cargo ark package
/// --component` does, with the `Ark.toml` beside it. Panics with the reason
/// when it cannot be built.
pub fn prebuilt(dir: &str) -> PathBuf {
    static SLOTS: OnceLock<Mutex<HashMap<String, Slot>>> = OnceLock::new();
    let slot = {
        let mut slots = SLOTS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        slots.entry(dir.to_owned()).or_default().clone()
    };
    match slot.get_or_init(|| build_prebuilt(dir)).clone() {
        Ok(path) => path,
        Err(e) => panic!("arkline-testkit: cannot build plugin `{dir}`:\n{e}"),
    }
}

/// The virtual environment `.ci/deps.sh --test` installs the Python tools
/// into (componentize-py): `$ARKLINE_VENV`, by default
/// `~/.local/share/arkline/venv`.
pub fn venv() -> PathBuf {
    match std::env::var_os("ARKLINE_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".local/share/arkline/venv")
        }
    }
}

/// `PATH` with the tools' virtual environment ([`venv`]) first.
pub fn tool_path() -> std::ffi::OsString {
    let mut dirs = vec![venv().join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// A command running `program` (found on [`tool_path`]) with the network
/// off: in a network namespace of its own, which has only a loopback that is
/// down (`unshare --net`, as root, or in a user namespace of its own
/// otherwise). The builds of the Python and JavaScript plugins run so: they
/// must fetch nothing.
///
/// # Panics
/// When no network namespace can be made here, with what would allow it.
pub fn offline(program: &str) -> std::process::Command {
    static HOW: OnceLock<Result<&'static [&'static str], String>> = OnceLock::new();
    let how = HOW.get_or_init(|| {
        let works = |args: &[&str]| {
            std::process::Command::new("unshare")
                .args(args)
                .arg("true")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        const ROOT: &[&str] = &["--net"];
        const USER: &[&str] = &["--map-root-user", "--net"];
        if works(ROOT) {
            Ok(ROOT)
        } else if works(USER) {
            Ok(USER)
        } else {
            Err(
                "cannot run a build with the network off: `unshare --net` (util-linux) \
                 needs root, or unprivileged user namespaces \
                 (`sysctl kernel.unprivileged_userns_clone=1`)"
                    .to_owned(),
            )
        }
    });
    match how {
        Ok(args) => {
            let mut command = std::process::Command::new("unshare");
            command
                .args(*args)
                .arg("--")
                .arg(program)
                .env("PATH", tool_path());
            command
        }
        Err(e) => panic!("arkline-testkit: {e}"),
    }
}

fn build_prebuilt(dir: &str) -> Result<PathBuf, String> {
    let source = workspace_root().join("plugins").join(dir);
    let out_dir = out_dir()?;
    let wasm = out_dir.join(format!("{dir}.wasm"));
    // With the network off: the build must fetch nothing.
    let built = offline("sh")
        .arg(source.join("build.sh"))
        .arg(&wasm)
        .output()
        .map_err(|e| format!("cannot run {}/build.sh: {e}", source.display()))?;
    if !built.status.success() {
        return Err(format!(
            "{}/build.sh failed (is its toolchain installed? `.ci/deps.sh --test` installs \
             componentize-py and componentize-js):\n{}",
            source.display(),
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    let package = cargo_ark::cmd::PackageCmd {
        component: Some(wasm),
        ark_toml: Some(source.join("Ark.toml")),
        output: Some(out_dir.join(format!("{dir}.ark"))),
        ..cargo_ark::cmd::PackageCmd::default()
    };
    package
        .exec(&quiet_opts(), &quiet_shell())
        .map_err(|e| format!("`cargo ark package --component` of {dir} failed: {e:#}"))
}

/// This process's directory for the archives it builds,
/// `$TMPDIR/arkline-testkit-<pid>`. The first call removes the directories of
/// test processes that are gone: each holds tens of megabytes (the Python and
/// JavaScript components are 12–18 MB), and repeated runs filled the disk.
fn out_dir() -> Result<PathBuf, String> {
    static SWEPT: OnceLock<()> = OnceLock::new();
    let tmp = std::env::temp_dir();
    SWEPT.get_or_init(|| remove_stale_dirs(&tmp));
    let dir = tmp.join(format!("arkline-testkit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Removes `arkline-testkit-<pid>` directories whose process no longer runs.
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("arkline-testkit-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // Best effort: another process may be sweeping the same one.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `--quiet`, no colour: the options the test kit packages with.
fn quiet_opts() -> cargo_ark::cmd::GlobalOpts {
    cargo_ark::cmd::GlobalOpts {
        quiet: true,
        verbose: false,
        color: cargo_ark::shell::Color::Never,
    }
}

/// Status lines off; errors (and cargo's diagnostics) still reach stderr.
fn quiet_shell() -> cargo_ark::Shell {
    cargo_ark::Shell::new(
        cargo_ark::shell::Color::Never,
        cargo_ark::shell::Verbosity::Quiet,
    )
}
