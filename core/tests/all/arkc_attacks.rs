//! The hardened `.arkc` reader against a corpus of hostile and broken container
//! archives generated here: each is refused with its own error and message, valid
//! archives round-trip byte for byte, and no input panics the reader.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};

use arkline::ark::{
    ArchiveError, Ark, BuildInfo, ComponentEntry, FORMAT_VERSION, FileEntry, Manifest, ReadLimits,
    SecretKey, SignatureStatus, StepEntry, sha256_hex, write_ark, write_deterministic_zip,
};
use arkline::container::archive::{
    BizRef, CONTAINER_FORMAT_VERSION, ContainerArchive, ContainerArchiveError, ContainerManifest,
    EngineSpec, SharedBiz, write_container,
};
use arkline::container::archive::{biz_path, pipeline_path};
use arkline::model::PipelineSettingSpec;
use proptest::prelude::*;
use semver::{Version, VersionReq};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

type Entries = BTreeMap<String, Vec<u8>>;

const RUN_SCHEMA: &str = r#"{"type":"object","properties":{"script":{"type":"string"}},"required":["script"],"additionalProperties":false}"#;

/// An `.ark` named `name@version` with the given step types (each with the
/// `script` schema).
fn ark(name: &str, version: &str, steps: &[&str]) -> Vec<u8> {
    let mut files = BTreeMap::new();
    let mut entries = Vec::new();
    for step in steps {
        let schema = format!("schemas/{step}.schema.json");
        files.insert(schema.clone(), RUN_SCHEMA.as_bytes().to_vec());
        entries.push(StepEntry {
            id: (*step).to_owned(),
            description: String::new(),
            schema,
        });
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: name.into(),
        version: Version::parse(version).expect("version"),
        description: "test".into(),
        authors: vec![],
        license: None,
        host_api: VersionReq::parse("^0.1").expect("req"),
        component: ComponentEntry {
            path: "component.wasm".into(),
            sha256: String::new(),
            size: 0,
        },
        steps: entries,
        capabilities: Default::default(),
        build: BuildInfo {
            packager: "test".into(),
            rustc: "rustc".into(),
            target: "wasm32-wasip2".into(),
            profile: "ark".into(),
            language: None,
        },
        files: vec![],
    };
    write_ark(manifest, b"\0asm\x0d\0\x01\0component", &files)
        .expect("writes")
        .0
}

fn v(s: &str) -> Version {
    Version::parse(s).expect("version")
}

fn biz(name: &str, version: &str, grants: &[&str]) -> BizRef {
    BizRef {
        name: name.into(),
        version: v(version),
        grants: grants.iter().map(|g| (*g).to_owned()).collect(),
        active: true,
    }
}

fn engine(name: &str, bizes: Vec<BizRef>) -> EngineSpec {
    EngineSpec {
        name: name.into(),
        trusted_keys: vec![],
        require_signed: false,
        bizes,
        pipelines: vec![],
        settings: PipelineSettingSpec::default(),
    }
}

const BUILD: &str = "name: build\nstages:\n  - name: compile\n    steps:\n      - name: make\n        uses: shell/run@^0.1\n        with: { script: make }\n";
const LINT: &str = "name: lint\nstages:\n  - name: check\n    steps:\n      - name: fmt\n        uses: tools/fmt\n        with: { script: fmt }\n      - name: say\n        uses: shell\n        with: { script: echo ok }\n";

/// The parts of a valid container: two engines (`team-a` with shell granted
/// `process=sh`, `team-b` with tools), shell shared by both.
struct Parts {
    manifest: ContainerManifest,
    bizes: BTreeMap<(String, Version), Vec<u8>>,
    pipelines: BTreeMap<(String, String), String>,
}

fn parts() -> Parts {
    let mut team_b = engine("team-b", vec![biz("tools", "1.0.0", &["cache"])]);
    team_b.settings.executor_quota = 1;
    let manifest = ContainerManifest {
        format_version: CONTAINER_FORMAT_VERSION,
        name: "ci".into(),
        version: v("1.0.0"),
        engines: vec![
            engine("team-a", vec![biz("shell", "0.1.0", &["process=sh"])]),
            team_b,
        ],
        shared_bizes: vec![SharedBiz {
            name: "shell".into(),
            version: v("0.1.0"),
            active: true,
        }],
        files: vec![],
    };
    let mut bizes = BTreeMap::new();
    bizes.insert(
        ("shell".into(), v("0.1.0")),
        ark("shell", "0.1.0", &["run"]),
    );
    bizes.insert(
        ("tools".into(), v("1.0.0")),
        ark("tools", "1.0.0", &["fmt", "lint"]),
    );
    let mut pipelines = BTreeMap::new();
    pipelines.insert(
        ("team-a".into(), pipeline_path("team-a", "build.yaml")),
        BUILD.to_owned(),
    );
    pipelines.insert(
        ("team-b".into(), pipeline_path("team-b", "lint.yaml")),
        LINT.to_owned(),
    );
    Parts {
        manifest,
        bizes,
        pipelines,
    }
}

