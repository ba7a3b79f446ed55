//! # arkline
//!
//! An embeddable pipeline-and-reconcile engine whose pipeline steps are isolated
//! WebAssembly components ("bizes"). Several named pipeline engines — each with
//! its own bizes, grants, pipelines, quotas and secrets — run merged in one
//! [`Container`], share one isolation runtime and one store, and change while
//! they run.
//!
//! ## Where to start
//!
//! 1. Build a [`Container`] over a data dir (the embedded redb store) or a
//!    [`Store`] of your own, and get an [`Engine`] from it by name.
//! 2. Give the engine bizes: [`Engine::deploy_biz`] with the bytes of an `.ark`
//!    made by `cargo ark package` (kept across restarts), or
//!    [`Container::deploy_archive`] with a whole `.arkc` made by
//!    `cargo ark container`.
//! 3. Apply pipelines ([`Engine::apply_pipeline_yaml`]), then
//!    [`Engine::trigger`] runs and [`Engine::wait`] for them, or follow them
//!    ([`Engine::watch_execution`], [`Engine::follow_logs`]).
//!
//! This example runs as it is: a container on a memory store, one engine, one
//! pipeline whose biz is not installed, so the execution fails at resolution and
//! says why.
//!
//! ```
//! use std::sync::Arc;
//! use arkline::model::ExecutionPhase;
//! use arkline::{Container, MemoryStore, TriggerRequest};
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let container = Container::builder().store(Arc::new(MemoryStore::new())).build()?;
//! let engine = container.engine("team-a").await?;
//! engine
//!     .apply_pipeline_yaml(
//!         "hello.yaml",
//!         "name: hello\nstages:\n  - name: greet\n    steps:\n      - name: say\n        uses: shell\n        with: { script: echo hi }\n",
//!     )
//!     .await?;
//! let exec = engine.trigger("hello", TriggerRequest::manual()).await?;
//! let done = engine.wait(&exec.metadata.name).await?;
//! assert_eq!(done.status.phase, ExecutionPhase::Failed);
//! assert!(done.status.reason.contains("biz `shell` is not installed"));
//! container.shutdown().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! ## Layers
//!
//! Each module knows only those below it (a test, `core/tests/all/layers.rs`,
//! keeps this true):
//!
//! - [`model`]: the resources (`PipelineSetting`, `Pipeline`, `PipelineExecution`,
//!   `Secret`, `BizDeployment`), the pipeline YAML with precise diagnostics,
//!   validation and the expression language;
//! - [`store`]: Kubernetes-API-shaped storage with a store-wide revision, CAS,
//!   watches and the typed [`store::Api`], in memory or in an embedded redb file;
//! - [`controller`]: the generic reconcile runtime driven by store watches;
//! - [`host`]: the capabilities given to guests (`log`, `process`, `http`,
//!   `cache`, `host-call`), what a biz requests and an engine grants, and the
//!   `arkline:step` bindings;
//! - [`ark`]: the `.ark` archive format (reader, writer, manifest, signatures);
//! - [`runtime`]: the isolation runtime — wasmtime, compiled components, per-engine
//!   [`runtime::BizRegistry`], leases and step calls;
//! - the execution machinery (private: reconcilers, admission, logs, secrets,
//!   workspaces), reached through [`Engine`];
//! - [`engine`] and [`container`]: the embedding API, and the `.arkc` format
//!   ([`container::archive`]).
//!
//! [`native`] loads native plugins (trusted shared libraries serving
//! `host-call`); [`metrics`] counts what the CLI exports.
//!
//! Step plugins are written with `arkline-sdk` and packaged by `cargo ark package`
//! into `.ark` archives, which this crate reads and verifies:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ark = arkline::Ark::open("target/ark/shell-0.1.0.ark")?;
//! println!("{} {} serves {} step type(s)", ark.manifest.name, ark.manifest.version,
//!     ark.manifest.steps.len());
//! let info = arkline::runtime::inspect_component(&ark.component)?;
//! assert_eq!(info.steps.len(), ark.manifest.steps.len());
//! # Ok(()) }
//! ```
//!
//! Pipelines parse with every mistake reported at once:
//!
//! ```
//! let yaml = "name: hello\nstages:\n  - name: greet\n    steps:\n      - name: say\n        uses: shell\n        with: { script: echo hi }\n";
//! let pipeline = arkline::model::parse_pipeline("hello.yaml", yaml).expect("valid");
//! assert_eq!(pipeline.metadata.name, "hello");
//! ```

#![deny(missing_docs)]

pub mod ark;
pub mod container;
pub mod controller;
pub mod engine;
pub mod host;
pub mod metrics;
pub mod model;
pub mod native;
mod pipeline;
pub mod provenance;
pub mod runtime;
pub mod store;

pub use ark::{ArchiveError, Ark, Manifest};
pub use container::{Container, ContainerBuilder, ContainerError, ExecOptions};
pub use controller::{Action, Controller};
pub use engine::{
    DeployError, Deploying, Engine, EngineError, PendingBiz, RepoEvent, RepoOutcome, RepoRun,
    TriggerError, TriggerRequest,
};
pub use host::Capabilities;
pub use model::{Pipeline, PipelineExecution, PipelineSetting};
pub use pipeline::FromRepo;
pub use runtime::{BizInfo, ComponentError, Runtime, RuntimeConfig};
pub use store::{MemoryStore, RedbStore, Store};
