//! The `image` biz's `publish` step against a real registry on loopback
//! (`docker-registry`, CNCF distribution 2.8), looked at with `skopeo`: the
//! config a client sees, the files and modes in the layers, the same digest
//! twice, basic auth, cross-repository mounts and chunked uploads.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use arkline_testkit::registry::{Registry, skopeo};
use arkline_testkit::{Capabilities, Harness, StepCall, StepFailure, StepReport};
use serde_json::{Value, json};

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        Harness::from_ark(arkline_testkit::plugin("image")).grant(Capabilities {
            http: vec!["127.0.0.1".into()],
            ..Capabilities::default()
        })
    })
}

fn publish(workspace: &Path, config: Value) -> StepReport {
    harness().call(
        StepCall::new("publish", config)
            .workspace(workspace)
            .timeout(Duration::from_secs(120)),
    )
}

fn outputs(report: &StepReport) -> &std::collections::BTreeMap<String, String> {
    report
        .outputs()
        .unwrap_or_else(|| panic!("publish failed: {:?}\n{}", report.result, report.log.text()))
}

fn failure(report: &StepReport) -> String {
    match &report.result {
        Err(StepFailure::Failed(message)) => message.clone(),
        other => panic!("expected a failure, got {other:?}\n{}", report.log.text()),
    }
}

fn run_ok(args: &[&str]) -> Vec<u8> {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A workspace with an application: a script, an ELF-looking binary, data
/// files, a nested directory.
fn app_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    fs::create_dir_all(root.join("dist/bin")).expect("mkdir");
    fs::create_dir_all(root.join("static/css")).expect("mkdir");
    fs::write(root.join("dist/bin/app"), b"\x7fELF\x02\x01\x01fake binary").expect("write");
    fs::write(
        root.join("dist/bin/run.sh"),
        b"#!/bin/sh\nexec /app/bin/app \"$@\"\n",
    )
    .expect("write");
    fs::write(root.join("dist/bin/tool"), b"no magic, mode from `modes`").expect("write");
    fs::write(root.join("dist/README"), b"read me\n").expect("write");
    fs::write(root.join("static/index.html"), b"<h1>hi</h1>\n").expect("write");
    fs::write(root.join("static/css/site.css"), b"h1 { color: teal }\n").expect("write");
    dir
}

/// Publishes a base image from scratch (one layer, env, a label, a cmd) to
/// `<registry>/<repository>:1`; returns its digest.
fn push_base(registry: &Registry, repository: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
    fs::write(dir.path().join("etc/base-release"), b"base 1\n").expect("write");
    let report = publish(
        dir.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["etc"] }],
            "env": { "PATH": "/usr/bin:/bin", "BASE": "1" },
            "labels": { "layer": "base" },
            "cmd": ["/bin/sh"],
            "target": format!("{}/{repository}", registry.host()),
            "tags": ["1"],
        }),
    );
    outputs(&report)["digest"].clone()
}

fn app_config(registry: &Registry, base: &str) -> Value {
    json!({
        "base": base,
        "layers": [
            {
                "paths": ["bin", "README"],
                "working_dir": "dist",
                "destination": "/app",
                "modes": { "bin/tool": "0750" },
            },
            { "paths": ["static"], "destination": "/srv/www" },
        ],
        "entrypoint": ["/app/bin/run.sh"],
        "env": { "APP_MODE": "production", "BASE": "2" },
        "workdir": "/app",
        "user": "1000:1000",
        "labels": { "org.opencontainers.image.title": "app" },
        "exposed_ports": ["8080", "53/udp"],
        "annotations": { "org.opencontainers.image.revision": "0123abc" },
        "target": format!("{}/team/app", registry.host()),
        "tags": ["v1", "latest"],
    })
}