fn write(parts: &Parts) -> Result<Vec<u8>, ContainerArchiveError> {
    write_container(parts.manifest.clone(), &parts.bizes, &parts.pipelines).map(|(b, _)| b)
}

fn valid() -> Vec<u8> {
    write(&parts()).expect("the valid container writes")
}

/// Every entry of an archive as stored, read with the plain zip reader.
fn entries_of(bytes: &[u8]) -> Entries {
    let mut zip = ZipArchive::new(Cursor::new(bytes)).expect("zip");
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).expect("entry");
        let mut data = Vec::new();
        file.read_to_end(&mut data).expect("read");
        let name = file.name().expect("name").into_owned();
        out.insert(name, data);
    }
    out
}

fn rezip(entries: &Entries) -> Vec<u8> {
    write_deterministic_zip(entries, |n| n.ends_with(".ark")).expect("zip")
}

fn manifest_of(entries: &Entries) -> ContainerManifest {
    toml::from_str(std::str::from_utf8(&entries["container.toml"]).expect("utf8"))
        .expect("manifest")
}

/// Pins every entry again after a deliberate change, so the change is what the
/// reader meets rather than a digest mismatch.
fn repin(entries: &mut Entries, manifest: &mut ContainerManifest) {
    let pin = |f: &mut FileEntry| {
        if let Some(data) = entries.get(&f.path) {
            f.sha256 = sha256_hex(data);
            f.size = data.len() as u64;
        }
    };
    manifest.files.iter_mut().for_each(pin);
    for e in &mut manifest.engines {
        e.pipelines.iter_mut().for_each(pin);
    }
    entries.insert(
        "container.toml".into(),
        manifest.to_toml().expect("toml").into_bytes(),
    );
}

/// The valid archive with `container.toml` changed by `edit` (digests re-pinned).
fn with_manifest(edit: impl FnOnce(&mut ContainerManifest, &mut Entries)) -> Vec<u8> {
    let mut entries = entries_of(&valid());
    let mut manifest = manifest_of(&entries);
    edit(&mut manifest, &mut entries);
    repin(&mut entries, &mut manifest);
    rezip(&entries)
}

/// The valid archive with the text of `container.toml` changed.
fn with_manifest_text(edit: impl FnOnce(String) -> String) -> Vec<u8> {
    let mut entries = entries_of(&valid());
    let text = String::from_utf8(entries["container.toml"].clone()).expect("utf8");
    entries.insert("container.toml".into(), edit(text).into_bytes());
    rezip(&entries)
}

/// A zip written with no safety checks: what an attacker can produce.
fn raw_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, data) in entries {
        zip.start_file(*name, opts).expect("start");
        zip.write_all(data).expect("write");
    }
    zip.finish().expect("finish").into_inner()
}

fn valid_plus(name: &str, data: &[u8]) -> Vec<u8> {
    let entries = entries_of(&valid());
    let mut list: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    list.push((name, data));
    raw_zip(&list)
}

fn replace_first(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    bytes[at..at + to.len()].copy_from_slice(to);
}

fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(from.len()).position(|w| w == from) {
        bytes[i + at..i + at + to.len()].copy_from_slice(to);
        i += at + from.len();
    }
}

fn refused(bytes: &[u8]) -> ContainerArchiveError {
    ContainerArchive::from_bytes(bytes).expect_err("hostile container accepted")
}

#[test]
fn a_valid_container_round_trips_and_is_deterministic() {
    let p = parts();
    let (bytes, written) =
        write_container(p.manifest.clone(), &p.bizes, &p.pipelines).expect("writes");
    assert_eq!(bytes, valid(), "writing twice gives the same bytes");

    let read = ContainerArchive::from_bytes(&bytes).expect("reads");
    assert_eq!(read.manifest, written.manifest);
    assert_eq!(read.manifest_bytes, written.manifest_bytes);
    assert_eq!(read.sha256, sha256_hex(&bytes));
    assert_eq!(read.pipelines, p.pipelines);
    assert_eq!(
        read.bizes.len(),
        2,
        "shell is stored once though both engines have it"
    );
    assert_eq!(
        read.biz("tools", &v("1.0.0"))
            .expect("tools")
            .manifest
            .steps
            .len(),
        2
    );
    // The manifest pins every entry; the nested archives are stored, not deflated.
    assert_eq!(
        read.manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>(),
        ["bizes/shell-0.1.0.ark", "bizes/tools-1.0.0.ark"]
    );
    assert_eq!(
        read.manifest.engines[0].pipelines[0].path,
        "engines/team-a/pipelines/build.yaml"
    );
    let mut zip = ZipArchive::new(Cursor::new(&bytes)).expect("zip");
    for name in ["bizes/shell-0.1.0.ark", "bizes/tools-1.0.0.ark"] {
        assert_eq!(
            zip.by_name(name).expect("entry").compression(),
            CompressionMethod::Stored,
            "{name}"
        );
    }
    // Reading back the manifest text gives the same manifest.
    let text = String::from_utf8(read.manifest_bytes.clone()).expect("utf8");
    assert_eq!(
        ContainerManifest::from_toml(&text).expect("parses"),
        read.manifest
    );
    assert!(text.contains("format_version = 1"), "{text}");

    // What each engine has: its own bizes with their grants, then shared ones with
    // nothing granted.
    let a = read.engine_bizes("team-a");
    assert_eq!(a.len(), 1, "team-a lists the shared shell itself: {a:?}");
    assert_eq!(a[0].capabilities.process, ["sh"]);
    assert!(!a[0].shared);
    assert_eq!(a[0].signature, SignatureStatus::Unsigned);
    let b = read.engine_bizes("team-b");
    let names: Vec<_> = b.iter().map(|x| (x.name.as_str(), x.shared)).collect();
    assert_eq!(names, [("tools", false), ("shell", true)]);
    assert!(b[0].capabilities.cache);
    assert!(
        b[1].capabilities.is_empty(),
        "a shared biz is granted nothing"
    );
    assert_eq!(read.engine_pipelines("team-b").count(), 1);
}

