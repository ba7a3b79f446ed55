//! Nothing lost on upgrade: a data dir written by an earlier build, checked into
//! `tests/fixtures/`, opens with this one — pipelines, finished executions and
//! their logs, secrets and bizes are there, and the execution that was running
//! when that build stopped resumes and succeeds.
//!
//! The fixture is made by `make_data_dir_fixture` below (ignored; run it by
//! hand with `ARKLINE_FIXTURE_OUT=<dir>` on the build whose format it records):
//! `cargo test -p arkline-tests --test all upgrade::make_data_dir_fixture -- --ignored`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arkline::model::{ExecutionPhase, StepPhase};
use arkline::{Container, Engine, TriggerRequest};

const LIMIT: Duration = Duration::from_secs(300);

/// The fixtures, oldest first: each a data dir written by the build named.
const FIXTURES: &[&str] = &["datadir-0.1.0-schema1"];

const QUICK: &str = "name: quick\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: hello }\n";
const SECRETIVE: &str = "name: secretive\nsecrets: [token]\nstages:\n  - name: s\n    steps:\n      - name: echo-it\n        uses: faults/echo\n        with: { data: \"${{ secrets.token }}\" }\n      - name: print-it\n        uses: faults/print\n        with: { stdout: \"token is ${{ secrets.token }}\", stderr: \"\" }\n";
const SLOW: &str = "name: slow\nstages:\n  - name: s\n    steps:\n      - name: nap\n        uses: faults/sleep\n        with: { ms: 1500 }\n  - name: t\n    steps:\n      - name: after\n        uses: faults/upper\n        with: { text: woke }\n";
const TOKEN: &str = "fixture-secret-value-42";

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

async fn wait(engine: &Engine, name: &str) -> arkline::model::PipelineExecution {
    match tokio::time::timeout(LIMIT, engine.wait(name)).await {
        Ok(done) => done.expect("wait"),
        Err(_) => panic!("{name} did not finish: {:#?}", engine.execution(name).await),
    }
}

fn output(exec: &arkline::model::PipelineExecution, step: &str, key: &str) -> String {
    exec.status
        .outputs
        .get(step)
        .and_then(|o| o.get(key))
        .cloned()
        .unwrap_or_else(|| panic!("no output {step}.{key} in {:#?}", exec.status.outputs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dirs_of_earlier_builds_open_and_their_interrupted_execution_resumes() {
    for fixture in FIXTURES {
        let source = fixtures_dir().join(fixture);
        assert!(
            source.join("store.redb").is_file(),
            "fixture {} is missing: it is checked into the repository",
            source.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(&source, dir.path());
        // Git does not keep modes: the node key must be private again.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("secret.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        let container = Container::builder()
            .data_dir(dir.path())
            .build()
            .unwrap_or_else(|e| panic!("{fixture}: the data dir does not open: {e}"));
        let engine = container
            .engine("team-a")
            .await
            .unwrap_or_else(|e| panic!("{fixture}: the engine does not start: {e}"));
        // Bizes and pipelines are there.
        assert!(
            engine.bizes().iter().any(|b| b.name == "faults"),
            "{fixture}: {:?}",
            engine.bizes()
        );
        for name in ["quick", "secretive", "slow"] {
            assert!(
                engine.pipeline(name).await.expect("reads").is_some(),
                "{fixture}: pipeline {name} is gone"
            );
        }
        let executions = engine.executions(None).await.expect("lists");
        let of = |pipeline: &str| {
            executions
                .iter()
                .filter(|e| e.spec.pipeline == pipeline)
                .map(|e| e.metadata.name.clone())
                .collect::<Vec<_>>()
        };
        // Finished executions and their logs.
        let quick = of("quick");
        assert_eq!(quick.len(), 1, "{fixture}");
        let done = wait(&engine, &quick[0]).await;
        assert_eq!(done.status.phase, ExecutionPhase::Succeeded, "{fixture}");
        assert_eq!(output(&done, "up", "text"), "HELLO");
        let secretive = of("secretive");
        assert_eq!(secretive.len(), 1, "{fixture}");
        let log = engine
            .logs(&secretive[0], "print-it")
            .await
            .expect("the old log reads");
        assert!(
            log.iter().any(|l| l.message == "token is ***"),
            "{fixture}: {log:#?}"
        );
        // The interrupted execution resumes where it was and succeeds.
        let slow = of("slow");
        assert_eq!(slow.len(), 1, "{fixture}");
        let resumed = wait(&engine, &slow[0]).await;
        assert_eq!(
            resumed.status.phase,
            ExecutionPhase::Succeeded,
            "{fixture}: {:#?}",
            resumed.status
        );
        let nap = &resumed.status.stages[0].steps[0];
        assert_eq!(nap.phase, StepPhase::Succeeded);
        assert_eq!(nap.interruptions, 1, "{fixture}: {nap:#?}");
        assert_eq!(output(&resumed, "after", "text"), "WOKE");
        // The secret still decrypts with the node key: a new run gets it.
        let again = engine
            .trigger("secretive", TriggerRequest::manual())
            .await
            .expect("triggers");
        let again = wait(&engine, &again.metadata.name).await;
        assert_eq!(
            again.status.phase,
            ExecutionPhase::Succeeded,
            "{fixture}: {:#?}",
            again.status
        );
        assert_eq!(output(&again, "echo-it", "data"), "***");
        container.shutdown().await;
    }
}

/// Writes a fixture data dir with this build: bizes, three pipelines, two
/// finished executions (one using a secret), and one stopped mid-step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "makes a fixture; run by hand with ARKLINE_FIXTURE_OUT=<dir>"]
async fn make_data_dir_fixture() {
    use futures::StreamExt;
    let out = PathBuf::from(std::env::var("ARKLINE_FIXTURE_OUT").expect("ARKLINE_FIXTURE_OUT"));
    assert!(!out.exists(), "{} exists", out.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(dir.path())
        .build()
        .expect("container");
    let engine = container.engine("team-a").await.expect("engine");
    let faults = std::fs::read(arkline_testkit::plugin("faults")).expect("faults");
    engine
        .deploy_biz(&faults, &[], true)
        .await
        .expect("deploys");
    engine.set_secret("token", TOKEN).await.expect("secret");
    for (file, yaml) in [
        ("quick.yaml", QUICK),
        ("secretive.yaml", SECRETIVE),
        ("slow.yaml", SLOW),
    ] {
        engine
            .apply_pipeline_yaml(file, yaml)
            .await
            .expect("applies");
    }
    for pipeline in ["quick", "secretive"] {
        let exec = engine
            .trigger(pipeline, TriggerRequest::manual())
            .await
            .expect("triggers");
        let done = wait(&engine, &exec.metadata.name).await;
        assert_eq!(done.status.phase, ExecutionPhase::Succeeded);
    }
    let napping = engine
        .trigger("slow", TriggerRequest::manual())
        .await
        .expect("triggers");
    let mut states = engine
        .watch_execution(&napping.metadata.name)
        .await
        .expect("watch");
    while let Some(state) = states.next().await {
        let state = state.expect("state");
        if state
            .status
            .stages
            .first()
            .and_then(|s| s.steps.first())
            .is_some_and(|s| s.phase == StepPhase::Running)
        {
            break;
        }
    }
    container.shutdown().await;
    drop(states);
    copy_dir(dir.path(), &out);
    // The compiled cache is rebuilt on demand and belongs to one wasmtime.
    let _ = std::fs::remove_dir_all(out.join("compiled"));
}
