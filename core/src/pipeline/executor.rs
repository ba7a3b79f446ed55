//! The driver of one execution on this node: resolution and leases, stages and
//! steps, interpolation and `when`, caches, timeouts, retries, abort, `finally`,
//! and the durable status that lets a restarted process resume where it stopped.
//!
//! The driver owns the execution's status while it runs: every transition is
//! written (compare-and-swap, coalesced when several steps finish together)
//! **before** the next action depends on it, so that after a crash the status says
//! which steps completed (never run again) and which were interrupted (run again,
//! first without using a retry as the settings' `interrupted_retries` allow, or
//! failed with reason `interrupted` when their retries are spent or the step is
//! `repeat_on_restart: false`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use crate::model::expr::{self, MapContext, StatusFacts, Value};
use crate::model::resources::{cap_reason, set_condition};
use crate::model::{
    Condition, ConditionStatus, ConditionType, ExecutionPhase, PipelineExecution,
    PipelineSettingSpec, PipelineSpec, StageStatus, Step, StepPhase, StepStatus,
};
use crate::pipeline::context::EngineCore;
use crate::pipeline::logs::LogKey;
use crate::runtime::{BizLease, CancelToken};
use crate::store::Api;

mod attempt;
mod cache;
mod checkout;
mod gates;
mod graph;
mod provenance;
mod status;

use graph::Node;
use status::{Deleted, Loc, StatusCell, step_at};

/// Runs one execution to its end (or until shutdown).
pub(crate) async fn drive(
    core: Arc<EngineCore>,
    exec: PipelineExecution,
    abort: CancelToken,
    changed: Arc<tokio::sync::Notify>,
    fresh: bool,
) {
    let name = exec.metadata.name.clone();
    // The reconciler may have read the object before a previous driver of it
    // finished: start from the stored state, and not at all if it is over.
    // (Admission hands over the state it has just decided, on top of the
    // stored one: the first write carries it.)
    let exec = if fresh {
        exec
    } else {
        match Api::<PipelineExecution>::new(core.store.clone())
            .get(&core.name, &name)
            .await
        {
            Ok(Some(fresh)) if !fresh.status.phase.is_finished() => fresh,
            Ok(_) => {
                core.runs().remove(&name);
                return;
            }
            Err(_) => exec,
        }
    };
    let driver = Driver {
        cell: StatusCell {
            api: Api::new(core.store.clone()),
            state: Mutex::new((exec.clone(), 0)),
            written: tokio::sync::Mutex::new(0),
            abort: abort.clone(),
        },
        core: core.clone(),
        exec,
        abort,
        leases: HashMap::new(),
        workspace: PathBuf::new(),
        settings: PipelineSettingSpec::default(),
        deadline: None,
        nodes: Vec::new(),
        changed,
        forge: Mutex::new(None),
        stage_statuses: None,
    };
    let outcome = driver.run().await;
    if outcome.is_err() {
        tracing::info!(engine = %core.name, execution = %name, "execution deleted while running; stopped");
    }
    // Finished (or deleted): the workspace goes. Stopped by a shutdown: it stays
    // for the resumed run.
    if !core.shutdown.is_cancelled()
        && !core.options.keep_workspaces
        && let Err(e) = core.workspaces.remove(&core.name, &name)
    {
        tracing::warn!(engine = %core.name, execution = %name, error = %e, "cannot remove a finished execution's workspace");
    }
    core.runs().remove(&name);
    let _ = core.pokes.send(crate::store::ObjectRef::new(
        "PipelineExecution",
        &core.name,
        &name,
    ));
}

struct Driver {
    core: Arc<EngineCore>,
    cell: StatusCell,
    exec: PipelineExecution,
    abort: CancelToken,
    /// `uses` as written → lease and step type.
    leases: HashMap<String, (BizLease, String)>,
    workspace: PathBuf,
    settings: PipelineSettingSpec,
    /// The whole execution's deadline (`finally` included).
    deadline: Option<(Instant, Duration)>,
    /// The steps' runs and what each waits for.
    nodes: Vec<Node>,
    /// Notified when the execution changes in the store.
    changed: Arc<tokio::sync::Notify>,
    /// The commit status to post at the end, and the `pending` one's task.
    forge: Mutex<Option<super::forge::Reporting>>,
    /// Each stage's own commit status, when the forge setting asks for them.
    stage_statuses: Option<Mutex<super::forge::StageStatuses>>,
}

