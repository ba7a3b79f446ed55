//! `arkline run` (to be built).

use std::process::ExitCode;

/// Arguments of `arkline run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {}

impl RunArgs {
    /// Runs the subcommand.
    pub fn exec(self) -> anyhow::Result<ExitCode> {
        anyhow::bail!("`arkline run` is not built yet")
    }
}
