//! `arkline serve` end to end: the real binary on 127.0.0.1, real data dirs, real
//! Wasm bizes. Deploy from a .arkc, install/switch/uninstall while an execution
//! runs, add and remove engines, auth (401/403), body caps and malformed
//! uploads, live step logs over SSE, SIGTERM, and a restart that restores the
//! deployment.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::server::{
    self, ADMIN, READER, Server, TEAM_A, arkc, eventually, faults, faults_as,
    faults_other_component, write_tokens,
};

const HOLD: &str = "name: hold\nstages:\n  - name: s\n    steps:\n      - name: wait\n        uses: faults/sleep\n        with: { ms: 600000 }\n";
const QUICK: &str = "name: quick\nparams:\n  - name: text\n    default: hi\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: \"${{ params.text }}\" }\n";

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            http: reqwest::Client::new(),
            url: server.url.clone(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let response = req.send().await.expect("the server answers");
        let status = response.status();
        let json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let text = response.text().await.expect("a body");
        let value = if text.is_empty() {
            Value::Null
        } else if json {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        } else {
            // `/metrics` answers Prometheus text; every other route answers JSON.
            assert!(
                text.starts_with("# HELP"),
                "a non-JSON answer that is not metrics: {text}"
            );
            Value::String(text)
        };
        (status, value)
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.call(Method::GET, path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn post_json(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn execution(&self, name: &str) -> Value {
        self.get(&format!("/api/v1/engines/team-a/executions/{name}"), READER)
            .await
    }

    async fn bizes(&self) -> Vec<(String, String, String, u64)> {
        let list = self.get("/api/v1/engines/team-a/bizes", READER).await;
        list.as_array()
            .expect("an array")
            .iter()
            .map(|b| {
                (
                    b["name"].as_str().expect("name").to_owned(),
                    b["version"].as_str().expect("version").to_owned(),
                    b["state"].as_str().expect("state").to_owned(),
                    b["leases"].as_u64().expect("leases"),
                )
            })
            .collect()
    }

    async fn engine_names(&self, token: &str) -> Vec<String> {
        self.get("/api/v1/engines", token)
            .await
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["name"].as_str().expect("name").to_owned())
            .collect()
    }

    async fn wait_finished(&self, name: &str) -> Value {
        eventually(&format!("{name} to finish"), || async {
            let e = self.execution(name).await;
            matches!(
                e["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed" | "Aborted")
            )
            .then_some(e)
        })
        .await
    }
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.len() > 20),
        "a message that explains: {body}"
    );
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_of_the_router() {
    let ops = arkline_cli::serve::api::operations();
    let doc = arkline_cli::serve::openapi::document(&ops);
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            documented.insert((method.to_uppercase(), path.clone()));
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            // Every `$ref` points at a schema the document has.
            let text = op.to_string();
            for piece in text.split("#/components/schemas/").skip(1) {
                let name = piece.split('"').next().expect("ref name");
                assert!(
                    doc["components"]["schemas"].get(name).is_some(),
                    "{method} {path} refers to missing schema {name}"
                );
            }
        }
    }
    let routed: BTreeSet<(String, String)> = ops
        .iter()
        .map(|o| (o.method.as_str().to_owned(), o.path.to_owned()))
        .collect();
    assert_eq!(documented, routed);
    assert_eq!(routed.len(), ops.len(), "one operation per method and path");
    for must in [
        ("POST", "/hooks/{engine}/{pipeline}"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/engines"),
        ("POST", "/api/v1/engines"),
        ("DELETE", "/api/v1/engines/{engine}"),
        ("POST", "/api/v1/engines/{engine}/bizes"),
        (
            "GET",
            "/api/v1/engines/{engine}/executions/{execution}/steps/{step}/logs",
        ),
        ("PUT", "/api/v1/engines/{engine}/secrets/{secret}"),
    ] {
        assert!(
            routed.contains(&(must.0.to_owned(), must.1.to_owned())),
            "{must:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_deploys_manages_and_restores_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path());
    let app = dir.path().join("app.arkc");
    std::fs::write(
        &app,
        arkc(
            "team-a",
            faults(),
            &[],
            &[("hold.yaml", HOLD), ("quick.yaml", QUICK)],
        ),
    )
    .expect("writes app.arkc");
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            app.to_str().expect("utf-8"),
            "--tokens",
            tokens.to_str().expect("utf-8"),
            "--max-upload",
            "1MiB",
        ],
    );
    let api = Api::new(&server);
    let version = server::faults_version().to_string();

    // Health needs no token; the API does.
    let (status, body) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = api.call(Method::GET, "/api/v1/engines", None, None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = api
        .call(
            Method::GET,
            "/api/v1/engines",
            Some("not-a-known-token-at-all"),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // The archive given on the command line is deployed.
    assert_eq!(api.engine_names(READER).await, ["team-a"]);
    assert_eq!(
        api.bizes().await,
        [("faults".into(), version.clone(), "activated".into(), 0)]
    );

    // A read token cannot write; a team-a token cannot touch another engine.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/pipelines",
            Some(READER),
            Some(QUICK.into()),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let team_b = arkc("team-b", faults(), &[], &[("quick.yaml", QUICK)]);
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines",
            Some(TEAM_A),
            Some(team_b.clone()),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("team-b")
    );

    // Add an engine from a .arkc, see it, remove it.
    let (status, body) = api
        .call(Method::POST, "/api/v1/engines", Some(ADMIN), Some(team_b))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["engines"][0]["name"], "team-b");
    assert_eq!(body["engines"][0]["pipelines"], 1);
    assert_eq!(api.engine_names(ADMIN).await, ["team-a", "team-b"]);
    assert_eq!(api.engine_names(TEAM_A).await, ["team-a"], "scoped listing");
    let (status, body) = api
        .call(
            Method::GET,
            "/api/v1/engines/team-b/bizes",
            Some(TEAM_A),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, _) = api
        .call(Method::DELETE, "/api/v1/engines/team-b", Some(ADMIN), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(api.engine_names(ADMIN).await, ["team-a"]);
    let (status, body) = api
        .call(
            Method::GET,
            "/api/v1/engines/team-b/bizes",
            Some(ADMIN),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // Oversize and malformed uploads are refused and change nothing.
    let before = api.bizes().await;
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/bizes",
            Some(TEAM_A),
            Some(vec![7u8; 3 << 20]),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("--max-upload")
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/bizes",
            Some(TEAM_A),
            Some(b"PK\x03\x04 this is not a zip".to_vec()),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_archive",
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines",
            Some(ADMIN),
            Some(b"garbage".to_vec()),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_archive",
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/bizes?grant=teleport",
            Some(TEAM_A),
            Some(faults_as("9.0.0")),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    // The same name@version with another component is a conflict, not a bad archive.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/bizes",
            Some(TEAM_A),
            Some(faults_other_component()),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    assert_eq!(api.bizes().await, before);
    assert_eq!(api.engine_names(ADMIN).await, ["team-a"]);

    // A pipeline that does not validate says where.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/pipelines",
            Some(TEAM_A),
            Some(b"name: broken\nstages:\n  - name: s\n    stepz: []\n".to_vec()),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_pipeline",
    );
    assert!(
        body["details"].as_array().is_some_and(|d| !d.is_empty()),
        "{body}"
    );

    // A step's `with:` that does not fit its installed biz's schema is refused
    // the same way, with the position inside `with:` (the schema's `$ref`s
    // followed: `via` is an enum).
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/pipelines",
            Some(TEAM_A),
            Some(
                b"name: flood\nstages:\n  - name: s\n    steps:\n      - name: f\n        uses: faults/log-flood\n        with: { lines: 1, bytes_per_line: 8, via: stdot }\n"
                    .to_vec(),
            ),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_pipeline",
    );
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("`via` must be one of"), "{body}");
    assert!(message.contains("pipeline.yaml:7:"), "{body}");

    // An execution holds faults@<version> while a new version is installed,
    // switched to and the old one uninstalled.
    let (status, hold) = api
        .post_json(
            "/api/v1/engines/team-a/pipelines/hold/executions",
            TEAM_A,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{hold}");
    let hold = hold["metadata"]["name"].as_str().expect("name").to_owned();
    eventually("the held execution to lease faults", || async {
        let running = api.execution(&hold).await["status"]["phase"] == "Running";
        let leased = api.bizes().await.iter().any(|b| b.1 == version && b.3 == 1);
        (running && leased).then_some(())
    })
    .await;
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/bizes?activate=false",
            Some(TEAM_A),
            Some(faults_as("9.0.0")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["version"].as_str(), body["state"].as_str()),
        (Some("9.0.0"), Some("resolved"))
    );
    let (status, body) = api
        .post_json(
            "/api/v1/engines/team-a/bizes/faults/switch",
            TEAM_A,
            json!({"version": "9.0.0"}),
        )
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("activated")),
        "{body}"
    );
    let (status, quick) = api
        .post_json(
            "/api/v1/engines/team-a/pipelines/quick/executions",
            TEAM_A,
            json!({"params": {"text": "abc"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{quick}");
    let quick = api
        .wait_finished(quick["metadata"]["name"].as_str().expect("name"))
        .await;
    assert_eq!(quick["status"]["phase"], "Succeeded", "{quick}");
    assert_eq!(quick["status"]["outputs"]["up"]["text"], "ABC");
    assert_eq!(
        quick["status"]["resolved"]["faults/upper"], "faults@9.0.0",
        "{quick}"
    );
    let (status, body) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/engines/team-a/bizes/faults/{version}"),
            Some(TEAM_A),
            None,
        )
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::ACCEPTED, Some("draining")),
        "{body}"
    );
    assert!(
        api.bizes()
            .await
            .contains(&("faults".into(), version.clone(), "draining".into(), 1))
    );
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/api/v1/engines/team-a/executions/{hold}/abort"),
            Some(TEAM_A),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.wait_finished(&hold).await["status"]["phase"], "Aborted");
    eventually("the drained version to go", || async {
        (api.bizes().await == [("faults".into(), "9.0.0".into(), "activated".into(), 0)])
            .then_some(())
    })
    .await;

    // Secrets are write-only.
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/engines/team-a/secrets/deploy-key",
            Some(TEAM_A),
            Some(
                json!({"value": "hunter2-very-secret"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let names = api.get("/api/v1/engines/team-a/secrets", READER).await;
    assert_eq!(names, json!({"names": ["deploy-key"]}));
    let (status, body) = api
        .call(
            Method::PUT,
            "/api/v1/engines/team-a/secrets/x",
            Some(TEAM_A),
            Some(b"{\"val\":1}".to_vec()),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // A pipeline is replaced under `If-Match` only if it has not changed
    // since it was read: the second of two editors gets a conflict.
    let read = api
        .get("/api/v1/engines/team-a/pipelines/quick", READER)
        .await;
    let seen = read["metadata"]["resource_version"]
        .as_u64()
        .expect("a resource version");
    let edit = |text: &str| {
        let http = reqwest::Client::new();
        let url = format!("{}/api/v1/engines/team-a/pipelines/quick", server.url);
        let body = QUICK.replace("default: hi", &format!("default: {text}"));
        async move {
            let resp = http
                .put(url)
                .bearer_auth(TEAM_A)
                .header("If-Match", format!("\"{seen}\""))
                .body(body)
                .send()
                .await
                .expect("answers");
            let status = resp.status();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    let (status, first) = edit("one").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(first["metadata"]["resource_version"].as_u64() > Some(seen));
    let (status, second) = edit("two").await;
    assert_error(status, &second, StatusCode::CONFLICT, "conflict");
    let now = api
        .get("/api/v1/engines/team-a/pipelines/quick", READER)
        .await;
    assert_eq!(now["spec"]["params"][0]["default"], "one", "{now}");

    // Every documented route reaches a handler (an answer other than `no_route`
    // or `method_not_allowed`), served as documented.
    let doc = api.get("/api/v1/openapi.json", READER).await;
    let ops = arkline_cli::serve::api::operations();
    assert_eq!(doc, arkline_cli::serve::openapi::document(&ops));
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            let concrete = path
                .replace("{engine}", "nope")
                .replace("{name}", "nope")
                .replace("{version}", "1.0.0")
                .replace(['{', '}'], "");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (status, body) = api
                .call(method.clone(), &concrete, Some(READER), None)
                .await;
            let code = body.get("code").and_then(Value::as_str).unwrap_or("");
            assert!(
                code != "no_route" && code != "method_not_allowed",
                "{method} {concrete}: {status} {body}"
            );
        }
    }
    let (status, body) = api
        .call(Method::GET, "/api/v1/nothing-here", Some(READER), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "no_route");
    let (status, body) = api
        .call(Method::PATCH, "/api/v1/engines", Some(READER), None)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // SIGTERM: a clean exit.
    let (status, stderr) = server.terminate();
    assert!(status.success(), "exit {status:?}; stderr: {stderr:#?}");
    assert_eq!(
        stderr.last().map(String::as_str),
        Some("stopped"),
        "{stderr:#?}"
    );

    // A restart on the same data dir (no archive given) comes back the same.
    let server = Server::start(&data, &["--tokens", tokens.to_str().expect("utf-8")]);
    let api = Api::new(&server);
    assert_eq!(api.engine_names(READER).await, ["team-a"]);
    assert_eq!(
        api.bizes().await,
        [("faults".into(), "9.0.0".into(), "activated".into(), 0)]
    );
    let pipelines = api.get("/api/v1/engines/team-a/pipelines", READER).await;
    let names: Vec<&str> = pipelines
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["hold", "quick"]);
    assert_eq!(api.execution(&hold).await["status"]["phase"], "Aborted");
    assert_eq!(
        api.get("/api/v1/engines/team-a/secrets", READER).await,
        json!({"names": ["deploy-key"]})
    );

    // An install that does not wait for the compile: 202 `installing`, then
    // the list shows it installed.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/bizes?wait=false&activate=false",
            Some(TEAM_A),
            Some(faults_as("9.1.0")),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        (&body["version"], &body["state"]),
        (&json!("9.1.0"), &json!("installing"))
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let bizes = api.bizes().await;
        let state = bizes.iter().find(|b| b.1 == "9.1.0").map(|b| b.2.clone());
        match state.as_deref() {
            Some("resolved") => break,
            Some("installing") | None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => panic!("9.1.0 should install, not activated: {other:?} in {bizes:?}"),
        }
    }
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/bizes?wait=soon",
            Some(TEAM_A),
            Some(faults_as("9.2.0")),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    let (status, _) = server.terminate();
    assert!(status.success());
}

const COUNT: &str = "name: count\nstages:\n  - name: s\n    steps:\n      - name: lines\n        uses: shell/run\n        with:\n          script: |\n            echo line-1\n            while [ ! -f go ]; do sleep 0.05; done\n            for i in 2 3 4 5 6; do echo \"line-$i\"; done\n";

/// `POST …/executions/{execution}/rerun`: a new execution of the same
/// pipeline with the same params, labelled with the one it reruns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_execution_reruns_with_its_params_over_http() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path());
    let app = dir.path().join("app.arkc");
    std::fs::write(
        &app,
        arkc("team-a", faults(), &[], &[("quick.yaml", QUICK)]),
    )
    .expect("writes app.arkc");
    let server = Server::start(
        &dir.path().join("data"),
        &[
            app.to_str().expect("utf-8"),
            "--tokens",
            tokens.to_str().expect("utf-8"),
        ],
    );
    let api = Api::new(&server);
    let (status, first) = api
        .post_json(
            "/api/v1/engines/team-a/pipelines/quick/executions",
            TEAM_A,
            json!({"params": {"text": "again"}, "branch": "main"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let first = first["metadata"]["name"].as_str().expect("name").to_owned();
    assert_eq!(
        api.wait_finished(&first).await["status"]["phase"],
        "Succeeded"
    );

    let rerun = format!("/api/v1/engines/team-a/executions/{first}/rerun");
    let (status, body) = api.call(Method::POST, &rerun, Some(TEAM_A), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let second = body["metadata"]["name"].as_str().expect("name").to_owned();
    assert_ne!(second, first);
    assert_eq!(body["spec"]["pipeline"], "quick", "{body}");
    assert_eq!(body["spec"]["params"], json!({"text": "again"}), "{body}");
    assert_eq!(body["spec"]["branch"], "main", "{body}");
    assert_eq!(
        body["metadata"]["labels"]["arkline.dev/rerun-of"], first,
        "{body}"
    );
    let done = api.wait_finished(&second).await;
    assert_eq!(done["status"]["phase"], "Succeeded", "{done}");
    assert_eq!(done["status"]["outputs"]["up"]["text"], "AGAIN", "{done}");

    // An unknown execution is named; a read token may not start one.
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/engines/team-a/executions/quick-99/rerun",
            Some(TEAM_A),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("quick-99")),
        "{body}"
    );
    let (status, body) = api.call(Method::POST, &rerun, Some(READER), None).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let listed = api.get("/api/v1/engines/team-a/executions", READER).await;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(2),
        "neither refusal started one: {listed}"
    );
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_logs_follow_live_over_sse_and_end_with_the_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shell = std::fs::read(arkline_testkit::plugin("shell")).expect("the shell archive reads");
    // Without tokens: allowed on loopback with --insecure-no-auth.
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--insecure-no-auth"]);
    let http = reqwest::Client::new();
    let url = &server.url;
    let deployed = http
        .post(format!("{url}/api/v1/engines"))
        .body(arkc(
            "team-a",
            &shell,
            &["process=sh"],
            &[("count.yaml", COUNT)],
        ))
        .send()
        .await
        .expect("deploys");
    assert_eq!(deployed.status(), StatusCode::CREATED);
    let exec: Value = http
        .post(format!(
            "{url}/api/v1/engines/team-a/pipelines/count/executions"
        ))
        .send()
        .await
        .expect("triggers")
        .json()
        .await
        .expect("json");
    let name = exec["metadata"]["name"].as_str().expect("name").to_owned();
    let logs = format!("{url}/api/v1/engines/team-a/executions/{name}/steps/lines/logs");
    let mut response = http
        .get(&logs)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("follows");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let mut text = String::new();
    let mut phase_when_first_line = None;
    while let Some(chunk) = response.chunk().await.expect("the stream reads") {
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        if phase_when_first_line.is_none() && text.contains("line-1") {
            let e: Value = http
                .get(format!("{url}/api/v1/engines/team-a/executions/{name}"))
                .send()
                .await
                .expect("gets")
                .json()
                .await
                .expect("json");
            phase_when_first_line = Some(e["status"]["phase"].as_str().expect("phase").to_owned());
            // The script waits for this file before its other lines.
            let workspace = data.join("workspaces/team-a").join(&name);
            std::fs::write(workspace.join("go"), b"").expect("releases the script");
        }
    }
    // The stream ended by itself: with the step, after an `end` event.
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty() && !e.starts_with(':'))
        .map(|e| {
            let field = |f: &str| {
                e.lines()
                    .find_map(|l| l.strip_prefix(f))
                    .map(|v| v.trim_start().to_owned())
                    .unwrap_or_default()
            };
            let data = serde_json::from_str(&field("data:")).expect("JSON data");
            (field("event:"), data)
        })
        .collect();
    let (last_kind, last) = events.last().expect("events");
    assert_eq!(last_kind, "end", "{text}");
    assert_eq!(last["phase"], "Succeeded");
    let lines: Vec<&Value> = events
        .iter()
        .filter(|(k, _)| k == "line")
        .map(|(_, v)| v)
        .collect();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().expect("message").trim_end())
        .filter(|m| m.starts_with("line-"))
        .collect();
    assert_eq!(
        messages,
        ["line-1", "line-2", "line-3", "line-4", "line-5", "line-6"]
    );
    let seqs: Vec<u64> = lines
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    // The first line arrived while the step was still blocked: the stream is live.
    assert_eq!(phase_when_first_line.as_deref(), Some("Running"));
    // Without follow: the same lines as a JSON array.
    let all: Vec<Value> = http
        .get(&logs)
        .send()
        .await
        .expect("reads")
        .json()
        .await
        .expect("json");
    assert_eq!(all.len(), lines.len());
    let (status, stderr) = server.terminate();
    assert!(status.success(), "{stderr:#?}");
}

