//! Executions: the reconcilers that run pipelines, and what they need — durable
//! step logs, secrets, workspaces and step caches, cron schedules.
//!
//! - Admission (`admission.rs`): one task per engine follows its executions in
//!   revision order and admits the oldest `Queued` ones while the engine's
//!   `executor_quota` has room, choosing a node (cache affinity).
//! - The execution reconciler (`reconcile.rs`) starts a driver (`executor.rs`)
//!   for each admitted execution of this node; the driver resolves and leases the
//!   bizes, runs stages in order and the steps of a stage in parallel, then
//!   `finally`, writing every transition to the store before acting on it, so a
//!   restarted process resumes where it stopped. Finished executions are cleaned
//!   up (workspace) and retained per the settings.
//! - The pipeline reconciler keeps each pipeline's status (`Resolved`, last
//!   execution and state, recent nodes) and fires cron triggers (`trigger.rs`).
//! - The biz-deployment reconciler (`deployment.rs`) keeps the engine's bizes
//!   as its `BizDeployment` says.
//!
//! The modules form a DAG: `context` (what one engine's machinery shares) and
//! `error` at the bottom; `trigger`, `admission`, `executor`, `deployment` and
//! `reconcile` above them; this file wires the controllers.

mod admission;
mod arks;
mod context;
pub(crate) mod deployment;
mod error;
mod executor;
pub(crate) mod forge;
pub(crate) mod logs;
pub(crate) mod pool;
mod reconcile;
pub(crate) mod remote;
pub(crate) mod schedule;
pub(crate) mod secrets;
pub(crate) mod source;
mod trigger;
pub(crate) mod workspace;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::controller::{Action, Controller};
use crate::model::{ExecutionPhase, Pipeline, PipelineExecution};
use crate::store::{Api, LabelSelector, ObjectRef};

pub use arks::ArkStore;
pub(crate) use context::EngineCore;
pub use context::PendingBiz;
pub use context::{
    CALL_DEPTH_LABEL, CALLED_BY_LABEL, CALLED_BY_STEP_LABEL, ExecOptions, PIPELINE_LABEL,
    SETTINGS_NAME,
};
pub use deployment::Deploying;
pub use error::{DeployError, ReconcileError, TriggerError};
pub use logs::{LogArchive, LogError, StoredLine};
use reconcile::{reconcile_execution, reconcile_pipeline};
pub use schedule::{Clock, ManualClock, SystemClock};
pub use secrets::{SecretError, SecretKey};
pub(crate) use trigger::trigger;
pub use trigger::{FromRepo, TriggerRequest};

