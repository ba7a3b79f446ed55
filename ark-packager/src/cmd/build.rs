//! `cargo ark build`.

use arkline::runtime::ComponentInfo;
use clap::Args;

use crate::cmd::{GlobalOpts, PackageSelection};
use crate::guest::{self, BuiltComponent};
use crate::project::{CargoOptions, PluginProject, cargo_path};
use crate::shell::Shell;

/// Build the plugin's component for wasm32-wasip2 and check it exports the step world.
#[derive(Debug, Clone, Default, Args)]
pub struct BuildCmd {
    /// Which package.
    #[command(flatten)]
    pub selection: PackageSelection,
    /// Flags passed to cargo.
    #[command(flatten)]
    pub cargo: CargoOptions,
}

impl BuildCmd {
    /// Builds and checks the component.
    pub fn exec(
        &self,
        _global: &GlobalOpts,
        shell: &Shell,
    ) -> anyhow::Result<(PluginProject, BuiltComponent, ComponentInfo)> {
        let cargo = cargo_path();
        let project = PluginProject::locate(&cargo, &self.selection, &self.cargo)?;
        let built = guest::build(&cargo, &project, shell)?;
        shell.status("Checking", format!("component {}", built.path.display()));
        let info = arkline::runtime::inspect_component(&built.bytes).map_err(|e| {
            anyhow::anyhow!("{} is not a usable step plugin: {e}", built.path.display())
        })?;
        shell.status(
            "Finished",
            format!(
                "{} ({} KiB, arkline:step@{}, step types: {})",
                built.path.display(),
                built.bytes.len().div_ceil(1024),
                info.api_version,
                info.steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        Ok((project, built, info))
    }
}
