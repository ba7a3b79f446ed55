//! Three `arkline serve` nodes on one etcd prefix: the engine's leader
//! spreads 300 executions of three pipelines over them, and when a node is SIGKILLed mid-step
//! (here the leader itself), another node is elected, admits its executions
//! again once its lease has ended, and they finish there. A counting HTTP
//! server on loopback sees every step run: none runs on two nodes at once,
//! and the steps of executions no kill touched run exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arkline_testkit::etcd::EtcdServer;
use serde_json::{Value, json};

use crate::etcd_store::registered;
use crate::support::server::{Server, arkc, eventually};

/// Executions in the three-node test.
const EXECUTIONS: usize = 300;

/// How long the counting server holds the `hold` step's request.
const HOLD: Duration = Duration::from_millis(1500);

/// What the counting server saw: when each `<id>/<step>` request arrived,
/// and which `hold` requests are being answered now.
#[derive(Debug, Default)]
struct Hits {
    started: Vec<(String, Instant)>,
    holding: BTreeSet<String>,
}

/// A loopback HTTP server that records every step's request.
async fn counting_server() -> (u16, Arc<Mutex<Hits>>) {
    use axum::extract::{Path, State};
    let hits = Arc::new(Mutex::new(Hits::default()));
    let app =
        axum::Router::new()
            .route(
                "/{id}/{step}",
                axum::routing::get(
                    |State(hits): State<Arc<Mutex<Hits>>>,
                     Path((id, step)): Path<(String, String)>| async move {
                        let key = format!("{id}/{step}");
                        {
                            let mut h = hits.lock().unwrap_or_else(|p| p.into_inner());
                            h.started.push((key.clone(), Instant::now()));
                            if step == "hold" {
                                h.holding.insert(id.clone());
                            }
                        }
                        if step == "hold" {
                            tokio::time::sleep(HOLD).await;
                            hits.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .holding
                                .remove(&id);
                        }
                        "counted"
                    },
                ),
            )
            .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, hits)
}

