//! Lists and watches in Kubernetes' manner over the admin API: label
//! selectors, `limit`/`continue` pages, `watch=true` streams (JSON lines and
//! server-sent events) from a `resourceVersion`, `410 Gone` for a compacted
//! one, `If-Match` preconditions, and `ctl exec list --watch`.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::server::{Server, arkc, faults};

const QUICK: &str = "name: quick\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: hi }\n";
const OTHER: &str = "name: other\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: ho }\n";
const LIMIT: Duration = Duration::from_secs(120);

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("answers");
        let (status, headers) = (r.status(), r.headers().clone());
        let body = r.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    async fn trigger(&self, pipeline: &str) -> Value {
        let r = self
            .http
            .post(format!(
                "{}/api/v1/engines/team-a/pipelines/{pipeline}/executions",
                self.base
            ))
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("answers");
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.expect("json")
    }

    /// Waits for every execution to finish.
    async fn settle(&self) {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let (_, _, list) = self.get("/api/v1/engines/team-a/executions").await;
            let running =
                list.as_array().expect("array").iter().any(|e| {
                    !matches!(e["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                });
            if !running {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{list:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|e| e["metadata"]["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_filter_and_watch_like_kubernetes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &["--insecure-no-auth"]);
    let client = Client {
        http: reqwest::Client::new(),
        base: server.url.clone(),
    };
    let deployed = client
        .http
        .post(format!("{}/api/v1/engines", server.url))
        .body(arkc(
            "team-a",
            faults(),
            &[],
            &[("quick.yaml", QUICK), ("other.yaml", OTHER)],
        ))
        .send()
        .await
        .expect("deploys");
    assert_eq!(deployed.status(), StatusCode::CREATED);
    for _ in 0..3 {
        client.trigger("quick").await;
    }
    client.trigger("other").await;
    client.settle().await;

    // Pages of two, newest first, then the rest; each with the revision.
    let (status, headers, first) = client
        .get("/api/v1/engines/team-a/executions?limit=2")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(names(&first), ["other-1", "quick-3"]);
    let revision: u64 = headers["x-resource-version"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a revision");
    assert!(revision > 0);
    let token = headers["x-continue"].to_str().expect("ascii").to_owned();
    let (_, headers, second) = client
        .get(&format!(
            "/api/v1/engines/team-a/executions?limit=2&continue={token}"
        ))
        .await;
    assert_eq!(names(&second), ["quick-2", "quick-1"]);
    assert!(!headers.contains_key("x-continue"), "the last page");
    // A label selector (and `pipeline=`, its shorthand).
    let (_, _, quick) = client
        .get("/api/v1/engines/team-a/executions?labelSelector=arkline.dev/pipeline%3Dquick")
        .await;
    assert_eq!(names(&quick), ["quick-3", "quick-2", "quick-1"]);
    let (_, _, not_quick) = client
        .get("/api/v1/engines/team-a/executions?labelSelector=arkline.dev/pipeline!%3Dquick")
        .await;
    assert_eq!(names(&not_quick), ["other-1"]);
    let (_, _, pipelines) = client.get("/api/v1/engines/team-a/pipelines?limit=1").await;
    assert_eq!(names(&pipelines), ["other"]);
    // Mistakes are named.
    for (query, words) in [
        ("limit=0", "`limit=0`"),
        ("continue=abc", "not a token this server gave"),
        ("labelSelector=%3D%3Dx", "`labelSelector=="),
        ("watch=true&limit=3", "takes no `limit`"),
        ("sort=name", "unknown query parameter `sort`"),
    ] {
        let (status, _, body) = client
            .get(&format!("/api/v1/engines/team-a/executions?{query}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(
            body["message"].as_str().expect("message").contains(words),
            "{query}: {body}"
        );
    }

    // A watch of JSON lines from that revision sees the next execution of
    // `quick` (and none of `other`) go from creation to `Succeeded`.
    let watch = client
        .http
        .get(format!(
            "{}/api/v1/engines/team-a/executions?watch=true&pipeline=quick&resourceVersion={revision}",
            server.url
        ))
        .send()
        .await
        .expect("watches");
    assert_eq!(watch.status(), StatusCode::OK);
    assert_eq!(watch.headers()["content-type"], "application/x-ndjson");
    client.trigger("other").await;
    client.trigger("quick").await;
    let mut body = watch.bytes_stream();
    let mut buf = Vec::new();
    let mut seen: Vec<(String, String, String)> = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk.expect("chunk"));
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let event: Value = serde_json::from_slice(&line).expect("a JSON line");
                let object = &event["object"];
                seen.push((
                    event["type"].as_str().expect("type").to_owned(),
                    object["metadata"]["name"]
                        .as_str()
                        .expect("name")
                        .to_owned(),
                    object["status"]["phase"].as_str().unwrap_or("").to_owned(),
                ));
                if object["status"]["phase"] == "Succeeded" {
                    return;
                }
            }
        }
        panic!("the watch ended: {seen:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no Succeeded in {seen:?}"));
    assert_eq!(seen[0].0, "ADDED", "{seen:?}");
    assert!(seen.iter().all(|s| s.1 == "quick-4"), "{seen:?}");
    assert!(seen[1..].iter().all(|s| s.0 == "MODIFIED"), "{seen:?}");
    drop(body);

    // Server-sent events without a revision: the executions as they are.
    let sse = client
        .http
        .get(format!(
            "{}/api/v1/engines/team-a/pipelines?watch=true",
            server.url
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("watches");
    assert_eq!(sse.status(), StatusCode::OK);
    let mut body = sse.bytes_stream();
    let mut text = String::new();
    tokio::time::timeout(LIMIT, async {
        while !(text.contains("\"name\":\"quick\"") && text.contains("\"name\":\"other\"")) {
            let chunk = body.next().await.expect("more").expect("chunk");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{text}"));
    assert!(text.contains("event: ADDED"), "{text}");
    assert!(text.contains("\nid: "), "{text}");
    drop(body);

    // Preconditions: a stale `If-Match` deletes nothing.
    let (_, _, pipeline) = client.get("/api/v1/engines/team-a/pipelines/other").await;
    let version = pipeline["metadata"]["resource_version"]
        .as_u64()
        .expect("a version");
    let delete = |v: u64| {
        client
            .http
            .delete(format!(
                "{}/api/v1/engines/team-a/pipelines/other",
                server.url
            ))
            .header("if-match", format!("\"{v}\""))
            .send()
    };
    assert_eq!(
        delete(version - 1).await.expect("answers").status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        delete(version).await.expect("answers").status(),
        StatusCode::NO_CONTENT
    );
    // Settings: the ETag as read; a stale one is a conflict.
    let r = client
        .http
        .get(format!("{}/api/v1/engines/team-a/settings", server.url))
        .send()
        .await
        .expect("answers");
    let etag = r.headers()["etag"].to_str().expect("ascii").to_owned();
    let settings: Value = r.json().await.expect("json");
    let put = |tag: String| {
        client
            .http
            .put(format!("{}/api/v1/engines/team-a/settings", server.url))
            .header("if-match", tag)
            .json(&settings)
            .send()
    };
    let first = put(etag.clone()).await.expect("answers");
    assert_eq!(first.status(), StatusCode::OK);
    assert_ne!(first.headers()["etag"].to_str().expect("ascii"), etag);
    let stale = put(etag).await.expect("answers");
    assert_eq!(stale.status(), StatusCode::CONFLICT);

    // `ctl exec list --watch` prints the list, then each change.
    let mut ctl = std::process::Command::new(env!("CARGO_BIN_EXE_arkline"))
        .args(["ctl", "exec", "list", "--watch"])
        .env("ARKLINE_SERVER", &server.url)
        .env("ARKLINE_ENGINE", "team-a")
        .env_remove("ARKLINE_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctl runs");
    let stdout = ctl.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.expect("a line")).is_err() {
                return;
            }
        }
    });
    let next = |seen: &mut Vec<String>| {
        let line = rx
            .recv_timeout(LIMIT)
            .unwrap_or_else(|e| panic!("ctl printed no more ({e}): {seen:#?}"));
        seen.push(line.clone());
        line
    };
    // The list: a header, then the executions newest first, down to quick-1.
    let mut seen = Vec::new();
    assert!(next(&mut seen).starts_with("NAME"), "{seen:#?}");
    while !next(&mut seen).starts_with("quick-1 ") {}
    // Then the watch: a new execution, printed as it changes, to its end.
    client.trigger("quick").await;
    loop {
        let line = next(&mut seen);
        if line.starts_with("quick-5 ") && line.contains("Succeeded") {
            break;
        }
        assert!(line.starts_with("quick-5 "), "{seen:#?}");
    }
    let _ = ctl.kill();
    let _ = ctl.wait();
    let (status, _) = server.terminate();
    assert!(status.success());
}