fn instant_of(clock_now: DateTime<Utc>, at: DateTime<Utc>) -> Instant {
    let now = Instant::now();
    match (at - clock_now).to_std() {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}

impl Driver {
    async fn run(mut self) -> Result<(), Deleted> {
        let now = self.core.clock.now();
        let spec = self.exec.spec.pipeline_spec.clone();
        self.nodes = graph::plan(&spec);
        self.settings = self.core.settings().await.unwrap_or_default();
        let resumed = self.cell.read(|s| s.phase == ExecutionPhase::Running);
        self.cell.update(|st| {
            st.phase = ExecutionPhase::Running;
            st.started.get_or_insert(now);
            st.node = Some(self.core.node.clone());
            if st.stages.is_empty() {
                let (stages, finally) = graph::run_names(&spec);
                let step = |name: String| StepStatus {
                    name,
                    ..StepStatus::default()
                };
                st.stages = spec
                    .stages
                    .iter()
                    .zip(stages)
                    .map(|(s, names)| StageStatus {
                        name: s.name.clone(),
                        steps: names.into_iter().map(step).collect(),
                        ..StageStatus::default()
                    })
                    .collect();
                st.finally = finally.into_iter().map(step).collect();
            }
        });
        if let Some(report) =
            super::forge::Report::new(&self.core, self.settings.forge.as_ref(), &self.exec)
        {
            self.stage_statuses = super::forge::StageStatuses::new(&report).map(Mutex::new);
            let (core, pending) = (self.core.clone(), report.clone());
            let task = tokio::spawn(async move {
                pending
                    .post(&core, super::forge::State::Pending, "running")
                    .await
            });
            *self.forge.lock().unwrap_or_else(|p| p.into_inner()) = Some((report, task));
        }
        if let Some(timeout) = spec.timeout {
            let started = self.cell.read(|s| s.started).unwrap_or(now);
            let at =
                started + chrono::Duration::from_std(timeout.0).unwrap_or(chrono::Duration::MAX);
            self.deadline = Some((instant_of(now, at), timeout.0));
        }
        if resumed {
            tracing::info!(engine = %self.core.name, execution = %self.exec.metadata.name, "resuming an execution interrupted by a restart");
        }
        if let Err(reason) = self.resolve_with_grace().await {
            self.cell.update(|st| {
                set_condition(
                    &mut st.conditions,
                    Condition {
                        kind: ConditionType::Resolved,
                        status: ConditionStatus::False,
                        reason: "UnsatisfiedUses".into(),
                        message: reason.clone(),
                        last_transition: Some(now),
                    },
                );
            });
            return self.finish(ExecutionPhase::Failed, reason).await;
        }
        let resolved: BTreeMap<String, String> = self
            .leases
            .iter()
            .map(|(uses, (lease, _))| (uses.clone(), lease.id()))
            .collect();
        self.cell.update(|st| {
            st.resolved = resolved;
            set_condition(
                &mut st.conditions,
                Condition {
                    kind: ConditionType::Resolved,
                    status: ConditionStatus::True,
                    reason: "Resolved".into(),
                    message: String::new(),
                    last_transition: Some(now),
                },
            );
        });
        match self
            .core
            .workspaces
            .create(&self.core.name, &self.exec.metadata.name)
        {
            Ok(dir) => self.workspace = dir,
            Err(e) => {
                return self
                    .finish(ExecutionPhase::Failed, format!("workspace: {e}"))
                    .await;
            }
        }
        if let Some(source) = &spec.source {
            if let Err(reason) = self.check_out(source).await? {
                return self.finish(ExecutionPhase::Failed, reason).await;
            }
            if self.core.shutdown.is_cancelled() {
                return Ok(());
            }
        }
        // Not flushed here: the execution's start is carried by the next write,
        // which follows at once (the first step's start, a skipped stage, or the
        // finish). A crash before it finds the execution as it was, and it
        // starts again: nothing has run yet.

        let mut failure = self.run_stages(&spec).await?;
        if self.core.shutdown.is_cancelled() {
            // Stopped by a shutdown: leave the stages as they are; the next start resumes.
            self.cell.flush().await?;
            return Ok(());
        }

        let finally: Vec<usize> = (0..self.nodes.len())
            .filter(|&k| self.nodes[k].stage().is_none())
            .collect();
        if !finally.is_empty() && !self.core.shutdown.is_cancelled() {
            let facts = StatusFacts {
                failed: failure.is_some(),
                cancelled: self.abort.is_cancelled(),
            };
            let phases = self
                .run_group("finally", &finally, self.deadline, facts)
                .await?;
            if let Some((k, _)) = finally
                .iter()
                .zip(&phases)
                .find(|(k, p)| **p == StepPhase::Failed && !self.nodes[**k].step.continue_on_error)
            {
                let node = &self.nodes[*k];
                let why = self.cell.read(|s| match node.loc {
                    Loc::Finally(j) => s.finally[j].reason.clone(),
                    Loc::Stage(..) => String::new(),
                });
                failure.get_or_insert(format!("finally step `{}` failed: {why}", node.step.name));
            }
        }
        if self.core.shutdown.is_cancelled() {
            // Stopped by a shutdown: stay `Running`; the next start resumes.
            self.cell.flush().await?;
            return Ok(());
        }
        if self.abort.is_cancelled() {
            // Cancelled by a newer execution of its concurrency group, or
            // aborted by a person: the stored spec says which.
            let newer = Api::<PipelineExecution>::new(self.core.store.clone())
                .get(&self.core.name, &self.exec.metadata.name)
                .await
                .ok()
                .flatten()
                .and_then(|e| e.spec.superseded_by);
            return match newer {
                Some(newer) => {
                    self.finish(
                        ExecutionPhase::Cancelled,
                        format!("superseded by `{newer}` (concurrency group)"),
                    )
                    .await
                }
                None => {
                    self.finish(ExecutionPhase::Aborted, "aborted".to_owned())
                        .await
                }
            };
        }
        match failure {
            Some(reason) => self.finish(ExecutionPhase::Failed, reason).await,
            None => self.finish(ExecutionPhase::Succeeded, String::new()).await,
        }
    }

    /// Runs the stages' steps as their `needs` allow; returns why the stages
    /// failed, if they did.
    async fn run_stages(&self, spec: &PipelineSpec) -> Result<Option<String>, Deleted> {
        let stage_nodes: Vec<usize> = (0..self.nodes.len())
            .filter(|&k| self.nodes[k].stage().is_some())
            .collect();
        let tokens: Vec<CancelToken> = self.nodes.iter().map(|_| CancelToken::new()).collect();
        let mut started = vec![false; self.nodes.len()];
        let mut deadlines: Vec<Option<(Instant, Duration)>> = vec![None; spec.stages.len()];
        // Stages entered before a restart keep their deadline.
        for (i, stage) in spec.stages.iter().enumerate() {
            if let (Some(t), Some(at)) = (stage.timeout, self.cell.read(|s| s.stages[i].started)) {
                let end = at + chrono::Duration::from_std(t.0).unwrap_or(chrono::Duration::MAX);
                deadlines[i] = Some((instant_of(self.core.clock.now(), end), t.0));
            }
        }
        // Set when a failure stops what has not started: the pipeline's
        // `fail_fast`, or a matrix's (by group).
        let mut stopped: Option<String> = None;
        let mut stopped_groups: BTreeMap<usize, String> = BTreeMap::new();
        let running_count = std::sync::atomic::AtomicUsize::new(0);
        let mut running = FuturesUnordered::new();
        loop {
            let mut skipped = false;
            let mut progress = true;
            while progress {
                progress = false;
                for &k in &stage_nodes {
                    let node = &self.nodes[k];
                    if started[k] || self.finished(k) {
                        continue;
                    }
                    if self.core.shutdown.is_cancelled() {
                        break;
                    }
                    if !node.deps.iter().all(|&d| self.finished(d)) {
                        continue;
                    }
                    if let Some(group) = node.group
                        && let Some(limit) = self.nodes[group]
                            .step
                            .matrix
                            .as_ref()
                            .and_then(|m| m.max_parallel)
                    {
                        let busy = stage_nodes
                            .iter()
                            .filter(|&&o| {
                                started[o]
                                    && !self.finished(o)
                                    && self.nodes[o].group == Some(group)
                            })
                            .count();
                        if busy >= limit as usize {
                            continue;
                        }
                    }
                    let Some(i) = node.stage() else { continue };
                    progress = true;
                    if let Some(reason) = self.why_not(k, stopped.as_deref(), &stopped_groups) {
                        self.skip(k, &reason);
                        skipped = true;
                        continue;
                    }
                    if !self.enter_stage(i, &spec.stages[i], &mut deadlines) {
                        skipped = true;
                        continue;
                    }
                    started[k] = true;
                    running_count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    let deadline = earliest(self.deadline, deadlines[i]);
                    let facts = self.facts_for(k);
                    let (token, running_count) = (&tokens[k], &running_count);
                    let stage_name = spec.stages[i].name.as_str();
                    running.push(async move {
                        // A step whose `if` calls a status function is not
                        // cut by an abort or `fail_fast`: it decided to run.
                        let phase = self
                            .run_step(stage_name, node, deadline, node.checks_status, token, facts)
                            .await;
                        // A step that ends while others still run is written
                        // now (they may run long). The last one's end is
                        // carried by the next write, which follows at once:
                        // the next step's start or the finish — one commit
                        // fewer. A crash in between finds the step `Running`,
                        // and it runs again as an interrupted attempt.
                        if running_count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) > 1
                            && phase.is_ok()
                        {
                            self.cell.flush().await?;
                        }
                        phase.map(|p| (k, p))
                    });
                }
                self.settle_stages(spec);
            }
            if skipped && running.is_empty() {
                self.cell.flush().await?;
            }
            let Some(done) = running.next().await else {
                break;
            };
            let (k, phase) = done?;
            let node = &self.nodes[k];
            if phase == StepPhase::Failed && !node.step.continue_on_error {
                let tolerant_stage = node
                    .stage()
                    .is_some_and(|i| spec.stages[i].continue_on_error);
                if spec.fail_fast && tolerant_stage {
                    // Its stage tolerates the failure: its siblings stop, and
                    // the next stages run as if it had succeeded.
                    for &o in &stage_nodes {
                        if self.nodes[o].stage() == node.stage() {
                            tokens[o].cancel();
                        }
                    }
                } else if spec.fail_fast && stopped.is_none() {
                    stopped = Some(format!(
                        "cancelled: step `{}` failed (fail_fast)",
                        node.step.name
                    ));
                    for &o in &stage_nodes {
                        tokens[o].cancel();
                    }
                }
                if let Some(group) = node.group
                    && self.nodes[group]
                        .step
                        .matrix
                        .as_ref()
                        .is_some_and(|m| m.fail_fast)
                    && !stopped_groups.contains_key(&group)
                {
                    stopped_groups.insert(
                        group,
                        format!(
                            "cancelled: cell `{}` failed (matrix fail_fast)",
                            node.step.name
                        ),
                    );
                    for &o in &stage_nodes {
                        if self.nodes[o].group == Some(group) {
                            tokens[o].cancel();
                        }
                    }
                }
            }
            self.settle_stages(spec);
        }
        // Whatever never became ready (a `needs` cycle an unvalidated spec
        // carried) must not leave the execution hanging.
        if !self.core.shutdown.is_cancelled() {
            for &k in &stage_nodes {
                if !self.finished(k) && !started[k] {
                    self.skip(k, "its `needs` never completed (a cycle)");
                }
            }
            self.settle_stages(spec);
        }
        Ok(spec.stages.iter().enumerate().find_map(|(i, stage)| {
            self.cell.read(|s| {
                let st = &s.stages[i];
                status::fails(st.phase, stage.continue_on_error)
                    .then(|| format!("stage `{}`: {}", stage.name, st.reason))
            })
        }))
    }

    /// Whether node `k` has ended (it will not run again).
    fn finished(&self, k: usize) -> bool {
        let loc = self.nodes[k].loc;
        self.cell.read(|st| status::phase_at(st, loc).is_finished())
    }

    /// Whether node `a`'s end fails what waits for it in stage `reader`: a
    /// failure its step does not tolerate, or an abort; either passes if `a`'s
    /// stage tolerates failures and the reader is in another stage (the
    /// stages after a `continue_on_error` stage run as if it had succeeded),
    /// unless the whole execution was aborted.
    fn fails_for(&self, a: usize, reader: Option<usize>) -> bool {
        let node = &self.nodes[a];
        let stage_tolerates = node.stage() != reader
            && node
                .stage()
                .is_some_and(|i| self.exec.spec.pipeline_spec.stages[i].continue_on_error);
        match self.cell.read(|st| status::phase_at(st, node.loc)) {
            StepPhase::Failed => !node.step.continue_on_error && !stage_tolerates,
            StepPhase::Aborted => self.abort.is_cancelled() || !stage_tolerates,
            _ => false,
        }
    }

    /// The first step node `k` waits for, directly or not, that failed in a
    /// way `k` must not run after (GitHub's `success()`: every ancestor).
    fn failed_ancestor(&self, k: usize) -> Option<usize> {
        let reader = self.nodes[k].stage();
        self.nodes[k]
            .ancestors
            .iter()
            .copied()
            .find(|&a| self.fails_for(a, reader))
    }

    /// The status functions' answers for node `k`.
    fn facts_for(&self, k: usize) -> StatusFacts {
        StatusFacts {
            failed: self.failed_ancestor(k).is_some(),
            cancelled: self.abort.is_cancelled(),
        }
    }

    /// Why node `k`, whose needs have ended, must not run. A node whose `if`
    /// calls a status function decides for itself after a failure, a
    /// `fail_fast` stop or an abort; a passed deadline stops every node.
    fn why_not(
        &self,
        k: usize,
        stopped: Option<&str>,
        stopped_groups: &BTreeMap<usize, String>,
    ) -> Option<String> {
        let node = &self.nodes[k];
        if let Some((at, timeout)) = self.deadline
            && Instant::now() >= at
        {
            return Some(format!(
                "timeout: the pipeline's {} passed",
                humantime::format_duration(timeout)
            ));
        }
        if node.checks_status {
            return None;
        }
        if self.abort.is_cancelled() {
            return Some("aborted".into());
        }
        if let Some(failed) = self.failed_ancestor(k) {
            return Some(if node.implicit {
                "an earlier stage failed".to_owned()
            } else {
                format!("needed step `{}` failed", self.nodes[failed].step.name)
            });
        }
        if let Some(why) = stopped {
            return Some(why.to_owned());
        }
        node.group.and_then(|g| stopped_groups.get(&g)).cloned()
    }

    fn skip(&self, k: usize, why: &str) {
        let loc = self.nodes[k].loc;
        self.cell.update(|st| {
            let s = step_at(st, loc);
            s.phase = StepPhase::Skipped;
            s.reason = why.to_owned();
        });
    }

    /// Enters stage `i` when its first step is about to start: its condition,
    /// then `Running` and its deadline. `false` when the condition skipped or
    /// failed the stage's steps instead.
    fn enter_stage(
        &self,
        i: usize,
        stage: &crate::model::Stage,
        deadlines: &mut [Option<(Instant, Duration)>],
    ) -> bool {
        match self.cell.read(|s| s.stages[i].phase) {
            StepPhase::Waiting => {}
            StepPhase::Running => return true,
            // Ended before a restart (its condition failed or was false)
            // with steps left waiting: they do not run.
            ended => {
                self.cell.update(|st| {
                    let s = &mut st.stages[i];
                    let reason = s.reason.clone();
                    for step in &mut s.steps {
                        if step.phase == StepPhase::Waiting {
                            step.phase = if ended == StepPhase::Failed {
                                StepPhase::Failed
                            } else {
                                StepPhase::Skipped
                            };
                            step.reason.clone_from(&reason);
                        }
                    }
                });
                return false;
            }
        }
        if let Some(when) = &stage.when {
            let facts = StatusFacts {
                failed: (0..self.nodes.len()).any(|k| {
                    self.nodes[k].stage().is_some_and(|s| s < i) && self.fails_for(k, Some(i))
                }),
                cancelled: self.abort.is_cancelled(),
            };
            let verdict = when.evaluate(&self.eval_context(None, &BTreeMap::new(), Some(facts)));
            let outcome = match verdict {
                Ok(true) => None,
                Ok(false) => Some((StepPhase::Skipped, "when: condition is false".to_owned())),
                Err(e) => Some((StepPhase::Failed, format!("when: {e}"))),
            };
            if let Some((phase, reason)) = outcome {
                self.cell.update(|st| {
                    let s = &mut st.stages[i];
                    s.phase = phase;
                    s.reason.clone_from(&reason);
                    for step in &mut s.steps {
                        if step.phase == StepPhase::Waiting {
                            step.phase = phase;
                            step.reason.clone_from(&reason);
                        }
                    }
                });
                return false;
            }
        }
        let now = self.core.clock.now();
        let started = self.cell.update(|st| {
            st.stages[i].phase = StepPhase::Running;
            *st.stages[i].started.get_or_insert(now)
        });
        deadlines[i] = stage.timeout.map(|t| {
            let at = started + chrono::Duration::from_std(t.0).unwrap_or(chrono::Duration::MAX);
            (instant_of(self.core.clock.now(), at), t.0)
        });
        true
    }

    /// Ends every stage whose steps have all ended.
    fn settle_stages(&self, spec: &PipelineSpec) {
        let now = self.core.clock.now();
        let aborted = self.abort.is_cancelled();
        for i in 0..spec.stages.len() {
            let nodes: Vec<&Node> = self.nodes.iter().filter(|n| n.stage() == Some(i)).collect();
            self.cell.update(|st| {
                let s = &mut st.stages[i];
                if s.phase.is_finished() {
                    return;
                }
                let done = s.steps.iter().all(|step| step.phase.is_finished());
                if !done {
                    return;
                }
                let failed = nodes.iter().find(|n| match n.loc {
                    Loc::Stage(_, j) => status::fails(s.steps[j].phase, n.step.continue_on_error),
                    Loc::Finally(_) => false,
                });
                if let Some(n) = failed {
                    let Loc::Stage(_, j) = n.loc else { return };
                    s.reason = format!("step `{}` failed: {}", n.step.name, s.steps[j].reason);
                    s.phase = if aborted {
                        StepPhase::Aborted
                    } else {
                        StepPhase::Failed
                    };
                } else if s.phase == StepPhase::Waiting
                    && s.steps.iter().all(|step| step.phase == StepPhase::Skipped)
                {
                    // Never entered: every step was skipped before it (an
                    // earlier failure, an abort); an entered stage whose
                    // steps skipped themselves succeeded, as always.
                    s.phase = StepPhase::Skipped;
                    if s.reason.is_empty() {
                        s.reason = s
                            .steps
                            .first()
                            .map(|x| x.reason.clone())
                            .unwrap_or_default();
                    }
                } else {
                    s.phase = StepPhase::Succeeded;
                }
                if s.started.is_some() {
                    s.finished.get_or_insert(now);
                }
            });
        }
        // Entered stages (`enter_stage` runs just before) and ended ones.
        self.report_stages();
    }

    /// Posts the stages' own commit statuses that changed (`forge.stages`).
    fn report_stages(&self) {
        if let Some(statuses) = &self.stage_statuses {
            let mut statuses = statuses.lock().unwrap_or_else(|p| p.into_inner());
            self.cell
                .read(|st| statuses.observe(&self.core, &st.stages));
        }
    }

    async fn finish(&self, phase: ExecutionPhase, reason: String) -> Result<(), Deleted> {
        let now = self.core.clock.now();
        let forge = self.forge.lock().unwrap_or_else(|p| p.into_inner()).take();
        let told = forge.as_ref().map(|_| reason.clone());
        self.cell.update(|st| {
            st.phase = phase;
            st.finished = Some(now);
            st.reason = reason.clone();
            set_condition(
                &mut st.conditions,
                Condition {
                    kind: ConditionType::Completed,
                    status: ConditionStatus::True,
                    reason: format!("{phase:?}"),
                    message: reason,
                    last_transition: Some(now),
                },
            );
            // Steps that never started in a run that ended are skipped, not waiting.
            for stage in &mut st.stages {
                if stage.phase == StepPhase::Waiting {
                    stage.phase = StepPhase::Skipped;
                }
                for step in &mut stage.steps {
                    if step.phase == StepPhase::Waiting {
                        step.phase = StepPhase::Skipped;
                    }
                }
            }
        });
        let written = self.cell.flush().await;
        // The outcome goes to the forge once it is recorded here.
        if written.is_ok()
            && let (Some((report, pending)), Some(told)) = (forge, told)
        {
            // Stages the execution never reached end here (skipped).
            self.report_stages();
            let stages = self.stage_statuses.as_ref().map_or_else(Vec::new, |s| {
                s.lock().unwrap_or_else(|p| p.into_inner()).take_ended()
            });
            super::forge::finish(
                self.core.clone(),
                report,
                Some(pending),
                phase,
                told,
                stages,
            );
        }
        written
    }

    /// [`Driver::resolve`], but an execution from before this process started
    /// (resumed, or admitted and not started) whose bizes are not installed yet
    /// (after a restart they are installed again after the engine starts) waits
    /// for them up to `resume_grace`.
    async fn resolve_with_grace(&mut self) -> Result<(), String> {
        let resumed = self.cell.read(|s| !s.resolved.is_empty())
            || self
                .exec
                .metadata
                .created
                .is_some_and(|c| c < self.core.started);
        // Admitted here while this node is still installing what the
        // engine's deployment names (given to another node of the cluster a
        // moment ago): it waits the same way (checked at the first failure).
        let mut resumed = resumed;
        let mut checked_deployment = false;
        let deadline = Instant::now() + self.core.options.resume_grace;
        let mut events = self.core.registry.subscribe();
        let mut waited = false;
        loop {
            let reason = match self.resolve() {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if !resumed && !checked_deployment {
                checked_deployment = true;
                resumed = self.deployment_pending().await;
            }
            if !resumed || Instant::now() >= deadline || self.core.shutdown.is_cancelled() {
                return Err(if waited {
                    format!(
                        "{reason} (waited {} for it to be installed again)",
                        humantime::format_duration(self.core.options.resume_grace)
                    )
                } else {
                    reason
                });
            }
            if !waited {
                tracing::info!(engine = %self.core.name, execution = %self.exec.metadata.name, %reason, "waiting for the bizes this execution resolved before the restart");
                waited = true;
            }
            tokio::select! {
                _ = events.recv() => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.core.shutdown.cancelled() => {}
                () = self.abort.cancelled() => return Err("aborted while waiting for its bizes".into()),
            }
        }
    }

    /// Whether the engine's deployment names a biz version this node has not
    /// installed yet (its deployment reconciler is on the way).
    async fn deployment_pending(&self) -> bool {
        let deployment =
            crate::store::Api::<crate::model::BizDeployment>::new(self.core.store.clone())
                .get(
                    &self.core.name,
                    crate::pipeline::deployment::DEPLOYMENT_NAME,
                )
                .await;
        let Ok(Some(deployment)) = deployment else {
            return false;
        };
        let installed = self.core.registry.list();
        deployment.spec.bizes.iter().any(|desired| {
            desired.versions.iter().any(|version| {
                !installed
                    .iter()
                    .any(|b| b.name == desired.name && b.version.to_string() == *version)
            })
        })
    }

    /// Leases every `uses`: the exact versions recorded before a restart, or the
    /// activated version satisfying each requirement.
    fn resolve(&mut self) -> Result<(), String> {
        let recorded = self.cell.read(|s| s.resolved.clone());
        let spec = &self.exec.spec.pipeline_spec;
        let mut problems = Vec::new();
        for uses in spec.uses() {
            let written = uses.to_string();
            let lease = match recorded.get(&written) {
                Some(id) => {
                    let parsed = id
                        .split_once('@')
                        .and_then(|(n, v)| Some((n, semver::Version::parse(v).ok()?)));
                    match parsed {
                        Some((name, version)) => self
                            .core
                            .registry
                            .lease(name, &version)
                            .map_err(|e| format!("`{written}` was resolved to {id}: {e}")),
                        None => Err(format!("`{written}` was resolved to an unreadable `{id}`")),
                    }
                }
                None => {
                    let reference = match &uses.req {
                        Some(req) => format!("{}@{req}", uses.biz),
                        None => uses.biz.clone(),
                    };
                    self.core
                        .registry
                        .resolve(&reference)
                        .map_err(|e| format!("`{written}`: {e}"))
                }
            };
            let lease = match lease {
                Ok(l) => l,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let types: Vec<&str> = lease
                .manifest()
                .steps
                .iter()
                .map(|s| s.id.as_str())
                .collect();
            let step_type = match &uses.step {
                Some(t) if types.contains(&t.as_str()) => t.clone(),
                Some(t) => {
                    problems.push(format!(
                        "`{written}`: {} has no step type `{t}` (it has: {})",
                        lease.id(),
                        types.join(", ")
                    ));
                    continue;
                }
                None if types.len() == 1 => types[0].to_owned(),
                None => {
                    problems.push(format!(
                        "`{written}`: {} has {} step types ({}); name one as `{}/<step>`",
                        lease.id(),
                        types.len(),
                        types.join(", "),
                        uses.biz
                    ));
                    continue;
                }
            };
            self.leases.insert(written, (lease, step_type));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            self.leases.clear();
            Err(problems.join("; "))
        }
    }

    /// The expression context: params, trigger facts, step states and outputs so
    /// far, and the given secrets.
    fn eval_context(
        &self,
        step: Option<&Step>,
        secrets: &BTreeMap<String, String>,
        status: Option<StatusFacts>,
    ) -> MapContext {
        let spec = &self.exec.spec;
        let (outputs, states) = self.cell.read(|st| {
            let mut states = BTreeMap::new();
            for step in st
                .stages
                .iter()
                .flat_map(|s| s.steps.iter())
                .chain(st.finally.iter())
            {
                states.insert(step.name.clone(), step.phase.as_str().to_owned());
            }
            // A matrix step's state is its cells' together.
            let mut matrices: BTreeMap<&str, Vec<StepPhase>> = BTreeMap::new();
            for node in self.nodes.iter().filter(|n| n.group.is_some()) {
                if let Some(base) = node.step.name.split(" (").next() {
                    matrices
                        .entry(base)
                        .or_default()
                        .push(status::phase_at(st, node.loc));
                }
            }
            for (base, phases) in matrices {
                let phase = if phases
                    .iter()
                    .any(|p| matches!(p, StepPhase::Failed | StepPhase::Aborted))
                {
                    StepPhase::Failed
                } else if phases
                    .iter()
                    .any(|p| matches!(p, StepPhase::Running | StepPhase::Waiting))
                {
                    StepPhase::Running
                } else if phases.iter().all(|p| *p == StepPhase::Skipped) {
                    StepPhase::Skipped
                } else {
                    StepPhase::Succeeded
                };
                states.insert(base.to_owned(), phase.as_str().to_owned());
            }
            (st.outputs.clone(), states)
        });
        let matrix = step
            .and_then(|s| self.nodes.iter().find(|n| n.step.name == s.name))
            .and_then(|n| n.matrix.as_ref())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), Value::from_json(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        let mut ctx = MapContext {
            params: spec
                .params
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), Value::from_json(v)?)))
                .collect(),
            secrets: secrets.clone(),
            outputs,
            states,
            event: Some(spec.event.clone()).filter(|s| !s.is_empty()),
            branch: Some(spec.branch.clone()).filter(|s| !s.is_empty()),
            commit: Some(spec.commit.clone()).filter(|s| !s.is_empty()),
            matrix,
            pipeline: Some(spec.pipeline.clone()),
            image: spec.image.clone(),
            status,
            workspace: Some(self.workspace.clone()).filter(|w| !w.as_os_str().is_empty()),
            env: BTreeMap::new(),
        };
        // `env.*`: the pipeline's then the step's variables, interpolated
        // without `env` (a variable cannot read another).
        let mut env = BTreeMap::new();
        for (k, v) in spec
            .pipeline_spec
            .env
            .iter()
            .chain(step.map(|s| &s.env).into_iter().flatten())
        {
            if let Ok(value) = expr::interpolate(v, &ctx) {
                env.insert(k.clone(), value);
            }
        }
        ctx.env = env;
        ctx
    }

    /// Runs the `finally` steps in parallel; returns their final phases.
    async fn run_group(
        &self,
        stage: &str,
        nodes: &[usize],
        deadline: Option<(Instant, Duration)>,
        facts: StatusFacts,
    ) -> Result<Vec<StepPhase>, Deleted> {
        let siblings = CancelToken::new();
        let remaining = std::sync::atomic::AtomicUsize::new(nodes.len());
        let runs = nodes.iter().map(|&k| {
            let (siblings, remaining) = (&siblings, &remaining);
            async move {
                let phase = self
                    .run_step(stage, &self.nodes[k], deadline, true, siblings, facts)
                    .await?;
                // As in `run_stages`: the last end rides on the finish's write.
                if remaining.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) > 1 {
                    self.cell.flush().await?;
                }
                Ok(phase)
            }
        });
        join_all(runs).await.into_iter().collect()
    }

    async fn run_step(
        &self,
        stage: &str,
        node: &Node,
        deadline: Option<(Instant, Duration)>,
        is_finally: bool,
        siblings: &CancelToken,
        facts: StatusFacts,
    ) -> Result<StepPhase, Deleted> {
        let (step, loc) = (&node.step, node.loc);
        let (phase, attempts, mut interruptions) = self.cell.read(|st| {
            let s = match loc {
                Loc::Stage(i, j) => &st.stages[i].steps[j],
                Loc::Finally(j) => &st.finally[j],
            };
            (s.phase, s.attempts, s.interruptions)
        });
        let retries = step.retries.as_ref().map_or(0, |r| r.count);
        match phase {
            StepPhase::Succeeded | StepPhase::Skipped | StepPhase::Failed | StepPhase::Aborted => {
                return Ok(phase);
            }
            // A gate or a call cut by a restart goes on waiting: it ran nothing.
            StepPhase::Running if step.uses.is_none() => {}
            StepPhase::Running if !step.repeat_on_restart => {
                let reason = format!(
                    "interrupted: attempt {attempts} was cut off by a restart and the step is not run again (repeat_on_restart: false)"
                );
                self.note(step, attempts, &reason);
                return self.end_step(loc, StepPhase::Failed, reason, None).await;
            }
            // A restart is not the step's fault: the cut attempt runs again
            // without counting against its retries, as often as the settings say.
            StepPhase::Running if interruptions < self.settings.interrupted_retries() => {
                interruptions += 1;
                self.cell
                    .update(|st| step_at(st, loc).interruptions = interruptions);
                self.note(
                    step,
                    attempts,
                    &format!(
                        "attempt {attempts} was cut off by a restart; running it again (interruption {interruptions} of {})",
                        self.settings.interrupted_retries()
                    ),
                );
            }
            StepPhase::Running if attempts >= 1 + retries + interruptions => {
                let allowed = 1 + retries + interruptions;
                let reason = format!(
                    "interrupted: attempt {attempts} of {allowed} was cut off by a restart and no retry is left"
                );
                self.note(step, attempts, &reason);
                return self.end_step(loc, StepPhase::Failed, reason, None).await;
            }
            StepPhase::Running => {
                self.note(
                    step,
                    attempts,
                    &format!("attempt {attempts} was cut off by a restart; retrying"),
                );
            }
            StepPhase::Waiting => {}
        }
        // Attempts cut off by a restart and given back do not use up retries.
        let allowed = 1 + retries + interruptions;
        if !is_finally && self.abort.is_cancelled() {
            return self
                .end_step(loc, StepPhase::Skipped, "aborted".into(), None)
                .await;
        }
        if let Some(when) = &step.when {
            match when.evaluate(&self.eval_context(Some(step), &BTreeMap::new(), Some(facts))) {
                Ok(true) => {}
                Ok(false) => {
                    return self
                        .end_step(
                            loc,
                            StepPhase::Skipped,
                            "when: condition is false".into(),
                            None,
                        )
                        .await;
                }
                Err(e) => {
                    return self
                        .end_step(loc, StepPhase::Failed, format!("when: {e}"), None)
                        .await;
                }
            }
        }
        if let Some(gate) = &step.approval {
            return self
                .run_approval(node, gate, deadline, is_finally, siblings)
                .await;
        }
        if let Some(call) = &step.pipeline {
            return self
                .run_call(node, call, deadline, is_finally, siblings)
                .await;
        }
        let mut attempt = attempts;
        loop {
            attempt += 1;
            let now = self.core.clock.now();
            let log_ref = LogKey {
                engine: self.core.name.clone(),
                execution: self.exec.metadata.name.clone(),
                step: step.name.clone(),
            }
            .to_string();
            let prepared = self.prepare(step, attempt).await;
            self.cell.update(|st| {
                st.logs.insert(step.name.clone(), log_ref);
                let s = step_at(st, loc);
                s.phase = StepPhase::Running;
                s.attempts = attempt;
                s.started.get_or_insert(now);
                s.reason.clear();
            });
            self.cell.flush().await?;
            let cancel = CancelToken::new();
            let watcher = {
                let (cancel, abort, siblings, shutdown) = (
                    cancel.clone(),
                    self.abort.clone(),
                    siblings.clone(),
                    self.core.shutdown.clone(),
                );
                tokio::spawn(async move {
                    if is_finally {
                        shutdown.cancelled().await;
                    } else {
                        tokio::select! {
                            () = abort.cancelled() => {}
                            () = siblings.cancelled() => {}
                            () = shutdown.cancelled() => {}
                        }
                    }
                    cancel.cancel();
                })
            };
            let result = self
                .attempt(stage, step, attempt, allowed, deadline, &cancel, prepared)
                .await;
            watcher.abort();
            if result.is_err() && self.core.shutdown.is_cancelled() {
                // Leave the step `Running`: the next start treats it as interrupted.
                return Ok(StepPhase::Running);
            }
            match result {
                Ok(outputs) => {
                    return self
                        .end_step(loc, StepPhase::Succeeded, String::new(), Some(outputs))
                        .await;
                }
                Err(f) if f.cancelled => {
                    let reason = if self.abort.is_cancelled() {
                        "aborted".to_owned()
                    } else if node.group.is_some() && !self.exec.spec.pipeline_spec.fail_fast {
                        "cancelled: another cell of its matrix failed (matrix fail_fast)".to_owned()
                    } else {
                        "cancelled: another step failed (fail_fast)".to_owned()
                    };
                    return self.end_step(loc, StepPhase::Aborted, reason, None).await;
                }
                Err(f) => {
                    let retry = f.retryable && attempt < allowed;
                    let delay = step
                        .retries
                        .as_ref()
                        .and_then(|r| r.backoff)
                        .map_or(Duration::ZERO, |b| {
                            b.0.saturating_mul(1u32 << (attempt - 1).min(16))
                        })
                        .min(Duration::from_secs(3600));
                    let time_left = deadline.is_none_or(|(at, _)| Instant::now() + delay < at);
                    if retry && time_left {
                        self.note(
                            step,
                            attempt,
                            &format!(
                                "attempt {attempt} of {allowed} failed ({}); retrying in {}",
                                f.reason,
                                humantime::format_duration(delay)
                            ),
                        );
                        let stop = async {
                            tokio::select! {
                                () = self.abort.cancelled(), if !is_finally => {}
                                () = siblings.cancelled(), if !is_finally => {}
                                () = self.core.shutdown.cancelled() => {}
                            }
                        };
                        tokio::select! {
                            () = tokio::time::sleep(delay) => continue,
                            () = stop => {
                                if self.core.shutdown.is_cancelled() {
                                    return Ok(StepPhase::Running);
                                }
                                return self
                                    .end_step(loc, StepPhase::Aborted, "aborted while waiting to retry".into(), None)
                                    .await;
                            }
                        }
                    }
                    return self.end_step(loc, StepPhase::Failed, f.reason, None).await;
                }
            }
        }
    }

    /// Records a step's end (written with the next write; the scheduler
    /// cancels what a failure stops).
    async fn end_step(
        &self,
        loc: Loc,
        phase: StepPhase,
        reason: String,
        outputs: Option<BTreeMap<String, String>>,
    ) -> Result<StepPhase, Deleted> {
        let now = self.core.clock.now();
        self.cell.update(|st| {
            let name = step_at(st, loc).name.clone();
            if let Some(outputs) = outputs {
                st.outputs.insert(name, outputs);
            }
            let s = step_at(st, loc);
            s.phase = phase;
            // Guest-controlled text: capped in the status (the log has more).
            s.reason = cap_reason(reason);
            s.finished = Some(now);
        });
        Ok(phase)
    }
}

