//! The plugin crate being built: its cargo metadata and `[package.metadata.ark]`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use arkline::host::Capabilities;
use cargo_metadata::{Metadata, MetadataCommand, Package};
use semver::VersionReq;
use serde::Deserialize;

use crate::cmd::PackageSelection;

/// `[package.metadata.ark]` of a plugin crate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArkMetadata {
    /// Biz name (default: the package name).
    #[serde(default)]
    pub name: Option<String>,
    /// Description (default: the package description).
    #[serde(default)]
    pub description: Option<String>,
    /// Host API requirement (default: `^` the version the component targets).
    #[serde(default)]
    pub host_api: Option<VersionReq>,
    /// Capabilities the biz requests.
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// A plugin crate located in its workspace.
#[derive(Debug)]
pub struct PluginProject {
    /// Cargo metadata of the workspace.
    pub metadata: Metadata,
    /// The plugin package.
    pub package: Package,
    /// Its `[package.metadata.ark]`.
    pub ark: ArkMetadata,
}

/// The member a directory chooses, as cargo does without `-p`: the package of the
/// `--manifest-path`, or of the nearest `Cargo.toml` above the current directory
/// (so a member of a virtual workspace works from its own directory).
fn current_member<'a>(
    members: &[&'a Package],
    selection: &PackageSelection,
) -> Option<&'a Package> {
    let manifest = match &selection.manifest_path {
        Some(path) => path.canonicalize().ok()?,
        None => std::env::current_dir()
            .ok()?
            .ancestors()
            .map(|dir| dir.join("Cargo.toml"))
            .find(|path| path.is_file())?
            .canonicalize()
            .ok()?,
    };
    members.iter().copied().find(|p| {
        p.manifest_path
            .as_std_path()
            .canonicalize()
            .is_ok_and(|m| m == manifest)
    })
}

impl PluginProject {
    /// Finds the selected package and reads its `[package.metadata.ark]`, checking it
    /// is a `cdylib`.
    pub fn locate(cargo: &Path, selection: &PackageSelection) -> anyhow::Result<PluginProject> {
        let mut cmd = MetadataCommand::new();
        cmd.cargo_path(cargo).no_deps();
        if let Some(path) = &selection.manifest_path {
            cmd.manifest_path(path);
        }
        let metadata = cmd
            .exec()
            .context("cannot read the cargo metadata of the project")?;
        let members: Vec<&Package> = metadata.workspace_packages();
        let package = match &selection.package {
            Some(spec) => members
                .iter()
                .find(|p| p.name.as_str() == spec.as_str())
                .copied()
                .with_context(|| {
                    format!(
                        "package `{spec}` is not a member of the workspace at {} (members: {})",
                        metadata.workspace_root,
                        members.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                    )
                })?,
            None => match current_member(&members, selection)
                .or_else(|| metadata.root_package())
            {
                Some(p) => p,
                None => bail!(
                    "{} is a virtual workspace; choose the plugin with `-p <package>` (members: {})",
                    metadata.workspace_root,
                    members.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            },
        }
        .clone();

        let ark = match package.metadata.get("ark") {
            Some(value) => ArkMetadata::deserialize(value).map_err(|e| {
                anyhow::anyhow!(
                    "invalid `[package.metadata.ark]` in {}: {e}",
                    package.manifest_path
                )
            })?,
            None => bail!(
                "package `{}` has no `[package.metadata.ark]` table in {}, so it is not an arkline step plugin; add:\n\n[package.metadata.ark]\ncapabilities = {{}}   # e.g. {{ process = [\"sh\"] }}",
                package.name,
                package.manifest_path
            ),
        };

        let is_cdylib = package
            .targets
            .iter()
            .any(|t| t.crate_types.iter().any(|c| c.to_string() == "cdylib"));
        if !is_cdylib {
            bail!(
                "package `{}` does not build a `cdylib`, so it cannot become a WebAssembly component; add to {}:\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]",
                package.name,
                package.manifest_path
            );
        }
        Ok(PluginProject {
            metadata,
            package,
            ark,
        })
    }

    /// The biz name: `[package.metadata.ark] name`, else the package name.
    pub fn biz_name(&self) -> String {
        self.ark
            .name
            .clone()
            .unwrap_or_else(|| self.package.name.to_string())
    }

    /// The workspace's target directory.
    pub fn target_dir(&self) -> PathBuf {
        self.metadata.target_directory.clone().into_std_path_buf()
    }

    /// The workspace root.
    pub fn workspace_root(&self) -> PathBuf {
        self.metadata.workspace_root.clone().into_std_path_buf()
    }

    /// Whether the workspace's `Cargo.toml` defines `[profile.ark]`.
    pub fn defines_ark_profile(&self) -> bool {
        let manifest = self.workspace_root().join("Cargo.toml");
        std::fs::read_to_string(manifest)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .and_then(|t| t.get("profile")?.get("ark").cloned())
            .is_some()
    }
}

/// The cargo to call back into: `$CARGO` when run by cargo, else `cargo`.
pub fn cargo_path() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"))
}
