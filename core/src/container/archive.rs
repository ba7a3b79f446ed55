//! The `.arkc` container archive: several engines, their bizes, grants, settings
//! and pipelines, deployable as one unit.
//!
//! An `.arkc` is a deterministic zip (the same writer as `.ark`):
//!
//! ```text
//! container.toml                           the manifest (ContainerManifest)
//! bizes/<name>-<version>.ark               each biz once, stored uncompressed
//! engines/<engine>/pipelines/<file>.yaml   pipelines, as written
//! ```
//!
//! `container.toml` pins every other entry by SHA-256 and size: bizes in
//! `[[files]]`, pipelines in their engine's `pipelines` list. It looks like this:
//!
//! ```toml
//! format_version = 1
//! name = "ci"
//! version = "1.0.0"
//!
//! [[engines]]
//! name = "team-a"
//! trusted_keys = []          # hex ed25519 public keys; non-empty: only their signatures pass
//! require_signed = false     # refuse unsigned bizes (also `settings.require_signed_bizes`)
//! bizes = [{ name = "shell", version = "0.1.0", grants = ["process=sh"], active = true }]
//! pipelines = [{ path = "engines/team-a/pipelines/build.yaml", sha256 = "…", size = 312 }]
//!
//! [engines.settings]         # a PipelineSettingSpec
//! executor_quota = 4
//!
//! [[shared_bizes]]           # usable by every engine, with nothing granted
//! name = "shell"
//! version = "0.1.0"
//!
//! [[files]]
//! path = "bizes/shell-0.1.0.ark"
//! sha256 = "…"
//! size = 401234
//! ```
//!
//! The bizes an engine has are its own `bizes` plus every `[[shared_bizes]]`
//! entry; when an engine lists a shared `name@version` itself, its entry (with
//! its grants) wins. At most one version of a name may be `active` in an engine.
//! A shared biz runs with nothing granted (`log` only) unless the engine lists it
//! with grants.
//!
//! The source description a project writes is also called `container.toml`; it
//! has no `format_version` (that is how the two are told apart), names bizes by
//! where they come from, and is turned into an `.arkc` by `cargo ark container`.
//!
//! [`ContainerArchive::from_bytes`] is a security boundary like [`Ark::from_bytes`]:
//! the same zip checks (names, links, duplicates, local headers, compression,
//! caps while streaming), every entry pinned, every nested `.ark` read with the
//! hardened reader under what is left of the same byte budget, signature policies
//! applied per engine, and every pipeline parsed and checked against the bizes its
//! engine has and their step schemas.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use arkline::container::archive::ContainerArchive;
//!
//! let arkc = ContainerArchive::open("target/ark/ci-1.0.0.arkc")?;
//! for engine in &arkc.manifest.engines {
//!     for biz in arkc.engine_bizes(&engine.name) {
//!         println!("{}: {}@{} ({})", engine.name, biz.name, biz.version, biz.signature);
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::ark::{
    ArchiveError, Ark, FileEntry, KeyError, PublicKey, ReadLimits, SignaturePolicy,
    SignatureStatus, is_valid_name, read_entries_with, sha256_hex, write_deterministic_zip,
};
use crate::host::{Capabilities, GrantError, merge_grants, parse_grant};
use crate::model::{Diagnostic, Diagnostics, Limits, PipelineSettingSpec, Uses};

/// The container format version this build writes and reads.
pub const CONTAINER_FORMAT_VERSION: u32 = 1;

/// Path of the manifest inside an `.arkc`.
pub const CONTAINER_MANIFEST_PATH: &str = "container.toml";

/// The entry path of biz `name@version` inside an `.arkc`.
pub fn biz_path(name: &str, version: &Version) -> String {
    format!("bizes/{name}-{version}.ark")
}

/// The entry path of pipeline file `file` of `engine` inside an `.arkc`.
pub fn pipeline_path(engine: &str, file: &str) -> String {
    format!("engines/{engine}/pipelines/{file}")
}

/// Whether `name` is a valid engine name: 1 to 63 lowercase letters, digits and
/// `-`, starting with a letter and not ending with `-` (the rule of
/// [`Container::engine`](crate::Container::engine)).
pub fn is_valid_engine_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// `container.toml` of an `.arkc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerManifest {
    /// Format of the archive; readers refuse versions they do not know.
    pub format_version: u32,
    /// Container name: lower-case letters, digits, `-` and `_`, starting with a letter.
    pub name: String,
    /// Container version.
    pub version: Version,
    /// The engines, in the order they were described.
    #[serde(default)]
    pub engines: Vec<EngineSpec>,
    /// Bizes every engine has, with nothing granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared_bizes: Vec<SharedBiz>,
    /// Every nested `.ark`, pinned by digest and size, sorted by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
}

/// One engine of a container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Engine name (see [`is_valid_engine_name`]).
    pub name: String,
    /// Hex ed25519 public keys; when any are given, only bizes signed by one of
    /// them are accepted (unsigned ones only if `require_signed` is off).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// Refuse unsigned bizes. `settings.require_signed_bizes` has the same effect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_signed: bool,
    /// The engine's own bizes, with their grants.
    #[serde(default)]
    pub bizes: Vec<BizRef>,
    /// The engine's pipelines, pinned by digest and size, sorted by path.
    #[serde(default)]
    pub pipelines: Vec<FileEntry>,
    /// Quota, default limits, cache and retention.
    #[serde(default)]
    pub settings: PipelineSettingSpec,
}

