//! The `image` biz's `publish`, `copy` and `inspect` steps against a real
//! registry on loopback (`docker-registry`, CNCF distribution 2.8), looked at
//! with `skopeo`: the config a client sees, the files and modes in the layers,
//! the same digest twice, basic auth, cross-repository mounts and chunked
//! uploads; copies that keep the digest (mounted in one registry, copied in
//! chunks across two, an index whole or one platform); what `inspect` reports.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use arkline_testkit::registry::{Registry, TokenService, skopeo};
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
    std::os::unix::fs::symlink("app", root.join("dist/bin/current")).expect("symlink");
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
        "lrwxrwxrwx 0/0 app/bin/current",
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

/// The biz granted `http` and the provenance host call.
fn provenance_harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        Harness::from_ark(arkline_testkit::plugin("image")).grant(Capabilities {
            http: vec!["127.0.0.1".into()],
            host_call: vec![arkline::provenance::HOST_CALL.into()],
            ..Capabilities::default()
        })
    })
}

/// `GET` of `path` from the registry; returns the answer's body.
fn raw_get(host: &str, path: &str, accept: &str) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the registry");
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "GET {path}: {}",
        String::from_utf8_lossy(&answer[..split])
    );
    answer[split + 4..].to_vec()
}

#[test]
fn publish_attaches_signed_provenance_as_a_referrer_once() {
    use arkline::provenance::{Envelope, Facts, Signer, verify};
    let registry = Registry::start();
    let host = registry.host();
    let workspace = app_workspace();
    let key = arkline::ark::SecretKey::generate().expect("a key");
    let public = key.public_key();
    let signer = std::sync::Arc::new(Signer::new(
        key,
        Facts {
            engine: "test".into(),
            pipeline: "release".into(),
            execution: "release-1".into(),
            run: 1,
            step: "publish".into(),
            ..Facts::default()
        },
    ));
    let config = |provenance: &str| {
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["static"], "destination": "/srv" }],
            "target": format!("{host}/team/signed"),
            "tags": ["1"],
            "provenance": provenance,
        })
    };
    let signed = || {
        let call = StepCall::new("publish", config("required"))
            .workspace(workspace.path())
            .timeout(Duration::from_secs(120))
            .provenance(signer.clone());
        outputs(&provenance_harness().call(call)).clone()
    };
    let manifest = |reference: &str, accept: &str| -> Value {
        serde_json::from_slice(&raw_get(
            &host,
            &format!("/v2/team/signed/manifests/{reference}"),
            accept,
        ))
        .expect("JSON")
    };
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

    let out = signed();
    let digest = out["digest"].clone();
    let hex = digest.strip_prefix("sha256:").expect("sha256");
    let referrer = out["provenance"].clone();
    let index = manifest(&format!("sha256-{hex}"), INDEX);
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(1),
        "{index}"
    );
    assert_eq!(index["manifests"][0]["digest"], referrer.as_str());
    assert_eq!(
        index["manifests"][0]["artifactType"],
        arkline::provenance::ARTIFACT_TYPE
    );
    let attestation = manifest(&referrer, MANIFEST);
    assert_eq!(attestation["subject"]["digest"], digest.as_str());
    assert_eq!(
        attestation["artifactType"],
        arkline::provenance::ARTIFACT_TYPE
    );
    let layer = attestation["layers"][0]["digest"]
        .as_str()
        .expect("a layer");
    let envelope: Envelope = serde_json::from_slice(&raw_get(
        &host,
        &format!("/v2/team/signed/blobs/{layer}"),
        "*/*",
    ))
    .expect("an envelope");
    let statement = verify(&envelope, &public).expect("verifies");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], hex);
    assert_eq!(
        statement["subject"][0]["name"],
        format!("{host}/team/signed")
    );

    // Again: the same statement, signed to the same bytes, listed once.
    assert_eq!(signed()["provenance"], referrer);
    let index = manifest(&format!("sha256-{hex}"), INDEX);
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(1),
        "{index}"
    );

    // Required without a signer fails clearly; auto without the grant goes on.
    let report = provenance_harness().call(
        StepCall::new("publish", config("required"))
            .workspace(workspace.path())
            .timeout(Duration::from_secs(120)),
    );
    let message = failure(&report);
    for part in [
        "provenance was not attached",
        "not configured",
        "provenance.key_secret",
    ] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
    let report = publish(workspace.path(), config("auto"));
    assert!(!outputs(&report).contains_key("provenance"));
    assert!(
        report.log.text().contains("provenance was not attached"),
        "{}",
        report.log.text()
    );
}

#[test]
fn a_layer_bigger_than_a_chunk_is_uploaded_in_chunks() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = noise(600_000, 0x9e37_79b9_7f4a_7c15);
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

/// Bytes gzip cannot shrink much (xorshift), so a layer of them stays big.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn a_base_in_another_registry_is_copied_in_ranges_and_chunks() {
    let source = Registry::start();
    let target = Registry::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = noise(700_000, 7);
    fs::write(dir.path().join("lib.bin"), &data).expect("write");
    let base = publish(
        dir.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["lib.bin"], "destination": "/usr/lib" }],
            "target": format!("{}/base", source.host()),
            "tags": ["1"],
            "chunk_size": 131072,
        }),
    );
    outputs(&base);

    let app = tempfile::tempdir().expect("temp dir");
    fs::write(app.path().join("app.txt"), b"app\n").expect("write");
    let report = publish(
        app.path(),
        json!({
            "base": format!("{}/base:1", source.host()),
            "layers": [{ "paths": ["app.txt"], "destination": "/app" }],
            "target": format!("{}/app", target.host()),
            "tags": ["1"],
            "chunk_size": 131072,
            "format": "docker",
        }),
    );
    outputs(&report);
    let ranged = source
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/sha256:") && r.status == 206)
        .count();
    assert!(ranged >= 5, "{ranged} ranged reads of the base layer");
    let target_requests = target.requests();
    assert!(
        target_requests
            .iter()
            .filter(|r| r.method == "PATCH")
            .count()
            >= 5,
        "{target_requests:#?}"
    );
    assert!(!target_requests.iter().any(|r| r.path.contains("mount=")));

    let reference = format!("docker://{}/app:1", target.host());
    let raw: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("JSON");
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for layer in raw["layers"].as_array().expect("layers") {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    let layout = tempfile::tempdir().expect("temp dir");
    run_ok(&[
        "copy",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:1", layout.path().display()),
    ]);
    // skopeo converts to OCI on the way into the layout: read its manifest.
    let unpacked = tempfile::tempdir().expect("temp dir");
    unpack_layers(
        layout.path(),
        &layout_manifest(layout.path()),
        unpacked.path(),
    );
    assert_eq!(
        fs::read(unpacked.path().join("usr/lib/lib.bin")).expect("unpacked"),
        data
    );
    assert_eq!(
        fs::read(unpacked.path().join("app/app.txt")).expect("unpacked"),
        b"app\n"
    );
}

