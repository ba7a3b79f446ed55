//! Steps that call no biz: approval gates, which wait (durably) for a
//! person's decision, and pipeline calls, which run another pipeline of the
//! engine and take its outputs.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::status::{Deleted, step_at};
use super::{Driver, Node, earliest, instant_of, interpolate_json};
use crate::model::expr;
use crate::model::{
    ApprovalSpec, ExecutionPhase, MAX_CALL_DEPTH, PipelineCall, PipelineExecution, StepPhase,
    TriggerKind,
};
use crate::pipeline::context::{CALL_DEPTH_LABEL, CALLED_BY_LABEL, CALLED_BY_STEP_LABEL};
use crate::pipeline::trigger::{TriggerRequest, trigger};
use crate::runtime::CancelToken;
use crate::store::{Api, LabelSelector, Requirement, StoreError};

/// How often a waiting step reads the store when nothing told it of a change.
const POLL: Duration = Duration::from_secs(2);

impl Driver {
    /// Marks a gate or call `Running` (once) and returns when it started.
    fn start_waiting(&self, node: &Node, reason: &str) -> chrono::DateTime<chrono::Utc> {
        let now = self.core.clock.now();
        self.cell.update(|st| {
            let s = step_at(st, node.loc);
            s.phase = StepPhase::Running;
            s.attempts = s.attempts.max(1);
            s.reason = reason.to_owned();
            *s.started.get_or_insert(now)
        })
    }

