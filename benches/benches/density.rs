//! Density and leaks of the isolation runtime, as resident memory (RSS):
//!
//! - 1, 10, 100 and 1,000 distinct bizes (`biz-0000@1.0.0` …) installed in one
//!   engine, each its own loaded component and `InstancePre` (they share one
//!   compiled artifact on disk, so this measures the per-install cost, not 1,000
//!   compilations), then each called once; budget: 1,000 within 1 GiB;
//! - 10,000 install → call → uninstall cycles of one biz; budget: RSS after them
//!   within 5 % of RSS after the first 1,000 (the warm-up).
//!
//! `cargo bench -p arkline-benches --bench density` (prints a table; no criterion:
//! RSS is a level, not a timing). `ARKLINE_DENSITY_BIZES` and
//! `ARKLINE_DENSITY_CYCLES` shrink it for a quick look.

use std::sync::Arc;

use arkline::ark::{Ark, write_ark};
use arkline::host::Capabilities;
use arkline::runtime::{Activation, BizRegistry, Runtime, RuntimeConfig, StepCall, UninstallMode};
use serde_json::json;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Anonymous, file-backed and shared-memory parts of RSS, from smaps_rollup.
fn rss_parts() -> String {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    format!(
        "anon {}, file {}, shmem {}",
        mib(field("Pss_Anon:")),
        mib(field("Pss_File:")),
        mib(field("Pss_Shmem:"))
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn renamed(ark: &Ark, name: &str) -> Ark {
    let mut manifest = ark.manifest.clone();
    manifest.name = name.to_owned();
    manifest.version = semver::Version::new(1, 0, 0);
    let (bytes, _) = write_ark(manifest, &ark.component, &ark.files).expect("writes");
    Ark::from_bytes(&bytes).expect("reads")
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bizes = env_count("ARKLINE_DENSITY_BIZES", 1000);
    let cycles = env_count("ARKLINE_DENSITY_CYCLES", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ark = Ark::open(arkline_testkit::plugin("faults")).expect("faults archive");
    let cache = tempfile::tempdir().expect("tempdir");
    let mut config = RuntimeConfig::default().cache_dir(cache.path());
    if let Some(n) = std::env::var("ARKLINE_WARM_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config = config.warm_slots(n);
    }
    if let Some(n) = std::env::var("ARKLINE_KEEP_RESIDENT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config = config.keep_resident(n);
    }
    println!(
        "density: runtime with {} warm slots, {} KiB kept resident per memory",
        config.warm_slots,
        config.keep_resident >> 10
    );
    let runtime = Runtime::new(config).expect("runtime");
    runtime.prepare(&ark).expect("warms the compiled cache");
    let grants = Capabilities::default();

    let before = rss_bytes();
    let registry = BizRegistry::new(runtime.clone(), "density");
    // Tiers of 1, 10, 100, 1,000 distinct bizes (up to `bizes`): at each, the
    // new bizes are installed (each archive made, installed and dropped in
    // turn, as a deployment would: what stays is what the runtime keeps per
    // biz), RSS read, then each called once (instantiated) and RSS read again.
    let mut tiers: Vec<usize> = [1, 10, 100, 1000]
        .into_iter()
        .filter(|&t| t < bizes)
        .collect();
    tiers.push(bizes);
    println!("density: RSS before any biz {}", mib(before));
    println!();
    println!(
        "| distinct bizes | RSS installed | RSS installed and each called once | per biz (called) over the RSS before | PSS parts |"
    );
    println!("|---|---|---|---|---|");
    let mut done = 0;
    for &tier in &tiers {
        for i in done..tier {
            let variant = renamed(&ark, &format!("biz-{i:04}"));
            registry
                .install_blocking(&variant, &grants, Activation::IfNone)
                .expect("installs");
        }
        let installed_only = rss_bytes();
        rt.block_on(async {
            for i in done..tier {
                let lease = registry.resolve(&format!("biz-{i:04}")).expect("resolves");
                let report = lease
                    .invoke(StepCall::new("upper", json!({ "text": "x" })))
                    .await;
                assert!(report.result.is_ok(), "{:?}", report.result);
            }
        });
        done = tier;
        let called = rss_bytes();
        println!(
            "| {tier} | {} | {} | {} | {} |",
            mib(installed_only),
            mib(called),
            mib(called.saturating_sub(before) / tier.max(1) as u64),
            rss_parts()
        );
    }
    println!();
    println!("density budget: 1,000 bizes within 1 GiB");
    rt.block_on(async {
        for i in 0..bizes {
            registry
                .uninstall(
                    &format!("biz-{i:04}"),
                    &semver::Version::new(1, 0, 0),
                    UninstallMode::Wait,
                )
                .await
                .expect("uninstalls");
        }
    });
    println!("density: after uninstalling all: RSS {}", mib(rss_bytes()));

    let ark = Arc::new(ark);
    let one_cycle = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let info = registry
                .install(ark.clone(), &grants, Activation::IfNone)
                .await
                .expect("installs");
            {
                let lease = registry.resolve("faults").expect("resolves");
                let report = lease
                    .invoke(StepCall::new("upper", json!({ "text": "x" })))
                    .await;
                assert!(report.result.is_ok());
            }
            registry
                .uninstall(&info.name, &info.version, UninstallMode::Wait)
                .await
                .expect("uninstalls");
        })
    };
    let warmup = (cycles / 10).max(1);
    for _ in 0..warmup {
        one_cycle(&rt);
    }
    let warm = rss_bytes();
    for _ in warmup..cycles {
        one_cycle(&rt);
    }
    let end = rss_bytes();
    let growth = (end as f64 - warm as f64) / warm as f64 * 100.0;
    println!(
        "leak: {cycles} install/call/uninstall cycles: RSS after {warmup} {} → after {cycles} {} ({growth:+.2} %; budget ≤ 5 %)",
        mib(warm),
        mib(end)
    );
}
