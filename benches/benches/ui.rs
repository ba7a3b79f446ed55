//! The dashboard's page loads (issue 25): time to first render of an
//! execution with 100 steps, and of a step's 50,000-line log, in a headless
//! Chromium.
//!
//! Set-up: `arkline serve`'s router (`arkline_cli::serve::router`) in this
//! process on 127.0.0.1, over a container with a data dir (redb store, file
//! logs) and one engine holding the `faults` biz and the pipeline `page`: ten
//! stages of ten steps, where the first step (`flood`, `faults/log-flood`)
//! writes 50,000 lines of 60 bytes to stdout and the 99 others are
//! `faults/upper`. It runs to the end before anything is measured, so the
//! pages load a finished execution (the log stream sends every line, then
//! `end`).
//!
//! Then a headless Chromium (Debian's `chromium` and `chromedriver`, through
//! `arkline_testkit::webdriver`) signs in, and each sample loads the page
//! afresh (`about:blank` first, so the document, script and style load again,
//! not just the fragment):
//!
//! - **execution page** `#/engines/bench/executions/page-1`: until the 100
//!   `button.step` nodes are in the document, and until the frame after that
//!   has been painted;
//! - **log page** `#/engines/bench/executions/page-1/logs/flood`: until the
//!   first `#log .line`, until all of them (50,002: the step's 50,000 and
//!   the host's two around them), and until the status says `ended:
//!   Succeeded`; beside them, when the page's log stream delivered its first
//!   line and its end, which tells the page's time from the stream's.
//!
//! Times are measured in the page: `performance.now()` (milliseconds since
//! the navigation started) recorded by a `MutationObserver` that a script
//! added before the page's own (`Page.addScriptToEvaluateOnNewDocument`)
//! installs, and read by the driver afterwards, so the driver's polling
//! does not blur them. "Painted" is a `setTimeout(0)` queued from the next
//! `requestAnimationFrame` callback: it runs once that frame's rendering
//! (style, layout, paint) is done, give or take a task. Beside them: the
//! server alone (the same log stream read by reqwest to its `end`), the size
//! of the batches the page adds lines in, and where the log page's time goes
//! (two more loads: the renderer's own accounting from CDP's `Performance`
//! domain, and the JavaScript profile from its `Profiler`).
//!
//! `cargo bench -p arkline-benches --bench ui` (unset `RUST_BACKTRACE`
//! first). Prints p50 and max of `ARKLINE_UI_SAMPLES` loads (5), and each
//! load's marks and resource timings on stderr; it reports, it asserts no
//! duration. `ARKLINE_UI_PROFILE=0` skips the last two loads. Without
//! `chromedriver` or `chromium` it stops at once, saying what to install.

use std::time::{Duration, Instant};

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::ExecutionPhase;
use arkline::{Container, TriggerRequest};
use arkline_cli::serve::{AppState, ConnectionLimits, auth::Auth, connections, router};
use arkline_testkit::webdriver::Browser;
use serde_json::{Value, json};

const ENGINE: &str = "bench";
const PIPELINE: &str = "page";
/// The step whose log is loaded.
const FLOOD: &str = "flood";
const STAGES: usize = 10;
const STEPS_PER_STAGE: usize = 10;
const LOG_LINES: usize = 50_000;
/// Bytes in each log line (its number, a space, `x`s): 50,000 of them stay
/// under a step's 4 MiB log cap.
const LINE_BYTES: usize = 60;
const TOKEN: &str = "bench-token-0123456789abcdef";
/// How long one page may take before the bench gives up on it.
const PAGE_LIMIT: Duration = Duration::from_secs(600);

/// Ten stages of ten steps; the first is the flood.
fn pipeline_yaml() -> String {
    let mut yaml = format!("name: {PIPELINE}\nstages:\n");
    for stage in 0..STAGES {
        yaml += &format!("  - name: s{stage}\n    steps:\n");
        for step in 0..STEPS_PER_STAGE {
            if stage == 0 && step == 0 {
                yaml += &format!(
                    "      - {{ name: {FLOOD}, uses: faults/log-flood, with: {{ lines: {LOG_LINES}, bytes_per_line: {LINE_BYTES}, via: stdout }} }}\n"
                );
            } else {
                yaml += &format!(
                    "      - {{ name: s{stage}-{step}, uses: faults/upper, with: {{ text: x }} }}\n"
                );
            }
        }
    }
    yaml
}

