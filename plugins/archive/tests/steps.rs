//! The `archive` component in the real isolation runtime.

use std::fs;
use std::path::Path;
use std::process::Command;

use arkline_testkit::{Harness, StepCall, StepFailure, StepReport};
use serde_json::{Value, json};

fn archive() -> Harness {
    Harness::current_crate(env!("CARGO_MANIFEST_DIR"))
}

fn run(workspace: &Path, step: &str, config: Value) -> StepReport {
    archive().call(StepCall::new(step, config).workspace(workspace))
}

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    fs::write(path, content).expect("write");
}

/// A small tree: nested files, an empty directory, a relative link, a log file.
fn project(root: &Path, reverse: bool) {
    let mut files = vec![
        ("app/src/main.rs", "fn main() {}\n"),
        ("app/Cargo.toml", "[package]\nname = \"app\"\n"),
        ("app/README.md", "# app\n"),
        ("app/build.log", "noise\n"),
        ("app/target/debug/app", "binary"),
    ];
    if reverse {
        files.reverse();
    }
    for (rel, content) in files {
        write(root, rel, content);
    }
    fs::create_dir_all(root.join("app/empty")).expect("mkdir");
    std::os::unix::fs::symlink("README.md", root.join("app/readme-link")).expect("symlink");
}

fn invalid(report: &StepReport) -> (Option<String>, String) {
    match &report.result {
        Err(StepFailure::InvalidConfig { field, message }) => (field.clone(), message.clone()),
        other => panic!("expected invalid-config, got {other:?}"),
    }
}

#[test]
fn pack_then_unpack_round_trips_files_dirs_and_links() {
    let ws = tempfile::tempdir().expect("tempdir");
    project(ws.path(), false);
    let report = run(
        ws.path(),
        "pack",
        json!({ "paths": ["app"], "output": "dist/app.tar.gz", "exclude": ["**/target", "**/*.log"] }),
    );
    let out = report.outputs().expect("pack succeeds");
    assert_eq!(out["path"], "dist/app.tar.gz");
    let bytes = fs::read(ws.path().join("dist/app.tar.gz")).expect("archive written");
    assert_eq!(out["size"], bytes.len().to_string());
    assert_eq!(out["sha256"].len(), 64);
    // app, app/Cargo.toml, app/README.md, app/empty, app/readme-link, app/src, app/src/main.rs
    assert_eq!(out["entries"], "7", "{out:?}");

    // The system tar reads it: sorted names, fixed owner, mode and time.
    let listing = Command::new("tar")
        .args(["-tvzf", "dist/app.tar.gz", "--numeric-owner"])
        .current_dir(ws.path())
        .output()
        .expect("run tar");
    assert!(listing.status.success(), "{listing:?}");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().nth(5).expect("a name column"))
        .collect();
    assert_eq!(
        names,
        [
            "app/",
            "app/Cargo.toml",
            "app/README.md",
            "app/empty/",
            "app/readme-link",
            "app/src/",
            "app/src/main.rs"
        ],
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .all(|l| l.contains(" 0/0 ") && l.contains("1970-01-01")),
        "{listing}"
    );
    assert!(listing.contains("-rw-r--r--"), "{listing}");
    assert!(listing.contains("drwxr-xr-x"), "{listing}");

    let report = run(
        ws.path(),
        "unpack",
        json!({ "archive": "dist/app.tar.gz", "destination": "restored", "strip_components": 1 }),
    );
    let out = report.outputs().expect("unpack succeeds");
    assert_eq!(out["files"], "4", "{out:?}");
    let restored = ws.path().join("restored");
    assert_eq!(
        fs::read_to_string(restored.join("src/main.rs")).expect("main.rs"),
        "fn main() {}\n"
    );
    assert!(restored.join("empty").is_dir());
    assert!(!restored.join("build.log").exists());
    assert!(!restored.join("target").exists());
    assert_eq!(
        fs::read_link(restored.join("readme-link")).expect("a link"),
        Path::new("README.md")
    );
}

#[test]
fn the_same_files_pack_to_the_same_bytes() {
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    project(a.path(), false);
    // Created in another order, later, in another directory.
    project(b.path(), true);
    let config = json!({ "paths": ["app"], "output": "out.tar.gz", "prefix": "app-1.0", "mtime": 1700000000 });
    let first = run(a.path(), "pack", config.clone());
    let second = run(b.path(), "pack", config.clone());
    let again = run(a.path(), "pack", config);
    let sha = |r: &StepReport| r.outputs().expect("pack succeeds")["sha256"].clone();
    assert_eq!(sha(&first), sha(&second));
    assert_eq!(sha(&first), sha(&again));
    assert_eq!(
        fs::read(a.path().join("out.tar.gz")).expect("a"),
        fs::read(b.path().join("out.tar.gz")).expect("b")
    );
    // A changed byte changes the digest.
    write(b.path(), "app/README.md", "# app!\n");
    let changed = run(
        b.path(),
        "pack",
        json!({ "paths": ["app"], "output": "out.tar.gz", "prefix": "app-1.0", "mtime": 1700000000 }),
    );
    assert_ne!(sha(&first), sha(&changed));
}

