//! # arkline-testkit
//!
//! Test support: builds and packages this workspace's step plugins with the real
//! `cargo ark package`, once per test process, and hands tests the `.ark` path.
//!
//! ```no_run
//! let shell = arkline_testkit::plugin("shell");
//! let ark = std::fs::read(&shell).unwrap();
//! assert!(!ark.is_empty());
//! ```
//!
//! It runs a nested `$CARGO run -p cargo-ark -- ark package -p NAME` from the test
//! body. Never call it from a `build.rs`: a nested cargo there waits forever on the
//! target-directory lock the outer build holds.

#![deny(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

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
/// When the build or packaging fails, with cargo's output: a test cannot go on
/// without its plugin.
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
    let out_dir = std::env::temp_dir().join(format!("arkline-testkit-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let output = out_dir.join(format!("{name}.ark"));
    let result = Command::new(cargo())
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "-p",
            "cargo-ark",
            "--",
            "ark",
            "package",
            "--quiet",
            "-p",
            name,
        ])
        .arg("--output")
        .arg(&output)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "`cargo run -p cargo-ark -- ark package -p {name}` failed ({}):\n{}{}",
            result.status,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(output)
}
