//! The isolation runtime against the floor beneath it.
//!
//! - `dispatch`: one step call in a fresh isolated instance through arkline
//!   (`BizLease::invoke`) vs raw wasmtime instantiate + call of the same component
//!   from an `InstancePre` with the same WASI context, on the same engine. Budget:
//!   arkline ≤ 1.3× raw.
//! - `payload`: the `echo` step with 1 KiB, 64 KiB and 1 MiB of config.
//! - `install`: a biz install from the precompiled cache (budget ≤ 2 ms) and cold.
//! - `cancel`: latency from cancelling a spinning guest to its call returning.
//!
//! `cargo bench -p arkline-benches --bench runtime -- --warm-up-time 1 --measurement-time 3`
//! (unset `RUST_BACKTRACE` first).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::host::since_v0_1_0;
use arkline::runtime::{
    Activation, BizLease, BizRegistry, CancelToken, Runtime, RuntimeConfig, StepCall,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn faults() -> Ark {
    Ark::open(arkline_testkit::plugin("faults")).expect("faults archive")
}

fn leased(runtime: &Runtime, ark: &Ark) -> BizLease {
    let registry = BizRegistry::new(runtime.clone(), "bench");
    registry
        .install_blocking(ark, &Capabilities::default(), Activation::IfNone)
        .expect("installs");
    registry.resolve("faults").expect("resolves")
}

/// Raw wasmtime: the floor. Same engine, same component, a WASI context like the
/// one arkline builds (captured stdout/stderr, no preopens), no arkline host.
struct Raw {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Raw {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn raw_pre(runtime: &Runtime, ark: &Ark) -> since_v0_1_0::StepPre<Raw> {
    let engine = runtime.engine();
    let component = Component::new(engine, &ark.component).expect("compiles");
    let mut linker = Linker::<Raw>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
    linker
        .define_unknown_imports_as_traps(&component)
        .expect("stubs");
    since_v0_1_0::StepPre::new(linker.instantiate_pre(&component).expect("pre")).expect("typed")
}

fn raw_context() -> since_v0_1_0::arkline::step::types::Context {
    since_v0_1_0::arkline::step::types::Context {
        engine: "bench".into(),
        pipeline: String::new(),
        run: 0,
        stage: String::new(),
        step_name: String::new(),
        step_type: "upper".into(),
        attempt: 1,
        workspace: "/workspace".into(),
        env: Vec::new(),
    }
}

async fn raw_call(runtime: &Runtime, pre: &since_v0_1_0::StepPre<Raw>, config: &str) {
    let wasi = WasiCtxBuilder::new()
        .stdout(wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(4 << 20))
        .stderr(wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(4 << 20))
        .build();
    let mut store = Store::new(
        runtime.engine(),
        Raw {
            wasi,
            table: ResourceTable::new(),
        },
    );
    store.set_fuel(u64::MAX).expect("fuel");
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = pre
        .instantiate_async(&mut store)
        .await
        .expect("instantiates");
    let out = instance
        .arkline_step_plugin()
        .call_run(&mut store, &raw_context(), config)
        .await
        .expect("runs");
    assert!(out.is_ok());
}

fn dispatch(c: &mut Criterion) {
    let rt = tokio();
    let ark = faults();
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let lease = leased(&runtime, &ark);
    let pre = raw_pre(&runtime, &ark);
    let config = json!({ "text": "hello, arkline" });
    let config_text = config.to_string();

    let mut group = c.benchmark_group("dispatch");
    group.bench_function("raw_wasmtime", |b| {
        b.to_async(&rt)
            .iter(|| raw_call(&runtime, &pre, &config_text))
    });
    group.bench_function("arkline", |b| {
        b.to_async(&rt).iter(|| async {
            let report = lease.invoke(StepCall::new("upper", config.clone())).await;
            assert!(report.result.is_ok());
        })
    });
    group.finish();

    let mut group = c.benchmark_group("payload");
    for size in [1usize << 10, 64 << 10, 1 << 20] {
        let data = "x".repeat(size);
        let config = json!({ "data": data });
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("echo", size), &config, |b, config| {
            b.to_async(&rt).iter(|| async {
                let report = lease
                    .invoke(StepCall::new("echo", config.clone()).output_limit(4 << 20))
                    .await;
                assert!(report.result.is_ok(), "{:?}", report.result);
            })
        });
    }
    group.finish();
}

fn install(c: &mut Criterion) {
    let ark = faults();
    let dir = tempfile::tempdir().expect("tempdir");
    let cached = Runtime::new(RuntimeConfig::default().cache_dir(dir.path())).expect("runtime");
    cached.prepare(&ark).expect("warms the cache");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("install");
    group.bench_function("from_compiled_cache", |b| {
        let registry = BizRegistry::new(cached.clone(), "bench");
        b.iter(|| {
            let info = registry
                .install_blocking(&ark, &Capabilities::default(), Activation::IfNone)
                .expect("installs");
            // Uninstall synchronously: no leases, so it completes at once.
            rt.block_on(registry.uninstall(
                &info.name,
                &info.version,
                arkline::runtime::UninstallMode::Wait,
            ))
            .expect("uninstalls");
        })
    });
    let uncached = Runtime::new(RuntimeConfig::default()).expect("runtime");
    group.sample_size(10);
    group.bench_function("cold_compile", |b| {
        b.iter(|| uncached.prepare(&ark).expect("compiles"))
    });
    group.finish();
}

fn cancel(c: &mut Criterion) {
    let rt = tokio();
    let ark = faults();
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let lease = Arc::new(leased(&runtime, &ark));
    let mut group = c.benchmark_group("cancel");
    group.sample_size(20);
    group.bench_function("spinning_guest", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let lease = lease.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let token = CancelToken::new();
                    let call = StepCall::new("spin", json!({})).cancel_on(token.clone());
                    let running =
                        arkline_testkit::spawn_started(lease.clone(), call, |_| true).await;
                    let at = Instant::now();
                    token.cancel();
                    let report = running.await.expect("joins");
                    total += at.elapsed();
                    assert!(report.fault().is_some());
                }
                total
            }
        })
    });
    group.finish();
}

criterion_group!(benches, dispatch, install, cancel);
criterion_main!(benches);
