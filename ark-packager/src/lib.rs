//! # cargo-ark
//!
//! The `cargo ark` subcommand builds arkline step plugins into WebAssembly
//! components and packages them as `.ark` archives:
//!
//! ```text
//! cargo ark new my-step        # scaffold a step plugin crate
//! cargo ark build              # build the component for wasm32-wasip2
//! cargo ark package            # write target/ark/<name>-<version>.ark
//! cargo ark inspect file.ark   # show what an archive holds
//! ```
//!
//! Each subcommand is a clap struct with an `exec()`; status lines go to stderr in
//! cargo's style. The archive format itself lives in `arkline::ark`.

#![deny(missing_docs)]

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

pub mod cmd;
pub mod guest;
pub mod project;
pub mod shell;

pub use shell::Shell;

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
