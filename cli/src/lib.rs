//! `arkline`: run a container archive (`run`), check pipelines and archives
//! (`validate`), serve the admin HTTP API (`serve`) and drive it (`ctl`).
//!
//! Each subcommand is a clap struct with an `exec()`, in its own module. Status
//! lines go to stderr in cargo's style; results go to stdout.
#![deny(missing_docs)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod color;
pub mod ctl;
pub mod run;
pub mod serve;
pub mod validate;

/// Command line of the `arkline` binary.
#[derive(Debug, Parser)]
#[command(name = "arkline", version, about, long_about = None)]
pub struct Cli {
    /// Coloured output and live progress: `auto` (on a terminal, unless `NO_COLOR`
    /// is set), `always`, or `never` (no escape codes at all).
    #[arg(long, global = true, value_enum, default_value_t = color::ColorChoice::Auto, value_name = "WHEN")]
    pub color: color::ColorChoice,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy a container archive (.arkc) on an embedded store and run its pipelines.
    Run(run::RunArgs),
    /// Check pipeline YAML files and container archives, printing every diagnostic.
    Validate(validate::ValidateArgs),
    /// Serve the admin HTTP API (and webhooks, metrics) over a data dir.
    Serve(Box<serve::ServeArgs>),
    /// Drive a running `arkline serve` over its API.
    Ctl(ctl::CtlArgs),
}

/// Parses the command line, runs the subcommand and maps its result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => args.exec(cli.color),
        Command::Validate(args) => args.exec(cli.color),
        Command::Serve(args) => args.exec(cli.color),
        Command::Ctl(args) => args.exec(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
