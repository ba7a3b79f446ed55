//! Fuzzes the pipeline YAML front end: parsing never panics, every diagnostic
//! renders, and whatever is accepted survives a serialize → parse round trip.
//!
//! Run with `cargo +nightly fuzz run pipeline_yaml` from the crate root.

#![no_main]

use arkline::model;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match model::parse_pipeline("fuzz.yaml", src) {
        Ok(pipeline) => {
            let yaml = model::to_pipeline_file(&pipeline).expect("an accepted pipeline serializes");
            let again = model::parse_pipeline("again.yaml", &yaml);
            assert_eq!(
                again.ok().as_ref(),
                Some(&pipeline),
                "round trip changed the pipeline:\n{yaml}"
            );
        }
        Err(diagnostics) => {
            assert!(diagnostics.has_errors());
            let _ = diagnostics.render(src);
            let _ = serde_json::to_string(&diagnostics);
        }
    }
});
