//! arkline's integration tests: one module per area, all in one test binary so
//! wasmtime is linked once rather than once per file (as in wasmtime's own
//! `tests/all`). Run one area with `cargo test -p arkline --test all <module>::`.
//!
//! Fixtures: `../invalid` (the diagnostics corpus); insta snapshots are in
//! `snapshots/`, named `all__<module>__<name>.snap`.
//!
//! `tests/crash_safety.rs` is a binary of its own (`harness = false`): it re-runs
//! itself as a child process that is SIGKILLed, with its own `main`.

mod archive_attacks;
mod arkc_attacks;
mod config_schema;
mod conformance;
mod controller;
mod diagnostics;
mod examples;
mod layers;
mod properties;
mod redb_store;
mod resources;
mod runtime;
mod schema;
mod typed_api;
mod watcher;
mod work_queue;