/// A biz an engine has, by identity, with what the engine grants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BizRef {
    /// Biz name.
    pub name: String,
    /// Biz version.
    pub version: Version,
    /// Grants in the syntax of [`parse_grant`]
    /// (`process=sh`, `http=api.example.com`, `cache`, `host-call=kv.get`). What the
    /// biz may use is these intersected with what its manifest requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    /// Whether new executions resolve to this version.
    #[serde(default = "yes")]
    pub active: bool,
}

/// A biz every engine of the container has, with nothing granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedBiz {
    /// Biz name.
    pub name: String,
    /// Biz version.
    pub version: Version,
    /// Whether new executions resolve to this version.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

impl EngineSpec {
    /// The engine's signature policy: its trusted keys, and signatures required
    /// when `require_signed` or `settings.require_signed_bizes` says so.
    pub fn signature_policy(&self) -> Result<SignaturePolicy, ContainerArchiveError> {
        let mut trusted = Vec::new();
        for key in self.trusted_keys.iter().chain(&self.settings.trusted_keys) {
            let parsed: PublicKey =
                key.parse()
                    .map_err(|source| ContainerArchiveError::BadKey {
                        engine: self.name.clone(),
                        key: key.clone(),
                        source,
                    })?;
            trusted.push(parsed);
        }
        Ok(SignaturePolicy {
            trusted,
            require_signature: self.require_signed || self.settings.require_signed_bizes,
        })
    }
}

impl BizRef {
    /// The grants, parsed and merged.
    pub fn capabilities(&self) -> Result<Capabilities, GrantError> {
        let grants = self
            .grants
            .iter()
            .map(|g| parse_grant(g))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(merge_grants(&grants))
    }
}

