//! The crates meant for a registry (`arkline`, `arkline-sdk`, `arkline-testkit`,
//! `cargo-ark`) package on their own, the WIT inside the two that read it; and
//! `cargo ark new` depends on the SDK by version (and local path when it has one).

use std::path::{Path, PathBuf};
use std::process::Command;

const CRATES: [&str; 4] = ["arkline", "arkline-sdk", "arkline-testkit", "cargo-ark"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The cargo running the tests.
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The `.wit` files of the workspace's canonical host API, relative to `wit/`.
fn canonical_wit() -> Vec<String> {
    let dir = workspace().join("wit/since_v0.1.0");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("wit dir")
        .map(|e| {
            format!(
                "since_v0.1.0/{}",
                e.expect("entry").file_name().to_string_lossy()
            )
        })
        .filter(|f| f.ends_with(".wit"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files
}

#[test]
fn each_crate_lists_its_files_and_the_wit_it_reads() {
    let wit = canonical_wit();
    for name in CRATES {
        let list = run(cargo().args([
            "package",
            "--no-verify",
            "--list",
            "--allow-dirty",
            "--offline",
            "-p",
            name,
        ]));
        let files: Vec<&str> = list.lines().collect();
        for must in ["Cargo.toml", "README.md", "src/lib.rs"] {
            assert!(files.contains(&must), "{name} lacks {must}: {files:?}");
        }
        assert!(
            files.iter().all(|f| !f.starts_with("..")),
            "{name} reaches outside its folder: {files:?}"
        );
        if name == "arkline" || name == "arkline-sdk" {
            for file in &wit {
                let path = format!("wit/{file}");
                assert!(
                    files.contains(&path.as_str()),
                    "{name} lacks {path}: {files:?}"
                );
            }
        }
    }
}

#[test]
fn the_manifests_have_what_a_registry_needs() {
    let json = run(cargo().args([
        "metadata",
        "--no-deps",
        "--offline",
        "--format-version",
        "1",
    ]));
    let metadata: serde_json::Value = serde_json::from_str(&json).expect("metadata");
    for name in CRATES {
        let package = metadata["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} is a workspace member"));
        for field in ["description", "license", "readme", "repository"] {
            assert!(
                package[field].as_str().is_some_and(|v| !v.is_empty()),
                "{name} has no {field}"
            );
        }
        for field in ["keywords", "categories"] {
            assert!(
                package[field].as_array().is_some_and(|v| !v.is_empty()),
                "{name} has no {field}"
            );
        }
        let readme = Path::new(package["manifest_path"].as_str().expect("path"))
            .parent()
            .expect("dir")
            .join(package["readme"].as_str().expect("readme"));
        assert!(readme.is_file(), "{name}: {} is missing", readme.display());
        // Path dependencies need a version too, or the registry cannot resolve
        // them (versionless dev-dependencies are dropped when packaging).
        for dep in package["dependencies"].as_array().expect("dependencies") {
            if dep["path"].is_string() && dep["kind"] != "dev" {
                assert_ne!(
                    dep["req"], "*",
                    "{name}: path dependency {} has no version",
                    dep["name"]
                );
            }
        }
    }
}

#[test]
fn the_crates_package_and_carry_real_wit_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cmd = cargo();
    cmd.args(["package", "--no-verify", "--allow-dirty", "--offline"])
        .arg("--target-dir")
        .arg(tmp.path());
    for name in CRATES {
        cmd.args(["-p", name]);
    }
    run(&mut cmd);
    let version = env!("CARGO_PKG_VERSION");
    for name in CRATES {
        let file = tmp.path().join(format!("package/{name}-{version}.crate"));
        assert!(file.is_file(), "{} was not written", file.display());
    }
    // What a user downloads has the WIT as files with the canonical contents.
    for name in ["arkline", "arkline-sdk"] {
        let out = tmp.path().join(format!("unpacked-{name}"));
        std::fs::create_dir_all(&out).expect("mkdir");
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(tmp.path().join(format!("package/{name}-{version}.crate")))
            .arg("-C")
            .arg(&out)
            .status()
            .expect("tar runs");
        assert!(status.success());
        for file in canonical_wit() {
            let packaged = out.join(format!("{name}-{version}/wit/{file}"));
            let meta = std::fs::symlink_metadata(&packaged)
                .unwrap_or_else(|e| panic!("{}: {e}", packaged.display()));
            assert!(meta.is_file(), "{} is not a file", packaged.display());
            assert_eq!(
                std::fs::read(&packaged).expect("read"),
                std::fs::read(workspace().join("wit").join(&file)).expect("read"),
                "{}",
                packaged.display()
            );
        }
    }
}

/// `major.minor` of this cargo-ark, the SDK requirement `cargo ark new` writes.
fn sdk_requirement() -> String {
    let mut parts = env!("CARGO_PKG_VERSION").split('.');
    format!(
        "{}.{}",
        parts.next().expect("major"),
        parts.next().expect("minor")
    )
}

fn cargo_ark() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("cargo-ark").expect("cargo-ark is built");
    cmd.env("NO_COLOR", "1");
    cmd
}

