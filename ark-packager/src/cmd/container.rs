//! `cargo ark container`: builds an `.arkc` from a container source description.
//!
//! The source description is a `container.toml` *without* `format_version` (the
//! archive manifest inside an `.arkc` has one, which is how the two are told
//! apart). Paths are relative to the file:
//!
//! ```toml
//! name = "ci"
//! version = "1.0.0"
//!
//! [[shared_bizes]]                 # every engine has these, with nothing granted
//! ark = "dist/notify-1.2.0.ark"    # or path = "<plugin crate>"
//!
//! [[engines]]
//! name = "team-a"
//! pipelines = ["pipelines/team-a/*.yaml"]   # paths, or `*`/`?` in the file name
//! trusted_keys = ["keys/team-a.pub"]        # key files, or 64 hex digits
//! require_signed = false
//! bizes = [
//!   { path = "../plugins/shell", grants = ["process=sh"] },  # built with `cargo ark package`
//!   { ark = "dist/deploy-2.0.0.ark", grants = ["http=*.example.com"], active = true },
//!   { shared = "notify", grants = ["http=chat.example.com"] }, # a shared biz, granted more here
//! ]
//! [engines.settings]                        # a PipelineSettingSpec
//! executor_quota = 4
//! ```
//!
//! Every biz is built or read once and stored once, however many engines use it.
//! The result is checked with every check of the `.arkc` reader (pipelines parse,
//! their `uses` resolve to the engine's active bizes and their `with` match the
//! step schemas, signature policies) before it is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use arkline::ark::{Ark, PublicKey};
use arkline::container::archive::pipeline_path;
use arkline::container::archive::{
    BizRef, CONTAINER_FORMAT_VERSION, ContainerArchive, ContainerManifest, EngineSpec, SharedBiz,
};
use arkline::host::parse_grant;
use arkline::model::PipelineSettingSpec;
use clap::Args;
use semver::Version;
use serde::Deserialize;

use crate::cmd::{PackageSelection, print_json};
use crate::project::CargoOptions;
use crate::shell::Shell;

/// Build every biz of a container source description and write
/// `target/ark/<name>-<version>.arkc` next to it (`<DIRECTORY>/ark/` with
/// `--target-dir`).
#[derive(Debug, Clone, Args)]
pub struct ContainerCmd {
    /// The source description.
    #[arg(long, value_name = "PATH", default_value = "container.toml")]
    pub manifest_path: PathBuf,
    /// Write the archive here instead of `target/ark/` next to the description.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print one JSON object on stdout: `name`, `version`, `archive`, `size`
    /// (bytes), `sha256`, `engines` (bizes, pipelines). Status lines stay on stderr.
    #[arg(long)]
    pub json: bool,
    /// Flags passed to cargo (for the bizes built from `path`); `--target-dir`
    /// also moves the default output to `<DIRECTORY>/ark/`.
    #[command(flatten)]
    pub cargo: CargoOptions,
}

/// A container source description (`container.toml` without `format_version`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSource {
    /// Container name.
    pub name: String,
    /// Container version.
    pub version: Version,
    /// The engines.
    #[serde(default)]
    pub engines: Vec<SourceEngine>,
    /// Bizes every engine has, with nothing granted.
    #[serde(default)]
    pub shared_bizes: Vec<SourceSharedBiz>,
}

/// One engine of a source description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEngine {
    /// Engine name.
    pub name: String,
    /// Quota, default limits, cache and retention.
    #[serde(default)]
    pub settings: PipelineSettingSpec,
    /// Pipeline files: paths, or patterns with `*` and `?` in the file name.
    #[serde(default)]
    pub pipelines: Vec<String>,
    /// The engine's bizes.
    #[serde(default)]
    pub bizes: Vec<SourceBiz>,
    /// Trusted public keys: key files (`cargo ark keygen`'s `.pub`) or hex.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Refuse unsigned bizes.
    #[serde(default)]
    pub require_signed: bool,
}

