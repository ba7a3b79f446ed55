//! `GET /metrics`: Prometheus text exposition format 0.0.4.
//!
//! Families (labels in braces):
//! - `arkline_executions{engine,phase}` (gauge): executions in the store by
//!   phase, every phase listed for every engine (read from the store at scrape);
//! - `arkline_executions_queued{engine}` (gauge): the queue waiting for the
//!   engine's `executor_quota`;
//! - `arkline_step_duration_seconds{engine,biz}` (histogram): step attempts as
//!   the execution driver saw them (cache restore/save and the wait for a worker
//!   slot included);
//! - `arkline_biz_instantiations_total{engine,biz}` (counter): fresh instances,
//!   one per step call that got that far;
//! - `arkline_step_faults_total{engine,biz,kind}` (counter): calls the host
//!   stopped, by kind (`trap`, `timeout`, `memory_limit`, `out_of_fuel`, …);
//! - `arkline_cache_hits_total{engine}`, `arkline_cache_misses_total{engine}`
//!   (counters): lookups in the engine's blob cache (step caches and the `cache`
//!   capability);
//! - `arkline_forge_statuses_total{engine,outcome}` (counter): executions
//!   whose commit statuses were `posted` to the engine's forge, or `failed`
//!   (given up after retries);
//! - `arkline_guest_cpu_seconds_total{engine}` (counter) and
//!   `arkline_guest_cpu_weight{engine}` (gauge): time the guest threads ran each
//!   engine's calls past their first poll, and its `cpu_weight` (CPU shares);
//! - `arkline_store_commit_duration_seconds` (histogram): the redb writer's
//!   group commits (absent when the store is not the data dir's redb file);
//! - `arkline_build_info{version}` (gauge, always 1).
//!
//! `biz` is the biz name (all versions together), to keep the series count
//! bounded by what is installed rather than by every version ever deployed.
//!
//! The endpoint is open, as Prometheus expects: it reveals engine and biz
//! names and counts, never pipeline contents or secrets. Bind `arkline serve`
//! to a private interface (or put it behind a proxy) where that matters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use arkline::Container;
use arkline::metrics::HistogramSnapshot;
use arkline::model::ExecutionPhase;
use arkline::store::{ListQuery, StoreError};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const PHASES: [ExecutionPhase; 7] = [
    ExecutionPhase::Queued,
    ExecutionPhase::Pending,
    ExecutionPhase::Running,
    ExecutionPhase::Succeeded,
    ExecutionPhase::Failed,
    ExecutionPhase::Aborted,
    ExecutionPhase::Cancelled,
];

fn phase_name(p: ExecutionPhase) -> &'static str {
    match p {
        ExecutionPhase::Queued => "Queued",
        ExecutionPhase::Pending => "Pending",
        ExecutionPhase::Running => "Running",
        ExecutionPhase::Succeeded => "Succeeded",
        ExecutionPhase::Failed => "Failed",
        ExecutionPhase::Aborted => "Aborted",
        ExecutionPhase::Cancelled => "Cancelled",
    }
}

pub(crate) async fn scrape(State(state): State<AppState>) -> Response {
    match render(&state.container).await {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics: cannot read the store");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "code": "internal",
                    "message": format!("cannot read executions from the store for the metrics: {e}"),
                })),
            )
                .into_response()
        }
    }
}

/// Executions per engine and phase, from the store.
async fn execution_counts(
    container: &Container,
) -> Result<BTreeMap<String, BTreeMap<&'static str, u64>>, StoreError> {
    let mut counts: BTreeMap<String, BTreeMap<&'static str, u64>> = container
        .engines()
        .iter()
        .map(|e| (e.name().to_owned(), BTreeMap::new()))
        .collect();
    let list = container
        .store()
        .list(&ListQuery::kind("PipelineExecution"))
        .await?;
    for obj in list.items {
        // A missing or unreadable phase is the default, `Queued`.
        let phase = obj
            .status
            .get("phase")
            .and_then(|p| serde_json::from_value::<ExecutionPhase>(p.clone()).ok())
            .unwrap_or_default();
        *counts
            .entry(obj.metadata.engine)
            .or_default()
            .entry(phase_name(phase))
            .or_insert(0) += 1;
    }
    Ok(counts)
}