#[test]
fn publishes_layers_on_a_base_that_skopeo_reads_back() {
    let registry = Registry::start();
    push_base(&registry, "base/runtime");
    let base = format!("{}/base/runtime:1", registry.host());
    let workspace = app_workspace();

    let report = publish(workspace.path(), app_config(&registry, &base));
    let out = outputs(&report).clone();
    let digest = out["digest"].clone();
    assert!(digest.starts_with("sha256:"), "{out:?}");
    assert_eq!(
        out["image"],
        format!("{}/team/app@{digest}", registry.host())
    );
    assert_eq!(out["tags"], "v1,latest");

    // What a client sees: the manifest digest and the config.
    let reference = format!("docker://{}/team/app:v1", registry.host());
    let inspect: Value =
        serde_json::from_slice(&run_ok(&["inspect", "--tls-verify=false", &reference]))
            .expect("skopeo inspect prints JSON");
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(3));
    assert_eq!(inspect["Labels"]["layer"], "base");
    assert_eq!(inspect["Labels"]["org.opencontainers.image.title"], "app");
    let config: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("skopeo inspect --config prints JSON");
    let run = &config["config"];
    assert_eq!(run["Entrypoint"], json!(["/app/bin/run.sh"]));
    // A new entrypoint drops the base's cmd, as a Dockerfile's ENTRYPOINT does.
    assert!(run.get("Cmd").is_none_or(Value::is_null), "{run}");
    assert_eq!(
        run["Env"],
        json!(["BASE=2", "PATH=/usr/bin:/bin", "APP_MODE=production"])
    );
    assert_eq!(run["WorkingDir"], "/app");
    assert_eq!(run["User"], "1000:1000");
    assert_eq!(run["ExposedPorts"], json!({ "8080/tcp": {}, "53/udp": {} }));
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(3)
    );
    let raw: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("the manifest is JSON");
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.revision"],
        "0123abc"
    );
    assert_eq!(
        raw["annotations"]["org.opencontainers.image.base.name"],
        base.as_str()
    );

    // The files and their modes, from an OCI layout copy.
    let layout = tempfile::tempdir().expect("temp dir");
    let oci = format!("oci:{}:v1", layout.path().display());
    run_ok(&["copy", "--src-tls-verify=false", &reference, &oci]);
    let listing = list_layers(layout.path(), &raw);
    for expected in [
        "drwxr-xr-x 0/0 app/",
        "-rw-r--r-- 0/0 app/README",
        "drwxr-xr-x 0/0 app/bin/",
        "-rwxr-xr-x 0/0 app/bin/app",
        "-rwxr-xr-x 0/0 app/bin/run.sh",
        "-rwxr-x--- 0/0 app/bin/tool",
        "drwxr-xr-x 0/0 srv/www/static/",
        "-rw-r--r-- 0/0 srv/www/static/css/site.css",
        "-rw-r--r-- 0/0 srv/www/static/index.html",
        "-rw-r--r-- 0/0 etc/base-release",
    ] {
        assert!(
            listing.iter().any(|l| l == expected),
            "no `{expected}` in the layers:\n{}",
            listing.join("\n")
        );
    }
    let unpacked = tempfile::tempdir().expect("temp dir");
    unpack_layers(layout.path(), &raw, unpacked.path());
    assert_eq!(
        fs::read(unpacked.path().join("app/bin/run.sh")).expect("run.sh unpacked"),
        b"#!/bin/sh\nexec /app/bin/app \"$@\"\n"
    );
    assert_eq!(
        fs::read_to_string(unpacked.path().join("srv/www/static/css/site.css"))
            .expect("site.css unpacked"),
        "h1 { color: teal }\n"
    );

    // The base's layer was mounted from its repository, not uploaded again.
    let requests = registry.requests();
    assert!(
        requests.iter().any(|r| r.method == "POST"
            && r.path.contains("/v2/team/app/blobs/uploads/?mount=")
            && r.path.contains("from=base/runtime")
            && r.status == 201),
        "no cross-repository mount in {requests:#?}"
    );
}

/// `tar -tv` of every layer of `manifest` in the OCI layout: `mode uid/gid name`.
fn list_layers(layout: &Path, manifest: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let blob = blob_path(layout, layer);
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tvzf"])
            .arg(&blob)
            .output()
            .expect("tar runs");
        assert!(out.status.success(), "tar -t {}", blob.display());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // mode owner size date time name
            if let [mode, owner, _, _, _, name, ..] = fields.as_slice() {
                lines.push(format!("{mode} {owner} {name}"));
            }
        }
    }
    lines
}

fn unpack_layers(layout: &Path, manifest: &Value, into: &Path) {
    for layer in manifest["layers"].as_array().expect("layers") {
        let blob = blob_path(layout, layer);
        let status = Command::new("tar")
            .args(["-xzf"])
            .arg(&blob)
            .arg("-C")
            .arg(into)
            .status()
            .expect("tar runs");
        assert!(status.success(), "tar -x {}", blob.display());
    }
}

fn blob_path(layout: &Path, descriptor: &Value) -> std::path::PathBuf {
    let digest = descriptor["digest"].as_str().expect("digest");
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    layout.join("blobs/sha256").join(hex)
}

