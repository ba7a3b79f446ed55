//! Two nodes (two containers on one store) with a cluster whose membership
//! and leadership the test decides: only the engine's leader fires cron
//! triggers and admits executions, which it spreads over both nodes; when
//! leadership moves, the new leader carries on, and the executions of a node
//! that left are admitted again on a live one and finish there.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arkline::ark::Ark;
use arkline::container::ManualClock;
use arkline::host::Capabilities;
use arkline::model::{ExecutionPhase, PipelineExecution};
use arkline::store::{Cluster, Member, Membership, MemoryStore};
use arkline::{Container, Engine};
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(60);

/// A cluster whose members and leaders the test sets.
#[derive(Debug)]
struct TestCluster {
    node: String,
    members: watch::Sender<Option<Arc<Membership>>>,
    leads: Mutex<HashMap<String, watch::Sender<bool>>>,
    leader: bool,
}

impl TestCluster {
    fn new(node: &str, members: &watch::Sender<Option<Arc<Membership>>>, leader: bool) -> Self {
        Self {
            node: node.into(),
            members: members.clone(),
            leads: Mutex::default(),
            leader,
        }
    }

    fn set_leader(&self, leads: bool) {
        for sender in self.leads.lock().expect("lock").values() {
            sender.send_replace(leads);
        }
    }
}

impl Cluster for TestCluster {
    fn node(&self) -> &str {
        &self.node
    }

    fn members(&self) -> watch::Receiver<Option<Arc<Membership>>> {
        self.members.subscribe()
    }

    fn leadership(&self, engine: &str) -> watch::Receiver<bool> {
        self.leads
            .lock()
            .expect("lock")
            .entry(engine.to_owned())
            .or_insert_with(|| watch::Sender::new(self.leader))
            .subscribe()
    }
}

fn membership(ids: &[&str]) -> Option<Arc<Membership>> {
    Some(Arc::new(Membership {
        nodes: ids
            .iter()
            .map(|id| Member {
                id: (*id).into(),
                capacity: None,
                engines: Some(vec!["team-a".into()]),
            })
            .collect(),
        complete: true,
    }))
}

async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let done = tokio::time::timeout(LIMIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "timed out waiting for {what}");
}

async fn node(
    id: &str,
    store: &Arc<MemoryStore>,
    clock: &ManualClock,
    cluster: Arc<TestCluster>,
    dir: &std::path::Path,
) -> (Container, Engine) {
    let container = Container::builder()
        .store(store.clone())
        .data_dir(dir.join(id))
        .clock(Arc::new(clock.clone()))
        .node_name(id)
        .build()
        .expect("builds");
    container.join_cluster(cluster).expect("joins");
    let engine = container.engine("team-a").await.expect("engine");
    engine
        .install(
            Ark::open(arkline_testkit::plugin("faults")).expect("faults"),
            &Capabilities::default(),
        )
        .await
        .expect("installs");
    (container, engine)
}