/// Where an engine's biz comes from: exactly one of `path`, `ark`, `shared`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceBiz {
    /// A plugin crate (directory or `Cargo.toml`), built with `cargo ark package`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A packaged `.ark`.
    #[serde(default)]
    pub ark: Option<PathBuf>,
    /// A shared biz, `name` or `name@version`.
    #[serde(default)]
    pub shared: Option<String>,
    /// Grants (`process=sh`, `http=host`, `cache`, `host-call=name`).
    #[serde(default)]
    pub grants: Vec<String>,
    /// Whether new executions resolve to this version.
    #[serde(default = "yes")]
    pub active: bool,
}

/// Where a shared biz comes from: exactly one of `path`, `ark`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSharedBiz {
    /// A plugin crate (directory or `Cargo.toml`), built with `cargo ark package`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A packaged `.ark`.
    #[serde(default)]
    pub ark: Option<PathBuf>,
    /// Whether new executions resolve to this version.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

impl ContainerSource {
    /// Parses a source description, refusing an archive manifest with that reason.
    pub fn from_toml(text: &str) -> anyhow::Result<ContainerSource> {
        let table: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        if table.contains_key("format_version") {
            bail!(
                "it has `format_version`, so it is the manifest of a built .arkc, not a source description; remove `format_version` and describe bizes by `path`, `ark` or `shared`"
            );
        }
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// What [`write_container`](arkline::container::archive::write_container) takes: the manifest,
/// the biz archives by identity, the pipelines by engine and entry path.
type Contents = (
    ContainerManifest,
    BTreeMap<(String, Version), Vec<u8>>,
    BTreeMap<(String, String), String>,
);

/// Where a biz comes from.
#[derive(Clone, Copy)]
enum Origin<'a> {
    Crate(&'a Path),
    Ark(&'a Path),
}

/// Builds or reads each biz once, and keeps each identity once.
struct Bizes<'s> {
    dir: PathBuf,
    shell: &'s Shell,
    cargo: &'s CargoOptions,
    /// Canonical source path → identity.
    loaded: BTreeMap<PathBuf, (String, Version)>,
    /// Identity → archive bytes and where they came from.
    bytes: BTreeMap<(String, Version), (Vec<u8>, String)>,
}

impl Bizes<'_> {
    fn load(&mut self, origin: Origin<'_>, owner: &str) -> anyhow::Result<(String, Version)> {
        let (written, joined) = match origin {
            Origin::Crate(p) | Origin::Ark(p) => (p.display().to_string(), self.dir.join(p)),
        };
        let canonical = joined.canonicalize().with_context(|| {
            format!(
                "{owner}: biz {} `{written}` does not exist (looked for {})",
                if matches!(origin, Origin::Crate(_)) {
                    "path"
                } else {
                    "ark"
                },
                joined.display()
            )
        })?;
        if let Some(id) = self.loaded.get(&canonical) {
            return Ok(id.clone());
        }
        let archive = match origin {
            Origin::Crate(_) => {
                let manifest_path = if canonical.is_dir() {
                    canonical.join("Cargo.toml")
                } else {
                    canonical.clone()
                };
                let selection = PackageSelection {
                    manifest_path: Some(manifest_path),
                    package: None,
                };
                crate::package_crate(&selection, self.cargo, self.shell)
                    .with_context(|| format!("{owner}: cannot package the plugin at `{written}`"))?
                    .archive
            }
            Origin::Ark(_) => canonical.clone(),
        };
        let bytes = std::fs::read(&archive)
            .with_context(|| format!("{owner}: cannot read {}", archive.display()))?;
        let ark = Ark::from_bytes(&bytes)
            .with_context(|| format!("{owner}: `{written}` is not a valid .ark"))?;
        let id = (ark.manifest.name.clone(), ark.manifest.version.clone());
        match self.bytes.get(&id) {
            Some((same, _)) if *same == bytes => {}
            Some((_, first)) => bail!(
                "{owner}: `{written}` and `{first}` are both {}@{} but differ; a container holds one archive per biz version",
                id.0,
                id.1
            ),
            None => {
                self.shell.status(
                    "Adding",
                    format!(
                        "{} v{} ({written})",
                        ark.manifest.name, ark.manifest.version
                    ),
                );
                self.bytes.insert(id.clone(), (bytes, written));
            }
        }
        self.loaded.insert(canonical, id.clone());
        Ok(id)
    }
}

fn one_source<'a>(
    owner: &str,
    path: &'a Option<PathBuf>,
    ark: &'a Option<PathBuf>,
    shared: Option<&str>,
) -> anyhow::Result<()> {
    let given = [path.is_some(), ark.is_some(), shared.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if given != 1 {
        bail!(
            "{owner}: a biz takes exactly one of `path = \"<plugin crate>\"`, `ark = \"<file.ark>\"`{}",
            if shared.is_some() || owner.starts_with("engine") {
                " or `shared = \"name@version\"`"
            } else {
                ""
            }
        );
    }
    Ok(())
}

impl ContainerCmd {
    /// Builds the container; returns the archive's path.
    pub fn exec(&self, shell: &Shell) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(&self.manifest_path)
            .with_context(|| format!("cannot read {}", self.manifest_path.display()))?;
        let source = ContainerSource::from_toml(&text).with_context(|| {
            format!(
                "{} is not a valid container source description",
                self.manifest_path.display()
            )
        })?;
        let dir = match self.manifest_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        shell.status(
            "Packaging",
            format!(
                "container {} v{} ({})",
                source.name,
                source.version,
                self.manifest_path.display()
            ),
        );
        let (manifest, bizes, pipelines) = self.describe(&source, &dir, shell)?;
        let (bytes, archive) =
            arkline::container::archive::write_container(manifest, &bizes, &pipelines)
                .with_context(|| {
                    format!("container {} v{} is not valid", source.name, source.version)
                })?;
        for engine in &archive.manifest.engines {
            let bizes: Vec<String> = archive
                .engine_bizes(&engine.name)
                .iter()
                .map(|b| {
                    let grants = if b.grants.is_empty() {
                        "nothing granted".to_owned()
                    } else {
                        b.grants.join(" ")
                    };
                    format!(
                        "{} v{}{} [{grants}]",
                        b.name,
                        b.version,
                        if b.active { "" } else { " (inactive)" }
                    )
                })
                .collect();
            shell.status(
                "Checked",
                format!(
                    "engine {}: {} pipeline{}, bizes {}",
                    engine.name,
                    engine.pipelines.len(),
                    if engine.pipelines.len() == 1 { "" } else { "s" },
                    bizes.join(", ")
                ),
            );
        }
        let file_name = format!("{}-{}.arkc", source.name, source.version);
        let out = match (&self.out, self.cargo.absolute_target_dir()?) {
            (Some(out), _) => out.clone(),
            (None, Some(target_dir)) => target_dir.join("ark").join(file_name),
            (None, None) => dir.join("target").join("ark").join(file_name),
        };
        write_atomically(&out, &bytes)?;
        let sha256 = arkline::ark::sha256_hex(&bytes);
        shell.status(
            "Packaged",
            format!(
                "{} v{} ({}, {} KiB, sha256 {})",
                source.name,
                source.version,
                out.display(),
                bytes.len().div_ceil(1024),
                &sha256[..16]
            ),
        );
        if self.json {
            print_json(&container_json(&archive, &out, &bytes, &sha256))?;
        }
        Ok(out)
    }

    /// The archive manifest, the biz archives and the pipelines the source names.
    fn describe(
        &self,
        source: &ContainerSource,
        dir: &Path,
        shell: &Shell,
    ) -> anyhow::Result<Contents> {
        // Grants first: a typo should not wait for a plugin build.
        for engine in &source.engines {
            for (i, biz) in engine.bizes.iter().enumerate() {
                for grant in &biz.grants {
                    parse_grant(grant).with_context(|| {
                        format!(
                            "engine `{}`, bizes[{i}]: grant `{grant}` is not valid",
                            engine.name
                        )
                    })?;
                }
            }
        }
        let mut bizes = Bizes {
            dir: dir.to_path_buf(),
            shell,
            cargo: &self.cargo,
            loaded: BTreeMap::new(),
            bytes: BTreeMap::new(),
        };
        let mut shared = Vec::new();
        for (i, s) in source.shared_bizes.iter().enumerate() {
            let owner = format!("shared_bizes[{i}]");
            one_source(&owner, &s.path, &s.ark, None)?;
            let origin = match (&s.path, &s.ark) {
                (Some(p), _) => Origin::Crate(p),
                (_, Some(a)) => Origin::Ark(a),
                _ => unreachable!("one_source checked"),
            };
            let (name, version) = bizes.load(origin, &owner)?;
            shared.push(SharedBiz {
                name,
                version,
                active: s.active,
            });
        }

        let mut engines = Vec::new();
        let mut pipelines = BTreeMap::new();
        for engine in &source.engines {
            let mut refs = Vec::new();
            for (i, b) in engine.bizes.iter().enumerate() {
                let owner = format!("engine `{}`, bizes[{i}]", engine.name);
                one_source(&owner, &b.path, &b.ark, b.shared.as_deref())?;
                let (name, version) = match (&b.path, &b.ark, &b.shared) {
                    (Some(p), _, _) => bizes.load(Origin::Crate(p), &owner)?,
                    (_, Some(a), _) => bizes.load(Origin::Ark(a), &owner)?,
                    (_, _, Some(reference)) => find_shared(&shared, reference, &owner)?,
                    _ => unreachable!("one_source checked"),
                };
                refs.push(BizRef {
                    name,
                    version,
                    grants: b.grants.clone(),
                    active: b.active,
                });
            }
            let mut keys = Vec::new();
            for key in &engine.trusted_keys {
                keys.push(
                    read_key(dir, key).with_context(|| {
                        format!("engine `{}`: trusted key `{key}`", engine.name)
                    })?,
                );
            }
            for file in expand_pipelines(dir, &engine.name, &engine.pipelines)? {
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("{} has no usable file name", file.display()))?;
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read pipeline {}", file.display()))?;
                let path = pipeline_path(&engine.name, name);
                if pipelines
                    .insert((engine.name.clone(), path.clone()), text)
                    .is_some()
                {
                    bail!(
                        "engine `{}` has two pipeline files named `{name}`; pipelines are stored by file name",
                        engine.name
                    );
                }
            }
            engines.push(EngineSpec {
                name: engine.name.clone(),
                trusted_keys: keys,
                require_signed: engine.require_signed,
                bizes: refs,
                pipelines: Vec::new(),
                settings: engine.settings.clone(),
            });
        }
        let manifest = ContainerManifest {
            format_version: CONTAINER_FORMAT_VERSION,
            name: source.name.clone(),
            version: source.version.clone(),
            engines,
            shared_bizes: shared,
            files: Vec::new(),
        };
        let bytes = bizes
            .bytes
            .into_iter()
            .map(|(id, (bytes, _))| (id, bytes))
            .collect();
        Ok((manifest, bytes, pipelines))
    }
}

