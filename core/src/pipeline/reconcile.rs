//! The execution and pipeline reconcilers.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::controller::Action;
use crate::model::pipeline::parse_cron;
use crate::model::resources::set_condition;
use crate::model::{
    Condition, ConditionStatus, ConditionType, ExecutionPhase, Pipeline, PipelineExecution,
    Trigger, TriggerKind,
};
use crate::pipeline::context::{EngineCore, PIPELINE_LABEL, RunHandle};
use crate::pipeline::error::{ReconcileError, TriggerError};
use crate::pipeline::executor;
use crate::pipeline::schedule::cron_due;
use crate::pipeline::trigger::{TriggerRequest, trigger};
use crate::runtime::CancelToken;
use crate::store::{Api, DeleteOptions, LabelSelector, ObjectRef, Requirement, StoreError};

/// The execution reconciler.
pub(crate) async fn reconcile_execution(
    exec: Arc<PipelineExecution>,
    core: Arc<EngineCore>,
) -> Result<Action, ReconcileError> {
    match exec.status.phase {
        ExecutionPhase::Queued => {
            if core.runs().contains_key(&exec.metadata.name) {
                // Admitted on this node, its driver not yet past its first
                // write (which carries the admission): an abort goes to it.
                ensure_driver(&core, &exec, false);
                return Ok(Action::await_change());
            }
            if exec.spec.abort {
                let now = core.clock.now();
                let mut done = (*exec).clone();
                match &exec.spec.superseded_by {
                    Some(newer) => {
                        done.status.phase = ExecutionPhase::Cancelled;
                        done.status.reason =
                            format!("superseded by `{newer}` before it was admitted");
                    }
                    None => {
                        done.status.phase = ExecutionPhase::Aborted;
                        done.status.reason = "aborted before it was admitted".into();
                    }
                }
                done.status.finished = Some(now);
                set_condition(
                    &mut done.status.conditions,
                    Condition {
                        kind: ConditionType::Completed,
                        status: ConditionStatus::True,
                        reason: format!("{:?}", done.status.phase),
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
            ensure_driver(&core, &exec, false);
            Ok(Action::await_change())
        }
        ExecutionPhase::Succeeded
        | ExecutionPhase::Failed
        | ExecutionPhase::Aborted
        | ExecutionPhase::Cancelled => finished(&exec, &core).await,
    }
}

/// Starts a driver for an execution that is `Pending` or `Running` on this
/// node, unless one runs (then passes an abort on to it). `fresh`: `exec` is
/// the state admission has just decided, on top of the stored one (its
/// `resource_version`), so the driver need not read it again.
pub(crate) fn ensure_driver(core: &Arc<EngineCore>, exec: &PipelineExecution, fresh: bool) {
    if core.shutdown.is_cancelled() {
        return;
    }
    if exec.status.node.as_ref().is_some_and(|n| *n != core.node) {
        // Another node's: it runs it, or, once it is gone, the engine's
        // leader admits it again (see `admission`).
        return;
    }
    let mut runs = core.runs();
    match runs.get(&exec.metadata.name) {
        Some(handle) => {
            if exec.spec.abort {
                handle.abort.cancel();
            }
            handle.changed.notify_waiters();
        }
        None => {
            let abort = CancelToken::new();
            if exec.spec.abort {
                abort.cancel();
            }
            let changed = Arc::new(tokio::sync::Notify::new());
            runs.insert(
                exec.metadata.name.clone(),
                RunHandle {
                    abort: abort.clone(),
                    changed: changed.clone(),
                },
            );
            core.spawn_driver(executor::drive(
                core.clone(),
                exec.clone(),
                abort,
                changed,
                fresh,
            ));
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
    // Deleting old executions is the engine leader's work (one node, not
    // every node); each node expires its own copies of logs below.
    if let Some(keep) = settings.retention.executions.filter(|_| core.leads()) {
        let execs = Api::<PipelineExecution>::new(core.store.clone());
        let selector = LabelSelector::everything().and(Requirement::Equals(
            PIPELINE_LABEL.into(),
            exec.spec.pipeline.clone(),
        ));
        let (mut all, _) = execs.list(Some(&core.name), selector).await?;
        all.retain(|e| e.status.phase.is_finished());
        all.sort_by_key(|e| std::cmp::Reverse(e.spec.run));
        for old in all.iter().skip(keep as usize) {
            if let Err(e) = core
                .logs
                .remove_execution(&core.name, &old.metadata.name)
                .await
            {
                tracing::warn!(execution = %old.metadata.name, error = %e, "cannot remove an old execution's logs");
            }
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
            if let Err(e) = core.logs.remove_execution(&core.name, name).await {
                tracing::warn!(execution = %name, error = %e, "cannot remove an expired execution's logs");
            }
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
    if !core.leads() {
        // The engine's leader writes pipeline statuses and fires cron
        // triggers; when this node becomes it, every pipeline is
        // reconciled again (`pipeline::start`).
        return Ok(Action::await_change());
    }
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

    // The newest finished execution, as the controller's watch of executions
    // saw it. Only finished ones: recording a running one made the status
    // chase every trigger (each write of it, seen again by this controller,
    // found a newer run), three writes of the pipeline per execution.
    // `next_run` follows finished runs too; after a restart the run counter
    // skips the few names taken since (creating a name is its reservation).
    if let Some(done) = core.last_finished(&p.metadata.name) {
        let recorded = status
            .last_execution
            .as_deref()
            .and_then(|name| name.strip_prefix(p.metadata.name.as_str()))
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|run| run.parse::<u64>().ok());
        if recorded.is_none_or(|r| done.run >= r) {
            status.next_run = status.next_run.max(done.run + 1);
            status.last_execution = Some(done.name);
            status.last_state = Some(done.phase);
            if let Some(node) = &done.node {
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
        // The status alone, spliced into the stored object: the spec is
        // neither copied nor encoded nor decoded again.
        Api::<Pipeline>::new(core.store.clone())
            .write_status(&p.metadata, &status)
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
