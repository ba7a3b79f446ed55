//! Durable write throughput of the redb store under 1, 16 and 256 concurrent
//! writers (group commit should make more writers cheaper per write), and the
//! latency from a write to its watch event.
//!
//! `cargo bench --bench store_writes -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arkline::model::{API_VERSION, DynamicObject, ObjectMeta};
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = durable_writes, watch_latency
}
criterion_main!(benches);