#[test]
fn packing_the_workspace_root_leaves_out_the_archive_itself() {
    let ws = tempfile::tempdir().expect("tempdir");
    write(ws.path(), "a.txt", "a");
    write(ws.path(), ".arkline/tmp/host-file", "host");
    let report = run(
        ws.path(),
        "pack",
        json!({ "paths": ["."], "output": "all.tar.gz" }),
    );
    let out = report.outputs().expect("pack succeeds");
    let listing = Command::new("tar")
        .args(["-tzf", "all.tar.gz"])
        .current_dir(ws.path())
        .output()
        .expect("run tar");
    assert_eq!(String::from_utf8_lossy(&listing.stdout), "a.txt\n");
    assert_eq!(out["entries"], "1");
}

/// A gzipped tar with one entry whose raw name is `name`, bypassing the `tar`
/// crate's own name checks.
fn hostile_tar(name: &str, kind: tar::EntryType, link: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, body).expect("append");
    let tar = builder.into_inner().expect("finish");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    gz.finish().expect("gzip")
}

#[test]
fn unpack_refuses_entries_that_leave_the_destination() {
    let ws = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "dotdot",
            hostile_tar("../escaped", tar::EntryType::Regular, None, b"x"),
            "climbs out with `..`",
        ),
        (
            "absolute",
            hostile_tar("/etc/escaped", tar::EntryType::Regular, None, b"x"),
            "absolute name",
        ),
        (
            "link",
            hostile_tar("out", tar::EntryType::Symlink, Some("../../etc"), b""),
            "leaves the destination",
        ),
    ];
    for (name, bytes, expected) in cases {
        fs::write(ws.path().join(format!("{name}.tar.gz")), bytes).expect("write");
        let report = run(
            ws.path(),
            "unpack",
            json!({ "archive": format!("{name}.tar.gz"), "destination": "into" }),
        );
        match &report.result {
            Err(StepFailure::Failed(message)) => {
                assert!(message.contains(expected), "{name}: {message}")
            }
            other => panic!("{name}: expected a failure, got {other:?}"),
        }
    }
    assert!(!ws.path().join("escaped").exists());
    assert!(fs::symlink_metadata(ws.path().join("into/out")).is_err());
}

#[test]
fn unpack_stops_at_max_bytes() {
    let ws = tempfile::tempdir().expect("tempdir");
    write(ws.path(), "big/data", &"x".repeat(10_000));
    run(
        ws.path(),
        "pack",
        json!({ "paths": ["big"], "output": "big.tar.gz" }),
    )
    .outputs()
    .expect("pack succeeds");
    let report = run(
        ws.path(),
        "unpack",
        json!({ "archive": "big.tar.gz", "destination": "out", "max_bytes": 4096 }),
    );
    match &report.result {
        Err(StepFailure::Failed(message)) => assert!(message.contains("max_bytes"), "{message}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn bad_configuration_names_the_field() {
    let ws = tempfile::tempdir().expect("tempdir");
    write(ws.path(), "a.txt", "a");
    let (field, message) = invalid(&run(
        ws.path(),
        "pack",
        json!({ "paths": ["a.txt"], "output": "../out.tar.gz" }),
    ));
    assert_eq!(field.as_deref(), Some("output"));
    assert!(message.contains("leaves the workspace"), "{message}");

    let (field, message) = invalid(&run(
        ws.path(),
        "pack",
        json!({ "paths": ["missing"], "output": "out.tar.gz" }),
    ));
    assert_eq!(field.as_deref(), Some("paths[0]"));
    assert!(message.contains("does not exist"), "{message}");

    let (field, message) = invalid(&run(
        ws.path(),
        "pack",
        json!({ "paths": ["a.txt"], "output": "o.tar.gz", "exclude": ["a[b"] }),
    ));
    assert_eq!(field.as_deref(), Some("exclude[0]"));
    assert!(message.contains("a[b"), "{message}");

    let (field, _) = invalid(&run(ws.path(), "unpack", json!({ "archiv": "x" })));
    assert_eq!(field.as_deref(), Some("archiv"));
}