/// Starts the engine's controllers and admission; they stop on `core.shutdown`.
pub(crate) fn start(
    core: Arc<EngineCore>,
    timer_keys: tokio::sync::mpsc::UnboundedReceiver<ObjectRef>,
    pokes: tokio::sync::mpsc::UnboundedReceiver<ObjectRef>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let shutdown = {
        let token = core.shutdown.clone();
        move || {
            let token = token.clone();
            async move { token.cancelled().await }
        }
    };

    tasks.push(tokio::spawn(admission::run(core.clone())));

    let executions = Controller::<PipelineExecution>::new(core.store.clone())
        .engine(&core.name)
        .concurrency(core.options.concurrency)
        .reconcile_on(tokio_stream_from(pokes))
        .filter_view({
            // A driver of this process owns a running execution's status: its
            // own writes need no reconcile (an abort, a deletion or the end do;
            // the end as the poke the driver sends once it is gone, so its
            // last write, seen while it still cleans up, is dropped too). A
            // queued execution is admission's: only an abort concerns the
            // reconciler. Read from a view: most events are those writes, and
            // decoding a whole execution (its pipeline's snapshot included)
            // to drop it cost more than the reconcile it saves.
            let core = core.clone();
            move |exec: &ExecutionView| {
                let nothing_to_do = match exec.status.phase {
                    ExecutionPhase::Queued => true,
                    _ => core.runs().contains_key(&exec.metadata.name),
                };
                exec.spec.abort || !nothing_to_do
            }
        })
        .graceful_shutdown_on(shutdown());
    tasks.push(tokio::spawn(
        executions
            .run(reconcile_execution, error_policy, core.clone())
            .for_each(|_| async {}),
    ));

    let registry_events = {
        let (rx, store, engine) = (
            core.registry.subscribe(),
            core.store.clone(),
            core.name.clone(),
        );
        // A biz change may resolve or break a pipeline's `uses`; becoming the
        // engine's leader makes this node the one that writes pipeline
        // statuses and fires cron triggers: either way every pipeline is
        // looked at again.
        let biz_changes = futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        });
        let elected = futures::stream::unfold(
            (core.leads.clone(), false),
            |(mut leads, mut led)| async move {
                loop {
                    let leads_now = *leads.borrow_and_update();
                    if leads_now && !led {
                        return Some(((), (leads, true)));
                    }
                    led = leads_now;
                    leads.changed().await.ok()?;
                }
            },
        );
        futures::stream::select(biz_changes, elected)
            .then(move |()| {
                let (store, engine) = (store.clone(), engine.clone());
                async move {
                    let list = Api::<Pipeline>::new(store)
                        .list(Some(&engine), LabelSelector::default())
                        .await
                        .map(|(items, _)| items)
                        .unwrap_or_default();
                    futures::stream::iter(
                        list.into_iter()
                            .map(|p| {
                                ObjectRef::new("Pipeline", &p.metadata.engine, &p.metadata.name)
                            })
                            .collect::<Vec<_>>(),
                    )
                }
            })
            .flatten()
    };
    let deployment_key = ObjectRef::new("BizDeployment", &core.name, deployment::DEPLOYMENT_NAME);
    let lifecycle = futures::stream::unfold(core.registry.subscribe(), |mut rx| async move {
        match rx.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    })
    .map(move |()| deployment_key.clone());
    let deployments = Controller::<crate::model::BizDeployment>::new(core.store.clone())
        .engine(&core.name)
        .concurrency(1)
        .reconcile_on(lifecycle)
        .graceful_shutdown_on(shutdown());
    tasks.push(tokio::spawn(
        deployments
            .run(deployment::reconcile_deployment, error_policy, core.clone())
            .for_each(|_| async {}),
    ));

    let timers = tokio_stream_from(timer_keys);
    let pipelines = Controller::<Pipeline>::new(core.store.clone())
        .engine(&core.name)
        .concurrency(core.options.concurrency.min(8))
        // A burst of finished executions is one status update per pipeline
        // per window, not one per execution (a pipeline's own changes, cron
        // timers, biz changes and leadership run at once).
        .debounce(PIPELINE_DEBOUNCE)
        .watches_view::<PipelineExecution, _, _, _>({
            let core = core.clone();
            move |exec: &ExecutionView| {
                if exec.status.phase.is_finished() {
                    core.note_finished(
                        &exec.spec.pipeline,
                        context::FinishedRun {
                            run: exec.spec.run,
                            name: exec.metadata.name.clone(),
                            phase: exec.status.phase,
                            node: exec.status.node.clone(),
                        },
                    );
                }
                pipeline_of_finished_execution(exec)
            }
        })
        .reconcile_on(registry_events)
        .reconcile_on(timers)
        .graceful_shutdown_on(shutdown());
    tasks.push(tokio::spawn(
        pipelines
            .run(reconcile_pipeline, error_policy, core)
            .for_each(|_| async {}),
    ));
    tasks
}

/// How long the pipeline controller holds a key queued by an execution's
/// event (one finished) before it runs.
const PIPELINE_DEBOUNCE: Duration = Duration::from_millis(250);

/// Every controller's error policy: retry soon (the queue's backoff grows the delay).
fn error_policy<R>(_: Arc<R>, e: &ReconcileError, _: Arc<EngineCore>) -> Action {
    tracing::debug!(error = %e, "reconcile failed; retrying");
    Action::requeue(Duration::from_millis(50))
}

fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|k| (k, rx)) })
}