#[test]
fn serve_refuses_to_start_without_tokens_or_off_loopback_without_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arkline"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tokens FILE"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arkline"))
        .args([
            "serve",
            "--insecure-no-auth",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only allowed on a loopback address"), "{err}");
    let tokens = dir.path().join("bad.toml");
    std::fs::write(
        &tokens,
        "[[tokens]]\nname='x'\ntoken='short'\nengines=['*']\naccess='read'\n",
    )
    .expect("writes");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_arkline"))
        .args(["serve", "--tokens"])
        .arg(&tokens)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shorter than 16"), "{err}");
    assert!(
        !data.exists(),
        "nothing is created when the server refuses to start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_only_this_machines_clients_are_served_not_web_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &["--insecure-no-auth"]);
    let http = reqwest::Client::new();
    let engines = format!("{}/api/v1/engines", server.url);
    let port = server.url.rsplit(':').next().expect("port").to_owned();
    let status = |resp: reqwest::Response| resp.status();
    // A local client (reqwest sends Host 127.0.0.1:PORT) is served.
    let ok = http.get(&engines).send().await.expect("answers");
    assert_eq!(status(ok), StatusCode::OK);
    let ok = http
        .get(&engines)
        .header("Host", format!("localhost:{port}"))
        .send()
        .await
        .expect("answers");
    assert_eq!(status(ok), StatusCode::OK);
    // A page that rebinds its own name to 127.0.0.1 sends that name.
    let rebound = http
        .get(&engines)
        .header("Host", format!("attacker.example:{port}"))
        .send()
        .await
        .expect("answers");
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    let body = rebound.text().await.expect("body");
    assert!(body.contains("loopback name"), "{body}");
    // A cross-site page's request carries its Origin (or Sec-Fetch-Site).
    let cross = http
        .post(format!("{}/api/v1/engines/team-a/bizes", server.url))
        .header("Origin", "http://attacker.example")
        .body(b"not even read".to_vec())
        .send()
        .await
        .expect("answers");
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    let cross = http
        .get(&engines)
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .expect("answers");
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    // The same origin is fine.
    let same = http
        .get(&engines)
        .header("Origin", server.url.clone())
        .send()
        .await
        .expect("answers");
    assert_eq!(same.status(), StatusCode::OK);
    let (exit, _) = server.terminate();
    assert!(exit.success());
}
