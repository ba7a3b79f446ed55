//! `cargo-ark`: the `cargo ark` subcommand.

use std::process::ExitCode;

fn main() -> ExitCode {
    cargo_ark::main(std::env::args_os().collect())
}
