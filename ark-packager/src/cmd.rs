//! The `cargo ark` command line: one clap struct with an `exec()` per subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::shell::{Color, Shell, Verbosity};

pub use crate::project::CargoOptions;

mod build;
mod container;
mod inspect;
mod new;
mod package;
mod run;
mod sign;

pub use arkline::host::{GrantError, merge_grants, parse_grant};
pub use build::BuildCmd;
pub use container::{ContainerCmd, ContainerSource, SourceBiz, SourceEngine, SourceSharedBiz};
pub use inspect::InspectCmd;
pub use new::NewCmd;
pub use package::PackageCmd;
pub use run::RunCmd;
pub use sign::{KeygenCmd, SignCmd, VerifyCmd};

/// `cargo` as cargo runs a subcommand: `cargo-ark ark …`.
#[derive(Debug, Parser)]
#[command(name = "cargo", bin_name = "cargo", styles = clap_cargo_styles())]
pub enum Cargo {
    /// Build, package, inspect and run arkline step plugins.
    #[command(version, author)]
    Ark(ArkCli),
}

/// `cargo ark` and its options.
#[derive(Debug, Args)]
pub struct ArkCli {
    /// Options every subcommand takes.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Print only errors.
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also print the commands run.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// Coloured output.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto, value_name = "WHEN")]
    pub color: Color,
}

impl GlobalOpts {
    /// The verbosity the flags ask for.
    pub fn verbosity(&self) -> Verbosity {
        if self.quiet {
            Verbosity::Quiet
        } else if self.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        }
    }
}

/// Which package of which workspace to work on.
#[derive(Debug, Clone, Default, Args)]
pub struct PackageSelection {
    /// Path to Cargo.toml.
    #[arg(long, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Package to build (default: the package in the current directory).
    #[arg(long, short, value_name = "SPEC")]
    pub package: Option<String>,
}

/// `cargo ark` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new step plugin crate.
    New(NewCmd),
    /// Build the plugin's component for wasm32-wasip2 and check it.
    Build(BuildCmd),
    /// Build the plugin and write `target/ark/<name>-<version>.ark`.
    Package(PackageCmd),
    /// Show what an .ark or .arkc archive holds.
    Inspect(InspectCmd),
    /// Build the plugin and run one of its steps in the isolation runtime.
    Run(RunCmd),
    /// Create an ed25519 key pair for signing archives.
    Keygen(KeygenCmd),
    /// Sign an .ark with a secret key.
    Sign(SignCmd),
    /// Check an .ark or .arkc completely: structure, digests, signatures, components.
    Verify(VerifyCmd),
    /// Build the bizes of a container description and write
    /// `target/ark/<name>-<version>.arkc`.
    Container(ContainerCmd),
}

impl Command {
    /// Runs the subcommand.
    pub fn exec(&self, global: &GlobalOpts, shell: &Shell) -> anyhow::Result<()> {
        match self {
            Command::New(cmd) => cmd.exec(shell),
            Command::Build(cmd) => cmd.exec(global, shell).map(drop),
            Command::Package(cmd) => cmd.exec(global, shell).map(drop),
            Command::Inspect(cmd) => cmd.exec(shell),
            Command::Run(cmd) => cmd.exec(global, shell),
            Command::Keygen(cmd) => cmd.exec(shell),
            Command::Sign(cmd) => cmd.exec(shell),
            Command::Verify(cmd) => cmd.exec(shell),
            Command::Container(cmd) => cmd.exec(shell).map(drop),
        }
    }
}

/// Prints the one JSON object a `--json` subcommand gives CI scripts on stdout.
fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn clap_cargo_styles() -> clap::builder::Styles {
    use anstyle::AnsiColor;
    clap::builder::Styles::styled()
        .header(AnsiColor::Green.on_default().bold())
        .usage(AnsiColor::Green.on_default().bold())
        .literal(AnsiColor::Cyan.on_default().bold())
        .placeholder(AnsiColor::Cyan.on_default())
}
