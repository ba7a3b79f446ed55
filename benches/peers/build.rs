//! Builds the Extism guest (`guest/`, wasm32-unknown-unknown) for the benchmark, with
//! its own target directory so the nested cargo never waits on this build's lock.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let target_dir = root.join("target").join("guest");
    for watched in ["guest/src", "guest/Cargo.toml", "Cargo.lock"] {
        println!("cargo::rerun-if-changed={watched}");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--locked", "-p", "upper-extism"])
        .args(["--target", "wasm32-unknown-unknown", "--profile", "guest"])
        .arg("--target-dir")
        .arg(&target_dir)
        // This build's own flags are for the host, not the guest.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("runs cargo to build the Extism guest");
    assert!(
        status.success(),
        "building the Extism guest failed; is the target installed? \
         `rustup target add wasm32-unknown-unknown`"
    );
    let wasm = target_dir.join("wasm32-unknown-unknown/guest/upper_extism.wasm");
    println!("cargo::rustc-env=UPPER_EXTISM_WASM={}", wasm.display());
}
