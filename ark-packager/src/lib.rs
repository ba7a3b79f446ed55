//! # cargo-ark
//!
//! The `cargo ark` subcommand builds arkline step plugins into WebAssembly
//! components, packages them as `.ark` archives, and bundles several engines (their
//! bizes, grants, settings and pipelines) into `.arkc` container archives:
//!
//! ```text
//! cargo ark new my-step        # scaffold a step plugin crate
//! cargo ark build              # build the component for wasm32-wasip2
//! cargo ark package            # write target/ark/<name>-<version>.ark
//! cargo ark inspect file.ark   # show what an archive holds
//! cargo ark run upper --with '{"text":"hi"}'   # run one step in the real runtime
//! cargo ark container          # build container.toml's engines into an .arkc
//! ```
//!
//! Each subcommand is a clap struct with an `exec()`; status lines go to stderr in
//! cargo's style. The archive format itself lives in `arkline::ark`.
//!
//! Other tools (the test harness of `arkline-testkit`) package a plugin crate
//! through [`package_crate`] rather than by running this binary.

#![deny(missing_docs)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

pub mod cmd;
pub mod guest;
pub mod project;
pub mod shell;

pub use shell::Shell;

/// Where an archive written by `cargo ark package` went, and where its compiled
/// component is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packaged {
    /// The archive, `<target dir>/ark/<name>-<version>.ark`.
    pub archive: PathBuf,
    /// `<target dir>/ark/compiled`: the compiled-component cache that `cargo ark
    /// run` and the test harness give their `Runtime`, so that a component that did
    /// not change is not compiled again.
    pub compiled_cache: PathBuf,
}

/// Builds and packages the selected plugin crate exactly as `cargo ark package`
/// does (status lines go to `shell`; cargo's own output to stderr), with `cargo`'s
/// flags passed to cargo, writing the archive to its usual place under the target
/// directory (`<target dir>/ark/`).
pub fn package_crate(
    selection: &cmd::PackageSelection,
    cargo: &project::CargoOptions,
    shell: &Shell,
) -> anyhow::Result<Packaged> {
    let global = cmd::GlobalOpts {
        quiet: shell.verbosity() == shell::Verbosity::Quiet,
        verbose: shell.verbosity() == shell::Verbosity::Verbose,
        color: shell::Color::Auto,
    };
    let package = cmd::PackageCmd {
        selection: selection.clone(),
        cargo: cargo.clone(),
        ..cmd::PackageCmd::default()
    };
    let archive = package.exec(&global, shell)?;
    Ok(Packaged {
        compiled_cache: compiled_cache_beside(&archive),
        archive,
    })
}

/// The compiled cache that belongs with an archive in `<target dir>/ark/`.
fn compiled_cache_beside(archive: &Path) -> PathBuf {
    archive
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("compiled")
}

/// Runs `cargo ark` with the given process arguments and returns its exit code.
///
/// Accepts `cargo-ark ark <cmd>` (how cargo runs a subcommand), and also
/// `cargo-ark <cmd>` for direct use.
pub fn main(mut args: Vec<OsString>) -> ExitCode {
    if args.get(1).is_none_or(|a| a != "ark") {
        args.insert(1.min(args.len()), OsString::from("ark"));
    }
    let cli = match cmd::Cargo::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let cmd::Cargo::Ark(ark) = cli;
    let shell = Shell::new(ark.global.color, ark.global.verbosity());
    match ark.command.exec(&ark.global, &shell) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            shell.error(&e);
            ExitCode::FAILURE
        }
    }
}
