//! Image pushes start pipelines (`POST /registry-hooks/{engine}`, issue 24
//! item 7): the serve router on loopback over a real container (redb data
//! dir) with the real `faults` biz; distribution's envelopes and Harbor's
//! webhook posted as the senders post them, and a real `docker-registry`
//! notifying the server of a push made with `skopeo copy`.

use std::time::Duration;

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::{
    ExecutionPhase, ImagePush, PipelineExecution, PipelineSettingSpec, RegistryNotifications,
    TriggerKind,
};
use arkline::{Container, Engine};
use arkline_cli::serve::{AppState, router};
use arkline_testkit::registry::{Registry, skopeo};
use serde_json::{Value, json};
use sha2::Digest as _;

const TOKEN: &str = "n0tify-t0ken";
const LIMIT: Duration = Duration::from_secs(120);

/// `deploy` runs for `v*` tags of any `team/` repository (not `-rc`);
/// `mirror` for every push of `team/app` and outputs the digest it was
/// given, so it is the pipeline that "published" that digest.
const DEPLOY: &str = r#"
name: deploy
triggers:
  - type: image_push
    repository: "team/*"
    tags: { include: ["v*"], exclude: ["*-rc*"] }
stages:
  - name: s
    steps:
      - { name: show, uses: faults/echo, with: { data: "${{ trigger.image }}|${{ trigger.digest }}|${{ trigger.tag }}|${{ event }}" } }
"#;
const MIRROR: &str = r#"
name: mirror
triggers:
  - { type: image_push, repository: team/app }
stages:
  - name: s
    steps:
      - { name: copy, uses: faults/echo, with: { data: "${{ trigger.digest }}" } }
"#;

struct Served {
    engine: Engine,
    base: String,
    http: reqwest::Client,
    _container: Container,
    _data: tempfile::TempDir,
}

impl Served {
    async fn start() -> Served {
        let data = tempfile::tempdir().expect("tempdir");
        let container = Container::builder()
            .data_dir(data.path())
            .build()
            .expect("container builds");
        let engine = container.engine("rel").await.expect("engine starts");
        let faults = Ark::open(arkline_testkit::plugin("faults")).expect("faults archive");
        engine
            .install(faults, &Capabilities::default())
            .await
            .expect("faults installs");
        for yaml in [DEPLOY, MIRROR] {
            engine
                .apply_pipeline_yaml("pipeline.yaml", yaml)
                .await
                .expect("the pipeline applies");
        }
        engine
            .set_secret("registry-token", TOKEN)
            .await
            .expect("secret");
        engine
            .apply_settings(PipelineSettingSpec {
                registry_notifications: Some(RegistryNotifications {
                    token_secret: "registry-token".into(),
                }),
                ..PipelineSettingSpec::default()
            })
            .await
            .expect("settings apply");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds loopback");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = router(
            AppState::new(container.clone()).with_auth(arkline_cli::serve::auth::Auth::Disabled),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Served {
            engine,
            base,
            http: reqwest::Client::new(),
            _container: container,
            _data: data,
        }
    }

    async fn notify(&self, auth: Option<&str>, body: &[u8]) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/registry-hooks/rel", self.base))
            .header(
                "content-type",
                "application/vnd.docker.distribution.events.v1+json",
            )
            .body(body.to_vec());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let resp = request.send().await.expect("answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn finished(&self, name: &str) -> PipelineExecution {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let exec = self.engine.execution(name).await.expect("reads");
            if let Some(exec) = exec.filter(|x| x.status.phase.is_finished()) {
                return exec;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn push_event(id: &str, repository: &str, digest: &str, tag: &str) -> Value {
    json!({
        "id": id,
        "timestamp": "2026-12-06T15:00:00Z",
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 400,
            "digest": digest,
            "length": 400,
            "repository": repository,
            "url": format!("http://127.0.0.1:5000/v2/{repository}/manifests/{digest}"),
            "tag": tag,
        },
        "request": { "id": "r1", "addr": "127.0.0.1:40000", "host": "127.0.0.1:5000", "method": "PUT", "useragent": "skopeo" },
        "actor": {},
        "source": { "addr": "registry:5000", "instanceID": "i" },
    })
}

fn envelope(events: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "events": events })).expect("json")
}

