//! What every part of one engine's execution machinery shares.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::{PipelineSetting, PipelineSettingSpec};
use crate::pipeline::logs::LogStore;
use crate::pipeline::schedule::{Clock, Timers};
use crate::pipeline::secrets::Secrets;
use crate::pipeline::workspace::Workspaces;
use crate::runtime::{BizRegistry, CancelToken};
use crate::store::{Api, Cluster, ObjectRef, Store, StoreError};

/// The name of the [`PipelineSetting`] an engine reads (one per engine).
pub const SETTINGS_NAME: &str = "default";

/// The label every execution carries with its pipeline's name.
pub const PIPELINE_LABEL: &str = "arkline.dev/pipeline";

/// Label of an execution started by a `pipeline:` step: the calling execution.
pub const CALLED_BY_LABEL: &str = "arkline.dev/called-by";

/// Label of an execution started by a `pipeline:` step: the calling step.
pub const CALLED_BY_STEP_LABEL: &str = "arkline.dev/called-by-step";

/// Label of an execution started by a `pipeline:` step: how deep the calls go
/// (1 for a call from an execution nobody called).
pub const CALL_DEPTH_LABEL: &str = "arkline.dev/call-depth";

/// Knobs of the execution machinery that are not engine settings.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Cap of one step's durable log, all attempts together.
    pub step_log_cap: u64,
    /// Cap of one step cache archive when the settings give none.
    pub cache_entry_cap: u64,
    /// Keep workspaces of finished executions (for debugging).
    pub keep_workspaces: bool,
    /// Most reconciles of one kind running at once.
    pub concurrency: usize,
    /// How long an execution resumed after a restart waits for the exact biz
    /// versions it resolved before to be installed again, before failing.
    pub resume_grace: std::time::Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            step_log_cap: 8 << 20,
            cache_entry_cap: 1 << 30,
            keep_workspaces: false,
            concurrency: 64,
            resume_grace: std::time::Duration::from_secs(60),
        }
    }
}

/// A running execution driver of this process.
#[derive(Debug)]
pub(crate) struct RunHandle {
    /// Cancelled to abort the execution (running steps interrupted, `finally` runs).
    pub(crate) abort: CancelToken,
    /// Notified whenever the execution changes in the store (an approval
    /// step waits on it).
    pub(crate) changed: Arc<tokio::sync::Notify>,
}

/// A finished execution, as the pipeline's status records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FinishedRun {
    pub(crate) run: u64,
    pub(crate) name: String,
    pub(crate) phase: crate::model::ExecutionPhase,
    pub(crate) node: Option<String>,
}

/// A biz version whose install runs in the background
/// ([`Engine::deploy_biz_in_background`](crate::Engine::deploy_biz_in_background)):
/// compiling, or failed (then it is no longer in the desired state, and the
/// record stays until the same version is deployed again or uninstalled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingBiz {
    /// Biz name.
    pub name: String,
    /// Version.
    pub version: semver::Version,
    /// The `arkline:step` versions it declares it works with (its manifest's
    /// `host_api`).
    pub host_api: semver::VersionReq,
    /// SHA-256 of its component.
    pub sha256: String,
    /// Its step types.
    pub step_types: Vec<String>,
    /// Its grants, in the grant syntax.
    pub grants: Vec<String>,
    /// When its install started.
    pub since: chrono::DateTime<chrono::Utc>,
    /// Why the install failed; `None` while it compiles.
    pub failed: Option<String>,
    /// The SHA-256 of its archive (which deploy this is).
    pub archive: String,
}

/// One engine's execution machinery.
#[derive(Debug)]
pub(crate) struct EngineCore {
    pub(crate) name: String,
    pub(crate) node: String,
    /// The nodes sharing the store.
    pub(crate) cluster: Arc<dyn Cluster>,
    /// Whether this node leads the engine: runs its admission, cron
    /// triggers, pipeline status and retention.
    pub(crate) leads: tokio::sync::watch::Receiver<bool>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) registry: BizRegistry,
    pub(crate) logs: LogStore,
    pub(crate) workspaces: Workspaces,
    pub(crate) secrets: Secrets,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) options: ExecOptions,
    pub(crate) timers: Timers<ObjectRef>,
    /// Executions driven by this process now, by name.
    pub(crate) runs: Mutex<HashMap<String, RunHandle>>,
    /// The driver tasks of `runs`, joined when the engine stops (so no task
    /// holds the store after a shutdown).
    pub(crate) drivers: Mutex<tokio::task::JoinSet<()>>,
    /// Stops drivers on shutdown (steps interrupted; executions stay `Running`
    /// and resume on the next start).
    pub(crate) shutdown: CancelToken,
    /// Asks the execution reconciler to look at an execution again (a driver
    /// that ended, so its cleanup and retention run).
    pub(crate) pokes: tokio::sync::mpsc::UnboundedSender<ObjectRef>,
    /// When this engine started in this process: executions created before it
    /// predate the process, and may wait for their bizes to be installed again.
    pub(crate) started: chrono::DateTime<chrono::Utc>,
    /// The container's step-call slots, shared fairly with the other engines.
    pub(crate) pool: crate::pipeline::pool::WorkerPool,
    /// The container's uploaded archives, by digest.
    pub(crate) arks: crate::pipeline::arks::ArkStore,
    /// Next run number per pipeline handed out by this process.
    pub(crate) run_counters: Mutex<HashMap<String, u64>>,
    /// The newest finished execution seen per pipeline (from the pipeline
    /// controller's watch of executions), for the pipeline's status.
    pub(crate) finished_runs: Mutex<HashMap<String, FinishedRun>>,
    /// The container's counters (step attempt durations are observed here).
    pub(crate) metrics: crate::metrics::Metrics,
    /// Serialises changes of the engine's bizes: an API change (desired state,
    /// then registry) and a pass of the deployment reconciler never interleave,
    /// so the reconciler never acts on a desired state older than the registry.
    pub(crate) deploy_lock: tokio::sync::Mutex<()>,
    /// Bizes installing in the background, and background installs that failed.
    pub(crate) pending: Mutex<BTreeMap<(String, semver::Version), PendingBiz>>,
}