/// Why a container archive could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerArchiveError {
    /// The file could not be read or written.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The zip itself is refused: unsafe or repeated names, links, a local header
    /// that differs, a compression method, a size cap.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// No `container.toml`.
    #[error(
        "the archive has no container.toml at its root; is this an .arkc built by `cargo ark container`?"
    )]
    MissingManifest,
    /// `container.toml` is not TOML or has fields of the wrong shape.
    #[error("container.toml is not a valid container manifest: {0}")]
    Syntax(String),
    /// No `format_version`: a source description, not an archive manifest.
    #[error(
        "container.toml has no `format_version`: that is a source description; build it into an .arkc with `cargo ark container`"
    )]
    MissingFormatVersion,
    /// A format version this build does not know.
    #[error(
        "container.toml has format_version {found}, but this arkline reads only format_version {supported}; upgrade arkline to read it"
    )]
    UnknownFormatVersion {
        /// The version in the file.
        found: i64,
        /// The version this build reads.
        supported: u32,
    },
    /// A field holds a value the format does not allow.
    #[error("container.toml: `{field}` {problem}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An engine name outside the rule.
    #[error(
        "`{0}` is not a valid engine name: use 1 to 63 lowercase letters, digits and `-`, starting with a letter and not ending with `-`"
    )]
    BadEngineName(String),
    /// Two engines with the same name.
    #[error("engine `{0}` is defined more than once")]
    DuplicateEngine(String),
    /// An engine lists the same biz twice.
    #[error("engine `{engine}` lists biz {biz} more than once")]
    DuplicateBiz {
        /// The engine (`shared_bizes` for the shared list).
        engine: String,
        /// `name@version`.
        biz: String,
    },
    /// More than one active version of a name in one engine.
    #[error(
        "engine `{engine}` activates more than one version of biz `{name}` ({versions}); set `active = false` on all but one"
    )]
    SeveralActive {
        /// The engine.
        engine: String,
        /// Biz name.
        name: String,
        /// The active versions.
        versions: String,
    },
    /// A grant that does not parse.
    #[error("engine `{engine}`: grant `{grant}` of biz {biz} is not valid: {source}")]
    Grant {
        /// The engine.
        engine: String,
        /// `name@version`.
        biz: String,
        /// The grant as written.
        grant: String,
        /// Why.
        #[source]
        source: GrantError,
    },
    /// A trusted key that is not an ed25519 public key.
    #[error("engine `{engine}`: trusted key `{key}` is not valid: {source}")]
    BadKey {
        /// The engine.
        engine: String,
        /// The key as written.
        key: String,
        /// Why.
        #[source]
        source: KeyError,
    },
    /// A biz named by an engine or as shared that the archive does not hold.
    #[error("{owner} uses biz {biz}, but the archive does not hold it (no `{path}` in [[files]])")]
    MissingBiz {
        /// `engine `x`` or `[[shared_bizes]]`.
        owner: String,
        /// `name@version`.
        biz: String,
        /// The entry it would be.
        path: String,
    },
    /// A nested `.ark` nobody uses.
    #[error("`{0}` is in the archive, but no engine uses it and it is not a shared biz; remove it")]
    UnusedBiz(String),
    /// An entry `container.toml` does not list.
    #[error("entry `{0}` is not listed in container.toml; every entry must be pinned by digest")]
    UnlistedEntry(String),
    /// A listed entry that is missing.
    #[error("container.toml lists `{0}`, but the archive has no such entry")]
    MissingEntry(String),
    /// An entry whose digest or size differs from `container.toml`.
    #[error("entry `{name}` does not match container.toml: {detail}")]
    DigestMismatch {
        /// The entry.
        name: String,
        /// Expected and actual digest or size.
        detail: String,
    },
    /// A nested `.ark` the hardened reader refuses.
    #[error("nested biz archive `{entry}` is not valid: {source}")]
    Biz {
        /// The entry.
        entry: String,
        /// The nested reader's error.
        #[source]
        source: ArchiveError,
    },
    /// A nested `.ark` whose manifest names another biz than its entry name.
    #[error("nested biz archive `{entry}` holds {found}, not the biz its name says")]
    BizIdentity {
        /// The entry.
        entry: String,
        /// `name@version` from its `ark.toml`.
        found: String,
    },
    /// A biz an engine's signature policy refuses.
    #[error("engine `{engine}` refuses biz {biz}: {source}")]
    Signature {
        /// The engine.
        engine: String,
        /// `name@version`.
        biz: String,
        /// Why.
        #[source]
        source: ArchiveError,
    },
    /// A pipeline that does not parse or validate.
    #[error("pipeline `{path}` of engine `{engine}` is not valid:\n{rendered}")]
    Pipeline {
        /// The engine.
        engine: String,
        /// The entry.
        path: String,
        /// The diagnostics, rendered.
        rendered: String,
        /// The diagnostics (file names are entry paths), for tools.
        diagnostics: Diagnostics,
    },
    /// A pipeline whose `uses` no biz of its engine satisfies.
    #[error(
        "pipeline `{path}` of engine `{engine}` uses bizes the engine does not have:\n{rendered}"
    )]
    UnsatisfiedUses {
        /// The engine.
        engine: String,
        /// The entry.
        path: String,
        /// The diagnostics, rendered.
        rendered: String,
        /// The diagnostics (file names are entry paths), for tools.
        diagnostics: Diagnostics,
    },
    /// A step config that does not match its step type's schema.
    #[error(
        "pipeline `{path}` of engine `{engine}` has step configs that do not match their schemas:\n{rendered}"
    )]
    PipelineConfig {
        /// The engine.
        engine: String,
        /// The entry.
        path: String,
        /// The diagnostics, rendered.
        rendered: String,
        /// The diagnostics (file names are entry paths), for tools.
        diagnostics: Diagnostics,
    },
    /// A pipeline whose file names another engine.
    #[error(
        "pipeline `{path}` says `engine: {declared}`, but it is stored under engine `{engine}`"
    )]
    PipelineEngine {
        /// The engine it is stored under.
        engine: String,
        /// The entry.
        path: String,
        /// The engine its file names.
        declared: String,
    },
    /// Two pipelines of one engine with the same name.
    #[error("engine `{engine}` has two pipelines named `{name}`: `{first}` and `{second}`")]
    DuplicatePipeline {
        /// The engine.
        engine: String,
        /// The pipeline name.
        name: String,
        /// One file.
        first: String,
        /// The other.
        second: String,
    },
}

