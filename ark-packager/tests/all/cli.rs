//! The real `cargo-ark` binary on scaffolded plugins in temporary directories.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

/// A target dir shared by these tests (not the workspace's own, whose lock the
/// running `cargo test` may hold), so dependencies build once.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/cargo-ark-tests")
}

fn cargo_ark() -> Command {
    let mut cmd = Command::cargo_bin("cargo-ark").expect("cargo-ark is built");
    cmd.env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTFLAGS");
    cmd
}

/// `cargo ark new` a plugin at `dir`, with the workspace's lock file copied in so the
/// scaffold resolves the same dependency versions (and builds offline once fetched).
fn scaffold(dir: &Path) {
    cargo_ark()
        .arg("ark")
        .arg("new")
        .arg(dir)
        .assert()
        .success()
        .stderr(predicate::str::contains("Created"));
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .expect("copy Cargo.lock");
}

fn package(dir: &Path) -> PathBuf {
    cargo_ark()
        .args(["ark", "package", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .assert()
        .success()
        .stderr(predicate::str::contains("Packaged"));
    target_dir().join("ark/hello-step-0.1.0.ark")
}

#[test]
fn new_build_package_is_reproducible_across_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = tmp.path().join("one/hello-step");
    scaffold(&first);
    let manifest = std::fs::read_to_string(first.join("Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("[package.metadata.ark]"));
    assert!(manifest.contains("\n[workspace]\n"));
    assert!(first.join("README.md").exists());

    let ark_path = package(&first);
    let bytes_one = std::fs::read(&ark_path).expect("archive");
    let ark = arkline::ark::Ark::from_bytes(&bytes_one).expect("valid archive");
    assert_eq!(ark.manifest.name, "hello-step");
    assert_eq!(ark.manifest.steps.len(), 1);
    assert_eq!(ark.manifest.steps[0].id, "hello");
    assert_eq!(ark.manifest.steps[0].description, "Greets someone.");
    let schema = ark.step_schema("hello").expect("schema");
    assert_eq!(schema["properties"]["name"]["type"], "string");
    assert_eq!(schema["required"], serde_json::json!(["name"]));
    // The scaffold's profile strips the `name` section (a quarter of the
    // component): no mangled function name of the SDK is left in it.
    let needle = b"arkline_sdk4json";
    assert!(
        !ark.component.windows(needle.len()).any(|w| w == needle),
        "the shipped component still has function names"
    );

    // Packaging again gives the same bytes.
    package(&first);
    assert_eq!(std::fs::read(&ark_path).expect("archive"), bytes_one);

    // The same sources in another directory (a rebuild of the plugin crate) too:
    // machine-specific paths are remapped out of the component.
    let second = tmp.path().join("elsewhere/deeper/hello-step");
    scaffold(&second);
    package(&second);
    assert_eq!(
        std::fs::read(&ark_path).expect("archive"),
        bytes_one,
        "the archive depends on where the sources are"
    );

    // inspect shows it, in text and JSON.
    cargo_ark()
        .args(["ark", "inspect"])
        .arg(&ark_path)
        .assert()
        .success()
        .stdout(predicate::str::contains("hello-step/hello"))
        .stdout(predicate::str::contains(
            "name: string (required) Who to greet.",
        ));
    let out = cargo_ark()
        .args(["ark", "inspect", "--json"])
        .arg(&ark_path)
        .output()
        .expect("runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["name"], "hello-step");
    assert_eq!(json["steps"][0]["id"], "hello");
    assert_eq!(json["signature"], "unsigned");
}

#[test]
fn a_crate_that_is_not_a_cdylib_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lib-only");
    scaffold(&dir);
    let toml = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&toml).expect("read");
    std::fs::write(&toml, text.replace(r#"["cdylib", "rlib"]"#, r#"["rlib"]"#)).expect("write");
    cargo_ark()
        .args(["ark", "build", "--manifest-path"])
        .arg(&toml)
        .assert()
        .failure()
        .stderr(predicate::str::contains("does not build a `cdylib`"))
        .stderr(predicate::str::contains(
            "crate-type = [\"cdylib\", \"rlib\"]",
        ));
}

#[test]
fn missing_or_misspelt_ark_metadata_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("no-meta");
    scaffold(&dir);
    let toml = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&toml).expect("read");

    std::fs::write(
        &toml,
        text.replace("[package.metadata.ark]", "[package.metadata.other]"),
    )
    .expect("write");
    cargo_ark()
        .args(["ark", "package", "--manifest-path"])
        .arg(&toml)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "package `no-meta` has no `[package.metadata.ark]` table",
        ));

    std::fs::write(&toml, text.replace("capabilities = {}", "capabilites = {}")).expect("write");
    cargo_ark()
        .args(["ark", "package", "--manifest-path"])
        .arg(&toml)
        .assert()
        .failure()
        .stderr(predicate::str::contains("invalid `[package.metadata.ark]`"))
        .stderr(predicate::str::contains("capabilites"));
}

