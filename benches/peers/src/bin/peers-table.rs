//! Prints the table of `bash benches/compare.sh`: medians from criterion's
//! `estimates.json` of the workspace's `dispatch` group and of this suite's `peers`
//! group, and arkline's ratios to each.
//!
//! `peers-table WORKSPACE_CRITERION_DIR PEERS_CRITERION_DIR`

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A budget: arkline must be at least this many times faster (DESIGN.md, "Budgets").
struct Faster(f64);

/// A row against arkline's figure from the peers run.
struct Peer {
    bench: &'static str,
    what: &'static str,
    budget: Option<Faster>,
}

const PEERS: &[Peer] = &[
    Peer {
        bench: "extism_fresh",
        what: "Extism 1.30: fresh plugin from a `CompiledPlugin` + call + drop",
        budget: Some(Faster(10.0)),
    },
    Peer {
        bench: "extism_fresh_wasi",
        what: "Extism 1.30: the same with a WASI context",
        budget: None,
    },
    Peer {
        bench: "extism_reused",
        what: "Extism 1.30: warm call of a reused plugin (no isolation between calls)",
        budget: None,
    },
    Peer {
        bench: "process_spawn",
        what: "process per step: spawn + wait of a native binary, stdout captured",
        budget: Some(Faster(50.0)),
    },
    Peer {
        bench: "sh_c",
        what: "process per step through `sh -c`",
        budget: None,
    },
];

fn median_ns(criterion: &Path, group: &str, bench: &str) -> Result<f64> {
    let path: PathBuf = [criterion, Path::new(group), Path::new(bench)]
        .iter()
        .collect::<PathBuf>()
        .join("new/estimates.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}: did `{group}/{bench}` run?", path.display()))?;
    let estimates: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    estimates["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{} has no median.point_estimate", path.display()))
}

fn duration(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// How arkline compares to a peer's median, `peer / arkline`.
fn relative(peer_over_arkline: f64) -> String {
    if peer_over_arkline >= 1.0 {
        format!("{peer_over_arkline:.1}× faster")
    } else {
        format!("{:.1}× slower", 1.0 / peer_over_arkline)
    }
}

fn verdict(holds: bool) -> &'static str {
    if holds { "✓" } else { "✗" }
}

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [workspace, peers] = args.as_slice() else {
        bail!("usage: peers-table WORKSPACE_CRITERION_DIR PEERS_CRITERION_DIR");
    };

    let raw = median_ns(workspace, "dispatch", "raw_wasmtime")?;
    let dispatch = median_ns(workspace, "dispatch", "arkline")?;
    let arkline = median_ns(peers, "peers", "arkline")?;

    println!("| what | median | arkline | budget |");
    println!("|---|---|---|---|");
    let floor = dispatch / raw;
    println!(
        "| raw wasmtime 48: `InstancePre` instantiate + call, same engine and WASI context (`dispatch/raw_wasmtime`) | {} | {floor:.2}× of it | ≤ 1.3× {} |",
        duration(raw),
        verdict(floor <= 1.3),
    );
    println!(
        "| arkline: fresh instance + call + drop (`dispatch/arkline`, workspace bench) | {} | — | — |",
        duration(dispatch),
    );
    println!(
        "| arkline: the same in the peers bench (`peers/arkline`; the ratios below) | {} | — | — |",
        duration(arkline),
    );
    for peer in PEERS {
        let median = median_ns(peers, "peers", peer.bench)?;
        let faster = median / arkline;
        let budget = peer.budget.as_ref().map_or_else(
            || "—".to_owned(),
            |Faster(min)| format!("≥ {min:.0}× {}", verdict(faster >= *min)),
        );
        println!(
            "| {} (`peers/{}`) | {} | {} | {budget} |",
            peer.what,
            peer.bench,
            duration(median),
            relative(faster),
        );
    }
    Ok(())
}