/// The one image manifest of an OCI layout.
fn layout_manifest(layout: &Path) -> Value {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("index.json"))
            .expect("JSON");
    let descriptor = &index["manifests"][0];
    serde_json::from_slice(&fs::read(blob_path(layout, descriptor)).expect("manifest"))
        .expect("JSON")
}

/// Sends one HTTP/1.1 request to the registry and returns the status line.
fn raw_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the registry");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send");
    stream.write_all(body).expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn a_multi_platform_base_gives_the_platform_asked_for() {
    let registry = Registry::start();
    let mut platforms = Vec::new();
    for (platform, file) in [
        ("linux/amd64", "amd64.txt"),
        ("linux/arm64/v8", "arm64.txt"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join(file), platform).expect("write");
        let report = publish(
            dir.path(),
            json!({
                "base": "scratch",
                "layers": [{ "paths": [file], "destination": "/etc" }],
                "target": format!("{}/multi", registry.host()),
                "platform": platform,
            }),
        );
        let digest = outputs(&report)["digest"].clone();
        let raw = run_ok(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/multi@{digest}", registry.host()),
        ]);
        let mut parts = platform.split('/');
        let mut entry = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": raw.len(),
            "platform": { "os": parts.next(), "architecture": parts.next() },
        });
        if let Some(variant) = parts.next() {
            entry["platform"]["variant"] = json!(variant);
        }
        platforms.push(entry);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": platforms,
    }))
    .expect("JSON");
    let status = raw_request(
        &registry.host(),
        "PUT",
        "/v2/multi/manifests/latest",
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        &index,
    );
    assert!(status.contains(" 201 "), "{status}");

    let app = tempfile::tempdir().expect("temp dir");
    fs::write(app.path().join("app.txt"), b"app\n").expect("write");
    let config = |platform: &str| {
        json!({
            "base": format!("{}/multi:latest", registry.host()),
            "layers": [{ "paths": ["app.txt"] }],
            "target": format!("{}/app", registry.host()),
            "tags": ["arm"],
            "platform": platform,
        })
    };
    outputs(&publish(app.path(), config("linux/arm64")));
    let reference = format!("docker://{}/app:arm", registry.host());
    let image_config: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("JSON");
    assert_eq!(image_config["architecture"], "arm64");
    assert_eq!(image_config["variant"], "v8");
    let raw: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("JSON");
    let layout = tempfile::tempdir().expect("temp dir");
    run_ok(&[
        "copy",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:arm", layout.path().display()),
    ]);
    let listing = list_layers(layout.path(), &raw);
    assert!(
        listing.iter().any(|l| l.ends_with(" etc/arm64.txt")),
        "{listing:?}"
    );
    assert!(
        !listing.iter().any(|l| l.ends_with(" etc/amd64.txt")),
        "{listing:?}"
    );

    let message = failure(&publish(app.path(), config("linux/s390x")));
    assert!(
        message.contains("no image for linux/s390x") && message.contains("linux/amd64"),
        "{message}"
    );
}

/// A proxy in front of a registry that answers some requests itself with an
/// error status instead of forwarding them; records what it saw.
struct FaultyProxy {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, u16)>>>,
}

impl FaultyProxy {
    /// `fault(method, path, n)` — `n` counts earlier requests with the same
    /// method and path — returns the status and `Retry-After` to answer with,
    /// or `None` to forward.
    fn start(
        upstream: String,
        fault: impl Fn(&str, &str, usize) -> Option<(u16, &'static str)> + Send + Sync + 'static,
    ) -> FaultyProxy {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String, u16)>::new()));
        let record = seen.clone();
        let fault = std::sync::Arc::new(fault);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (record, fault, upstream) = (record.clone(), fault.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    let mut head = Vec::new();
                    let mut length = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_owned();
                    let path = parts.next().unwrap_or_default().to_owned();
                    head.extend_from_slice(line.as_bytes());
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header.trim().is_empty() {
                            break;
                        }
                        let lower = header.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if !lower.starts_with("connection:") {
                            head.extend_from_slice(header.as_bytes());
                        }
                    }
                    head.extend_from_slice(b"Connection: close\r\n\r\n");
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let earlier = record
                        .lock()
                        .expect("lock")
                        .iter()
                        .filter(|(m, p, _)| *m == method && *p == path)
                        .count();
                    let mut client = reader.into_inner();
                    if let Some((status, retry_after)) = fault(&method, &path, earlier) {
                        record.lock().expect("lock").push((method, path, status));
                        let body = br#"{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}"#;
                        let _ = write!(
                            client,
                            "HTTP/1.1 {status} Unavailable\r\nRetry-After: {retry_after}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = client.write_all(body);
                        return;
                    }
                    let Ok(mut server) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = server.write_all(&head);
                    let _ = server.write_all(&body);
                    let mut answer = Vec::new();
                    let _ = server.read_to_end(&mut answer);
                    let status = String::from_utf8_lossy(&answer)
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    record.lock().expect("lock").push((method, path, status));
                    let _ = client.write_all(&answer);
                });
            }
        });
        FaultyProxy { port, seen }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<(String, String, u16)> {
        self.seen.lock().expect("lock").clone()
    }
}

#[test]
fn answers_503_and_429_are_retried_honouring_retry_after() {
    let registry = Registry::start();
    let proxy = FaultyProxy::start(registry.host(), |method, path, earlier| {
        match (method, path) {
            // The manifest push: 503 twice, then the registry's 201.
            ("PUT", p) if p.contains("/manifests/") && earlier < 2 => Some((503, "1")),
            // The first upload start: 429.
            ("POST", p) if p.contains("/blobs/uploads/") && earlier == 0 => Some((429, "0")),
            _ => None,
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("a.txt"), b"a\n").expect("write");
    let report = publish(
        dir.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["a.txt"] }],
            "target": format!("{}/retried", proxy.host()),
            "tags": ["1"],
            "retries": 2,
        }),
    );
    let digest = outputs(&report)["digest"].clone();
    let puts: Vec<u16> = proxy
        .seen()
        .into_iter()
        .filter(|(m, p, _)| m == "PUT" && p.contains("/manifests/"))
        .map(|(_, _, status)| status)
        .collect();
    assert_eq!(puts, [503, 503, 201]);
    let log = report.log.text();
    assert!(
        log.contains("HTTP 503 (UNAVAILABLE: try later); retrying in 1s"),
        "{log}"
    );
    assert!(log.contains("HTTP 429"), "{log}");
    let inspect: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/retried:1", registry.host()),
    ]))
    .expect("JSON");
    assert_eq!(inspect["Digest"], digest.as_str());

    // Past its retries, the step fails naming the status and the code.
    let always = FaultyProxy::start(registry.host(), |method, path, _| {
        (method == "PUT" && path.contains("/manifests/")).then_some((503, "0"))
    });
    let report = publish(
        dir.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["a.txt"] }],
            "target": format!("{}/retried", always.host()),
            "tags": ["2"],
            "retries": 1,
        }),
    );
    let message = failure(&report);
    assert!(
        message.contains("push of manifest 2 failed with HTTP 503: UNAVAILABLE: try later"),
        "{message}"
    );
}