#[test]
fn a_component_without_the_step_world_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("not-a-step");
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    std::fs::write(
        dir.join("Cargo.toml"),
        r#"[package]
name = "not-a-step"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[package.metadata.ark]

[workspace]
"#,
    )
    .expect("write");
    std::fs::write(
        dir.join("src/lib.rs"),
        "#[unsafe(no_mangle)]\npub extern \"C\" fn add(a: i32, b: i32) -> i32 { a + b }\n",
    )
    .expect("write");
    cargo_ark()
        .args(["ark", "package", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("is not a usable step plugin"))
        .stderr(predicate::str::contains("does not export the step world"));
}

#[test]
fn a_component_importing_an_interface_the_host_lacks_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("foreign-import");
    scaffold(&dir);
    // The step calls a function of `acme:db/query`, which no arkline host serves.
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).expect("lib.rs");
    let lib = lib.replace(
        "let greeting = format!(\"hello, {}!\", config.name);",
        "let greeting = acme::db::query::run(&config.name);",
    ) + r#"
arkline_sdk::__private::wit_bindgen::generate!({
    inline: "package acme:db; interface query { run: func(sql: string) -> string; } world extra { import query; }",
    world: "extra",
    runtime_path: "::arkline_sdk::__private::wit_bindgen::rt",
});
"#;
    assert!(lib.contains("acme::db::query::run"), "the scaffold changed");
    std::fs::write(dir.join("src/lib.rs"), lib).expect("write");
    let archive = target_dir().join("ark/foreign-import-0.1.0.ark");
    let _ = std::fs::remove_file(&archive);
    cargo_ark()
        .args(["ark", "package", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("is not a usable step plugin"))
        .stderr(predicate::str::contains(
            "imports something this host does not provide",
        ))
        .stderr(predicate::str::contains("acme:db/query"))
        .stderr(predicate::str::contains("Packaged").not());
    assert!(!archive.exists(), "no archive is written");
}

#[test]
fn parses_as_cargo_subcommand_and_directly() {
    cargo_ark()
        .args(["ark", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("package"));
    cargo_ark()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::contains(env!("CARGO_PKG_VERSION")));
    cargo_ark()
        .args(["ark", "frobnicate"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unrecognized subcommand"));
}

#[test]
fn new_refuses_bad_names_and_existing_directories() {
    let tmp = tempfile::tempdir().expect("tempdir");
    cargo_ark()
        .args(["ark", "new"])
        .arg(tmp.path().join("Bad Name"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("is not a valid plugin name"));
    cargo_ark()
        .args(["ark", "new"])
        .arg(tmp.path())
        .args(["--name", "fine"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already exists"));
}

#[test]
fn inspect_refuses_a_file_that_is_not_an_archive() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("junk.ark");
    std::fs::write(&file, b"definitely not a zip").expect("write");
    cargo_ark()
        .args(["ark", "inspect"])
        .arg(&file)
        .assert()
        .failure()
        .stderr(predicate::str::contains("not a valid zip archive"));
}