/// Installed in every new document before its own scripts: records, in
/// `window.__arkMarks`, when each condition first held (`lines`: how many
/// lines the log has), and when the page's log stream delivered its first
/// line and its end (an `EventSource` whose own listeners run before the
/// page's).
fn recorder(lines: usize) -> String {
    let steps = STAGES * STEPS_PER_STAGE;
    format!(
        r#"(() => {{
  const marks = {{}};
  window.__arkMarks = marks;
  const mark = (k) => {{
    if (k in marks) return;
    marks[k] = performance.now();
    requestAnimationFrame(() => setTimeout(() => {{ marks[k + "Painted"] = performance.now(); }}, 0));
  }};
  const Source = window.EventSource;
  window.EventSource = class extends Source {{
    constructor(...args) {{
      super(...args);
      if (!String(args[0]).includes("/logs")) return;
      this.addEventListener("line", () => {{
        if (!("streamFirstLine" in marks)) marks.streamFirstLine = performance.now();
      }});
      this.addEventListener("end", () => {{ marks.streamEnd = performance.now(); }});
    }}
  }};
  let steps = false;
  let seen = 0;
  const observer = new MutationObserver(() => {{
    // Counted until first seen: the log page's 50,000 lines would make a
    // document-wide query per mutation quadratic.
    if (!steps && document.querySelectorAll("button.step").length >= {steps}) {{ steps = true; mark("steps"); }}
    const log = document.getElementById("log");
    if (log) {{
      const n = log.childElementCount;
      if (n > seen) {{
        // The page adds lines in batches: how many, and the biggest.
        marks.batches = (marks.batches || 0) + 1;
        marks.firstBatch = marks.firstBatch || n;
        marks.biggestBatch = Math.max(marks.biggestBatch || 0, n - seen);
        seen = n;
      }}
      if (n >= 1) mark("firstLine");
      if (n >= {lines}) mark("allLines");
    }}
    const status = document.getElementById("log-status");
    if (status && status.textContent.startsWith("ended")) {{ mark("ended"); marks.endedText = status.textContent; }}
  }});
  observer.observe(document, {{ childList: true, subtree: true }});
}})();"#
    )
}

/// What one page load gives, in milliseconds since navigation start.
#[derive(Debug, Default)]
struct Load {
    marks: serde_json::Map<String, Value>,
}

impl Load {
    fn ms(&self, key: &str) -> Option<f64> {
        self.marks.get(key).and_then(Value::as_f64)
    }
}

