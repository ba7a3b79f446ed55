//! Executions end to end with the real faults biz on a real redb file: stages and
//! parallel steps, outputs, `when`, retries, timeouts, `finally`, abort,
//! `fail_fast`, quota order, step caches, secrets, cron with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use arkline::ark::Ark;
use arkline::container::ManualClock;
use arkline::host::Capabilities;
use arkline::model::{
    ExecutionPhase, MAX_REASON_BYTES, PipelineExecution, PipelineSettingSpec, StepPhase, StepStatus,
};
use arkline::{Container, Engine, TriggerRequest};
use futures::StreamExt;

const LIMIT: Duration = Duration::from_secs(120);

fn faults() -> Ark {
    Ark::open(arkline_testkit::plugin("faults")).expect("the faults archive reads back")
}

pub(crate) async fn engine_in(dir: &std::path::Path) -> (Container, Engine) {
    let container = Container::builder()
        .data_dir(dir)
        .build()
        .expect("container builds");
    let engine = container.engine("team-a").await.expect("engine starts");
    if engine.bizes().is_empty() {
        engine
            .install(faults(), &Capabilities::default())
            .await
            .expect("faults installs");
    }
    (container, engine)
}

pub(crate) async fn run(engine: &Engine, yaml: &str, req: TriggerRequest) -> PipelineExecution {
    let p = engine
        .apply_pipeline_yaml("test.yaml", yaml)
        .await
        .unwrap_or_else(|e| panic!("pipeline applies: {e}"));
    let exec = engine
        .trigger(&p.metadata.name, req)
        .await
        .expect("trigger");
    wait(engine, &exec.metadata.name).await
}

pub(crate) async fn wait(engine: &Engine, name: &str) -> PipelineExecution {
    match tokio::time::timeout(LIMIT, engine.wait(name)).await {
        Ok(done) => done.expect("wait"),
        Err(_) => {
            let now = engine.execution(name).await.ok().flatten();
            panic!("{name} did not finish; it is now {now:#?}")
        }
    }
}

/// Waits until `pred` holds for the execution's state.
async fn wait_until(engine: &Engine, name: &str, pred: impl Fn(&PipelineExecution) -> bool) {
    let mut states = engine.watch_execution(name).await.expect("watch");
    tokio::time::timeout(LIMIT, async {
        while let Some(s) = states.next().await {
            if pred(&s.expect("state")) {
                return;
            }
        }
        panic!("{name} ended before the condition held");
    })
    .await
    .expect("condition in time");
}

pub(crate) fn step<'a>(exec: &'a PipelineExecution, name: &str) -> &'a StepStatus {
    exec.status
        .stages
        .iter()
        .flat_map(|s| s.steps.iter())
        .chain(exec.status.finally.iter())
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {:#?}", exec.status))
}

