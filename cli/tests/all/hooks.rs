//! `POST /hooks/{engine}/{pipeline}` over real HTTP on loopback, against a real
//! container (redb data dir) with the real `faults` biz: GitHub signatures and
//! GitLab tokens checked with the pipeline's webhook secret, events and
//! branches mapped and filtered, the commit and branch in the execution spec,
//! and `when: {event: …}` deciding steps from the delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::{ExecutionPhase, PipelineExecution, StepPhase, TriggerKind};
use arkline::{Container, Engine};
use arkline_cli::serve::hooks::signature::github_signature;
use arkline_cli::serve::{AppState, router};
use serde_json::{Value, json};

const GITHUB_SECRET: &str = "gh-s3cret-value";
const GITLAB_SECRET: &str = "gl-t0ken-value";
const LIMIT: Duration = Duration::from_secs(120);

const PIPELINE: &str = r#"
name: build
secrets: [github-hook, gitlab-hook]
triggers:
  - {type: webhook, events: [push, pull_request], branch: {include: [main]}, secret: github-hook}
  - {type: webhook, events: [tag], branch: "v*", secret: github-hook}
  - {type: webhook, events: [push], secret: gitlab-hook}
stages:
  - name: s
    steps:
      - name: compile
        uses: faults/echo
        with: { data: "${{ event }} ${{ branch }}" }
      - name: release
        uses: faults/echo
        when: { event: [tag] }
        with: { data: "release" }
"#;

struct Server {
    container: Container,
    engine: Engine,
    base: String,
    http: reqwest::Client,
}

async fn start(dir: &std::path::Path) -> Server {
    let container = Container::builder()
        .data_dir(dir)
        .build()
        .expect("container builds");
    let engine = container.engine("team-a").await.expect("engine starts");
    let faults = Ark::open(arkline_testkit::plugin("faults")).expect("faults archive");
    engine
        .install(faults, &Capabilities::default())
        .await
        .expect("faults installs");
    engine
        .set_secret("github-hook", GITHUB_SECRET)
        .await
        .expect("secret");
    engine
        .set_secret("gitlab-hook", GITLAB_SECRET)
        .await
        .expect("secret");
    engine
        .apply_pipeline_yaml("build.yaml", PIPELINE)
        .await
        .unwrap_or_else(|e| panic!("pipeline applies: {e}"));
    engine
        .apply_pipeline_yaml(
            "manual.yaml",
            "name: manual\nstages:\n  - name: s\n    steps:\n      - { name: a, uses: faults/echo, with: { data: x } }\n",
        )
        .await
        .expect("pipeline applies");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router(AppState::new(container.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        container,
        engine,
        base,
        http: reqwest::Client::new(),
    }
}

impl Server {
    /// A signed GitHub delivery with a delivery id of its own.
    async fn github(
        &self,
        pipeline: &str,
        event: &str,
        body: &Value,
        secret: &str,
    ) -> (u16, Value) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = format!(
            "72d3162e-cc78-11e3-81ab-{:012x}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.github_as(pipeline, event, body, secret, &id).await
    }

    /// A signed GitHub delivery with delivery id `id`.
    async fn github_as(
        &self,
        pipeline: &str,
        event: &str,
        body: &Value,
        secret: &str,
        id: &str,
    ) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        let sig = github_signature(secret.as_bytes(), &bytes);
        self.post(
            pipeline,
            &[
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", id),
                ("X-Hub-Signature-256", &sig),
            ],
            bytes,
        )
        .await
    }

    async fn gitlab(&self, event: &str, body: &Value, token: &str) -> (u16, Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        self.post(
            "build",
            &[("X-Gitlab-Event", event), ("X-Gitlab-Token", token)],
            bytes,
        )
        .await
    }

    async fn post(&self, pipeline: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/hooks/team-a/{pipeline}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("a JSON answer ({e}), got {status}: {text}"));
        (status, json)
    }

    async fn executions(&self) -> Vec<PipelineExecution> {
        self.engine.executions(None).await.expect("list")
    }

    async fn finished(&self, name: &str) -> PipelineExecution {
        let Ok(done) = tokio::time::timeout(LIMIT, self.engine.wait(name)).await else {
            panic!("{name} did not finish in time")
        };
        done.expect("wait")
    }
}

fn step_phase(exec: &PipelineExecution, step: &str) -> StepPhase {
    exec.status
        .stages
        .iter()
        .flat_map(|s| s.steps.iter())
        .find(|s| s.name == step)
        .unwrap_or_else(|| panic!("step {step} in {:#?}", exec.status))
        .phase
}