#[test]
fn path_traversal_and_absolute_names() {
    for name in [
        "../../etc/cron.d/evil",
        "/etc/passwd",
        "bizes\\..\\x",
        "C:/x",
        "a/./b",
    ] {
        let err = refused(&valid_plus(name, b"x"));
        assert!(
            matches!(&err, ContainerArchiveError::Archive(ArchiveError::UnsafeName { name: n, .. }) if n == name),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "names the entry: {err}");
    }
}

#[test]
fn duplicate_names() {
    let path = pipeline_path("team-a", "build.yaml");
    let twin = path.replace("build", "buile");
    let mut bytes = valid_plus(&twin, BUILD.as_bytes());
    replace_all(&mut bytes, twin.as_bytes(), path.as_bytes());
    let err = refused(&bytes);
    assert!(
        matches!(&err, ContainerArchiveError::Archive(ArchiveError::DuplicateEntry(n)) if *n == path),
        "{err}"
    );
}

#[test]
fn local_header_name_differs_from_central_directory() {
    let mut bytes = valid();
    // Only the local header (first in the file) is renamed.
    replace_first(&mut bytes, b"container.toml", b"container.evil");
    let err = refused(&bytes);
    assert!(
        matches!(&err, ContainerArchiveError::Archive(ArchiveError::LocalHeaderMismatch { central, local })
            if central == "container.toml" && local == "container.evil"),
        "{err}"
    );
}

#[test]
fn a_zip_bomb_is_stopped_while_streaming() {
    let bytes = valid_plus("bomb.bin", &vec![0u8; 8 << 20]);
    assert!(
        bytes.len() < 200 << 10,
        "a real bomb: {} bytes",
        bytes.len()
    );
    let limits = ReadLimits {
        max_entry_bytes: 1 << 20,
        ..ContainerArchive::DEFAULT_LIMITS
    };
    let err = ContainerArchive::from_bytes_with_limits(&bytes, limits).expect_err("bomb");
    assert!(
        matches!(&err, ContainerArchiveError::Archive(ArchiveError::EntryTooLarge { name, .. }) if name == "bomb.bin"),
        "{err}"
    );
}

#[test]
fn nested_bizes_count_against_the_same_total() {
    let bytes = valid();
    let outer: u64 = entries_of(&bytes).values().map(|v| v.len() as u64).sum();
    // Room for the outer entries but not for what the nested bizes decompress to.
    let limits = ReadLimits {
        max_total_bytes: outer + 16,
        ..ContainerArchive::DEFAULT_LIMITS
    };
    let err = ContainerArchive::from_bytes_with_limits(&bytes, limits).expect_err("over");
    assert!(
        matches!(&err, ContainerArchiveError::Archive(ArchiveError::TooLarge { limit }) if *limit == outer + 16),
        "{err}"
    );
    let limits = ReadLimits {
        max_entries: 3,
        ..ContainerArchive::DEFAULT_LIMITS
    };
    let err = ContainerArchive::from_bytes_with_limits(&bytes, limits).expect_err("over");
    assert!(
        matches!(
            &err,
            ContainerArchiveError::Archive(ArchiveError::TooManyEntries { count: 5, limit: 3 })
        ),
        "{err}"
    );
}

#[test]
fn unsupported_compression_method() {
    let mut bytes = valid_plus("odd.bin", b"data");
    let name = b"odd.bin";
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(name.len()).position(|w| w == name) {
        let at = i + at;
        if at >= 30 && bytes[at - 30..at - 26] == [0x50, 0x4b, 0x03, 0x04] {
            bytes[at - 30 + 8] = 12; // bzip2, in the local header
        } else if at >= 46 && bytes[at - 46..at - 42] == [0x50, 0x4b, 0x01, 0x02] {
            bytes[at - 46 + 10] = 12; // and in the central directory
        }
        i = at + name.len();
    }
    let err = refused(&bytes);
    assert!(
        matches!(&err, ContainerArchiveError::Archive(ArchiveError::UnsupportedCompression { name, .. }) if name == "odd.bin"),
        "{err}"
    );
}

