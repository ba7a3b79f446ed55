//! Durable pipeline executions end to end, against bare step dispatch measured in
//! the same run:
//!
//! - throughput: N executions (default 200 and 1,000) triggered at once on a fresh
//!   container and followed through one watch; executions/s = N / (last finished −
//!   first trigger), with p50/p99 of each execution's trigger → seen finished.
//!   Pipelines: `five` (five sequential stages of one `faults/upper` step), `wide`
//!   (one stage of five parallel ones) and `five-spread` (`five`, triggered
//!   round-robin over 50 copies so that the triggers do not all compete for one
//!   pipeline's run counter) and `five-10-engines` (`five`, triggered round-robin
//!   over ten engines merged in one container, each with its own bizes,
//!   settings and controllers). Budget (issue): ≥ 1,000 durable five-step
//!   executions/s on 2 cores;
//! - per-step overhead: (time per five-step execution) / 5, one execution at a
//!   time (trigger + `Engine::wait`) and with N in flight, as a ratio to
//!   `BizLease::invoke` of `upper` on the same runtime, one call at a time and 64
//!   in flight;
//! - where the time goes: the same runs on three stores — `durable` (a data dir:
//!   redb store and file logs; the budget's), `redb+memlogs` (the redb store, logs
//!   in memory), `memory` (`MemoryStore`, logs in memory), and `etcd` (a data
//!   dir for logs, the store on a private single-member etcd with its data on
//!   disk; opt in with `ARKLINE_EXEC_STORES=…,etcd`), and `etcd3` (three
//!   nodes in this process on one such etcd, the triggers sent to the first;
//!   opt in the same way; it also measures a takeover: a node dies while its
//!   step runs, and the time until its registration is gone, its execution is
//!   admitted again elsewhere, and finishes there); store writes per
//!   execution (from the store's revision); on-CPU time per thread during a batch
//!   (`/proc/self/task/*/schedstat`); and the mean time of each phase of an
//!   execution (created → admitted → driver → steps → finished) from the
//!   timestamps in its status.
//!
//! Every batch also checks the engine's answer: executions that did not end
//! `Succeeded`, or whose phase changed after they had finished, are counted and
//! the first few listed.
//!
//! Each container's data dir is kept until the end of the run and removed
//! then: deleting thousands of step-log files between rounds made ext4's inode
//! allocator search past them when the next round created its own, so every
//! round was slower than the one before (measured 2026-12-05: 254/s in the
//! first round, 127/s in the fifth).
//!
//! `cargo bench -p arkline-benches --bench executions -- --warm-up-time 1 --measurement-time 5`
//! (unset `RUST_BACKTRACE` first). Prints tables, no criterion: a batch's
//! throughput is not a per-iteration time. `--warm-up-time` and
//! `--measurement-time` bound the one-at-a-time loops; `ARKLINE_EXEC_BATCHES`
//! (`200,1000`), `ARKLINE_EXEC_ROUNDS` (3; the median round is shown; the
//! rounds of the pipelines are interleaved, and with `five` and
//! `five-10-engines` both measured the median of their per-round ratios is
//! printed),
//! `ARKLINE_EXEC_STORES` (`durable,redb-memlogs,memory`) and
//! `ARKLINE_EXEC_PIPELINES` (`five,wide,five-spread,five-10-engines`) shrink it.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::Resource as _;
use arkline::model::{ConditionType, ExecutionPhase, PipelineExecution, PipelineSettingSpec};
use arkline::runtime::{BizLease, Runtime, RuntimeConfig, StepCall};
use arkline::{Container, Engine, MemoryStore, RedbStore, TriggerRequest};
use arkline_benches::{Latencies, arg_secs, env_list, ms, us};
use futures::StreamExt;
use serde_json::json;

/// Data dirs of containers already shut down, removed when the run ends.
static KEPT_DIRS: std::sync::Mutex<Vec<tempfile::TempDir>> = std::sync::Mutex::new(Vec::new());

const ENGINE: &str = "bench";

/// Steps per execution of both pipelines.
const STEPS: u32 = 5;

/// Calls in flight in the concurrent bare-dispatch baseline.
const BARE_IN_FLIGHT: usize = 64;

/// One execution that has not finished after this long is reported as a hang.
const EXECUTION_LIMIT: Duration = Duration::from_secs(30);

/// After a batch, how long to keep watching for changes to finished executions.
const SETTLE: Duration = Duration::from_millis(500);

/// A batch that has not finished after this long is reported as a hang.
const BATCH_LIMIT: Duration = Duration::from_secs(900);

const FIVE: &str = r#"
name: five
stages:
  - name: s1
    steps: [{ name: a, uses: faults/upper, with: { text: x } }]
  - name: s2
    steps: [{ name: b, uses: faults/upper, with: { text: x } }]
  - name: s3
    steps: [{ name: c, uses: faults/upper, with: { text: x } }]
  - name: s4
    steps: [{ name: d, uses: faults/upper, with: { text: x } }]
  - name: s5
    steps: [{ name: e, uses: faults/upper, with: { text: x } }]
"#;

const WIDE: &str = r#"
name: wide
stages:
  - name: all
    steps:
      - { name: a, uses: faults/upper, with: { text: x } }
      - { name: b, uses: faults/upper, with: { text: x } }
      - { name: c, uses: faults/upper, with: { text: x } }
      - { name: d, uses: faults/upper, with: { text: x } }
      - { name: e, uses: faults/upper, with: { text: x } }