/// Triggers `pipeline` of `team-a` through the node at `url` with `body`;
/// the execution's name.
pub(crate) async fn trigger(
    http: &reqwest::Client,
    url: &str,
    pipeline: &str,
    body: Value,
) -> String {
    let created: Value = http
        .post(format!(
            "{url}/api/v1/engines/team-a/pipelines/{pipeline}/executions"
        ))
        .json(&body)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    created["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("no execution: {created:#}"))
        .to_owned()
}

async fn get(http: &reqwest::Client, url: String) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_the_executions_and_finish_a_killed_nodes() {
    let etcd = EtcdServer::start();
    let (port, hits) = counting_server().await;
    let step = |name: &str| {
        format!(
            "      - name: {name}\n        uses: http/request\n        with: {{ url: \"http://127.0.0.1:{port}/${{{{ params.id }}}}/{name}\", timeout: 30s }}\n"
        )
    };
    let pipeline = format!(
        "name: count\nparams:\n  - name: id\nstages:\n  - name: a\n    steps:\n{}  - name: b\n    steps:\n{}  - name: c\n    steps:\n{}",
        step("one"),
        step("hold"),
        step("two")
    );
    let http_biz = std::fs::read(arkline_testkit::plugin("arkline-http")).expect("reads");
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.arkc");
    std::fs::write(
        &app,
        arkc(
            "team-a",
            &http_biz,
            &["http=127.0.0.1"],
            &[
                (
                    "count-0.yaml",
                    &pipeline.replace("name: count", "name: count-0"),
                ),
                (
                    "count-1.yaml",
                    &pipeline.replace("name: count", "name: count-1"),
                ),
                (
                    "count-2.yaml",
                    &pipeline.replace("name: count", "name: count-2"),
                ),
            ],
        ),
    )
    .expect("writes");
    let url = etcd.store_url();
    let shared = dir.path().join("shared");
    let args = [
        app.to_str().expect("utf-8"),
        "--insecure-no-auth",
        "--store",
        url.as_str(),
        "--node-ttl",
        "2s",
        "--shared-dir",
        shared.to_str().expect("utf-8"),
    ];
    // The first node starts first: it is elected the engine's leader.
    let mut nodes: Vec<Option<Server>> = ["a", "b", "c"]
        .iter()
        .map(|d| Some(Server::start(&dir.path().join(d), &args)))
        .collect();
    let http = reqwest::Client::new();
    let ids: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|d| {
            std::fs::read_to_string(dir.path().join(d).join("node-id"))
                .expect("the node id is in the data dir")
                .trim()
                .to_owned()
        })
        .collect();
    // Every node lists the engine before anything is triggered (admission
    // gives a node executions only once it does).
    eventually("three registrations serving team-a", || async {
        let regs = registered(&etcd);
        (regs.len() == 3
            && regs.iter().all(|r| {
                r["engines"]
                    .as_array()
                    .is_some_and(|e| e.contains(&json!("team-a")))
            }))
        .then_some(())
    })
    .await;

    // 300 executions of three pipelines, triggered round-robin through the
    // three APIs.
    let mut id_of = BTreeMap::new();
    for i in 0..EXECUTIONS {
        let node = nodes[i % 3].as_ref().expect("running");
        let name = trigger(
            &http,
            &node.url,
            &format!("count-{}", i % 3),
            json!({ "params": { "id": format!("x{i}") } }),
        )
        .await;
        id_of.insert(name, format!("x{i}"));
    }
    // The registrations report what each node drives (refreshed every
    // second): a node in the middle of its executions says so.
    eventually("a registration with a load", || async {
        registered(&etcd)
            .iter()
            .any(|r| r["load"].as_u64().is_some_and(|l| l > 0))
            .then_some(())
    })
    .await;
    let list_url = format!(
        "{}/api/v1/engines/team-a/executions",
        nodes[1].as_ref().expect("running").url
    );

    // SIGKILL the leader while one of its own executions holds its `hold`
    // step open.
    let leader = ids[0].clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = get(&http, list_url.clone()).await.unwrap_or_default();
        let holding = hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .holding
            .clone();
        let items = list.as_array().cloned().unwrap_or_default();
        let found = items.iter().any(|e| {
            e["status"]["node"].as_str() == Some(leader.as_str())
                && e["metadata"]["name"]
                    .as_str()
                    .and_then(|n| id_of.get(n))
                    .is_some_and(|id| holding.contains(id))
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no execution of the leader {leader} in its hold step; holding {holding:?}; executions {:#?}; leader's stderr {:#?}",
            items
                .iter()
                .map(|e| (
                    e["metadata"]["name"].clone(),
                    e["status"]["phase"].clone(),
                    e["status"]["node"].clone(),
                    e["status"]["reason"].clone()
                ))
                .collect::<Vec<_>>(),
            nodes[0].as_ref().map(Server::stderr)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = chrono::Utc::now();
    let killed = nodes[0].take().expect("running");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &killed.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    drop(killed);

    // Every execution finishes, on the nodes that are left.
    let deadline = Instant::now() + Duration::from_secs(90);
    let items = loop {
        let list = get(&http, list_url.clone()).await.unwrap_or_default();
        let items = list.as_array().cloned().unwrap_or_default();
        if items.len() == EXECUTIONS
            && items
                .iter()
                .all(|e| e["status"]["phase"] == "Succeeded" || e["status"]["phase"] == "Failed")
        {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "not all finished: {:#?}\nnode b: {:#?}\nnode c: {:#?}",
            items
                .iter()
                .map(|e| (
                    e["metadata"]["name"].clone(),
                    e["status"]["phase"].clone(),
                    e["status"]["node"].clone()
                ))
                .collect::<Vec<_>>(),
            nodes[1].as_ref().map(Server::stderr),
            nodes[2].as_ref().map(Server::stderr),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let admitted = |e: &Value| -> Value {
        e["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Admitted").cloned())
            .unwrap_or_default()
    };
    let mut ran_on = BTreeSet::new();
    let mut readmitted = BTreeSet::new();
    for e in &items {
        assert_eq!(e["status"]["phase"], "Succeeded", "{e:#}");
        let node = e["status"]["node"].as_str().expect("a node").to_owned();
        if node == leader {
            let finished: chrono::DateTime<chrono::Utc> = e["status"]["finished"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("a finish time");
            assert!(
                finished < killed_at,
                "finished on the killed node after its death: {e:#}"
            );
        }
        let condition = admitted(e);
        if condition["reason"] == "Readmitted" {
            let message = condition["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(&format!("node `{leader}` is gone")),
                "{condition:#}"
            );
            readmitted.insert(id_of[e["metadata"]["name"].as_str().expect("name")].clone());
            ran_on.insert(leader.clone());
        }
        ran_on.insert(node);
    }
    assert_eq!(
        ran_on.len(),
        3,
        "every node ran some executions: {ran_on:?} of {ids:?}"
    );
    assert!(
        !readmitted.is_empty(),
        "the killed node's executions were admitted again elsewhere"
    );

    // The killed node's finished logs outlive it: another node's API serves
    // them from the shared archive.
    let survivor = nodes[1].as_ref().expect("running").url.clone();
    let readmitted_name = id_of
        .iter()
        .find(|(_, id)| readmitted.contains(*id))
        .map(|(name, _)| name.clone())
        .expect("a readmitted execution");
    let log = get(
        &http,
        format!("{survivor}/api/v1/engines/team-a/executions/{readmitted_name}/steps/one/logs"),
    )
    .await
    .expect("a log");
    let messages: Vec<&str> = log
        .as_array()
        .unwrap_or_else(|| panic!("lines: {log:#}"))
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"attempt 1 succeeded"),
        "the killed node's log of `one`: {messages:?}"
    );

    // What the steps did, as the counting server saw it.
    let started = hits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .started
        .clone();
    let mut by_key: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    for (key, at) in started {
        by_key.entry(key).or_default().push(at);
    }
    for i in 0..EXECUTIONS {
        let id = format!("x{i}");
        for step in ["one", "hold", "two"] {
            let key = format!("{id}/{step}");
            let runs = by_key.get(&key).map(Vec::as_slice).unwrap_or_default();
            if readmitted.contains(&id) {
                // The killed attempt, then at most its resumption.
                assert!(
                    (1..=2).contains(&runs.len()),
                    "{key} ran {} times",
                    runs.len()
                );
            } else {
                assert_eq!(runs.len(), 1, "{key}: a step no kill touched runs once");
            }
            // Never on two nodes at once: a resumption starts after the
            // dead node's lease ended, well after its attempt began.
            for pair in runs.windows(2) {
                assert!(
                    pair[1].duration_since(pair[0]) >= Duration::from_secs(1),
                    "{key} ran twice within {:?}",
                    pair[1].duration_since(pair[0])
                );
            }
        }
    }
}

/// Two nodes with a shared dir: an app and a secret given to one node's API
/// reach the other (the engine starts there, its bizes install from the
/// shared archives, the secret decrypts with the shared key), and the
/// executions triggered through the other node run on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_one_node_is_given_every_node_runs_with_a_shared_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("shared");
    given_to_one_run_on_all(
        dir.path(),
        &["--shared-dir", shared.to_str().expect("utf-8")],
        &[],
    )
    .await;
    // Both nodes use the one key in the shared dir.
    assert!(shared.join("secret.key").exists());
    assert!(!dir.path().join("a").join("secret.key").exists());
}

/// The same without a shared file system: archives and finished logs in an
/// S3-compatible object store (`moto_server`), the secret key given to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_one_node_is_given_every_node_runs_with_an_object_store() {
    let s3 = arkline_testkit::s3::S3Server::start();
    s3.create_bucket("arkline");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("secret.key");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .expect("creates the key file");
        writeln!(f, "{}", "7e".repeat(32)).expect("writes");
    }
    let env: Vec<(String, String)> = s3
        .client_options()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v))
        .collect();
    given_to_one_run_on_all(
        dir.path(),
        &[
            "--archive-store",
            "s3://arkline/arks",
            "--log-archive",
            "s3://arkline/logs",
            "--secret-key",
            key.to_str().expect("utf-8"),
        ],
        &env,
    )
    .await;
    assert!(!dir.path().join("a").join("secret.key").exists());
}