#[test]
fn the_same_inputs_give_the_same_digest_and_upload_nothing_again() {
    let registry = Registry::start();
    push_base(&registry, "base/runtime");
    let base = format!("{}/base/runtime:1", registry.host());
    let first_ws = app_workspace();
    let first = outputs(&publish(first_ws.path(), app_config(&registry, &base)))["digest"].clone();
    let before = registry.requests().len();

    // Another workspace with the same files, with other timestamps.
    let second_ws = app_workspace();
    let later = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    for file in ["dist/bin/app", "dist/README", "static/index.html"] {
        fs::File::options()
            .write(true)
            .open(second_ws.path().join(file))
            .and_then(|f| f.set_modified(later))
            .expect("set the modification time");
    }
    let second =
        outputs(&publish(second_ws.path(), app_config(&registry, &base)))["digest"].clone();
    assert_eq!(first, second);
    let again = &registry.requests()[before..];
    assert!(
        !again
            .iter()
            .any(|r| r.method == "PATCH" || (r.method == "PUT" && r.path.contains("/blobs/"))),
        "the second run uploaded blobs: {again:#?}"
    );
}

#[test]
fn basic_auth_with_the_right_credential_publishes_and_a_wrong_one_fails_clearly() {
    let registry = Registry::builder()
        .basic_auth("ci-robot", "correct horse")
        .start();
    let workspace = app_workspace();
    let config = |repository: &str, password: &str| {
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["static"], "destination": "/srv" }],
            "target": format!("{}/{repository}", registry.host()),
            "tags": ["1.0"],
            "credential": { "username": "ci-robot", "password": password },
        })
    };

    let report = publish(workspace.path(), config("team/site", "correct horse"));
    let digest = outputs(&report)["digest"].clone();
    let inspect: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "ci-robot:correct horse",
        &format!("docker://{}/team/site:1.0", registry.host()),
    ]))
    .expect("JSON");
    assert_eq!(inspect["Digest"], digest.as_str());
    assert!(!report.log.text().contains("correct horse"));

    let report = publish(workspace.path(), config("team/other", "wrong battery"));
    let message = failure(&report);
    for part in [
        registry.host().as_str(),
        "team/other",
        "HTTP 401",
        "UNAUTHORIZED",
        "check the credential",
    ] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
    assert!(!message.contains("wrong battery"), "{message}");
    assert!(!report.log.text().contains("wrong battery"));
    let repositories = registry.storage().join("docker/registry/v2/repositories");
    assert!(
        !repositories.join("team/other").exists(),
        "a wrong credential pushed something"
    );
    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "ci-robot:correct horse",
        &format!("docker://{}/team/other:1.0", registry.host()),
    ]);
    assert!(!out.status.success());
}

#[test]
fn a_layer_bigger_than_a_chunk_is_uploaded_in_chunks() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("temp dir");
    // Incompressible-ish data: a simple generator, so gzip leaves it big.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..600_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(dir.path().join("blob.bin"), &data).expect("write");
    let report = publish(
        dir.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["blob.bin"], "destination": "/data" }],
            "target": format!("{}/big", registry.host()),
            "tags": ["1"],
            "chunk_size": 131072,
        }),
    );
    outputs(&report);
    let patches = registry
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.status == 202)
        .count();
    assert!(patches >= 4, "{patches} PATCH requests");
    let layout = tempfile::tempdir().expect("temp dir");
    let reference = format!("docker://{}/big:1", registry.host());
    run_ok(&[
        "copy",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:1", layout.path().display()),
    ]);
    let raw: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("JSON");
    let unpacked = tempfile::tempdir().expect("temp dir");
    unpack_layers(layout.path(), &raw, unpacked.path());
    assert_eq!(
        fs::read(unpacked.path().join("data/blob.bin")).expect("unpacked"),
        data
    );
}

#[test]
fn bad_settings_are_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = publish(
        dir.path(),
        json!({ "base": "scratch", "target": "127.0.0.1:1/app:v1" }),
    );
    match &report.result {
        Err(StepFailure::InvalidConfig { field, message }) => {
            assert_eq!(field.as_deref(), Some("target"));
            assert!(message.contains("put tags in `tags`"), "{message}");
        }
        other => panic!("expected invalid config, got {other:?}"),
    }
    let report = publish(
        dir.path(),
        json!({
            "base": "scratch",
            "target": "127.0.0.1:1/app",
            "layers": [{ "paths": ["../etc"] }],
        }),
    );
    match &report.result {
        Err(StepFailure::InvalidConfig { field, message }) => {
            assert_eq!(field.as_deref(), Some("layers[0].paths[0]"));
            assert!(message.contains("leaves the workspace"), "{message}");
        }
        other => panic!("expected invalid config, got {other:?}"),
    }
}