"#;

/// The takeover measurement's pipeline: a 1 s step (the one running when its
/// node dies), then an `upper`.
const NAP: &str = r#"
name: nap
stages:
  - name: s1
    steps: [{ name: zz, uses: faults/sleep, with: { ms: 1000 } }]
  - name: s2
    steps: [{ name: up, uses: faults/upper, with: { text: x } }]
"#;

/// `five-spread` triggers round-robin over this many copies of `five`, so that
/// triggers do not all compete for one pipeline's run counter.
const SPREAD: usize = 50;

/// `five-10-engines` triggers `five` round-robin over this many engines merged
/// in one container (the issue's "10 engines merged").
const MERGED_ENGINES: usize = 10;

/// How many engines the container of a `pipeline` run has.
fn engines_for(pipeline: &str) -> usize {
    if pipeline == "five-10-engines" {
        MERGED_ENGINES
    } else {
        1
    }
}

/// The (engine index, pipeline) pairs a batch of `pipeline` triggers, round-robin.
fn targets(pipeline: &str) -> Vec<(usize, String)> {
    match pipeline {
        "five-spread" => (0..SPREAD).map(|i| (0, format!("five-s{i}"))).collect(),
        "five-10-engines" => (0..MERGED_ENGINES)
            .map(|e| (e, "five".to_owned()))
            .collect(),
        other => vec![(0, other.to_owned())],
    }
}

/// What keeps the executions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A data dir: redb store, file logs (fsynced per step), workspaces on disk.
    Durable,
    /// The redb store; logs in memory, workspaces in a temporary directory.
    RedbMemLogs,
    /// `MemoryStore`; logs in memory.
    Memory,
    /// A data dir for logs and workspaces, the store on a private
    /// single-member etcd whose data is on disk (fsynced, as redb is).
    Etcd,
    /// Three nodes (containers in this process, each with its own etcd
    /// client, registration and data dir) on one such etcd: the triggers go
    /// to the first, the engine's leader spreads the executions over all.
    Etcd3,
}

impl Backing {
    fn name(self) -> &'static str {
        match self {
            Backing::Durable => "durable",
            Backing::RedbMemLogs => "redb+memlogs",
            Backing::Memory => "memory",
            Backing::Etcd => "etcd",
            Backing::Etcd3 => "etcd, 3 nodes",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "durable" => Some(Backing::Durable),
            "redb-memlogs" | "redb+memlogs" => Some(Backing::RedbMemLogs),
            "memory" => Some(Backing::Memory),
            "etcd" => Some(Backing::Etcd),
            "etcd3" | "etcd-3-nodes" => Some(Backing::Etcd3),
            _ => None,
        }
    }
}

struct Setup {
    container: Container,
    /// The first engine (`bench`).
    engine: Engine,
    /// Every engine, the first one included (`bench`, `bench-1`, …).
    engines: Vec<Engine>,
    _dir: tempfile::TempDir,
    /// The private etcd of [`Backing::Etcd`], stopped at shutdown.
    etcd: Option<arkline_testkit::etcd::EtcdServer>,
    /// [`Backing::Etcd3`]: every node (the first is `container`), its
    /// store handle and registration.
    nodes: Vec<Node>,
}

/// One node of [`Backing::Etcd3`].
struct Node {
    container: Container,
    store: arkline::store::EtcdStore,
    registration: Option<arkline::store::etcd::NodeRegistration>,
}

/// The lease TTL of the bench's nodes (the takeover measurement's scale).
const NODE_TTL: Duration = Duration::from_secs(3);

/// Starts node `i` of [`Backing::Etcd3`] on `endpoint`, serving `engines`.
async fn start_node(
    i: usize,
    endpoint: &str,
    dir: &std::path::Path,
    runtime: &Runtime,
    engines: &[String],
) -> Node {
    let store =
        arkline::store::EtcdStore::connect(arkline::store::EtcdOptions::new([endpoint.to_owned()]))
            .await
            .expect("connects to the bench's etcd");
    let id = format!("node-{i}");
    let container = Container::builder()
        .runtime(runtime.clone())
        .data_dir(dir.join(&id))
        .store(Arc::new(store.clone()))
        .node_name(&id)
        .build()
        .expect("container builds");
    let registration = store
        .register_node(
            arkline::store::etcd::NodeInfo {
                id: id.clone(),
                address: String::new(),
                capacity: runtime.config().max_instances,
                engines: engines.to_vec(),
                load: 0,
                started: String::new(),
                version: String::new(),
            },
            NODE_TTL,
            false,
        )
        .await
        .expect("registers");
    registration.fence(&store);
    container
        .join_cluster(arkline::store::etcd::EtcdCluster::new(
            &store,
            &registration,
        ))
        .expect("joins");
    Node {
        container,
        store,
        registration: Some(registration),
    }
}

