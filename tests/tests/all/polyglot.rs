//! Steps in three languages in one pipeline: the JavaScript `semver` step
//! (componentize-js), the Python `changelog` step (componentize-py), and the
//! Rust `faults` biz, installed side by side in one engine on a redb data dir,
//! each reading the others' outputs.

use arkline::TriggerRequest;
use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::ExecutionPhase;

use crate::executions::{engine_in, wait};

const PIPELINE: &str = r#"
name: release
params:
  - { name: current, type: string, default: "1.4.2" }
stages:
  - name: plan
    steps:
      - name: version
        uses: semver/bump@0.1
        with:
          current: "${{ params.current }}"
          commits: ["fix: a crash on start", "feat(api): matrices"]
      - name: notes
        uses: changelog/changelog@0.1
        needs: version
        with:
          title: "v${{ steps.version.outputs.version }}"
          commits: ["fix: a crash on start", "feat(api): matrices"]
  - name: publish
    steps:
      - name: announce
        uses: faults/echo
        with: { data: "${{ steps.version.outputs.version }}: ${{ steps.notes.outputs.count }} changes" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_javascript_and_rust_steps_run_in_one_pipeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (container, engine) = engine_in(dir.path()).await;
    for plugin in ["semver-js", "changelog-py"] {
        let ark = Ark::open(arkline_testkit::prebuilt(plugin)).expect("the archive reads back");
        engine
            .install(ark, &Capabilities::default())
            .await
            .unwrap_or_else(|e| panic!("{plugin} installs: {e}"));
    }
    engine
        .apply_pipeline_yaml("release.yaml", PIPELINE)
        .await
        .unwrap_or_else(|e| panic!("pipeline applies (checked against each biz's schema): {e}"));
    let exec = engine
        .trigger("release", TriggerRequest::manual())
        .await
        .expect("trigger");
    let done = wait(&engine, &exec.metadata.name).await;
    assert_eq!(
        done.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        done.status
    );
    let out = &done.status.outputs;
    assert_eq!(out["version"]["version"], "1.5.0");
    assert_eq!(out["version"]["level"], "minor");
    assert!(
        out["notes"]["changelog"].starts_with("# v1.5.0\n\n## Features\n- matrices"),
        "{}",
        out["notes"]["changelog"]
    );
    assert_eq!(out["announce"]["data"], "1.5.0: 2 changes");
    let resolved: Vec<&str> = done.status.resolved.values().map(String::as_str).collect();
    for biz in ["semver@0.1.0", "changelog@0.1.0", "faults@"] {
        assert!(
            resolved.iter().any(|r| r.starts_with(biz)),
            "{biz} in {resolved:?}"
        );
    }

    // A `with:` that does not fit the Python step's schema is refused when
    // the pipeline is applied, as for a Rust step.
    let bad = PIPELINE.replace(
        "title: \"v${{ steps.version.outputs.version }}\"",
        "title: 3",
    );
    let err = engine
        .apply_pipeline_yaml("release.yaml", &bad)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("title"), "{err}");
    container.shutdown().await;
}
