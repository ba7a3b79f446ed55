//! Density and leaks of the isolation runtime, as memory: proportional set size
//! (PSS: shared pages divided among the processes that map them, what an
//! operator adds up) with the resident set (RSS) beside it.
//!
//! - 1, 10, 100 and 1,000 **distinct** bizes (`biz-0000@1.0.0` …) installed in
//!   one engine, then each called once. Each is the `faults` component with a
//!   distinct constant in its code (the `seed` step's `i64.const`, rewritten in
//!   the component's bytes), so each has its own compiled artifact, mapped from
//!   the compiled cache, as 1,000 really different bizes would; the `seed` call
//!   checks that each runs its own code. Budget: 1,000 within 1 GiB of PSS.
//!   Compiling 1,000 components takes minutes: they are compiled once, in a
//!   first process, into a cache kept under `target/density-cache` (one
//!   directory per `faults` build; others are removed), and measured in a second
//!   process that only loads them, so the compiler's own memory is not counted;
//!   Then, with nothing called, the same after the runtime's default idle
//!   release (`RuntimeConfig::idle_release`, 60 s: the pages of code no call
//!   used for that long are handed back to the kernel);
//! - 10,000 install → call → uninstall cycles of one biz; budget: RSS after them
//!   within 5 % of RSS after the first 1,000 (the warm-up).
//!
//! `cargo bench -p arkline-benches --bench density` (prints a table; no criterion:
//! memory is a level, not a timing). `ARKLINE_DENSITY_BIZES` and
//! `ARKLINE_DENSITY_CYCLES` shrink it for a quick look; `ARKLINE_DENSITY_CACHE`
//! moves the compiled cache.

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

/// A field of `/proc/self/smaps_rollup`, in bytes.
fn rollup(name: &str) -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Anonymous, file-backed and shared-memory parts of PSS.
fn pss_parts() -> String {
    format!(
        "anon {}, file {}, shmem {}",
        mib(rollup("Pss_Anon:")),
        mib(rollup("Pss_File:")),
        mib(rollup("Pss_Shmem:"))
    )
}