impl Setup {
    async fn new(backing: Backing, runtime: &Runtime, ark: &Ark, engines: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let builder = Container::builder().runtime(runtime.clone());
        let mut etcd = None;
        let builder = match backing {
            Backing::Durable => builder.data_dir(dir.path()),
            Backing::RedbMemLogs => {
                builder.store(Arc::new(RedbStore::open(dir.path()).expect("redb opens")))
            }
            Backing::Memory => builder.store(Arc::new(MemoryStore::new())),
            Backing::Etcd => {
                let server = arkline_testkit::etcd::EtcdServer::start_in(dir.path());
                let store = arkline::store::EtcdStore::connect(arkline::store::EtcdOptions::new([
                    server.endpoint(),
                ]))
                .await
                .expect("connects to the bench's etcd");
                etcd = Some(server);
                builder.data_dir(dir.path()).store(Arc::new(store))
            }
            Backing::Etcd3 => builder,
        };
        let names: Vec<String> = (0..engines.max(1))
            .map(|i| {
                if i == 0 {
                    ENGINE.to_owned()
                } else {
                    format!("{ENGINE}-{i}")
                }
            })
            .collect();
        let mut nodes = Vec::new();
        let container = if backing == Backing::Etcd3 {
            let server = arkline_testkit::etcd::EtcdServer::start_in(dir.path());
            for i in 0..3 {
                nodes.push(start_node(i, &server.endpoint(), dir.path(), runtime, &names).await);
            }
            etcd = Some(server);
            // The other nodes run the engines too, with the same bizes.
            for node in &nodes[1..] {
                for name in &names {
                    let engine = node.container.engine(name).await.expect("engine starts");
                    engine
                        .install(ark.clone(), &Capabilities::default())
                        .await
                        .expect("faults installs");
                }
            }
            nodes[0].container.clone()
        } else {
            builder.build().expect("container builds")
        };
        let mut all = Vec::with_capacity(engines);
        for i in 0..engines.max(1) {
            let name = if i == 0 {
                ENGINE.to_owned()
            } else {
                format!("{ENGINE}-{i}")
            };
            let engine = container.engine(&name).await.expect("engine starts");
            engine
                .install(ark.clone(), &Capabilities::default())
                .await
                .expect("faults installs");
            engine
                .apply_settings(PipelineSettingSpec {
                    executor_quota: 0,
                    ..PipelineSettingSpec::default()
                })
                .await
                .expect("settings apply");
            let copies =
                (0..SPREAD).map(|i| FIVE.replace("name: five", &format!("name: five-s{i}")));
            for yaml in [FIVE.to_owned(), WIDE.to_owned()].into_iter().chain(copies) {
                engine
                    .apply_pipeline_yaml("bench.yaml", &yaml)
                    .await
                    .unwrap_or_else(|e| panic!("{yaml} applies: {e}"));
            }
            all.push(engine);
        }
        Setup {
            container,
            engine: all[0].clone(),
            engines: all,
            _dir: dir,
            etcd,
            nodes,
        }
    }

    async fn revision(&self) -> u64 {
        self.container.store().revision().await.expect("revision")
    }

    /// Shuts the container down; its data dir is kept until the end of the run
    /// (see the module documentation).
    async fn shutdown(mut self) {
        self.container.shutdown().await;
        for node in &mut self.nodes {
            node.container.shutdown().await;
            if let Some(registration) = node.registration.take() {
                let _ = registration.revoke().await;
            }
        }
        drop(self.etcd);
        KEPT_DIRS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(self._dir);
    }
}

fn succeeded(exec: &PipelineExecution) {
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{}: {}",
        exec.metadata.name,
        exec.status.reason
    );
}

type At = chrono::DateTime<chrono::Utc>;

/// Where executions' time went, from the timestamps of their final status
/// (means): created → admitted → driver started → first step started → in
/// steps (first step of a stage started → last finished) and between stages →
/// last step finished → execution finished.
#[derive(Debug, Default)]
struct Timeline {
    /// Executions created (triggers) per second, first → last created.
    created_rate: f64,
    /// Executions admitted per second, first → last admitted.
    admitted_rate: f64,
    queued: f64,
    to_driver: f64,
    to_first_step: f64,
    in_steps: f64,
    between_stages: f64,
    to_finished: f64,
}

impl Timeline {
    fn of(execs: &[PipelineExecution]) -> Self {
        let mut t = Timeline::default();
        let mut count = 0.0;
        let (mut created_at, mut admitted_at) = (Vec::new(), Vec::new());
        let secs = |a: At, b: At| (b - a).to_std().map_or(0.0, |d| d.as_secs_f64());
        for e in execs {
            let st = &e.status;
            let admitted = st
                .conditions
                .iter()
                .find(|c| c.kind == ConditionType::Admitted)
                .and_then(|c| c.last_transition);
            let (Some(created), Some(admitted), Some(started), Some(finished)) =
                (e.metadata.created, admitted, st.started, st.finished)
            else {
                continue;
            };
            count += 1.0;
            created_at.push(created);
            admitted_at.push(admitted);
            t.queued += secs(created, admitted);
            t.to_driver += secs(admitted, started);
            let mut previous: Option<At> = None;
            for stage in &st.stages {
                let first = stage.steps.iter().filter_map(|s| s.started).min();
                let last = stage.steps.iter().filter_map(|s| s.finished).max();
                let (Some(first), Some(last)) = (first, last) else {
                    continue;
                };
                match previous {
                    None => t.to_first_step += secs(started, first),
                    Some(p) => t.between_stages += secs(p, first),
                }
                t.in_steps += secs(first, last);
                previous = Some(last);
            }
            t.to_finished += secs(previous.unwrap_or(started), finished);
        }
        let rate = |at: &[At]| match (at.iter().min(), at.iter().max()) {
            (Some(first), Some(last)) if at.len() > 1 => {
                (at.len() - 1) as f64 / secs(*first, *last).max(1e-9)
            }
            _ => 0.0,
        };
        t.created_rate = rate(&created_at);
        t.admitted_rate = rate(&admitted_at);
        if count > 0.0 {
            for v in [
                &mut t.queued,
                &mut t.to_driver,
                &mut t.to_first_step,
                &mut t.in_steps,
                &mut t.between_stages,
                &mut t.to_finished,
            ] {
                *v /= count;
            }
        }
        t
    }