type Result<T, E = ContainerArchiveError> = std::result::Result<T, E>;

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ContainerArchiveError {
    ContainerArchiveError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

fn is_sha256(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ContainerManifest {
    /// Parses and checks `container.toml`. The format version is checked before
    /// anything else, so a newer archive is refused with that reason.
    pub fn from_toml(text: &str) -> Result<ContainerManifest> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ContainerArchiveError::Syntax(e.message().to_owned()))?;
        match table.get("format_version") {
            None => return Err(ContainerArchiveError::MissingFormatVersion),
            Some(toml::Value::Integer(v)) if *v == i64::from(CONTAINER_FORMAT_VERSION) => {}
            Some(toml::Value::Integer(v)) => {
                return Err(ContainerArchiveError::UnknownFormatVersion {
                    found: *v,
                    supported: CONTAINER_FORMAT_VERSION,
                });
            }
            Some(_) => return Err(invalid("format_version", "must be an integer")),
        }
        let manifest: ContainerManifest =
            toml::from_str(text).map_err(|e| ContainerArchiveError::Syntax(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Serialises the manifest as `container.toml` text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| ContainerArchiveError::Syntax(e.to_string()))
    }

    /// The engine named `name`.
    pub fn engine(&self, name: &str) -> Option<&EngineSpec> {
        self.engines.iter().find(|e| e.name == name)
    }

    /// Checks what the format constrains beyond types, without looking at entries:
    /// names, duplicates, grants, keys, entry paths and digests, that every biz
    /// named is listed in `[[files]]` and every listed biz is used.
    pub fn check(&self) -> Result<()> {
        if !is_valid_name(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "is `{}`; container names are 1-64 lower-case letters, digits, `-` or `_`, starting with a letter",
                    self.name
                ),
            ));
        }
        if self.engines.is_empty() {
            return Err(invalid(
                "engines",
                "is empty; a container needs at least one engine",
            ));
        }
        let mut listed = BTreeSet::new();
        for (i, file) in self.files.iter().enumerate() {
            let field = format!("files[{i}]");
            if !(file.path.starts_with("bizes/") && file.path.ends_with(".ark"))
                || file.path[6..].contains('/')
            {
                return Err(invalid(
                    format!("{field}.path"),
                    format!(
                        "is `{}`; [[files]] lists nested bizes, `bizes/<name>-<version>.ark`",
                        file.path
                    ),
                ));
            }
            check_digest(&field, file)?;
            if !listed.insert(file.path.as_str()) {
                return Err(invalid(
                    format!("{field}.path"),
                    format!("repeats `{}`", file.path),
                ));
            }
        }
        let mut used = BTreeSet::new();
        for (i, shared) in self.shared_bizes.iter().enumerate() {
            check_biz_name(&format!("shared_bizes[{i}].name"), &shared.name)?;
            if self.shared_bizes[..i]
                .iter()
                .any(|s| s.name == shared.name && s.version == shared.version)
            {
                return Err(ContainerArchiveError::DuplicateBiz {
                    engine: "[[shared_bizes]]".into(),
                    biz: format!("{}@{}", shared.name, shared.version),
                });
            }
            let path = biz_path(&shared.name, &shared.version);
            if !listed.contains(path.as_str()) {
                return Err(ContainerArchiveError::MissingBiz {
                    owner: "[[shared_bizes]]".into(),
                    biz: format!("{}@{}", shared.name, shared.version),
                    path,
                });
            }
            used.insert(path);
        }
        let mut engines = BTreeSet::new();
        for (e, engine) in self.engines.iter().enumerate() {
            if !is_valid_engine_name(&engine.name) {
                return Err(ContainerArchiveError::BadEngineName(engine.name.clone()));
            }
            if !engines.insert(engine.name.as_str()) {
                return Err(ContainerArchiveError::DuplicateEngine(engine.name.clone()));
            }
            engine.signature_policy()?;
            crate::pipeline::check_settings(&engine.settings)
                .map_err(|problem| invalid(format!("engines[{e}].settings"), problem))?;
            for (b, biz) in engine.bizes.iter().enumerate() {
                let id = format!("{}@{}", biz.name, biz.version);
                check_biz_name(&format!("engines[{e}].bizes[{b}].name"), &biz.name)?;
                if engine.bizes[..b]
                    .iter()
                    .any(|o| o.name == biz.name && o.version == biz.version)
                {
                    return Err(ContainerArchiveError::DuplicateBiz {
                        engine: engine.name.clone(),
                        biz: id,
                    });
                }
                for grant in &biz.grants {
                    parse_grant(grant).map_err(|source| ContainerArchiveError::Grant {
                        engine: engine.name.clone(),
                        biz: id.clone(),
                        grant: grant.clone(),
                        source,
                    })?;
                }
                let path = biz_path(&biz.name, &biz.version);
                if !listed.contains(path.as_str()) {
                    return Err(ContainerArchiveError::MissingBiz {
                        owner: format!("engine `{}`", engine.name),
                        biz: id,
                        path,
                    });
                }
                used.insert(path);
            }
            let mut active: BTreeMap<&str, Vec<&Version>> = BTreeMap::new();
            for (name, version, is_active) in self.effective_refs(engine) {
                if is_active {
                    active.entry(name).or_default().push(version);
                }
            }
            if let Some((name, versions)) = active.into_iter().find(|(_, v)| v.len() > 1) {
                return Err(ContainerArchiveError::SeveralActive {
                    engine: engine.name.clone(),
                    name: name.to_owned(),
                    versions: versions
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            let prefix = pipeline_path(&engine.name, "");
            for (p, pipeline) in engine.pipelines.iter().enumerate() {
                let field = format!("engines[{e}].pipelines[{p}]");
                let file = pipeline.path.strip_prefix(&prefix).unwrap_or_default();
                if file.is_empty()
                    || file.contains('/')
                    || !(file.ends_with(".yaml") || file.ends_with(".yml"))
                {
                    return Err(invalid(
                        format!("{field}.path"),
                        format!(
                            "is `{}`; pipelines of engine `{}` are `{prefix}<file>.yaml`",
                            pipeline.path, engine.name
                        ),
                    ));
                }
                check_digest(&field, pipeline)?;
                if !listed.insert(pipeline.path.as_str()) {
                    return Err(invalid(
                        format!("{field}.path"),
                        format!("repeats `{}`", pipeline.path),
                    ));
                }
            }
        }
        if let Some(unused) = self.files.iter().find(|f| !used.contains(f.path.as_str())) {
            return Err(ContainerArchiveError::UnusedBiz(unused.path.clone()));
        }
        Ok(())
    }

    /// `(name, version, active)` of every biz `engine` has: its own, then the
    /// shared ones it does not list itself.
    fn effective_refs<'a>(
        &'a self,
        engine: &'a EngineSpec,
    ) -> impl Iterator<Item = (&'a str, &'a Version, bool)> {
        let own = engine
            .bizes
            .iter()
            .map(|b| (b.name.as_str(), &b.version, b.active));
        let shared = self
            .shared_bizes
            .iter()
            .filter(|s| {
                !engine
                    .bizes
                    .iter()
                    .any(|b| b.name == s.name && b.version == s.version)
            })
            .map(|s| (s.name.as_str(), &s.version, s.active));
        own.chain(shared)
    }
}