fn output<'a>(exec: &'a PipelineExecution, step: &str, key: &str) -> &'a str {
    exec.status
        .outputs
        .get(step)
        .and_then(|o| o.get(key))
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no output {step}.{key} in {:#?}", exec.status.outputs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_run_in_order_steps_in_parallel_and_outputs_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let exec = run(
        &engine,
        r#"
name: flow
params:
  - name: word
    default: hello
stages:
  - name: build
    steps:
      - name: a
        uses: faults/sleep
        with: { ms: 400 }
      - name: b
        uses: faults/sleep
        with: { ms: 400 }
      - name: up
        uses: faults/upper
        with: { text: "${{ params.word }}" }
  - name: use
    steps:
      - name: join
        uses: faults/echo
        with: { data: "${{ steps.up.outputs.text }}-${{ steps.a.outputs.slept_ms }}" }
"#,
        TriggerRequest::manual().param("word", "world"),
    )
    .await;
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );
    assert_eq!(output(&exec, "join", "data"), "WORLD-400");
    let (a, b, join) = (step(&exec, "a"), step(&exec, "b"), step(&exec, "join"));
    // Parallel: each of a and b started before the other finished.
    assert!(
        a.started < b.finished && b.started < a.finished,
        "a {a:?} b {b:?}"
    );
    // Stages in order: join started after both finished.
    assert!(join.started >= a.finished && join.started >= b.finished);
    assert_eq!(exec.spec.run, 1);
    let resolved = &exec.status.resolved;
    assert!(
        resolved.values().all(|v| v.starts_with("faults@")),
        "{resolved:?}"
    );
    assert_eq!(exec.status.node.as_deref(), Some(container.node()));
    // The log of a step is durable and readable after the run.
    let log = engine.logs(&exec.metadata.name, "a").await.expect("log");
    assert!(
        log.iter().any(|l| l.message.contains("attempt 1 of 1")),
        "{log:?}"
    );
    // The pipeline status follows (its reconciler sees the execution finish).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let p = loop {
        let p = engine.pipeline("flow").await.expect("get").expect("exists");
        if p.status.last_execution.is_some() || std::time::Instant::now() > deadline {
            break p;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(p.status.next_run, 2);
    assert_eq!(p.status.last_execution.as_deref(), Some("flow-1"));
    assert_eq!(
        p.status.last_state,
        Some(arkline::model::ExecutionPhase::Succeeded)
    );
    assert_eq!(p.status.recent_nodes, [container.node()]);
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_skips_steps_and_stages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let exec = run(
        &engine,
        r#"
name: gated
params:
  - name: deploy
    type: bool
    default: false
stages:
  - name: build
    steps:
      - name: compile
        uses: faults/upper
        with: { text: x }
      - name: publish
        uses: faults/upper
        with: { text: y }
        when:
          if: "params.deploy == true"
  - name: release
    when:
      branch: main
    steps:
      - name: tag
        uses: faults/upper
        with: { text: z }
  - name: after
    steps:
      - name: check
        uses: faults/upper
        with: { text: w }
        if: "steps.publish.state == 'Skipped' && steps.compile.state == 'Succeeded'"
      - name: never
        uses: faults/upper
        with: { text: v }
        if: "steps.compile.state == 'Failed'"
"#,
        TriggerRequest::manual().branch("dev"),
    )
    .await;
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );
    assert_eq!(step(&exec, "compile").phase, StepPhase::Succeeded);
    assert_eq!(step(&exec, "publish").phase, StepPhase::Skipped);
    assert_eq!(exec.status.stages[1].phase, StepPhase::Skipped);
    assert_eq!(step(&exec, "tag").phase, StepPhase::Skipped);
    assert_eq!(step(&exec, "check").phase, StepPhase::Succeeded);
    assert_eq!(
        step(&exec, "never").phase,
        StepPhase::Skipped,
        "`if:` directly on a step is its condition"
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_success_or_until_spent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let exec = run(
        &engine,
        r#"
name: retried
stages:
  - name: s
    steps:
      - name: recovers
        uses: faults/flaky
        with: { failures: 2 }
        retries: { count: 2, backoff: 10ms }
      - name: gives-up
        uses: faults/flaky
        with: { failures: 3 }
        retries: 1
"#,
        TriggerRequest::manual(),
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Failed);
    let recovers = step(&exec, "recovers");
    assert_eq!(
        (recovers.phase, recovers.attempts),
        (StepPhase::Succeeded, 3)
    );
    assert_eq!(output(&exec, "recovers", "attempt"), "3");
    let gives_up = step(&exec, "gives-up");
    assert_eq!((gives_up.phase, gives_up.attempts), (StepPhase::Failed, 2));
    assert!(
        gives_up.reason.contains("attempt 2 fails on purpose"),
        "{gives_up:?}"
    );
    let log = engine
        .logs(&exec.metadata.name, "recovers")
        .await
        .expect("log");
    let retrying = log
        .iter()
        .filter(|l| l.message.contains("retrying in"))
        .count();
    assert_eq!(retrying, 2, "{log:#?}");
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_fail_steps_and_finally_runs_after_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let exec = run(
        &engine,
        r#"
name: slow
stages:
  - name: s
    steps:
      - name: too-slow
        uses: faults/sleep
        with: { ms: 600000 }
        timeout: 1s
  - name: never
    steps:
      - name: unreached
        uses: faults/upper
        with: { text: x }
finally:
  - name: report
    uses: faults/echo
    with: { data: "${{ steps.too-slow.state }}" }
"#,
        TriggerRequest::manual(),
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Failed);
    let slow = step(&exec, "too-slow");
    assert_eq!(slow.phase, StepPhase::Failed);
    assert!(slow.reason.contains("timeout"), "{slow:?}");
    assert_eq!(step(&exec, "unreached").phase, StepPhase::Skipped);
    assert_eq!(exec.status.stages[1].phase, StepPhase::Skipped);
    assert_eq!(step(&exec, "report").phase, StepPhase::Succeeded);
    assert_eq!(output(&exec, "report", "data"), "Failed");
    assert!(
        exec.status.reason.contains("too-slow"),
        "{}",
        exec.status.reason
    );

    // A stage deadline cuts its steps; the pipeline deadline cuts everything.
    let exec = run(
        &engine,
        r#"
name: deadlines
timeout: 2s
stages:
  - name: bounded
    timeout: 1s
    steps:
      - name: long
        uses: faults/sleep
        with: { ms: 600000 }
        retries: 3
"#,
        TriggerRequest::manual(),
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Failed);
    let long = step(&exec, "long");
    assert_eq!(long.attempts, 1, "a deadline is not retried: {long:?}");
    assert!(long.reason.contains("deadline"), "{long:?}");
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_interrupts_running_steps_and_finally_still_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    engine
        .apply_pipeline_yaml(
            "t.yaml",
            r#"
name: abortable
stages:
  - name: s
    steps:
      - name: long
        uses: faults/spin
  - name: later
    steps:
      - name: unreached
        uses: faults/upper
        with: { text: x }
finally:
  - name: cleanup
    uses: faults/upper
    with: { text: "cleaned" }
"#,
        )
        .await
        .expect("applies");
    let exec = engine
        .trigger("abortable", TriggerRequest::manual())
        .await
        .expect("trigger");
    let name = exec.metadata.name.clone();
    wait_until(&engine, &name, |e| {
        e.status
            .stages
            .first()
            .and_then(|s| s.steps.first())
            .is_some_and(|s| s.phase == StepPhase::Running)
    })
    .await;
    engine.abort(&name).await.expect("abort");
    let exec = wait(&engine, &name).await;
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Aborted,
        "{:#?}",
        exec.status
    );
    assert_eq!(step(&exec, "long").phase, StepPhase::Aborted);
    assert_eq!(step(&exec, "unreached").phase, StepPhase::Skipped);
    assert_eq!(step(&exec, "cleanup").phase, StepPhase::Succeeded);
    assert_eq!(output(&exec, "cleanup", "text"), "CLEANED");

    // A rerun is a new execution with the next run number.
    let again = engine.rerun(&name).await.expect("rerun");
    assert_eq!(again.spec.run, 2);
    engine.abort(&again.metadata.name).await.expect("abort");
    assert_eq!(
        wait(&engine, &again.metadata.name).await.status.phase,
        ExecutionPhase::Aborted
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_cancels_siblings_and_without_it_they_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let pipeline = |name: &str, fail_fast: bool| {
        format!(
            r#"
name: {name}
fail_fast: {fail_fast}
stages:
  - name: s
    steps:
      - name: broken
        uses: faults/fail
        with: {{ message: boom }}
      - name: sibling
        uses: faults/sleep
        with: {{ ms: {ms} }}
"#,
            ms = if fail_fast { 600_000 } else { 300 }
        )
    };
    let fast = run(&engine, &pipeline("fast", true), TriggerRequest::manual()).await;
    assert_eq!(fast.status.phase, ExecutionPhase::Failed);
    let sibling = step(&fast, "sibling");
    assert_eq!(sibling.phase, StepPhase::Aborted, "{sibling:?}");
    assert!(sibling.reason.contains("fail_fast"), "{sibling:?}");

    let patient = run(
        &engine,
        &pipeline("patient", false),
        TriggerRequest::manual(),
    )
    .await;
    assert_eq!(patient.status.phase, ExecutionPhase::Failed);
    assert_eq!(step(&patient, "sibling").phase, StepPhase::Succeeded);
    assert_eq!(step(&patient, "broken").phase, StepPhase::Failed);
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_queues_executions_and_admits_them_in_creation_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    engine
        .apply_settings(PipelineSettingSpec {
            executor_quota: 1,
            ..PipelineSettingSpec::default()
        })
        .await
        .expect("settings");
    engine
        .apply_pipeline_yaml(
            "t.yaml",
            "name: q\nstages:\n  - name: s\n    steps:\n      - name: nap\n        uses: faults/sleep\n        with: { ms: 150 }\n",
        )
        .await
        .expect("applies");
    let mut names = Vec::new();
    for _ in 0..5 {
        names.push(
            engine
                .trigger("q", TriggerRequest::manual())
                .await
                .expect("trigger")
                .metadata
                .name,
        );
    }
    let mut done = Vec::new();
    for n in &names {
        done.push(wait(&engine, n).await);
    }
    for pair in done.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b.status.phase, ExecutionPhase::Succeeded);
        assert!(
            a.status.finished <= b.status.started,
            "quota 1: run {} started before run {} finished",
            b.spec.run,
            a.spec.run
        );
    }
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_cache_is_restored_on_the_second_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let yaml = r#"
name: cached
stages:
  - name: t
    steps:
      - name: build
        uses: faults/append
        with: { path: /workspace/runs.txt, line: "run ${{ params.n }}" }
        cache:
          key: deps-v1
          paths: [runs.txt]
