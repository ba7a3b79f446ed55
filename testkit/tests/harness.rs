//! `Harness` from async code, on a prebuilt archive, and when packaging fails.

use arkline_testkit::{Harness, HarnessError, StepCall, StepFailure};
use serde_json::json;

#[tokio::test]
async fn invoke_works_in_an_async_test_and_packages_on_first_use() {
    let h =
        Harness::current_crate(arkline_testkit::workspace_root().join("plugins/testing/faults"));
    let report = h
        .invoke(StepCall::new("echo", json!({ "data": "é" })))
        .await;
    let outputs = report.outputs().expect("echo succeeds");
    assert_eq!(outputs["len"], "2");
    assert_eq!(outputs["data"], "é");
}

#[test]
fn an_archive_runs_with_call_limits_and_a_workspace() {
    let h = Harness::from_ark(arkline_testkit::plugin("faults"));
    let dir = std::env::temp_dir().join(format!("arkline-testkit-ws-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("workspace");
    let written = h.call(
        StepCall::new(
            "write-file",
            json!({ "path": "/workspace/a.txt", "content": "x" }),
        )
        .workspace(&dir),
    );
    let content = std::fs::read_to_string(dir.join("a.txt"));
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert!(written.result.is_ok(), "{:?}", written.result);
    assert_eq!(content.expect("written on the host"), "x");

    let spun = h.call(StepCall::new("spin", json!({})).fuel(50_000));
    assert_eq!(spun.fault().map(|f| f.kind()), Some("out_of_fuel"));
}

#[test]
fn a_crate_that_is_not_a_plugin_is_a_package_error() {
    let h = Harness::current_crate(arkline_testkit::workspace_root().join("testkit"));
    let err = h.lease().expect_err("the testkit is no plugin");
    assert!(matches!(err, HarnessError::Package { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("has no `[package.metadata.ark]` table"),
        "{err}"
    );
    // The failure is kept: asking again does not build again, and says the same.
    assert_eq!(h.lease().expect_err("still failing"), err);
}

#[test]
fn a_harness_can_be_shared_between_tests() {
    fn shared<T: Send + Sync>() {}
    shared::<Harness>();
    let unknown = Harness::from_ark(arkline_testkit::plugin("faults")).run("nope", json!({}));
    assert!(
        matches!(unknown.result, Err(StepFailure::UnknownStepType { ref step_type, .. }) if step_type == "nope"),
        "{:?}",
        unknown.result
    );
}
