//! The bomb uploads of issue 19, finding 7 and 8, against a real `arkline serve`:
//! a 1.2 MiB `.arkc` holding a 24 MiB pipeline of 400k steps, and a pipeline whose undeclared
//! 3,000-character references once made did-you-mean stall the server. Each is
//! refused, `/healthz` answers throughout, and the server's peak RSS stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::arkc::{TestEngine, write_unchecked};
use crate::support::server::{Server, arkc, faults};

/// How long one `/healthz` may take before the server counts as stalled: an
/// outcome (it kept answering), generous for a loaded machine, not a benchmark.
const HEALTHZ_BOUND: Duration = Duration::from_secs(5);

/// Peak RSS the server may reach: generous against the 5.8 GiB the `.arkc`
/// bomb once cost.
const PEAK_RSS_BOUND_KIB: u64 = 512 * 1024;

const QUICK: &str = "name: quick\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: hi }\n";

/// 400k one-line steps: about 24 MiB of YAML that deflates to little.
fn huge_pipeline() -> String {
    let mut text = String::from("name: bomb\nstages:\n  - name: s\n    steps:\n");
    for i in 0..400_000 {
        text.push_str(&format!(
            "      - {{name: s{i:07}, uses: faults/upper, with: {{text: x}}}}\n"
        ));
    }
    text
}

/// 40 steps each referencing an undeclared 3,000-character param next to 40
/// declared ones of the longest allowed names: what made did-you-mean quadratic.
fn did_you_mean_pipeline() -> String {
    let mut text = String::from("name: dym\nparams:\n");
    for i in 0..40 {
        text.push_str(&format!("  - name: p{i:02}{}\n", "a".repeat(240)));
    }
    text.push_str("stages:\n  - name: s\n    steps:\n");
    for i in 0..40 {
        let undeclared = format!("q{i:02}{}", "a".repeat(2_997));
        text.push_str(&format!(
            "      - name: s{i:02}\n        uses: faults/upper\n        with: {{ text: \"${{{{ params.{undeclared} }}}}\" }}\n"
        ));
    }
    text
}

/// `VmHWM` of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

async fn upload(
    http: &reqwest::Client,
    url: String,
    body: Vec<u8>,
) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let response = http
        .post(url)
        .body(body)
        .send()
        .await
        .expect("the server answers");
    let status = response.status();
    let body = response.json().await.expect("a JSON error");
    (status, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bomb_uploads_are_refused_while_healthz_answers_and_rss_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("data"), &["--insecure-no-auth"]);
    // Bounded so a stalled server fails the test rather than hanging it.
    let http = reqwest::Client::builder()
        .timeout(crate::support::server::LIMIT)
        .build()
        .expect("client");
    let deployed = http
        .post(format!("{}/api/v1/engines", server.url))
        .body(arkc("team-a", faults(), &[], &[("quick.yaml", QUICK)]))
        .send()
        .await
        .expect("deploys");
    assert_eq!(deployed.status(), StatusCode::CREATED);

    let huge = huge_pipeline();
    let path = write_unchecked(
        dir.path(),
        "bomb.arkc",
        &[TestEngine {
            name: "team-a",
            bizes: &[("faults", &[])],
            quota: 1,
            pipelines: &[("bomb.yaml", &huge)],
        }],
    );
    let bomb = std::fs::read(&path).expect("reads bomb.arkc");
    eprintln!(
        "bomb .arkc: {} bytes holding a {}-byte pipeline",
        bomb.len(),
        huge.len()
    );
    assert!(huge.len() > 20 << 20);
    let dym = did_you_mean_pipeline().into_bytes();

    // A poller that records the slowest answer and any failure until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let url = format!("{}/healthz", server.url);
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(HEALTHZ_BOUND)
                .build()
                .expect("client");
            let (mut polls, mut slowest, mut failures) = (0u32, Duration::ZERO, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                match http.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::OK => {}
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
                slowest = slowest.max(started.elapsed());
                polls += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (polls, slowest, failures)
        })
    };

    let engines = format!("{}/api/v1/engines", server.url);
    let pipelines = format!("{}/api/v1/engines/team-a/pipelines", server.url);
    let (arkc_status, arkc_body, arkc_time) = upload(&http, engines, bomb).await;
    // Three at once: the number that once stopped `/healthz`.
    let dyms =
        futures::future::join_all((0..3).map(|_| upload(&http, pipelines.clone(), dym.clone())))
            .await;
    stop.store(true, Ordering::SeqCst);
    let (polls, slowest, failures) = poller.await.expect("the poller ends");
    let peak = peak_rss_kib(server.pid());

    eprintln!("bomb .arkc answered {arkc_status} in {arkc_time:?}");
    for (status, _, time) in &dyms {
        eprintln!("did-you-mean pipeline answered {status} in {time:?}");
    }
    eprintln!("/healthz: {polls} polls, slowest {slowest:?}; server VmHWM {peak} KiB");

    assert_eq!(arkc_status, StatusCode::UNPROCESSABLE_ENTITY, "{arkc_body}");
    assert_eq!(arkc_body["code"], "invalid_archive", "{arkc_body}");
    let message = arkc_body["message"].as_str().expect("message");
    assert!(
        message.contains("engines/team-a/pipelines/bomb.yaml")
            && message.contains(&format!("the pipeline file is {} bytes", huge.len()))
            && message.contains("more than the limit of 1048576 bytes"),
        "{message}"
    );
    for (status, body, _) in &dyms {
        assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["code"], "invalid_pipeline", "{body}");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains("error[unknown-param]"), "{message}");
    }
    assert!(polls > 0);
    assert!(failures.is_empty(), "/healthz did not answer: {failures:?}");
    assert!(slowest < HEALTHZ_BOUND, "slowest /healthz {slowest:?}");
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "the server's peak RSS was {peak} KiB"
    );
}