#[test]
fn digest_and_size_mismatches() {
    let path = pipeline_path("team-a", "build.yaml");
    let mut entries = entries_of(&valid());
    entries.insert(path.clone(), BUILD.replace("make", "evil").into_bytes());
    let err = refused(&rezip(&entries));
    assert!(
        matches!(&err, ContainerArchiveError::DigestMismatch { name, detail } if *name == path && detail.contains("sha256")),
        "{err}"
    );

    let mut entries = entries_of(&valid());
    entries
        .get_mut("bizes/tools-1.0.0.ark")
        .expect("tools")
        .push(0);
    let err = refused(&rezip(&entries));
    assert!(
        matches!(&err, ContainerArchiveError::DigestMismatch { name, detail } if name == "bizes/tools-1.0.0.ark" && detail.contains("size")),
        "{err}"
    );
}

#[test]
fn unlisted_and_missing_entries() {
    let err = refused(&valid_plus(
        "engines/team-a/pipelines/sneaky.yaml",
        BUILD.as_bytes(),
    ));
    assert!(
        matches!(&err, ContainerArchiveError::UnlistedEntry(n) if n == "engines/team-a/pipelines/sneaky.yaml"),
        "{err}"
    );
    let path = pipeline_path("team-b", "lint.yaml");
    let mut entries = entries_of(&valid());
    entries.remove(&path);
    let err = refused(&rezip(&entries));
    assert!(
        matches!(&err, ContainerArchiveError::MissingEntry(n) if *n == path),
        "{err}"
    );

    let mut entries = entries_of(&valid());
    entries.remove("container.toml");
    assert!(matches!(
        refused(&rezip(&entries)),
        ContainerArchiveError::MissingManifest
    ));
}