    /// An approval gate: waits until the execution's spec records a decision
    /// for this step (`Engine::decide`), its timeout or the deadline passes,
    /// or the execution is aborted. Survives restarts: the decision and the
    /// start time are in the store.
    pub(super) async fn run_approval(
        &self,
        node: &Node,
        gate: &ApprovalSpec,
        deadline: Option<(Instant, Duration)>,
        is_finally: bool,
        siblings: &CancelToken,
    ) -> Result<StepPhase, Deleted> {
        let step = &node.step;
        let message = expr::interpolate(
            &gate.message,
            &self.eval_context(Some(step), &BTreeMap::new(), None),
        )
        .unwrap_or_else(|_| gate.message.clone());
        let fresh = self.cell.read(|st| step_at_ref(st, node).phase) == StepPhase::Waiting;
        let waiting = format!(
            "waiting for approval by {}{}",
            gate.approvers.join(", "),
            if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            }
        );
        let started = self.start_waiting(node, &waiting);
        self.cell.flush().await?;
        if fresh {
            self.note(step, 1, &waiting);
        }
        let timeout = gate.timeout.map(|t| {
            let at = started + chrono::Duration::from_std(t.0).unwrap_or(chrono::Duration::MAX);
            (instant_of(self.core.clock.now(), at), t.0)
        });
        let until = earliest(timeout, deadline);
        let api = Api::<PipelineExecution>::new(self.core.store.clone());
        loop {
            let changed = self.changed.notified();
            match api.get(&self.core.name, &self.exec.metadata.name).await {
                Ok(Some(latest)) => {
                    if let Some(decision) = latest.spec.approvals.get(&step.name) {
                        let decision = decision.clone();
                        self.cell
                            .update(|st| step_at(st, node.loc).approval = Some(decision.clone()));
                        let said = if decision.comment.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", decision.comment)
                        };
                        self.note(
                            step,
                            1,
                            &format!(
                                "{} by `{}`{said}",
                                if decision.approved {
                                    "approved"
                                } else {
                                    "rejected"
                                },
                                decision.by
                            ),
                        );
                        return if decision.approved {
                            let outputs = BTreeMap::from([
                                ("approved_by".to_owned(), decision.by.clone()),
                                ("comment".to_owned(), decision.comment.clone()),
                            ]);
                            self.end_step(
                                node.loc,
                                StepPhase::Succeeded,
                                String::new(),
                                Some(outputs),
                            )
                            .await
                        } else {
                            self.end_step(
                                node.loc,
                                StepPhase::Failed,
                                format!("rejected by `{}`{said}", decision.by),
                                None,
                            )
                            .await
                        };
                    }
                }
                Ok(None) => return Err(Deleted),
                Err(e) => {
                    tracing::warn!(engine = %self.core.name, execution = %self.exec.metadata.name, error = %e, "an approval step cannot read its execution; trying again")
                }
            }
            if let Some((at, total)) = until
                && Instant::now() >= at
            {
                let which = if timeout.is_some_and(|t| t.0 <= at) {
                    "the approval's"
                } else {
                    "the stage's or pipeline's"
                };
                return self
                    .end_step(
                        node.loc,
                        StepPhase::Failed,
                        format!(
                            "timeout: no decision within {which} {}",
                            humantime::format_duration(total)
                        ),
                        None,
                    )
                    .await;
            }
            let sleep_until = until.map_or_else(
                || Instant::now() + POLL,
                |(at, _)| at.min(Instant::now() + POLL),
            );
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(sleep_until) => {}
                // A gate is no cleanup work: an abort ends it even in `finally`.
                () = self.abort.cancelled() => {
                    return self
                        .end_step(node.loc, StepPhase::Aborted, "aborted while waiting for approval".into(), None)
                        .await;
                }
                () = siblings.cancelled(), if !is_finally => {
                    return self
                        .end_step(node.loc, StepPhase::Aborted, "cancelled: another step failed (fail_fast)".into(), None)
                        .await;
                }
                () = self.core.shutdown.cancelled() => return Ok(StepPhase::Running),
            }
        }
    }

    /// A pipeline call: triggers the called pipeline once (its execution is
    /// recorded before anything waits on it, so a restart finds it rather
    /// than start another) and, with `wait`, waits for it; its outputs
    /// (`<step>.<key>`) become the step's, with `execution` and `phase`.
    pub(super) async fn run_call(
        &self,
        node: &Node,
        call: &PipelineCall,
        deadline: Option<(Instant, Duration)>,
        is_finally: bool,
        siblings: &CancelToken,
    ) -> Result<StepPhase, Deleted> {
        let step = &node.step;
        let depth = self
            .exec
            .metadata
            .labels
            .get(CALL_DEPTH_LABEL)
            .and_then(|d| d.parse::<u32>().ok())
            .unwrap_or(0)
            + 1;
        let (recorded, resumed) = self.cell.read(|st| {
            let s = step_at_ref(st, node);
            (s.called.clone(), s.phase == StepPhase::Running)
        });
        // Cut by a crash after the call was created but before it was
        // recorded: the label finds it, so it is not started twice.
        let recorded = match recorded {
            Some(name) => Some(name),
            None if resumed => self.started_call(&step.name).await,
            None => None,
        };
        let called = match recorded {
            Some(name) => name,
            None => {
                if depth > MAX_CALL_DEPTH {
                    return self
                        .end_step(
                            node.loc,
                            StepPhase::Failed,
                            format!("pipelines call pipelines more than {MAX_CALL_DEPTH} deep; `{}` is not called", call.name),
                            None,
                        )
                        .await;
                }
                let ctx = self.eval_context(Some(step), &BTreeMap::new(), None);
                let params = match interpolate_json(
                    &serde_json::Value::Object(call.params.clone().into_iter().collect()),
                    &ctx,
                ) {
                    Ok(serde_json::Value::Object(m)) => m.into_iter().collect(),
                    Ok(_) => BTreeMap::new(),
                    Err(e) => {
                        return self
                            .end_step(
                                node.loc,
                                StepPhase::Failed,
                                format!("invalid-config: params: {e}"),
                                None,
                            )
                            .await;
                    }
                };
                let spec = &self.exec.spec;
                let req = TriggerRequest {
                    params,
                    event: spec.event.clone(),
                    branch: spec.branch.clone(),
                    commit: spec.commit.clone(),
                    kind: TriggerKind::Pipeline,
                    labels: BTreeMap::from([
                        (CALLED_BY_LABEL.to_owned(), self.exec.metadata.name.clone()),
                        (CALLED_BY_STEP_LABEL.to_owned(), step.name.clone()),
                        (CALL_DEPTH_LABEL.to_owned(), depth.to_string()),
                    ]),
                    from_repo: None,
                    untrusted: spec.untrusted,
                    // A called pipeline sees the push that started its caller.
                    image: spec.image.clone(),
                };
                self.start_waiting(node, &format!("calling pipeline `{}`", call.name));
                match trigger(&self.core, &call.name, req).await {
                    Ok(child) => {
                        let name = child.metadata.name;
                        self.cell.update(|st| {
                            let s = step_at(st, node.loc);
                            s.called = Some(name.clone());
                            s.reason = format!("waiting for `{name}`");
                        });
                        self.cell.flush().await?;
                        self.note(
                            step,
                            1,
                            &format!("called pipeline `{}`: execution `{name}`", call.name),
                        );
                        name
                    }
                    Err(e) => {
                        return self
                            .end_step(
                                node.loc,
                                StepPhase::Failed,
                                format!("cannot call pipeline `{}`: {e}", call.name),
                                None,
                            )
                            .await;
                    }
                }
            }
        };
        if !call.wait {
            let outputs = BTreeMap::from([("execution".to_owned(), called)]);
            return self
                .end_step(node.loc, StepPhase::Succeeded, String::new(), Some(outputs))
                .await;
        }
        let api = Api::<PipelineExecution>::new(self.core.store.clone());
        let mut asked_abort = false;
        loop {
            match api.get(&self.core.name, &called).await {
                Ok(Some(child)) if child.status.phase.is_finished() => {
                    let mut outputs: BTreeMap<String, String> = child
                        .status
                        .outputs
                        .iter()
                        .flat_map(|(s, kv)| {
                            kv.iter().map(move |(k, v)| (format!("{s}.{k}"), v.clone()))
                        })
                        .collect();
                    outputs.insert("execution".into(), called.clone());
                    outputs.insert("phase".into(), format!("{:?}", child.status.phase));
                    let (phase, reason) = match child.status.phase {
                        ExecutionPhase::Succeeded => (StepPhase::Succeeded, String::new()),
                        _ if asked_abort => (StepPhase::Aborted, "aborted".to_owned()),
                        other => (
                            StepPhase::Failed,
                            format!(
                                "called pipeline `{}` ended {other:?} (`{called}`): {}",
                                call.name, child.status.reason
                            ),
                        ),
                    };
                    return self.end_step(node.loc, phase, reason, Some(outputs)).await;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    return self
                        .end_step(
                            node.loc,
                            StepPhase::Failed,
                            format!("the called execution `{called}` was deleted"),
                            None,
                        )
                        .await;
                }
                Err(e) => {
                    tracing::warn!(engine = %self.core.name, execution = %called, error = %e, "a pipeline call cannot read its execution; trying again")
                }
            }
            let stop_child = ((self.abort.is_cancelled() || siblings.is_cancelled())
                && !is_finally)
                || deadline.is_some_and(|(at, _)| Instant::now() >= at);
            if stop_child && !asked_abort {
                asked_abort = true;
                abort_execution(&api, &self.core.name, &called).await;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = self.abort.cancelled(), if !is_finally && !asked_abort => {}
                () = siblings.cancelled(), if !is_finally && !asked_abort => {}
                () = self.core.shutdown.cancelled() => return Ok(StepPhase::Running),
            }
        }
    }
}