/// The fields of a stored execution the controllers' filters read; the rest
/// (the pipeline's snapshot, the steps' states) is skipped, not decoded.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ExecutionView {
    pub(crate) metadata: ViewMeta,
    pub(crate) spec: ExecutionSpecView,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) status: ExecutionStatusView,
}

/// An object's name, engine, and what admission orders by.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ViewMeta {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) engine: String,
    #[serde(default)]
    pub(crate) created: Option<chrono::DateTime<chrono::Utc>>,
}

/// See [`ExecutionView`].
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ExecutionSpecView {
    pub(crate) pipeline: String,
    pub(crate) run: u64,
    #[serde(default)]
    pub(crate) abort: bool,
    #[serde(default)]
    pub(crate) concurrency: Option<String>,
}

/// See [`ExecutionView`].
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ExecutionStatusView {
    #[serde(default)]
    pub(crate) phase: ExecutionPhase,
    #[serde(default)]
    pub(crate) node: Option<String>,
}

/// A `null` status reads as the default one, as in [`crate::model::Resource::from_json`].
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// An execution's pipeline, when the change matters to the pipeline's status
/// (the execution finished).
fn pipeline_of_finished_execution(exec: &ExecutionView) -> Vec<ObjectRef> {
    if exec.status.phase.is_finished() {
        vec![ObjectRef::new(
            "Pipeline",
            &exec.metadata.engine,
            &exec.spec.pipeline,
        )]
    } else {
        vec![]
    }
}

/// Checks the settings fields that have a range.
///
/// # Errors
///
/// What is wrong and how to fix it.
pub(crate) fn check_settings(spec: &crate::model::PipelineSettingSpec) -> Result<(), String> {
    if let Some(weight) = spec.cpu_weight
        && !(1..=crate::runtime::MAX_CPU_WEIGHT).contains(&weight)
    {
        return Err(format!(
            "`cpu_weight` is {weight}; give a weight from 1 to {} (100 is the default share)",
            crate::runtime::MAX_CPU_WEIGHT
        ));
    }
    if let Some(repo) = &spec.pipelines_from_repo {
        crate::model::check_repository_url(&repo.repository)
            .map_err(|why| format!("`pipelines_from_repo.repository` {why}"))?;
        let dir = repo.path.rsplit_once('/').map_or("", |(d, _)| d);
        if repo.path.is_empty() || repo.path.ends_with('/') || dir.contains(['*', '?', '[', '{']) {
            return Err(format!(
                "`pipelines_from_repo.path` is `{}`; give a directory and a file pattern, \
                 with `*` in the file name only (`.arkline/*.yaml`)",
                repo.path
            ));
        }
        if repo.webhook_secret.is_empty() {
            return Err(
                "`pipelines_from_repo.webhook_secret` is empty; name the engine secret \
                        holding the repository webhook's secret"
                    .into(),
            );
        }
    }
    if let Some(forge) = &spec.forge {
        if !(forge.api_url.starts_with("https://") || forge.api_url.starts_with("http://")) {
            return Err(format!(
                "`forge.api_url` is `{}`; give the API's http(s) URL, e.g. `https://api.github.com`",
                forge.api_url
            ));
        }
        if forge.token_secret.trim().is_empty() {
            return Err(
                "`forge.token_secret` is empty; name the engine secret holding the API token"
                    .into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod settings_tests {
    use super::check_settings;
    use crate::model::PipelineSettingSpec;

    #[test]
    fn cpu_weight_must_be_in_cgroup_range() {
        let with = |w| PipelineSettingSpec {
            cpu_weight: w,
            ..PipelineSettingSpec::default()
        };
        assert!(check_settings(&with(None)).is_ok());
        assert!(check_settings(&with(Some(1))).is_ok());
        assert!(check_settings(&with(Some(10_000))).is_ok());
        for bad in [0, 10_001] {
            let err = check_settings(&with(Some(bad))).expect_err("out of range");
            assert!(
                err.contains(&format!("`cpu_weight` is {bad}")) && err.contains("from 1 to 10000"),
                "{err}"
            );
        }
    }
}
