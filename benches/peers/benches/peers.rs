//! arkline's step dispatch beside the ways peers run the same step, in one run.
//!
//! The step is `upper` (upper-case a short string) everywhere:
//!
//! - `arkline`: `faults/upper` through `BizRegistry` + `BizLease::invoke`, a fresh
//!   isolated instance per call, as `benches/runtime.rs` measures it.
//! - `extism_fresh`: the same step as an Extism plugin (`guest/`), a fresh plugin
//!   from a `CompiledPlugin` per call: the like-for-like isolation. The guest is
//!   wasm32-unknown-unknown and needs no WASI, so this is Extism's cheapest fresh
//!   plugin; `extism_fresh_wasi` gives it a WASI context as arkline's guests get.
//! - `extism_reused`: one plugin called over and over (state carries over between
//!   calls; no isolation between them).
//! - `process_spawn`: spawn + wait of a native binary (`src/bin/upper.rs`), output
//!   captured: how container- and process-based CI plugins run a step.
//! - `sh_c`: the same through `sh -c`.
//!
//! Budgets (DESIGN.md): arkline ≥ 10× faster than `extism_fresh`, ≥ 50× faster than
//! `process_spawn`. `bash benches/compare.sh` at the repository root runs this and
//! the workspace's `dispatch` group and prints the ratios.
//!
//! `ARKLINE_FAULTS_ARK` names the `faults` archive (default:
//! `target/ark/faults-0.1.0.ark` at the repository root, made by
//! `cargo run -p cargo-ark -- ark package -p faults`).

use std::path::PathBuf;
use std::process::{Command, Output};

use arkline::runtime::StepCall;
use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::runtime::{Activation, BizLease, BizRegistry, Runtime, RuntimeConfig};
use criterion::{Criterion, SamplingMode, criterion_group};
use extism::convert::Json;
use extism::{CompiledPlugin, Plugin, PluginBuilder};
use serde::{Deserialize, Serialize};
use serde_json::json;

const TEXT: &str = "hello, arkline";
const UPPER: &str = "HELLO, ARKLINE";

/// The Extism guest, built by `build.rs`.
const UPPER_EXTISM: &[u8] = include_bytes!(env!("UPPER_EXTISM_WASM"));
/// The process-per-step peer.
const UPPER_NATIVE: &str = env!("CARGO_BIN_EXE_upper");

/// The Extism step's input and output, as the `faults` biz's `upper` takes and gives.
#[derive(Deserialize, Serialize)]
struct Text {
    text: String,
}

fn faults_ark() -> PathBuf {
    std::env::var_os("ARKLINE_FAULTS_ARK").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/ark/faults-0.1.0.ark"
            ))
        },
        PathBuf::from,
    )
}

fn arkline_lease() -> BizLease {
    let path = faults_ark();
    let ark = Ark::open(&path).unwrap_or_else(|e| {
        panic!(
            "cannot open the faults archive {}: {e}\n\
             package it at the repository root: cargo run -p cargo-ark -- ark package -p faults \
             (or set ARKLINE_FAULTS_ARK)",
            path.display()
        )
    });
    let runtime = Runtime::new(RuntimeConfig::default()).expect("arkline runtime");
    let registry = BizRegistry::new(runtime, "bench");
    registry
        .install_blocking(&ark, &Capabilities::default(), Activation::IfNone)
        .expect("installs faults");
    registry.resolve("faults").expect("resolves faults")
}

fn extism_compiled(wasi: bool) -> CompiledPlugin {
    CompiledPlugin::new(PluginBuilder::new(UPPER_EXTISM).with_wasi(wasi)).expect("compiles")
}

fn extism_call(plugin: &mut Plugin) -> Text {
    let Json(out) = plugin
        .call::<Json<Text>, Json<Text>>(
            "upper",
            Json(Text {
                text: TEXT.to_owned(),
            }),
        )
        .expect("upper runs");
    out
}

fn spawn_native() -> Output {
    Command::new(UPPER_NATIVE)
        .arg(TEXT)
        .output()
        .expect("spawns upper")
}

fn spawn_sh() -> Output {
    Command::new("sh")
        .args(["-c", r#""$0" "$1""#, UPPER_NATIVE, TEXT])
        .output()
        .expect("spawns sh")
}

fn stdout_line(output: &Output) -> &str {
    assert!(output.status.success(), "upper failed: {output:?}");
    std::str::from_utf8(&output.stdout)
        .expect("utf-8")
        .trim_end()
}

fn peers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let lease = arkline_lease();
    let config = json!({ "text": TEXT });
    let compiled = extism_compiled(false);
    let compiled_wasi = extism_compiled(true);
    let mut reused = Plugin::new_from_compiled(&compiled).expect("instantiates");

    // Every peer does the same work: check it once, outside the timing.
    let report = rt.block_on(lease.invoke(StepCall::new("upper", config.clone())));
    let outcome = report.result.expect("arkline upper runs");
    assert_eq!(outcome.outputs.get("text").map(String::as_str), Some(UPPER));
    assert_eq!(extism_call(&mut reused).text, UPPER);
    assert_eq!(stdout_line(&spawn_native()), UPPER);
    assert_eq!(stdout_line(&spawn_sh()), UPPER);

    let mut group = c.benchmark_group("peers");
    group.bench_function("arkline", |b| {
        b.to_async(&rt).iter(|| async {
            let report = lease.invoke(StepCall::new("upper", config.clone())).await;
            assert!(report.result.is_ok());
        })
    });
    group.bench_function("extism_fresh", |b| {
        b.iter(|| {
            let mut plugin = Plugin::new_from_compiled(&compiled).expect("instantiates");
            extism_call(&mut plugin)
        })
    });
    group.bench_function("extism_fresh_wasi", |b| {
        b.iter(|| {
            let mut plugin = Plugin::new_from_compiled(&compiled_wasi).expect("instantiates");
            extism_call(&mut plugin)
        })
    });
    group.bench_function("extism_reused", |b| b.iter(|| extism_call(&mut reused)));
    // Milliseconds each: flat sampling keeps the run within the measurement time.
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("process_spawn", |b| {
        b.iter(|| assert!(spawn_native().status.success()))
    });
    group.bench_function("sh_c", |b| b.iter(|| assert!(spawn_sh().status.success())));
    group.finish();
}

criterion_group!(benches, peers);

fn main() {
    // Some hosts capture a backtrace per call when it is set (Extism's per-call cost
    // doubles): the figures would not be the ones the budgets speak of.
    let set = |name| std::env::var_os(name).is_some_and(|v| v != "0");
    if set("RUST_BACKTRACE") || set("RUST_LIB_BACKTRACE") {
        eprintln!(
            "peers: unset RUST_BACKTRACE and RUST_LIB_BACKTRACE before measuring (DESIGN.md, \"Budgets\")"
        );
        std::process::exit(2);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