#[test]
fn bearer_tokens_come_from_the_registrys_token_service() {
    let tokens = TokenService::start("ci-robot", "s3cret");
    let registry = Registry::builder().token_auth(&tokens).start();
    let credential = json!({ "username": "ci-robot", "password": "s3cret" });
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("base.txt"), b"base\n").expect("write");
    let base = publish(
        dir.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["base.txt"] }],
            "target": format!("{}/base", registry.host()),
            "tags": ["1"],
            "credential": credential,
        }),
    );
    outputs(&base);
    let workspace = app_workspace();
    let report = publish(
        workspace.path(),
        json!({
            "base": format!("{}/base:1", registry.host()),
            "layers": [{ "paths": ["static"], "destination": "/srv" }],
            "target": format!("{}/team/app", registry.host()),
            "tags": ["1"],
            "credential": credential,
        }),
    );
    let digest = outputs(&report)["digest"].clone();
    let log = report.log.text();
    assert!(!log.contains("s3cret") && !log.contains("eyJ"), "{log}");

    // The token asked for covers the push and the mount's source.
    let asked = tokens.requests();
    assert!(
        asked.iter().any(|r| r.status == 200
            && r.username.as_deref() == Some("ci-robot")
            && r.service.as_deref() == Some("arkline-test-registry")
            && r.scopes
                .iter()
                .any(|s| s == "repository:team/app:pull,push")
            && r.scopes.iter().any(|s| s == "repository:base:pull")),
        "{asked:#?}"
    );
    assert!(
        registry
            .requests()
            .iter()
            .any(|r| r.path.contains("mount=") && r.status == 201),
        "the base layer was not mounted"
    );
    let inspect: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "ci-robot:s3cret",
        &format!("docker://{}/team/app:1", registry.host()),
    ]))
    .expect("JSON");
    assert_eq!(inspect["Digest"], digest.as_str());

    // A wrong password: the token service refuses, and the error says so.
    let report = publish(
        workspace.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["static"] }],
            "target": format!("{}/team/other", registry.host()),
            "tags": ["1"],
            "credential": { "username": "ci-robot", "password": "guess" },
        }),
    );
    let message = failure(&report);
    for part in [
        "repository team/other",
        "token request to 127.0.0.1:",
        "HTTP 401",
        "UNAUTHORIZED: wrong user name or password",
    ] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
    assert!(!message.contains("guess"));
    assert!(
        !registry
            .storage()
            .join("docker/registry/v2/repositories/team/other")
            .exists()
    );

    // No credential: an anonymous token grants nothing; the push is refused.
    let report = publish(
        workspace.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["static"] }],
            "target": format!("{}/team/other", registry.host()),
        }),
    );
    let message = failure(&report);
    assert!(message.contains("HTTP 401"), "{message}");
}

#[test]
fn a_50_mb_layer_is_uploaded_in_8_mib_chunks() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = noise(50 << 20, 50);
    fs::write(dir.path().join("model.bin"), &data).expect("write");
    let report = publish(
        dir.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["model.bin"], "destination": "/data" }],
            "target": format!("{}/big", registry.host()),
            "tags": ["50m"],
        }),
    );
    let digest = outputs(&report)["digest"].clone();
    let patches = registry
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.status == 202)
        .count();
    // 50 MiB of noise gzips to a bit more than 50 MiB: 7 chunks of 8 MiB.
    assert_eq!(patches, 7);
    let reference = format!("docker://{}/big:50m", registry.host());
    let inspect: Value =
        serde_json::from_slice(&run_ok(&["inspect", "--tls-verify=false", &reference]))
            .expect("JSON");
    assert_eq!(inspect["Digest"], digest.as_str());
    let raw: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("JSON");
    let size = raw["layers"][0]["size"].as_u64().expect("size");
    assert!(size > 50 << 20, "{size}");
}

/// In a pipeline on the embedded store: a `shell` step builds the files, the
/// `image` step publishes them with the registry password from a secret, a
/// later step reads the `image` output; no log holds the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_publishes_with_its_credential_from_a_secret() {
    use arkline::ark::Ark;
    use arkline::model::ExecutionPhase;
    use arkline::{Container, TriggerRequest};

    let registry = Registry::builder()
        .basic_auth("ci-robot", "pipeline-pa55")
        .start();
    let data = tempfile::tempdir().expect("temp dir");
    let container = Container::builder()
        .data_dir(data.path())
        .build()
        .expect("container builds");
    let engine = container.engine("release").await.expect("engine starts");
    let grants = [
        (
            "shell",
            Capabilities {
                process: vec!["sh".into()],
                ..Capabilities::default()
            },
        ),
        (
            "image",
            Capabilities {
                http: vec!["127.0.0.1".into()],
                ..Capabilities::default()
            },
        ),
    ];
    for (name, grant) in grants {
        let ark = Ark::open(arkline_testkit::plugin(name)).expect("the archive reads back");
        engine.install(ark, &grant).await.expect("installs");
    }
    engine
        .set_secret("registry_password", "pipeline-pa55")
        .await
        .expect("secret");
    let host = registry.host();
    let yaml = format!(
        r#"
name: release
secrets: [registry_password]
params:
  - name: version
    default: "1.2.3"
stages:
  - name: build
    steps:
      - name: build
        uses: shell
        with:
          script: |
            mkdir -p dist
            printf '#!/bin/sh\necho app\n' > dist/app
  - name: publish
    steps:
      - name: image
        uses: image/publish
        with:
          base: scratch
          layers: [{{ paths: [app], working_dir: dist, destination: /usr/local/bin }}]
          entrypoint: [/usr/local/bin/app]
          target: "{host}/team/app"
          tags: ["${{{{ params.version }}}}", latest]
          annotations: {{ org.opencontainers.image.version: "${{{{ params.version }}}}" }}
          credential:
            username: ci-robot
            password: "${{{{ secrets.registry_password }}}}"
  - name: announce
    steps:
      - name: announce
        uses: shell
        with:
          script: echo "published=${{{{ steps.image.outputs.image }}}}" >> "$ARKLINE_OUTPUT"
"#
    );
    let pipeline = engine
        .apply_pipeline_yaml("release.yaml", &yaml)
        .await
        .unwrap_or_else(|e| panic!("pipeline applies: {e}"));
    let exec = engine
        .trigger(&pipeline.metadata.name, TriggerRequest::manual())
        .await
        .expect("trigger");
    let exec = tokio::time::timeout(Duration::from_secs(180), engine.wait(&exec.metadata.name))
        .await
        .expect("the execution finishes in time")
        .expect("wait");
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );
    let image_outputs = &exec.status.outputs["image"];
    let digest = &image_outputs["digest"];
    assert_eq!(image_outputs["tags"], "1.2.3,latest");
    assert_eq!(
        exec.status.outputs["announce"]["published"],
        format!("{host}/team/app@{digest}")
    );
    let inspect = tokio::task::spawn_blocking(move || {
        run_ok(&[
            "inspect",
            "--tls-verify=false",
            "--creds",
            "ci-robot:pipeline-pa55",
            &format!("docker://{host}/team/app:1.2.3"),
        ])
    })
    .await
    .expect("skopeo runs");
    let inspect: Value = serde_json::from_slice(&inspect).expect("JSON");
    assert_eq!(inspect["Digest"], digest.as_str());
    for step in ["build", "image", "announce"] {
        let log = engine.logs(&exec.metadata.name, step).await.expect("log");
        assert!(
            log.iter().all(|l| !l.message.contains("pipeline-pa55")),
            "{step}: {log:#?}"
        );
    }
    container.shutdown().await;
}

