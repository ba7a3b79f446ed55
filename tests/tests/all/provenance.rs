//! Build provenance end to end: a pipeline checks its source out of a real
//! repository (`git daemon` on 127.0.0.1), runs a shell step, and publishes
//! an image to a real registry (`docker-registry`); the engine signs an
//! in-toto statement for it, which the `image` biz pushes as an OCI referrer.
//! Read back from the registry's storage, the statement verifies with the
//! engine's public key and names the commit, the parameters and the biz
//! digest of every step that ran; altered, it does not verify.

use std::path::Path;
use std::time::Duration;

use arkline::ark::{Ark, SecretKey};
use arkline::host::Capabilities;
use arkline::model::{ExecutionPhase, PipelineSettingSpec, ProvenanceSettings};
use arkline::provenance::{self, Envelope};
use arkline::{Container, TriggerRequest};
use arkline_testkit::git::{Repo, git_daemon};
use arkline_testkit::registry::Registry;
use base64::Engine as _;
use serde_json::{Value, json};

/// The digest a tag of `repository` points at, from distribution's storage.
fn tag_digest(storage: &Path, repository: &str, tag: &str) -> Option<String> {
    let link = storage
        .join("docker/registry/v2/repositories")
        .join(repository)
        .join("_manifests/tags")
        .join(tag)
        .join("current/link");
    std::fs::read_to_string(link)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A blob (or manifest) by digest, from distribution's storage.
fn blob(storage: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let path = storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_image_carries_provenance_that_verifies_and_names_its_commit_and_bizes() {
    let registry = Registry::start();
    let root = tempfile::tempdir().expect("temp dir");
    let repo = Repo::new(root.path(), "shop");
    let commit = repo.commit(
        "the shop",
        &[
            ("app/web", "#!/bin/sh\necho web\n"),
            (
                "test.sh",
                "grep -q 'echo web' app/web && echo 'tests passed'\n",
            ),
            (
                "manifests/web.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n",
            ),
        ],
    );
    let port = git_daemon(&root.path().join("srv"));

    let data = tempfile::tempdir().expect("temp dir");
    let container = Container::builder()
        .data_dir(data.path())
        .build()
        .expect("container builds");
    let engine = container.engine("shop").await.expect("engine starts");
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
                host_call: vec![provenance::HOST_CALL.into()],
                ..Capabilities::default()
            },
        ),
        (
            "deploy",
            Capabilities {
                http: vec!["127.0.0.1".into()],
                host_call: vec![provenance::HOST_CALL.into()],
                ..Capabilities::default()
            },
        ),
    ];
    let mut digests = std::collections::BTreeMap::new();
    for (name, grant) in grants {
        let ark = Ark::open(arkline_testkit::plugin(name)).expect("the archive reads back");
        let info = engine.install(ark, &grant).await.expect("installs");
        digests.insert(name, info.sha256.clone());
    }
    let key = SecretKey::generate().expect("a key");
    let public = key.public_key();
    engine
        .set_secret("provenance_key", &key.to_hex())
        .await
        .expect("secret");
    engine
        .apply_settings(PipelineSettingSpec {
            provenance: Some(ProvenanceSettings {
                key_secret: "provenance_key".into(),
            }),
            ..PipelineSettingSpec::default()
        })
        .await
        .expect("settings apply");

    let host = registry.host();
    let yaml = format!(
        r#"
name: release
source: {{ repository: "git://127.0.0.1:{port}/shop.git" }}
params:
  - {{ name: tag, type: string, default: v1 }}
stages:
  - name: test
    steps:
      - name: test
        uses: shell
        with: {{ script: "sh test.sh" }}
  - name: publish
    steps:
      - name: image
        uses: image/publish
        with:
          base: scratch
          layers: [{{ paths: [web], working_dir: app, destination: /usr/local/bin }}]
          entrypoint: [/usr/local/bin/web]
          target: "{host}/shop/web"
          tags: ["${{{{ params.tag }}}}"]
          provenance: required
  - name: release
    steps:
      - name: template
        uses: deploy/publish-template
        with:
          path: manifests
          target: "{host}/shop/manifests"
          tags: ["${{{{ params.tag }}}}"]
          provenance: required
"#
    );
    let pipeline = engine
        .apply_pipeline_yaml("release.yaml", &yaml)
        .await
        .unwrap_or_else(|e| panic!("pipeline applies: {e}"));
    let exec = engine
        .trigger(
            &pipeline.metadata.name,
            TriggerRequest::manual().param("tag", json!("v7")),
        )
        .await
        .expect("trigger");
    let exec = tokio::time::timeout(Duration::from_secs(240), engine.wait(&exec.metadata.name))
        .await
        .expect("the execution finishes in time")
        .expect("wait");
    let mut logs = String::new();
    for step in ["test", "image", "template"] {
        for line in engine.logs(&exec.metadata.name, step).await.expect("log") {
            logs.push_str(&format!("{step}: {}\n", line.message));
        }
    }
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}\n{logs}",
        exec.status
    );
    let outputs = &exec.status.outputs["image"];
    let image_digest = outputs["digest"].clone();
    let referrer = outputs
        .get("provenance")
        .unwrap_or_else(|| panic!("a provenance output: {outputs:?}\n{logs}"));

    // The referrers tag schema (distribution 2.8 has no referrers API).
    let storage = registry.storage();
    let fallback = format!("sha256-{}", &image_digest["sha256:".len()..]);
    let index_digest =
        tag_digest(&storage, "shop/web", &fallback).expect("the referrers tag exists");
    let index: Value = serde_json::from_slice(&blob(&storage, &index_digest)).expect("json");
    let listed: Vec<&Value> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .filter(|m| m["artifactType"] == provenance::ARTIFACT_TYPE)
        .collect();
    assert_eq!(listed.len(), 1, "{index:#}");
    assert_eq!(&listed[0]["digest"], referrer.as_str());
    let manifest: Value = serde_json::from_slice(&blob(&storage, referrer)).expect("json");
    assert_eq!(manifest["subject"]["digest"], image_digest.as_str());
    let envelope_bytes = blob(
        &storage,
        manifest["layers"][0]["digest"].as_str().expect("a layer"),
    );
    let envelope: Envelope = serde_json::from_slice(&envelope_bytes).expect("an envelope");

    let statement = provenance::verify(&envelope, &public).expect("the statement verifies");
    assert_eq!(
        statement["subject"][0],
        json!({
            "name": format!("{host}/shop/web"),
            "digest": { "sha256": &image_digest["sha256:".len()..] },
        })
    );
    let build = &statement["predicate"]["buildDefinition"];
    assert_eq!(build["externalParameters"]["pipeline"], "release");
    assert_eq!(build["externalParameters"]["parameters"]["tag"], "v7");
    assert_eq!(build["externalParameters"]["source"]["commit"], commit);
    assert_eq!(build["internalParameters"]["execution"], exec.metadata.name);
    let dependencies = build["resolvedDependencies"].as_array().expect("a list");
    assert_eq!(dependencies[0]["digest"]["gitCommit"], commit);
    let by_step: std::collections::BTreeMap<&str, &str> = dependencies[1..]
        .iter()
        .map(|d| {
            (
                d["name"].as_str().expect("a step"),
                d["digest"]["sha256"].as_str().expect("a digest"),
            )
        })
        .collect();
    assert_eq!(
        by_step,
        [
            ("test", digests["shell"].as_str()),
            ("image", digests["image"].as_str()),
        ]
        .into()
    );

    // Altered (another commit claimed), the old signature no longer holds.
    let mut forged = statement.clone();
    forged["predicate"]["buildDefinition"]["externalParameters"]["source"]["commit"] =
        json!("0".repeat(40));
    let forged = Envelope {
        payload: base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&forged).expect("json")),
        ..envelope
    };
    let refused = provenance::verify(&forged, &public).expect_err("a forgery is refused");
    assert!(refused.to_string().contains("does not verify"), "{refused}");
    assert!(
        !logs.contains(&key.to_hex()),
        "the key is in no log:\n{logs}"
    );

    // The template too: its statement names it and the steps that ran
    // before it (the image step included), and verifies.
    let template = &exec.status.outputs["template"];
    let template_referrer = template
        .get("provenance")
        .unwrap_or_else(|| panic!("a provenance output: {template:?}"));
    let manifest: Value = serde_json::from_slice(&blob(&storage, template_referrer)).expect("json");
    let envelope: Envelope = serde_json::from_slice(&blob(
        &storage,
        manifest["layers"][0]["digest"].as_str().expect("a layer"),
    ))
    .expect("an envelope");
    let statement = provenance::verify(&envelope, &public).expect("the template's verifies");
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        template["digest"]["sha256:".len()..]
    );
    let steps: Vec<&str> = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(steps, ["test", "image", "template"]);
}
