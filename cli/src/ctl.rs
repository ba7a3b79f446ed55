//! `arkline ctl` (to be built).

use std::process::ExitCode;

/// Arguments of `arkline ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {}

impl CtlArgs {
    /// Runs the subcommand.
    pub fn exec(self) -> anyhow::Result<ExitCode> {
        anyhow::bail!("`arkline ctl` is not built yet")
    }
}