fn check_biz_name(field: &str, name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "is `{name}`; biz names are 1-64 lower-case letters, digits, `-` or `_`, starting with a letter"
            ),
        ))
    }
}

fn check_digest(field: &str, entry: &FileEntry) -> Result<()> {
    if is_sha256(&entry.sha256) {
        Ok(())
    } else {
        Err(invalid(
            format!("{field}.sha256"),
            "must be 64 lower-case hex digits (a SHA-256)",
        ))
    }
}

/// A biz as one engine has it, after shared bizes are merged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineBiz {
    /// Biz name.
    pub name: String,
    /// Biz version.
    pub version: Version,
    /// The grants as written.
    pub grants: Vec<String>,
    /// The grants, parsed and merged (before intersecting with the request).
    pub capabilities: Capabilities,
    /// Whether new executions resolve to this version.
    pub active: bool,
    /// True when the engine has it only through `[[shared_bizes]]`.
    pub shared: bool,
    /// The signature under the engine's policy (it passed, or reading failed).
    pub signature: SignatureStatus,
}

/// A read and verified `.arkc`.
#[derive(Debug, Clone)]
pub struct ContainerArchive {
    /// The parsed manifest.
    pub manifest: ContainerManifest,
    /// The exact bytes of `container.toml`.
    pub manifest_bytes: Vec<u8>,
    /// Every nested biz, by `(name, version)`, read with [`Ark::from_bytes_with_limits`].
    pub bizes: BTreeMap<(String, Version), Ark>,
    /// The exact bytes of every nested biz archive (what a deployment keeps).
    pub biz_bytes: BTreeMap<(String, Version), Vec<u8>>,
    /// Every pipeline's YAML, by `(engine, entry path)`.
    pub pipelines: BTreeMap<(String, String), String>,
    /// What each engine has, by engine name, in manifest order.
    pub engine_bizes: BTreeMap<String, Vec<EngineBiz>>,
    /// SHA-256 of the whole archive file.
    pub sha256: String,
}

impl ContainerArchive {
    /// The limits [`from_bytes`](Self::from_bytes) applies: at most 4096 entries,
    /// 256 MiB per entry, and 1 GiB decompressed in all, nested bizes included.
    pub const DEFAULT_LIMITS: ReadLimits = ReadLimits {
        max_entries: 4096,
        max_entry_bytes: 256 << 20,
        max_total_bytes: 1 << 30,
    };

