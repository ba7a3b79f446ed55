//! `arkline serve` (to be built).

use std::process::ExitCode;

/// Arguments of `arkline serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

impl ServeArgs {
    /// Runs the subcommand.
    pub fn exec(self) -> anyhow::Result<ExitCode> {
        anyhow::bail!("`arkline serve` is not built yet")
    }
}