#[test]
fn format_version_is_checked_first() {
    let bytes = with_manifest_text(|t| {
        t.replace(
            "format_version = 1",
            "format_version = 2\nsomething_new = true",
        )
    });
    let err = refused(&bytes);
    assert!(
        matches!(
            err,
            ContainerArchiveError::UnknownFormatVersion {
                found: 2,
                supported: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade arkline"), "{err}");

    // A source description is not an archive manifest.
    let err = refused(&with_manifest_text(|t| t.replace("format_version = 1", "")));
    assert!(
        matches!(err, ContainerArchiveError::MissingFormatVersion),
        "{err}"
    );
    assert!(err.to_string().contains("cargo ark container"), "{err}");
}

#[test]
fn bad_and_duplicate_engine_names() {
    for bad in ["Team-A", "team_a", "9lives", "trailing-", ""] {
        let err = refused(&with_manifest(|m, _| m.engines[1].name = bad.into()));
        assert!(
            matches!(&err, ContainerArchiveError::BadEngineName(n) if n == bad),
            "{bad}: {err}"
        );
    }
    let err = refused(&with_manifest(|m, _| m.engines[1].name = "team-a".into()));
    assert!(
        matches!(&err, ContainerArchiveError::DuplicateEngine(n) if n == "team-a"),
        "{err}"
    );
}

#[test]
fn a_biz_the_archive_does_not_hold() {
    let err = refused(&with_manifest(|m, _| {
        m.engines[1].bizes.push(biz("deploy", "2.0.0", &[]));
    }));
    assert!(
        matches!(&err, ContainerArchiveError::MissingBiz { owner, biz, path }
            if owner == "engine `team-b`" && biz == "deploy@2.0.0" && path == "bizes/deploy-2.0.0.ark"),
        "{err}"
    );
    let err = refused(&with_manifest(|m, _| {
        m.shared_bizes[0].version = v("0.2.0")
    }));
    assert!(
        matches!(&err, ContainerArchiveError::MissingBiz { owner, .. } if owner == "[[shared_bizes]]"),
        "{err}"
    );
}

#[test]
fn a_biz_nobody_uses() {
    let err = refused(&with_manifest(|m, entries| {
        let extra = ark("extra", "1.0.0", &["run"]);
        let path = biz_path("extra", &v("1.0.0"));
        m.files.push(FileEntry {
            path: path.clone(),
            sha256: String::new(),
            size: 0,
        });
        entries.insert(path, extra);
    }));
    assert!(
        matches!(&err, ContainerArchiveError::UnusedBiz(p) if p == "bizes/extra-1.0.0.ark"),
        "{err}"
    );
}

#[test]
fn a_malformed_nested_ark_is_refused_with_its_entry_named() {
    let err = refused(&with_manifest(|_, entries| {
        let mut inner = entries_of(&entries["bizes/tools-1.0.0.ark"]);
        inner.get_mut("component.wasm").expect("component")[9] ^= 0x20;
        entries.insert(
            "bizes/tools-1.0.0.ark".into(),
            write_deterministic_zip(&inner, |_| false).expect("zip"),
        );
    }));
    assert!(
        matches!(&err, ContainerArchiveError::Biz { entry, source: ArchiveError::DigestMismatch { name, .. } }
            if entry == "bizes/tools-1.0.0.ark" && name == "component.wasm"),
        "{err}"
    );
    assert!(err.to_string().contains("bizes/tools-1.0.0.ark"), "{err}");

    // A nested archive that is not a zip at all.
    let err = refused(&with_manifest(|_, entries| {
        entries.insert("bizes/tools-1.0.0.ark".into(), b"MZ not a zip".to_vec());
    }));
    assert!(
        matches!(
            &err,
            ContainerArchiveError::Biz {
                source: ArchiveError::Zip(_),
                ..
            }
        ),
        "{err}"
    );

    // A nested traversal name is the nested reader's to refuse.
    let err = refused(&with_manifest(|_, entries| {
        let mut inner: Vec<(String, Vec<u8>)> = entries_of(&entries["bizes/tools-1.0.0.ark"])
            .into_iter()
            .collect();
        inner.push(("../../escape".into(), b"x".to_vec()));
        let list: Vec<(&str, &[u8])> = inner
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        entries.insert("bizes/tools-1.0.0.ark".into(), raw_zip(&list));
    }));
    assert!(
        matches!(
            &err,
            ContainerArchiveError::Biz {
                source: ArchiveError::UnsafeName { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_nested_ark_under_another_name() {
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(
            "bizes/tools-1.0.0.ark".into(),
            ark("tools", "1.0.1", &["fmt", "lint"]),
        );
    }));
    assert!(
        matches!(&err, ContainerArchiveError::BizIdentity { entry, found }
            if entry == "bizes/tools-1.0.0.ark" && found == "tools@1.0.1"),
        "{err}"
    );
}

#[test]
fn a_pipeline_that_does_not_parse() {
    let path = pipeline_path("team-a", "build.yaml");
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(path.clone(), BUILD.replace("uses:", "usse:").into_bytes());
    }));
    let ContainerArchiveError::Pipeline {
        engine,
        path: p,
        rendered,
        ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!((engine.as_str(), p.as_str()), ("team-a", path.as_str()));
    assert!(
        rendered.contains("build.yaml:6:"),
        "rendered with positions: {rendered}"
    );
    assert!(rendered.contains("usse"), "{rendered}");
}

/// The `.arkc` that drove a server to 5.8 GiB: a small upload holding a 22 MiB
/// pipeline of 400,000 one-line steps. The reader refuses it with the parser's
/// size cap, before any YAML is parsed.
#[test]
fn a_pipeline_bomb_inside_an_archive_is_refused_by_the_parser_caps() {
    let path = pipeline_path("team-a", "build.yaml");
    let steps: String = (0..400_000)
        .map(|i| format!("      - {{name: step-number-{i:07}, uses: shell/run@^0.1}}\n"))
        .collect();
    let bomb = format!("name: build\nstages:\n  - name: compile\n    steps:\n{steps}");
    assert!(bomb.len() > 20 << 20);
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(path.clone(), bomb.clone().into_bytes());
    }));
    let ContainerArchiveError::Pipeline { diagnostics, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(diagnostics.0.len(), 1, "{err}");
    assert_eq!(diagnostics.0[0].code, "limit-exceeded");
    assert!(diagnostics.0[0].message.contains("max_bytes"), "{err}");

    // Under the byte cap, the step count is what refuses it.
    let steps: String = (0..1_500)
        .map(|i| format!("      - {{name: s{i}, uses: shell/run@^0.1}}\n"))
        .collect();
    let many = format!("name: build\nstages:\n  - name: compile\n    steps:\n{steps}");
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(path.clone(), many.clone().into_bytes());
    }));
    let ContainerArchiveError::Pipeline { diagnostics, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(diagnostics.0.len(), 1, "{err}");
    assert!(diagnostics.0[0].message.contains("1500 steps"), "{err}");
}

#[test]
fn a_pipeline_using_a_biz_its_engine_does_not_have() {
    // team-a has only shell: tools belongs to team-b.
    let path = pipeline_path("team-a", "build.yaml");
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(
            path.clone(),
            BUILD.replace("shell/run@^0.1", "tools/lint").into_bytes(),
        );
    }));
    let ContainerArchiveError::UnsatisfiedUses {
        engine, rendered, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(engine, "team-a");
    assert!(
        rendered.contains("engine `team-a` has no biz `tools` (it has: shell@0.1.0)"),
        "{rendered}"
    );
    assert!(rendered.contains("build.yaml:6:"), "{rendered}");

    // A version no active biz matches, and a step type the biz lacks.
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(
            path.clone(),
            BUILD.replace("shell/run@^0.1", "shell/run@^2").into_bytes(),
        );
    }));
    assert!(
        err.to_string().contains("no active version of `shell`"),
        "{err}"
    );
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(
            path.clone(),
            BUILD.replace("shell/run@^0.1", "shell/deploy").into_bytes(),
        );
    }));
    assert!(
        err.to_string().contains("has no step type `deploy`"),
        "{err}"
    );
    // tools has two step types: `uses: tools` alone is ambiguous.
    let lint = pipeline_path("team-b", "lint.yaml");
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(
            lint.clone(),
            LINT.replace("tools/fmt", "tools").into_bytes(),
        );
    }));
    assert!(
        err.to_string().contains("name one as `tools/<step>`"),
        "{err}"
    );
}