    /// Reads and verifies the archive at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<ContainerArchive> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ContainerArchiveError::Io {
            path: path.display().to_string(),
            source,
        })?;
        ContainerArchive::from_bytes(&bytes)
    }

    /// Reads and verifies an archive held in memory, with [`Self::DEFAULT_LIMITS`].
    pub fn from_bytes(bytes: &[u8]) -> Result<ContainerArchive> {
        ContainerArchive::from_bytes_with_limits(bytes, Self::DEFAULT_LIMITS)
    }

    /// Reads and verifies an archive. `limits.max_total_bytes` caps everything
    /// decompressed, the entries of the nested bizes included; each nested biz gets
    /// the entry count and per-entry caps of `limits`.
    pub fn from_bytes_with_limits(bytes: &[u8], limits: ReadLimits) -> Result<ContainerArchive> {
        // The manifest first, alone: it says how large each pipeline may be, so a
        // pipeline over the YAML cap is refused before it is decompressed.
        let manifest_bytes = read_entries_with(bytes, limits, |name, _| {
            Ok::<_, ArchiveError>((name == CONTAINER_MANIFEST_PATH).then_some(u64::MAX))
        })?
        .remove(CONTAINER_MANIFEST_PATH)
        .ok_or(ContainerArchiveError::MissingManifest)?;
        let text = std::str::from_utf8(&manifest_bytes)
            .map_err(|_| ContainerArchiveError::Syntax("container.toml is not UTF-8".into()))?;
        let manifest = ContainerManifest::from_toml(text)?;
        let max_yaml = Limits::default().max_bytes;
        let declared_pipelines: BTreeMap<&str, (&str, u64)> = manifest
            .engines
            .iter()
            .flat_map(|e| {
                e.pipelines
                    .iter()
                    .map(|f| (f.path.as_str(), (e.name.as_str(), f.size)))
            })
            .collect();
        let too_large = |engine: &str, path: &str, size: Option<u64>| {
            let diagnostics =
                Diagnostics(vec![crate::model::decode::too_large(path, size, max_yaml)]);
            ContainerArchiveError::Pipeline {
                engine: engine.to_owned(),
                path: path.to_owned(),
                rendered: diagnostics.render(""),
                diagnostics,
            }
        };
        let rest_limits = ReadLimits {
            max_total_bytes: limits
                .max_total_bytes
                .saturating_sub(manifest_bytes.len() as u64),
            ..limits
        };
        let read = read_entries_with(bytes, rest_limits, |name, zip_size| {
            if name == CONTAINER_MANIFEST_PATH {
                return Ok(None);
            }
            let Some(&(engine, pinned)) = declared_pipelines.get(name) else {
                return Ok(Some(u64::MAX));
            };
            // Either declaration over the cap refuses it unread; the cap on the
            // stream holds when both lie.
            let declared = pinned.max(zip_size);
            if declared > max_yaml as u64 {
                return Err(too_large(engine, name, Some(declared)));
            }
            Ok(Some(max_yaml as u64))
        });
        let mut entries = match read {
            Err(ContainerArchiveError::Archive(ArchiveError::EntryTooLarge { name, .. }))
                if declared_pipelines.contains_key(name.as_str()) =>
            {
                return Err(too_large(declared_pipelines[name.as_str()].0, &name, None));
            }
            read => read?,
        };
        let mut budget = rest_limits
            .max_total_bytes
            .saturating_sub(entries.values().map(|v| v.len() as u64).sum());

        let mut nested = BTreeMap::new();
        for file in &manifest.files {
            nested.insert(file.path.clone(), take_verified(&mut entries, file)?);
        }
        let mut pipeline_bytes = Vec::new();
        for engine in &manifest.engines {
            for file in &engine.pipelines {
                let data = take_verified(&mut entries, file)?;
                pipeline_bytes.push((engine.name.clone(), file.path.clone(), data));
            }
        }
        if let Some(extra) = entries.into_keys().next() {
            return Err(ContainerArchiveError::UnlistedEntry(extra));
        }

        let mut bizes = BTreeMap::new();
        let mut biz_bytes = BTreeMap::new();
        for id in referenced_bizes(&manifest) {
            let entry = biz_path(&id.0, &id.1);
            let Some(data) = nested.get(&entry) else {
                continue; // check() made sure it is listed; take_verified that it is there
            };
            let nested_limits = ReadLimits {
                max_total_bytes: budget,
                ..limits
            };
            let ark =
                Ark::from_bytes_with_limits(data, nested_limits).map_err(
                    |source| match source {
                        ArchiveError::TooLarge { .. } => ArchiveError::TooLarge {
                            limit: limits.max_total_bytes,
                        }
                        .into(),
                        source => ContainerArchiveError::Biz {
                            entry: entry.clone(),
                            source,
                        },
                    },
                )?;
            let used = [&ark.manifest_bytes, &ark.component]
                .into_iter()
                .chain(ark.files.values())
                .chain(ark.signature.as_ref())
                .map(|v| v.len() as u64)
                .sum::<u64>();
            budget = budget.saturating_sub(used);
            if ark.manifest.name != id.0 || ark.manifest.version != id.1 {
                return Err(ContainerArchiveError::BizIdentity {
                    entry,
                    found: format!("{}@{}", ark.manifest.name, ark.manifest.version),
                });
            }
            biz_bytes.insert(id.clone(), data.clone());
            bizes.insert(id, ark);
        }

        let mut engine_bizes = BTreeMap::new();
        for engine in &manifest.engines {
            engine_bizes.insert(
                engine.name.clone(),
                resolve_engine(&manifest, engine, &bizes)?,
            );
        }

        let mut pipelines = BTreeMap::new();
        let mut names: BTreeMap<(String, String), String> = BTreeMap::new();
        for (engine, path, data) in pipeline_bytes {
            let text = String::from_utf8(data).map_err(|_| ContainerArchiveError::Pipeline {
                engine: engine.clone(),
                path: path.clone(),
                rendered: "the file is not UTF-8".into(),
                diagnostics: Diagnostics(vec![
                    Diagnostic::error("not-utf8", "the file is not UTF-8")
                        .with_hint("save the pipeline as UTF-8 and rebuild the archive")
                        .at(&path, "", None),
                ]),
            })?;
            let has = &engine_bizes[&engine];
            let name = check_pipeline(&engine, &path, &text, has, &bizes)?;
            if let Some(first) = names.insert((engine.clone(), name.clone()), path.clone()) {
                return Err(ContainerArchiveError::DuplicatePipeline {
                    engine,
                    name,
                    first,
                    second: path,
                });
            }
            pipelines.insert((engine, path), text);
        }

        Ok(ContainerArchive {
            manifest,
            manifest_bytes,
            bizes,
            biz_bytes,
            pipelines,
            engine_bizes,
            sha256: sha256_hex(bytes),
        })
    }

    /// The bizes engine `engine` has (its own and the shared ones); empty for an
    /// engine the container does not have.
    pub fn engine_bizes(&self, engine: &str) -> &[EngineBiz] {
        self.engine_bizes.get(engine).map_or(&[], Vec::as_slice)
    }

    /// The nested archive of `name@version`.
    pub fn biz(&self, name: &str, version: &Version) -> Option<&Ark> {
        self.bizes.get(&(name.to_owned(), version.clone()))
    }

    /// The exact bytes of the nested archive of `name@version`.
    pub fn biz_bytes(&self, name: &str, version: &Version) -> Option<&[u8]> {
        self.biz_bytes
            .get(&(name.to_owned(), version.clone()))
            .map(Vec::as_slice)
    }

    /// The pipelines of `engine`: `(entry path, YAML)`, sorted by path.
    pub fn engine_pipelines<'a>(
        &'a self,
        engine: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.pipelines
            .iter()
            .filter(move |((e, _), _)| e == engine)
            .map(|((_, path), text)| (path.as_str(), text.as_str()))
    }
}

