//! Durable write throughput of the redb store under 1, 16 and 256 concurrent
//! writers (group commit should make more writers cheaper per write), the
//! latency from a write to its watch event, and what a watcher pays to turn a
//! stored five-step execution into its typed form: through a
//! `serde_json::Value` tree (`DynamicObject`, then `Resource::from_dynamic`) or
//! straight from the stored JSON (`Resource::from_json`).
//!
//! `cargo bench --bench store_writes -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arkline::model::{
    API_VERSION, DynamicObject, ExecutionPhase, ObjectMeta, PipelineExecution,
    PipelineExecutionSpec, Resource, StageStatus, StepPhase, StepStatus, parse_pipeline,
};
use arkline::store::{RedbOptions, RedbStore, Store};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn object(kind: &str) -> DynamicObject {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    DynamicObject {
        api_version: API_VERSION.into(),
        kind: kind.into(),
        metadata: ObjectMeta {
            name: format!("o{n}"),
            engine: "bench".into(),
            ..Default::default()
        },
        spec: serde_json::json!({ "stages": [{ "name": "build", "steps": [{ "uses": "shell" }] }] }),
        status: serde_json::Value::Null,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn durable_writes(c: &mut Criterion) {
    writes(
        c,
        "redb_durable_writes",
        RedbOptions::default(),
        &[1, 16, 256],
    );
    writes(
        c,
        "redb_durable_writes_quick_repair",
        RedbOptions::default().quick_repair(true),
        &[1, 256],
    );
}

fn writes(c: &mut Criterion, name: &str, options: RedbOptions, writer_counts: &[u64]) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open_with(dir.path(), options).expect("open store"));
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for &writers in writer_counts {
        group.bench_function(BenchmarkId::from_parameter(writers), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let store = store.clone();
                async move {
                    let remaining = Arc::new(AtomicU64::new(iters));
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for _ in 0..writers.min(iters.max(1)) {
                        let (store, remaining) = (store.clone(), remaining.clone());
                        tasks.push(tokio::spawn(async move {
                            while remaining
                                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                            {
                                store.create(object("Bench")).await.expect("durable create");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("writer");
                    }
                    start.elapsed()
                }
            });
        });
    }
    group.finish();
}

fn watch_latency(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).expect("open store"));
    let mut group = c.benchmark_group("redb_watch_latency");
    group.bench_function("write_ack", |b| {
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            async move {
                store.create(object("Ack")).await.expect("create");
            }
        });
    });
    group.bench_function("write_to_watch_event", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let from = store.revision().await.expect("revision");
                let mut events = store.watch("Latency", None, from).await.expect("watch");
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    store.create(object("Latency")).await.expect("create");
                    events.next().await.expect("event").expect("event ok");
                    total += start.elapsed();
                }
                total
            }
        });
    });
    group.finish();
}

/// A five-step execution as the durable path stores it near its end: the
/// pipeline snapshot in the spec, every step's status written.
fn five_step_execution() -> PipelineExecution {
    let yaml = (1..=5).fold(String::from("name: five\nstages:\n"), |mut y, i| {
        y.push_str(&format!(
            "  - name: stage-{i}\n    steps:\n      - name: step-{i}\n        uses: faults/upper\n        with: {{ text: \"hello from step {i}\" }}\n"
        ));
        y
    });
    let pipeline = parse_pipeline("five.yaml", &yaml).expect("valid pipeline");
    let mut exec = PipelineExecution::new(
        ObjectMeta::new("bench", "five-1"),
        PipelineExecutionSpec {
            pipeline: "five".into(),
            pipeline_spec: pipeline.spec,
            run: 1,
            ..Default::default()
        },
    );
    exec.status.phase = ExecutionPhase::Running;
    for i in 1..=5 {
        exec.status.stages.push(StageStatus {
            name: format!("stage-{i}"),
            phase: StepPhase::Succeeded,
            steps: vec![StepStatus {
                name: format!("step-{i}"),
                phase: StepPhase::Succeeded,
                attempts: 1,
                started: Some(chrono::Utc::now()),
                finished: Some(chrono::Utc::now()),
                ..Default::default()
            }],
            ..Default::default()
        });
        exec.status.outputs.insert(
            format!("step-{i}"),
            [("text".to_owned(), format!("HELLO FROM STEP {i}"))].into(),
        );
    }
    exec
}

fn typed_decode(c: &mut Criterion) {
    let exec = five_step_execution();
    let stored = serde_json::to_vec(&exec.to_dynamic().expect("dynamic")).expect("json");
    let mut group = c.benchmark_group(format!("decode_execution_{}_bytes", stored.len()));
    group.bench_function("via_value", |b| {
        b.iter(|| {
            let dynamic: DynamicObject = serde_json::from_slice(&stored).expect("decodes");
            PipelineExecution::from_dynamic(dynamic).expect("converts")
        })
    });
    group.bench_function("from_json", |b| {
        b.iter(|| PipelineExecution::from_json(&stored).expect("decodes"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = durable_writes, watch_latency
}

criterion_group! {
    name = decode;
    config = Criterion::default();
    targets = typed_decode
}
criterion_main!(benches, decode);