fn dependency(dir: &Path) -> (String, toml::Value) {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
    let line = text
        .lines()
        .find(|l| l.starts_with("arkline-sdk"))
        .expect("an arkline-sdk line")
        .to_owned();
    let table: toml::Table = text.parse().expect("valid TOML");
    (line, table["dependencies"]["arkline-sdk"].clone())
}

#[test]
fn new_depends_on_the_sdk_by_version_with_the_local_path_when_it_has_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let requirement = sdk_requirement();
    let sdk = workspace().join("plugins/sdk").canonicalize().expect("sdk");

    // Built from this checkout: version and path.
    let local = tmp.path().join("local-step");
    cargo_ark()
        .args(["ark", "new"])
        .arg(&local)
        .assert()
        .success()
        .stderr(predicates::str::contains(format!(
            "(arkline-sdk {requirement} from {})",
            sdk.display()
        )));
    let (line, dep) = dependency(&local);
    assert_eq!(
        line,
        format!(
            "arkline-sdk = {{ version = \"{requirement}\", path = \"{}\" }}",
            sdk.display()
        )
    );
    assert_eq!(dep["version"].as_str(), Some(requirement.as_str()));
    // The version matches the SDK at the path: cargo resolves it (offline, with
    // the workspace's lock file pinning the rest).
    std::fs::copy(workspace().join("Cargo.lock"), local.join("Cargo.lock")).expect("lock");
    run(cargo()
        .args([
            "metadata",
            "--offline",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(local.join("Cargo.toml")));

    // Registry only: the version alone.
    let registry = tmp.path().join("registry-step");
    cargo_ark()
        .args(["ark", "new", "--no-sdk-path"])
        .arg(&registry)
        .assert()
        .success()
        .stderr(predicates::str::contains(format!(
            "(arkline-sdk {requirement} from the registry)"
        )));
    let (line, dep) = dependency(&registry);
    assert_eq!(line, format!("arkline-sdk = \"{requirement}\""));
    assert_eq!(dep.as_str(), Some(requirement.as_str()));

    // An explicit path that is not the SDK is refused, and nothing is written.
    let wrong = tmp.path().join("wrong-step");
    cargo_ark()
        .args(["ark", "new", "--sdk-path"])
        .arg(tmp.path())
        .arg(&wrong)
        .assert()
        .failure()
        .stderr(predicates::str::contains("is not the arkline-sdk crate"));
    assert!(!wrong.exists());
    cargo_ark()
        .args(["ark", "new", "--no-sdk-path", "--sdk-path"])
        .arg(&sdk)
        .arg(&wrong)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("cannot be used with"));
}