fn started(answer: &Value) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = answer["executions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (
                e["pipeline"].as_str().unwrap_or_default().to_owned(),
                e["execution"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pushes_start_the_pipelines_whose_triggers_accept_them() {
    let served = Served::start().await;
    let d1 = format!("sha256:{}", "1".repeat(64));
    let first = envelope(&[
        push_event("ev-1", "team/app", &d1, "v1.0"),
        // A blob push and a pull: no run.
        json!({"id": "ev-b", "action": "push", "target": {"mediaType": "application/octet-stream", "repository": "team/app", "digest": "sha256:ff"}}),
        json!({"id": "ev-p", "action": "pull", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "team/app", "digest": d1, "tag": "v1.0"}}),
        // A platform's manifest pushed by digest before its index: no run.
        push_event(
            "ev-d",
            "team/app",
            &format!("sha256:{}", "d".repeat(64)),
            "",
        ),
    ]);

    // Not the token: the same 401 whatever is wrong.
    for auth in [None, Some("Bearer wrong"), Some("n0tify-t0ke")] {
        let (status, answer) = served.notify(auth, &first).await;
        assert_eq!(status, 401, "{auth:?}: {answer}");
        assert_eq!(answer["code"], "unauthorized");
    }
    let bearer = format!("Bearer {TOKEN}");

    // A push of team/app:v1.0 starts both pipelines.
    let (status, answer) = served.notify(Some(&bearer), &first).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        started(&answer),
        [
            ("deploy".to_owned(), "deploy-1".to_owned()),
            ("mirror".to_owned(), "mirror-1".to_owned())
        ]
    );
    let deploy = served.finished("deploy-1").await;
    assert_eq!(deploy.status.phase, ExecutionPhase::Succeeded);
    assert_eq!(deploy.spec.trigger, TriggerKind::ImagePush);
    assert_eq!(
        deploy.spec.image,
        Some(ImagePush {
            image: "127.0.0.1:5000/team/app".into(),
            digest: d1.clone(),
            tag: "v1.0".into(),
        })
    );
    assert_eq!(
        deploy.status.outputs["show"]["data"],
        format!("127.0.0.1:5000/team/app|{d1}|v1.0|image_push")
    );
    assert_eq!(
        deploy.metadata.labels["arkline.dev/webhook-provider"],
        "distribution"
    );
    assert_eq!(
        served.finished("mirror-1").await.status.outputs["copy"]["data"],
        d1
    );

    // The same notification again (a registry retries): nothing starts.
    let (status, answer) = served.notify(Some(TOKEN), &first).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["triggered"], false);
    let reasons: Vec<&str> = answer["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .filter_map(|s| s["reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 2, "{answer}");
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("duplicate notification: event ev-1")),
        "{answer}"
    );

    // Another tag of the same digest: `deploy` does not take `latest`, and
    // `mirror` published that digest itself (its output): no loop.
    let again = envelope(&[push_event("ev-2", "team/app", &d1, "latest")]);
    let (status, answer) = served.notify(Some(&bearer), &again).await;
    assert_eq!(status, 200, "{answer}");
    let skipped = &answer["skipped"][0];
    assert_eq!(skipped["pipeline"], "mirror");
    assert!(
        skipped["reason"].as_str().is_some_and(|r| r
            .contains("`mirror-1` of this pipeline pushed")
            && r.contains("self: true")),
        "{answer}"
    );

    // A push the `image` biz made for `deploy` itself (its User-Agent says
    // so): `deploy` does not run, `mirror` does; a push whose tag is no tag
    // starts nothing.
    let mut own = push_event(
        "ev-4",
        "team/app",
        &format!("sha256:{}", "4".repeat(64)),
        "v4",
    );
    own["request"]["useragent"] =
        json!("arkline-image/0.1.0 (engine=rel; pipeline=deploy; run=7; step=image)");
    let bad = push_event(
        "ev-5",
        "team/app",
        &format!("sha256:{}", "5".repeat(64)),
        "v5;rm -rf /",
    );
    let (status, answer) = served.notify(Some(&bearer), &envelope(&[own, bad])).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        started(&answer),
        [("mirror".to_owned(), "mirror-2".to_owned())],
        "`mirror` did not push it"
    );
    let reasons: Vec<&str> = answer["skipped"]
        .as_array()
        .expect("skipped")
        .iter()
        .filter_map(|s| s["reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("a step of this pipeline pushed")),
        "{answer}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("`v5;rm -rf /` is not a tag")),
        "{answer}"
    );

    // A release candidate and another repository's tag.
    let rc = envelope(&[push_event(
        "ev-3",
        "other/app",
        &format!("sha256:{}", "3".repeat(64)),
        "v2",
    )]);
    let (status, answer) = served.notify(Some(&bearer), &rc).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("127.0.0.1:5000/other/app:v2")),
        "{answer}"
    );

    // Harbor's webhook.
    let d2 = format!("sha256:{}", "2".repeat(64));
    let harbor = json!({
        "type": "PUSH_ARTIFACT", "occur_at": 1_765_000_000, "operator": "robot",
        "event_data": {
            "resources": [{ "digest": d2, "tag": "v2.0", "resource_url": "harbor.example.com/team/api:v2.0" }],
            "repository": { "name": "api", "namespace": "team", "repo_full_name": "team/api", "repo_type": "private" }
        }
    });
    let (status, answer) = served
        .notify(Some(&bearer), harbor.to_string().as_bytes())
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        started(&answer),
        [("deploy".to_owned(), "deploy-2".to_owned())]
    );
    assert_eq!(
        served.finished("deploy-2").await.status.outputs["show"]["data"],
        format!("harbor.example.com/team/api|{d2}|v2.0|image_push")
    );

    // Bad input.
    let (status, answer) = served.notify(Some(&bearer), b"not json").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("not JSON")),
        "{answer}"
    );
    let (status, answer) = served.notify(Some(&bearer), b"{\"hello\": 1}").await;
    assert_eq!(status, 400, "{answer}");
}

