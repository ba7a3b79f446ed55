//! `cargo ark`'s integration tests: one module per area, all in one test binary
//! so wasmtime is linked once rather than once per file (as in wasmtime's own
//! `tests/all`). Run one area with `cargo test -p cargo-ark --test all <module>::`.

mod cargo_flags;
mod cli;
mod container;
mod json_output;
mod prebuilt;
mod publish;
mod run;
mod sign_verify;
