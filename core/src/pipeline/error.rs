//! Why the execution machinery's operations fail.

use crate::ark::ArchiveError;
use crate::host::GrantError;
use crate::model::ParamError;
use crate::runtime::InstallError;
use crate::store::StoreError;

/// Why a biz could not be deployed. Each variant names the biz (`name@version`)
/// where the archive was readable; callers match on the variant to tell a bad
/// request (archive, grant), a conflict (version clash) and a fault of the
/// host (keeping the file, the store) apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// The bytes are not a valid `.ark` (or it fails its checks).
    #[error("the archive is not a valid .ark: {0}")]
    Archive(#[source] ArchiveError),
    /// A grant does not parse.
    #[error("{biz}: {source}")]
    Grant {
        /// `name@version`.
        biz: String,
        /// The grant's problem.
        source: GrantError,
    },
    /// The archive's signature is bad, or missing or by an untrusted key where
    /// the engine's settings (`require_signed_bizes`, `trusted_keys`) want one.
    #[error("{biz} is refused by engine `{engine}`'s signature policy: {source}")]
    Signature {
        /// `name@version`.
        biz: String,
        /// Engine.
        engine: String,
        /// What is wrong with the signature.
        source: ArchiveError,
    },
    /// The same `name@version` is installed with a different component.
    #[error(
        "{biz}@{version} is already installed with a different component: publish a new version"
    )]
    VersionClash {
        /// Biz name.
        biz: String,
        /// Version.
        version: String,
    },
    /// The archive could not be kept in the archive store.
    #[error("cannot keep the archive of {biz} in {location}: {source}")]
    Keep {
        /// `name@version`.
        biz: String,
        /// The archive store (its directory, and its remote store if any).
        location: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component did not install (it does not compile or link, or the
    /// registry refused it).
    #[error(transparent)]
    Install(InstallError),
    /// The engine's desired state could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The store failed or a write conflicted.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Starting a cron run failed.
    #[error("cron trigger: {0}")]
    Trigger(#[from] TriggerError),
}

/// Why a trigger was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TriggerError {
    /// No such pipeline in the engine.
    #[error("pipeline `{pipeline}` does not exist in engine `{engine}`: apply it first")]
    NoPipeline {
        /// Engine.
        engine: String,
        /// Pipeline.
        pipeline: String,
    },
    /// The params do not match the pipeline's declarations.
    #[error("pipeline `{pipeline}` refuses these params: {}", .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Params {
        /// Pipeline.
        pipeline: String,
        /// Every problem.
        problems: Vec<ParamError>,
    },
    /// The pipeline's `concurrency.group` cannot be worked out for this run.
    #[error(
        "pipeline `{pipeline}`: the concurrency group `{group}` cannot be worked out: {message}"
    )]
    Group {
        /// Pipeline.
        pipeline: String,
        /// The group as written.
        group: String,
        /// Why.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
