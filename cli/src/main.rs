//! The `arkline` binary. Everything lives in the `arkline_cli` library so tests
//! and the `ctl` client can share it; this is only the entry point.

fn main() -> std::process::ExitCode {
    arkline_cli::main()
}
