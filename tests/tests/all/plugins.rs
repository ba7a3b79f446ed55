//! The first-party plugins together, end to end on the embedded store: clone a
//! repository served by `git daemon` on 127.0.0.1 (`git`), run its tests
//! (`shell`), archive the result (`archive`), and notify a local webhook from
//! `finally` (`http`), with the webhook's token from a secret.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arkline::ExecOptions;
use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::{ExecutionPhase, PipelineExecution};
use arkline::{Container, TriggerRequest};

use arkline_testkit::git::{git, git_daemon};

const LIMIT: Duration = Duration::from_secs(180);

/// A request the webhook received: headers and body.
type Hook = (BTreeMap<String, String>, Vec<u8>);

/// A webhook on an ephemeral port answering 200 to every POST.
fn webhook() -> (u16, Arc<Mutex<Vec<Hook>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let length = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            recorded.lock().expect("lock").push((headers, body));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, seen)
}

fn ark(name: &str) -> Ark {
    Ark::open(arkline_testkit::plugin(name)).expect("the archive reads back")
}

fn output<'a>(exec: &'a PipelineExecution, step: &str, key: &str) -> &'a str {
    exec.status
        .outputs
        .get(step)
        .and_then(|o| o.get(key))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no output {step}.{key} in {:#?}", exec.status.outputs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_test_archive_and_notify() {
    // The repository under test: a script that checks the code and writes a report.
    let remote = tempfile::tempdir().expect("tempdir");
    let srv = remote.path().join("srv");
    std::fs::create_dir_all(&srv).expect("mkdir");
    git(&srv, &["init", "-q", "--bare", "-b", "main", "app.git"]);
    let work = remote.path().join("work");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("answer.txt"), "42\n").expect("write");
    std::fs::write(
        work.join("test.sh"),
        "set -e\ntest \"$(cat answer.txt)\" = 42\nmkdir -p build\necho 'all tests passed' > build/report.txt\ncp answer.txt build/\n",
    )
    .expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "app: answer"]);
    let commit = git(&work, &["rev-parse", "HEAD"]);
    git(
        &work,
        &[
            "push",
            "-q",
            srv.join("app.git").to_str().expect("utf-8"),
            "main",
        ],
    );
    let git_port = git_daemon(&srv);
    let (hook_port, hooks) = webhook();

    let data = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(data.path())
        .exec_options(ExecOptions {
            keep_workspaces: true,
            ..ExecOptions::default()
        })
        .build()
        .expect("container builds");
    let engine = container.engine("ci").await.expect("engine starts");
    let grants = [
        (
            "git",
            Capabilities {
                process: vec!["git".into()],
                // The repository is served on 127.0.0.1.
                process_net: true,
                ..Capabilities::default()
            },
        ),
        (
            "shell",
            Capabilities {
                process: vec!["sh".into()],
                ..Capabilities::default()
            },
        ),
        ("archive", Capabilities::default()),
        (
            "arkline-http",
            Capabilities {
                http: vec!["127.0.0.1".into()],
                ..Capabilities::default()
            },
        ),
    ];
    for (name, grant) in grants {
        engine.install(ark(name), &grant).await.expect("installs");
    }
    let token = "hook-token-7f3a";
    engine
        .set_secret("hook_token", token)
        .await
        .expect("secret");

    let yaml = format!(
        r#"
name: app-ci
secrets: [hook_token]
stages:
  - name: checkout
    steps:
      - name: source
        uses: git/clone
        with: {{ url: "git://127.0.0.1:{git_port}/app.git", ref: main, depth: 1, path: src }}
  - name: test
    steps:
      - name: test
        uses: shell
        with:
          working_dir: src
          script: |
            sh ./test.sh
            echo "result=passed" >> "$ARKLINE_OUTPUT"
  - name: package
    steps:
      - name: package
        uses: archive/pack
        with: {{ paths: [build], working_dir: src, output: dist/app.tar.gz, prefix: "app-${{{{ steps.source.outputs.short_sha }}}}" }}
finally:
  - name: notify
    uses: http/notify
    with:
      url: "http://127.0.0.1:{hook_port}/hook"
      message: "{{{{ arkline.pipeline }}}} {{{{ commit }}}}: tests {{{{ result }}}}, archive {{{{ sha }}}}"
      values:
        commit: "${{{{ steps.source.outputs.short_sha }}}}"
        result: "${{{{ steps.test.outputs.result }}}}"
        sha: "${{{{ steps.package.outputs.sha256 }}}}"
      headers: {{ authorization: "Bearer ${{{{ secrets.hook_token }}}}" }}
"#
    );
    let pipeline = engine
        .apply_pipeline_yaml("app-ci.yaml", &yaml)
        .await
        .unwrap_or_else(|e| panic!("pipeline applies: {e}"));
    let exec = engine
        .trigger(&pipeline.metadata.name, TriggerRequest::manual())
        .await
        .expect("trigger");
    let exec = tokio::time::timeout(LIMIT, engine.wait(&exec.metadata.name))
        .await
        .expect("the execution finishes in time")
        .expect("wait");
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );

    assert_eq!(output(&exec, "source", "commit"), commit);
    assert_eq!(output(&exec, "source", "branch"), "main");
    assert_eq!(output(&exec, "test", "result"), "passed");
    let short = output(&exec, "source", "short_sha");
    assert!(commit.starts_with(short));

    // The archive in the kept workspace is the one whose digest was output.
    let workspace = data.path().join("workspaces/ci").join(&exec.metadata.name);
    let digest = Command::new("sha256sum")
        .arg("dist/app.tar.gz")
        .current_dir(&workspace)
        .output()
        .expect("sha256sum");
    let digest = String::from_utf8_lossy(&digest.stdout);
    let sha = digest
        .split_whitespace()
        .next()
        .expect("a digest")
        .to_owned();
    assert_eq!(output(&exec, "package", "sha256"), sha);
    let listing = Command::new("tar")
        .args(["-tzf", "dist/app.tar.gz"])
        .current_dir(&workspace)
        .output()
        .expect("tar");
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        format!(
            "app-{short}/\napp-{short}/build/\napp-{short}/build/answer.txt\napp-{short}/build/report.txt\n"
        )
    );

    let hooks = hooks.lock().expect("lock").clone();
    assert_eq!(hooks.len(), 1, "one notification");
    let (headers, body) = &hooks[0];
    assert_eq!(headers["authorization"], format!("Bearer {token}"));
    let body: serde_json::Value = serde_json::from_slice(body).expect("JSON payload");
    assert_eq!(
        body,
        serde_json::json!({ "text": format!("app-ci {short}: tests passed, archive {sha}") })
    );
    let log = engine
        .logs(&exec.metadata.name, "notify")
        .await
        .expect("notify log");
    assert!(log.iter().all(|l| !l.message.contains(token)), "{log:#?}");
    container.shutdown().await;
}
