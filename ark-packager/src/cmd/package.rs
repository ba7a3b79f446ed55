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
}

impl PackageCmd {
    /// Builds and packages the plugin; returns the archive's path.
    pub fn exec(&self, global: &GlobalOpts, shell: &Shell) -> anyhow::Result<PathBuf> {
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

/// A component that imports a capability interface it does not request will have
/// every such call denied; say so at packaging time rather than at run time.
fn warn_about_unrequested_imports(
    imports: &[String],
    requested: &arkline::host::Capabilities,
    shell: &Shell,
) {
    for import in imports {
        let Some((iface, _)) = arkline::host::parse_interface_name(import) else {
            continue;
        };
        let (missing, key) = match iface {
            "process" => (requested.process.is_empty(), "process = [\"<program>\"]"),
            "http" => (requested.http.is_empty(), "http = [\"<host>\"]"),
            "cache" => (!requested.cache, "cache = true"),
            "host-call" => (requested.host_call.is_empty(), "host_call = [\"<name>\"]"),
            _ => continue,
        };
        if missing {
            shell.warn(format!(
                "the component imports `{import}` but [package.metadata.ark] requests no `{iface}` capability, so its calls will be denied; add `capabilities = {{ {key} }}`"
            ));
        }
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
