//! The execution and pipeline reconcilers, and triggering a run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::ark::CancelToken;
use crate::controller::{Action, Controller};
use crate::model::pipeline::parse_cron;
use crate::model::resources::set_condition;
use crate::model::{
    Condition, ConditionStatus, ConditionType, ExecutionPhase, ObjectMeta, OwnerRef, ParamError,
    Pipeline, PipelineExecution, PipelineExecutionSpec, Trigger, TriggerKind,
};
use crate::pipeline::core::{EngineCore, PIPELINE_LABEL, RunHandle};
use crate::pipeline::executor;
use crate::pipeline::schedule::cron_due;
use crate::store::{Api, DeleteOptions, LabelSelector, ObjectRef, Requirement, StoreError};

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The store failed or a write conflicted.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Starting a cron run failed.
    #[error("cron trigger: {0}")]
    Trigger(#[from] TriggerError),
}

/// What a trigger asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriggerRequest {
    /// Param values (checked against the pipeline's declarations, defaults filled in).
    pub params: BTreeMap<String, serde_json::Value>,
    /// Event name (`push`, `pull_request`, `tag`, `manual`); `manual` when empty.
    pub event: String,
    /// Branch built.
    pub branch: String,
    /// Commit built.
    pub commit: String,
    /// What started it.
    pub kind: TriggerKind,
    /// Labels added to the execution.
    pub labels: BTreeMap<String, String>,
}

impl TriggerRequest {
    /// A manual trigger with no params.
    pub fn manual() -> Self {
        Self::default()
    }

    /// Sets a param.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.params.insert(name.into(), value.into());
        self
    }

    /// Sets the event.
    pub fn event(mut self, event: impl Into<String>) -> Self {
        self.event = event.into();
        self
    }

    /// Sets the branch.
    pub fn branch(mut self, branch: impl Into<String>) -> Self {
        self.branch = branch.into();
        self
    }

    /// Sets the commit.
    pub fn commit(mut self, commit: impl Into<String>) -> Self {
        self.commit = commit.into();
        self
    }
}

