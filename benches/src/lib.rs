//! Criterion benchmarks of arkline: `cargo bench -p arkline-benches`.
//!
//! The library holds what several benches share: argument and environment
//! parsing, formatting, and latency percentiles.

use std::time::Duration;

/// The value of `--name SECONDS` on the command line, or `default`.
pub fn arg_secs(name: &str, default: f64) -> Duration {
    let args: Vec<String> = std::env::args().collect();
    let value = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(default);
    Duration::from_secs_f64(value)
}

/// A comma-separated list from the environment, or `default`.
pub fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `d` in milliseconds, one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// `d` in microseconds, one decimal.
pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Latency figures of a set of executions.
pub struct Latencies {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl Latencies {
    /// Percentiles of `all` (nearest rank).
    pub fn of(mut all: Vec<Duration>) -> Self {
        all.sort();
        let at = |q: f64| {
            let i = ((all.len() as f64 * q).ceil() as usize).clamp(1, all.len().max(1)) - 1;
            all.get(i).copied().unwrap_or_default()
        };
        Latencies {
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}