/// Every `(name, version)` an engine or the shared list names, once.
fn referenced_bizes(manifest: &ContainerManifest) -> BTreeSet<(String, Version)> {
    manifest
        .shared_bizes
        .iter()
        .map(|s| (s.name.clone(), s.version.clone()))
        .chain(
            manifest
                .engines
                .iter()
                .flat_map(|e| e.bizes.iter())
                .map(|b| (b.name.clone(), b.version.clone())),
        )
        .collect()
}

/// The bizes `engine` has, each checked against its signature policy.
fn resolve_engine(
    manifest: &ContainerManifest,
    engine: &EngineSpec,
    bizes: &BTreeMap<(String, Version), Ark>,
) -> Result<Vec<EngineBiz>> {
    let policy = engine.signature_policy()?;
    let mut out = Vec::new();
    for (name, version, active) in manifest.effective_refs(engine) {
        let id = format!("{name}@{version}");
        let own = engine
            .bizes
            .iter()
            .find(|b| b.name == name && &b.version == version);
        let grants = own.map(|b| b.grants.clone()).unwrap_or_default();
        let capabilities = match own {
            Some(b) => b
                .capabilities()
                .map_err(|source| ContainerArchiveError::Grant {
                    engine: engine.name.clone(),
                    biz: id.clone(),
                    grant: b.grants.join(", "),
                    source,
                })?,
            None => Capabilities::default(),
        };
        let ark = bizes
            .get(&(name.to_owned(), version.clone()))
            .ok_or_else(|| ContainerArchiveError::MissingBiz {
                owner: format!("engine `{}`", engine.name),
                biz: id.clone(),
                path: biz_path(name, version),
            })?;
        let signature =
            ark.verify_signature(&policy)
                .map_err(|source| ContainerArchiveError::Signature {
                    engine: engine.name.clone(),
                    biz: id.clone(),
                    source,
                })?;
        out.push(EngineBiz {
            name: name.to_owned(),
            version: version.clone(),
            grants,
            capabilities,
            active,
            shared: own.is_none(),
            signature,
        });
    }
    Ok(out)
}

/// Parses one pipeline and checks its engine, its `uses` against the engine's
/// active bizes, and its step configs against their schemas. Returns its name.
fn check_pipeline(
    engine: &str,
    path: &str,
    text: &str,
    has: &[EngineBiz],
    bizes: &BTreeMap<(String, Version), Ark>,
) -> Result<String> {
    let parsed = crate::model::parse_pipeline_file(path, text).map_err(|diags| {
        ContainerArchiveError::Pipeline {
            engine: engine.to_owned(),
            path: path.to_owned(),
            rendered: diags.render(text),
            diagnostics: diags,
        }
    })?;
    let declared = &parsed.pipeline.metadata.engine;
    if !declared.is_empty() && declared != engine {
        return Err(ContainerArchiveError::PipelineEngine {
            engine: engine.to_owned(),
            path: path.to_owned(),
            declared: declared.clone(),
        });
    }
    let spec = &parsed.pipeline.spec;
    let map = &parsed.source_map;
    // The biz and step type each `uses` resolves to when the engine starts: the
    // active version of its name, as the registry resolves.
    let resolve = |uses: &Uses| -> std::result::Result<(&Ark, String), String> {
        let same_name: Vec<&EngineBiz> = has.iter().filter(|b| b.name == uses.biz).collect();
        if same_name.is_empty() {
            let all: Vec<String> = has
                .iter()
                .map(|b| format!("{}@{}", b.name, b.version))
                .collect();
            return Err(format!(
                "engine `{engine}` has no biz `{}` (it has: {})",
                uses.biz,
                if all.is_empty() {
                    "none".to_owned()
                } else {
                    all.join(", ")
                }
            ));
        }
        let matches = |b: &&&EngineBiz| uses.req.as_ref().is_none_or(|r| r.matches(&b.version));
        let Some(biz) = same_name.iter().filter(|b| b.active).find(matches) else {
            let versions: Vec<String> = same_name
                .iter()
                .map(|b| {
                    format!(
                        "{}{}",
                        b.version,
                        if b.active { " (active)" } else { " (inactive)" }
                    )
                })
                .collect();
            return Err(format!(
                "no active version of `{}` in engine `{engine}` matches (it has: {})",
                uses.biz,
                versions.join(", ")
            ));
        };
        let ark = bizes
            .get(&(biz.name.clone(), biz.version.clone()))
            .ok_or_else(|| format!("{}@{} is missing", biz.name, biz.version))?;
        let types: Vec<&str> = ark.manifest.steps.iter().map(|s| s.id.as_str()).collect();
        match &uses.step {
            Some(t) if types.contains(&t.as_str()) => Ok((ark, t.clone())),
            Some(t) => Err(format!(
                "{}@{} has no step type `{t}` (it has: {})",
                biz.name,
                biz.version,
                types.join(", ")
            )),
            None if types.len() == 1 => Ok((ark, types[0].to_owned())),
            None => Err(format!(
                "{}@{} has {} step types ({}); name one as `{}/<step>`",
                biz.name,
                biz.version,
                types.len(),
                types.join(", "),
                uses.biz
            )),
        }
    };

    let mut unsatisfied = Vec::new();
    let steps = spec
        .stages
        .iter()
        .enumerate()
        .flat_map(|(i, st)| {
            st.steps
                .iter()
                .enumerate()
                .map(move |(j, s)| (format!("stages[{i}].steps[{j}]"), s))
        })
        .chain(
            spec.finally
                .iter()
                .enumerate()
                .map(|(j, s)| (format!("finally[{j}]"), s)),
        );
    for (at, step) in steps {
        let Some(uses) = &step.uses else { continue };
        if let Err(problem) = resolve(uses) {
            unsatisfied.push(
                map.locate(
                    Diagnostic::error(
                        "unsatisfied-uses",
                        format!("step `{}` uses `{uses}`: {problem}", step.name),
                    )
                    .with_hint("add the biz to the engine's `bizes`, or to [[shared_bizes]]"),
                    map.span(&format!("{at}.uses")),
                ),
            );
        }
    }
    if !unsatisfied.is_empty() {
        let diagnostics = Diagnostics(unsatisfied);
        return Err(ContainerArchiveError::UnsatisfiedUses {
            engine: engine.to_owned(),
            path: path.to_owned(),
            rendered: diagnostics.render(text),
            diagnostics,
        });
    }
    let schema_for = |uses: &Uses| {
        let (ark, step) = resolve(uses).ok()?;
        ark.step_schema(&step)
    };
    let diags = Diagnostics(crate::model::validate_with_schemas(spec, map, &schema_for));
    if diags.has_errors() {
        return Err(ContainerArchiveError::PipelineConfig {
            engine: engine.to_owned(),
            path: path.to_owned(),
            rendered: diags.render(text),
            diagnostics: diags,
        });
    }
    Ok(parsed.pipeline.metadata.name)
}

