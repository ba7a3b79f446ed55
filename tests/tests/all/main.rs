//! arkline's cross-crate integration tests: one module per area, all in one test
//! binary so wasmtime is linked once rather than once per file (as in wasmtime's
//! own `tests/all`). Run one area with
//! `cargo test -p arkline-tests --test all <module>::`.
//!
//! `tests/crash_recovery.rs` is a binary of its own (`harness = false`): it
//! re-runs itself as a child process that is SIGKILLed mid-step, with its own
//! `main`.

mod cache_capability;
mod cluster;
mod deploy;
mod deployment;
mod etcd;
mod executions;
mod forge;
mod graphs;
mod http_capability;
mod images;
mod native_plugins;
mod plugins;
mod polyglot;
mod process_capability;
mod provenance;
mod runtime;
mod shell_plugin;
mod source;
mod upgrade;