params:
  - name: n
    type: number
"#;
    let first = run(&engine, yaml, TriggerRequest::manual().param("n", 1)).await;
    assert_eq!(
        first.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        first.status
    );
    assert_eq!(output(&first, "build", "lines"), "1");
    let second = run(&engine, yaml, TriggerRequest::manual().param("n", 2)).await;
    assert_eq!(
        output(&second, "build", "lines"),
        "2",
        "the second run starts from the first run's cached runs.txt"
    );
    let log = engine
        .logs(&second.metadata.name, "build")
        .await
        .expect("log");
    assert!(
        log.iter()
            .any(|l| l.message.contains("cache: restored key `deps-v1`")),
        "{log:#?}"
    );
    // Workspaces of finished executions are removed.
    assert!(
        !dir.path()
            .join("workspaces/team-a")
            .join(&first.metadata.name)
            .exists()
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_only_the_step_that_references_it_and_is_masked() {
    let traced = trace_step_lines();
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let plaintext = "hunter2-very-secret";
    engine.set_secret("token", plaintext).await.expect("secret");
    let exec = run(
        &engine,
        r#"
name: secretive
secrets: [token]
stages:
  - name: s
    steps:
      - name: uses-it
        uses: faults/print
        with: { stdout: "token is ${{ secrets.token }}", stderr: "stderr has ${{ secrets.token }}" }
        env: { TOKEN: "${{ secrets.token }}" }
      - name: echo-it
        uses: faults/echo
        with: { data: "${{ secrets.token }}" }
      - name: other
        uses: faults/context
"#,
        TriggerRequest::manual(),
    )
    .await;
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );
    let log = engine
        .logs(&exec.metadata.name, "uses-it")
        .await
        .expect("log");
    assert!(log.iter().any(|l| l.message == "token is ***"), "{log:#?}");
    // The host's own tracing of step lines (what `arkline serve` prints on
    // stderr) is masked too.
    let traced = String::from_utf8_lossy(&traced.lock().expect("trace")).into_owned();
    assert!(traced.contains("stderr has ***"), "{traced}");
    assert!(!traced.contains(plaintext), "{traced}");
    // The other step's environment has no trace of it.
    assert!(!output(&exec, "other", "env").contains(plaintext));
    // Stored outputs are masked; nothing stored holds the plaintext.
    assert_eq!(output(&exec, "echo-it", "data"), "***");
    let stored = serde_json::to_string(&exec).expect("json");
    assert!(!stored.contains(plaintext));
    let logs_dir = dir.path().join("logs");
    for entry in walk(&logs_dir) {
        let bytes = std::fs::read(&entry).expect("read log");
        assert!(
            !String::from_utf8_lossy(&bytes).contains(plaintext),
            "{} holds the plaintext",
            entry.display()
        );
    }
    let store_bytes = std::fs::read(dir.path().join("store.redb")).expect("store file");
    assert!(
        !store_bytes
            .windows(plaintext.len())
            .any(|w| w == plaintext.as_bytes()),
        "the store file holds the plaintext"
    );
    container.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_fires_on_schedule_and_collapses_missed_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start: chrono::DateTime<chrono::Utc> = "2026-01-01T10:01:00Z".parse().expect("time");
    let clock = ManualClock::new(start);
    let container = Container::builder()
        .data_dir(dir.path())
        .clock(Arc::new(clock.clone()))
        .build()
        .expect("builds");
    let engine = container.engine("team-a").await.expect("engine");
    engine
        .install(faults(), &Capabilities::default())
        .await
        .expect("installs");
    engine
        .apply_pipeline_yaml(
            "t.yaml",
            "name: nightly\ntriggers:\n  - type: cron\n    schedule: \"*/5 * * * *\"\nstages:\n  - name: s\n    steps:\n      - name: x\n        uses: faults/upper\n        with: { text: x }\n",
        )
        .await
        .expect("applies");
    // The schedule is first seen at 10:01: nothing runs for times before that.
    let seen = |engine: Engine| async move {
        engine
            .pipeline("nightly")
            .await
            .ok()
            .flatten()
            .is_some_and(|p| !p.status.cron_last.is_empty())
    };
    eventually(|| seen(engine.clone())).await;
    assert!(
        engine
            .executions(Some("nightly"))
            .await
            .expect("list")
            .is_empty()
    );

    clock.set("2026-01-01T10:05:00Z".parse().expect("time"));
    let count = |engine: Engine, n: usize| async move {
        engine
            .executions(Some("nightly"))
            .await
            .map(|e| e.len())
            .unwrap_or(0)
            == n
    };
    eventually(|| count(engine.clone(), 1)).await;

    // Down for an hour: twelve fire times collapse into one run.
    clock.set("2026-01-01T11:07:00Z".parse().expect("time"));
    eventually(|| count(engine.clone(), 2)).await;
    let execs = engine.executions(Some("nightly")).await.expect("list");
    for e in &execs {
        assert_eq!(e.spec.trigger, arkline::model::TriggerKind::Cron);
        wait(&engine, &e.metadata.name).await;
    }
    let p = engine
        .pipeline("nightly")
        .await
        .expect("get")
        .expect("exists");
    let last = p.status.cron_last.values().next().copied();
    assert_eq!(last, Some("2026-01-01T11:05:00Z".parse().expect("time")));
    // No third run appears without the clock moving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        engine
            .executions(Some("nightly"))
            .await
            .expect("list")
            .len(),
        2
    );
    container.shutdown().await;
}

