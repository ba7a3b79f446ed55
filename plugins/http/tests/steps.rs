//! The `http` component in the real isolation runtime, against a real server on
//! 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arkline_testkit::{CallContext, Capabilities, Harness, StepCall, StepFailure, StepReport};
use serde_json::{Value, json};

/// A request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

type Handler = dyn Fn(usize, &Seen) -> (u16, Vec<u8>) + Send + Sync;

/// An HTTP/1.1 server on an ephemeral port, one thread per connection, closing
/// each connection after one answer. The handler gets the request's number.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(handler: impl Fn(usize, &Seen) -> (u16, Vec<u8>) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let count = Arc::new(AtomicUsize::new(0));
        let recorded = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, recorded, count) = (handler.clone(), recorded.clone(), count.clone());
                std::thread::spawn(move || serve(stream, &*handler, &recorded, &count));
            }
        });
        Server { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<Seen>>, count: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    let request = Seen {
        method,
        target,
        headers,
        body,
    };
    let n = count.fetch_add(1, Ordering::SeqCst);
    seen.lock().expect("lock").push(request.clone());
    let (status, body) = handler(n, &request);
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

fn http() -> Harness {
    Harness::current_crate(env!("CARGO_MANIFEST_DIR")).grant(Capabilities {
        http: vec!["127.0.0.1".into()],
        ..Capabilities::default()
    })
}

fn run(h: &Harness, workspace: &Path, step: &str, config: Value) -> StepReport {
    let context = CallContext {
        pipeline: "web".into(),
        run: 12,
        ..CallContext::default()
    };
    h.call(
        StepCall::new(step, config)
            .workspace(workspace)
            .context(context),
    )
}

fn failed(report: &StepReport) -> String {
    match &report.result {
        Err(StepFailure::Failed(message)) => message.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn request_outputs_status_json_fields_and_saves_the_body() {
    let server = Server::start(|_, _| {
        (
            200,
            br#"{"data":{"id":"r-42","items":[{"n":1},{"n":2}]},"ok":true}"#.to_vec(),
        )
    });
    let ws = tempfile::tempdir().expect("tempdir");
    std::fs::write(ws.path().join("payload.bin"), b"file body").expect("write");
    let report = run(
        &http(),
        ws.path(),
        "request",
        json!({
            "method": "put",
            "url": server.url("/v1/things?token=abc"),
            "headers": { "authorization": "Bearer s3cret" },
            "body_file": "payload.bin",
            "outputs": { "id": "/data/id", "second": "/data/items/1", "ok": "/ok" },
            "save_to": "out/response.json",
        }),
    );
    let out = report.outputs().expect("request succeeds");
    assert_eq!(
        report.biz, "http@0.1.0",
        "the biz is `http` (the crate is arkline-http)"
    );
    assert_eq!(out["status"], "200");
    assert_eq!(out["id"], "r-42");
    assert_eq!(out["second"], r#"{"n":2}"#);
    assert_eq!(out["ok"], "true");
    assert_eq!(out["path"], "out/response.json");
    assert!(
        std::fs::read_to_string(ws.path().join("out/response.json"))
            .expect("saved")
            .contains("r-42")
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen[0].target, "/v1/things?token=abc");
    assert_eq!(seen[0].headers["authorization"], "Bearer s3cret");
    assert_eq!(seen[0].body, b"file body");
    let log = report.log.text();
    assert!(!log.contains("s3cret"), "{log}");
    assert!(!log.contains("token=abc"), "{log}");
}

#[test]
fn request_retries_on_503_until_it_succeeds() {
    let server = Server::start(|n, _| {
        if n < 2 {
            (503, b"busy".to_vec())
        } else {
            (201, b"{}".to_vec())
        }
    });
    let ws = tempfile::tempdir().expect("tempdir");
    let report = run(
        &http(),
        ws.path(),
        "request",
        json!({ "method": "POST", "url": server.url("/deploy"), "json": { "v": 1 },
                "retries": 3, "retry_delay": "10ms", "expect_status": [201] }),
    );
    let out = report.outputs().expect("succeeds on the third attempt");
    assert_eq!(out["status"], "201");
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body == br#"{"v":1}"#));
    assert_eq!(seen[0].headers["content-type"], "application/json");
}

#[test]
fn request_fails_with_the_last_status_when_retries_run_out_and_never_retries_a_4xx() {
    let server = Server::start(|_, s| {
        if s.target == "/missing" {
            (404, b"no such thing".to_vec())
        } else {
            (503, b"busy".to_vec())
        }
    });
    let ws = tempfile::tempdir().expect("tempdir");
    let message = failed(&run(
        &http(),
        ws.path(),
        "request",
        json!({ "url": server.url("/busy"), "retries": 1, "retry_delay": "10ms" }),
    ));
    assert!(
        message.contains("expected a 2xx status, got status 503: busy"),
        "{message}"
    );
    assert!(message.contains("after 2 attempts"), "{message}");

    let message = failed(&run(
        &http(),
        ws.path(),
        "request",
        json!({ "url": server.url("/missing"), "retries": 5, "retry_delay": "10ms" }),
    ));
    assert!(
        message.contains("got status 404: no such thing"),
        "{message}"
    );
    assert_eq!(
        server
            .seen()
            .iter()
            .filter(|s| s.target == "/missing")
            .count(),
        1
    );
}

#[test]
fn a_response_over_max_response_bytes_fails() {
    let server = Server::start(|_, _| (200, vec![b'x'; 5000]));
    let ws = tempfile::tempdir().expect("tempdir");
    let message = failed(&run(
        &http(),
        ws.path(),
        "request",
        json!({ "url": server.url("/big"), "max_response_bytes": 1000, "save_to": "big.bin" }),
    ));
    assert!(
        message.contains("5000 bytes, larger than max_response_bytes (1000)"),
        "{message}"
    );
    assert!(!ws.path().join("big.bin").exists());
}

#[test]
fn a_host_outside_the_grant_is_refused() {
    let server = Server::start(|_, _| (200, b"{}".to_vec()));
    let ws = tempfile::tempdir().expect("tempdir");
    // `localhost` reaches the same server, but only 127.0.0.1 is granted.
    let message = failed(&run(
        &http(),
        ws.path(),
        "request",
        json!({ "url": format!("http://localhost:{}/", server.port), "retries": 3 }),
    ));
    assert!(message.contains("denied"), "{message}");
    assert!(message.contains("localhost"), "{message}");
    // No grant at all: the biz's `http: *` request alone reaches nothing.
    let ungranted = Harness::current_crate(env!("CARGO_MANIFEST_DIR"));
    let message = failed(&run(
        &ungranted,
        ws.path(),
        "request",
        json!({ "url": server.url("/") }),
    ));
    assert!(message.contains("capability `http` denied"), "{message}");
    assert!(server.seen().is_empty());
}

#[test]
fn notify_posts_the_templated_payload() {
    let server = Server::start(|_, _| (204, Vec::new()));
    let ws = tempfile::tempdir().expect("tempdir");
    let report = run(
        &http(),
        ws.path(),
        "notify",
        json!({
            "url": server.url("/hook"),
            "message": "{{ arkline.pipeline }} #{{ arkline.run }}: {{ state }}",
            "values": { "state": "Succeeded", "sha": "abc123" },
            "payload": { "text": "{{ message }}", "fields": [{ "commit": "{{ sha }}" }], "n": 3 },
        }),
    );
    assert_eq!(report.outputs().expect("notify succeeds")["status"], "204");
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let body: Value = serde_json::from_slice(&seen[0].body).expect("json payload");
    assert_eq!(
        body,
        json!({ "text": "web #12: Succeeded", "fields": [{ "commit": "abc123" }], "n": 3 })
    );

    // The default payload is `{"text": message}`.
    run(
        &http(),
        ws.path(),
        "notify",
        json!({ "url": server.url("/hook"), "message": "plain" }),
    )
    .outputs()
    .expect("notify succeeds");
    let body: Value = serde_json::from_slice(&server.seen()[1].body).expect("json");
    assert_eq!(body, json!({ "text": "plain" }));
}

#[test]
fn bad_configuration_names_the_field() {
    let ws = tempfile::tempdir().expect("tempdir");
    for (step, config, field, expected) in [
        (
            "request",
            json!({ "url": "ftp://x/" }),
            "url",
            "not an absolute http",
        ),
        (
            "request",
            json!({ "url": "http://x/", "body": "a", "json": {} }),
            "body",
            "at most one",
        ),
        (
            "request",
            json!({ "url": "http://x/", "outputs": { "id": "data.id" } }),
            "outputs.id",
            "not a JSON pointer",
        ),
        (
            "request",
            json!({ "url": "http://x/", "timeout": "soon" }),
            "timeout",
            "not a duration",
        ),
        (
            "request",
            json!({ "url": "http://x/", "method": "GE T" }),
            "method",
            "not an HTTP method",
        ),
        (
            "notify",
            json!({ "url": "http://x/", "message": "{{ nope }}" }),
            "message",
            "undefined",
        ),
    ] {
        match &run(&http(), ws.path(), step, config).result {
            Err(StepFailure::InvalidConfig { field: f, message }) => {
                assert_eq!(f.as_deref(), Some(field), "{message}");
                assert!(message.contains(expected), "{field}: {message}");
            }
            other => panic!("expected invalid-config on {field}, got {other:?}"),
        }
    }
}