#[test]
fn a_mount_the_registry_declines_falls_back_to_a_copy() {
    let registry = Registry::start();
    push_base(&registry, "base/runtime");
    // The proxy answers every mount with 202 (an upload opened instead), as
    // a registry does when it cannot mount from the source repository.
    let proxy = FaultyProxy::start(registry.host(), |method, path, _| {
        (method == "POST" && path.contains("mount=")).then_some((202, "0"))
    });
    let workspace = app_workspace();
    let report = publish(
        workspace.path(),
        json!({
            "base": format!("{}/base/runtime:1", proxy.host()),
            "layers": [{ "paths": ["static"], "destination": "/srv" }],
            "target": format!("{}/team/app", proxy.host()),
            "tags": ["1"],
        }),
    );
    outputs(&report);
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|(m, p, s)| m == "POST" && p.contains("mount=") && *s == 202),
        "{seen:#?}"
    );
    // The base layer was read from the base repository and uploaded.
    assert!(
        seen.iter().any(|(m, p, s)| m == "GET"
            && p.starts_with("/v2/base/runtime/blobs/sha256:")
            && *s == 200),
        "{seen:#?}"
    );
    let reference = format!("docker://{}/team/app:1", registry.host());
    let raw: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("JSON");
    let layout = tempfile::tempdir().expect("temp dir");
    run_ok(&[
        "copy",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:1", layout.path().display()),
    ]);
    let listing = list_layers(layout.path(), &raw);
    assert!(
        listing.iter().any(|l| l.ends_with(" etc/base-release")),
        "{listing:?}"
    );
}

/// Runs the `copy` or `inspect` step (no workspace: they read and push
/// registries only).
fn step(step_type: &str, config: Value) -> StepReport {
    harness().call(StepCall::new(step_type, config).timeout(Duration::from_secs(120)))
}

fn invalid_config(report: &StepReport) -> (Option<String>, String) {
    match &report.result {
        Err(StepFailure::InvalidConfig { field, message }) => (field.clone(), message.clone()),
        other => panic!(
            "expected invalid config, got {other:?}\n{}",
            report.log.text()
        ),
    }
}

/// The manifest (or index) `reference` points at, as the registry stores it,
/// and its digest as `skopeo manifest-digest` computes it.
fn raw_manifest(reference: &str, creds: Option<&str>) -> (Vec<u8>, String) {
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    if let Some(creds) = creds {
        args.extend(["--creds", creds]);
    }
    args.push(reference);
    let raw = run_ok(&args);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    fs::write(file.path(), &raw).expect("write");
    let path = file.path().to_string_lossy().into_owned();
    let digest = String::from_utf8(run_ok(&["manifest-digest", &path]))
        .expect("UTF-8")
        .trim()
        .to_owned();
    (raw, digest)
}

/// Pushes an OCI index of two platforms (`linux/amd64` and `linux/arm64/v8`,
/// one layer each, published from scratch) to `<registry>/<repository>:latest`;
/// returns the index's digest and the manifests' digests in that order.
fn push_index(registry: &Registry, repository: &str) -> (String, Vec<String>) {
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for (platform, file) in [
        ("linux/amd64", "amd64.txt"),
        ("linux/arm64/v8", "arm64.txt"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join(file), platform).expect("write");
        let report = publish(
            dir.path(),
            json!({
                "base": "scratch",
                "layers": [{ "paths": [file], "destination": "/etc" }],
                "target": format!("{}/{repository}", registry.host()),
                "platform": platform,
                "cmd": ["/bin/cat", format!("/etc/{file}")],
            }),
        );
        let digest = outputs(&report)["digest"].clone();
        let (raw, _) = raw_manifest(
            &format!("docker://{}/{repository}@{digest}", registry.host()),
            None,
        );
        let mut parts = platform.split('/');
        let mut entry = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": raw.len(),
            "platform": { "os": parts.next(), "architecture": parts.next() },
        });
        if let Some(variant) = parts.next() {
            entry["platform"]["variant"] = json!(variant);
        }
        entries.push(entry);
        digests.push(digest);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .expect("JSON");
    let status = raw_request(
        &registry.host(),
        "PUT",
        &format!("/v2/{repository}/manifests/latest"),
        &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
        &index,
    );
    assert!(status.contains(" 201 "), "{status}");
    let (_, digest) = raw_manifest(
        &format!("docker://{}/{repository}:latest", registry.host()),
        None,
    );
    (digest, digests)
}

#[test]
fn copy_within_one_registry_mounts_every_blob_and_keeps_the_digest() {
    let registry = Registry::start();
    let digest = push_base(&registry, "base/runtime");
    let before = registry.requests().len();

    let report = step(
        "copy",
        json!({
            "source": format!("{}/base/runtime:1", registry.host()),
            "target": format!("{}/mirror/runtime", registry.host()),
            "tags": ["stable", "1"],
        }),
    );
    let out = outputs(&report);
    assert_eq!(out["digest"], digest);
    assert_eq!(
        out["image"],
        format!("{}/mirror/runtime@{digest}", registry.host())
    );
    assert_eq!(out["tags"], "stable,1");

    // The layer and the config were mounted, not read and uploaded.
    let requests = &registry.requests()[before..];
    let mounts = requests
        .iter()
        .filter(|r| {
            r.method == "POST"
                && r.path
                    .starts_with("/v2/mirror/runtime/blobs/uploads/?mount=sha256:")
                && r.path.ends_with("&from=base/runtime")
                && r.status == 201
        })
        .count();
    assert_eq!(mounts, 2, "{requests:#?}");
    assert!(
        !requests.iter().any(|r| r.method == "PATCH"
            || (r.method == "PUT" && r.path.contains("/blobs/"))
            || (r.method == "GET" && r.path.contains("/blobs/"))),
        "a blob was read or uploaded: {requests:#?}"
    );

    let inspect: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/mirror/runtime:stable", registry.host()),
    ]))
    .expect("JSON");
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Labels"]["layer"], "base");
    let (source, _) = raw_manifest(
        &format!("docker://{}/base/runtime:1", registry.host()),
        None,
    );
    let (copied, copied_digest) = raw_manifest(
        &format!("docker://{}/mirror/runtime:1", registry.host()),
        None,
    );
    assert_eq!(copied, source, "the manifest was not copied byte for byte");
    assert_eq!(copied_digest, digest);

    // Again, by digest and with no tags: everything is there already.
    let before = registry.requests().len();
    let report = step(
        "copy",
        json!({
            "source": format!("{}/base/runtime@{digest}", registry.host()),
            "target": format!("{}/mirror/runtime", registry.host()),
        }),
    );
    assert_eq!(outputs(&report)["tags"], "");
    let again = &registry.requests()[before..];
    assert!(
        !again.iter().any(|r| r.method == "POST"),
        "a blob was pushed again: {again:#?}"
    );
    assert!(
        again.iter().any(
            |r| r.method == "PUT" && r.path == format!("/v2/mirror/runtime/manifests/{digest}")
        ),
        "{again:#?}"
    );
}

