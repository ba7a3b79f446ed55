//! The `.ark` archive format: one biz (a step plugin component) with its manifest.
//!
//! An `.ark` is a deterministic zip: `ark.toml` (the [`Manifest`]) at the root, the
//! component, one JSON Schema file per step type, and optionally `ark.sig`. Every
//! entry but `ark.toml` and `ark.sig` is pinned in the manifest by SHA-256 and size,
//! so a signature over `ark.toml` covers the whole archive.
//!
//! [`write_ark`] produces byte-identical archives from identical inputs; [`Ark`]
//! reads one back through the hardened reader, checking the format version and
//! every digest; [`SignaturePolicy`] decides which signatures an engine accepts.
//!
//! This module is the format only: it does not run components (that is
//! [`crate::runtime`]) and knows nothing of pipelines (the `.arkc`, which carries
//! pipelines, is [`crate::container::archive`]).

mod archive;
mod manifest;
pub mod producers;
mod signature;

pub(crate) use archive::read_entries_with;
pub use archive::{ArchiveError, Ark, ReadLimits, write_ark, write_deterministic_zip};
pub use manifest::{
    BuildInfo, ComponentEntry, FORMAT_VERSION, FileEntry, MANIFEST_PATH, Manifest, ManifestError,
    SIGNATURE_PATH, StepEntry, is_valid_name, sha256_hex,
};
pub use signature::{KeyError, PublicKey, SecretKey, SignaturePolicy, SignatureStatus};
