//! Commit statuses posted to a forge: a loopback server speaking the GitHub,
//! GitLab and Gitea status endpoints records what the engine sends — `pending`
//! then the outcome, each forge's path and auth header — and a forge
//! answering 500 neither fails nor holds up the execution, which records the
//! failure in its `Reported` condition and the metrics; with `stages: true`,
//! each stage gets its own status too.

use std::time::{Duration, Instant};

use arkline::model::{
    Condition, ConditionStatus, ConditionType, ExecutionPhase, ForgeKind, ForgeSettings,
    PipelineExecution, PipelineSettingSpec,
};
use arkline::{Engine, TriggerRequest};

use crate::executions::{engine_in, wait};
use crate::http_capability::{Seen, TestServer, reply};

const PIPELINE: &str = r#"name: app
params:
  - { name: fail, type: bool, default: false }
stages:
  - name: build
    steps:
      - name: compile
        uses: faults/upper
        with: { text: ok }
        if: "!params.fail"
      - name: broken
        uses: faults/fail
        with: { message: boom }
        if: params.fail
"#;

const STAGED: &str = r#"name: staged
params:
  - { name: fail, type: bool, default: false }
  - { name: publish, type: bool, default: false }
stages:
  - name: build
    steps:
      - name: compile
        uses: faults/upper
        with: { text: ok }
  - name: test
    steps:
      - name: check
        uses: faults/upper
        with: { text: ok }
        if: "!params.fail"
      - name: broken
        uses: faults/fail
        with: { message: boom }
        if: params.fail
  - name: publish
    if: params.publish
    steps:
      - name: push
        uses: faults/upper
        with: { text: ok }
"#;

async fn configure(engine: &Engine, kind: ForgeKind, api: String) {
    configure_with(engine, kind, api, false).await;
}

async fn configure_with(engine: &Engine, kind: ForgeKind, api: String, stages: bool) {
    engine
        .set_secret("forge-token", "t0ken")
        .await
        .expect("secret");
    engine
        .apply_settings(PipelineSettingSpec {
            forge: Some(ForgeSettings {
                kind,
                api_url: api,
                token_secret: "forge-token".into(),
                // (Worked out from `source.repository` when not given, but a
                // pipeline with a `source` checks it out, from the network.)
                repository: Some("acme/app".into()),
                target_url: Some("https://ci.example.com".into()),
                stages,
            }),
            ..PipelineSettingSpec::default()
        })
        .await
        .expect("settings apply");
    engine
        .apply_pipeline_yaml("app.yaml", PIPELINE)
        .await
        .expect("pipeline applies");
    engine
        .apply_pipeline_yaml("staged.yaml", STAGED)
        .await
        .expect("pipeline applies");
}

async fn run(engine: &Engine, fail: bool, commit: &str) -> String {
    run_pipeline(engine, "app", fail, commit).await
}

async fn run_pipeline(engine: &Engine, pipeline: &str, fail: bool, commit: &str) -> String {
    let exec = engine
        .trigger(
            pipeline,
            TriggerRequest::manual().param("fail", fail).commit(commit),
        )
        .await
        .expect("trigger");
    let done = wait(engine, &exec.metadata.name).await;
    let want = if fail {
        ExecutionPhase::Failed
    } else {
        ExecutionPhase::Succeeded
    };
    assert_eq!(done.status.phase, want, "{done:#?}");
    exec.metadata.name
}

