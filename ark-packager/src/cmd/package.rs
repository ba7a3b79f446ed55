//! `cargo ark package`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use arkline::ark::{BuildInfo, ComponentEntry, FORMAT_VERSION, Manifest, StepEntry};
use clap::Args;
use semver::VersionReq;

use crate::cmd::{BuildCmd, GlobalOpts, PackageSelection, print_json};
use crate::guest;
use crate::project::CargoOptions;
use crate::shell::Shell;

/// Path of the component inside an archive written by this packager.
const COMPONENT_PATH: &str = "component.wasm";

/// Build the plugin and write `target/ark/<name>-<version>.ark`.
#[derive(Debug, Clone, Default, Args)]
pub struct PackageCmd {
    /// Which package.
    #[command(flatten)]
    pub selection: PackageSelection,
    /// Write the archive here instead of target/ark/.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print one JSON object on stdout: `name`, `version`, `archive`, `size`
    /// (bytes), `sha256`, `steps`. Status lines stay on stderr.
    #[arg(long)]
    pub json: bool,
    /// Flags passed to cargo.
    #[command(flatten)]
    pub cargo: CargoOptions,
    /// Package this prebuilt component (from componentize-py, componentize-js,
    /// or any toolchain) instead of building a cargo package; its name,
    /// version, capabilities and any schemas come from an `Ark.toml` beside it.
    #[arg(long, value_name = "FILE.wasm", conflicts_with_all = ["manifest_path", "package"])]
    pub component: Option<PathBuf>,
    /// The `Ark.toml` of `--component` (default: the one beside the component).
    #[arg(long, value_name = "FILE", requires = "component")]
    pub ark_toml: Option<PathBuf>,
}

/// Components above this size get a warning: every node compiles a new one
/// once (seconds for an interpreter inside a component) before it runs.
pub const LARGE_COMPONENT: usize = 8 << 20;

/// `Ark.toml`: what `--component` packaging needs that a cargo package's
/// `Cargo.toml` would give.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ArkToml {
    /// The biz name.
    name: String,
    /// Its version.
    version: semver::Version,
    #[serde(default)]
    description: String,
    #[serde(default)]
    authors: Vec<String>,
    #[serde(default)]
    license: Option<String>,
    /// The host API requirement (default: `^` the version the component
    /// exports).
    #[serde(default)]
    host_api: Option<VersionReq>,
    /// What the biz asks the engine for (as `[package.metadata.ark]
    /// capabilities`).
    #[serde(default)]
    capabilities: arkline::host::Capabilities,
    /// Step id → a JSON Schema file (relative to the `Ark.toml`), for steps
    /// whose `describe()` gives no config schema.
    #[serde(default)]
    schemas: BTreeMap<String, PathBuf>,
}

impl PackageCmd {
    /// Builds and packages the plugin; returns the archive's path.
    pub fn exec(&self, global: &GlobalOpts, shell: &Shell) -> anyhow::Result<PathBuf> {
        if let Some(component) = &self.component {
            return self.package_component(component, shell);
        }
        let build = BuildCmd {
            selection: self.selection.clone(),
            cargo: self.cargo.clone(),
        };
        let (project, built, info) = build.exec(global, shell)?;
        let name = project.biz_name();
        let package = &project.package;
        shell.status("Packaging", format!("{name} v{}", package.version));

        let host_api = match &project.ark.host_api {
            Some(req) if req.matches(&info.api_version) => req.clone(),
            Some(req) => bail!(
                "[package.metadata.ark] host_api = \"{req}\" does not match arkline:step@{}, the API the component was built against",
                info.api_version
            ),
            None => VersionReq::parse(&format!("^{}", info.api_version))
                .context("host API requirement")?,
        };
        warn_about_unrequested_imports(&info.imports, &project.ark.capabilities, shell);

        let mut files = BTreeMap::new();
        let mut steps = Vec::new();
        for step in &info.steps {
            let schema = format!("schemas/{}.schema.json", step.id);
            let mut json = serde_json::to_vec_pretty(&step.config_schema)?;
            json.push(b'\n');
            files.insert(schema.clone(), json);
            steps.push(StepEntry {
                id: step.id.clone(),
                description: step.description.clone(),
                schema,
            });
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            name: name.clone(),
            version: package.version.clone(),
            description: project
                .ark
                .description
                .clone()
                .or_else(|| package.description.clone())
                .unwrap_or_default(),
            authors: package.authors.clone(),
            license: package.license.clone(),
            host_api,
            component: ComponentEntry {
                path: COMPONENT_PATH.to_owned(),
                sha256: String::new(),
                size: 0,
            },
            steps,
            capabilities: project.ark.capabilities.clone(),
            build: BuildInfo {
                packager: format!("cargo-ark {}", env!("CARGO_PKG_VERSION")),
                rustc: built.rustc.clone(),
                target: guest::TARGET.to_owned(),
                profile: guest::PROFILE.to_owned(),
                language: None,
            },
            files: Vec::new(),
        };
        let (bytes, _) = arkline::ark::write_ark(manifest, &built.bytes, &files)
            .with_context(|| format!("cannot package `{name}`"))?;

        let path = match &self.output {
            Some(path) => path.clone(),
            None => project
                .target_dir()
                .join("ark")
                .join(format!("{name}-{}.ark", package.version)),
        };
        write_atomically(&path, &bytes)?;
        let sha256 = arkline::ark::sha256_hex(&bytes);
        shell.status(
            "Packaged",
            format!(
                "{name} v{} ({}, {} KiB, sha256 {})",
                package.version,
                path.display(),
                bytes.len().div_ceil(1024),
                &sha256[..16]
            ),
        );
        if self.json {
            print_json(&serde_json::json!({
                "name": name,
                "version": package.version.to_string(),
                "archive": path,
                "size": bytes.len(),
                "sha256": sha256,
                "steps": info.steps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            }))?;
        }
        Ok(path)
    }
}