fn earliest(
    a: Option<(Instant, Duration)>,
    b: Option<(Instant, Duration)>,
) -> Option<(Instant, Duration)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if x.0 <= y.0 { x } else { y }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Interpolates every string of a JSON value. A string that is exactly one
/// `${{ … }}` keeps the value's type (a number param stays a number).
pub(crate) fn interpolate_json(
    value: &serde_json::Value,
    ctx: &MapContext,
) -> Result<serde_json::Value, expr::InterpolateError> {
    use serde_json::Value as J;
    Ok(match value {
        J::String(s) => {
            let template = expr::parse_template(s)?;
            match template.parts.as_slice() {
                [expr::TemplatePart::Expr(e, _)] => match expr::evaluate(e, ctx)? {
                    Value::String(s) => J::String(s),
                    Value::Bool(b) => J::Bool(b),
                    Value::Number(n) => serde_json::Number::from_f64(n)
                        .map(|n| {
                            if n.as_f64()
                                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9e15)
                            {
                                J::from(n.as_f64().map_or(0, |f| f as i64))
                            } else {
                                J::Number(n)
                            }
                        })
                        .unwrap_or(J::Null),
                    Value::List(items) => J::Array(
                        items
                            .into_iter()
                            .map(|i| J::String(i.to_string()))
                            .collect(),
                    ),
                },
                _ => J::String(template.render(ctx)?),
            }
        }
        J::Array(items) => J::Array(
            items
                .iter()
                .map(|i| interpolate_json(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(map) => J::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), interpolate_json(v, ctx)?)))
                .collect::<Result<_, expr::InterpolateError>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_interpolations_keep_their_type() {
        let mut ctx = MapContext::default();
        ctx.params.insert("n".into(), Value::Number(3.0));
        ctx.params.insert("flag".into(), Value::Bool(true));
        ctx.params.insert("name".into(), Value::String("x".into()));
        let v = serde_json::json!({
            "count": "${{ params.n }}",
            "on": "${{ params.flag }}",
            "text": "n=${{ params.n }} ${{ params.name }}",
            "list": ["${{ params.name }}", 1],
        });
        let out = interpolate_json(&v, &ctx).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out,
            serde_json::json!({"count": 3, "on": true, "text": "n=3 x", "list": ["x", 1]})
        );
    }
}
