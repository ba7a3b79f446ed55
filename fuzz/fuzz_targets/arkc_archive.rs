//! The `.arkc` container archive reader
//! (`arkline::container::archive::ContainerArchive::from_bytes_with_limits`),
//! which `arkline run`, `arkline serve --archive`, the deploy API and
//! `arkline validate` use: the zip checks, `container.toml`, every pinned
//! entry, every nested `.ark` (the hardened reader under the remaining byte
//! budget), signature policies per engine, and every pipeline parsed and
//! checked against its engine's bizes and their step schemas.
//!
//! Nothing panics, overflows, hangs or exhausts memory. What is accepted is
//! also accepted by `arkline validate` (`arkline_cli::validate::check_archive`),
//! its pipelines parse, and `write_container` writes it again to an archive
//! with the same bizes and pipelines. A refusal for a pipeline renders in
//! `arkline validate`'s report.
//!
//! Inputs are raw archive bytes, or a bundle (see `arkline_fuzz`) written as a
//! valid zip with its digests filled in, nested `.ark` bundles included.

#![no_main]

use arkline::container::archive::{ContainerArchive, ContainerArchiveError, write_container};
use arkline::model;
use arkline_fuzz::{LIMITS, archive_bytes, debug};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = archive_bytes(data, "container.toml") else {
        return;
    };
    let archive = match ContainerArchive::from_bytes_with_limits(&bytes, LIMITS) {
        Ok(archive) => archive,
        Err(err) => {
            if debug() {
                eprintln!("refused: {err}");
            }
            let _ = err.to_string();
            if matches!(
                err,
                ContainerArchiveError::Pipeline { .. }
                    | ContainerArchiveError::UnsatisfiedUses { .. }
                    | ContainerArchiveError::PipelineConfig { .. }
            ) {
                let report = arkline_cli::validate::check_archive("fuzz.arkc", &bytes);
                assert!(
                    report.has_errors(),
                    "validate accepts a refused archive: {err}"
                );
            }
            return;
        }
    };

    if debug() {
        eprintln!(
            "accepted: {} engines, {} bizes, {} pipelines",
            archive.manifest.engines.len(),
            archive.bizes.len(),
            archive.pipelines.len()
        );
    }
    let report = arkline_cli::validate::check_archive("fuzz.arkc", &bytes);
    assert!(
        !report.has_errors(),
        "validate refuses an accepted archive: {:?}",
        report.diagnostics
    );

    for engine in &archive.manifest.engines {
        for biz in archive.engine_bizes(&engine.name) {
            assert!(
                archive.biz(&biz.name, &biz.version).is_some(),
                "engine {} has {}@{} but the archive does not",
                engine.name,
                biz.name,
                biz.version
            );
        }
        for (path, text) in archive.engine_pipelines(&engine.name) {
            if let Err(d) = model::parse_pipeline(path, text) {
                panic!(
                    "an accepted pipeline {path} does not parse: {}",
                    d.render(text)
                );
            }
        }
    }

    let (written, again) = write_container(
        archive.manifest.clone(),
        &archive.biz_bytes,
        &archive.pipelines,
    )
    .unwrap_or_else(|e| panic!("an accepted archive does not write again: {e}"));
    assert_eq!(again.biz_bytes, archive.biz_bytes);
    assert_eq!(again.pipelines, archive.pipelines);
    assert_eq!(again.manifest.engines.len(), archive.manifest.engines.len());
    drop(written);
});