/// The whole exposition for `container`.
pub async fn render(container: &Container) -> Result<String, StoreError> {
    let executions = execution_counts(container).await?;
    let snap = container.metrics().snapshot();
    let mut out = Exposition::default();

    out.family(
        "arkline_build_info",
        "gauge",
        "The arkline version serving these metrics (always 1).",
    );
    out.sample(
        "arkline_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        "1",
    );

    out.family(
        "arkline_executions",
        "gauge",
        "Pipeline executions in the store, by engine and phase.",
    );
    for (engine, phases) in &executions {
        for phase in PHASES.map(phase_name) {
            let n = phases.get(phase).copied().unwrap_or(0);
            out.sample(
                "arkline_executions",
                &[("engine", engine), ("phase", phase)],
                &n.to_string(),
            );
        }
    }
    out.family(
        "arkline_executions_queued",
        "gauge",
        "Executions waiting for the engine's executor quota (phase Queued).",
    );
    for (engine, phases) in &executions {
        let n = phases.get("Queued").copied().unwrap_or(0);
        out.sample(
            "arkline_executions_queued",
            &[("engine", engine)],
            &n.to_string(),
        );
    }

    out.family(
        "arkline_step_duration_seconds",
        "histogram",
        "Duration of step attempts as the execution driver saw them, by engine and biz.",
    );
    for b in &snap.bizes {
        out.histogram(
            "arkline_step_duration_seconds",
            &[("engine", &b.engine), ("biz", &b.biz)],
            &b.step_duration,
        );
    }
    out.family(
        "arkline_biz_instantiations_total",
        "counter",
        "Fresh biz instances created for step calls, by engine and biz.",
    );
    for b in &snap.bizes {
        out.sample(
            "arkline_biz_instantiations_total",
            &[("engine", &b.engine), ("biz", &b.biz)],
            &b.instantiations.to_string(),
        );
    }
    out.family(
        "arkline_step_faults_total",
        "counter",
        "Step calls the host stopped (trap, timeout, memory_limit, out_of_fuel, ...), by engine, biz and kind.",
    );
    for b in &snap.bizes {
        for (kind, n) in &b.faults {
            out.sample(
                "arkline_step_faults_total",
                &[("engine", &b.engine), ("biz", &b.biz), ("kind", kind)],
                &n.to_string(),
            );
        }
    }

    out.family(
        "arkline_cache_hits_total",
        "counter",
        "Lookups in the engine's blob cache that found their key.",
    );
    for c in &snap.caches {
        out.sample(
            "arkline_cache_hits_total",
            &[("engine", &c.engine)],
            &c.hits.to_string(),
        );
    }
    out.family(
        "arkline_cache_misses_total",
        "counter",
        "Lookups in the engine's blob cache that did not find their key.",
    );
    for c in &snap.caches {
        out.sample(
            "arkline_cache_misses_total",
            &[("engine", &c.engine)],
            &c.misses.to_string(),
        );
    }

    out.family(
        "arkline_forge_statuses_total",
        "counter",
        "Executions whose commit statuses were posted to the forge, or given up after retries.",
    );
    for f in &snap.forge {
        for (outcome, n) in [("posted", f.posted), ("failed", f.failed)] {
            out.sample(
                "arkline_forge_statuses_total",
                &[("engine", &f.engine), ("outcome", outcome)],
                &n.to_string(),
            );
        }
    }

    // CPU shares: what the guest threads ran for each engine (engines whose
    // calls never left their first poll have no series yet).
    let guest_cpu = container.runtime().guest_cpu();
    out.family(
        "arkline_guest_cpu_seconds_total",
        "counter",
        "Time the guest threads ran each engine's step calls past their first poll (shared by cpu_weight).",
    );
    for (engine, cpu) in &guest_cpu {
        out.sample(
            "arkline_guest_cpu_seconds_total",
            &[("engine", engine)],
            &format!("{:.6}", cpu.busy.as_secs_f64()),
        );
    }
    out.family(
        "arkline_guest_cpu_weight",
        "gauge",
        "Each engine's weight on the guest threads (its cpu_weight setting; 100 by default).",
    );
    for (engine, cpu) in &guest_cpu {
        out.sample(
            "arkline_guest_cpu_weight",
            &[("engine", engine)],
            &cpu.weight.to_string(),
        );
    }

    if let Some(commit) = &snap.store_commit {
        out.family(
            "arkline_store_commit_duration_seconds",
            "histogram",
            "Duration of the store writer's group commits (operations applied and made durable).",
        );
        out.histogram("arkline_store_commit_duration_seconds", &[], commit);
    }
    Ok(out.text)
}

/// Writes the text format, escaping as the format requires.
#[derive(Default)]
struct Exposition {
    text: String,
    declared: BTreeSet<&'static str>,
}

impl Exposition {
    fn family(&mut self, name: &'static str, kind: &str, help: &str) {
        debug_assert!(self.declared.insert(name), "{name} declared twice");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
            }
            self.text.push('}');
        }
        self.text.push(' ');
        self.text.push_str(value);
        self.text.push('\n');
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in &h.buckets {
            let le = format_float(*bound);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, &count.to_string());
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, &h.count.to_string());
        self.sample(&format!("{name}_sum"), labels, &format_float(h.sum));
        self.sample(&format!("{name}_count"), labels, &h.count.to_string());
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        String::from(if f > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.family("x_total", "counter", "Help with a \\ and\na newline.");
        e.sample("x_total", &[("engine", "a\"b\\c\nd")], "1");
        assert_eq!(
            e.text,
            "# HELP x_total Help with a \\\\ and\\na newline.\n# TYPE x_total counter\n\
             x_total{engine=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }

    #[test]
    fn histograms_end_with_inf_sum_and_count() {
        let mut e = Exposition::default();
        let h = HistogramSnapshot {
            buckets: vec![(0.5, 1), (1.0, 2)],
            count: 3,
            sum: 2.25,
        };
        e.histogram("d_seconds", &[("biz", "b")], &h);
        assert_eq!(
            e.text,
            "d_seconds_bucket{biz=\"b\",le=\"0.5\"} 1\nd_seconds_bucket{biz=\"b\",le=\"1\"} 2\n\
             d_seconds_bucket{biz=\"b\",le=\"+Inf\"} 3\nd_seconds_sum{biz=\"b\"} 2.25\n\
             d_seconds_count{biz=\"b\"} 3\n"
        );
    }
}