impl PackageCmd {
    /// `--component`: the same checks as for a cargo package (`describe()` in
    /// a fresh store, the schemas compiled, digests, a deterministic archive
    /// read back), with what cargo would say taken from `Ark.toml`.
    fn package_component(
        &self,
        component: &std::path::Path,
        shell: &Shell,
    ) -> anyhow::Result<PathBuf> {
        let dir = component
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| std::path::Path::new("."));
        let ark_toml_path = self
            .ark_toml
            .clone()
            .unwrap_or_else(|| dir.join("Ark.toml"));
        let text = std::fs::read_to_string(&ark_toml_path).with_context(|| {
            format!(
                "cannot read {}: packaging a prebuilt component needs an Ark.toml (name, version, \
                 capabilities) beside it, or give one with --ark-toml",
                ark_toml_path.display()
            )
        })?;
        let ark: ArkToml = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid Ark.toml", ark_toml_path.display()))?;
        let toml_dir = ark_toml_path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| std::path::Path::new("."));
        let bytes = std::fs::read(component)
            .with_context(|| format!("cannot read {}", component.display()))?;
        let language = arkline::ark::producers::source_language(&bytes);
        shell.status(
            "Checking",
            format!(
                "component {} ({} KiB{})",
                component.display(),
                bytes.len().div_ceil(1024),
                language
                    .as_deref()
                    .map(|l| format!(", {l}"))
                    .unwrap_or_default()
            ),
        );
        if bytes.len() > LARGE_COMPONENT {
            shell.warn(format!(
                "the component is {} MiB: each node compiles it once when it is installed (seconds \
                 for a language runtime inside a component), then loads it from its compiled cache",
                bytes.len() >> 20
            ));
        }
        let info = arkline::runtime::inspect_component(&bytes).map_err(|e| {
            anyhow::anyhow!("{} is not a usable step plugin: {e}", component.display())
        })?;
        for id in ark.schemas.keys() {
            if !info.steps.iter().any(|s| s.id == *id) {
                bail!(
                    "{} gives a schema for step type `{id}`, which the component does not describe (it describes: {})",
                    ark_toml_path.display(),
                    info.steps
                        .iter()
                        .map(|s| s.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let host_api = match &ark.host_api {
            Some(req) if req.matches(&info.api_version) => req.clone(),
            Some(req) => bail!(
                "{}: host_api = \"{req}\" does not match arkline:step@{}, the API the component exports",
                ark_toml_path.display(),
                info.api_version
            ),
            None => VersionReq::parse(&format!("^{}", info.api_version))
                .context("host API requirement")?,
        };
        // Bindings generated for the whole world (componentize-py, jco)
        // import every capability interface, used or not: one line, not a
        // warning per interface.
        let unrequested = unrequested_imports(&info.imports, &ark.capabilities);
        if !unrequested.is_empty() {
            shell.status(
                "Note",
                format!(
                    "the component imports {}, which Ark.toml's [capabilities] does not request: \
                     calls of those are denied (request what the steps use)",
                    unrequested.join(", ")
                ),
            );
        }
        let mut files = BTreeMap::new();
        let mut steps = Vec::new();
        for step in &info.steps {
            let schema = match ark.schemas.get(&step.id) {
                Some(file) => {
                    let path = toml_dir.join(file);
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    serde_json::from_str::<serde_json::Value>(&text).with_context(|| {
                        format!(
                            "{} (the schema of step type `{}`) is not JSON",
                            path.display(),
                            step.id
                        )
                    })?
                }
                None if step.config_schema.is_null() => bail!(
                    "step type `{}` has no config schema: the component's describe() gives none; \
                     write one and name it in {} under [schemas] (`{} = \"schemas/{}.json\"`)",
                    step.id,
                    ark_toml_path.display(),
                    step.id,
                    step.id
                ),
                None => step.config_schema.clone(),
            };
            if let Err(e) = arkline::model::config_schema::ConfigSchema::new(&schema) {
                bail!(
                    "step type `{}` has a config schema that is not a valid JSON Schema: {e}",
                    step.id
                );
            }
            let entry = format!("schemas/{}.schema.json", step.id);
            let mut json = serde_json::to_vec_pretty(&schema)?;
            json.push(b'\n');
            files.insert(entry.clone(), json);
            steps.push(StepEntry {
                id: step.id.clone(),
                description: step.description.clone(),
                schema: entry,
            });
        }
        shell.status("Packaging", format!("{} v{}", ark.name, ark.version));
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            name: ark.name.clone(),
            version: ark.version.clone(),
            description: ark.description.clone(),
            authors: ark.authors.clone(),
            license: ark.license.clone(),
            host_api,
            component: ComponentEntry {
                path: COMPONENT_PATH.to_owned(),
                sha256: String::new(),
                size: 0,
            },
            steps,
            capabilities: ark.capabilities.clone(),
            build: BuildInfo {
                packager: format!("cargo-ark {}", env!("CARGO_PKG_VERSION")),
                rustc: String::new(),
                target: guest::TARGET.to_owned(),
                profile: "prebuilt".to_owned(),
                language: language.clone(),
            },
            files: Vec::new(),
        };
        let (archive, _) = arkline::ark::write_ark(manifest, &bytes, &files)
            .with_context(|| format!("cannot package `{}`", ark.name))?;
        // What an engine will do with it: read it back whole.
        arkline::ark::Ark::from_bytes(&archive)
            .with_context(|| format!("the archive of `{}` does not read back", ark.name))?;
        let path = match &self.output {
            Some(path) => path.clone(),
            None => toml_dir
                .join("target")
                .join("ark")
                .join(format!("{}-{}.ark", ark.name, ark.version)),
        };
        write_atomically(&path, &archive)?;
        let sha256 = arkline::ark::sha256_hex(&archive);
        shell.status(
            "Packaged",
            format!(
                "{} v{} ({}, {} KiB, sha256 {})",
                ark.name,
                ark.version,
                path.display(),
                archive.len().div_ceil(1024),
                &sha256[..16]
            ),
        );
        if self.json {
            print_json(&serde_json::json!({
                "name": ark.name,
                "version": ark.version.to_string(),
                "archive": path,
                "size": archive.len(),
                "sha256": sha256,
                "language": language,
                "steps": info.steps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            }))?;
        }
        Ok(path)
    }
}

/// The capability interfaces `imports` holds that `requested` does not ask
/// for, with the manifest key that would (`http` → `http = ["<host>"]`).
fn unrequested(
    imports: &[String],
    requested: &arkline::host::Capabilities,
) -> Vec<(String, &'static str, &'static str)> {
    let mut out = Vec::new();
    for import in imports {
        let Some((iface, _)) = arkline::host::parse_interface_name(import) else {
            continue;
        };
        let (missing, iface, key) = match iface {
            "process" => (
                requested.process.is_empty(),
                "process",
                "process = [\"<program>\"]",
            ),
            "http" => (requested.http.is_empty(), "http", "http = [\"<host>\"]"),
            "cache" => (!requested.cache, "cache", "cache = true"),
            "host-call" => (
                requested.host_call.is_empty(),
                "host-call",
                "host_call = [\"<name>\"]",
            ),
            _ => continue,
        };
        if missing {
            out.push((import.clone(), iface, key));
        }
    }
    out
}

/// The interfaces of [`unrequested`], by name.
fn unrequested_imports(imports: &[String], requested: &arkline::host::Capabilities) -> Vec<String> {
    unrequested(imports, requested)
        .into_iter()
        .map(|(_, iface, _)| format!("`{iface}`"))
        .collect()
}

/// A component that imports a capability interface it does not request will have
/// every such call denied; say so at packaging time rather than at run time.
fn warn_about_unrequested_imports(
    imports: &[String],
    requested: &arkline::host::Capabilities,
    shell: &Shell,
) {
    for (import, iface, key) in unrequested(imports, requested) {
        shell.warn(format!(
            "the component imports `{import}` but [package.metadata.ark] requests no `{iface}` capability, so its calls will be denied; add `capabilities = {{ {key} }}`"
        ));
    }
}

/// Writes through a temporary file and a rename, so readers never see half an archive.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("ark.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
