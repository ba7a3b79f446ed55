//! Step graphs end to end with the real faults biz on a real redb file:
//! `needs` (a diamond, and a step of a later stage that waits for one step
//! only), matrices (`exclude`, `include`, `fail_fast`, `max_parallel`, outputs
//! per cell), and the status functions `success()`, `failure()`, `always()`.
//! Order is asserted from the recorded start and finish times, never from
//! durations.

use std::time::Duration;

use arkline::model::{ExecutionPhase, PipelineExecution, StepPhase};
use arkline::{Engine, TriggerRequest};

use crate::executions::{engine_in, step, wait};

const LIMIT: Duration = Duration::from_secs(120);

/// Applies and runs `yaml` once, manually, to its end.
async fn run(engine: &Engine, yaml: &str) -> PipelineExecution {
    crate::executions::run(engine, yaml, TriggerRequest::manual()).await
}

/// (started, finished) of a step that ran.
fn times(
    exec: &PipelineExecution,
    name: &str,
) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let s = step(exec, name);
    match (s.started, s.finished) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!("{name} did not run: {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_of_needs_runs_the_middle_together_and_the_last_after_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let exec = run(
        &engine,
        r#"name: diamond
stages:
  - name: build
    steps:
      - name: last
        uses: faults/upper
        with: { text: "${{ steps.left.outputs.text }}-${{ steps.right.state }}" }
        needs: [left, right]
      - name: left
        uses: faults/upper
        with: { text: left }
        needs: first
      - name: right
        uses: faults/sleep
        with: { ms: 400 }
        needs: [first]
      - name: first
        uses: faults/sleep
        with: { ms: 100 }
      - name: slow
        uses: faults/sleep
        with: { ms: 1500 }
  - name: ship
    steps:
      - name: early
        uses: faults/upper
        with: { text: early }
        needs: [first]
      - name: after-all
        uses: faults/upper
        with: { text: late }
"#,
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Succeeded, "{exec:#?}");
    let first = times(&exec, "first");
    let (left, right, last) = (
        times(&exec, "left"),
        times(&exec, "right"),
        times(&exec, "last"),
    );
    // The middle two start after `first` ends, and run at the same time.
    assert!(left.0 >= first.1 && right.0 >= first.1, "{exec:#?}");
    assert!(
        left.0 < right.1 && right.0 < left.1,
        "left and right overlap: {exec:#?}"
    );
    // The last starts after both ended.
    assert!(last.0 >= left.1 && last.0 >= right.1, "{exec:#?}");
    assert_eq!(exec.status.outputs["last"]["text"], "LEFT-SUCCEEDED");
    // A later stage's step that needs `first` only does not wait for the
    // stage's slow step; one without `needs` waits for all of it.
    let (early, slow, after) = (
        times(&exec, "early"),
        times(&exec, "slow"),
        times(&exec, "after-all"),
    );
    assert!(
        early.0 < slow.1,
        "`early` started before `slow` ended: {exec:#?}"
    );
    assert!(after.0 >= slow.1 && after.0 >= last.1, "{exec:#?}");
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_runs_its_cells_and_a_failed_cell_without_fail_fast_lets_the_others_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    // `v: 3` is a number, which `upper` refuses as its `text`: cell (b, 3)
    // fails; (a, 3) is excluded.
    let exec = run(
        &engine,
        r#"name: matrix
stages:
  - name: test
    steps:
      - name: up
        uses: faults/upper
        with: { text: "${{ matrix.v }}" }
        matrix:
          os: [a, b]
          v: ["1", "2", 3]
          exclude: [{ os: a, v: 3 }]
          fail_fast: false
          max_parallel: 2
  - name: report
    continue_on_error: true
    steps:
      - name: read
        uses: faults/upper
        with: { text: "${{ steps['up (a, 2)'].outputs.text }}/${{ steps.up.state }}" }
        if: always()
"#,
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Failed, "{exec:#?}");
    let cells: Vec<&str> = exec.status.stages[0]
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        cells,
        [
            "up (a, 1)",
            "up (a, 2)",
            "up (b, 1)",
            "up (b, 2)",
            "up (b, 3)"
        ]
    );
    for cell in ["up (a, 1)", "up (a, 2)", "up (b, 1)", "up (b, 2)"] {
        assert_eq!(
            step(&exec, cell).phase,
            StepPhase::Succeeded,
            "{cell}: {exec:#?}"
        );
    }
    assert_eq!(
        step(&exec, "up (b, 3)").phase,
        StepPhase::Failed,
        "{exec:#?}"
    );
    assert_eq!(exec.status.outputs["up (b, 2)"]["text"], "2");
    // `always()` runs after the failure, and reads one cell's output.
    assert_eq!(exec.status.outputs["read"]["text"], "2/FAILED");
    // max_parallel: 2 — never three cells running at once.
    let spans: Vec<_> = cells.iter().map(|c| times(&exec, c)).collect();
    for (i, a) in spans.iter().enumerate() {
        let overlapping = spans
            .iter()
            .enumerate()
            .filter(|(j, b)| *j != i && b.0 < a.1 && a.0 < b.1 && b.0 <= a.0)
            .count();
        assert!(
            overlapping <= 1,
            "cell {i} started with {overlapping} others running: {spans:?}"
        );
    }
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cell_cancels_the_others_under_fail_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    // Cell `(oops)` fails (`ms` must be a number); under the matrix's default
    // `fail_fast` it cancels the long cell, but not the step beside the matrix.
    let exec = run(
        &engine,
        r#"name: matrix-fast
stages:
  - name: test
    steps:
      - name: wait
        uses: faults/sleep
        with: { ms: "${{ matrix.ms }}" }
        matrix:
          ms: [600000, oops]
      - name: beside
        uses: faults/sleep
        with: { ms: 300 }
"#,
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Failed, "{exec:#?}");
    assert_eq!(step(&exec, "wait (oops)").phase, StepPhase::Failed);
    let long = step(&exec, "wait (600000)");
    assert_eq!(long.phase, StepPhase::Aborted, "{exec:#?}");
    assert!(long.reason.contains("matrix fail_fast"), "{long:?}");
    assert_eq!(
        step(&exec, "beside").phase,
        StepPhase::Succeeded,
        "{exec:#?}"
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_functions_decide_what_runs_after_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let exec = run(
        &engine,
        r#"name: statuses
stages:
  - name: build
    steps:
      - name: broken
        uses: faults/fail
        with: { message: boom }
  - name: after
    steps:
      - name: plain
        uses: faults/upper
        with: { text: plain }
      - name: on-success
        uses: faults/upper
        with: { text: ok }
        if: success()
      - name: on-failure
        uses: faults/upper
        with: { text: "${{ format('{0} failed', 'build') }}" }
        if: failure()
      - name: every-time
        uses: faults/upper
        with: { text: always }
        if: always() && !cancelled()
finally:
  - name: report-failure
    uses: faults/upper
    with: { text: report }
    if: failure()
  - name: report-success
    uses: faults/upper
    with: { text: report }
    if: success()
"#,
    )
    .await;
    assert_eq!(exec.status.phase, ExecutionPhase::Failed, "{exec:#?}");
    assert_eq!(step(&exec, "plain").phase, StepPhase::Skipped);
    assert_eq!(step(&exec, "plain").reason, "an earlier stage failed");
    assert_eq!(step(&exec, "on-success").phase, StepPhase::Skipped);
    assert_eq!(exec.status.outputs["on-failure"]["text"], "BUILD FAILED");
    assert_eq!(step(&exec, "every-time").phase, StepPhase::Succeeded);
    assert_eq!(step(&exec, "report-failure").phase, StepPhase::Succeeded);
    assert_eq!(step(&exec, "report-success").phase, StepPhase::Skipped);
    container.shutdown().await;
}