#[test]
fn copy_across_registries_needs_the_targets_credential_and_copies_in_chunks() {
    let source = Registry::start();
    let target = Registry::builder()
        .basic_auth("mirror-bot", "right pass")
        .start();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = noise(400_000, 11);
    fs::write(dir.path().join("lib.bin"), &data).expect("write");
    let digest = outputs(&publish(
        dir.path(),
        json!({
            "base": "scratch",
            "layers": [{ "paths": ["lib.bin"], "destination": "/usr/lib" }],
            "target": format!("{}/base", source.host()),
            "tags": ["1"],
        }),
    ))["digest"]
        .clone();
    let config = |password: &str| {
        json!({
            "source": format!("{}/base:1", source.host()),
            "target": format!("{}/mirror/base", target.host()),
            "tags": ["1"],
            "credential": { "username": "mirror-bot", "password": password },
            "chunk_size": 131072,
        })
    };

    // A wrong credential: a clear error, and nothing pushed (nor read).
    let source_before = source.requests().len();
    let report = step("copy", config("wrong pass"));
    let message = failure(&report);
    for part in [
        target.host().as_str(),
        "mirror/base",
        "HTTP 401",
        "UNAUTHORIZED",
        "check the credential",
    ] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
    assert!(!message.contains("wrong pass") && !report.log.text().contains("wrong pass"));
    assert!(target.is_empty(), "a wrong credential pushed something");
    assert_eq!(source.requests().len(), source_before);

    let report = step("copy", config("right pass"));
    let out = outputs(&report);
    assert_eq!(out["digest"], digest);
    assert_eq!(
        out["image"],
        format!("{}/mirror/base@{digest}", target.host())
    );
    assert!(!report.log.text().contains("right pass"));
    // The layer was read in ranges and uploaded in chunks, not mounted.
    let ranged = source
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/v2/base/blobs/") && r.status == 206)
        .count();
    assert!(ranged >= 3, "{ranged} ranged reads");
    let target_requests = target.requests();
    assert!(
        target_requests
            .iter()
            .filter(|r| r.method == "PATCH" && r.status == 202)
            .count()
            >= 3,
        "{target_requests:#?}"
    );
    assert!(!target_requests.iter().any(|r| r.path.contains("mount=")));

    let reference = format!("docker://{}/mirror/base:1", target.host());
    let inspect: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "mirror-bot:right pass",
        &reference,
    ]))
    .expect("JSON");
    assert_eq!(inspect["Digest"], digest.as_str());
    let layout = tempfile::tempdir().expect("temp dir");
    run_ok(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        "mirror-bot:right pass",
        &reference,
        &format!("oci:{}:1", layout.path().display()),
    ]);
    let unpacked = tempfile::tempdir().expect("temp dir");
    unpack_layers(
        layout.path(),
        &layout_manifest(layout.path()),
        unpacked.path(),
    );
    assert_eq!(
        fs::read(unpacked.path().join("usr/lib/lib.bin")).expect("unpacked"),
        data
    );
}

#[test]
fn copy_of_an_index_takes_every_platform_or_the_one_asked_for() {
    let source = Registry::start();
    let target = Registry::start();
    let (index, manifests) = push_index(&source, "multi");

    // Whole: the index and both platforms' images, by digest.
    let report = step(
        "copy",
        json!({
            "source": format!("{}/multi:latest", source.host()),
            "target": format!("{}/all", target.host()),
            "tags": ["latest"],
        }),
    );
    assert_eq!(outputs(&report)["digest"], index);
    let (copied, digest) = raw_manifest(&format!("docker://{}/all:latest", target.host()), None);
    assert_eq!(digest, index);
    let (original, _) = raw_manifest(&format!("docker://{}/multi:latest", source.host()), None);
    assert_eq!(copied, original);
    for (manifest, arch) in manifests.iter().zip(["amd64", "arm64"]) {
        let config: Value = serde_json::from_slice(&run_ok(&[
            "inspect",
            "--config",
            "--tls-verify=false",
            &format!("docker://{}/all@{manifest}", target.host()),
        ]))
        .expect("JSON");
        assert_eq!(config["architecture"], arch);
    }

    // One platform: its manifest alone, under the tag.
    let report = step(
        "copy",
        json!({
            "source": format!("{}/multi:latest", source.host()),
            "target": format!("{}/arm", target.host()),
            "tags": ["1"],
            "platform": "linux/arm64",
        }),
    );
    assert_eq!(outputs(&report)["digest"], manifests[1]);
    let reference = format!("docker://{}/arm:1", target.host());
    let (raw, digest) = raw_manifest(&reference, None);
    assert_eq!(digest, manifests[1]);
    let raw: Value = serde_json::from_slice(&raw).expect("JSON");
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("JSON");
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["variant"], "v8");
    let other = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/arm@{}", target.host(), manifests[0]),
    ]);
    assert!(!other.status.success(), "the amd64 image was copied too");

    let message = failure(&step(
        "copy",
        json!({
            "source": format!("{}/multi:latest", source.host()),
            "target": format!("{}/none", target.host()),
            "platform": "linux/s390x",
        }),
    ));
    assert!(
        message.contains("no image for linux/s390x")
            && message.contains("linux/amd64, linux/arm64/v8"),
        "{message}"
    );
}