fn push(git_ref: &str, after: &str) -> Value {
    json!({"ref": git_ref, "after": after, "deleted": false, "repository": {"full_name": "acme/app"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_signatures_are_refused_and_trigger_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path()).await;
    let body = push("refs/heads/main", "aaaa");

    let (status, answer) = s.github("build", "push", &body, "not-the-secret").await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["code"], "unauthorized");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("cannot be verified"),
        "{answer}"
    );

    let bytes = serde_json::to_vec(&body).expect("json");
    let (status, answer) = s
        .post("build", &[("X-GitHub-Event", "push")], bytes.clone())
        .await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("X-Hub-Signature-256"),
        "{answer}"
    );

    // A signature over another body does not pass for this one.
    let sig = github_signature(GITHUB_SECRET.as_bytes(), b"{}");
    let (status, _) = s
        .post(
            "build",
            &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &sig)],
            bytes,
        )
        .await;
    assert_eq!(status, 401);

    let (status, answer) = s
        .gitlab(
            "Push Hook",
            &json!({"ref": "refs/heads/main", "checkout_sha": "b"}),
            "wrong",
        )
        .await;
    assert_eq!(status, 401, "{answer}");
    assert!(s.executions().await.is_empty(), "nothing was triggered");
    s.container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_push_runs_only_on_branches_the_trigger_accepts_with_its_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path()).await;
    let sha = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

    let (status, answer) = s
        .github(
            "build",
            "push",
            &push("refs/heads/dev", "dddd"),
            GITHUB_SECRET,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["triggered"], false);
    let reason = answer["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("`push` of `dev`") && reason.contains("include [main]"),
        "{reason}"
    );
    assert!(s.executions().await.is_empty(), "dev is filtered out");

    let (status, answer) = s
        .github_as(
            "build",
            "push",
            &push("refs/heads/main", sha),
            GITHUB_SECRET,
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["triggered"], true);
    let name = answer["execution"]
        .as_str()
        .expect("execution name")
        .to_owned();
    assert_eq!(name, "build-1");

    let done = s.finished(&name).await;
    assert_eq!(done.spec.trigger, TriggerKind::Webhook);
    assert_eq!(
        (
            done.spec.event.as_str(),
            done.spec.branch.as_str(),
            done.spec.commit.as_str()
        ),
        ("push", "main", sha)
    );
    assert_eq!(
        done.metadata.labels["arkline.dev/webhook-provider"],
        "github"
    );
    assert_eq!(
        done.metadata.labels["arkline.dev/webhook-delivery"],
        "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    );
    assert_eq!(
        done.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        done.status
    );
    assert_eq!(done.status.outputs["compile"]["data"], "push main");
    assert_eq!(
        step_phase(&done, "release"),
        StepPhase::Skipped,
        "when: event tag"
    );
    assert_eq!(s.executions().await.len(), 1);

    // Ping checks the signature and answers 200 without running anything.
    let (status, answer) = s
        .github(
            "build",
            "ping",
            &json!({"zen": "Keep it logically awesome.", "hook_id": 1}),
            GITHUB_SECRET,
        )
        .await;
    assert_eq!(
        (status, &answer["triggered"]),
        (200, &json!(false)),
        "{answer}"
    );
    let (status, _) = s.github("build", "ping", &json!({}), "wrong").await;
    assert_eq!(status, 401);
    assert_eq!(s.executions().await.len(), 1);
    s.container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_pull_requests_and_gitlab_deliveries_land_in_the_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path()).await;

    // A tag push is the event `tag`, its branch the tag name; `when` sees it.
    let (status, answer) = s
        .github(
            "build",
            "push",
            &push("refs/tags/v1.2.0", "7a9c"),
            GITHUB_SECRET,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    let tag = s
        .finished(answer["execution"].as_str().expect("name"))
        .await;
    assert_eq!(
        (
            tag.spec.event.as_str(),
            tag.spec.branch.as_str(),
            tag.spec.commit.as_str()
        ),
        ("tag", "v1.2.0", "7a9c")
    );
    assert_eq!(
        tag.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        tag.status
    );
    assert_eq!(step_phase(&tag, "release"), StepPhase::Succeeded);
    // A tag the trigger's `branch: "v*"` does not match.
    let (status, answer) = s
        .github(
            "build",
            "push",
            &push("refs/tags/nightly", "7a9d"),
            GITHUB_SECRET,
        )
        .await;
    assert_eq!(
        (status, &answer["triggered"]),
        (200, &json!(false)),
        "{answer}"
    );

    // A pull request runs against its target branch, at the head commit.
    let pr = json!({
        "action": "opened",
        "number": 17,
        "pull_request": {
            "number": 17,
            "head": {"ref": "feature/login", "sha": "feedbeef"},
            "base": {"ref": "main", "sha": "0ld"},
        },
    });
    let (status, answer) = s.github("build", "pull_request", &pr, GITHUB_SECRET).await;
    assert_eq!(status, 202, "{answer}");
    let pr_exec = s
        .finished(answer["execution"].as_str().expect("name"))
        .await;
    assert_eq!(
        (
            pr_exec.spec.event.as_str(),
            pr_exec.spec.branch.as_str(),
            pr_exec.spec.commit.as_str()
        ),
        ("pull_request", "main", "feedbeef")
    );
    assert_eq!(
        pr_exec.metadata.labels["arkline.dev/source-branch"],
        "feature/login"
    );
    assert_eq!(pr_exec.metadata.labels["arkline.dev/pull-request"], "17");
    let closed = json!({"action": "closed", "pull_request": {}});
    let (status, answer) = s
        .github("build", "pull_request", &closed, GITHUB_SECRET)
        .await;
    assert_eq!(
        (status, &answer["triggered"]),
        (200, &json!(false)),
        "{answer}"
    );

    // GitLab: the token is the secret; its trigger accepts pushes to any branch.
    let gl = json!({
        "object_kind": "push",
        "ref": "refs/heads/dev",
        "before": "95790bf8",
        "after": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "checkout_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
    });
    let (status, answer) = s.gitlab("Push Hook", &gl, GITLAB_SECRET).await;
    assert_eq!(status, 202, "{answer}");
    let gl_exec = s
        .finished(answer["execution"].as_str().expect("name"))
        .await;
    assert_eq!(
        (
            gl_exec.spec.event.as_str(),
            gl_exec.spec.branch.as_str(),
            gl_exec.spec.commit.as_str()
        ),
        ("push", "dev", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
    );
    assert_eq!(
        gl_exec.metadata.labels["arkline.dev/webhook-provider"],
        "gitlab"
    );
    // The GitLab trigger does not accept tags.
    let (status, answer) = s
        .gitlab(
            "Tag Push Hook",
            &json!({"ref": "refs/tags/v9", "checkout_sha": "abc"}),
            GITLAB_SECRET,
        )
        .await;
    assert_eq!(
        (status, &answer["triggered"]),
        (200, &json!(false)),
        "{answer}"
    );
    assert_eq!(s.executions().await.len(), 3);
    s.container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_deliveries_get_one_answer_whatever_exists_and_big_bodies_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path()).await;
    let body = push("refs/heads/main", "aaaa");

    // A real hook with a wrong signature, a pipeline without a webhook trigger,
    // an unknown pipeline and an unknown engine: one status, one body.
    let (status, wrong) = s.github("build", "push", &body, "not-the-secret").await;
    assert_eq!(status, 401, "{wrong}");
    assert_eq!(wrong["code"], "unauthorized");
    for pipeline in ["manual", "nope"] {
        let (status, answer) = s.github(pipeline, "push", &body, GITHUB_SECRET).await;
        assert_eq!((status, &answer), (401, &wrong), "pipeline {pipeline}");
    }
    let bytes = serde_json::to_vec(&body).expect("json");
    let sig = github_signature(GITHUB_SECRET.as_bytes(), &bytes);
    let resp = s
        .http
        .post(format!("{}/hooks/other-engine/build", s.base))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", &sig)
        .body(bytes)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.json::<Value>().await.expect("json"), wrong);
    assert!(
        s.container
            .engines()
            .iter()
            .all(|e| e.name() != "other-engine"),
        "a delivery never creates an engine"
    );

    let (status, answer) = s.post("build", &[], b"{}".to_vec()).await;
    assert_eq!(status, 400, "{answer}");

    let big = vec![b' '; (1 << 20) + 1];
    let (status, answer) = s
        .post(
            "build",
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", "sha256=00"),
            ],
            big,
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("payload_too_large")),
        "{answer}"
    );

    // A secret the trigger names but the engine lacks: nothing can verify, and
    // the sender learns no more than from a wrong signature.
    s.engine.delete_secret("gitlab-hook").await.expect("delete");
    let (status, answer) = s
        .gitlab(
            "Push Hook",
            &json!({"ref": "refs/heads/main", "checkout_sha": "b"}),
            GITLAB_SECRET,
        )
        .await;
    assert_eq!((status, &answer), (401, &wrong));
    assert!(s.executions().await.is_empty());
    s.container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_delivery_sent_again_with_its_idempotency_key_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path()).await;
    let body = serde_json::to_vec(&json!({"ref": "refs/heads/dev", "checkout_sha": "c0ffee"}))
        .expect("json");
    let headers = [
        ("X-Gitlab-Event", "Push Hook"),
        ("X-Gitlab-Token", GITLAB_SECRET),
        (
            "X-Gitlab-Event-UUID",
            "13792a34-cac6-4fda-95a8-c58e00a3954e",
        ),
        ("Idempotency-Key", "f5e5f430-f57b-4e6e-9fac-d9128cd7232f"),
    ];
    let (status, first) = s.post("build", &headers, body.clone()).await;
    assert_eq!(status, 202, "{first}");
    // A retry: GitLab keeps the Idempotency-Key (and sends a new event UUID).
    let retry = [
        headers[0],
        headers[1],
        (
            "X-Gitlab-Event-UUID",
            "0b3c5f1e-0000-4000-8000-000000000001",
        ),
        headers[3],
    ];
    let (status, again) = s.post("build", &retry, body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["triggered"], false);
    assert_eq!(
        again["reason"],
        "duplicate delivery f5e5f430-f57b-4e6e-9fac-d9128cd7232f"
    );
    assert_eq!(again["execution"], first["execution"]);
    assert_eq!(s.executions().await.len(), 1);
    s.container.shutdown().await;
}