/// What `cargo ark container --json` prints.
fn container_json(
    archive: &ContainerArchive,
    path: &Path,
    bytes: &[u8],
    sha256: &str,
) -> serde_json::Value {
    let m = &archive.manifest;
    let engines: Vec<serde_json::Value> = m
        .engines
        .iter()
        .map(|engine| {
            let bizes: Vec<serde_json::Value> = archive
                .engine_bizes(&engine.name)
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "name": b.name,
                        "version": b.version.to_string(),
                        "active": b.active,
                        "shared": b.shared,
                        "grants": b.grants,
                    })
                })
                .collect();
            serde_json::json!({
                "name": engine.name,
                "bizes": bizes,
                "pipelines": engine.pipelines.iter().map(|p| &p.path).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "name": m.name,
        "version": m.version.to_string(),
        "archive": path,
        "size": bytes.len(),
        "sha256": sha256,
        "engines": engines,
    })
}

/// The shared biz `name` or `name@version` names.
fn find_shared(
    shared: &[SharedBiz],
    reference: &str,
    owner: &str,
) -> anyhow::Result<(String, Version)> {
    let (name, version) = match reference.split_once('@') {
        Some((n, v)) => (
            n,
            Some(Version::parse(v).with_context(|| {
                format!("{owner}: `shared = \"{reference}\"`: `{v}` is not a version")
            })?),
        ),
        None => (reference, None),
    };
    let found: Vec<&SharedBiz> = shared
        .iter()
        .filter(|s| s.name == name && version.as_ref().is_none_or(|v| *v == s.version))
        .collect();
    match found.as_slice() {
        [one] => Ok((one.name.clone(), one.version.clone())),
        [] => bail!(
            "{owner}: `shared = \"{reference}\"` names no biz of [[shared_bizes]] (they are: {})",
            if shared.is_empty() {
                "none".to_owned()
            } else {
                shared
                    .iter()
                    .map(|s| format!("{}@{}", s.name, s.version))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        _ => bail!(
            "{owner}: `shared = \"{reference}\"` matches several versions; write `name@version`"
        ),
    }
}

/// A trusted key: 64 hex digits, or a key file relative to the description.
fn read_key(dir: &Path, key: &str) -> anyhow::Result<String> {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        let parsed: PublicKey = key.parse()?;
        return Ok(parsed.to_string());
    }
    let path = dir.join(key);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let parsed: PublicKey = text
        .parse()
        .with_context(|| format!("{} is not a public key", path.display()))?;
    Ok(parsed.to_string())
}

/// The files the patterns name, each once, in sorted order per pattern.
fn expand_pipelines(dir: &Path, engine: &str, patterns: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for pattern in patterns {
        let (parent, file) = match pattern.rsplit_once('/') {
            Some((parent, file)) => (parent, file),
            None => ("", pattern.as_str()),
        };
        let wild = |s: &str| s.contains(['*', '?']);
        if wild(parent) {
            bail!(
                "engine `{engine}`: pipelines pattern `{pattern}`: only the file name may hold `*` or `?`"
            );
        }
        let mut found = Vec::new();
        if wild(file) {
            let base = dir.join(parent);
            let entries = std::fs::read_dir(&base).with_context(|| {
                format!(
                    "engine `{engine}`: pipelines pattern `{pattern}`: cannot read {}",
                    base.display()
                )
            })?;
            for entry in entries {
                let entry = entry.with_context(|| format!("cannot read {}", base.display()))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if entry.path().is_file() && wildcard_match(file.as_bytes(), name.as_bytes()) {
                    found.push(entry.path());
                }
            }
            found.sort();
        } else {
            let path = dir.join(pattern);
            if !path.is_file() {
                bail!(
                    "engine `{engine}`: pipeline `{pattern}` does not exist (looked for {})",
                    path.display()
                );
            }
            found.push(path);
        }
        if found.is_empty() {
            bail!("engine `{engine}`: pipelines pattern `{pattern}` matches no file");
        }
        for path in found {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
                bail!(
                    "engine `{engine}`: pipeline `{}` is not a .yaml or .yml file",
                    path.display()
                );
            }
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    Ok(out)
}

/// `*` (any run) and `?` (one character) against a file name; a leading `.` is
/// matched only by a literal `.`, as in a shell.
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pattern.first() != Some(&b'.') {
        return false;
    }
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Writes through a temporary file and a rename, so readers never see half an archive.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("arkc.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads an `.arkc`, with the path in the error.
pub(crate) fn open(path: &Path) -> anyhow::Result<ContainerArchive> {
    ContainerArchive::open(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Whether `path` names a container archive (by its `.arkc` extension).
pub(crate) fn is_container(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "arkc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        for (p, n, m) in [
            ("*.yaml", "build.yaml", true),
            ("*.yaml", "build.yml", false),
            ("b?ild.yaml", "build.yaml", true),
            ("*", ".hidden.yaml", false),
            (".*", ".hidden.yaml", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("build.yaml", "build.yaml", true),
            ("*x*", "abc", false),
        ] {
            assert_eq!(wildcard_match(p.as_bytes(), n.as_bytes()), m, "{p} vs {n}");
        }
    }

    #[test]
    fn an_archive_manifest_is_not_a_source_description() {
        let err =
            ContainerSource::from_toml("format_version = 1\nname = \"x\"\nversion = \"1.0.0\"")
                .expect_err("refused");
        assert!(
            err.to_string().contains("manifest of a built .arkc"),
            "{err}"
        );
        let ok = ContainerSource::from_toml(
            "name = \"x\"\nversion = \"1.0.0\"\n[[engines]]\nname = \"a\"\nbizes = [{ ark = \"x.ark\", grants = [\"cache\"] }]\n",
        )
        .expect("parses");
        assert!(ok.engines[0].bizes[0].active);
    }
}
