//! `GET /metrics` over real HTTP after real executions (the `faults` biz on a
//! redb data dir), parsed by a Prometheus text-format parser and checked line
//! by line against the format's rules.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::ExecutionPhase;
use arkline::{Container, TriggerRequest};
use arkline_cli::serve::{AppState, router};
use prometheus_parse::{Sample, Scrape, Value};

const LIMIT: Duration = Duration::from_secs(120);

const PIPELINE: &str = r#"
name: metered
stages:
  - name: s
    steps:
      - name: cached
        uses: faults/append
        with: { path: /workspace/runs.txt, line: "run" }
        cache: { key: deps-v1, paths: [runs.txt] }
      - name: shout
        uses: faults/upper
        with: { text: hi }
  - name: crash
    steps:
      - name: boom
        uses: faults/panic
        with: { message: "metrics test panic" }
"#;

/// Checks what the parser forgives: every sample line belongs to a family
/// declared before it with exactly one `# HELP` and one `# TYPE`, names and
/// label names are valid, values parse, and label values are properly quoted.
fn check_strictly(text: &str) -> BTreeMap<String, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let name_ok = |n: &str| {
        n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        assert!(!line.is_empty(), "no blank lines in the exposition");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().expect("name");
            assert!(helps.insert(name.to_owned()), "HELP twice for {name}");
            assert!(
                !types.contains_key(name),
                "HELP of {name} must come before its TYPE"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().expect("name"), parts.next().expect("type"));
            assert!(name_ok(name), "{name}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line}");
        let name_end = line.find(['{', ' ']).expect("a sample has a value");
        let name = &line[..name_end];
        let family = types
            .keys()
            .find(|f| {
                name == f.as_str()
                    || (types[f.as_str()] == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_prefix(f.as_str()) == Some(s)))
            })
            .unwrap_or_else(|| panic!("sample {name} of no declared family"));
        assert!(helps.contains(family), "{family} has no HELP");
        let mut rest = &line[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            rest = check_labels(labels, line);
        }
        let value = rest.trim_start();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "value {value:?} in {line}"
        );
    }
    types
}

/// Checks `name="value",...}` (values escape only `\\`, `\"` and `\n`) and
/// answers what follows the `}`.
fn check_labels<'a>(mut s: &'a str, line: &str) -> &'a str {
    loop {
        let eq = s.find('=').unwrap_or_else(|| panic!("label= in {line}"));
        let name = &s[..eq];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {name:?} in {line}"
        );
        s = s[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("quoted value in {line}"));
        let mut escaped = false;
        let mut close = None;
        for (i, c) in s.char_indices() {
            if escaped {
                assert!(matches!(c, '\\' | '"' | 'n'), "bad escape in {line}");
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                close = Some(i);
                break;
            }
        }
        let close = close.unwrap_or_else(|| panic!("closing quote in {line}"));
        s = &s[close + 1..];
        if let Some(next) = s.strip_prefix(',') {
            s = next;
        } else if let Some(after) = s.strip_prefix('}') {
            return after;
        } else {
            panic!("unexpected text after a label in {line}");
        }
    }
}

fn sample<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
}

fn counter(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, metric, labels).map(|s| &s.value) {
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        other => panic!("{metric}{labels:?}: {other:?}"),
    }
}

async fn scrape(base: &str) -> (String, Scrape) {
    let resp = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let text = resp.text().await.expect("body");
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    (text, parsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_executions_parse_and_count_calls_faults_and_cache_hits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("container builds");
    let engine = container.engine("team-a").await.expect("engine");
    let faults = Ark::open(arkline_testkit::plugin("faults")).expect("faults archive");
    engine
        .install(faults, &Capabilities::default())
        .await
        .expect("installs");
    engine
        .apply_pipeline_yaml("metered.yaml", PIPELINE)
        .await
        .unwrap_or_else(|e| panic!("applies: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router(AppState::new(container.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Before anything ran: the families with always-present series are there.
    let (_, before) = scrape(&base).await;
    assert_eq!(
        counter(
            &before,
            "arkline_executions",
            &[("engine", "team-a"), ("phase", "Failed")]
        ),
        0.0
    );

    for _ in 0..2 {
        let exec = engine
            .trigger("metered", TriggerRequest::manual())
            .await
            .expect("trigger");
        let done = tokio::time::timeout(LIMIT, engine.wait(&exec.metadata.name))
            .await
            .expect("finishes in time")
            .expect("wait");
        assert_eq!(
            done.status.phase,
            ExecutionPhase::Failed,
            "the panic step fails it"
        );
    }

    let (text, after) = scrape(&base).await;
    let types = check_strictly(&text);
    for (family, kind) in [
        ("arkline_build_info", "gauge"),
        ("arkline_executions", "gauge"),
        ("arkline_executions_queued", "gauge"),
        ("arkline_step_duration_seconds", "histogram"),
        ("arkline_biz_instantiations_total", "counter"),
        ("arkline_step_faults_total", "counter"),
        ("arkline_cache_hits_total", "counter"),
        ("arkline_cache_misses_total", "counter"),
        ("arkline_store_commit_duration_seconds", "histogram"),
        ("arkline_guest_cpu_seconds_total", "counter"),
        ("arkline_guest_cpu_weight", "gauge"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "{family} in\n{text}"
        );
    }
    let team = ("engine", "team-a");
    let faults = ("biz", "faults");
    // Two runs of three steps: six calls, each a fresh instance.
    assert_eq!(
        counter(&after, "arkline_biz_instantiations_total", &[team, faults]),
        6.0
    );
    assert_eq!(
        counter(
            &after,
            "arkline_step_faults_total",
            &[team, faults, ("kind", "trap")]
        ),
        2.0,
        "one trap per run\n{text}"
    );
    assert_eq!(
        counter(&after, "arkline_executions", &[team, ("phase", "Failed")]),
        2.0
    );
    assert_eq!(
        counter(&after, "arkline_executions", &[team, ("phase", "Running")]),
        0.0
    );
    assert_eq!(counter(&after, "arkline_executions_queued", &[team]), 0.0);
    // The step cache: the first run misses, the second restores.
    assert_eq!(
        counter(&after, "arkline_cache_misses_total", &[team]),
        1.0,
        "{text}"
    );
    assert_eq!(
        counter(&after, "arkline_cache_hits_total", &[team]),
        1.0,
        "{text}"
    );

    match &sample(&after, "arkline_step_duration_seconds", &[team, faults])
        .expect("step durations")
        .value
    {
        Value::Histogram(buckets) => {
            let inf = buckets.last().expect("buckets");
            assert!(inf.less_than.is_infinite());
            assert_eq!(inf.count, 6.0, "one observation per attempt");
            assert!(
                buckets.windows(2).all(|w| w[0].count <= w[1].count),
                "cumulative"
            );
        }
        other => panic!("a histogram, got {other:?}"),
    }
    match &sample(&after, "arkline_store_commit_duration_seconds", &[])
        .expect("commit latency")
        .value
    {
        Value::Histogram(buckets) => {
            let total = buckets.last().expect("buckets").count;
            assert!(total >= 2.0, "the runs wrote to the store: {total}");
        }
        other => panic!("a histogram, got {other:?}"),
    }
    assert_eq!(
        counter(
            &after,
            "arkline_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    container.shutdown().await;
}
