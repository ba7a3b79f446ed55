//! The `faults` component itself, built with `cargo ark package` and run in the
//! isolation runtime through `arkline_testkit::Harness`.

use arkline_testkit::{Capabilities, Harness, LogSource, StepCall, StepFailure};
use serde_json::json;

fn faults() -> Harness {
    Harness::current_crate(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn upper_returns_its_text_upper_cased() {
    let report = faults().run("upper", json!({ "text": "hi, wasm" }));
    let outputs = report.outputs().expect("upper succeeds");
    assert_eq!(outputs["text"], "HI, WASM");
    assert_eq!(report.biz, "faults@0.1.0");
}

#[test]
fn fail_is_the_step_failing_not_a_fault() {
    let report = faults().run("fail", json!({ "message": "as configured" }));
    assert_eq!(
        report.result,
        Err(StepFailure::Failed("as configured".to_owned()))
    );
    assert!(report.fault().is_none());
}

#[test]
fn print_lands_in_the_step_log_by_stream() {
    let report = faults().call(StepCall::new(
        "print",
        json!({ "stdout": "to stdout\n", "stderr": "to stderr\n" }),
    ));
    assert!(report.result.is_ok(), "{:?}", report.result);
    let lines = |source| {
        report
            .log
            .from_source(source)
            .map(|l| l.message.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(LogSource::Stdout), ["to stdout"]);
    assert_eq!(lines(LogSource::Stderr), ["to stderr"]);
}

#[test]
fn a_capability_is_denied_until_granted() {
    let config = json!({ "capability": "process" });
    let denied = faults().run("call-capability", config.clone());
    let outputs = denied.outputs().expect("the step reports the refusal");
    assert_eq!(outputs["kind"], "denied", "{outputs:?}");
    assert!(
        outputs["error"].contains("does not grant `process: true`"),
        "{outputs:?}"
    );

    let granted = faults().grant(Capabilities {
        process: vec!["true".to_owned()],
        ..Capabilities::default()
    });
    let report = granted.run("call-capability", config);
    let outputs = report.outputs().expect("the step reports the call");
    // Served or not by this build, the call is no longer refused.
    assert_ne!(
        outputs.get("kind").map(String::as_str),
        Some("denied"),
        "{outputs:?}"
    );
}