/// The requests for `commit`, once `n` have come.
fn requests_for(server: &TestServer, commit: &str, n: usize) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: Vec<Seen> = server
            .seen()
            .into_iter()
            .filter(|s| s.target.ends_with(&format!("/statuses/{commit}")))
            .collect();
        if seen.len() >= n {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{n} statuses for {commit}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn body(seen: &Seen) -> serde_json::Value {
    serde_json::from_slice(&seen.body).expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_go_pending_then_to_the_outcome_on_each_forge() {
    let server = TestServer::start(|_, _| reply("201 Created", &[], b"{}"));
    for (kind, engine_dir, path, auth) in [
        (
            ForgeKind::Github,
            "github",
            "/repos/acme/app/statuses/",
            ("authorization", "Bearer t0ken"),
        ),
        (
            ForgeKind::Gitea,
            "gitea",
            "/repos/acme/app/statuses/",
            ("authorization", "token t0ken"),
        ),
        (
            ForgeKind::Gitlab,
            "gitlab",
            "/projects/acme%2Fapp/statuses/",
            ("private-token", "t0ken"),
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (container, engine) = engine_in(dir.path()).await;
        configure(&engine, kind, server.url(&format!("/{engine_dir}"))).await;
        let ok = format!("{engine_dir}-0k");
        let name = run(&engine, false, &ok).await;
        let sent = requests_for(&server, &ok, 2);
        assert_eq!(sent.len(), 2, "{sent:?}");
        for s in &sent {
            assert_eq!(s.method, "POST");
            assert_eq!(s.target, format!("/{engine_dir}{path}{ok}"));
            assert_eq!(s.header(auth.0), Some(auth.1), "{s:?}");
        }
        let (first, last) = (body(&sent[0]), body(&sent[1]));
        let (pending, success) = if kind == ForgeKind::Gitlab {
            ("running", "success")
        } else {
            ("pending", "success")
        };
        assert_eq!(first["state"], pending, "{first}");
        assert_eq!(last["state"], success, "{last}");
        let context = if kind == ForgeKind::Gitlab {
            &last["name"]
        } else {
            &last["context"]
        };
        assert_eq!(context, "arkline/team-a/app");
        assert_eq!(
            last["target_url"],
            format!("https://ci.example.com/api/v1/engines/team-a/executions/{name}")
        );

        let bad = format!("{engine_dir}-bad");
        run(&engine, true, &bad).await;
        let sent = requests_for(&server, &bad, 2);
        let failure = if kind == ForgeKind::Gitlab {
            "failed"
        } else {
            "failure"
        };
        assert_eq!(body(&sent[1])["state"], failure);
        assert!(
            body(&sent[1])["description"]
                .as_str()
                .is_some_and(|d| d.contains("boom"))
        );
        container.shutdown().await;
    }
}

/// Each context's `(state, description)` in the order they came.
fn by_context(sent: &[Seen]) -> std::collections::BTreeMap<String, Vec<(String, String)>> {
    let mut contexts = std::collections::BTreeMap::<String, Vec<(String, String)>>::new();
    for s in sent {
        let b = body(s);
        contexts
            .entry(b["context"].as_str().expect("a context").to_owned())
            .or_default()
            .push((
                b["state"].as_str().expect("a state").to_owned(),
                b["description"].as_str().expect("a description").to_owned(),
            ));
    }
    contexts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stages_each_stage_gets_its_own_status_beside_the_executions() {
    let server = TestServer::start(|_, _| reply("201 Created", &[], b"{}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    configure_with(&engine, ForgeKind::Github, server.url("/gh"), true).await;
    let pending = || ("pending".to_owned(), "running".to_owned());
    let skipped = (
        "success".to_owned(),
        "Skipped: when: condition is false".to_owned(),
    );

    let name = run_pipeline(&engine, "staged", false, "5ta6e5").await;
    // The execution's two, two for each stage that ran, one for the skipped one.
    let sent = requests_for(&server, "5ta6e5", 7);
    let contexts = by_context(&sent);
    let done = ("success".to_owned(), "Succeeded".to_owned());
    assert_eq!(
        contexts,
        [
            ("arkline/team-a/staged", vec![pending(), done.clone()]),
            ("arkline/team-a/staged/build", vec![pending(), done.clone()]),
            ("arkline/team-a/staged/publish", vec![skipped.clone()]),
            ("arkline/team-a/staged/test", vec![pending(), done.clone()]),
        ]
        .into_iter()
        .map(|(c, states)| (c.to_owned(), states))
        .collect(),
        "{sent:?}"
    );
    // Each links to the execution.
    for s in &sent {
        assert_eq!(
            body(s)["target_url"],
            format!("https://ci.example.com/api/v1/engines/team-a/executions/{name}")
        );
    }

    // A failed stage is `failure`, with why; the stages after it are skipped.
    run_pipeline(&engine, "staged", true, "fa11ed").await;
    let contexts = by_context(&requests_for(&server, "fa11ed", 7));
    assert_eq!(
        contexts["arkline/team-a/staged/build"],
        [pending(), done.clone()]
    );
    let test = &contexts["arkline/team-a/staged/test"];
    assert_eq!(test.len(), 2, "{test:?}");
    assert_eq!(test[0], pending());
    assert_eq!(test[1].0, "failure");
    assert!(
        test[1].1.starts_with("Failed: step `broken` failed") && test[1].1.contains("boom"),
        "{test:?}"
    );
    let publish = &contexts["arkline/team-a/staged/publish"];
    assert_eq!(publish.len(), 1, "{publish:?}");
    assert_eq!(publish[0].0, "success", "{publish:?}");
    assert!(publish[0].1.starts_with("Skipped"), "{publish:?}");
    assert_eq!(
        contexts["arkline/team-a/staged"]
            .iter()
            .map(|s| s.0.as_str())
            .collect::<Vec<_>>(),
        ["pending", "failure"]
    );
    // Each stage's pair is counted as the execution's is (after its post).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let forge = container.metrics().snapshot().forge;
        let counted = forge.first().map(|f| (f.posted, f.failed));
        if counted == Some((8, 0)) || Instant::now() > deadline {
            assert_eq!(counted, Some((8, 0)), "two runs of four: {forge:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    container.shutdown().await;

    // Without `stages`: the execution's statuses alone. Another execution's
    // are awaited after this one's, so a stage status it posted would be in.
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    configure_with(&engine, ForgeKind::Github, server.url("/gh"), false).await;
    run_pipeline(&engine, "staged", false, "0ne").await;
    run_pipeline(&engine, "staged", false, "tw0").await;
    requests_for(&server, "tw0", 2);
    let contexts = by_context(&requests_for(&server, "0ne", 2));
    assert_eq!(
        contexts.keys().collect::<Vec<_>>(),
        ["arkline/team-a/staged"],
        "{contexts:?}"
    );
    assert_eq!(contexts["arkline/team-a/staged"], [pending(), done]);
    container.shutdown().await;
}

/// The execution once it has a `Reported` condition, and the condition.
async fn reported(engine: &Engine, name: &str) -> (PipelineExecution, Condition) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let exec = engine.execution(name).await.expect("read").expect("exists");
        if let Some(c) = exec
            .status
            .conditions
            .iter()
            .find(|c| c.kind == ConditionType::Reported)
        {
            let c = c.clone();
            return (exec, c);
        }
        assert!(
            Instant::now() < deadline,
            "no Reported condition: {exec:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_forge_neither_fails_nor_holds_up_the_execution() {
    let server = TestServer::start(|_, _| reply("500 Internal Server Error", &[], b"down"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    configure(&engine, ForgeKind::Github, server.url("")).await;
    let name = run(&engine, false, "c0ffee").await;
    // Retried (five attempts for each of the two states), then given up and
    // recorded on the execution.
    let (exec, reported) = reported(&engine, &name).await;
    assert_eq!(exec.status.phase, ExecutionPhase::Succeeded);
    assert_eq!(reported.status, ConditionStatus::False);
    assert!(reported.message.contains("500"), "{reported:?}");
    assert_eq!(requests_for(&server, "c0ffee", 10).len(), 10);
    let forge = container.metrics().snapshot().forge;
    assert_eq!(forge.len(), 1, "{forge:?}");
    assert_eq!((forge[0].posted, forge[0].failed), (0, 1));
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_status_the_forge_refuses_is_recorded_when_the_execution_ends() {
    let server = TestServer::start(|seen, _| {
        if String::from_utf8_lossy(&seen.body).contains("/staged/build\"") {
            reply("500 Internal Server Error", &[], b"down")
        } else {
            reply("201 Created", &[], b"{}")
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    configure_with(&engine, ForgeKind::Github, server.url(""), true).await;
    let name = run_pipeline(&engine, "staged", false, "b0a7d").await;
    // Recorded after the execution's last write (which would drop it), once
    // the stage's retries are given up.
    let (exec, reported) = reported(&engine, &name).await;
    assert_eq!(exec.status.phase, ExecutionPhase::Succeeded);
    assert_eq!(reported.status, ConditionStatus::False);
    assert!(
        reported.message.starts_with("stage `build`: ") && reported.message.contains("500"),
        "{reported:?}"
    );
    let forge = container.metrics().snapshot().forge;
    assert_eq!(
        (forge[0].posted, forge[0].failed),
        (3, 1),
        "the execution's, test's and publish's pairs, not build's: {forge:?}"
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_pipeline_file_in_the_repository_is_an_error_status_on_its_commit() {
    use arkline::model::RepoPipelines;
    use arkline::{RepoEvent, RepoOutcome};
    use arkline_testkit::git::{Repo, git_daemon};

    let server = TestServer::start(|_, _| reply("201 Created", &[], b"{}"));
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), "app");
    let commit = repo.commit(
        "broken",
        &[(
            ".arkline/ci.yaml",
            "name: ci\nstages:\n  - name: s\n    stepz: []\n",
        )],
    );
    let port = git_daemon(&root.path().join("srv"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    engine
        .set_secret("forge-token", "t0ken")
        .await
        .expect("secret");
    engine
        .apply_settings(PipelineSettingSpec {
            forge: Some(ForgeSettings {
                kind: ForgeKind::Github,
                api_url: server.url("/gh"),
                token_secret: "forge-token".into(),
                repository: Some("acme/app".into()),
                target_url: None,
                stages: false,
            }),
            pipelines_from_repo: Some(RepoPipelines {
                repository: format!("git://127.0.0.1:{port}/app.git"),
                path: arkline::model::default_repo_path(),
                branches: arkline::model::Filter::default(),
                trusted_events: vec!["push".into()],
                untrusted_bizes: Vec::new(),
                webhook_secret: "hook".into(),
                credential: None,
            }),
            ..PipelineSettingSpec::default()
        })
        .await
        .expect("settings apply");
    let run = engine
        .run_from_repo(RepoEvent {
            event: "push".into(),
            branch: "main".into(),
            commit: commit.clone(),
            kind: arkline::model::TriggerKind::Webhook,
            ..RepoEvent::default()
        })
        .await
        .expect("the repository reads");
    assert_eq!(run.commit, commit);
    assert!(run.executions().is_empty(), "nothing runs");
    let [file] = &run.files[..] else {
        panic!("one file: {run:#?}")
    };
    let RepoOutcome::Invalid { message, .. } = &file.outcome else {
        panic!("invalid: {file:#?}")
    };
    assert!(message.contains("stepz"), "{message}");
    let sent = requests_for(&server, &commit, 1);
    assert_eq!(
        sent[0].target,
        format!("/gh/repos/acme/app/statuses/{commit}")
    );
    let status = body(&sent[0]);
    assert_eq!(status["state"], "error");
    assert_eq!(
        status["context"],
        "arkline/forge/.arkline/ci.yaml".replace("forge", engine.name())
    );
    assert!(
        status["description"]
            .as_str()
            .is_some_and(|d| d == ".arkline/ci.yaml:3: stage `s` is missing `steps`"),
        "{status}"
    );
    assert!(status.get("target_url").is_none());
    container.shutdown().await;
}