impl Driver {
    /// The execution a call step of this execution created, if any (found by
    /// its labels).
    async fn started_call(&self, step: &str) -> Option<String> {
        let selector = LabelSelector::default()
            .and(Requirement::Equals(
                CALLED_BY_LABEL.into(),
                self.exec.metadata.name.clone(),
            ))
            .and(Requirement::Equals(
                CALLED_BY_STEP_LABEL.into(),
                step.to_owned(),
            ));
        let (found, _) = Api::<PipelineExecution>::new(self.core.store.clone())
            .list(Some(&self.core.name), selector)
            .await
            .ok()?;
        found.into_iter().next().map(|e| e.metadata.name)
    }
}

fn step_at_ref<'a>(
    st: &'a crate::model::PipelineExecutionStatus,
    node: &Node,
) -> &'a crate::model::StepStatus {
    match node.loc {
        super::status::Loc::Stage(i, j) => &st.stages[i].steps[j],
        super::status::Loc::Finally(j) => &st.finally[j],
    }
}

/// Asks an execution to abort (as `Engine::abort`).
async fn abort_execution(api: &Api<PipelineExecution>, engine: &str, name: &str) {
    loop {
        let Ok(Some(mut exec)) = api.get(engine, name).await else {
            return;
        };
        if exec.spec.abort || exec.status.phase.is_finished() {
            return;
        }
        exec.spec.abort = true;
        match api.update(&exec).await {
            Err(StoreError::Conflict { .. }) => {}
            _ => return,
        }
    }
}
