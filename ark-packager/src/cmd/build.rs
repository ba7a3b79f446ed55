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
        let mut info = arkline::runtime::inspect_component(&built.bytes).map_err(|e| {
            anyhow::anyhow!("{} is not a usable step plugin: {e}", built.path.display())
        })?;
        if info.steps.iter().any(|s| s.config_schema.is_null()) {
            fill_schemas(&cargo, &project, shell, &mut info)?;
        }
        // Engines check pipelines' `with:` against these schemas: one they cannot
        // compile would be reported against every pipeline that uses the step.
        for step in &info.steps {
            if let Err(e) = arkline::model::config_schema::ConfigSchema::new(&step.config_schema) {
                anyhow::bail!(
                    "step type `{}` has a config schema that is not a valid JSON Schema ({e}); fix its config type's `JsonSchema` derive or attributes",
                    step.id
                );
            }
        }
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

/// Takes the config schemas the shipped component does not carry (the SDK built
/// without its `schema` feature) from a second build with the feature: the
/// same source, so the same step types, which is checked.
fn fill_schemas(
    cargo: &std::path::Path,
    project: &PluginProject,
    shell: &Shell,
    info: &mut ComponentInfo,
) -> anyhow::Result<()> {
    let built = guest::build_flavor(cargo, project, shell, guest::Flavor::Schemas)?;
    let described = arkline::runtime::inspect_component(&built.bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} (the build for config schemas) is not a usable step plugin: {e}",
            built.path.display()
        )
    })?;
    let ids = |i: &ComponentInfo| i.steps.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    if ids(info) != ids(&described) {
        anyhow::bail!(
            "the build for config schemas describes step types [{}] but the shipped build [{}]; they come from the same source, so a `cfg` must differ between them",
            ids(&described).join(", "),
            ids(info).join(", ")
        );
    }
    for (step, with_schema) in info.steps.iter_mut().zip(described.steps) {
        if step.config_schema.is_null() {
            if with_schema.config_schema.is_null() {
                anyhow::bail!(
                    "step type `{}` has no config schema even in a build with `{}`: is arkline-sdk older than this cargo ark?",
                    step.id,
                    guest::SCHEMA_FEATURE
                );
            }
            step.config_schema = with_schema.config_schema;
        }
    }
    Ok(())
}
