//! # arkline
//!
//! An embeddable pipeline-and-reconcile engine whose pipeline steps are isolated
//! WebAssembly components ("biz" modules). This crate is the library:
//!
//! - [`model`]: the resources (`PipelineSetting`, `Pipeline`, `PipelineExecution`,
//!   `Secret`, `BizDeployment`), the pipeline YAML with precise diagnostics,
//!   validation and the expression language;
//! - [`store`]: Kubernetes-API-shaped storage with a store-wide revision, CAS and
//!   watches, in memory or in an embedded redb file;
//! - [`controller`]: the generic reconcile runtime driven by store watches;
//! - [`ark`]: the `.ark` archive format of step plugins;
//! - [`ark`] also holds the isolation runtime: [`ark::Runtime`], [`ark::BizRegistry`],
//!   [`ark::BizLease::invoke`];
//! - [`host`]: the host side of the step API (`arkline:step` WIT bindings) and the
//!   capabilities given to guests (`log`, `process`, `http`, `cache`, `host-call`);
//! - [`native`]: native plugins (trusted shared libraries serving `host-call`);
//! - [`pipeline`]: executions — admission, the execution and pipeline reconcilers,
//!   durable step logs, secrets, workspaces and step caches, cron;
//! - [`Container`] and [`Engine`]: the embedding API (see [`container`]).
//!
//! Step plugins are written with `arkline-sdk` and packaged by `cargo ark package`
//! into `.ark` archives, which this crate reads and verifies:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ark = arkline::ark::Ark::open("target/ark/shell-0.1.0.ark")?;
//! println!("{} {} serves {} step type(s)", ark.manifest.name, ark.manifest.version,
//!     ark.manifest.steps.len());
//! let info = arkline::ark::inspect_component(&ark.component)?;
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
pub mod pipeline;
pub mod runtime;
pub mod store;

pub use ark::{ArchiveError, Ark, Manifest};
pub use runtime::ComponentError;
pub use container::{Container, ContainerBuilder, ContainerError};
pub use controller::{Action, Controller};
pub use engine::{Engine, EngineError};
pub use model::{Pipeline, PipelineExecution, PipelineSetting};
pub use pipeline::TriggerRequest;
pub use store::{MemoryStore, RedbStore, Store};
