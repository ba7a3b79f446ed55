//! Pipelines as code over `POST /hooks/{engine}`: the serve router on
//! loopback, a real container (redb data dir) with the real `faults` biz, and
//! a real repository served by `git daemon` on 127.0.0.1. A push runs the
//! pipeline file as it is at the pushed commit; an invalid or oversized file
//! runs nothing and says why; a fork's pull request gets no secret; a
//! delivery for another repository is refused; a repeated delivery starts
//! nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::{ExecutionPhase, PipelineExecution, PipelineSettingSpec, RepoPipelines};
use arkline::{Container, Engine};
use arkline_cli::serve::hooks::signature::github_signature;
use arkline_cli::serve::{AppState, router};
use arkline_testkit::git::{Repo, git_daemon};
use serde_json::{Value, json};
use sha2::Digest as _;

const SECRET: &str = "repo-h00k-secret";
const LIMIT: Duration = Duration::from_secs(120);

fn ci(url: &str, data: &str) -> String {
    format!(
        r#"
name: ci
secrets: [deploy_token]
source: {{ repository: "{url}" }}
triggers:
  - {{type: webhook, events: [push, pull_request]}}
stages:
  - name: s
    steps:
      - {{ name: build, uses: faults/echo, with: {{ data: "{data} ${{{{ event }}}}" }} }}
  - name: ship
    steps:
      - {{ name: deploy, uses: faults/echo, with: {{ data: "${{{{ secrets.deploy_token }}}}" }} }}
"#
    )
}

struct Server {
    engine: Engine,
    base: String,
    http: reqwest::Client,
    _container: Container,
}

impl Server {
    async fn deliver(&self, event: &str, body: &Value, id: Option<&str>) -> (u16, Value) {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let fresh = format!(
            "9a1e0c4e-0000-11e3-81ab-{:012x}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let bytes = serde_json::to_vec(body).expect("json");
        let resp = self
            .http
            .post(format!("{}/hooks/ci", self.base))
            .header("content-type", "application/json")
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", id.unwrap_or(&fresh))
            .header(
                "X-Hub-Signature-256",
                github_signature(SECRET.as_bytes(), &bytes),
            )
            .body(bytes)
            .send()
            .await
            .expect("the server answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("a JSON answer ({e}), got {status}: {text}"));
        (status, json)
    }

    async fn finished(&self, name: &str) -> PipelineExecution {
        let Ok(done) = tokio::time::timeout(LIMIT, self.engine.wait(name)).await else {
            panic!("{name} did not finish in time")
        };
        done.expect("wait")
    }
}

fn push(url: &str, commit: &str) -> Value {
    json!({
        "ref": "refs/heads/main", "after": commit, "deleted": false,
        "repository": {"clone_url": url, "full_name": "acme/app"},
    })
}

fn digest(text: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_runs_the_pipeline_file_at_the_pushed_commit_and_forks_get_no_secret() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), "app");
    let port = git_daemon(&root.path().join("srv"));
    let url = format!("git://127.0.0.1:{port}/app.git");
    let first = repo.commit("ci v1", &[(".arkline/ci.yaml", &ci(&url, "v1"))]);