    fn line(&self) -> String {
        let f = |s: f64| format!("{:.2} ms", s * 1e3);
        format!(
            "created at {:.0}/s, admitted at {:.0}/s; queued {} → driver {} → first step {} → in steps {} + between stages {} → finished {}",
            self.created_rate,
            self.admitted_rate,
            f(self.queued),
            f(self.to_driver),
            f(self.to_first_step),
            f(self.in_steps),
            f(self.between_stages),
            f(self.to_finished)
        )
    }
}

/// One execution at a time: trigger, `Engine::wait`.
struct Sequential {
    timeline: Timeline,
    executions: usize,
    per_execution: Duration,
    latencies: Latencies,
    writes: f64,
}

async fn sequential(
    setup: &Setup,
    pipeline: &str,
    warm_up: Duration,
    measure: Duration,
) -> Sequential {
    let one = || async {
        let at = Instant::now();
        let exec = setup
            .engine
            .trigger(pipeline, TriggerRequest::manual())
            .await
            .expect("trigger");
        let name = &exec.metadata.name;
        let done = match tokio::time::timeout(EXECUTION_LIMIT, setup.engine.wait(name)).await {
            Ok(done) => done.expect("wait"),
            Err(_) => {
                let now = setup.engine.execution(name).await.expect("reads");
                panic!("{name} did not finish in {EXECUTION_LIMIT:?}: {now:#?}")
            }
        };
        succeeded(&done);
        at.elapsed()
    };
    let start = Instant::now();
    while start.elapsed() < warm_up {
        one().await;
    }
    let before = setup.revision().await;
    let start = Instant::now();
    let mut all = Vec::new();
    while start.elapsed() < measure {
        all.push(one().await);
    }
    let elapsed = start.elapsed();
    let writes = (setup.revision().await - before) as f64 / all.len() as f64;
    let execs = setup
        .engine
        .executions(None)
        .await
        .expect("lists executions");
    Sequential {
        timeline: Timeline::of(&execs),
        executions: all.len(),
        per_execution: elapsed / all.len() as u32,
        latencies: Latencies::of(all),
        writes,
    }
}

/// N executions triggered at once.
struct Batch {
    n: usize,
    /// First trigger → last execution seen finished.
    elapsed: Duration,
    /// First trigger → last trigger returned.
    triggered: Duration,
    latencies: Latencies,
    /// Store revisions per execution, first trigger → last finished.
    writes: f64,
    /// Of which `PipelineExecution` writes.
    execution_writes: f64,
    /// Executions whose final phase is not `Succeeded`, with why.
    not_succeeded: Vec<String>,
    /// Finished executions whose phase changed afterwards.
    flips: Vec<String>,
    /// On-CPU time and CPU wait of the process's threads during the batch, by
    /// thread name.
    cpu: Vec<(String, Duration, Duration)>,
    /// Size of one finished execution object as JSON.
    object_bytes: usize,
    timeline: Timeline,
    /// Executions per node that ran them.
    spread: String,
}

impl Batch {
    fn per_second(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64()
    }
}

/// What the batch's watch reads of each execution event.
#[derive(serde::Deserialize)]
struct PhaseView {
    metadata: PhaseMeta,
    #[serde(default)]
    status: PhaseStatus,
}

#[derive(serde::Deserialize)]
struct PhaseMeta {
    name: String,
    engine: String,
    resource_version: u64,
}

#[derive(Default, serde::Deserialize)]
struct PhaseStatus {
    #[serde(default)]
    phase: ExecutionPhase,
    #[serde(default)]
    reason: String,
}