#[test]
fn inspect_reads_an_image_and_an_index() {
    let registry = Registry::start();
    let digest = push_base(&registry, "base/runtime");
    let reference = format!("{}/base/runtime:1", registry.host());
    let report = step("inspect", json!({ "reference": reference }));
    let out = outputs(&report);
    let (raw, _) = raw_manifest(&format!("docker://{reference}"), None);
    let raw: Value = serde_json::from_slice(&raw).expect("JSON");
    let size = raw["config"]["size"].as_u64().expect("size")
        + raw["layers"][0]["size"].as_u64().expect("size");
    assert_eq!(out["digest"], digest);
    assert_eq!(
        out["media_type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(out["size"], size.to_string());
    assert_eq!(out["platforms"], "linux/amd64");
    assert_eq!(out["index_digest"], "");
    assert_eq!(
        out["config_digest"],
        raw["config"]["digest"].as_str().expect("digest")
    );
    assert_eq!(out["created"], "1970-01-01T00:00:00Z");
    assert_eq!(out["entrypoint"], "");
    assert_eq!(out["cmd"], r#"["/bin/sh"]"#);
    assert_eq!(out["env"], "BASE,PATH");
    assert_eq!(out["labels"], r#"{"layer":"base"}"#);
    assert_eq!(out["layers"], "1");
    assert_eq!(out["workdir"], "");

    let (index, manifests) = push_index(&registry, "multi");
    let reference = format!("{}/multi:latest", registry.host());
    let out = outputs(&step("inspect", json!({ "reference": reference }))).clone();
    let (raw, _) = raw_manifest(&format!("docker://{reference}"), None);
    assert_eq!(out["digest"], index);
    assert_eq!(out["media_type"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(out["size"], raw.len().to_string());
    assert_eq!(out["platforms"], "linux/amd64,linux/arm64/v8");
    assert_eq!(out["layers"], "");
    assert_eq!(out["cmd"], "");

    let out = outputs(&step(
        "inspect",
        json!({ "reference": reference, "platform": "linux/arm64/v8" }),
    ))
    .clone();
    assert_eq!(out["digest"], manifests[1]);
    assert_eq!(out["index_digest"], index);
    assert_eq!(out["platforms"], "linux/arm64/v8");
    assert_eq!(out["cmd"], r#"["/bin/cat","/etc/arm64.txt"]"#);
    assert_eq!(out["layers"], "1");
}

#[test]
fn a_bad_or_missing_reference_fails_naming_it() {
    let (field, message) = invalid_config(&step(
        "inspect",
        json!({ "reference": "127.0.0.1:1/Team/App:1" }),
    ));
    assert_eq!(field.as_deref(), Some("reference"));
    assert!(message.contains("127.0.0.1:1/Team/App:1"), "{message}");
    assert!(message.contains("not a valid repository name"), "{message}");
    let (field, message) = invalid_config(&step(
        "copy",
        json!({ "source": "127.0.0.1:1/app:v1:v2", "target": "127.0.0.1:1/copy" }),
    ));
    assert_eq!(field.as_deref(), Some("source"));
    assert!(message.contains("v1:v2"), "{message}");
    let (field, _) = invalid_config(&step(
        "copy",
        json!({ "source": "127.0.0.1:1/app:1", "target": "127.0.0.1:1/copy:2" }),
    ));
    assert_eq!(field.as_deref(), Some("target"));

    // Well formed but not in the registry: the error names the image, the
    // registry's status and code.
    let registry = Registry::start();
    let reference = format!("{}/team/nothing:here", registry.host());
    let message = failure(&step("inspect", json!({ "reference": reference })));
    for part in [
        format!("the image {reference}"),
        "HTTP 404".to_owned(),
        "MANIFEST_UNKNOWN".to_owned(),
    ] {
        assert!(message.contains(&part), "`{part}` not in: {message}");
    }
    let message = failure(&step(
        "copy",
        json!({ "source": reference, "target": format!("{}/copy", registry.host()) }),
    ));
    assert!(
        message.contains(&format!("the source {reference}")) && message.contains("HTTP 404"),
        "{message}"
    );
}

// `image/build`: a Dockerfile built by a granted buildah, pushed by the
// plugin's own client.

/// Fails (never skips) when buildah is missing: `.ci/deps.sh --test`
/// installs it.
fn require_buildah() {
    let works = Command::new("buildah")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "the image/build tests need buildah on PATH: run `.ci/deps.sh --test` (Debian: apt-get install buildah)"
    );
}

/// The `image` biz granted `grants`, in a runtime whose process sandbox is
/// on or off. Inside the sandbox buildah runs only with the builder grant
/// (`process_builder`), where it is root of its own user namespace; most
/// build tests run with the sandbox off, and two with it on.
async fn image_biz(
    grants: Capabilities,
    sandbox: bool,
) -> (arkline::runtime::BizRegistry, arkline::runtime::BizLease) {
    use arkline::ark::Ark;
    use arkline::runtime::{Activation, BizRegistry, Runtime, RuntimeConfig};
    let ark = Ark::open(arkline_testkit::plugin("image")).expect("image archive");
    let mut config = RuntimeConfig::default().max_instances(4);
    if !sandbox {
        config.process_limits.sandbox = false;
        config.process_limits.landlock = false;
    }
    let registry = BizRegistry::new(Runtime::new(config).expect("runtime"), "images");
    registry
        .install(std::sync::Arc::new(ark), &grants, Activation::IfNone)
        .await
        .expect("installs");
    let lease = registry.resolve("image").expect("resolves");
    (registry, lease)
}

fn buildah_grants() -> Capabilities {
    Capabilities {
        http: vec!["127.0.0.1".into()],
        process: vec!["buildah".into()],
        ..Capabilities::default()
    }
}

/// A workspace with a Dockerfile: `FROM scratch`, an `ARG`, two `COPY`s of
/// workspace files and a `LABEL`.
fn dockerfile_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    fs::create_dir_all(root.join("app")).expect("mkdir");
    fs::write(root.join("app/hello.txt"), b"hello from buildah\n").expect("write");
    fs::write(root.join("app/run.sh"), b"#!/bin/sh\necho run\n").expect("write");
    fs::write(
        root.join("Dockerfile"),
        "FROM scratch\n\
         ARG VERSION=0\n\
         COPY app/hello.txt /srv/hello.txt\n\
         COPY app/run.sh /usr/local/bin/run.sh\n\
         LABEL org.example.version=$VERSION org.example.kind=dockerfile\n",
    )
    .expect("write");
    dir
}

fn build_call(workspace: &Path, config: Value) -> StepCall {
    StepCall::new("build", config)
        .workspace(workspace)
        .timeout(Duration::from_secs(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_pushes_a_dockerfile_image_that_skopeo_reads_back() {
    require_buildah();
    let registry = Registry::start();
    let (_bizes, lease) = image_biz(buildah_grants(), false).await;
    let workspace = dockerfile_workspace();
    let report = lease
        .invoke(build_call(
            workspace.path(),
            json!({
                "build_args": { "VERSION": "1.2" },
                "labels": { "org.opencontainers.image.title": "hello" },
                "target": format!("{}/team/built", registry.host()),
                "tags": ["v1", "latest"],
                // The config (about 1 KiB) goes up in chunks, the smallest layer whole.
                "chunk_size": 128,
            }),
        ))
        .await;
    let out = outputs(&report).clone();
    let digest = out["digest"].clone();
    assert!(digest.starts_with("sha256:"), "{out:?}");
    assert_eq!(
        out["image"],
        format!("{}/team/built@{digest}", registry.host())
    );
    assert_eq!(out["tags"], "v1,latest");

    // Both tags name the image; the Dockerfile's labels (with the build
    // argument) and the step's label are in its config; one layer per COPY.
    let reference = format!("docker://{}/team/built:v1", registry.host());
    let inspect: Value =
        serde_json::from_slice(&run_ok(&["inspect", "--tls-verify=false", &reference]))
            .expect("skopeo inspect prints JSON");
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Labels"]["org.example.version"], "1.2");
    assert_eq!(inspect["Labels"]["org.example.kind"], "dockerfile");
    assert_eq!(inspect["Labels"]["org.opencontainers.image.title"], "hello");
    assert_eq!(
        inspect["Layers"].as_array().map(Vec::len),
        Some(2),
        "{inspect}"
    );
    let latest = format!("docker://{}/team/built:latest", registry.host());
    let again: Value = serde_json::from_slice(&run_ok(&["inspect", "--tls-verify=false", &latest]))
        .expect("skopeo inspect prints JSON");
    assert_eq!(again["Digest"], digest.as_str());

    // The layers hold the two workspace files.
    let layout = tempfile::tempdir().expect("temp dir");
    let oci = format!("oci:{}:v1", layout.path().display());
    run_ok(&["copy", "--src-tls-verify=false", &reference, &oci]);
    let raw: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &reference,
    ]))
    .expect("the manifest is JSON");
    let listing = list_layers(layout.path(), &raw);
    assert!(
        listing.iter().any(|l| l.ends_with("srv/hello.txt")),
        "{listing:?}"
    );
    assert!(
        listing.iter().any(|l| l.ends_with("usr/local/bin/run.sh")),
        "{listing:?}"
    );
    let unpacked = tempfile::tempdir().expect("temp dir");
    unpack_layers(layout.path(), &raw, unpacked.path());
    assert_eq!(
        fs::read(unpacked.path().join("srv/hello.txt")).expect("hello.txt in the image"),
        b"hello from buildah\n"
    );
    assert_eq!(
        fs::read(unpacked.path().join("usr/local/bin/run.sh")).expect("run.sh in the image"),
        b"#!/bin/sh\necho run\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_without_the_buildah_grant_fails_naming_the_grant() {
    let registry = Registry::start();
    let grants = Capabilities {
        http: vec!["127.0.0.1".into()],
        ..Capabilities::default()
    };
    let (_bizes, lease) = image_biz(grants, false).await;
    let workspace = dockerfile_workspace();
    let report = lease
        .invoke(build_call(
            workspace.path(),
            json!({ "target": format!("{}/team/built", registry.host()), "tags": ["v1"] }),
        ))
        .await;
    let message = failure(&report);
    assert!(
        message.contains("`process` capability") && message.contains("process=buildah"),
        "{message}"
    );
    // Nothing was pushed.
    let reference = format!("docker://{}/team/built:v1", registry.host());
    assert!(
        !skopeo(&["inspect", "--tls-verify=false", &reference])
            .status
            .success()
    );
}

/// Inside arkline's process sandbox buildah cannot start unless the engine
/// grants it the builder mode: the step says why and names the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_in_the_process_sandbox_without_the_builder_grant_fails_naming_it() {
    require_buildah();
    let registry = Registry::start();
    let (_bizes, lease) = image_biz(buildah_grants(), true).await;
    let workspace = dockerfile_workspace();
    let report = lease
        .invoke(build_call(
            workspace.path(),
            json!({ "target": format!("{}/team/built", registry.host()), "tags": ["v1"] }),
        ))
        .await;
    let message = failure(&report);
    assert!(
        message.contains("buildah failed in the build")
            && message.contains("process sandbox")
            && message.contains("process-builder=buildah"),
        "{message}"
    );
}

/// With `process-builder=buildah`, buildah runs inside the process sandbox
/// as root of its own user namespace: a Dockerfile on a base (a `/bin/sh`
/// and its libraries published by `image/publish`) pulled from a plain-HTTP
/// registry with basic auth (`base_credentials`), whose `RUN` writes a file
/// as the image's root, pushed and read back with skopeo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_in_the_process_sandbox_with_the_builder_grant_runs_a_dockerfile() {
    require_buildah();
    const PASSWORD: &str = "b4se-pa55";
    let registry = Registry::builder().basic_auth("ci", PASSWORD).start();
    let creds = format!("ci:{PASSWORD}");
    let credential = json!({ "username": "ci", "password": PASSWORD });
    let grants = Capabilities {
        process_builder: vec!["buildah".into()],
        // buildah pulls the base from the registry on loopback.
        process_net: true,
        ..buildah_grants()
    };
    let (_bizes, lease) = image_biz(grants, true).await;
    let workspace = tempfile::tempdir().expect("temp dir");
    let root = workspace.path();
    // /proc/self belongs to the effective uid.
    let host_root = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self").expect("/proc/self").uid() == 0
    };
    // A base with a shell: the host's `/bin/sh` and what it loads.
    for file in [
        "bin/sh",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        let to = root.join("rootfs").join(file);
        fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
        fs::copy(Path::new("/").join(file), &to).expect("copy from the host");
    }
    let base = lease
        .invoke(
            StepCall::new(
                "publish",
                json!({
                    "base": "scratch",
                    "layers": [{ "paths": ["bin", "lib", "lib64"], "working_dir": "rootfs", "destination": "/" }],
                    "target": format!("{}/team/base", registry.host()),
                    "tags": ["v1"],
                    "credential": credential,
                }),
            )
            .workspace(root)
            .timeout(Duration::from_secs(120)),
        )
        .await;
    outputs(&base);
    fs::write(root.join("hello.txt"), b"hello from a sandboxed buildah\n").expect("write");
    fs::write(
        root.join("Dockerfile"),
        format!(
            "FROM {}/team/base:v1\n\
             COPY hello.txt /srv/hello.txt\n\
             RUN echo \"built by $0\" > /srv/built.txt\n",
            registry.host()
        ),
    )
    .expect("write");
    let report = lease
        .invoke(build_call(
            root,
            json!({
                "target": format!("{}/team/built", registry.host()),
                "tags": ["v1"],
                "credential": credential,
                "base_credentials": { registry.host(): credential },
            }),
        ))
        .await;
    if !host_root {
        let message = failure(&report);
        assert!(message.contains("only a host running as root"), "{message}");
        eprintln!("not running as root: builder mode is exercised in CI (root)");
        return;
    }
    let out = outputs(&report).clone();
    assert!(
        !report.log.text().contains(PASSWORD),
        "the password is in no log"
    );
    let reference = format!("docker://{}/team/built:v1", registry.host());
    let layout = tempfile::tempdir().expect("temp dir");
    run_ok(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &reference,
        &format!("oci:{}:v1", layout.path().display()),
    ]);
    let raw: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &reference,
    ]))
    .expect("the manifest is JSON");
    let unpacked = tempfile::tempdir().expect("temp dir");
    unpack_layers(layout.path(), &raw, unpacked.path());
    assert_eq!(
        fs::read(unpacked.path().join("srv/hello.txt")).expect("hello.txt in the image"),
        b"hello from a sandboxed buildah\n"
    );
    assert!(
        unpacked.path().join("bin/sh").exists(),
        "the base's layer is in the image"
    );
    assert_eq!(
        fs::read_to_string(unpacked.path().join("srv/built.txt")).expect("the RUN's file"),
        "built by /bin/sh\n",
        "{out:?}"
    );
}

