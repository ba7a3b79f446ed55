//! Container archives for the CLI tests: real bizes packaged by the testkit
//! (once per test binary), pipelines given as YAML, written with the library's
//! `.arkc` writer (or rewritten around it, for archives the writer would refuse).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arkline::ark::{FileEntry, sha256_hex, write_deterministic_zip};
use arkline::container::archive::{
    BizRef, CONTAINER_FORMAT_VERSION, CONTAINER_MANIFEST_PATH, ContainerManifest, EngineSpec,
    write_container,
};
use arkline::container::archive::{biz_path, pipeline_path};
use arkline::model::PipelineSettingSpec;
use semver::Version;

/// One engine of a test container: its name, its bizes `(plugin, grants)`, its
/// quota and its pipelines `(file name, YAML)`.
pub struct TestEngine<'a> {
    pub name: &'a str,
    pub bizes: &'a [(&'a str, &'a [&'a str])],
    pub quota: i64,
    pub pipelines: &'a [(&'a str, &'a str)],
}

fn biz_bytes(plugin: &str) -> Vec<u8> {
    let path = arkline_testkit::plugin(plugin);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What `write_container` takes: the manifest, the bizes' bytes by identity,
/// and the pipelines' YAML by `(engine, entry path)`.
type Parts = (
    ContainerManifest,
    BTreeMap<(String, Version), Vec<u8>>,
    BTreeMap<(String, String), String>,
);

fn parts(engines: &[TestEngine<'_>]) -> Parts {
    let version = Version::new(0, 1, 0);
    let mut bizes = BTreeMap::new();
    let mut pipelines = BTreeMap::new();
    let mut specs = Vec::new();
    for e in engines {
        let mut refs = Vec::new();
        for (plugin, grants) in e.bizes {
            bizes
                .entry(((*plugin).to_owned(), version.clone()))
                .or_insert_with(|| biz_bytes(plugin));
            refs.push(BizRef {
                name: (*plugin).to_owned(),
                version: version.clone(),
                grants: grants.iter().map(|g| (*g).to_owned()).collect(),
                active: true,
            });
        }
        for (file, yaml) in e.pipelines {
            pipelines.insert(
                (e.name.to_owned(), pipeline_path(e.name, file)),
                (*yaml).to_owned(),
            );
        }
        specs.push(EngineSpec {
            name: e.name.to_owned(),
            trusted_keys: vec![],
            require_signed: false,
            bizes: refs,
            pipelines: vec![],
            settings: PipelineSettingSpec {
                executor_quota: e.quota,
                ..PipelineSettingSpec::default()
            },
        });
    }
    let manifest = ContainerManifest {
        format_version: CONTAINER_FORMAT_VERSION,
        name: "test".into(),
        version,
        engines: specs,
        shared_bizes: vec![],
        files: vec![],
    };
    (manifest, bizes, pipelines)
}

/// Writes a valid `.arkc` to `dir/name` and returns its path.
pub fn write(dir: &Path, name: &str, engines: &[TestEngine<'_>]) -> PathBuf {
    let (manifest, bizes, pipelines) = parts(engines);
    let (bytes, _) = write_container(manifest, &bizes, &pipelines).expect("writes the .arkc");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write .arkc");
    path
}

/// Writes an `.arkc` whose pipelines are stored as given, without the checks of
/// the writer (every entry still pinned by digest, so the reader gets as far as
/// the pipelines), and returns its path.
pub fn write_unchecked(dir: &Path, name: &str, engines: &[TestEngine<'_>]) -> PathBuf {
    let (mut manifest, bizes, pipelines) = parts(engines);
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for ((biz, version), data) in &bizes {
        let path = biz_path(biz, version);
        manifest.files.push(FileEntry {
            path: path.clone(),
            sha256: sha256_hex(data),
            size: data.len() as u64,
        });
        entries.insert(path, data.clone());
    }
    for ((engine, path), text) in &pipelines {
        let spec = manifest
            .engines
            .iter_mut()
            .find(|e| &e.name == engine)
            .expect("engine");
        spec.pipelines.push(FileEntry {
            path: path.clone(),
            sha256: sha256_hex(text.as_bytes()),
            size: text.len() as u64,
        });
        entries.insert(path.clone(), text.clone().into_bytes());
    }
    entries.insert(
        CONTAINER_MANIFEST_PATH.to_owned(),
        manifest.to_toml().expect("toml").into_bytes(),
    );
    let bytes = write_deterministic_zip(&entries, |n| n.starts_with("bizes/")).expect("zip");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write .arkc");
    path
}