#[test]
fn a_step_config_its_schema_refuses() {
    let path = pipeline_path("team-a", "build.yaml");
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(
            path.clone(),
            BUILD.replace("script: make", "scirpt: make").into_bytes(),
        );
    }));
    let ContainerArchiveError::PipelineConfig { rendered, .. } = &err else {
        panic!("{err}");
    };
    assert!(rendered.contains("unknown setting `scirpt`"), "{rendered}");
    assert!(rendered.contains("did you mean `script`?"), "{rendered}");
}

#[test]
fn pipelines_that_name_another_engine_or_repeat_a_name() {
    let path = pipeline_path("team-a", "build.yaml");
    let err = refused(&with_manifest(|_, entries| {
        entries.insert(
            path.clone(),
            BUILD
                .replace("name: build\n", "name: build\nengine: team-b\n")
                .into_bytes(),
        );
    }));
    assert!(
        matches!(&err, ContainerArchiveError::PipelineEngine { engine, declared, .. } if engine == "team-a" && declared == "team-b"),
        "{err}"
    );

    let p = {
        let mut p = parts();
        p.pipelines.insert(
            ("team-a".into(), pipeline_path("team-a", "build-again.yml")),
            BUILD.to_owned(),
        );
        p
    };
    let err = write(&p).expect_err("two pipelines named build");
    assert!(
        matches!(&err, ContainerArchiveError::DuplicatePipeline { engine, name, .. } if engine == "team-a" && name == "build"),
        "{err}"
    );
}

#[test]
fn pipeline_paths_belong_to_their_engine() {
    let err = refused(&with_manifest(|m, entries| {
        let data = entries
            .remove("engines/team-b/pipelines/lint.yaml")
            .expect("lint");
        entries.insert("engines/team-a/pipelines/lint.yaml".into(), data);
        m.engines[1].pipelines[0].path = "engines/team-a/pipelines/lint.yaml".into();
    }));
    assert!(
        matches!(&err, ContainerArchiveError::Invalid { field, .. } if field == "engines[1].pipelines[0].path"),
        "{err}"
    );
}

#[test]
fn a_grant_that_does_not_parse() {
    let err = refused(&with_manifest(|m, _| {
        m.engines[0].bizes[0].grants = vec!["process=sh".into(), "network=*".into()];
    }));
    assert!(
        matches!(&err, ContainerArchiveError::Grant { engine, biz, grant, .. }
            if engine == "team-a" && biz == "shell@0.1.0" && grant == "network=*"),
        "{err}"
    );
    assert!(
        err.to_string().contains("unknown capability `network`"),
        "{err}"
    );
}

#[test]
fn several_active_versions_of_one_biz() {
    let mut p = parts();
    p.bizes.insert(
        ("shell".into(), v("0.2.0")),
        ark("shell", "0.2.0", &["run"]),
    );
    p.manifest.engines[0].bizes.push(biz("shell", "0.2.0", &[]));
    let err = write(&p).expect_err("two active shells");
    assert!(
        matches!(&err, ContainerArchiveError::SeveralActive { engine, name, versions }
            if engine == "team-a" && name == "shell" && versions == "0.1.0, 0.2.0"),
        "{err}"
    );
    // Staged: the new version installed but not active is fine.
    p.manifest.engines[0].bizes[1].active = false;
    let (_, read) = write_container(p.manifest.clone(), &p.bizes, &p.pipelines).expect("staged");
    let a = read.engine_bizes("team-a");
    assert_eq!(a.iter().filter(|b| b.active).count(), 1);
    // But a pipeline cannot use only the inactive version.
    p.pipelines.insert(
        ("team-a".into(), pipeline_path("team-a", "build.yaml")),
        BUILD.replace("@^0.1", "@^0.2"),
    );
    let err = write(&p).expect_err("inactive");
    assert!(err.to_string().contains("0.2.0 (inactive)"), "{err}");
}

