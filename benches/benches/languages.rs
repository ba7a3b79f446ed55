//! Steps in Rust, Python and JavaScript, side by side in one run (issue 26):
//! what installing one costs without and with the compiled cache, a
//! fresh-instance call, and the memory one biz adds once called.
//!
//! - Rust: the `faults` biz, step `upper`; Python: `plugins/changelog-py`
//!   (componentize-py), step `changelog`; JavaScript: `plugins/semver-js`
//!   (componentize-js), step `bump` — built and packaged by
//!   `arkline_testkit::prebuilt` (so componentize-py and componentize-js must
//!   be installed: `.ci/deps.sh --test`).
//! - **install, cold**: a runtime with an empty compiled cache installs the
//!   biz (compile, write the cache); one sample each, compiling takes seconds.
//! - **install, cached**: a new runtime on that cache installs it again
//!   (load the compiled artifact); the median of 5.
//! - **call**: one step call in a fresh instance, as an engine makes them;
//!   p50 and p90 of 50 after 5 to warm up.
//! - **PSS added**: the process's PSS after installing and calling the biz
//!   once, less before (RSS beside it).
//!
//! `cargo bench -p arkline-benches --bench languages` (a table; no criterion:
//! cold installs are too slow to sample). `ARKLINE_LANG_CALLS` changes the
//! number of calls.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::runtime::{Activation, BizRegistry, Runtime, RuntimeConfig, StepCall};
use serde_json::json;

fn kib_of(field: &str, file: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

fn pss_kib() -> u64 {
    kib_of("Pss:", "/proc/self/smaps_rollup")
}

fn rss_kib() -> u64 {
    kib_of("VmRSS:", "/proc/self/status")
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

struct Subject {
    label: &'static str,
    ark: PathBuf,
    step: &'static str,
    config: serde_json::Value,
}

fn main() {
    let calls: usize = std::env::var("ARKLINE_LANG_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let subjects = [
        Subject {
            label: "Rust (`faults/upper`)",
            ark: arkline_testkit::plugin("faults"),
            step: "upper",
            config: json!({ "text": "hello" }),
        },
        Subject {
            label: "Python (`changelog/changelog`)",
            ark: arkline_testkit::prebuilt("changelog-py"),
            step: "changelog",
            config: json!({ "commits": ["feat: a", "fix: b"] }),
        },
        Subject {
            label: "JavaScript (`semver/bump`)",
            ark: arkline_testkit::prebuilt("semver-js"),
            step: "bump",
            config: json!({ "current": "1.0.0", "commits": ["feat: a"] }),
        },
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    println!(
        "| step | component | install, cold | install, cached (median of 5) | call p50 | call p90 | PSS added (RSS added) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in &subjects {
        let ark = Ark::open(&s.ark).expect("the archive reads back");
        let cache = tempfile::tempdir().expect("tempdir");
        let grants = Capabilities::default();

        let cold_runtime =
            Runtime::new(RuntimeConfig::default().cache_dir(cache.path())).expect("runtime");
        let registry = BizRegistry::new(cold_runtime, "bench");
        let started = Instant::now();
        registry
            .install_blocking(&ark, &grants, Activation::IfNone)
            .expect("installs");
        let cold = started.elapsed();
        drop(registry);

        let mut cached = Vec::new();
        for _ in 0..5 {
            let runtime =
                Runtime::new(RuntimeConfig::default().cache_dir(cache.path())).expect("runtime");
            let registry = BizRegistry::new(runtime, "bench");
            let started = Instant::now();
            registry
                .install_blocking(&ark, &grants, Activation::IfNone)
                .expect("installs");
            cached.push(started.elapsed());
        }
        cached.sort();

        let (pss0, rss0) = (pss_kib(), rss_kib());
        let runtime =
            Runtime::new(RuntimeConfig::default().cache_dir(cache.path())).expect("runtime");
        let registry = BizRegistry::new(runtime, "bench");
        registry
            .install_blocking(&ark, &grants, Activation::IfNone)
            .expect("installs");
        let lease = registry.resolve(&ark.manifest.name).expect("resolves");
        let mut times = Vec::new();
        rt.block_on(async {
            for i in 0..calls + 5 {
                let started = Instant::now();
                let report = lease.invoke(StepCall::new(s.step, s.config.clone())).await;
                let took = started.elapsed();
                report.outputs().expect("the step succeeds");
                if i >= 5 {
                    times.push(took);
                }
            }
        });
        let (pss1, rss1) = (pss_kib(), rss_kib());
        times.sort();
        println!(
            "| {} | {} KiB | {} | {} | {} | {} | {} MiB ({} MiB) |",
            s.label,
            ark.component.len().div_ceil(1024),
            ms(cold),
            ms(cached[cached.len() / 2]),
            ms(times[times.len() / 2]),
            ms(times[times.len() * 9 / 10]),
            pss1.saturating_sub(pss0) / 1024,
            rss1.saturating_sub(rss0) / 1024,
        );
    }
}
