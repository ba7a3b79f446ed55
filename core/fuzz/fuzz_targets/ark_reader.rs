//! Fuzzes the hardened `.ark` reader: no input panics it, and whatever it accepts
//! re-reads identically from its own entries.
//!
//! Run with `cargo +nightly fuzz run ark_reader` from `core/`.

#![no_main]

use arkline::ark::{Ark, ReadLimits, SignaturePolicy, write_deterministic_zip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ReadLimits {
        max_entries: 64,
        max_entry_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
    };
    if let Ok(ark) = Ark::from_bytes_with_limits(data, limits) {
        let _ = ark.verify_signature(&SignaturePolicy::default());
        let again = write_deterministic_zip(&ark.entries(), |_| false).expect("rewrites");
        let reread = Ark::from_bytes_with_limits(&again, limits).expect("re-reads");
        assert_eq!(reread.manifest, ark.manifest);
        assert_eq!(reread.component, ark.component);
    }
});