async fn trigger_pushes(engine: &Engine, pipeline: &str, n: usize) -> Vec<PipelineExecution> {
    let mut names = Vec::new();
    for _ in 0..n {
        let exec = engine
            .trigger(
                pipeline,
                TriggerRequest::manual().event("push").branch("main"),
            )
            .await
            .expect("trigger");
        names.push(exec.metadata.name);
    }
    let mut done = Vec::new();
    for name in names {
        done.push(wait(engine, &name).await);
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_group_cancels_in_progress_runs_or_runs_them_one_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    let pipeline = |name: &str, cancel: bool| {
        format!(
            r#"name: {name}
concurrency:
  group: "${{{{ pipeline }}}}-${{{{ branch }}}}"
  cancel_in_progress: {cancel}
stages:
  - name: deploy
    steps:
      - name: roll-out
        uses: faults/sleep
        with: {{ ms: 800 }}
finally:
  - name: tidy
    uses: faults/upper
    with: {{ text: tidy }}
"#
        )
    };
    engine
        .apply_pipeline_yaml("cancel.yaml", &pipeline("cancelling", true))
        .await
        .expect("applies");
    let runs = trigger_pushes(&engine, "cancelling", 3).await;
    assert_eq!(runs[2].status.phase, ExecutionPhase::Succeeded, "{runs:#?}");
    assert_eq!(runs[2].spec.concurrency.as_deref(), Some("cancelling-main"));
    for (i, run) in runs[..2].iter().enumerate() {
        assert_eq!(run.status.phase, ExecutionPhase::Cancelled, "{run:#?}");
        let by = run
            .spec
            .superseded_by
            .as_deref()
            .expect("names its successor");
        let later: Vec<&str> = runs[i + 1..]
            .iter()
            .map(|r| r.metadata.name.as_str())
            .collect();
        assert!(later.contains(&by), "{by} is a later run: {run:#?}");
        assert!(run.status.reason.contains(by), "{run:#?}");
        // One that had started ran its `finally`.
        if run
            .status
            .stages
            .first()
            .is_some_and(|s| s.started.is_some())
        {
            assert_eq!(
                run.status.finally[0].phase,
                StepPhase::Succeeded,
                "{run:#?}"
            );
        }
    }

    engine
        .apply_pipeline_yaml("queue.yaml", &pipeline("queueing", false))
        .await
        .expect("applies");
    let runs = trigger_pushes(&engine, "queueing", 3).await;
    for pair in runs.windows(2) {
        assert_eq!(pair[0].status.phase, ExecutionPhase::Succeeded, "{runs:#?}");
        let (Some(finished), Some(started)) = (pair[0].status.finished, pair[1].status.started)
        else {
            panic!("both ran: {runs:#?}")
        };
        assert!(started >= finished, "one at a time: {runs:#?}");
    }
    assert_eq!(runs[2].status.phase, ExecutionPhase::Succeeded);
    container.shutdown().await;
}

async fn wait_until_waiting(engine: &Engine, name: &str, step_name: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let exec = engine.execution(name).await.expect("read").expect("exists");
        let waiting = exec
            .status
            .stages
            .iter()
            .flat_map(|s| s.steps.iter())
            .any(|s| s.name == step_name && s.phase == StepPhase::Running);
        if waiting {
            return;
        }
        assert!(
            !exec.status.phase.is_finished() && tokio::time::Instant::now() < deadline,
            "{step_name} never waited: {exec:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_waits_for_a_decision_and_a_rejection_fails_the_run_and_runs_finally() {
    use arkline::engine::{Decision, Refusal};
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    engine
        .apply_pipeline_yaml(
            "gate.yaml",
            r#"name: release
params:
  - { name: target, default: prod }
stages:
  - name: gate
    steps:
      - name: sign-off
        approval:
          message: "deploy to ${{ params.target }}?"
          approvers: [alice, "group:release-managers"]
          timeout: 10m
  - name: deploy
    steps:
      - name: ship
        uses: faults/upper
        with: { text: "${{ steps.sign-off.outputs.approved_by }}" }
finally:
  - name: tidy
    uses: faults/upper
    with: { text: tidy }
"#,
        )
        .await
        .expect("applies");
    let decision = |approve: bool, by: &str, groups: &[&str]| Decision {
        approve,
        by: by.to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        comment: "looks good".into(),
    };

    let approved = engine
        .trigger("release", TriggerRequest::manual())
        .await
        .expect("trigger");
    let name = approved.metadata.name.clone();
    wait_until_waiting(&engine, &name, "sign-off").await;
    // Someone else may not decide; a member of the group may.
    let refused = engine
        .decide(&name, "sign-off", decision(true, "mallory", &["devs"]))
        .await
        .expect_err("not an approver");
    assert!(
        matches!(
            refused,
            arkline::EngineError::Decision {
                refusal: Refusal::NotAnApprover,
                ..
            }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("mallory"), "{refused}");
    let refused = engine
        .decide(&name, "ship", decision(true, "alice", &[]))
        .await
        .expect_err("not a gate");
    assert!(matches!(
        refused,
        arkline::EngineError::Decision {
            refusal: Refusal::NotAGate,
            ..
        }
    ));
    engine
        .decide(
            &name,
            "sign-off",
            decision(true, "bob", &["release-managers"]),
        )
        .await
        .expect("a release manager approves");
    let done = wait(&engine, &name).await;
    assert_eq!(done.status.phase, ExecutionPhase::Succeeded, "{done:#?}");
    let gate = step(&done, "sign-off");
    let record = gate.approval.as_ref().expect("the decision is recorded");
    assert!(record.approved && record.by == "bob" && record.comment == "looks good");
    assert_eq!(done.status.outputs["ship"]["text"], "BOB");
    let late = engine
        .decide(&name, "sign-off", decision(false, "alice", &[]))
        .await
        .expect_err("decided already");
    assert!(matches!(
        late,
        arkline::EngineError::Decision {
            refusal: Refusal::NotWaiting,
            ..
        }
    ));

    let rejected = engine
        .trigger("release", TriggerRequest::manual())
        .await
        .expect("trigger");
    let name = rejected.metadata.name.clone();
    wait_until_waiting(&engine, &name, "sign-off").await;
    engine
        .decide(&name, "sign-off", decision(false, "alice", &[]))
        .await
        .expect("alice rejects");
    let done = wait(&engine, &name).await;
    assert_eq!(done.status.phase, ExecutionPhase::Failed, "{done:#?}");
    assert!(
        step(&done, "sign-off")
            .reason
            .contains("rejected by `alice`"),
        "{done:#?}"
    );
    assert_eq!(step(&done, "ship").phase, StepPhase::Skipped);
    assert_eq!(
        step(&done, "tidy").phase,
        StepPhase::Succeeded,
        "finally runs: {done:#?}"
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_calls_a_pipeline_and_gets_its_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    engine
        .apply_pipeline_yaml(
            "child.yaml",
            r#"name: build-image
params:
  - { name: tag }
stages:
  - name: build
    steps:
      - name: image
        uses: faults/upper
        with: { text: "app:${{ params.tag }}" }
"#,
        )
        .await
        .expect("child applies");
    let parent = run(
        &engine,
        r#"name: release-train
stages:
  - name: build
    steps:
      - name: call
        pipeline:
          name: build-image
          params: { tag: "v1" }
  - name: announce
    steps:
      - name: say
        uses: faults/upper
        with: { text: "${{ steps.call.outputs['image.text'] }}" }
"#,
    )
    .await;
    assert_eq!(
        parent.status.phase,
        ExecutionPhase::Succeeded,
        "{parent:#?}"
    );
    let called = step(&parent, "call")
        .called
        .clone()
        .expect("records the called execution");
    let child = engine
        .execution(&called)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(child.status.phase, ExecutionPhase::Succeeded);
    assert_eq!(
        child.metadata.labels.get(arkline::engine::CALLED_BY_LABEL),
        Some(&parent.metadata.name)
    );
    assert_eq!(parent.status.outputs["call"]["image.text"], "APP:V1");
    assert_eq!(parent.status.outputs["call"]["execution"], called);
    assert_eq!(parent.status.outputs["say"]["text"], "APP:V1");

    // A cycle through another pipeline is refused when it would close.
    engine
        .apply_pipeline_yaml(
            "a.yaml",
            "name: ping\nstages:\n  - name: s\n    steps:\n      - { name: c, pipeline: pong }\n",
        )
        .await
        .expect("ping applies while pong does not exist");
    let cycle = engine
        .apply_pipeline_yaml(
            "b.yaml",
            "name: pong\nstages:\n  - name: s\n    steps:\n      - { name: c, pipeline: ping }\n",
        )
        .await
        .expect_err("pong would close a cycle");
    assert!(
        cycle
            .to_string()
            .contains("`pong` calls `ping` calls `pong`"),
        "{cycle}"
    );
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_abort_only_steps_asking_for_cancelled_or_always_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    engine
        .apply_pipeline_yaml(
            "abort.yaml",
            r#"name: abortable
stages:
  - name: long
    steps:
      - name: wait
        uses: faults/sleep
        with: { ms: 600000 }
  - name: after
    steps:
      - name: plain
        uses: faults/upper
        with: { text: plain }
      - name: on-cancel
        uses: faults/upper
        with: { text: cancelled }
        if: cancelled()
      - name: on-success
        uses: faults/upper
        with: { text: ok }
        if: success()
"#,
        )
        .await
        .expect("applies");
    let exec = engine
        .trigger("abortable", TriggerRequest::manual())
        .await
        .expect("trigger");
    let name = exec.metadata.name.clone();
    wait_until_waiting(&engine, &name, "wait").await;
    engine.abort(&name).await.expect("abort");
    let done = wait(&engine, &name).await;
    assert_eq!(done.status.phase, ExecutionPhase::Aborted, "{done:#?}");
    assert_eq!(step(&done, "plain").phase, StepPhase::Skipped);
    assert_eq!(step(&done, "on-success").phase, StepPhase::Skipped);
    assert_eq!(done.status.outputs["on-cancel"]["text"], "CANCELLED");
    container.shutdown().await;
}
