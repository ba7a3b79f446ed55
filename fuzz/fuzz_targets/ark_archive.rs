//! The `.ark` reader (`arkline::ark::Ark::from_bytes_with_limits`), the security
//! boundary every deployed biz passes: no input panics, overflows, hangs or
//! exhausts memory, and whatever it accepts re-reads identically after being
//! rewritten from its own entries, and its signature check answers.
//!
//! Inputs are raw archive bytes, or a bundle (see `arkline_fuzz`) written as a
//! valid zip with its digests filled in, so the checks behind them are reached.

#![no_main]

use arkline::ark::{Ark, SignaturePolicy, write_deterministic_zip};
use arkline_fuzz::{LIMITS, archive_bytes, debug, fuzz_secret_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = archive_bytes(data, "ark.toml") else {
        return;
    };
    let ark = match Ark::from_bytes_with_limits(&bytes, LIMITS) {
        Ok(ark) => ark,
        Err(e) => {
            if debug() {
                eprintln!("refused: {e}");
            }
            return;
        }
    };
    if debug() {
        eprintln!(
            "accepted: {} {} ({:?})",
            ark.manifest.name,
            ark.manifest.version,
            ark.verify_signature(&SignaturePolicy::default())
                .map(|s| s.to_string())
        );
    }
    // Every policy answers (errors are answers); none panics.
    let _ = ark.verify_signature(&SignaturePolicy::default());
    let _ = ark.verify_signature(&SignaturePolicy {
        trusted: vec![fuzz_secret_key().public_key()],
        require_signature: true,
    });
    for step in &ark.manifest.steps {
        let _ = ark.step_schema(&step.id);
    }
    // What was accepted is self-consistent: its own entries, rewritten, read
    // back to the same archive.
    let again =
        write_deterministic_zip(&ark.entries(), |_| false).expect("an accepted archive rewrites");
    let reread = Ark::from_bytes_with_limits(&again, LIMITS).expect("a rewritten archive re-reads");
    assert_eq!(reread.manifest, ark.manifest);
    assert_eq!(reread.manifest_bytes, ark.manifest_bytes);
    assert_eq!(reread.component, ark.component);
    assert_eq!(reread.files, ark.files);
    assert_eq!(reread.signature, ark.signature);
});