/// Loads `url` afresh and waits until every mark in `want` is recorded.
async fn load(browser: &Browser, url: &str, want: &[&str]) -> Load {
    browser.goto("about:blank").await;
    browser.goto(url).await;
    let deadline = Instant::now() + PAGE_LIMIT;
    loop {
        let marks = browser
            .eval(
                "const n = performance.getEntriesByType('navigation')[0]; \
                 const r = performance.getEntriesByType('resource').find((e) => e.name.includes('/logs?')); \
                 return Object.assign({ \
                   document: n && n.responseEnd, domContentLoaded: n && n.domContentLoadedEventEnd, \
                   load: n && n.loadEventEnd, lines: (document.getElementById('log') || {}).childElementCount, \
                   streamRequested: r && r.startTime, streamRequestSent: r && r.requestStart, \
                   streamResponse: r && r.responseStart, \
                   resources: performance.getEntriesByType('resource').map((e) => [(new URL(e.name).pathname + new URL(e.name).search).slice(0, 70), \
                     Math.round(e.startTime), Math.round(e.connectStart), Math.round(e.connectEnd), Math.round(e.requestStart), \
                     Math.round(e.responseStart), Math.round(e.responseEnd)]) \
                 }, window.__arkMarks || {})",
                json!([]),
            )
            .await;
        let marks = marks.as_object().cloned().unwrap_or_default();
        if want.iter().all(|k| marks.contains_key(*k)) {
            return Load { marks };
        }
        if Instant::now() > deadline {
            let page = browser
                .eval("return document.body.innerText.slice(0, 2000)", json!([]))
                .await;
            panic!("{url}: no {want:?} after {PAGE_LIMIT:?}: {marks:?}; the page says:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// p50 and max (nearest rank) of `values`, in ms.
fn p50_max(mut values: Vec<f64>) -> String {
    if values.is_empty() {
        return "—".into();
    }
    values.sort_by(f64::total_cmp);
    let p50 = values[values.len().div_ceil(2) - 1];
    let max = values[values.len() - 1];
    format!("{p50:.0} ms | {max:.0} ms")
}

fn row(what: &str, loads: &[Load], key: &str) {
    let values: Vec<f64> = loads.iter().filter_map(|l| l.ms(key)).collect();
    println!("| {what} | {} |", p50_max(values));
}

fn main() {
    let samples: usize = std::env::var("ARKLINE_UI_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let profile = std::env::var("ARKLINE_UI_PROFILE").map_or(true, |v| v != "0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(run(samples, profile));
}

async fn run(samples: usize, profile: bool) {
    // First, so that a missing browser stops the bench before any build.
    let browser = Browser::start(1280, 800).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("the container opens its data dir");
    let engine = container.engine(ENGINE).await.expect("engine starts");
    let ark = Ark::open(arkline_testkit::plugin("faults")).expect("the faults archive reads");
    engine
        .install(ark, &Capabilities::default())
        .await
        .expect("faults installs");
    engine
        .apply_pipeline_yaml("page.yaml", &pipeline_yaml())
        .await
        .expect("the pipeline applies");
    let started = Instant::now();
    let exec = engine
        .trigger(PIPELINE, TriggerRequest::manual())
        .await
        .expect("triggers");
    let execution = exec.metadata.name.clone();
    let done = engine.wait(&execution).await.expect("waits");
    assert_eq!(
        done.status.phase,
        ExecutionPhase::Succeeded,
        "the bench's execution failed: {:#?}",
        done.status
    );
    eprintln!(
        "{execution}: {} steps, ran in {:.2} s",
        STAGES * STEPS_PER_STAGE,
        started.elapsed().as_secs_f64()
    );

    let auth = Auth::parse(&format!(
        "[[tokens]]\nname = \"bench\"\ntoken = \"{TOKEN}\"\nengines = [\"*\"]\naccess = \"read\"\n"
    ))
    .expect("the tokens parse");
    let state = AppState::new(container.clone()).with_auth(auth);
    state.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds a loopback port");
    let url = format!(
        "http://{}",
        listener.local_addr().expect("the listener's address")
    );
    let server = tokio::spawn({
        let state = state.clone();
        async move {
            connections::serve(
                listener,
                router(state.clone()),
                ConnectionLimits::default(),
                async move { state.shutting_down().await },
            )
            .await;
        }
    });

    // The server alone: the log stream the page reads, to its end.
    let http = reqwest::Client::new();
    let logs = format!(
        "{url}/api/v1/engines/{ENGINE}/executions/{execution}/steps/{FLOOD}/logs?follow=true"
    );
    let mut server_alone = Vec::new();
    let mut stream_bytes = 0;
    let mut log_lines = 0;
    for _ in 0..samples {
        let at = Instant::now();
        let body = http
            .get(&logs)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the log stream answers")
            .text()
            .await
            .expect("the log stream reads");
        server_alone.push(at.elapsed().as_secs_f64() * 1e3);
        let lines = body.matches("event: line\n").count();
        assert!(
            lines >= LOG_LINES && body.contains("event: end\n"),
            "the log stream has {lines} lines, fewer than {LOG_LINES}, or no end"
        );
        // The host's lines around the step's own: "attempt 1 of 1: …",
        // "attempt 1 succeeded".
        log_lines = lines;
        stream_bytes = body.len();
    }

    // Sign in (the session cookie stays for every load below).
    browser.goto(&format!("{url}/ui")).await;
    browser.type_into("#token", TOKEN).await;
    browser.click("#signin-button").await;
    browser
        .until(
            "signed in",
            "const w = document.getElementById('who'); return w && w.textContent.includes('bench')",
            json!([]),
        )
        .await;
    browser
        .cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": recorder(log_lines) }),
        )
        .await;

    let page = format!("{url}/ui#/engines/{ENGINE}/executions/{execution}");
    let log_page = format!("{page}/logs/{FLOOD}");
    let mut pages = Vec::new();
    let mut log_pages = Vec::new();
    for i in 0..samples {
        let l = load(&browser, &page, &["steps", "stepsPainted"]).await;
        eprintln!("execution page {i}: {:?}", l.marks);
        pages.push(l);
        let l = load(
            &browser,
            &log_page,
            &[
                "firstLine",
                "firstLinePainted",
                "allLines",
                "allLinesPainted",
                "ended",
            ],
        )
        .await;
        eprintln!("log page {i}: {:?}", l.marks);
        log_pages.push(l);
    }
    let ended = log_pages
        .first()
        .and_then(|l| l.marks.get("endedText").cloned())
        .unwrap_or_default();

    println!();
    println!(
        "Execution `{execution}`: {} steps; step `{FLOOD}`: {LOG_LINES} lines of {LINE_BYTES} bytes \
         ({log_lines} lines with the host's, {stream_bytes} bytes of event stream); {samples} loads \
         each, ms since navigation start (in-page `performance.now()`).",
        STAGES * STEPS_PER_STAGE
    );
    println!();
    println!("| what | p50 | max |");
    println!("|---|---|---|");
    row("execution page: document received", &pages, "document");
    row("execution page: `load` event", &pages, "load");
    row("execution page: 100 step nodes in the DOM", &pages, "steps");
    row("execution page: … and painted", &pages, "stepsPainted");
    row(
        "log page: log stream requested",
        &log_pages,
        "streamRequested",
    );
    row("log page: … request sent", &log_pages, "streamRequestSent");
    row("log page: … response headers", &log_pages, "streamResponse");
    row(
        "log page: first line from the stream",
        &log_pages,
        "streamFirstLine",
    );
    row("log page: first line in the DOM", &log_pages, "firstLine");
    row("log page: … and painted", &log_pages, "firstLinePainted");
    row("log page: the stream's end", &log_pages, "streamEnd");
    row(
        &format!("log page: status `{}`", ended.as_str().unwrap_or("ended")),
        &log_pages,
        "ended",
    );
    row(
        &format!("log page: all {log_lines} lines in the DOM"),
        &log_pages,
        "allLines",
    );
    row("log page: … and painted", &log_pages, "allLinesPainted");
    println!(
        "| server alone: the same log stream read to its end (reqwest) | {} |",
        p50_max(server_alone)
    );
    let median = |key: &str| {
        let mut v: Vec<f64> = log_pages.iter().filter_map(|l| l.ms(key)).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!();
    println!(
        "The log page added its lines to the DOM in {:.0} batches (median of the loads); the first \
         held {:.0} lines, the biggest {:.0}.",
        median("batches"),
        median("firstBatch"),
        median("biggestBatch")
    );

    if profile {
        profile_log_page(&browser, &log_page).await;
    }

    browser.quit().await;
    state.begin_shutdown();
    let _ = server.await;
    container.shutdown().await;
}

/// The renderer's metrics (`Performance.getMetrics`) by name.
async fn metrics(browser: &Browser) -> std::collections::HashMap<String, f64> {
    let answer = browser.cdp("Performance.getMetrics", json!({})).await;
    answer["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m["name"].as_str()?.to_owned(), m["value"].as_f64()?)))
        .collect()
}

/// Two more loads of the log page: one with the renderer's metrics (script,
/// style, layout), one under the CDP sampling profiler (the functions with
/// the most self time).
async fn profile_log_page(browser: &Browser, url: &str) {
    // The renderer's own accounting (CDP `Performance`), in a load without
    // the profiler: script, style, layout, and all its tasks.
    browser.goto("about:blank").await;
    browser.cdp("Performance.enable", json!({})).await;
    let before = metrics(browser).await;
    let l = load(browser, url, &["allLinesPainted", "ended"]).await;
    let after = metrics(browser).await;
    browser.cdp("Performance.disable", json!({})).await;
    let delta = |name: &str| {
        let (b, a) = (
            before.get(name).copied().unwrap_or(0.0),
            after.get(name).copied().unwrap_or(0.0),
        );
        // A new renderer process for the page starts from zero.
        if a >= b { a - b } else { a }
    };
    println!();
    println!(
        "Log page, the renderer's accounting (CDP `Performance.getMetrics`): all lines painted at \
         {:.0} ms; tasks {:.0} ms: script {:.0} ms, style {:.0} ms in {:.0} recalcs, layout {:.0} ms \
         in {:.0} layouts, the rest (event-stream parsing and dispatch, paint, GC…) {:.0} ms.",
        l.ms("allLinesPainted").unwrap_or(f64::NAN),
        delta("TaskDuration") * 1e3,
        delta("ScriptDuration") * 1e3,
        delta("RecalcStyleDuration") * 1e3,
        delta("RecalcStyleCount"),
        delta("LayoutDuration") * 1e3,
        delta("LayoutCount"),
        (delta("TaskDuration")
            - delta("ScriptDuration")
            - delta("RecalcStyleDuration")
            - delta("LayoutDuration"))
            * 1e3,
    );

    browser.goto("about:blank").await;
    browser.cdp("Profiler.enable", json!({})).await;
    browser
        .cdp("Profiler.setSamplingInterval", json!({ "interval": 200 }))
        .await;
    browser.cdp("Profiler.start", json!({})).await;
    let l = load(browser, url, &["allLinesPainted", "ended"]).await;
    let profile = browser.cdp("Profiler.stop", json!({})).await;
    browser.cdp("Profiler.disable", json!({})).await;

    // Self time per node: the time deltas of the samples that hit it.
    let nodes = profile["profile"]["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let samples = profile["profile"]["samples"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let deltas = profile["profile"]["timeDeltas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut by_node = std::collections::HashMap::<i64, f64>::new();
    // A sample's delta is the time since the one before; it is charged to
    // the sample that ends the interval, as DevTools does.
    for (sample, delta) in samples.iter().zip(deltas.iter().skip(1)) {
        *by_node.entry(sample.as_i64().unwrap_or(-1)).or_default() +=
            delta.as_f64().unwrap_or(0.0) / 1e3;
    }
    let mut by_function = std::collections::HashMap::<String, f64>::new();
    for node in &nodes {
        let id = node["id"].as_i64().unwrap_or(-2);
        let frame = &node["callFrame"];
        let name = frame["functionName"].as_str().unwrap_or("");
        let file = frame["url"].as_str().unwrap_or("");
        let file = file.rsplit('/').next().unwrap_or(file);
        let label = if file.is_empty() {
            if name.is_empty() {
                "(anonymous)".to_owned()
            } else {
                name.to_owned()
            }
        } else {
            let line = frame["lineNumber"].as_i64().unwrap_or(-1) + 1;
            format!(
                "{} ({file}:{line})",
                if name.is_empty() { "(anonymous)" } else { name }
            )
        };
        *by_function.entry(label).or_default() += by_node.get(&id).copied().unwrap_or(0.0);
    }
    let total: f64 = by_function.values().sum();
    let mut top: Vec<_> = by_function.into_iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!();
    println!(
        "Log page under the profiler: all lines in at {:.0} ms, painted at {:.0} ms; \
         {total:.0} ms of samples, by self time (a forced layout is charged to the function \
         that forced it):",
        l.ms("allLines").unwrap_or(f64::NAN),
        l.ms("allLinesPainted").unwrap_or(f64::NAN)
    );
    println!();
    println!("| function | self time | share |");
    println!("|---|---|---|");
    for (label, ms) in top.iter().take(12) {
        println!("| `{label}` | {ms:.0} ms | {:.0} % |", ms / total * 100.0);
    }
}
