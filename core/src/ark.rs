//! The `.ark` archive: one biz (a step plugin component) with its manifest.
//!
//! An `.ark` is a deterministic zip: `ark.toml` (the [`Manifest`]) at the root, the
//! component, one JSON Schema file per step type, and optionally `ark.sig`. Every
//! entry but `ark.toml` and `ark.sig` is pinned in the manifest by SHA-256 and size,
//! so a signature over `ark.toml` covers the whole archive.
//!
//! [`write_ark`] produces byte-identical archives from identical inputs; [`Ark`]
//! reads one back, checking the format version and every digest.

mod archive;
mod component;
mod manifest;
mod signature;

pub use archive::{ArchiveError, Ark, ReadLimits, write_ark, write_deterministic_zip};
pub use component::{
    ComponentError, ComponentInfo, DescribedStep, describe_component, describe_engine,
    inspect_component,
};
pub use manifest::{
    BuildInfo, Capabilities, ComponentEntry, FORMAT_VERSION, FileEntry, MANIFEST_PATH, Manifest,
    ManifestError, SIGNATURE_PATH, StepEntry, is_valid_name, sha256_hex,
};
pub use signature::{KeyError, PublicKey, SecretKey, SignaturePolicy, SignatureStatus};