/// Two nodes started with `extra` flags and `env`: an app and a secret given
/// to node a reach node b, executions triggered through b run on both, a
/// running step's log streams through the node that does not run it, and a
/// finished step's log is served by the node that did not run it.
async fn given_to_one_run_on_all(dir: &std::path::Path, extra: &[&str], env: &[(String, String)]) {
    const SECRET: &str = "name: secret\nsecrets: [token]\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: \"${{ secrets.token }}\" }\n";
    const NAP: &str = "name: nap\nstages:\n  - name: s\n    steps:\n      - name: zz\n        uses: faults/sleep\n        with: { ms: 2000 }\n";
    let etcd = EtcdServer::start();
    let url = etcd.store_url();
    let mut args = vec![
        "--insecure-no-auth",
        "--store",
        url.as_str(),
        "--node-ttl",
        "2s",
    ];
    args.extend_from_slice(extra);
    let a = Server::start_with_env(&dir.join("a"), &args, env);
    let b = Server::start_with_env(&dir.join("b"), &args, env);
    let a_id = std::fs::read_to_string(dir.join("a").join("node-id"))
        .expect("node id")
        .trim()
        .to_owned();
    let b_id = std::fs::read_to_string(dir.join("b").join("node-id"))
        .expect("node id")
        .trim()
        .to_owned();
    let http = reqwest::Client::new();

    // Everything goes through node a.
    let deployed = http
        .post(format!("{}/api/v1/engines", a.url))
        .body(arkc(
            "team-a",
            crate::support::server::faults(),
            &[],
            &[("secret.yaml", SECRET), ("nap.yaml", NAP)],
        ))
        .send()
        .await
        .expect("deploys");
    assert_eq!(deployed.status(), reqwest::StatusCode::CREATED);
    let put = http
        .put(format!("{}/api/v1/engines/team-a/secrets/token", a.url))
        .json(&json!({ "value": "from node a" }))
        .send()
        .await
        .expect("answers");
    assert_eq!(put.status(), reqwest::StatusCode::NO_CONTENT);

    // Node b starts the engine and lists it.
    eventually("node b to serve team-a", || async {
        registered(&etcd)
            .iter()
            .any(|r| {
                r["id"].as_str() == Some(b_id.as_str())
                    && r["engines"]
                        .as_array()
                        .is_some_and(|e| e.contains(&json!("team-a")))
            })
            .then_some(())
    })
    .await;
    let resolved = |url: String| {
        let http = http.clone();
        async move {
            let p = get(&http, url).await?;
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Resolved" && c["status"] == "True")
                .then_some(())
        }
    };
    eventually("the pipeline resolved", || {
        resolved(format!("{}/api/v1/engines/team-a/pipelines/secret", b.url))
    })
    .await;

    // Either node's API lists both nodes.
    let listed = get(&http, format!("{}/api/v1/nodes", b.url))
        .await
        .expect("nodes");
    let ids: BTreeSet<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([a_id.as_str(), b_id.as_str()]),
        "{listed:#}"
    );

    // Executions triggered through node b run on both nodes and read the
    // secret node a wrote.
    let mut names = Vec::new();
    for _ in 0..8 {
        names.push(trigger(&http, &b.url, "secret", json!({})).await);
    }
    let mut nodes = BTreeSet::new();
    let mut ran_on_a = None;
    for name in &names {
        let done = eventually(&format!("{name} to finish"), || async {
            let e = get(
                &http,
                format!("{}/api/v1/engines/team-a/executions/{name}", b.url),
            )
            .await?;
            matches!(
                e["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed" | "Aborted")
            )
            .then_some(e)
        })
        .await;
        assert_eq!(done["status"]["phase"], "Succeeded", "{done:#}");
        let node = done["status"]["node"].as_str().expect("node").to_owned();
        if node == a_id {
            ran_on_a = Some(name.clone());
        }
        nodes.insert(node);
    }
    assert_eq!(nodes.len(), 2, "both nodes ran some: {nodes:?}");
    assert!(nodes.contains(&b_id));
    // A running step's log, asked of the node that does not run it, is
    // forwarded from the one that does, live.
    let nap = trigger(&http, &a.url, "nap", json!({})).await;
    let (owner, running) = eventually("the nap step to run", || async {
        let e = get(
            &http,
            format!("{}/api/v1/engines/team-a/executions/{nap}", a.url),
        )
        .await?;
        (e["status"]["phase"] == "Running")
            .then(|| e["status"]["node"].as_str().map(str::to_owned))
            .flatten()
            .map(|n| (n, e))
    })
    .await;
    assert_eq!(running["status"]["phase"], "Running");
    let other = if owner == b_id { &a.url } else { &b.url };
    let streamed = http
        .get(format!(
            "{other}/api/v1/engines/team-a/executions/{nap}/steps/zz/logs?follow=true"
        ))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("the stream ends with the step");
    assert!(streamed.contains("sleeping 2000 ms"), "{streamed}");
    assert!(streamed.contains("event: end"), "{streamed}");

    // A new version installed and switched to through node a is installed
    // and active on node b too.
    let installed = http
        .post(format!("{}/api/v1/engines/team-a/bizes", a.url))
        .body(crate::support::server::faults_as("9.9.9"))
        .send()
        .await
        .expect("answers");
    assert!(
        installed.status().is_success(),
        "{:?}",
        installed.text().await
    );
    eventually("9.9.9 active on node b", || async {
        let bizes = get(&http, format!("{}/api/v1/engines/team-a/bizes", b.url)).await?;
        bizes
            .as_array()?
            .iter()
            .any(|z| z["version"] == "9.9.9" && z["state"] == "activated")
            .then_some(())
    })
    .await;

    // A finished step's log, asked of the node that did not run it, comes
    // from the archive the other node shipped it to.
    let ran_on_a = ran_on_a.expect("an execution ran on node a");
    let log = get(
        &http,
        format!(
            "{}/api/v1/engines/team-a/executions/{ran_on_a}/steps/up/logs",
            b.url
        ),
    )
    .await
    .expect("a log");
    assert!(
        log.as_array()
            .is_some_and(|lines| lines.iter().any(|l| l["message"] == "attempt 1 succeeded")),
        "{log:#}"
    );
    drop((a, b));
}