impl EngineCore {
    pub(crate) fn runs(&self) -> MutexGuard<'_, HashMap<String, RunHandle>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a driver task, tracked in `drivers` (finished ones are reaped).
    pub(crate) fn spawn_driver(&self, driver: impl Future<Output = ()> + Send + 'static) {
        let mut drivers = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
        while drivers.try_join_next().is_some() {}
        drivers.spawn(driver);
    }

    /// Takes the driver tasks started so far (to join them on a stop).
    pub(crate) fn take_drivers(&self) -> tokio::task::JoinSet<()> {
        std::mem::take(&mut *self.drivers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Hands out the next run number of `pipeline`, never below `floor` (the
    /// pipeline's recorded `next_run`).
    pub(crate) fn next_run(&self, pipeline: &str, floor: u64) -> u64 {
        let mut counters = self.run_counters.lock().unwrap_or_else(|p| p.into_inner());
        let next = counters.entry(pipeline.to_owned()).or_insert(1);
        *next = (*next).max(floor).max(1);
        let run = *next;
        *next += 1;
        run
    }

    /// Records a finished execution of `pipeline`, unless a newer one was.
    pub(crate) fn note_finished(&self, pipeline: &str, run: FinishedRun) {
        let mut done = self.finished_runs.lock().unwrap_or_else(|p| p.into_inner());
        match done.get_mut(pipeline) {
            Some(newest) if newest.run > run.run => {}
            Some(newest) => *newest = run,
            None => {
                done.insert(pipeline.to_owned(), run);
            }
        }
    }

    /// The newest finished execution of `pipeline` seen by this process.
    pub(crate) fn last_finished(&self, pipeline: &str) -> Option<FinishedRun> {
        let done = self.finished_runs.lock().unwrap_or_else(|p| p.into_inner());
        done.get(pipeline).cloned()
    }

    fn pending_map(&self) -> MutexGuard<'_, BTreeMap<(String, semver::Version), PendingBiz>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The background install of `name@version`, compiling or failed.
    pub(crate) fn pending(&self, name: &str, version: &semver::Version) -> Option<PendingBiz> {
        self.pending_map()
            .get(&(name.to_owned(), version.clone()))
            .cloned()
    }

    /// Background installs, compiling or failed, by name and version.
    pub(crate) fn pending_list(&self) -> Vec<PendingBiz> {
        self.pending_map().values().cloned().collect()
    }

    pub(crate) fn set_pending(&self, pending: PendingBiz) {
        self.pending_map()
            .insert((pending.name.clone(), pending.version.clone()), pending);
    }

    pub(crate) fn remove_pending(
        &self,
        name: &str,
        version: &semver::Version,
    ) -> Option<PendingBiz> {
        self.pending_map()
            .remove(&(name.to_owned(), version.clone()))
    }

    /// Removes the background install of `name@version` if it is `ours`
    /// (not a newer deploy of the same version).
    pub(crate) fn remove_pending_if(
        &self,
        name: &str,
        version: &semver::Version,
        ours: impl Fn(&PendingBiz) -> bool,
    ) {
        let mut pending = self.pending_map();
        let key = (name.to_owned(), version.clone());
        if pending.get(&key).is_some_and(ours) {
            pending.remove(&key);
        }
    }

    /// Records why the background install of `name@version` failed, if it
    /// is `ours`.
    pub(crate) fn fail_pending_if(
        &self,
        name: &str,
        version: &semver::Version,
        ours: impl Fn(&PendingBiz) -> bool,
        reason: String,
    ) {
        if let Some(p) = self
            .pending_map()
            .get_mut(&(name.to_owned(), version.clone()))
            && ours(p)
        {
            p.failed = Some(reason);
        }
    }

    /// Forgets a failed background install of `name@version` (deployed again).
    pub(crate) fn clear_failed(&self, name: &str, version: &semver::Version) {
        let mut pending = self.pending_map();
        let key = (name.to_owned(), version.clone());
        if pending.get(&key).is_some_and(|p| p.failed.is_some()) {
            pending.remove(&key);
        }
    }

    /// Whether this node leads the engine now.
    pub(crate) fn leads(&self) -> bool {
        *self.leads.borrow()
    }

    /// The engine's settings (defaults when none were applied).
    pub(crate) async fn settings(&self) -> Result<PipelineSettingSpec, StoreError> {
        Ok(Api::<PipelineSetting>::new(self.store.clone())
            .get(&self.name, SETTINGS_NAME)
            .await?
            .map(|s| s.spec)
            .unwrap_or_default())
    }
}