/// Waits (watch-free, for conditions spanning several objects) until `check` holds.
async fn eventually<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::time::timeout(LIMIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("condition held in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsatisfied_uses_fail_the_execution_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let exec = run(
        &engine,
        "name: missing\nstages:\n  - name: s\n    steps:\n      - name: x\n        uses: nosuch@^1\n",
        TriggerRequest::manual(),
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Failed);
    assert!(
        exec.status.reason.contains("nosuch"),
        "{}",
        exec.status.reason
    );
    let p = engine
        .pipeline("missing")
        .await
        .expect("get")
        .expect("exists");
    let resolved = p
        .status
        .conditions
        .iter()
        .find(|c| c.kind == arkline::model::ConditionType::Resolved)
        .expect("Resolved condition");
    assert_eq!(resolved.status, arkline::model::ConditionStatus::False);
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_mid_step_resumes_on_the_next_start_without_rerunning_done_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = r#"
name: resumable
stages:
  - name: one
    steps:
      - name: first
        uses: faults/append
        with: { path: /workspace/count.txt, line: first }
  - name: two
    steps:
      - name: slow
        uses: faults/spin
        retries: 1
        timeout: 2s
  - name: three
    steps:
      - name: last
        uses: faults/append
        with: { path: /workspace/count.txt, line: last }
finally:
  - name: count
    uses: faults/read-file
    with: { path: /workspace/count.txt }
"#;
    let name = {
        let (container, engine) = engine_in(dir.path()).await;
        engine
            .apply_pipeline_yaml("t.yaml", yaml)
            .await
            .expect("applies");
        let exec = engine
            .trigger("resumable", TriggerRequest::manual())
            .await
            .expect("trigger");
        let name = exec.metadata.name.clone();
        wait_until(&engine, &name, |e| {
            e.status
                .stages
                .get(1)
                .and_then(|s| s.steps.first())
                .is_some_and(|s| s.phase == StepPhase::Running)
        })
        .await;
        container.shutdown().await;
        name
    };
    // The new process starts the engine before the biz is installed again: the
    // resumed execution waits for the exact version it resolved, still `Running`.
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("container builds again");
    let engine = container.engine("team-a").await.expect("engine starts");
    let stopped = engine.execution(&name).await.expect("get").expect("exists");
    assert_eq!(
        stopped.status.phase,
        ExecutionPhase::Running,
        "a shutdown leaves it running"
    );
    assert_eq!(step(&stopped, "slow").phase, StepPhase::Running);
    engine
        .install(faults(), &Capabilities::default())
        .await
        .expect("faults installs again");
    let exec = wait(&engine, &name).await;
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Failed,
        "{:#?}",
        exec.status
    );
    let slow = step(&exec, "slow");
    assert_eq!(
        (slow.attempts, slow.interruptions),
        (3, 1),
        "the interrupted attempt is given back once, beyond the step's retry: {slow:?}"
    );
    assert!(slow.reason.contains("timeout"), "{slow:?}");
    assert_eq!(step(&exec, "first").attempts, 1);
    assert_eq!(
        output(&exec, "count", "content"),
        "first\n",
        "the completed step did not run again"
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_logs_can_be_followed_while_the_step_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    engine
        .apply_pipeline_yaml(
            "t.yaml",
            "name: chatty\nstages:\n  - name: s\n    steps:\n      - name: nap\n        uses: faults/sleep\n        with: { ms: 1500 }\n",
        )
        .await
        .expect("applies");
    let exec = engine
        .trigger("chatty", TriggerRequest::manual())
        .await
        .expect("trigger");
    let name = exec.metadata.name.clone();
    wait_until(&engine, &name, |e| {
        e.status
            .stages
            .first()
            .and_then(|s| s.steps.first())
            .is_some_and(|s| s.phase == StepPhase::Running)
    })
    .await;
    let lines: Vec<String> = tokio::time::timeout(
        LIMIT,
        engine
            .follow_logs(&name, "nap")
            .map(|l| l.expect("line").message)
            .collect(),
    )
    .await
    .expect("the follow ends when the step ends");
    assert!(
        lines.iter().any(|l| l.contains("attempt 1 of 1")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("sleeping")), "{lines:#?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("attempt 1 succeeded"),
        "{lines:#?}"
    );
    // Every line was seen once, in order: the stored log is the same.
    let stored: Vec<String> = engine
        .logs(&name, "nap")
        .await
        .expect("log")
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert_eq!(stored, lines);
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_finished_executions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    engine
        .apply_settings(PipelineSettingSpec {
            retention: arkline::model::Retention {
                executions: Some(2),
                logs: None,
            },
            ..PipelineSettingSpec::default()
        })
        .await
        .expect("settings");
    for _ in 0..4 {
        run(
            &engine,
            "name: kept\nstages:\n  - name: s\n    steps:\n      - name: x\n        uses: faults/upper\n        with: { text: x }\n",
            TriggerRequest::manual(),
        )
        .await;
    }
    let runs = |engine: Engine| async move {
        engine
            .executions(Some("kept"))
            .await
            .map(|e| e.iter().map(|e| e.spec.run).collect::<Vec<_>>())
            .unwrap_or_default()
            == vec![4, 3]
    };
    eventually(|| runs(engine.clone())).await;
    assert!(
        engine.logs("kept-1", "x").await.is_err(),
        "the logs of a removed execution are removed too"
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_instance_pool_waits_for_slots_instead_of_failing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(dir.path())
        .runtime_config(arkline::runtime::RuntimeConfig::default().max_instances(3))
        .build()
        .expect("container builds");
    let engine = container.engine("team-a").await.expect("engine");
    engine
        .install(faults(), &Capabilities::default())
        .await
        .expect("installs");
    engine
        .apply_pipeline_yaml(
            "t.yaml",
            "name: burst\nstages:\n  - name: s\n    steps:\n      - name: a\n        uses: faults/sleep\n        with: { ms: 50 }\n      - name: b\n        uses: faults/upper\n        with: { text: x }\n",
        )
        .await
        .expect("applies");
    let mut names = Vec::new();
    for _ in 0..12 {
        let exec = engine
            .trigger("burst", TriggerRequest::manual())
            .await
            .expect("trigger");
        names.push(exec.metadata.name);
    }
    for name in &names {
        let done = wait(&engine, name).await;
        assert_eq!(
            done.status.phase,
            ExecutionPhase::Succeeded,
            "{:#?}",
            done.status
        );
    }
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_failure_message_is_stored_capped_and_logged() {
    const MESSAGE: u64 = 20 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let exec = run(
        &engine,
        r#"
name: loud
stages:
  - name: only
    steps:
      - name: shout
        uses: faults/fail-with
        with: { bytes: 20971521 }
"#,
        TriggerRequest::manual(),
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Failed);
    let shout = step(&exec, "shout");
    assert_eq!(shout.phase, StepPhase::Failed);
    let marker = format!(" … ({} bytes, cut)", "failed: ".len() as u64 + MESSAGE + 1);
    assert!(
        shout.reason.ends_with(&marker),
        "the reason ends with the cut marker {marker:?}: …{:?}",
        &shout.reason[shout.reason.len().saturating_sub(80)..]
    );
    assert!(
        shout.reason.len() <= MAX_REASON_BYTES,
        "the stored reason is {} bytes",
        shout.reason.len()
    );
    assert!(
        shout.reason.starts_with("failed: éé"),
        "cut at a char boundary"
    );
    // The whole object stays small: the stage's and the execution's reasons
    // quote the capped text, not the message.
    let stored = serde_json::to_vec(&exec).expect("serializes");
    assert!(
        stored.len() < 8 * MAX_REASON_BYTES,
        "the execution is {} bytes",
        stored.len()
    );
    // The log has more of the message than the status (up to the log's cap).
    let log = engine
        .logs(&exec.metadata.name, "shout")
        .await
        .expect("log");
    let logged: usize = log.iter().map(|l| l.message.len()).sum();
    assert!(
        logged > 4 * MAX_REASON_BYTES,
        "the log keeps the message: {logged} bytes"
    );
    container.shutdown().await;
}

/// Installs (once, for the whole test binary) a `tracing` subscriber that
/// records every line the host traces for steps, as `arkline serve` would print
/// them; returns the record.
fn trace_step_lines() -> &'static std::sync::Mutex<Vec<u8>> {
    static TRACED: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    TRACED.get_or_init(|| {
        let buffer: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct Sink(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("trace").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Sink(buffer))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        buffer
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_status_is_written_once_per_finished_execution_at_most() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let yaml = "name: steady\nstages:\n  - name: s\n    steps:\n      - name: a\n        uses: faults/upper\n        with: { text: x }\n";
    let p = engine
        .apply_pipeline_yaml("steady.yaml", yaml)
        .await
        .expect("applies");
    let from = container.store().revision().await.expect("revision");
    let mut events = container
        .store()
        .watch("Pipeline", Some("team-a"), from)
        .await
        .expect("watch");
    for _ in 0..5 {
        let exec = engine
            .trigger(&p.metadata.name, TriggerRequest::default())
            .await
            .expect("trigger");
        wait(&engine, &exec.metadata.name).await;
    }
    // The status reaches the fifth run, without chasing runs in flight.
    let mut writes = 0;
    loop {
        let event = tokio::time::timeout(LIMIT, events.next())
            .await
            .expect("the pipeline status reaches the fifth run")
            .expect("a watch event")
            .expect("no watch error");
        writes += 1;
        if event.object.status["last_execution"] == "steady-5" {
            assert_eq!(event.object.status["next_run"], 6);
            assert_eq!(event.object.status["last_state"], "Succeeded");
            break;
        }
    }
    assert!(writes <= 6, "{writes} writes of the pipeline for five runs");
    container.shutdown().await;
}

/// Every way of applying a pipeline checks its steps' `with:` against the
/// installed biz's schema, `$ref`s included (an enum `schemars` writes as a
/// `$ref` to a `oneOf` of constants), and refuses it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_configs_are_checked_against_the_installed_bizes_schemas_on_every_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_container, engine) = engine_in(dir.path()).await;
    let yaml = r#"name: flood
stages:
  - name: s
    steps:
      - name: f
        uses: faults/log-flood
        with:
          lines: 1
          bytes_per_line: 8
          via: stdot
"#;
    // From a file: the diagnostic points into `with:`.
    let err = engine
        .apply_pipeline_yaml("flood.yaml", yaml)
        .await
        .expect_err("a wrong enum value is refused");
    let arkline::EngineError::Invalid(diagnostics) = err else {
        panic!("expected invalid, got {err}");
    };
    let rendered = diagnostics.render(yaml);
    assert!(
        rendered.contains(r#"`via` must be one of "log", "stdout", "stderr""#),
        "{rendered}"
    );
    assert!(rendered.contains("flood.yaml:10:16"), "{rendered}");
    assert!(rendered.contains("did you mean `stdout`?"), "{rendered}");

    // A typed pipeline (as the API and embedders apply them) is checked too.
    let pipeline = arkline::model::parse_pipeline("flood.yaml", yaml).expect("parses");
    let err = engine
        .apply_pipeline(&pipeline)
        .await
        .expect_err("refused when typed too");
    assert!(err.to_string().contains("must be one of"), "{err}");
    assert!(engine.pipeline("flood").await.expect("reads").is_none());

    // Fixed, it applies and runs; a biz not installed here is not checked.
    let fixed = yaml.replace("via: stdot", "via: stdout");
    let exec = run(&engine, &fixed, TriggerRequest::default()).await;
    assert_eq!(exec.status.phase, ExecutionPhase::Succeeded, "{exec:?}");
    let other = fixed.replace("faults/log-flood", "elsewhere/step");
    engine
        .apply_pipeline_yaml("other.yaml", &other)
        .await
        .expect("a biz not installed here is not checked");
}

/// `continue_on_error`: a tolerated step failure leaves its stage and the
/// execution succeeding and does not cancel its siblings under `fail_fast`; a
/// tolerated stage failure lets the next stages run; an untolerated one still
/// fails the execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_on_error_tolerates_a_failed_step_or_stage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_container, engine) = engine_in(dir.path()).await;
    let exec = run(
        &engine,
        r#"name: tolerant
fail_fast: true
stages:
  - name: checks
    steps:
      - name: lint
        uses: faults/fail
        with: { message: style }
        continue_on_error: true
      - name: slow
        uses: faults/sleep
        with: { ms: 300 }
  - name: optional
    continue_on_error: true
    steps:
      - name: flaky-upload
        uses: faults/fail
        with: { message: unreachable }
      - name: slow-upload
        uses: faults/sleep
        with: { ms: 600000 }
  - name: build
    steps:
      - name: up
        uses: faults/upper
        with: { text: done }
finally:
  - name: cleanup
    uses: faults/fail
    with: { message: ignored }
    continue_on_error: true
"#,
        TriggerRequest::default(),
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Succeeded, "{exec:?}");
    let checks = &exec.status.stages[0];
    assert_eq!(checks.phase, StepPhase::Succeeded, "{checks:?}");
    assert_eq!(checks.steps[0].phase, StepPhase::Failed);
    assert!(checks.steps[0].reason.contains("style"), "{checks:?}");
    // Not cancelled by the tolerated failure, although `fail_fast` is on.
    assert_eq!(checks.steps[1].phase, StepPhase::Succeeded, "{checks:?}");
    assert_eq!(exec.status.stages[1].phase, StepPhase::Failed);
    // `fail_fast` cancels the failed step's sibling; the stage tolerates it,
    // so the next stage runs all the same.
    assert_eq!(exec.status.stages[1].steps[1].phase, StepPhase::Aborted);
    assert_eq!(exec.status.stages[2].phase, StepPhase::Succeeded);
    assert_eq!(exec.status.outputs["up"]["text"], "DONE");
    assert_eq!(exec.status.finally[0].phase, StepPhase::Failed);

    // Without it, the same failure fails the execution and skips what follows.
    let strict = run(
        &engine,
        r#"name: strict
stages:
  - name: checks
    steps:
      - name: lint
        uses: faults/fail
        with: { message: style }
  - name: build
    steps:
      - name: up
        uses: faults/upper
        with: { text: done }
"#,
        TriggerRequest::default(),
    )
    .await;
    assert_eq!(strict.status.phase, ExecutionPhase::Failed, "{strict:?}");
    assert_eq!(strict.status.stages[1].phase, StepPhase::Skipped);
}

/// The engines of a container share one pool of spare workspace directories:
/// an execution of one engine reuses the directory another engine's finished
/// execution left (an instance per engine once cleared the others' spares).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_share_the_spare_workspaces() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, a) = engine_in(dir.path()).await;
    let b = container.engine("team-b").await.expect("engine starts");
    b.install(faults(), &Capabilities::default())
        .await
        .expect("faults installs");
    let spares = dir.path().join("workspaces.spare");
    // The inodes of the spare directories once the workspace `gone` is
    // removed (the driver removes it just after the execution's last write).
    let spare_inodes = |gone: std::path::PathBuf| {
        let spares = spares.clone();
        async move {
            tokio::time::timeout(LIMIT, async {
                loop {
                    if gone.exists() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    let inodes: std::collections::BTreeSet<u64> = std::fs::read_dir(&spares)
                        .into_iter()
                        .flatten()
                        .map(|e| e.expect("entry").metadata().expect("metadata").ino())
                        .collect();
                    return inodes;
                }
            })
            .await
            .expect("the finished execution's workspace becomes a spare")
        }
    };
    let yaml = "name: one\nstages:\n  - name: s\n    steps:\n      - name: a\n        uses: faults/upper\n        with: { text: x }\n";
    let done = run(&a, yaml, TriggerRequest::default()).await;
    assert_eq!(done.status.phase, ExecutionPhase::Succeeded);
    let workspace = |engine: &str| dir.path().join("workspaces").join(engine).join("one-1");
    let after_a = spare_inodes(workspace("team-a")).await;
    assert_eq!(after_a.len(), 1, "team-a's workspace is kept as a spare");
    let done = run(&b, yaml, TriggerRequest::default()).await;
    assert_eq!(done.status.phase, ExecutionPhase::Succeeded);
    assert_eq!(
        spare_inodes(workspace("team-b")).await,
        after_a,
        "team-b ran in team-a's spare directory and gave it back"
    );
    container.shutdown().await;
}