#[test]
fn signature_policies_apply_per_engine() {
    let key = SecretKey::generate().expect("key");
    let other = SecretKey::generate().expect("key");
    let signed_tools = Ark::from_bytes(&ark("tools", "1.0.0", &["fmt", "lint"]))
        .expect("tools")
        .signed(&key)
        .expect("signs");

    // team-b requires signatures; its tools biz is unsigned.
    let mut p = parts();
    p.manifest.engines[1].require_signed = true;
    let err = write(&p).expect_err("unsigned");
    assert!(
        matches!(&err, ContainerArchiveError::Signature { engine, biz, source: ArchiveError::Unsigned }
            if engine == "team-b" && biz == "tools@1.0.0"),
        "{err}"
    );
    assert!(err.to_string().contains("tools@1.0.0"), "{err}");

    // Signed tools, but the shared shell is unsigned and team-b has it too.
    p.bizes
        .insert(("tools".into(), v("1.0.0")), signed_tools.clone());
    let err = write(&p).expect_err("shared unsigned");
    assert!(
        matches!(&err, ContainerArchiveError::Signature { biz, .. } if biz == "shell@0.1.0"),
        "{err}"
    );
    p.manifest.shared_bizes.clear();
    p.pipelines.retain(|(e, _), _| e != "team-b");
    let (_, read) = write_container(p.manifest.clone(), &p.bizes, &p.pipelines).expect("signed");
    assert_eq!(
        read.engine_bizes("team-b")[0].signature,
        SignatureStatus::Unverified(key.public_key())
    );

    // The same through settings.require_signed_bizes, with trusted keys.
    p.manifest.engines[1].require_signed = false;
    p.manifest.engines[1].settings.require_signed_bizes = true;
    p.manifest.engines[1].trusted_keys = vec![key.public_key().to_string()];
    let (_, read) = write_container(p.manifest.clone(), &p.bizes, &p.pipelines).expect("trusted");
    assert_eq!(
        read.engine_bizes("team-b")[0].signature,
        SignatureStatus::Trusted(key.public_key())
    );
    p.manifest.engines[1].trusted_keys = vec![other.public_key().to_string()];
    let err = write(&p).expect_err("untrusted");
    assert!(
        matches!(&err, ContainerArchiveError::Signature { source: ArchiveError::UntrustedKey(id), .. } if *id == key.public_key().id()),
        "{err}"
    );
    // Trusted keys without require_signed: an unsigned biz passes, a wrong key does not.
    p.manifest.engines[1].settings.require_signed_bizes = false;
    assert!(
        write(&p).is_err(),
        "a signature by an untrusted key is refused"
    );
    p.manifest.engines[1].trusted_keys = vec!["00ff".into()];
    let err = write(&p).expect_err("bad key");
    assert!(
        matches!(&err, ContainerArchiveError::BadKey { engine, key, .. } if engine == "team-b" && key == "00ff"),
        "{err}"
    );
}

#[test]
fn every_refusal_has_its_own_message() {
    let path = pipeline_path("team-a", "build.yaml");
    let corpus: Vec<Vec<u8>> = vec![
        valid_plus("../x", b"x"),
        valid_plus("extra", b"x"),
        b"not a zip".to_vec(),
        with_manifest_text(|t| t.replace("format_version = 1", "format_version = 9")),
        with_manifest_text(|t| t.replace("format_version = 1", "")),
        with_manifest(|m, _| m.engines[1].name = "Bad".into()),
        with_manifest(|m, _| m.engines[1].name = "team-a".into()),
        with_manifest(|m, _| m.engines[1].bizes.push(biz("deploy", "2.0.0", &[]))),
        with_manifest(|m, _| m.engines[0].bizes[0].grants = vec!["nope".into()]),
        with_manifest(|_, e| {
            e.insert("bizes/tools-1.0.0.ark".into(), b"junk".to_vec());
        }),
        with_manifest(|_, e| {
            e.insert(
                "bizes/tools-1.0.0.ark".into(),
                ark("tools", "9.0.0", &["fmt"]),
            );
        }),
        with_manifest(|_, e| {
            e.insert(path.clone(), b"name: [".to_vec());
        }),
        with_manifest(|_, e| {
            e.insert(
                path.clone(),
                BUILD.replace("shell/run@^0.1", "nope").into_bytes(),
            );
        }),
        with_manifest(|m, _| m.engines[0].require_signed = true),
    ];
    let mut messages = std::collections::BTreeSet::new();
    for bytes in &corpus {
        messages.insert(refused(bytes).to_string());
    }
    assert_eq!(messages.len(), corpus.len(), "{messages:#?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_mutations_never_panic_the_reader(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = valid();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = ContainerArchive::from_bytes(&bytes);
    }

    #[test]
    fn manifests_round_trip_through_toml(
        name in "[a-z][a-z0-9_-]{0,20}",
        engine_name in "[a-z][a-z0-9-]{0,20}[a-z0-9]",
        quota in -5i64..50,
        grants in proptest::collection::vec(
            prop_oneof![Just("cache".to_owned()), "process=[a-z]{1,6}", "http=[a-z]{1,6}\\.example"],
            0..4,
        ),
        active in any::<bool>(),
    ) {
        let mut m = parts().manifest;
        m.name = name;
        m.engines[0].name = engine_name;
        m.engines[0].settings.executor_quota = quota;
        m.engines[0].bizes[0].grants = grants;
        m.engines[0].bizes[0].active = active;
        let text = m.to_toml().expect("serialises");
        prop_assert_eq!(toml::from_str::<ContainerManifest>(&text).expect("parses"), m);
    }
}