    let data = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(data.path())
        .build()
        .expect("container builds");
    let engine = container.engine("ci").await.expect("engine starts");
    let faults = Ark::open(arkline_testkit::plugin("faults")).expect("faults archive");
    engine
        .install(faults, &Capabilities::default())
        .await
        .expect("faults installs");
    engine
        .set_secret("repo-hook", SECRET)
        .await
        .expect("secret");
    engine
        .set_secret("deploy_token", "d3ploy-t0ken")
        .await
        .expect("secret");
    engine
        .apply_settings(PipelineSettingSpec {
            pipelines_from_repo: Some(RepoPipelines {
                repository: url.clone(),
                path: arkline::model::default_repo_path(),
                branches: arkline::model::Filter::default(),
                trusted_events: vec!["push".into()],
                untrusted_bizes: Vec::new(),
                webhook_secret: "repo-hook".into(),
                credential: None,
            }),
            ..PipelineSettingSpec::default()
        })
        .await
        .expect("settings apply");
    assert!(
        engine.pipeline("ci").await.expect("read").is_none(),
        "nothing stored: the pipeline lives in the repository"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds loopback");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router(
        AppState::new(container.clone()).with_auth(arkline_cli::serve::auth::Auth::Disabled),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let server = Server {
        engine,
        base,
        http: reqwest::Client::new(),
        _container: container,
    };

    // A push of the first commit runs the file as it is there.
    let (status, answer) = server
        .deliver("push", &push(&url, &first), Some("delivery-1"))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["commit"], first.as_str());
    assert_eq!(answer["trusted"], true);
    let name = answer["executions"][0].as_str().expect("an execution");
    let done = server.finished(name).await;
    assert_eq!(
        done.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        done.status
    );
    assert_eq!(done.status.outputs["build"]["data"], "v1 push");
    assert_eq!(done.status.outputs["deploy"]["data"], "***");
    let origin = done.spec.origin.clone().expect("origin recorded");
    assert_eq!(origin.repository, url);
    assert_eq!(origin.path, ".arkline/ci.yaml");
    assert_eq!(origin.commit, first);
    assert_eq!(origin.digest, digest(&ci(&url, "v1")));
    assert!(!done.spec.untrusted);

    // The host's checkout of `source` has its log beside the steps'.
    let log = server
        .http
        .get(format!(
            "{}/api/v1/engines/ci/executions/{name}/steps/@source/logs",
            server.base
        ))
        .send()
        .await
        .expect("answers");
    let code = log.status().as_u16();
    let text = log.text().await.expect("body");
    assert_eq!(code, 200, "{text}");
    assert!(
        text.contains(&format!("checked out {url} at {first}")),
        "{text}"
    );