/// Why a trigger was refused.
#[derive(Debug, thiserror::Error)]
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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the next execution of `pipeline`: allocates its run number (CAS on the
/// pipeline's status) and creates `<pipeline>-<run>` in phase `Queued`.
pub(crate) async fn trigger(
    core: &EngineCore,
    pipeline: &str,
    req: TriggerRequest,
) -> Result<PipelineExecution, TriggerError> {
    let pipelines = Api::<Pipeline>::new(core.store.clone());
    let Some(p) = pipelines.get(&core.name, pipeline).await? else {
        return Err(TriggerError::NoPipeline {
            engine: core.name.clone(),
            pipeline: pipeline.to_owned(),
        });
    };
    let params = p
        .spec
        .resolve_params(&req.params)
        .map_err(|problems| TriggerError::Params {
            pipeline: pipeline.to_owned(),
            problems,
        })?;
    // Run numbers come from an in-process counter per pipeline, started from the
    // pipeline's `status.next_run` (which the pipeline reconciler keeps up); the
    // execution's name `<pipeline>-<run>` is the reservation: a number already
    // taken (by another process, or before a restart) is skipped.
    let execs = Api::<PipelineExecution>::new(core.store.clone());
    loop {
        let run = core.next_run(pipeline, p.status.next_run);
        let exec = new_execution(core, &p, pipeline, run, &req, params.clone());
        match execs.create(&exec).await {
            Ok(created) => return Ok(created),
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn new_execution(
    core: &EngineCore,
    p: &Pipeline,
    pipeline: &str,
    run: u64,
    req: &TriggerRequest,
    params: BTreeMap<String, serde_json::Value>,
) -> PipelineExecution {
    let mut meta = ObjectMeta::new(&core.name, format!("{pipeline}-{run}"));
    meta.labels = req.labels.clone();
    meta.labels
        .insert(PIPELINE_LABEL.into(), pipeline.to_owned());
    meta.owners.push(OwnerRef {
        kind: "Pipeline".into(),
        name: pipeline.to_owned(),
        uid: p.metadata.uid.clone(),
    });
    PipelineExecution::new(
        meta,
        PipelineExecutionSpec {
            pipeline: pipeline.to_owned(),
            pipeline_spec: p.spec.clone(),
            run,
            trigger: req.kind,
            params,
            event: if req.event.is_empty() {
                "manual".into()
            } else {
                req.event.clone()
            },
            branch: if req.branch.is_empty() {
                p.spec
                    .source
                    .as_ref()
                    .and_then(|s| s.branch.clone())
                    .unwrap_or_default()
            } else {
                req.branch.clone()
            },
            commit: req.commit.clone(),
            abort: false,
        },
    )
}

/// The execution reconciler.
pub(crate) async fn reconcile_execution(
    exec: Arc<PipelineExecution>,
    core: Arc<EngineCore>,
) -> Result<Action, ReconcileError> {
    let name = exec.metadata.name.clone();
    match exec.status.phase {
        ExecutionPhase::Queued => {
            if exec.spec.abort {
                let now = core.clock.now();
                let mut done = (*exec).clone();
                done.status.phase = ExecutionPhase::Aborted;
                done.status.finished = Some(now);
                done.status.reason = "aborted before it was admitted".into();
                set_condition(
                    &mut done.status.conditions,
                    Condition {
                        kind: ConditionType::Completed,
                        status: ConditionStatus::True,
                        reason: "Aborted".into(),
                        message: done.status.reason.clone(),
                        last_transition: Some(now),
                    },
                );
                Api::<PipelineExecution>::new(core.store.clone())
                    .update_status(&done)
                    .await?;
            }
            Ok(Action::await_change())
        }
        ExecutionPhase::Pending | ExecutionPhase::Running => {
            if exec.status.node.as_ref().is_some_and(|n| *n != core.node) {
                return Ok(Action::await_change());
            }
            if core.shutdown.is_cancelled() {
                return Ok(Action::await_change());
            }
            let mut runs = core.runs();
            match runs.get(&name) {
                Some(handle) => {
                    if exec.spec.abort {
                        handle.abort.cancel();
                    }
                }
                None => {
                    let abort = CancelToken::new();
                    if exec.spec.abort {
                        abort.cancel();
                    }
                    runs.insert(
                        name,
                        RunHandle {
                            abort: abort.clone(),
                        },
                    );
                    tokio::spawn(executor::drive(core.clone(), (*exec).clone(), abort));
                }
            }
            Ok(Action::await_change())
        }
        ExecutionPhase::Succeeded | ExecutionPhase::Failed | ExecutionPhase::Aborted => {
            finished(&exec, &core).await
        }
    }
}

/// Cleanup and retention of a finished execution.
async fn finished(
    exec: &PipelineExecution,
    core: &Arc<EngineCore>,
) -> Result<Action, ReconcileError> {
    let name = &exec.metadata.name;
    if core.runs().contains_key(name) {
        // The driver is still cleaning up; it removes the workspace itself.
        return Ok(Action::await_change());
    }
    if !core.options.keep_workspaces {
        let dir = core.workspaces.path(&core.name, name);
        if dir.exists()
            && let Err(e) = core.workspaces.remove(&core.name, name)
        {
            tracing::warn!(engine = %core.name, execution = %name, error = %e, "cannot remove a finished execution's workspace");
        }
    }
    let settings = core.settings().await?;
    if let Some(keep) = settings.retention.executions {
        let execs = Api::<PipelineExecution>::new(core.store.clone());
        let selector = LabelSelector::everything().and(Requirement::Equals(
            PIPELINE_LABEL.into(),
            exec.spec.pipeline.clone(),
        ));
        let (mut all, _) = execs.list(Some(&core.name), selector).await?;
        all.retain(|e| e.status.phase.is_finished());
        all.sort_by_key(|e| std::cmp::Reverse(e.spec.run));
        for old in all.iter().skip(keep as usize) {
            let _ = core.logs.remove_execution(&core.name, &old.metadata.name);
            match execs
                .delete(&core.name, &old.metadata.name, &DeleteOptions::default())
                .await
            {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    if let (Some(keep), Some(at)) = (settings.retention.logs, exec.status.finished) {
        let expires = at + chrono::Duration::from_std(keep.0).unwrap_or(chrono::Duration::MAX);
        let now = core.clock.now();
        if expires <= now {
            let _ = core.logs.remove_execution(&core.name, name);
        } else if let Ok(left) = (expires - now).to_std() {
            return Ok(Action::requeue(left));
        }
    }
    Ok(Action::await_change())
}

/// The pipeline reconciler: `Resolved`, last execution and state, recent nodes,
/// cron schedules.
pub(crate) async fn reconcile_pipeline(
    p: Arc<Pipeline>,
    core: Arc<EngineCore>,
) -> Result<Action, ReconcileError> {
    let mut status = p.status.clone();
    let now = core.clock.now();

    let problems: Vec<String> = p
        .spec
        .uses()
        .into_iter()
        .filter_map(|uses| {
            let reference = match &uses.req {
                Some(req) => format!("{}@{req}", uses.biz),
                None => uses.biz.clone(),
            };
            match core.registry.resolve(&reference) {
                Err(e) => Some(format!("`{uses}`: {e}")),
                Ok(lease) => {
                    let types = &lease.manifest().steps;
                    match &uses.step {
                        Some(t) if !types.iter().any(|s| &s.id == t) => {
                            Some(format!("`{uses}`: {} has no step type `{t}`", lease.id()))
                        }
                        None if types.len() != 1 => Some(format!(
                            "`{uses}`: {} has {} step types; name one as `{}/<step>`",
                            lease.id(),
                            types.len(),
                            uses.biz
                        )),
                        _ => None,
                    }
                }
            }
        })
        .collect();
    set_condition(
        &mut status.conditions,
        Condition {
            kind: ConditionType::Resolved,
            status: if problems.is_empty() {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: if problems.is_empty() {
                "Resolved".into()
            } else {
                "UnsatisfiedUses".into()
            },
            message: problems.join("; "),
            last_transition: Some(now),
        },
    );

    status.next_run = status.next_run.max(core.peek_next_run(&p.metadata.name));
    if status.next_run > 1 {
        let last = format!("{}-{}", p.metadata.name, status.next_run - 1);
        if let Some(exec) = Api::<PipelineExecution>::new(core.store.clone())
            .get(&core.name, &last)
            .await?
        {
            status.last_execution = Some(last);
            status.last_state = Some(exec.status.phase);
            if let Some(node) = &exec.status.node
                && exec.status.phase != ExecutionPhase::Queued
            {
                let window = core.settings().await?.cache.affinity_window.max(1) as usize;
                status.record_node(node, window);
            }
        }
    }

    let mut fire: Option<(String, Option<String>)> = None;
    let key = ObjectRef::new("Pipeline", &core.name, &p.metadata.name);
    let mut seen = BTreeMap::new();
    for trigger in &p.spec.triggers {
        let Trigger::Cron { schedule, branch } = trigger else {
            continue;
        };
        let Ok(cron) = parse_cron(schedule) else {
            continue;
        };
        let last = status.cron_last.get(schedule).copied().unwrap_or(now);
        let due = cron_due(&cron, last, now);
        let handled = match due.run {
            Some(at) => {
                if due.missed > 1 {
                    tracing::info!(engine = %core.name, pipeline = %p.metadata.name, schedule, missed = due.missed, "missed cron runs collapsed into one");
                }
                fire.get_or_insert((schedule.clone(), branch.clone()));
                at
            }
            None => last,
        };
        seen.insert(schedule.clone(), handled);
        if let Some(next) = due.next {
            core.timers.wake_at(key.clone(), next);
        }
    }
    status.cron_last = seen;
    status.observed_generation = p.metadata.generation;

    if status != p.status {
        let mut updated = (*p).clone();
        updated.status = status;
        Api::<Pipeline>::new(core.store.clone())
            .update_status(&updated)
            .await?;
    }
    if let Some((schedule, branch)) = fire {
        let mut req = TriggerRequest {
            kind: TriggerKind::Cron,
            event: "cron".into(),
            branch: branch.unwrap_or_default(),
            ..TriggerRequest::default()
        };
        req.labels
            .insert("arkline.dev/cron".into(), sanitize_label(&schedule));
        match trigger(&core, &p.metadata.name, req).await {
            Ok(exec) => {
                tracing::info!(engine = %core.name, execution = %exec.metadata.name, schedule, "cron run started");
            }
            Err(TriggerError::Params { problems, .. }) => {
                tracing::warn!(engine = %core.name, pipeline = %p.metadata.name, schedule, problems = ?problems, "cron run not started: params without defaults");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

fn sanitize_label(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

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

    tasks.push(tokio::spawn(crate::pipeline::admission::run(core.clone())));

    let executions = Controller::<PipelineExecution>::new(core.store.clone())
        .engine(&core.name)
        .concurrency(core.options.concurrency)
        .reconcile_on(tokio_stream_from(pokes))
        .filter({
            // A driver of this process owns a running execution's status: its
            // own writes need no reconcile (an abort, a deletion or the end do).
            let core = core.clone();
            move |exec: &PipelineExecution| {
                let driven_here = matches!(
                    exec.status.phase,
                    ExecutionPhase::Pending | ExecutionPhase::Running
                ) && core.runs().contains_key(&exec.metadata.name);
                exec.spec.abort || !driven_here
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
        futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(((), rx)),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        })
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
                        .map(|p| ObjectRef::new("Pipeline", &p.metadata.engine, &p.metadata.name))
                        .collect::<Vec<_>>(),
                )
            }
        })
        .flatten()
    };
    let deployment_key = ObjectRef::new(
        "BizDeployment",
        &core.name,
        crate::pipeline::deployment::DEPLOYMENT_NAME,
    );
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
            .run(
                crate::pipeline::deployment::reconcile_deployment,
                error_policy,
                core.clone(),
            )
            .for_each(|_| async {}),
    ));

    let timers = tokio_stream_from(timer_keys);
    let pipelines = Controller::<Pipeline>::new(core.store.clone())
        .engine(&core.name)
        .concurrency(core.options.concurrency.min(8))
        .watches(pipeline_of_finished_execution)
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

/// An execution's pipeline, when the change matters to the pipeline's status
/// (the execution finished).
fn pipeline_of_finished_execution(exec: &PipelineExecution) -> Vec<ObjectRef> {
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