/// A one-layer OCI image in a layout directory, for `skopeo copy`.
fn oci_layout(dir: &std::path::Path, text: &str) {
    let blob = |bytes: &[u8]| -> String {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
        std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).expect("write blob");
        format!("sha256:{hex}")
    };
    // An uncompressed tar with one file.
    let mut header = [0u8; 512];
    header[..5].copy_from_slice(b"hello");
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{:011o}\0", text.len()).as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(text.as_bytes());
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let layer = blob(&tar);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {}, "rootfs": { "type": "layers", "diff_ids": [layer] }
    }))
    .expect("json");
    let config_digest = blob(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": tar.len() }]
    }))
    .expect("json");
    let manifest_digest = blob(&manifest);
    std::fs::write(
        dir.join("oci-layout"),
        br#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .expect("write");
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": "v3" }
            }]
        }))
        .expect("json"),
    )
    .expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_real_registry_notifies_and_starts_the_pipeline_with_its_digest() {
    let served = Served::start().await;
    let registry = Registry::builder()
        .notify(
            &format!("{}/registry-hooks/rel", served.base),
            &format!("Bearer {TOKEN}"),
        )
        .start();
    let layout = tempfile::tempdir().expect("tempdir");
    oci_layout(layout.path(), "hello from a push\n");
    let target = format!("docker://{}/team/web:v3", registry.host());
    let out = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v3", layout.path().display()),
        &target,
    ]);
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &target,
    ]);
    assert!(out.status.success());
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // The registry sends its events on its own schedule.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let exec = loop {
        if let Some(x) = served.engine.execution("deploy-1").await.expect("reads") {
            break x;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no execution: the registry's log says:\n{}",
            std::fs::read_to_string(registry.storage().with_file_name("registry.log"))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let push = exec.spec.image.clone().expect("the push");
    assert_eq!(push.image, format!("{}/team/web", registry.host()));
    assert_eq!(push.digest, digest);
    assert_eq!(push.tag, "v3");
    let done = served.finished(&exec.metadata.name).await;
    assert_eq!(done.status.phase, ExecutionPhase::Succeeded);
    // `mirror` follows team/app only.
    assert!(
        served
            .engine
            .execution("mirror-1")
            .await
            .expect("reads")
            .is_none()
    );
}
