//! The `.ark` archive: one biz (a step plugin component) with its manifest.
//!
//! An `.ark` is a deterministic zip: `ark.toml` (the [`Manifest`]) at the root, the
//! component, one JSON Schema file per step type, and optionally `ark.sig`. Every
//! entry but `ark.toml` and `ark.sig` is pinned in the manifest by SHA-256 and size,
//! so a signature over `ark.toml` covers the whole archive.
//!
//! [`write_ark`] produces byte-identical archives from identical inputs; [`Ark`]
//! reads one back, checking the format version and every digest.
//!
//! The isolation runtime lives here too: a process-wide [`Runtime`] (one wasmtime
//! engine, pooling allocator, epoch ticker, [`CompiledCache`]) and, per engine, a
//! [`BizRegistry`] that installs bizes, activates and switches versions, hands out
//! [`BizLease`]s and uninstalls. Every step call ([`BizLease::invoke`]) runs in a
//! fresh store and ends in a [`StepReport`]: outputs, or a [`StepFailure`] such as a
//! [`StepFault`] the host caught.

mod archive;
mod cancel;
mod compiled;
mod component;
pub mod container_archive;
mod grant;
mod invoke;
mod manifest;
mod registry;
mod runtime;
mod signature;

pub use archive::{ArchiveError, Ark, ReadLimits, write_ark, write_deterministic_zip};
pub use cancel::CancelToken;
pub use compiled::{CacheOutcome, CompiledCache};
pub use component::{
    ComponentError, ComponentInfo, DescribedStep, describe_component, describe_engine,
    inspect_component,
};
pub use container_archive::{
    BizRef, CONTAINER_FORMAT_VERSION, CONTAINER_MANIFEST_PATH, ContainerArchive,
    ContainerArchiveError, ContainerManifest, EngineBiz, EngineSpec, SharedBiz, write_container,
};
pub use grant::{GrantError, merge_grants, parse_grant};
pub use invoke::{
    CallContext, CallLimits, StepCall, StepFailure, StepFault, StepOutcome, StepReport,
    WORKSPACE_GUEST_PATH,
};
pub use manifest::{
    BuildInfo, Capabilities, ComponentEntry, FORMAT_VERSION, FileEntry, MANIFEST_PATH, Manifest,
    ManifestError, SIGNATURE_PATH, StepEntry, is_valid_name, sha256_hex,
};
pub use registry::{
    Activation, BizInfo, BizLease, BizRegistry, BizState, InstallError, LifecycleError,
    LifecycleEvent, UninstallMode, parse_reference,
};
pub use runtime::{PreparedBiz, Runtime, RuntimeConfig, RuntimeError};
pub use signature::{KeyError, PublicKey, SecretKey, SignaturePolicy, SignatureStatus};
