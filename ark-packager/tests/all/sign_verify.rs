//! `cargo ark keygen`, `sign` and `verify` on the real packaged `shell` plugin, and
//! `verify` refusing a corpus of broken archives with distinct messages.

use std::collections::BTreeMap;
use std::path::Path;

use arkline::ark::{Ark, write_deterministic_zip};
use assert_cmd::Command;
use predicates::prelude::*;

type Entries = BTreeMap<String, Vec<u8>>;

fn cargo_ark() -> Command {
    Command::cargo_bin("cargo-ark").expect("cargo-ark is built")
}

fn shell_ark(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("shell.ark");
    std::fs::copy(arkline_testkit::plugin("shell"), &path).expect("copy the shell plugin");
    path
}

#[test]
fn keygen_sign_verify_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ark = shell_ark(tmp.path());
    cargo_ark()
        .args(["ark", "keygen"])
        .arg(tmp.path().join("alice"))
        .assert()
        .success();
    cargo_ark()
        .args(["ark", "keygen"])
        .arg(tmp.path().join("mallory"))
        .assert()
        .success();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("alice.key"))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    // keygen does not overwrite.
    cargo_ark()
        .args(["ark", "keygen"])
        .arg(tmp.path().join("alice"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("already exists"));

    // Unsigned: verify passes without keys, fails when a key is required.
    cargo_ark()
        .args(["ark", "verify"])
        .arg(&ark)
        .assert()
        .success();
    cargo_ark()
        .args(["ark", "verify"])
        .arg(&ark)
        .arg("--key")
        .arg(tmp.path().join("alice.pub"))
        .assert()
        .code(1)
        .stdout(predicate::str::contains("not signed"));

    cargo_ark()
        .args(["ark", "sign"])
        .arg(&ark)
        .arg("--key")
        .arg(tmp.path().join("alice.key"))
        .assert()
        .success()
        .stderr(predicate::str::contains("Signed"));
    cargo_ark()
        .args(["ark", "verify"])
        .arg(&ark)
        .arg("--key")
        .arg(tmp.path().join("alice.pub"))
        .assert()
        .success()
        .stderr(predicate::str::contains("signed by trusted key"))
        .stderr(predicate::str::contains("Verified"));
    cargo_ark()
        .args(["ark", "verify"])
        .arg(&ark)
        .arg("--key")
        .arg(tmp.path().join("mallory.pub"))
        .assert()
        .code(1)
        .stdout(predicate::str::contains("not among the trusted keys"));
    cargo_ark()
        .args(["ark", "inspect"])
        .arg(&ark)
        .assert()
        .success()
        .stdout(predicate::str::contains("valid signature by key"));

    // Changing ark.toml after signing breaks the signature.
    let signed = Ark::open(&ark).expect("reads");
    let mut entries = signed.entries();
    let text = String::from_utf8(entries["ark.toml"].clone()).expect("utf8");
    entries.insert(
        "ark.toml".into(),
        text.replace("process = [", "http = [\"evil.example\"]\nprocess = [")
            .into_bytes(),
    );
    let forged = tmp.path().join("forged.ark");
    std::fs::write(
        &forged,
        write_deterministic_zip(&entries, |_| false).expect("zip"),
    )
    .expect("write");
    cargo_ark()
        .args(["ark", "verify"])
        .arg(&forged)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("bad signature"));
}

/// Each broken archive is refused by `cargo ark verify` with exit 1 and a message
/// of its own.
#[test]
fn verify_refuses_the_corpus_with_distinct_messages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let good = Ark::open(shell_ark(tmp.path())).expect("reads");
    let base = good.entries();
    let mutate = |f: &dyn Fn(&mut Entries)| {
        let mut e = base.clone();
        f(&mut e);
        write_deterministic_zip(&e, |_| false).expect("zip")
    };
    let toml = String::from_utf8(base["ark.toml"].clone()).expect("utf8");
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        (
            "tampered",
            mutate(&|e| {
                let c = e.get_mut("component.wasm").expect("component");
                let last = c.len() - 1;
                c[last] ^= 1;
            }),
        ),
        (
            "extra",
            mutate(&|e| {
                e.insert("notes.txt".into(), b"hi".to_vec());
            }),
        ),
        (
            "missing",
            mutate(&|e| {
                e.remove("schemas/run.schema.json");
            }),
        ),
        (
            "future",
            mutate(&|e| {
                e.insert(
                    "ark.toml".into(),
                    toml.replace("format_version = 1", "format_version = 9")
                        .into_bytes(),
                );
            }),
        ),
        (
            "host-api",
            mutate(&|e| {
                e.insert(
                    "ark.toml".into(),
                    toml.replace("host_api = \"^0.1.0\"", "host_api = \"^7\"")
                        .into_bytes(),
                );
            }),
        ),
        ("garbage", b"PK\x03\x04 not really".to_vec()),
    ];
    let mut messages = std::collections::BTreeSet::new();
    for (name, bytes) in &corpus {
        let path = tmp.path().join(format!("{name}.ark"));
        std::fs::write(&path, bytes).expect("write");
        let out = cargo_ark()
            .args(["ark", "verify"])
            .arg(&path)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1), "{name} was not refused");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!stdout.trim().is_empty(), "{name}: no problem line");
        messages.insert(stdout.replace(&path.display().to_string(), ""));
    }
    assert_eq!(messages.len(), corpus.len(), "{messages:#?}");
}