// Who pushed: every request names the step's engine, pipeline, run and step
// in its `User-Agent`, which a registry's access log and notifications
// (`request.useragent`) carry, so a webhook handler can tell its own pushes.

/// The user agents of the requests the registry answered, from its access
/// log (distribution's combined format: the user agent is the last quoted
/// field). testkit's `LoggedRequest` has no user agent field, so the log is
/// read here.
fn user_agents(registry: &Registry) -> Vec<(String, String)> {
    let dir = registry.storage();
    let log = fs::read_to_string(dir.parent().expect("the registry's dir").join("access.log"))
        .expect("the registry's access log");
    log.lines()
        .filter_map(|line| {
            let request = line.split('"').nth(1)?.to_owned();
            let agent = line.trim_end().strip_suffix('"')?.rsplit_once('"')?.1;
            Some((request, agent.to_owned()))
        })
        .collect()
}

fn pipeline_context(step_name: &str) -> arkline::runtime::CallContext {
    arkline::runtime::CallContext {
        pipeline: "release".into(),
        run: 42,
        stage: "ship".into(),
        step_name: step_name.into(),
        attempt: 1,
        env: Vec::new(),
    }
}

#[test]
fn publish_requests_name_the_pipeline_in_their_user_agent() {
    let registry = Registry::start();
    let workspace = app_workspace();
    let report = harness().call(
        StepCall::new(
            "publish",
            json!({
                "base": "scratch",
                "layers": [{ "paths": ["static"] }],
                "target": format!("{}/team/app", registry.host()),
                "tags": ["v1"],
            }),
        )
        .workspace(workspace.path())
        .context(pipeline_context("push image"))
        .timeout(Duration::from_secs(120)),
    );
    outputs(&report);
    let agents = user_agents(&registry);
    assert!(
        agents
            .iter()
            .any(|(r, _)| r.starts_with("PUT /v2/team/app/manifests/v1 ")),
        "{agents:?}"
    );
    let prefix = format!("arkline-image/{} (engine=", env!("CARGO_PKG_VERSION"));
    // testkit's readiness probe (an HTTP/1.0 `GET /v2/` with no user agent)
    // is in the log too.
    for (request, agent) in agents.iter().filter(|(r, _)| !r.ends_with("HTTP/1.0")) {
        assert!(
            agent.starts_with(&prefix)
                && agent.ends_with("; pipeline=release; run=42; step=push_image)"),
            "{request}: {agent}"
        );
    }
}

