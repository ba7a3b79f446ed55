//! `cargo ark package|container|verify --json`: one JSON object on stdout that a
//! CI script can read (status lines stay on stderr), on the real `shell` plugin;
//! and `cargo ark`'s own colours under `--color` and `NO_COLOR`.

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

fn cargo_ark() -> Command {
    let mut cmd = Command::cargo_bin("cargo-ark").expect("cargo-ark is built");
    cmd.env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CARGO_TERM_COLOR");
    cmd
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The whole of stdout as one JSON object.
fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `archive`, `size` and `sha256` describe the file at `path`.
fn describes_file(json: &serde_json::Value, path: &Path) {
    let bytes = std::fs::read(path).expect("the archive exists");
    assert_eq!(json["archive"], path.display().to_string(), "{json}");
    assert_eq!(json["size"], bytes.len(), "{json}");
    assert_eq!(json["sha256"], arkline::ark::sha256_hex(&bytes), "{json}");
}

fn verify_json(file: &Path, keys: &[PathBuf]) -> (Option<i32>, serde_json::Value) {
    let mut cmd = cargo_ark();
    cmd.args(["ark", "verify", "--json"]).arg(file);
    for key in keys {
        cmd.arg("--key").arg(key);
    }
    let out = cmd.output().expect("runs");
    (out.status.code(), json_of(&out))
}

#[test]
fn package_container_and_verify_print_one_json_object() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ark = tmp.path().join("shell.ark");

    // package
    let out = cargo_ark()
        .args(["ark", "package", "--json", "-p", "shell", "--manifest-path"])
        .arg(workspace().join("Cargo.toml"))
        .arg("-o")
        .arg(&ark)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Packaged"));
    let json = json_of(&out);
    describes_file(&json, &ark);
    assert_eq!(json["name"], "shell");
    assert_eq!(json["version"], "0.1.0");
    assert_eq!(json["steps"], serde_json::json!(["run"]));

    // container
    std::fs::write(
        tmp.path().join("container.toml"),
        "name = \"ci\"\nversion = \"1.0.0\"\n\n[[engines]]\nname = \"team-a\"\npipelines = [\"build.yaml\"]\nbizes = [{ ark = \"shell.ark\", grants = [\"process=sh\"] }]\n",
    )
    .expect("write");
    std::fs::write(
        tmp.path().join("build.yaml"),
        "name: build\nstages:\n  - name: only\n    steps:\n      - name: hi\n        uses: shell\n        with: { script: echo hi }\n",
    )
    .expect("write");
    let out = cargo_ark()
        .args(["ark", "container", "--json", "--manifest-path"])
        .arg(tmp.path().join("container.toml"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Checked engine team-a"), "{stderr}");
    let json = json_of(&out);
    let arkc = tmp.path().join("target/ark/ci-1.0.0.arkc");
    describes_file(&json, &arkc);
    assert_eq!(json["name"], "ci");
    assert_eq!(json["version"], "1.0.0");
    let engine = &json["engines"][0];
    assert_eq!(engine["name"], "team-a");
    assert_eq!(engine["bizes"][0]["name"], "shell");
    assert_eq!(engine["bizes"][0]["version"], "0.1.0");
    assert_eq!(
        engine["bizes"][0]["grants"],
        serde_json::json!(["process=sh"])
    );
    assert_eq!(
        engine["pipelines"],
        serde_json::json!(["engines/team-a/pipelines/build.yaml"])
    );

    // verify: unsigned, then signed by a trusted key, then checked against
    // another key.
    let (code, json) = verify_json(&ark, &[]);
    assert_eq!(code, Some(0), "{json}");
    describes_file(&json, &ark);
    assert_eq!(json["kind"], "ark");
    assert_eq!(json["verified"], true);
    assert_eq!(json["problems"], serde_json::json!([]));
    assert_eq!(json["signature"]["status"], "unsigned");
    assert_eq!(json["signature"]["key"], serde_json::Value::Null);

    for name in ["alice", "mallory"] {
        cargo_ark()
            .args(["ark", "keygen"])
            .arg(tmp.path().join(name))
            .assert()
            .success();
    }
    cargo_ark()
        .args(["ark", "sign"])
        .arg(&ark)
        .arg("--key")
        .arg(tmp.path().join("alice.key"))
        .assert()
        .success();
    let alice = std::fs::read_to_string(tmp.path().join("alice.pub")).expect("pub");
    let (code, json) = verify_json(&ark, &[tmp.path().join("alice.pub")]);
    assert_eq!(code, Some(0), "{json}");
    describes_file(&json, &ark);
    assert_eq!(json["signature"]["status"], "trusted");
    assert_eq!(json["signature"]["key"], alice.trim());
    assert_eq!(json["signature"]["key_id"], alice.trim()[..16]);

    let (code, json) = verify_json(&ark, &[tmp.path().join("mallory.pub")]);
    assert_eq!(code, Some(1), "a failed verification still exits 1: {json}");
    assert_eq!(json["verified"], false);
    assert_eq!(json["signature"]["status"], "invalid");
    let problems = json["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 1, "{json}");
    assert!(
        problems[0]
            .as_str()
            .is_some_and(|p| p.contains("not among the trusted keys")),
        "{json}"
    );

    // verify an .arkc: each engine's bizes with their signatures.
    let (code, json) = verify_json(&arkc, &[]);
    assert_eq!(code, Some(0), "{json}");
    describes_file(&json, &arkc);
    assert_eq!(json["kind"], "arkc");
    assert_eq!(json["verified"], true);
    let biz = &json["engines"][0]["bizes"][0];
    assert_eq!(biz["name"], "shell");
    assert_eq!(biz["signature"]["status"], "unsigned");

    // A file that is no archive at all is still described.
    let junk = tmp.path().join("junk.ark");
    std::fs::write(&junk, b"definitely not a zip").expect("write");
    let (code, json) = verify_json(&junk, &[]);
    assert_eq!(code, Some(1));
    describes_file(&json, &junk);
    assert_eq!(json["verified"], false);
    assert!(
        json["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("not a valid zip archive")),
        "{json}"
    );
}

#[test]
fn status_lines_have_colour_only_when_allowed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let stderr = |args: &[&str], env: &[(&str, &str)], key: &str| {
        let out = cargo_ark()
            .envs(env.iter().copied())
            .arg("ark")
            .args(args)
            .arg("keygen")
            .arg(tmp.path().join(key))
            .output()
            .expect("runs");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let colored = stderr(&["--color", "always"], &[], "a");
    assert!(colored.contains("\x1b["), "{colored:?}");
    assert!(colored.contains("Created"), "{colored:?}");
    for (i, (args, env)) in [
        (&["--color", "never"][..], &[][..]),
        (&[][..], &[("NO_COLOR", "1")][..]),
        (&[][..], &[][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let plain = stderr(args, env, &format!("k{i}"));
        assert!(!plain.contains('\x1b'), "{args:?} {env:?}: {plain:?}");
        assert!(plain.contains("     Created key"), "{plain:?}");
    }
}
