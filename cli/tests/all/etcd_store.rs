//! `arkline serve --store etcd://…` on a real etcd server (a private one per
//! test): a deployment and its executions live in the cluster and survive the
//! node's restart; an unreachable cluster, a prefix owned by something else
//! and bad store URLs are refused with messages that say what to do, and
//! nothing is written.

use std::process::Command;

use arkline_testkit::etcd::EtcdServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::etcd_nodes::trigger;
use crate::support::server::{Server, arkc, eventually, faults};

const QUICK: &str = "name: quick\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: \"on etcd\" }\n";

/// `etcdctl get --prefix <prefix> --keys-only` on `server`: the keys.
fn keys(server: &EtcdServer, prefix: &str) -> Vec<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &server.endpoint(),
            "get",
            "--prefix",
            "--keys-only",
            prefix,
        ])
        .output()
        .expect("etcdctl runs (Debian: etcd-client; `bash .ci/deps.sh --test` installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits (at most 30 s) until no node is registered; fails with `what`.
fn wait_unregistered(etcd: &EtcdServer, what: &str) {
    wait_registered(etcd, 0, what);
}

/// Waits (at most 30 s) until `n` nodes are registered; fails with `what`.
fn wait_registered(etcd: &EtcdServer, n: usize, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while registered(etcd).len() != n {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// SIGKILLs a server: nothing it does on a clean stop happens.
fn sigkill(server: &Server) {
    let killed = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
}

fn serve_err(data: &std::path::Path, store: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_arkline"))
        .args([
            "serve",
            "--insecure-no-auth",
            "--listen",
            "127.0.0.1:0",
            "--store",
            store,
        ])
        .arg("--data-dir")
        .arg(data)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_its_deployment_and_executions_in_etcd_across_a_restart() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.arkc");
    std::fs::write(
        &app,
        arkc("team-a", faults(), &[], &[("quick.yaml", QUICK)]),
    )
    .expect("writes");
    let data = dir.path().join("data");
    let url = etcd.store_url();
    let args = ["--insecure-no-auth", "--store", url.as_str()];
    let mut with_app = vec![app.to_str().expect("utf-8")];
    with_app.extend(args);
    let server = Server::start(&data, &with_app);
    let http = reqwest::Client::new();
    let name = trigger(&http, &server.url, "quick", json!({})).await;
    let execution_url = format!("{}/api/v1/engines/team-a/executions/{name}", server.url);
    let done = eventually("the execution to finish", || async {
        let e: Value = http
            .get(&execution_url)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (e["status"]["phase"] == "Succeeded").then_some(e)
    })
    .await;
    assert_eq!(done["status"]["outputs"]["up"]["text"], "ON ETCD", "{done}");

    // The objects are etcd keys under the default prefix, with its marker.
    let stored = keys(&etcd, "/arkline/");
    assert!(
        stored.contains(&"/arkline/.arkline".to_owned()),
        "{stored:?}"
    );
    assert!(
        stored.contains(&format!("/arkline/PipelineExecution/team-a/{name}")),
        "{stored:?}"
    );
    assert!(
        stored.contains(&"/arkline/Pipeline/team-a/quick".to_owned()),
        "{stored:?}"
    );
    let (status, _) = server.terminate();
    assert!(status.success());

    // A restart on the same cluster (no archive given) restores the engine
    // from etcd and still has the execution.
    let server = Server::start(&data, &args);
    let execution_url = format!("{}/api/v1/engines/team-a/executions/{name}", server.url);
    let response = http.get(&execution_url).send().await.expect("answers");
    assert_eq!(response.status(), StatusCode::OK);
    let again: Value = response.json().await.expect("json");
    assert_eq!(again["status"]["phase"], "Succeeded", "{again}");
}

#[test]
fn an_unreachable_cluster_is_a_clear_error_naming_its_endpoints() {
    let data = tempfile::tempdir().expect("tempdir");
    // Nothing listens on port 1 of loopback.
    let (code, stderr) = serve_err(data.path(), "etcd://127.0.0.1:1,127.0.0.1:2");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("http://127.0.0.1:1,http://127.0.0.1:2"),
        "{stderr}"
    );
    assert!(stderr.contains("check that the members are up"), "{stderr}");
}

#[test]
fn a_prefix_owned_by_something_else_is_refused_and_left_alone() {
    let etcd = EtcdServer::start();
    let put = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "put",
            "/shared/app/config",
            "theirs",
        ])
        .output()
        .expect("etcdctl runs");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let data = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = serve_err(data.path(), &format!("{}/shared", etcd.store_url()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("1 keys that arkline did not write"),
        "{stderr}"
    );
    assert!(stderr.contains("choose another prefix"), "{stderr}");
    assert_eq!(
        keys(&etcd, "/shared"),
        ["/shared/app/config"],
        "nothing written"
    );

    // Another prefix on the same cluster is fine: it gets arkline's marker.
    let server = Server::start(
        data.path(),
        &[
            "--insecure-no-auth",
            "--store",
            &format!("{}/ci", etcd.store_url()),
        ],
    );
    let written = keys(&etcd, "/ci/");
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(written[0], "/ci/.arkline");
    assert!(written[1].starts_with("/ci/nodes/node-"), "{written:?}");
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn bad_store_urls_say_how_to_write_one() {
    let data = tempfile::tempdir().expect("tempdir");
    for (url, needle) in [
        ("redis://127.0.0.1:6379", "etcd://host:port"),
        ("etcd://127.0.0.1", "is not host:port"),
        ("etcd://127.0.0.1:2379/", "names the root as key prefix"),
    ] {
        let (code, stderr) = serve_err(data.path(), url);
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert!(stderr.contains(needle), "{url}: {stderr}");
    }
}

/// The node registrations: `etcdctl get --prefix /arkline/nodes/`, decoded.
pub(crate) fn registered(etcd: &EtcdServer) -> Vec<Value> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "get",
            "--prefix",
            "--print-value-only",
            "/arkline/nodes/",
        ])
        .output()
        .expect("etcdctl runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a node registration is JSON"))
        .collect()
}

