//! The manifest parsers: `ark.toml` (`arkline::ark::Manifest::from_toml`, which
//! every `.ark` read goes through) and, on the same text, `container.toml`
//! (`ContainerManifest::from_toml`). Neither panics; whatever is accepted
//! passes its own `check()`, serialises, and parses back equal.

#![no_main]

use arkline::ark::Manifest;
use arkline::container::archive::ContainerManifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::from_toml(text) {
        Ok(manifest) => {
            manifest
                .check()
                .expect("an accepted manifest passes check()");
            let toml = manifest.to_toml().expect("an accepted manifest serialises");
            let again = Manifest::from_toml(&toml)
                .unwrap_or_else(|e| panic!("a serialised manifest re-parses: {e}\n{toml}"));
            assert_eq!(again, manifest, "round trip changed the manifest:\n{toml}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match ContainerManifest::from_toml(text) {
        Ok(manifest) => {
            manifest
                .check()
                .expect("an accepted container manifest passes check()");
            for engine in &manifest.engines {
                let _ = engine.signature_policy();
                for biz in &engine.bizes {
                    let _ = biz.capabilities();
                }
            }
            let toml = manifest
                .to_toml()
                .expect("an accepted container manifest serialises");
            let again = ContainerManifest::from_toml(&toml).unwrap_or_else(|e| {
                panic!("a serialised container manifest re-parses: {e}\n{toml}")
            });
            assert_eq!(
                again.to_toml().ok().as_deref(),
                Some(toml.as_str()),
                "round trip changed the container manifest"
            );
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
