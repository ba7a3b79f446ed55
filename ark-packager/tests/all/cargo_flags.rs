//! `--locked`, `--frozen`, `--offline` and `--target-dir` reach the cargo that
//! `cargo ark` runs, shown by what cargo does with them, on scaffolded plugins.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

/// The target dir the CLI tests share, so the guest's dependencies build once.
fn shared_target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cargo-ark-tests")
}

fn cargo_ark() -> Command {
    let mut cmd = Command::cargo_bin("cargo-ark").expect("cargo-ark is built");
    cmd.env("CARGO_TARGET_DIR", shared_target_dir())
        .env_remove("RUSTFLAGS")
        .env("NO_COLOR", "1");
    cmd
}

/// `cargo ark new` a plugin at `dir`, with the workspace's lock file copied in:
/// it pins the dependencies (so the build works offline) but does not list the
/// new package, so cargo would have to update it.
fn scaffold(dir: &Path) {
    cargo_ark().args(["ark", "new"]).arg(dir).assert().success();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .expect("copy Cargo.lock");
}

#[test]
fn locked_and_frozen_refuse_to_update_an_out_of_date_lock_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hello-step");
    scaffold(&dir);
    let lock = std::fs::read(dir.join("Cargo.lock")).expect("lock");

    for flag in ["--locked", "--frozen"] {
        cargo_ark()
            .args(["ark", "build", "--verbose", flag, "--manifest-path"])
            .arg(dir.join("Cargo.toml"))
            .assert()
            .failure()
            .stderr(predicate::str::contains(format!(
                "because {flag} was passed to prevent this"
            )))
            // The command line cargo ark ran, with the colour NO_COLOR asks for.
            .stderr(predicate::str::contains(format!("\"{flag}\"")))
            .stderr(predicate::str::contains("\"--color\" \"never\""))
            .stderr(predicate::str::contains(
                "cargo build of `hello-step` for wasm32-wasip2 failed",
            ));
        assert_eq!(
            std::fs::read(dir.join("Cargo.lock")).expect("lock"),
            lock,
            "{flag}: the lock file was left as it was"
        );
    }
}

#[test]
fn offline_resolves_without_the_network() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hello-step");
    scaffold(&dir);
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("read");
    std::fs::write(
        &manifest,
        text.replace(
            "schemars = \"1\"\n",
            "schemars = \"1\"\narkline-no-such-crate = \"1\"\n",
        ),
    )
    .expect("write");
    // Only an offline cargo says so; an online one would ask the registry.
    cargo_ark()
        .args(["ark", "package", "--offline", "--manifest-path"])
        .arg(&manifest)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "no matching package named `arkline-no-such-crate` found",
        ))
        .stderr(predicate::str::contains(
            "you're using offline mode (--offline)",
        ));
}

#[test]
fn target_dir_moves_the_guest_build_and_the_archive_and_json_describes_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("hello-step");
    scaffold(&dir);
    // CARGO_TARGET_DIR points elsewhere: the flag wins, for cargo and cargo ark.
    let elsewhere = tmp.path().join("not-here");
    let target = shared_target_dir();
    let out = cargo_ark()
        .env("CARGO_TARGET_DIR", &elsewhere)
        .args(["ark", "package", "--json", "--offline", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Packaged"),
        "status lines on stderr: {stderr}"
    );

    // stdout is exactly one JSON object.
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let archive = std::path::absolute(target.join("ark/hello-step-0.1.0.ark")).expect("path");
    assert_eq!(json["archive"], archive.display().to_string());
    let bytes = std::fs::read(&archive).expect("the archive is under --target-dir/ark");
    assert_eq!(json["size"], bytes.len());
    assert_eq!(json["sha256"], arkline::ark::sha256_hex(&bytes));
    assert_eq!(json["name"], "hello-step");
    assert_eq!(json["version"], "0.1.0");
    assert_eq!(json["steps"], serde_json::json!(["hello"]));

    assert!(
        target.join("wasm32-wasip2/ark/hello_step.wasm").is_file(),
        "the guest is built under --target-dir"
    );
    assert!(
        !elsewhere.exists(),
        "nothing is built where CARGO_TARGET_DIR points"
    );
    let ark = arkline::ark::Ark::from_bytes(&bytes).expect("valid archive");
    assert_eq!(ark.manifest.steps[0].id, "hello");
}