#[test]
fn nodes_share_a_prefix_each_under_a_lease_that_ends_with_it() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = etcd.store_url();
    let args = [
        "--insecure-no-auth",
        "--store",
        url.as_str(),
        "--node-ttl",
        "2s",
    ];
    let first = Server::start(&dir.path().join("a"), &args);
    let nodes = registered(&etcd);
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0]["address"].as_str(), Some(first.url.as_str()));
    assert!(
        nodes[0]["capacity"].as_u64().is_some_and(|c| c > 0),
        "{nodes:?}"
    );
    let first_id = nodes[0]["id"].as_str().expect("an id").to_owned();

    // A second node joins the first on the same prefix.
    let second = Server::start(&dir.path().join("b"), &args);
    let nodes = registered(&etcd);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(
        nodes
            .iter()
            .any(|n| n["address"].as_str() == Some(second.url.as_str())),
        "{nodes:?}"
    );

    // A node with a live node's id is refused (the data dir holds the id).
    let copy = dir.path().join("a-copy");
    std::fs::create_dir_all(&copy).expect("mkdir");
    std::fs::copy(dir.path().join("a").join("node-id"), copy.join("node-id")).expect("copies");
    let (code, stderr) = serve_err(&copy, &url);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("a live node already registered as {first_id:?}")),
        "{stderr}"
    );

    // SIGKILL: nothing revokes the first node's lease; it expires after
    // its TTL, and the second node stays.
    sigkill(&first);
    wait_registered(&etcd, 1, "the dead node's key outlived its lease");
    drop(first);
    let nodes = registered(&etcd);
    assert_eq!(nodes[0]["address"].as_str(), Some(second.url.as_str()));

    // A graceful stop revokes the lease: the key goes at once.
    let (status, _) = second.terminate();
    assert!(status.success());
    assert!(registered(&etcd).is_empty());
}

