//! The etcd store on the 3-member test cluster `.ci/etcd.sh` starts
//! (`ARKLINE_TEST_ETCD`): compare-and-swap races between processes connected
//! to different members, and a cluster that loses a member. Each test works
//! under a key prefix of its own.

use std::process::Command;

use arkline::model::{API_VERSION, DynamicObject, ObjectMeta};
use arkline::store::{EtcdOptions, EtcdStore, ObjectRef, Store};
use serde_json::json;

/// Set in a child process of [`compare_and_swap_races_between_processes_lose_no_write`]:
/// `endpoint,prefix,increments`.
const RACER_ENV: &str = "ARKLINE_TEST_CAS_RACER";

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("/arkline-test/{test}-{}-{nanos}", std::process::id())
}

async fn connect(endpoint: &str, prefix: &str) -> EtcdStore {
    EtcdStore::connect(EtcdOptions::new([endpoint]).prefix(prefix))
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

fn counter() -> ObjectRef {
    ObjectRef::new("Pipeline", "race", "counter")
}

/// Increments the counter's status `increments` times, retrying conflicts;
/// returns how many conflicts it lost.
async fn increment(store: &EtcdStore, increments: u32) -> u32 {
    let mut conflicts = 0;
    for _ in 0..increments {
        loop {
            let mut obj = store
                .get(&counter())
                .await
                .unwrap()
                .expect("the counter exists");
            let n = obj.status["count"].as_u64().unwrap_or(0);
            obj.status = json!({ "count": n + 1 });
            match store.update_status(obj).await {
                Ok(_) => break,
                Err(e) if e.is_conflict() => conflicts += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    conflicts
}

/// Not a test of its own: the body of each racing child process (it returns
/// at once when run without [`RACER_ENV`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_racer_child_process() {
    let Ok(spec) = std::env::var(RACER_ENV) else {
        return;
    };
    let mut parts = spec.split(',');
    let (endpoint, prefix, n) = (
        parts.next().expect("endpoint"),
        parts.next().expect("prefix"),
        parts.next().expect("count").parse().expect("a count"),
    );
    let store = connect(endpoint, prefix).await;
    let conflicts = increment(&store, n).await;
    println!("conflicts={conflicts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_races_between_processes_lose_no_write() {
    let endpoints = arkline_testkit::etcd::cluster_endpoints();
    let prefix = unique_prefix("cas");
    let store = connect(&endpoints[0], &prefix).await;
    store
        .create(DynamicObject {
            api_version: API_VERSION.into(),
            kind: "Pipeline".into(),
            metadata: ObjectMeta::new("race", "counter"),
            spec: json!({}),
            status: json!({ "count": 0 }),
        })
        .await
        .unwrap();
    // Three processes, each talking to its own member, 40 increments each.
    let exe = std::env::current_exe().expect("the test binary");
    let children: Vec<_> = endpoints
        .iter()
        .take(3)
        .map(|endpoint| {
            Command::new(&exe)
                .args(["--exact", "etcd::cas_racer_child_process", "--nocapture"])
                .env(RACER_ENV, format!("{endpoint},{prefix},40"))
                .env_remove("RUST_BACKTRACE")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("the racer starts")
        })
        .collect();
    let racers = children.len() as u64;
    let mut conflicts = 0u64;
    for child in children {
        let out = child.wait_with_output().expect("the racer ends");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "a racer failed: {text}");
        conflicts += text
            .lines()
            .find_map(|l| l.strip_prefix("conflicts="))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("the racer did not report: {text}"));
    }
    let obj = store.get(&counter()).await.unwrap().expect("the counter");
    assert_eq!(
        obj.status["count"],
        racers * 40,
        "every increment landed once"
    );
    // The processes did race (conflicts were lost and retried), unless the
    // machine ran them one after another; either way nothing was lost.
    eprintln!("{conflicts} conflicts lost and retried across {racers} processes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_carries_on_when_one_member_of_three_is_killed() {
    let mut cluster = arkline_testkit::etcd::EtcdCluster::start(3);
    let store = EtcdStore::connect(EtcdOptions::new(cluster.endpoints()))
        .await
        .expect("connect to the cluster");
    let pipeline = |name: &str| DynamicObject {
        api_version: API_VERSION.into(),
        kind: "Pipeline".into(),
        metadata: ObjectMeta::new("ci", name),
        spec: json!({ "stages": [] }),
        status: serde_json::Value::Null,
    };
    let before = store.create(pipeline("before")).await.unwrap();
    let mut events = store
        .watch("Pipeline", Some("ci"), before.metadata.resource_version)
        .await
        .unwrap();

    // SIGKILL the first member (the one the client lists first).
    cluster.members[0].kill();

    // Two of three are a quorum: writes, reads and the watch go on.
    let after = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match store.create(pipeline("after")).await {
                Ok(o) => break o,
                // The client may first try the dead member; it moves on.
                Err(e) if !matches!(e, arkline::store::StoreError::AlreadyExists { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(_) => {
                    break store
                        .get(&ObjectRef::new("Pipeline", "ci", "after"))
                        .await
                        .unwrap()
                        .expect("created by an attempt that answered late");
                }
            }
        }
    })
    .await
    .expect("a write succeeds within 30 s of losing a member");
    assert!(after.metadata.resource_version > before.metadata.resource_version);
    let names: Vec<_> = store
        .list(&arkline::store::ListQuery::kind("Pipeline").engine("ci"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| o.metadata.name)
        .collect();
    assert_eq!(names, ["after", "before"]);
    use futures::StreamExt as _;
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), events.next())
        .await
        .expect("the watch delivers within 30 s")
        .expect("the watch goes on");
    match seen {
        Ok(e) => assert_eq!(e.object.metadata.name, "after"),
        // A watch whose member died ends with an error; the watcher relists.
        Err(e) => assert!(matches!(e, arkline::store::StoreError::Etcd { .. }), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_store_writes_nothing_once_its_registration_is_gone() {
    use arkline::store::etcd::NodeInfo;
    let endpoints = arkline_testkit::etcd::cluster_endpoints();
    let prefix = unique_prefix("fence");
    let node = |id: &str| NodeInfo {
        id: id.into(),
        address: format!("http://{id}.invalid"),
        capacity: 1,
        engines: vec![],
        load: 0,
        started: String::new(),
        version: "test".into(),
    };
    let a = connect(&endpoints[0], &prefix).await;
    let ttl = std::time::Duration::from_secs(5);
    let registration = a.register_node(node("a"), ttl, true).await.unwrap();
    registration.fence(&a);
    let obj = DynamicObject {
        api_version: API_VERSION.into(),
        kind: "Pipeline".into(),
        metadata: ObjectMeta::new("ci", "p"),
        spec: json!({ "n": 1 }),
        status: serde_json::Value::Null,
    };
    let v1 = a.create(obj).await.expect("a registered node writes");

    // While `a` holds the prefix, `b` cannot register.
    let b = connect(&endpoints[1], &prefix).await;
    let refused = b.register_node(node("b"), ttl, true).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("node \"a\" serves this prefix"),
        "{refused}"
    );

    // `a`'s lease ends without `a` knowing (as when it expires while `a` is
    // cut off): `b` revokes it.
    b.client()
        .lease_client()
        .revoke(registration.lease())
        .await
        .expect("revoke");
    let mut change = v1.clone();
    change.spec = json!({ "n": 2 });
    let err = a.update(change).await.unwrap_err();
    assert!(
        matches!(err, arkline::store::StoreError::Fenced { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("writes nothing more"), "{err}");
    let mut other = v1.clone();
    other.metadata.name = "q".into();
    assert!(matches!(
        a.create(other).await.unwrap_err(),
        arkline::store::StoreError::Fenced { .. }
    ));
    // Nothing was written: `p` is as `a` left it, `q` does not exist.
    let p = b
        .get(&ObjectRef::new("Pipeline", "ci", "p"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.spec, p.metadata.resource_version),
        (json!({ "n": 1 }), v1.metadata.resource_version)
    );
    assert!(
        b.get(&ObjectRef::new("Pipeline", "ci", "q"))
            .await
            .unwrap()
            .is_none()
    );
    // `a` learns it: its registration is lost (within a keep-alive period).
    let mut lost = registration.lost();
    tokio::time::timeout(ttl * 2, lost.wait_for(|l| *l))
        .await
        .expect("the registration is marked lost")
        .expect("lost");

    // And `b` can now hold the prefix.
    let held = b
        .register_node(node("b"), ttl, true)
        .await
        .expect("b registers");
    held.revoke().await.unwrap();
}