async fn executions(engine: &Engine) -> Vec<PipelineExecution> {
    engine.executions(None).await.expect("lists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_leader_alone_fires_cron_and_admits_and_a_successor_carries_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new("2026-01-01T10:01:00Z".parse().expect("time"));
    let members = watch::Sender::new(membership(&["a", "b"]));
    let cluster_a = Arc::new(TestCluster::new("a", &members, true));
    let cluster_b = Arc::new(TestCluster::new("b", &members, false));
    let (a, engine_a) = node("a", &store, &clock, cluster_a.clone(), dir.path()).await;
    let (b, engine_b) = node("b", &store, &clock, cluster_b.clone(), dir.path()).await;
    engine_a
        .apply_pipeline_yaml(
            "t.yaml",
            "name: nightly\ntriggers:\n  - type: cron\n    schedule: \"*/5 * * * *\"\nstages:\n  - name: s\n    steps:\n      - name: x\n        uses: faults/sleep\n        with: { ms: 300 }\n",
        )
        .await
        .expect("applies");
    eventually("the schedule seen", || async {
        engine_b
            .pipeline("nightly")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| !p.status.cron_last.is_empty())
    })
    .await;

    // Both nodes reconcile the pipeline; only the leader fires: one run.
    clock.set("2026-01-01T10:05:00Z".parse().expect("time"));
    eventually("the 10:05 run", || async {
        executions(&engine_b).await.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(executions(&engine_b).await.len(), 1, "fired once");

    // Triggers through either node, of a pipeline no node ran yet (so no
    // cache affinity): the leader spreads them over both.
    engine_a
        .apply_pipeline_yaml(
            "fan.yaml",
            "name: fan\nstages:\n  - name: s\n    steps:\n      - name: x\n        uses: faults/sleep\n        with: { ms: 500 }\n",
        )
        .await
        .expect("applies");
    for i in 0..6 {
        let engine = if i % 2 == 0 { &engine_a } else { &engine_b };
        engine
            .trigger("fan", arkline::TriggerRequest::manual())
            .await
            .expect("triggers");
    }
    eventually("every execution finished", || async {
        let all = executions(&engine_a).await;
        all.len() == 7 && all.iter().all(|e| e.status.phase.is_finished())
    })
    .await;
    let all = executions(&engine_a).await;
    let ran_on: BTreeSet<String> = all
        .iter()
        .filter(|e| e.spec.pipeline == "fan")
        .map(|e| {
            assert_eq!(e.status.phase, ExecutionPhase::Succeeded, "{:?}", e.status);
            e.status.node.clone().expect("a node")
        })
        .collect();
    assert_eq!(ran_on, BTreeSet::from(["a".into(), "b".into()]), "spread");

    // Leadership moves to b; a leaves while one of its executions runs.
    let long = engine_a
        .apply_pipeline_yaml(
            "long.yaml",
            "name: long\nstages:\n  - name: s\n    steps:\n      - name: x\n        uses: faults/sleep\n        with: { ms: 1500 }\n  - name: t\n    steps:\n      - name: y\n        uses: faults/upper\n        with: { text: done }\n",
        )
        .await
        .expect("applies");
    let mut on_a = None;
    for _ in 0..8 {
        let e = engine_a
            .trigger(&long.metadata.name, arkline::TriggerRequest::manual())
            .await
            .expect("triggers");
        let name = e.metadata.name.clone();
        let mut node = None;
        eventually("admitted", || async {
            let e = engine_a.execution(&name).await.ok().flatten();
            e.is_some_and(|e| e.status.phase == ExecutionPhase::Running)
        })
        .await;
        if let Some(e) = engine_a.execution(&name).await.expect("reads") {
            node = e.status.node;
        }
        if node.as_deref() == Some("a") {
            on_a = Some(name);
            break;
        }
    }
    let on_a = on_a.expect("one of eight executions placed on a");
    // `a` stops (its steps interrupted) and leaves; `b` leads.
    a.shutdown().await;
    cluster_a.set_leader(false);
    members.send_replace(membership(&["b"]));
    cluster_b.set_leader(true);
    eventually("a's execution admitted again on b and finished", || async {
        engine_b
            .execution(&on_a)
            .await
            .ok()
            .flatten()
            .is_some_and(|e| e.status.phase.is_finished())
    })
    .await;
    let done = engine_b
        .execution(&on_a)
        .await
        .expect("reads")
        .expect("exists");
    assert_eq!(
        done.status.phase,
        ExecutionPhase::Succeeded,
        "{:?}",
        done.status
    );
    assert_eq!(done.status.node.as_deref(), Some("b"));
    let admitted = done
        .status
        .conditions
        .iter()
        .find(|c| c.kind == arkline::model::ConditionType::Admitted)
        .expect("admitted");
    assert_eq!(admitted.reason, "Readmitted", "{admitted:?}");

    // The new leader fires the next cron run, once.
    let before = executions(&engine_b).await.len();
    clock.set("2026-01-01T10:10:00Z".parse().expect("time"));
    eventually("the 10:10 run", || async {
        executions(&engine_b).await.len() == before + 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(executions(&engine_b).await.len(), before + 1, "fired once");
    b.shutdown().await;
}