/// A pipeline of `steps` one-line steps: megabytes of YAML that deflate to little.
fn bomb_pipeline(steps: usize) -> String {
    let mut text = String::from("name: bomb\nstages:\n  - name: s\n    steps:\n");
    for i in 0..steps {
        text.push_str(&format!(
            "      - {{name: s{i:07}, uses: shell/run, with: {{script: x}}}}\n"
        ));
    }
    text
}

/// Sets the uncompressed size `entry` declares, in its local header and in the
/// central directory, to `size`: what a lying archive writer does.
fn declare_size(bytes: &mut [u8], entry: &str, size: u32) {
    let name = entry.as_bytes();
    let mut patched = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(name.len()).position(|w| w == name) {
        let at = i + at;
        if at >= 30 && bytes[at - 30..at - 26] == [0x50, 0x4b, 0x03, 0x04] {
            bytes[at - 8..at - 4].copy_from_slice(&size.to_le_bytes());
            patched += 1;
        } else if at >= 46 && bytes[at - 46..at - 42] == [0x50, 0x4b, 0x01, 0x02] {
            bytes[at - 22..at - 18].copy_from_slice(&size.to_le_bytes());
            patched += 1;
        }
        i = at + name.len();
    }
    assert_eq!(patched, 2, "local header and central record of `{entry}`");
}

/// Overwrites part of `entry`'s compressed stream with garbage, so any attempt to
/// decompress it fails: a refusal that names the cap shows nothing was read.
fn garble_stream(bytes: &mut [u8], entry: &str) {
    let name = entry.as_bytes();
    let at = (30..bytes.len())
        .find(|&at| {
            bytes[at..].starts_with(name) && bytes[at - 30..at - 26] == [0x50, 0x4b, 0x03, 0x04]
        })
        .expect("local header of the entry");
    let extra = usize::from(u16::from_le_bytes([bytes[at - 2], bytes[at - 1]]));
    let data = at + name.len() + extra;
    bytes[data..data + 256].fill(0xff);
}

#[test]
fn a_pipeline_declared_over_the_yaml_cap_is_refused_before_it_is_read() {
    let path = pipeline_path("team-a", "build.yaml");
    let bomb = bomb_pipeline(400_000);
    assert!(bomb.len() > 20 << 20, "{} bytes", bomb.len());
    let expected = [
        format!("pipeline `{path}` of engine `team-a` is not valid"),
        format!("the pipeline file is {} bytes", bomb.len()),
        "more than the limit of 1048576 bytes (`max_bytes`)".to_owned(),
    ];
    // Declared by container.toml and the zip alike; declared by the zip while
    // container.toml says less (its digest and size would not match anyway).
    let honest = with_manifest(|_, e| {
        e.insert(path.clone(), bomb.clone().into_bytes());
    });
    assert!(
        honest.len() < 4 << 20,
        "the bomb compresses: {} bytes",
        honest.len()
    );
    let understated = {
        let mut entries = entries_of(&valid());
        let mut manifest = manifest_of(&entries);
        entries.insert(path.clone(), bomb.clone().into_bytes());
        repin(&mut entries, &mut manifest);
        for p in &mut manifest.engines[0].pipelines {
            if p.path == path {
                p.size = BUILD.len() as u64;
            }
        }
        entries.insert(
            "container.toml".into(),
            manifest.to_toml().expect("toml").into_bytes(),
        );
        rezip(&entries)
    };
    for mut bytes in [honest, understated] {
        let intact = refused(&bytes).to_string();
        garble_stream(&mut bytes, &path);
        let garbled = refused(&bytes).to_string();
        assert_eq!(intact, garbled, "the stream was read");
        for part in &expected {
            assert!(intact.contains(part), "`{part}` missing from: {intact}");
        }
    }
}

#[test]
fn a_pipeline_that_understates_its_size_everywhere_is_cut_off_while_streaming() {
    let path = pipeline_path("team-a", "build.yaml");
    let bomb = bomb_pipeline(60_000);
    assert!(bomb.len() > 2 << 20, "{} bytes", bomb.len());
    let mut entries = entries_of(&valid());
    let mut manifest = manifest_of(&entries);
    entries.insert(path.clone(), bomb.into_bytes());
    repin(&mut entries, &mut manifest);
    // container.toml and the zip both declare the size of the real pipeline.
    let small = BUILD.len() as u64;
    for p in &mut manifest.engines[0].pipelines {
        if p.path == path {
            p.size = small;
        }
    }
    entries.insert(
        "container.toml".into(),
        manifest.to_toml().expect("toml").into_bytes(),
    );
    let mut bytes = rezip(&entries);
    declare_size(&mut bytes, &path, small as u32);
    // The zip layer stops a stream that outgrows its declared size; the reader's
    // own cap at the YAML limit is there should a zip layer not. Either way the
    // read stops early and the user is told which entry.
    let message = refused(&bytes).to_string();
    assert!(message.contains(&format!("`{path}`")), "{message}");
    assert!(
        message.contains("larger than its declared uncompressed size")
            || message.contains("more than the limit of 1048576 bytes (`max_bytes`)"),
        "{message}"
    );
}
