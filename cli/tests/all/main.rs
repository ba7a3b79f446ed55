//! The `arkline` binary's integration tests: one module per command or area, all
//! in one test binary so wasmtime is linked once rather than once per file (as in
//! wasmtime's own `tests/all`). Run one area with
//! `cargo test -p arkline-cli --test all <module>::`.

mod approvals;
mod bombs;
mod color;
mod ctl;
mod dashboard;
mod etcd_nodes;
mod etcd_store;
mod hooks;
mod limits;
mod listing;
mod metrics;
mod provenance;
mod registry_hooks;
mod repo_hooks;
mod run;
mod serve;
mod size_flags;
mod support;
mod validate;