async fn batch(setup: &Setup, pipeline: &str, n: usize) -> Batch {
    let store = setup.container.store().clone();
    let before = setup.revision().await;
    let mut events = store
        .watch_encoded(PipelineExecution::KIND, None, before)
        .await
        .expect("watch");
    // One watch follows the whole batch (as a client waiting for many would):
    // N `Engine::wait`s are N watches, each decoding every execution event.
    // It reads each event through a view of the fields it needs (as
    // arkline's own controllers do), not the whole execution: the harness
    // shares the CPU with what it measures.
    let (all_finished, finished_rx) = tokio::sync::oneshot::channel();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(async move {
        // Keyed by (engine, execution): run names repeat across engines.
        let mut finished: HashMap<(String, String), (Instant, ExecutionPhase)> = HashMap::new();
        let mut flips = Vec::new();
        let mut seen = 0u64;
        let mut all_finished = Some(all_finished);
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = &mut stopped => break,
            };
            let exec: PhaseView = event
                .expect("the watch goes on")
                .expect("watch event")
                .object
                .view()
                .expect("an execution's phase");
            if all_finished.is_some() {
                seen += 1;
            }
            let phase = exec.status.phase;
            let key = (exec.metadata.engine.clone(), exec.metadata.name.clone());
            match finished.get(&key) {
                Some((_, first)) if *first != phase => flips.push(format!(
                    "{} went from {first:?} to {phase:?} (resource version {}): {}",
                    exec.metadata.name, exec.metadata.resource_version, exec.status.reason
                )),
                Some(_) => {}
                None if phase.is_finished() => {
                    finished.insert(key, (Instant::now(), phase));
                }
                None => {}
            }
            if finished.len() == n
                && let Some(tx) = all_finished.take()
            {
                let _ = tx.send(finished.clone());
            }
        }
        (seen, flips)
    });
    let cpu_before = thread_cpu();
    let start = Instant::now();
    let targets = targets(pipeline);
    let triggers: Vec<_> = (0..n)
        .map(|i| {
            let (e, pipeline) = targets[i % targets.len()].clone();
            let engine = setup.engines[e].clone();
            tokio::spawn(async move {
                let at = Instant::now();
                let exec = engine
                    .trigger(&pipeline, TriggerRequest::manual())
                    .await
                    .expect("trigger");
                ((exec.metadata.engine, exec.metadata.name), at)
            })
        })
        .collect();
    let mut started = HashMap::with_capacity(n);
    for t in triggers {
        let (name, at) = t.await.expect("trigger task");
        started.insert(name, at);
    }
    let triggered = start.elapsed();
    let finished = tokio::time::timeout(BATCH_LIMIT, finished_rx)
        .await
        .unwrap_or_else(|_| panic!("{n} `{pipeline}` executions did not finish in {BATCH_LIMIT:?}"))
        .expect("collector");
    let writes = (setup.revision().await - before) as f64 / n as f64;
    let cpu = cpu_since(&cpu_before);
    // Not measured: a moment for late writes to finished executions to show.
    tokio::time::sleep(SETTLE).await;
    let _ = stop.send(());
    let (seen, flips) = collector.await.expect("collector");
    let mut execs = Vec::new();
    for engine in &setup.engines {
        execs.extend(engine.executions(None).await.expect("lists executions"));
    }
    let timeline = Timeline::of(&execs);
    let object_bytes = execs
        .first()
        .map_or(0, |e| serde_json::to_vec(e).map_or(0, |v| v.len()));
    let mut per_node: std::collections::BTreeMap<String, usize> = Default::default();
    for e in &execs {
        *per_node
            .entry(e.status.node.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let spread = per_node
        .iter()
        .map(|(node, count)| format!("{node} {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    let not_succeeded: Vec<String> = execs
        .into_iter()
        .filter(|e| e.status.phase != ExecutionPhase::Succeeded)
        .map(|e| {
            format!(
                "{}: {:?}: {}",
                e.metadata.name, e.status.phase, e.status.reason
            )
        })
        .collect();
    let last = finished.values().map(|(at, _)| *at).max().unwrap_or(start);
    let latencies = started
        .iter()
        .map(|(name, at)| finished[name].0.duration_since(*at))
        .collect();
    Batch {
        n,
        elapsed: last.duration_since(start),
        triggered,
        latencies: Latencies::of(latencies),
        writes,
        execution_writes: seen as f64 / n as f64,
        not_succeeded,
        flips,
        cpu,
        object_bytes,
        timeline,
        spread,
    }
}

/// The affinity measurement's pipeline: one step whose cache key changes
/// with `gen`; `lines` counts the runs its cached file has seen (1 = a
/// cache miss).
const CACHED: &str = r#"
name: cached
params:
  - name: gen
stages:
  - name: s
    steps:
      - name: build
        uses: faults/append
        with: { path: /workspace/runs.txt, line: x }
        cache:
          key: deps-${{ params.gen }}
          paths: [runs.txt]
"#;

/// Cache affinity over three nodes: `runs` runs of `cached`, one at a time,
/// the cache key changing every `per_key` runs (a lock file that changes now
/// and then). Returns (hits, what uniformly random placement would hit on
/// average for the same sequence: a run whose key `k` earlier runs used hits
/// with probability 1 − (2/3)^k).
async fn affinity(runtime: &Runtime, ark: &Ark, runs: usize, per_key: usize) -> (usize, f64) {
    let setup = Setup::new(Backing::Etcd3, runtime, ark, 1).await;
    setup
        .engine
        .apply_pipeline_yaml("cached.yaml", CACHED)
        .await
        .expect("cached applies");
    let mut hits = 0;
    let mut random = 0.0;
    for i in 0..runs {
        let generation = i / per_key;
        let exec = setup
            .engine
            .trigger(
                "cached",
                TriggerRequest::manual().param("gen", generation.to_string()),
            )
            .await
            .expect("trigger");
        let done = setup.engine.wait(&exec.metadata.name).await.expect("waits");
        succeeded(&done);
        let lines: usize = done.status.outputs["build"]["lines"]
            .parse()
            .expect("a count");
        if lines > 1 {
            hits += 1;
        }
        random += 1.0 - (2.0f64 / 3.0).powi((i % per_key) as i32);
        // The next placement reads the pipeline's recent nodes: wait until
        // the leader recorded this run.
        for _ in 0..500 {
            let p = setup.engine.pipeline("cached").await.expect("reads");
            if p.is_some_and(|p| {
                p.status.last_execution.as_deref() == Some(exec.metadata.name.as_str())
            }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    setup.shutdown().await;
    (hits, random)
}

/// Times from a node's death to its execution's takeover.
struct Takeover {
    gone: Duration,
    readmitted: Duration,
    finished: Duration,
}

/// One execution of `nap` (a 1 s step, then an `upper`) on a node of three;
/// once its step runs, that node dies as a SIGKILLed one would for the
/// store: every later write of it is refused (fenced on a lease it does not
/// hold), its lease is no longer renewed (nor revoked), and its engines
/// stop. Measured from that moment: its registration gone, the execution
/// admitted again on another node, and finished there.
async fn takeover(runtime: &Runtime, ark: &Ark) -> Takeover {
    let mut setup = Setup::new(Backing::Etcd3, runtime, ark, 1).await;
    setup
        .engine
        .apply_pipeline_yaml("nap.yaml", NAP)
        .await
        .expect("nap applies");
    let exec = setup
        .engine
        .trigger("nap", TriggerRequest::manual())
        .await
        .expect("trigger");
    let name = exec.metadata.name.clone();
    let running_on = loop {
        let e = setup
            .engine
            .execution(&name)
            .await
            .expect("reads")
            .expect("exists");
        if e.status.phase == ExecutionPhase::Running
            && e.status
                .stages
                .first()
                .and_then(|s| s.steps.first())
                .is_some_and(|s| s.started.is_some())
        {
            break e.status.node.clone().expect("a node");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let victim = setup
        .nodes
        .iter_mut()
        .find(|n| n.container.node() == running_on)
        .expect("a node of the bench");
    let died = Instant::now();
    victim
        .store
        .fence(format!("/arkline/nodes/{running_on}"), -1);
    drop(victim.registration.take());
    let dead = victim.container.clone();
    tokio::spawn(async move { dead.shutdown().await });
    let store = setup.nodes[0].store.clone();
    let watcher = setup
        .nodes
        .iter()
        .find(|n| n.container.node() != running_on)
        .expect("a survivor")
        .container
        .clone();
    let survivor = watcher.engine(ENGINE).await.expect("engine");
    let mut gone = None;
    let mut readmitted = None;
    let finished = loop {
        if gone.is_none()
            && !store
                .nodes()
                .await
                .expect("lists nodes")
                .iter()
                .any(|n| n.id == running_on)
        {
            gone = Some(died.elapsed());
        }
        let e = survivor
            .execution(&name)
            .await
            .expect("reads")
            .expect("exists");
        if readmitted.is_none() && e.status.node.as_deref() != Some(running_on.as_str()) {
            readmitted = Some(died.elapsed());
        }
        if e.status.phase.is_finished() {
            assert_eq!(
                e.status.phase,
                ExecutionPhase::Succeeded,
                "{}",
                e.status.reason
            );
            break died.elapsed();
        }
        assert!(died.elapsed() < BATCH_LIMIT, "not taken over");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The bench's setup shuts down what is left (the victim's own shutdown
    // runs on, fenced).
    if setup.nodes[0].container.node() == running_on {
        setup.container = watcher;
    }
    setup.shutdown().await;
    Takeover {
        gone: gone.unwrap_or(finished),
        readmitted: readmitted.unwrap_or(finished),
        finished,
    }
}

/// Bare dispatch, one call at a time: time per call.
async fn bare_sequential(lease: &BizLease, warm_up: Duration, measure: Duration) -> Duration {
    let call = || async {
        let report = lease
            .invoke(StepCall::new("upper", json!({ "text": "x" })))
            .await;
        assert!(report.result.is_ok(), "{:?}", report.result);
    };
    let start = Instant::now();
    while start.elapsed() < warm_up {
        call().await;
    }
    let (start, mut calls) = (Instant::now(), 0u32);
    while start.elapsed() < measure {
        call().await;
        calls += 1;
    }
    start.elapsed() / calls
}

/// Bare dispatch, `in_flight` calls at a time: wall time per call.
async fn bare_concurrent(lease: Arc<BizLease>, in_flight: usize, measure: Duration) -> Duration {
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let lease = lease.clone();
            tokio::spawn(async move {
                let mut calls = 0u32;
                while start.elapsed() < measure {
                    let report = lease
                        .invoke(StepCall::new("upper", json!({ "text": "x" })))
                        .await;
                    assert!(report.result.is_ok(), "{:?}", report.result);
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0u32;
    for t in tasks {
        calls += t.await.expect("caller task");
    }
    start.elapsed() / calls
}

/// On-CPU time and time waiting for a CPU of each live thread
/// (`/proc/self/task/*/schedstat`), by thread id.
fn thread_cpu() -> HashMap<String, (String, Duration, Duration)> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().ok());
        if let (Some(Some(run)), Some(Some(wait))) = (fields.next(), fields.next()) {
            out.insert(
                task.file_name().to_string_lossy().into_owned(),
                (
                    name.trim().to_owned(),
                    Duration::from_nanos(run),
                    Duration::from_nanos(wait),
                ),
            );
        }
    }
    out
}

/// On-CPU time and CPU wait since `before`, summed by thread name, most CPU
/// first (threads that ended in between are not counted).
fn cpu_since(
    before: &HashMap<String, (String, Duration, Duration)>,
) -> Vec<(String, Duration, Duration)> {
    let mut by_name: HashMap<String, (Duration, Duration)> = HashMap::new();
    for (tid, (name, run, wait)) in thread_cpu() {
        let (run0, wait0) = before
            .get(&tid)
            .map_or((Duration::ZERO, Duration::ZERO), |(_, r, w)| (*r, *w));
        let entry = by_name.entry(name).or_default();
        entry.0 += run.saturating_sub(run0);
        entry.1 += wait.saturating_sub(wait0);
    }
    let mut all: Vec<_> = by_name
        .into_iter()
        .filter(|(_, (run, _))| !run.is_zero())
        .map(|(name, (run, wait))| (name, run, wait))
        .collect();
    all.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    all
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let warm_up = arg_secs("--warm-up-time", 1.0);
    let measure = arg_secs("--measurement-time", 5.0);
    let sizes: Vec<usize> = env_list("ARKLINE_EXEC_BATCHES", "200,1000")
        .iter()
        .map(|s| {
            s.parse()
                .expect("ARKLINE_EXEC_BATCHES: comma-separated counts")
        })
        .collect();
    let rounds: usize = std::env::var("ARKLINE_EXEC_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let backings: Vec<Backing> = env_list("ARKLINE_EXEC_STORES", "durable,redb-memlogs,memory")
        .iter()
        .map(|s| Backing::parse(s).unwrap_or_else(|| panic!("ARKLINE_EXEC_STORES: unknown `{s}`")))
        .collect();
    let pipelines = env_list(
        "ARKLINE_EXEC_PIPELINES",
        "five,wide,five-spread,five-10-engines",
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ark = Ark::open(arkline_testkit::plugin("faults")).expect("faults archive");
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(RuntimeConfig::default().cache_dir(cache.path())).expect("runtime");
    runtime.prepare(&ark).expect("warms the compiled cache");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    // Other work on the machine skews every figure: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "executions: {cpus} CPUs (load average before: {}), tokio 2 workers; warm-up {warm_up:?}, measurement {measure:?}; batches {sizes:?} × {rounds} rounds (median shown)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    // Baseline: bare dispatch on the engine's own runtime and lease.
    let (bare_one, bare_many) = rt.block_on(async {
        let setup = Setup::new(Backing::Memory, &runtime, &ark, 1).await;
        let lease = Arc::new(setup.engine.lease("faults").expect("resolves"));
        let one = bare_sequential(&lease, warm_up, measure).await;
        let many = bare_concurrent(lease.clone(), BARE_IN_FLIGHT, measure).await;
        drop(lease);
        setup.shutdown().await;
        (one, many)
    });
    println!(
        "bare dispatch (BizLease::invoke `upper`): 1 at a time {} per call; {BARE_IN_FLIGHT} in flight {} per call (wall)",
        us(bare_one),
        us(bare_many)
    );

    println!();
    println!("one execution at a time (trigger → Engine::wait):");
    let mut timelines = Vec::new();
    println!(
        "| store | pipeline | executions | exec/s | p50 | p99 | per step | ÷ bare (1 at a time) | store writes/exec |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &backing in &backings {
        // One at a time, spreading over copies changes nothing.
        for pipeline in pipelines
            .iter()
            .filter(|p| !matches!(p.as_str(), "five-spread" | "five-10-engines"))
        {
            let s = rt.block_on(async {
                let setup = Setup::new(backing, &runtime, &ark, 1).await;
                let s = sequential(&setup, pipeline, warm_up, measure).await;
                setup.shutdown().await;
                s
            });
            let per_step = s.per_execution / STEPS;
            println!(
                "| {} | {pipeline} | {} | {:.0} | {} | {} | {} | {:.1}× | {:.1} |",
                backing.name(),
                s.executions,
                1.0 / s.per_execution.as_secs_f64(),
                ms(s.latencies.p50),
                ms(s.latencies.p99),
                us(per_step),
                per_step.as_secs_f64() / bare_one.as_secs_f64(),
                s.writes
            );
            timelines.push(format!(
                "{} {pipeline}: {}",
                backing.name(),
                s.timeline.line()
            ));
        }
    }
    println!();
    println!("where one execution's time went (means, from its status timestamps):");
    for line in &timelines {
        println!("- {line}");
    }

    println!();
    println!("N executions triggered at once, followed by one watch:");
    println!(
        "| store | pipeline | N | exec/s (rounds) | triggers returned | p50 | p99 | per step (wall) | ÷ bare ({BARE_IN_FLIGHT} in flight) | store writes/exec (executions) | not Succeeded (flipped after finishing) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut anomalies = Vec::new();
    let mut cpu_lines = Vec::new();
    let mut budget: Option<f64> = None;
    let mut merged_ratios = Vec::new();
    for &backing in &backings {
        for &n in &sizes {
            // Rounds interleaved over the pipelines (round 1 of each, then
            // round 2 of each, …): a drift of the machine during the run
            // touches every pipeline alike, so their ratios hold.
            let mut by_pipeline: Vec<Vec<Batch>> = pipelines.iter().map(|_| Vec::new()).collect();
            for _ in 0..rounds {
                for (pipeline, runs) in pipelines.iter().zip(&mut by_pipeline) {
                    runs.push(rt.block_on(async {
                        let setup =
                            Setup::new(backing, &runtime, &ark, engines_for(pipeline)).await;
                        let b = batch(&setup, pipeline, n).await;
                        setup.shutdown().await;
                        b
                    }));
                }
            }
            let rate = |p: &str| {
                pipelines.iter().position(|q| q == p).map(|i| {
                    by_pipeline[i]
                        .iter()
                        .map(Batch::per_second)
                        .collect::<Vec<_>>()
                })
            };
            if let (Some(one), Some(ten)) = (rate("five"), rate("five-10-engines")) {
                let mut pairs: Vec<f64> = one.iter().zip(&ten).map(|(o, t)| t / o).collect();
                let shown: Vec<String> = one
                    .iter()
                    .zip(&ten)
                    .map(|(o, t)| format!("{:.2} = {t:.0}/{o:.0}", t / o))
                    .collect();
                pairs.sort_by(f64::total_cmp);
                merged_ratios.push(format!(
                    "{} {n}: ten engines merged ÷ one engine, median of the rounds' ratios {:.2}× (rounds in order, ten/one exec/s: {})",
                    backing.name(),
                    pairs[pairs.len() / 2],
                    shown.join(", ")
                ));
            }
            for (pipeline, mut runs) in pipelines.iter().zip(by_pipeline) {
                runs.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
                let all: Vec<String> = runs
                    .iter()
                    .map(|b| format!("{:.0}", b.per_second()))
                    .collect();
                let b = &runs[runs.len() / 2];
                let per_step = b.elapsed / (n as u32 * STEPS);
                if backing == Backing::Durable
                    && pipeline == "five"
                    && n == *sizes.iter().max().unwrap_or(&n)
                {
                    budget = Some(b.per_second());
                }
                for r in &runs {
                    anomalies.extend(
                        r.not_succeeded
                            .iter()
                            .take(3)
                            .map(|a| format!("{} {pipeline} {n}: final {a}", backing.name())),
                    );
                    anomalies.extend(
                        r.flips
                            .iter()
                            .take(3)
                            .map(|a| format!("{} {pipeline} {n}: {a}", backing.name())),
                    );
                }
                let writer = b
                    .cpu
                    .iter()
                    .find(|(name, _, _)| name.starts_with("arkline-store"))
                    .map_or(String::new(), |(_, run, _)| {
                        format!(
                            "; store writer {} on-CPU per write",
                            us(run.div_f64(b.writes * n as f64))
                        )
                    });
                cpu_lines.push(format!(
                    "{} {pipeline} {n} ({} wall; an execution is {} bytes of JSON{writer}): {}",
                    backing.name(),
                    ms(b.elapsed),
                    b.object_bytes,
                    b.cpu
                        .iter()
                        .take(4)
                        .map(|(name, run, wait)| format!(
                            "{name} {} (+{} waiting for a CPU)",
                            ms(*run),
                            ms(*wait)
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                cpu_lines.push(format!("  timeline: {}", b.timeline.line()));
                if backing == Backing::Etcd3 {
                    cpu_lines.push(format!("  executions per node: {}", b.spread));
                }
                let bad: usize = runs.iter().map(|r| r.not_succeeded.len()).sum();
                let flipped: usize = runs.iter().map(|r| r.flips.len()).sum();
                println!(
                    "| {} | {pipeline} | {n} | {:.0} ({}) | {} | {} | {} | {} | {:.1}× | {:.1} ({:.1}) | {bad} ({flipped}) |",
                    backing.name(),
                    b.per_second(),
                    all.join(", "),
                    ms(b.triggered),
                    ms(b.latencies.p50),
                    ms(b.latencies.p99),
                    us(per_step),
                    per_step.as_secs_f64() / bare_many.as_secs_f64(),
                    b.writes,
                    b.execution_writes
                );
            }
        }
    }
    for line in &merged_ratios {
        println!("{line}");
    }
    println!();
    println!(
        "the median round of each batch: on-CPU time by thread name, and where its executions' time went (means):"
    );
    for line in &cpu_lines {
        println!("- {line}");
    }
    if !anomalies.is_empty() {
        println!();
        println!(
            "executions that did not end Succeeded, or changed after finishing (first 3 per round):"
        );
        for a in &anomalies {
            println!("- {a}");
        }
    }
    if backings.contains(&Backing::Etcd3) {
        let (runs, per_key) = (30, 3);
        let (hits, random) = rt.block_on(affinity(&runtime, &ark, runs, per_key));
        println!();
        println!(
            "cache affinity (three nodes; {runs} runs one at a time, the cache key changing every {per_key}): {hits} cache hits; uniformly random placement: {random:.1} expected ({:.1}×)",
            hits as f64 / random
        );
        println!();
        println!(
            "takeover (three nodes, lease TTL {NODE_TTL:?}): a node running a step dies (its writes fenced off, its lease left to expire, its engines stopped) →"
        );
        println!(
            "| round | node gone (lease expired) | admitted again elsewhere | finished there |"
        );
        println!("|---|---|---|---|");
        for round in 1..=rounds {
            let t = rt.block_on(takeover(&runtime, &ark));
            println!(
                "| {round} | {} | {} | {} |",
                ms(t.gone),
                ms(t.readmitted),
                ms(t.finished)
            );
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "load average after: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "guest threads (calls past their first poll), by engine: {:?}",
        runtime.guest_cpu()
    );
    if let Some(rate) = budget {
        println!(
            "budget: ≥ 1,000 durable five-step executions/s on 2 cores: {rate:.0}/s {}",
            if rate >= 1000.0 { "✓" } else { "✗" }
        );
    }
    // Removes every kept data dir (a static is never dropped on its own).
    KEPT_DIRS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
}
