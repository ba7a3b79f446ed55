//! The plugin crate being built: its cargo metadata and `[package.metadata.ark]`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use arkline::host::Capabilities;
use cargo_metadata::{Metadata, MetadataCommand, Package};
use clap::Args;
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

/// Cargo's own flags that `cargo ark` passes on to every cargo it runs for a
/// plugin (`cargo metadata` and the guest `cargo build`), so CI can build a biz
/// exactly as it builds everything else.
///
/// `target_dir` also moves what `cargo ark` writes itself: archives and the
/// compiled-component cache go to `<target dir>/ark/` (see
/// [`PluginProject::target_dir`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
#[command(next_help_heading = "Cargo options")]
pub struct CargoOptions {
    /// Assert that `Cargo.lock` will remain unchanged (passed to cargo).
    #[arg(long)]
    pub locked: bool,
    /// Equivalent to `--locked` and `--offline` (passed to cargo).
    #[arg(long)]
    pub frozen: bool,
    /// Run without accessing the network (passed to cargo).
    #[arg(long)]
    pub offline: bool,
    /// Directory for all generated artifacts: the guest build, and `ark/` with the
    /// archives and the compiled cache (passed to cargo).
    #[arg(long, value_name = "DIRECTORY")]
    pub target_dir: Option<PathBuf>,
}

impl CargoOptions {
    /// `--locked`, `--frozen` and `--offline`, those that are set.
    pub fn flags(&self) -> Vec<&'static str> {
        [
            (self.locked, "--locked"),
            (self.frozen, "--frozen"),
            (self.offline, "--offline"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect()
    }

    /// `--target-dir`, absolute (relative to the current directory, as cargo
    /// reads it), so it names the same directory whatever cargo's working
    /// directory is and can be remapped out of the component.
    pub fn absolute_target_dir(&self) -> anyhow::Result<Option<PathBuf>> {
        self.target_dir
            .as_deref()
            .map(|dir| {
                std::path::absolute(dir)
                    .with_context(|| format!("--target-dir {} is not a usable path", dir.display()))
            })
            .transpose()
    }

    /// A `cargo metadata` with these flags (`cargo metadata` has no
    /// `--target-dir`; [`PluginProject`] applies that itself).
    pub fn metadata_command(&self, cargo: &Path) -> MetadataCommand {
        let mut cmd = MetadataCommand::new();
        cmd.cargo_path(cargo).no_deps().other_options(
            self.flags()
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
        cmd
    }

    /// Adds the flags and `--target-dir` to a `cargo build`.
    pub fn apply_to_build(&self, cmd: &mut std::process::Command) -> anyhow::Result<()> {
        cmd.args(self.flags());
        if let Some(dir) = self.absolute_target_dir()? {
            cmd.arg("--target-dir").arg(dir);
        }
        Ok(())
    }
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
    /// The cargo flags it was located with, and is built with.
    pub cargo: CargoOptions,
    /// `--target-dir` (absolute), or the workspace's target directory.
    target_dir: PathBuf,
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
    /// is a `cdylib`. `options` are given to `cargo metadata` and kept for the build.
    pub fn locate(
        cargo: &Path,
        selection: &PackageSelection,
        options: &CargoOptions,
    ) -> anyhow::Result<PluginProject> {
        let mut cmd = options.metadata_command(cargo);
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
        let target_dir = match options.absolute_target_dir()? {
            Some(dir) => dir,
            None => metadata.target_directory.clone().into_std_path_buf(),
        };
        Ok(PluginProject {
            metadata,
            package,
            ark,
            cargo: options.clone(),
            target_dir,
        })
    }

    /// The biz name: `[package.metadata.ark] name`, else the package name.
    pub fn biz_name(&self) -> String {
        self.ark
            .name
            .clone()
            .unwrap_or_else(|| self.package.name.to_string())
    }

    /// Where the guest is built and `ark/` (archives, compiled cache) goes:
    /// `--target-dir`, or the workspace's target directory.
    pub fn target_dir(&self) -> PathBuf {
        self.target_dir.clone()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_options_become_cargo_flags_with_an_absolute_target_dir() {
        assert!(CargoOptions::default().flags().is_empty());
        let options = CargoOptions {
            locked: true,
            frozen: true,
            offline: true,
            target_dir: Some(PathBuf::from("out/ci")),
        };
        assert_eq!(options.flags(), ["--locked", "--frozen", "--offline"]);
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            options.absolute_target_dir().expect("absolute"),
            Some(cwd.join("out/ci"))
        );

        let mut build = std::process::Command::new("cargo");
        options.apply_to_build(&mut build).expect("applies");
        let args: Vec<_> = build.get_args().map(|a| a.to_owned()).collect();
        assert_eq!(
            args,
            ["--locked", "--frozen", "--offline", "--target-dir"]
                .map(std::ffi::OsString::from)
                .into_iter()
                .chain([cwd.join("out/ci").into_os_string()])
                .collect::<Vec<_>>()
        );
    }
}