    // The same delivery again starts nothing.
    let (status, answer) = server
        .deliver("push", &push(&url, &first), Some("delivery-1"))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["triggered"], false);
    assert!(
        answer["reason"]
            .as_str()
            .is_some_and(|r| r.contains("duplicate delivery")),
        "{answer}"
    );

    // A second push changes the file: the new content runs.
    let second = repo.commit("ci v2", &[(".arkline/ci.yaml", &ci(&url, "v2"))]);
    let (status, answer) = server.deliver("push", &push(&url, &second), None).await;
    assert_eq!(status, 202, "{answer}");
    let done = server
        .finished(answer["executions"][0].as_str().expect("exec"))
        .await;
    assert_eq!(done.status.outputs["build"]["data"], "v2 push");
    assert_eq!(
        done.spec.origin.as_ref().map(|o| o.digest.clone()),
        Some(digest(&ci(&url, "v2")))
    );

    // A person runs the file as it is at a branch or a commit
    // (`ctl exec start --ref`).
    for (reference, commit, data) in [
        ("main", &second, "v2 manual"),
        (&first[..], &first, "v1 manual"),
    ] {
        let resp = server
            .http
            .post(format!(
                "{}/api/v1/engines/ci/pipelines/ci/executions",
                server.base
            ))
            .json(&json!({ "ref": reference }))
            .send()
            .await
            .expect("answers");
        assert_eq!(resp.status().as_u16(), 201);
        let exec: PipelineExecution = resp.json().await.expect("an execution");
        let done = server.finished(&exec.metadata.name).await;
        assert_eq!(
            done.status.phase,
            ExecutionPhase::Succeeded,
            "{:#?}",
            done.status
        );
        assert_eq!(done.spec.origin.as_ref().map(|o| &o.commit), Some(commit));
        assert_eq!(done.status.outputs["build"]["data"], data);
    }
    let resp = server
        .http
        .post(format!(
            "{}/api/v1/engines/ci/pipelines/nope/executions",
            server.base
        ))
        .json(&json!({ "ref": "main" }))
        .send()
        .await
        .expect("answers");
    assert_eq!(resp.status().as_u16(), 404);

    // A pull request from a fork: untrusted, so the step reading a secret
    // fails and says why; the step that reads none runs.
    let pr = json!({
        "action": "opened", "number": 7,
        "pull_request": {
            "head": {"ref": "feature", "sha": second, "repo": {"full_name": "eve/app"}},
            "base": {"ref": "main", "repo": {"full_name": "acme/app"}},
        },
        "repository": {"clone_url": url, "full_name": "acme/app"},
    });
    let (status, answer) = server.deliver("pull_request", &pr, None).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["trusted"], false);
    let done = server
        .finished(answer["executions"][0].as_str().expect("exec"))
        .await;
    assert!(done.spec.untrusted);
    assert_eq!(done.status.phase, ExecutionPhase::Failed);
    assert_eq!(done.status.outputs["build"]["data"], "v2 pull_request");
    let deploy = &done.status.stages[1].steps[0];
    assert!(
        deploy.reason.contains("untrusted") && deploy.reason.contains("deploy_token"),
        "{deploy:#?}"
    );

    // An invalid file at a third commit runs nothing and reports why; so
    // does a file over the size cap.
    let third = repo.commit(
        "broken",
        &[
            (".arkline/ci.yaml", "name: ci\nstages: [\n"),
            (".arkline/big.yaml", &"# padding\n".repeat(110_000)),
        ],
    );
    let executions_before = server.engine.executions(None).await.expect("list").len();
    let (status, answer) = server.deliver("push", &push(&url, &third), None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["triggered"], false);
    let files = answer["files"].as_array().expect("files");
    assert_eq!(files.len(), 2, "{answer}");
    assert_eq!(files[0]["path"], ".arkline/big.yaml");
    assert_eq!(files[0]["outcome"], "invalid");
    assert!(
        files[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("over the 1048576 bytes")),
        "{answer}"
    );
    assert_eq!(files[1]["path"], ".arkline/ci.yaml");
    assert_eq!(files[1]["outcome"], "invalid");
    assert!(files[1]["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(
        server.engine.executions(None).await.expect("list").len(),
        executions_before,
        "nothing ran"
    );

    // A delivery for a repository the engine does not follow.
    let other = json!({
        "ref": "refs/heads/main", "after": second, "deleted": false,
        "repository": {"clone_url": "https://example.com/acme/other.git", "full_name": "acme/other"},
    });
    let (status, answer) = server.deliver("push", &other, None).await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("acme/other") && m.contains(&url)),
        "{answer}"
    );

    // A fork's file cannot send an engine secret anywhere through `source`:
    // the checkout of an untrusted run uses no credential but the engine's own
    // repository's.
    let steal = repo.commit(
        "steal",
        &[(
            ".arkline/steal.yaml",
            "name: steal\nsecrets: [deploy_token]\nsource: { repository: \"http://127.0.0.1:9/x.git\", credential: deploy_token }\ntriggers:\n  - {type: webhook, events: [pull_request]}\nstages:\n  - name: s\n    steps:\n      - { name: a, uses: faults/echo, with: { data: x } }\n",
        )],
    );
    let pr = json!({
        "action": "opened", "number": 8,
        "pull_request": {
            "head": {"ref": "steal", "sha": steal, "repo": {"full_name": "eve/app"}},
            "base": {"ref": "main", "repo": {"full_name": "acme/app"}},
        },
        "repository": {"clone_url": url, "full_name": "acme/app"},
    });
    let (status, answer) = server.deliver("pull_request", &pr, None).await;
    assert_eq!(status, 202, "{answer}");
    let file = answer["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == ".arkline/steal.yaml")
        .expect("the file")
        .clone();
    let done = server
        .finished(file["execution"].as_str().expect("started"))
        .await;
    assert_eq!(done.status.phase, ExecutionPhase::Failed);
    assert!(
        done.status.reason.contains("so it gets no secret")
            && done.status.reason.contains("credential secret"),
        "{}",
        done.status.reason
    );
}