/// A TCP proxy on loopback to `target` that can cut every connection and
/// refuse new ones: a node "cut off from etcd" while etcd stays up.
struct Proxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(target: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("addr").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cut2, conns2) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                let mut all = conns2.lock().unwrap_or_else(|p| p.into_inner());
                for s in [&client, &server] {
                    if let Ok(clone) = s.try_clone() {
                        all.push(clone);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, conns }
    }

    /// Cuts every connection and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn a_node_cut_off_from_etcd_stops_and_another_takes_the_prefix() {
    let etcd = EtcdServer::start();
    let target = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address");
    let proxy = Proxy::start(target);
    let dir = tempfile::tempdir().expect("tempdir");
    let via_proxy = format!("etcd://127.0.0.1:{}", proxy.port);
    let cut_off = Server::start(
        &dir.path().join("a"),
        &[
            "--insecure-no-auth",
            "--store",
            &via_proxy,
            "--node-ttl",
            "2s",
        ],
    );
    assert_eq!(registered(&etcd).len(), 1);

    proxy.cut();
    // Its lease expires in etcd, and the node, unable to renew it for a
    // whole TTL, stops on its own with exit code 1.
    let (status, stderr) = cut_off.wait_exit(std::time::Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{stderr:#?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("lost its etcd registration")),
        "{stderr:#?}"
    );
    wait_unregistered(&etcd, "the cut-off node's lease outlived its TTL");
    // Another node takes the prefix.
    let url = etcd.store_url();
    let next = Server::start(
        &dir.path().join("b"),
        &["--insecure-no-auth", "--store", &url],
    );
    let nodes = registered(&etcd);
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["address"].as_str(), Some(next.url.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_step_is_taken_over_and_its_execution_finishes() {
    const SLOW: &str = "name: slow\nstages:\n  - name: a\n    steps:\n      - name: first\n        uses: faults/upper\n        with: { text: once }\n  - name: b\n    steps:\n      - name: nap\n        uses: faults/sleep\n        with: { ms: 4000 }\n  - name: c\n    steps:\n      - name: last\n        uses: faults/upper\n        with: { text: done }\n";
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app.arkc");
    std::fs::write(&app, arkc("team-a", faults(), &[], &[("slow.yaml", SLOW)])).expect("writes");
    let url = etcd.store_url();
    let args = [
        app.to_str().expect("utf-8"),
        "--insecure-no-auth",
        "--store",
        url.as_str(),
        "--node-ttl",
        "2s",
    ];
    let first = Server::start(&dir.path().join("a"), &args);
    let http = reqwest::Client::new();
    let name = trigger(&http, &first.url, "slow", json!({})).await;
    let at = |url: &str| format!("{url}/api/v1/engines/team-a/executions/{name}");
    // Wait until the sleep step runs on the first node, then SIGKILL it.
    eventually("the nap step to run", || async {
        let e: Value = http
            .get(at(&first.url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let steps = e["status"]["stages"].as_array()?;
        let nap = steps
            .iter()
            .flat_map(|s| s["steps"].as_array().into_iter().flatten())
            .find(|s| s["name"] == "nap")?;
        (nap["phase"] == "Running").then_some(())
    })
    .await;
    sigkill(&first);
    drop(first);

    // Once the lease is gone, a second node takes the prefix and finishes it.
    wait_unregistered(&etcd, "the dead node's lease outlived its TTL");
    let second = Server::start(&dir.path().join("b"), &args);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let done = loop {
        let e: Value = http
            .get(at(&second.url))
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("json");
        if matches!(
            e["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed" | "Aborted")
        ) {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not finished on the second node: {e:#}\nits stderr: {:#?}",
            second.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"]["phase"], "Succeeded", "{done:#}");
    assert_eq!(
        done["status"]["outputs"]["last"]["text"], "DONE",
        "{done:#}"
    );
    // It was admitted again after the dead node's lease ended, by a write
    // that says so.
    let admitted = done["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Admitted")
        .expect("an Admitted condition")
        .clone();
    assert_eq!(admitted["reason"], "Readmitted", "{admitted:#}");
    assert!(
        admitted["message"]
            .as_str()
            .is_some_and(|m| m.contains("is gone (its lease ended)")),
        "{admitted:#}"
    );
    // The step finished before the kill was not run again.
    let first_step = done["status"]["stages"][0]["steps"][0].clone();
    assert_eq!(first_step["name"], "first");
    assert_eq!(
        first_step["attempt"].as_u64().unwrap_or(1),
        1,
        "{first_step:#}"
    );
}
