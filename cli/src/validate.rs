//! `arkline validate` (to be built).

use std::process::ExitCode;

/// Arguments of `arkline validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {}

impl ValidateArgs {
    /// Runs the subcommand.
    pub fn exec(self) -> anyhow::Result<ExitCode> {
        anyhow::bail!("`arkline validate` is not built yet")
    }
}