/// What the builds of a workspace left in `.arkline/buildah/builds`: nothing,
/// once every build ended.
fn leftover_builds(workspace: &Path) -> Vec<String> {
    fs::read_dir(workspace.join(".arkline/buildah/builds"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The files of the image `reference` (`host/repo:tag`), unpacked into a
/// temporary directory.
fn unpacked_image(reference: &str) -> tempfile::TempDir {
    let source = format!("docker://{reference}");
    let layout = tempfile::tempdir().expect("temp dir");
    let oci = format!("oci:{}:img", layout.path().display());
    run_ok(&["copy", "--src-tls-verify=false", &source, &oci]);
    let raw: Value = serde_json::from_slice(&run_ok(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &source,
    ]))
    .expect("the manifest is JSON");
    let unpacked = tempfile::tempdir().expect("temp dir");
    unpack_layers(layout.path(), &raw, unpacked.path());
    unpacked
}

/// `COPY . /ctx/` of the workspace root copies the workspace, not buildah's
/// storage under `.arkline`, and honours the context's `.dockerignore`; the
/// build's own directory is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_context_leaves_out_arkline_and_keeps_the_dockerignore() {
    require_buildah();
    let registry = Registry::start();
    let (_bizes, lease) = image_biz(buildah_grants(), false).await;
    let workspace = dockerfile_workspace();
    let root = workspace.path();
    fs::write(root.join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n").expect("write");
    fs::write(root.join("secret.txt"), b"not for the image\n").expect("write");
    fs::write(root.join(".dockerignore"), "secret.txt\n").expect("write");
    // State an earlier step left in the workspace.
    fs::create_dir_all(root.join(".arkline/cache")).expect("mkdir");
    fs::write(root.join(".arkline/cache/entry"), b"cached\n").expect("write");
    let report = lease
        .invoke(build_call(
            root,
            json!({ "target": format!("{}/team/ctx", registry.host()), "tags": ["v1"] }),
        ))
        .await;
    outputs(&report);
    let image = unpacked_image(&format!("{}/team/ctx:v1", registry.host()));
    let ctx = image.path().join("ctx");
    assert_eq!(
        fs::read(ctx.join("app/hello.txt")).expect("the context is in the image"),
        b"hello from buildah\n"
    );
    assert!(ctx.join("Dockerfile").exists());
    assert!(
        !ctx.join(".arkline").exists(),
        "the workspace's .arkline is in the image"
    );
    assert!(
        !ctx.join("secret.txt").exists(),
        "the .dockerignore was not honoured"
    );
    assert_eq!(leftover_builds(root), Vec::<String>::new());
}

/// Four builds at once in one workspace (steps of one stage) each push their
/// own image, and each registry's log names the step that pushed. (Before
/// each build had its own layout and no shared image name, one build could
/// push another's image; that depends on timing, so four builds race.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_builds_in_one_workspace_push_their_own_images() {
    require_buildah();
    let registry = Registry::start();
    let (_bizes, lease) = image_biz(buildah_grants(), false).await;
    let workspace = dockerfile_workspace();
    let root = workspace.path();
    let names = ["a", "b", "c", "d"];
    for name in names {
        fs::write(root.join(format!("{name}.txt")), format!("image {name}\n")).expect("write");
        fs::write(
            root.join(format!("{name}.Dockerfile")),
            format!("FROM scratch\nCOPY {name}.txt /which.txt\n"),
        )
        .expect("write");
    }
    let call = |name: &str| {
        build_call(
            root,
            json!({
                "file": format!("{name}.Dockerfile"),
                "target": format!("{}/team/{name}", registry.host()),
                "tags": ["v1"],
            }),
        )
        .context(pipeline_context(&format!("build {name}")))
    };
    let (a, b, c, d) = tokio::join!(
        lease.invoke(call("a")),
        lease.invoke(call("b")),
        lease.invoke(call("c")),
        lease.invoke(call("d"))
    );
    for (name, report) in names.into_iter().zip([&a, &b, &c, &d]) {
        outputs(report);
        let image = unpacked_image(&format!("{}/team/{name}:v1", registry.host()));
        assert_eq!(
            fs::read_to_string(image.path().join("which.txt")).expect("which.txt"),
            format!("image {name}\n"),
            "team/{name} holds another build's image"
        );
    }
    assert_eq!(leftover_builds(root), Vec::<String>::new());
    let agents = user_agents(&registry);
    for name in names {
        let manifest = format!("PUT /v2/team/{name}/manifests/v1 ");
        let (_, agent) = agents
            .iter()
            .find(|(r, _)| r.starts_with(&manifest))
            .unwrap_or_else(|| panic!("no {manifest} in {agents:?}"));
        assert!(
            agent.ends_with(&format!("; pipeline=release; run=42; step=build_{name})")),
            "{agent}"
        );
    }
}