/// Size and resident part of the mappings of files under `dir`, summed by
/// permission (`r-xp` is code; `r--p` the artifact's metadata and data).
fn artifact_mappings(dir: &std::path::Path) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let dir = dir.to_string_lossy();
    let mut sums: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            current = (fields.len() >= 6 && fields[5].contains(dir.as_ref()))
                .then(|| fields[1].to_owned());
            continue;
        }
        let Some(perms) = &current else { continue };
        let kb = || {
            fields
                .get(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        let entry = sums.entry(perms.clone()).or_default();
        match fields.first() {
            Some(&"Size:") => entry.0 += kb(),
            Some(&"Rss:") => entry.1 += kb(),
            Some(&"Pss:") => entry.2 += kb(),
            _ => {}
        }
    }
    sums.iter()
        .map(|(perms, (size, rss, pss))| {
            format!(
                "{perms}: size {}, RSS {}, PSS {}",
                mib(*size),
                mib(*rss),
                mib(*pss)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Signed LEB128, as `i64.const` encodes its immediate.
fn sleb128(value: i64) -> Vec<u8> {
    let mut value = value;
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return out;
        }
    }
}

/// The `faults` component with its `seed` constant replaced by `seed`: the same
/// encoded length (only the low 32 bits change), so nothing else moves.
fn with_seed(component: &[u8], seed: u64) -> Vec<u8> {
    let from = sleb128(FAULTS_SEED as i64);
    let to = sleb128(seed as i64);
    assert_eq!(from.len(), to.len(), "the seed keeps its encoded length");
    let mut out = component.to_vec();
    let mut found = 0;
    let mut at = 0;
    while let Some(pos) = out[at..].windows(from.len()).position(|w| w == from) {
        let start = at + pos;
        out[start..start + to.len()].copy_from_slice(&to);
        found += 1;
        at = start + to.len();
    }
    assert!(
        found > 0,
        "the faults component has no `i64.const {FAULTS_SEED:#x}`: rebuild it (the `seed` step)"
    );
    out
}

/// `faults`' `SEED` (plugins/testing/faults/src/lib.rs).
const FAULTS_SEED: u64 = 0x5EED_C0DE_0000_0000;

fn variant(ark: &Ark, i: usize) -> (Ark, u64) {
    let seed = FAULTS_SEED | (i as u64 + 1);
    let mut manifest = ark.manifest.clone();
    manifest.name = format!("biz-{i:04}");
    manifest.version = semver::Version::new(1, 0, 0);
    let component = with_seed(&ark.component, seed);
    let (bytes, _) = write_ark(manifest, &component, &ark.files).expect("writes");
    (Ark::from_bytes(&bytes).expect("reads"), seed)
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
    let ark_path = match std::env::var_os("ARKLINE_DENSITY_ARK") {
        Some(path) => std::path::PathBuf::from(path),
        None => arkline_testkit::plugin("faults"),
    };
    let ark = Ark::open(&ark_path).expect("faults archive");
    let cache_root = std::env::var_os("ARKLINE_DENSITY_CACHE").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/density-cache"),
        std::path::PathBuf::from,
    );
    let cache_dir = cache_root.join(&ark.manifest.component.sha256[..16]);
    if std::env::var("ARKLINE_DENSITY_PHASE").as_deref() != Ok("measure") {
        precompile(&ark, bizes, &cache_root, &cache_dir);
        let status = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(std::env::args_os().skip(1))
            .env("ARKLINE_DENSITY_PHASE", "measure")
            .env("ARKLINE_DENSITY_ARK", &ark_path)
            .status()
            .expect("runs the measuring process");
        std::process::exit(status.code().unwrap_or(1));
    }
    measure(ark, bizes, cycles, &cache_dir);
}

/// Compiles the base component and every variant into `cache_dir` (those not
/// there yet), and removes the caches of other `faults` builds.
fn precompile(ark: &Ark, bizes: usize, cache_root: &std::path::Path, cache_dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(cache_root) {
        for entry in entries.flatten() {
            if entry.path() != cache_dir {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let runtime =
        Runtime::new(RuntimeConfig::default().cache_dir(cache_dir)).expect("compiling runtime");
    let started = std::time::Instant::now();
    runtime.prepare(ark).expect("compiles faults");
    let compiled = std::sync::atomic::AtomicUsize::new(0);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= bizes {
                        return;
                    }
                    let (variant, _) = variant(ark, i);
                    let prepared = runtime.prepare(&variant).expect("compiles a variant");
                    if prepared.cache != arkline::runtime::CacheOutcome::Hit {
                        compiled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    println!(
        "density: {bizes} distinct components ready in {} ({} compiled now, the rest cached) in {:.1} s",
        cache_dir.display(),
        compiled.into_inner(),
        started.elapsed().as_secs_f64()
    );
}

fn measure(ark: Ark, bizes: usize, cycles: usize, cache_dir: &std::path::Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut config = RuntimeConfig::default().cache_dir(cache_dir);
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
    let grants = Capabilities::default();

    let before = rss_bytes();
    let pss_before = rollup("Pss:");
    let registry = BizRegistry::new(runtime.clone(), "density");
    // Tiers of 1, 10, 100, 1,000 distinct bizes (up to `bizes`): at each, the
    // new bizes are installed (each archive made, installed and dropped in
    // turn, as a deployment would: what stays is what the runtime keeps per
    // biz), memory read, then each called once (instantiated) and read again.
    let mut tiers: Vec<usize> = [1, 10, 100, 1000]
        .into_iter()
        .filter(|&t| t < bizes)
        .collect();
    tiers.push(bizes);
    println!(
        "density: before any biz: PSS {}, RSS {}",
        mib(pss_before),
        mib(before)
    );
    println!();
    println!(
        "| distinct bizes | PSS installed | PSS installed and each called once | RSS (called) | PSS per biz (called) over the PSS before | PSS parts |"
    );
    println!("|---|---|---|---|---|---|");
    let mut done = 0;
    let mut seeds = Vec::new();
    for &tier in &tiers {
        for i in done..tier {
            let (variant, seed) = variant(&ark, i);
            registry
                .install_blocking(&variant, &grants, Activation::IfNone)
                .expect("installs");
            seeds.push(seed);
        }
        let installed_only = rollup("Pss:");
        rt.block_on(async {
            for (i, seed) in seeds.iter().enumerate().take(tier).skip(done) {
                let lease = registry.resolve(&format!("biz-{i:04}")).expect("resolves");
                let report = lease.invoke(StepCall::new("seed", json!({}))).await;
                let outputs = report.outputs().expect("the seed step succeeds");
                assert_eq!(
                    outputs.get("seed").map(String::as_str),
                    Some(format!("{seed:016x}").as_str()),
                    "biz-{i:04} runs its own code"
                );
            }
        });
        done = tier;
        let called = rollup("Pss:");
        println!(
            "| {tier} | {} | {} | {} | {} | {} |",
            mib(installed_only),
            mib(called),
            mib(rss_bytes()),
            mib(called.saturating_sub(pss_before) / tier.max(1) as u64),
            pss_parts()
        );
    }
    println!();
    println!(
        "density: the compiled artifacts' mappings, by permission (all bizes): {}",
        artifact_mappings(cache_dir)
    );
    // Idle: every biz was last called above; after the release period and one
    // sweep (a quarter of it), their code is no longer resident.
    let idle = runtime.config().idle_release;
    if let Some(idle) = idle {
        std::thread::sleep(idle + idle / 4 + std::time::Duration::from_secs(2));
        println!(
            "density: {bizes} bizes, each called once, then idle {} s (the default idle release): PSS {}, RSS {} ({}); code mappings: {}",
            idle.as_secs(),
            mib(rollup("Pss:")),
            mib(rss_bytes()),
            pss_parts(),
            artifact_mappings(cache_dir)
        );
    }
    println!("density budget: 1,000 distinct bizes within 1 GiB of PSS");
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

    runtime.prepare(&ark).expect("loads faults");
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
