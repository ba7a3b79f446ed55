//! The pipeline YAML front end, on the path `arkline validate FILE.yaml` takes
//! (`arkline_cli::validate::check_pipeline`: UTF-8 check, parse, decode,
//! validate, with the default limits) and the one the engine takes
//! (`arkline::model::parse_pipeline`). Nothing panics or hangs; both agree on
//! whether the file is valid; every diagnostic renders at its span (plain,
//! coloured and as JSON); and an accepted pipeline survives a
//! serialise → parse round trip unchanged.

#![no_main]

use arkline::model::{self, Severity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let report = arkline_cli::validate::check_pipeline("fuzz.yaml", data, &[]);
    let Ok(src) = std::str::from_utf8(data) else {
        assert!(report.has_errors(), "non-UTF-8 input must be refused");
        return;
    };
    for d in &report.diagnostics {
        let _ = d.render(src);
        let _ = d.render_colored(src);
        let _ = serde_json::to_string(d).expect("a diagnostic serialises");
        if let Some(span) = d.span {
            assert!(span.start <= span.end, "span runs backwards: {d:?}");
            assert!(
                span.end <= src.len(),
                "span past the end of the source: {d:?}"
            );
            assert!(
                src.is_char_boundary(span.start) && src.is_char_boundary(span.end),
                "span splits a character: {d:?}"
            );
        }
    }
    match model::parse_pipeline("fuzz.yaml", src) {
        Ok(pipeline) => {
            assert!(
                !report.has_errors(),
                "validate refuses what the engine accepts"
            );
            let yaml = model::to_pipeline_file(&pipeline).expect("an accepted pipeline serialises");
            let again = model::parse_pipeline("again.yaml", &yaml);
            assert_eq!(
                again.as_ref().ok(),
                Some(&pipeline),
                "round trip changed the pipeline:\n{yaml}\n{:?}",
                again.as_ref().err()
            );
        }
        Err(diagnostics) => {
            assert!(
                report.has_errors(),
                "validate accepts what the engine refuses"
            );
            assert!(diagnostics.has_errors());
            assert!(diagnostics.0.iter().any(|d| d.severity == Severity::Error));
            let _ = diagnostics.render(src);
        }
    }
});
