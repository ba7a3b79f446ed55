//! Executions: the reconcilers that run pipelines, and what they need — durable
//! step logs, secrets, workspaces and step caches, cron schedules.
//!
//! - Admission ([`admission`]): one task per engine follows its executions in
//!   revision order and admits the oldest `Queued` ones while the engine's
//!   `executor_quota` has room, choosing a node (cache affinity).
//! - The execution reconciler starts a driver for each admitted execution of this
//!   node; the driver resolves and leases the bizes, runs stages in order and the
//!   steps of a stage in parallel, then `finally`, writing every transition to the
//!   store before acting on it, so a restarted process resumes where it stopped.
//!   Finished executions are cleaned up (workspace) and retained per the settings.
//! - The pipeline reconciler keeps each pipeline's status (`Resolved`, last
//!   execution and state, recent nodes) and fires cron triggers.

pub mod admission;
pub(crate) mod core;
pub mod deployment;
mod executor;
pub mod logs;
pub mod pool;
pub mod reconcile;
pub mod schedule;
pub mod secrets;
pub mod workspace;

pub use self::core::{ExecOptions, PIPELINE_LABEL, SETTINGS_NAME};
pub use reconcile::{ReconcileError, TriggerError, TriggerRequest};