fn take_verified(entries: &mut BTreeMap<String, Vec<u8>>, entry: &FileEntry) -> Result<Vec<u8>> {
    let data = entries
        .remove(&entry.path)
        .ok_or_else(|| ContainerArchiveError::MissingEntry(entry.path.clone()))?;
    if data.len() as u64 != entry.size {
        return Err(ContainerArchiveError::DigestMismatch {
            name: entry.path.clone(),
            detail: format!(
                "size is {} bytes, container.toml says {}",
                data.len(),
                entry.size
            ),
        });
    }
    let actual = sha256_hex(&data);
    if actual != entry.sha256 {
        return Err(ContainerArchiveError::DigestMismatch {
            name: entry.path.clone(),
            detail: format!("sha256 is {actual}, container.toml says {}", entry.sha256),
        });
    }
    Ok(data)
}

/// Writes an `.arkc`: fills in `manifest.files` from `bizes` (each nested `.ark`
/// by `(name, version)`, stored uncompressed under [`biz_path`]) and each engine's
/// `pipelines` from `pipelines` (YAML by `(engine, entry path)`, see
/// [`pipeline_path`]), writes the zip deterministically, and reads it back with
/// every check of [`ContainerArchive::from_bytes`], so nothing is written that a
/// reader would refuse. Returns the bytes and the archive as read.
pub fn write_container(
    mut manifest: ContainerManifest,
    bizes: &BTreeMap<(String, Version), Vec<u8>>,
    pipelines: &BTreeMap<(String, String), String>,
) -> Result<(Vec<u8>, ContainerArchive)> {
    let mut entries = BTreeMap::new();
    manifest.files.clear();
    for ((name, version), data) in bizes {
        let path = biz_path(name, version);
        manifest.files.push(FileEntry {
            path: path.clone(),
            sha256: sha256_hex(data),
            size: data.len() as u64,
        });
        entries.insert(path, data.clone());
    }
    for engine in &mut manifest.engines {
        engine.pipelines.clear();
    }
    for ((engine, path), text) in pipelines {
        let spec = manifest
            .engines
            .iter_mut()
            .find(|e| &e.name == engine)
            .ok_or_else(|| {
                invalid(
                    "engines",
                    format!("has no engine `{engine}`, which pipeline `{path}` belongs to"),
                )
            })?;
        spec.pipelines.push(FileEntry {
            path: path.clone(),
            sha256: sha256_hex(text.as_bytes()),
            size: text.len() as u64,
        });
        if entries
            .insert(path.clone(), text.clone().into_bytes())
            .is_some()
        {
            return Err(invalid("pipelines", format!("repeat `{path}`")));
        }
    }
    manifest.check()?;
    entries.insert(
        CONTAINER_MANIFEST_PATH.to_owned(),
        manifest.to_toml()?.into_bytes(),
    );
    let bytes = write_deterministic_zip(&entries, |name| {
        name.starts_with("bizes/") && name.ends_with(".ark")
    })?;
    let archive = ContainerArchive::from_bytes(&bytes)?;
    Ok((bytes, archive))
}