const REPLAY_PIPELINE: &str = "name: build\nsecrets: [github-hook]\ntriggers:\n  - {type: webhook, events: [push], secret: github-hook}\nstages:\n  - name: s\n    steps:\n      - { name: compile, uses: faults/echo, with: { data: x } }\n";

/// The executions of `build` in team-a, through the admin API.
async fn build_executions(http: &reqwest::Client, url: &str) -> Vec<String> {
    let list: Value = http
        .get(format!("{url}/api/v1/engines/team-a/executions"))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    list.as_array()
        .unwrap_or_else(|| panic!("an array: {list}"))
        .iter()
        .map(|e| e["metadata"]["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_github_delivery_starts_nothing_even_after_a_restart() {
    use crate::support::server::{Server, arkc, faults};

    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.arkc");
    std::fs::write(
        &app,
        arkc("team-a", faults(), &[], &[("build.yaml", REPLAY_PIPELINE)]),
    )
    .expect("writes app.arkc");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[app.to_str().expect("utf-8"), "--insecure-no-auth"]);
    let http = reqwest::Client::new();
    let status = http
        .put(format!(
            "{}/api/v1/engines/team-a/secrets/github-hook",
            server.url
        ))
        .body(json!({"value": GITHUB_SECRET}).to_string())
        .send()
        .await
        .expect("answers")
        .status();
    assert_eq!(status.as_u16(), 204);

    let body = serde_json::to_vec(&push("refs/heads/main", "abcd")).expect("json");
    let sig = github_signature(GITHUB_SECRET.as_bytes(), &body);
    let send = |url: String, id: &'static str| {
        let (http, body, sig) = (http.clone(), body.clone(), sig.clone());
        async move {
            let resp = http
                .post(format!("{url}/hooks/team-a/build"))
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", id)
                .header("X-Hub-Signature-256", sig)
                .body(body)
                .send()
                .await
                .expect("answers");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    const ID: &str = "d6e0a2c0-1b7f-11ef-8f5e-3a1f0c9d2b11";

    let (status, first) = send(server.url.clone(), ID).await;
    assert_eq!(status, 202, "{first}");
    let execution = first["execution"].as_str().expect("execution").to_owned();
    let duplicate = json!({
        "triggered": false,
        "reason": format!("duplicate delivery {ID}"),
        "execution": execution,
    });
    let (status, again) = send(server.url.clone(), ID).await;
    assert_eq!((status, &again), (200, &duplicate));
    assert_eq!(
        build_executions(&http, &server.url).await,
        std::slice::from_ref(&execution)
    );

    // The ids are in the data dir: a restarted server still knows this one.
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr:#?}");
    let server = Server::start(&data, &["--insecure-no-auth"]);
    let (status, after) = send(server.url.clone(), ID).await;
    assert_eq!((status, &after), (200, &duplicate));
    assert_eq!(
        build_executions(&http, &server.url).await,
        std::slice::from_ref(&execution)
    );

    // The id header is not signed: the same signed body sent again under a
    // new id, or with none, is the same replay.
    let (status, other) = send(server.url.clone(), "d6e0a2c0-1b7f-11ef-8f5e-3a1f0c9d2b12").await;
    assert_eq!(status, 200, "{other}");
    assert_eq!(other["triggered"], false);
    assert!(
        other["reason"]
            .as_str()
            .is_some_and(|r| r.contains("the same signed body")),
        "{other}"
    );
    assert_eq!(other["execution"], json!(execution));
    let resp = http
        .post(format!("{}/hooks/team-a/build", server.url))
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sig.clone())
        .body(body.clone())
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        build_executions(&http, &server.url).await,
        std::slice::from_ref(&execution)
    );
    // Another push (another body) runs.
    let next = serde_json::to_vec(&push("refs/heads/main", "abce")).expect("json");
    let resp = http
        .post(format!("{}/hooks/team-a/build", server.url))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", "d6e0a2c0-1b7f-11ef-8f5e-3a1f0c9d2b13")
        .header(
            "X-Hub-Signature-256",
            github_signature(GITHUB_SECRET.as_bytes(), &next),
        )
        .body(next)
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(build_executions(&http, &server.url).await.len(), 2);
    let (exit, _) = server.terminate();
    assert!(exit.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_and_forgejo_deliveries_are_verified_read_and_not_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path()).await;
    let signed = |body: &Value| {
        let bytes = serde_json::to_vec(body).expect("json");
        let sig = github_signature(GITHUB_SECRET.as_bytes(), &bytes);
        let bare = sig.strip_prefix("sha256=").expect("prefixed").to_owned();
        (bytes, bare)
    };
    // Gitea sends GitHub's headers too; its own are the ones read.
    let (bytes, sig) = signed(&push("refs/heads/main", "1111aaaa"));
    let headers = [
        ("X-Gitea-Event", "push"),
        ("X-Gitea-Delivery", "6f2c5a8e-0b7d-4f6e-9a53-2d1e4c8b7a60"),
        ("X-Gitea-Signature", sig.as_str()),
        ("X-GitHub-Event", "push"),
    ];
    let (status, body) = s.post("build", &headers, bytes.clone()).await;
    assert_eq!(status, 202, "{body}");
    let first = body["execution"].as_str().expect("execution").to_owned();
    let exec = s.finished(&first).await;
    assert_eq!(exec.status.phase, ExecutionPhase::Succeeded);
    assert_eq!(
        (
            exec.spec.event.as_str(),
            exec.spec.branch.as_str(),
            exec.spec.commit.as_str()
        ),
        ("push", "main", "1111aaaa")
    );
    assert_eq!(exec.spec.trigger, TriggerKind::Webhook);
    assert_eq!(
        exec.metadata
            .labels
            .get("arkline.dev/webhook-provider")
            .map(String::as_str),
        Some("gitea")
    );
    // The same delivery again starts nothing.
    let (status, again) = s.post("build", &headers, bytes).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["triggered"], false);
    assert_eq!(again["execution"], first.as_str());

    // Forgejo's headers; a pull request with new commits (`synchronized`).
    let pr = json!({
        "action": "synchronized",
        "number": 7,
        "pull_request": {"head": {"ref": "feature", "sha": "2222bbbb"}, "base": {"ref": "main"}},
    });
    let (bytes, sig) = signed(&pr);
    let (status, body) = s
        .post(
            "build",
            &[
                ("X-Forgejo-Event", "pull_request"),
                ("X-Forgejo-Delivery", "0d9b1f4e-5c2a-4e8b-b7f1-93a6c5d2e801"),
                ("X-Forgejo-Signature", sig.as_str()),
            ],
            bytes,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let exec = s
        .finished(body["execution"].as_str().expect("execution"))
        .await;
    assert_eq!(
        (
            exec.spec.event.as_str(),
            exec.spec.branch.as_str(),
            exec.spec.commit.as_str()
        ),
        ("pull_request", "main", "2222bbbb")
    );
    assert_eq!(
        exec.metadata
            .labels
            .get("arkline.dev/source-branch")
            .map(String::as_str),
        Some("feature")
    );

    // A signature under another secret, or none, is refused.
    let bytes = serde_json::to_vec(&push("refs/heads/main", "3333cccc")).expect("json");
    let wrong = github_signature(b"not-the-secret", &bytes);
    let wrong = wrong.strip_prefix("sha256=").expect("prefixed");
    let (status, body) = s
        .post(
            "build",
            &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", wrong)],
            bytes.clone(),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = s.post("build", &[("X-Gitea-Event", "push")], bytes).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("X-Gitea-Signature")),
        "{body}"
    );
    assert_eq!(s.executions().await.len(), 2);
    s.container.shutdown().await;
}
