//! The pipeline's `source`: checked out by the host into the workspace before
//! the first step, from real repositories served over `git http-backend`
//! (with HTTP Basic credentials) and `git daemon` on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::{ExecutionPhase, PipelineExecution, SourceStatus};
use arkline::{Container, Engine, ExecOptions, TriggerRequest};
use base64::Engine as _;

use arkline_testkit::git::{Repo, git, git_daemon, git_http};

const LIMIT: Duration = Duration::from_secs(180);

async fn run(engine: &Engine, pipeline: &str, request: TriggerRequest) -> PipelineExecution {
    let exec = engine.trigger(pipeline, request).await.expect("trigger");
    tokio::time::timeout(LIMIT, engine.wait(&exec.metadata.name))
        .await
        .expect("the execution finishes in time")
        .expect("wait")
}

/// Every file under `dir` (`.git` included), read whole.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                out.push((path.clone(), std::fs::read(&path).expect("read")));
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn shell_engine(data: &Path) -> (Container, Engine) {
    let container = Container::builder()
        .data_dir(data)
        .exec_options(ExecOptions {
            keep_workspaces: true,
            ..ExecOptions::default()
        })
        .build()
        .expect("container builds");
    let engine = container.engine("ci").await.expect("engine starts");
    let shell = Ark::open(arkline_testkit::plugin("shell")).expect("the archive reads back");
    engine
        .install(
            shell,
            &Capabilities {
                process: vec!["sh".into()],
                ..Capabilities::default()
            },
        )
        .await
        .expect("installs");
    (container, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_source_is_checked_out_at_the_recorded_commit_with_the_credential_nowhere() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), "app");
    let first = repo.commit("first", &[("answer.txt", "42\n")]);
    let second = repo.commit("second", &[("answer.txt", "43\n"), ("docs/a.md", "a\n")]);
    let token = "s3cr3t-t0ken-9c1d7e";
    let (port, seen) = git_http(&root.path().join("srv"), "x-access-token", token);

    let data = tempfile::tempdir().expect("tempdir");
    let (container, engine) = shell_engine(data.path()).await;
    engine.set_secret("git_cred", token).await.expect("secret");
    let url = format!("http://127.0.0.1:{port}/app.git");
    let yaml = format!(
        r#"
name: app
secrets: [git_cred]
source: {{ repository: "{url}", branch: main, credential: git_cred }}
stages:
  - name: test
    steps:
      - name: look
        uses: shell
        with:
          script: |
            cp answer.txt seen.txt
            env > env.txt
            echo "answer $(cat answer.txt)"
"#
    );
    engine
        .apply_pipeline_yaml("app.yaml", &yaml)
        .await
        .unwrap_or_else(|e| panic!("pipeline applies: {e}"));

    // An execution for a given commit: that commit, though the branch has
    // moved on.
    let at_first = run(
        &engine,
        "app",
        TriggerRequest {
            commit: first.clone(),
            branch: "main".into(),
            ..TriggerRequest::manual()
        },
    )
    .await;
    assert_eq!(
        at_first.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        at_first.status
    );
    assert_eq!(
        at_first.status.source,
        Some(SourceStatus {
            repository: url.clone(),
            commit: first.clone(),
            branch: "main".into(),
        })
    );
    let ws_first = data
        .path()
        .join("workspaces/ci")
        .join(&at_first.metadata.name);
    assert_eq!(
        std::fs::read_to_string(ws_first.join("seen.txt")).expect("the step saw the file"),
        "42\n"
    );
    assert_eq!(git(&ws_first, &["rev-parse", "HEAD"]), first);
    assert_eq!(
        git(&ws_first, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "main"
    );
    assert_eq!(git(&ws_first, &["remote", "get-url", "origin"]), url);

    // An execution without a commit: the branch's head, resolved and
    // recorded; one commit of history (shallow by default).
    let at_head = run(&engine, "app", TriggerRequest::manual()).await;
    assert_eq!(
        at_head.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        at_head.status
    );
    let recorded = at_head.status.source.clone().expect("recorded");
    assert_eq!(recorded.commit, second);
    assert_eq!(recorded.branch, "main");
    let ws_head = data
        .path()
        .join("workspaces/ci")
        .join(&at_head.metadata.name);
    assert_eq!(
        std::fs::read_to_string(ws_head.join("seen.txt")).expect("seen"),
        "43\n"
    );
    assert!(ws_head.join("docs/a.md").is_file());
    assert_eq!(git(&ws_head, &["rev-list", "--count", "HEAD"]), "1");

    // The credential: sent as the Authorization header, and nowhere else.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    {
        let seen = seen.lock().expect("lock");
        assert!(
            seen.requests.iter().all(|(_, _, ok)| *ok),
            "every request carried the credential: {:?}",
            seen.requests
        );
        assert!(!seen.requests.is_empty());
    }
    for ws in [&ws_first, &ws_head] {
        for (path, bytes) in files(ws) {
            assert!(
                !contains(&bytes, token) && !contains(&bytes, &basic),
                "{} holds the credential",
                path.display()
            );
        }
    }
    for exec in [&at_first, &at_head] {
        let text = serde_json::to_string(exec).expect("json");
        assert!(!text.contains(token) && !text.contains(&basic));
        for step in ["@source", "look"] {
            let log = engine
                .logs(&exec.metadata.name, step)
                .await
                .expect("the log reads");
            assert!(!log.is_empty(), "{step} has a log");
            for line in &log {
                assert!(
                    !line.message.contains(token) && !line.message.contains(&basic),
                    "{line:?}"
                );
            }
        }
    }
    let source_log = engine
        .logs(&at_head.metadata.name, "@source")
        .await
        .expect("log");
    assert!(
        source_log.iter().any(|l| l
            .message
            .contains(&format!("checked out {url} at {second}"))),
        "{source_log:#?}"
    );

    // A wrong credential: the execution fails before its first step, saying
    // why, and the wrong value is in no message either.
    engine
        .set_secret("git_cred", "not-the-token-55")
        .await
        .expect("secret");
    let refused = run(&engine, "app", TriggerRequest::manual()).await;
    assert_eq!(refused.status.phase, ExecutionPhase::Failed);
    assert!(
        refused.status.reason.starts_with("source: "),
        "{}",
        refused.status.reason
    );
    assert!(!refused.status.reason.contains("not-the-token-55"));
    let step = &refused.status.stages[0].steps[0];
    assert_eq!(
        (step.phase, step.attempts),
        (arkline::model::StepPhase::Skipped, 0),
        "no step ran"
    );
    assert!(
        refused
            .status
            .reason
            .contains("refused the credential in secret `git_cred`"),
        "{}",
        refused.status.reason
    );
    assert!(refused.status.source.is_none());
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_source_over_git_daemon_with_its_whole_history() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(root.path(), "lib");
    repo.commit("one", &[("n.txt", "1\n")]);
    let two = repo.commit("two", &[("n.txt", "2\n")]);
    let port = git_daemon(&root.path().join("srv"));

    let data = tempfile::tempdir().expect("tempdir");
    let (container, engine) = shell_engine(data.path()).await;
    let yaml = format!(
        r#"
name: lib
source: {{ repository: "git://127.0.0.1:{port}/lib.git", depth: 0 }}
stages:
  - name: test
    steps:
      - name: count
        uses: shell
        with:
          script: test "$(cat n.txt)" = 2
"#
    );
    engine
        .apply_pipeline_yaml("lib.yaml", &yaml)
        .await
        .unwrap_or_else(|e| panic!("pipeline applies: {e}"));
    let exec = run(&engine, "lib", TriggerRequest::manual()).await;
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );
    let source = exec.status.source.clone().expect("recorded");
    assert_eq!(source.commit, two);
    assert_eq!(source.branch, "", "the remote's default branch, not named");
    let ws = data.path().join("workspaces/ci").join(&exec.metadata.name);
    assert_eq!(git(&ws, &["rev-list", "--count", "HEAD"]), "2");
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_url_with_a_credential_in_it_is_refused_when_applied() {
    let data = tempfile::tempdir().expect("tempdir");
    let (container, engine) = shell_engine(data.path()).await;
    let yaml = r#"
name: leaky
source: { repository: "https://user:pw@git.example.com/a.git", branch: "-x" }
stages:
  - name: s
    steps:
      - { name: s, uses: shell, with: { script: "true" } }
"#;
    let err = engine
        .apply_pipeline_yaml("leaky.yaml", yaml)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("holds a credential in its URL") && err.contains("source.credential"),
        "{err}"
    );
    assert!(err.contains("`-x` is not a valid branch name"), "{err}");
    container.shutdown().await;
}
