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
use futures::future::join_all;
use tokio::time::Instant;

use crate::model::expr::{self, MapContext, Value};
use crate::model::resources::{cap_reason, set_condition};
use crate::model::{
    Condition, ConditionStatus, ConditionType, ExecutionPhase, PipelineExecution,
    PipelineSettingSpec, StageStatus, Step, StepPhase, StepStatus,
};
use crate::pipeline::context::EngineCore;
use crate::pipeline::logs::LogKey;
use crate::runtime::{BizLease, CancelToken};
use crate::store::Api;

mod attempt;
mod cache;
mod status;

use status::{Deleted, Loc, StatusCell, step_at};

/// Runs one execution to its end (or until shutdown).
pub(crate) async fn drive(
    core: Arc<EngineCore>,
    exec: PipelineExecution,
    abort: CancelToken,
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
        self.settings = self.core.settings().await.unwrap_or_default();
        let resumed = self.cell.read(|s| s.phase == ExecutionPhase::Running);
        self.cell.update(|st| {
            st.phase = ExecutionPhase::Running;
            st.started.get_or_insert(now);
            st.node = Some(self.core.node.clone());
            if st.stages.is_empty() {
                st.stages = spec
                    .stages
                    .iter()
                    .map(|s| StageStatus {
                        name: s.name.clone(),
                        steps: s
                            .steps
                            .iter()
                            .map(|step| StepStatus {
                                name: step.name.clone(),
                                ..StepStatus::default()
                            })
                            .collect(),
                        ..StageStatus::default()
                    })
                    .collect();
                st.finally = spec
                    .finally
                    .iter()
                    .map(|step| StepStatus {
                        name: step.name.clone(),
                        ..StepStatus::default()
                    })
                    .collect();
            }
        });
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
        // Not flushed here: the execution's start is carried by the next write,
        // which follows at once (the first step's start, a skipped stage, or the
        // finish). A crash before it finds the execution as it was, and it
        // starts again: nothing has run yet.

        let mut failure: Option<String> = None;
        for (i, stage) in spec.stages.iter().enumerate() {
            let phase = self.cell.read(|s| s.stages[i].phase);
            if matches!(
                phase,
                StepPhase::Succeeded | StepPhase::Skipped | StepPhase::Failed | StepPhase::Aborted
            ) {
                if status::fails(phase, stage.continue_on_error) {
                    failure.get_or_insert_with(|| {
                        self.cell.read(|s| {
                            format!("stage `{}` failed: {}", stage.name, s.stages[i].reason)
                        })
                    });
                }
                continue;
            }
            if let Some(why) = self.stop_reason(&failure) {
                self.skip_stage(i, &why);
                continue;
            }
            if let Some(when) = &stage.when {
                match when.evaluate(&self.eval_context(&Default::default())) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.skip_stage(i, "when: condition is false");
                        self.cell.flush().await?;
                        continue;
                    }
                    Err(e) => {
                        let reason = format!("when: {e}");
                        self.cell.update(|st| {
                            st.stages[i].phase = StepPhase::Failed;
                            st.stages[i].reason = reason.clone();
                        });
                        if !stage.continue_on_error {
                            failure = Some(format!("stage `{}`: {reason}", stage.name));
                        }
                        self.cell.flush().await?;
                        continue;
                    }
                }
            }
            let started = self.cell.update(|st| {
                st.stages[i].phase = StepPhase::Running;
                *st.stages[i].started.get_or_insert(now)
            });
            let stage_deadline = stage.timeout.map(|t| {
                let at = started + chrono::Duration::from_std(t.0).unwrap_or(chrono::Duration::MAX);
                (instant_of(self.core.clock.now(), at), t.0)
            });
            let deadline = earliest(self.deadline, stage_deadline);
            let locs: Vec<Loc> = (0..stage.steps.len()).map(|j| Loc::Stage(i, j)).collect();
            let phases = self
                .run_group(&stage.name, &stage.steps, &locs, deadline, false)
                .await?;
            if self.core.shutdown.is_cancelled() {
                // Stopped by a shutdown: leave the stage as it is; the next start resumes.
                self.cell.flush().await?;
                return Ok(());
            }
            // A step that continues on error leaves its stage succeeding.
            let failed = phases
                .iter()
                .zip(&stage.steps)
                .position(|(p, step)| status::fails(*p, step.continue_on_error));
            let finished = self.core.clock.now();
            let reason = failed.map(|j| {
                let step = &stage.steps[j];
                let why = self.cell.read(|s| s.stages[i].steps[j].reason.clone());
                format!("step `{}` failed: {why}", step.name)
            });
            self.cell.update(|st| {
                let s = &mut st.stages[i];
                s.finished = Some(finished);
                match &reason {
                    Some(r) => {
                        s.phase = if self.abort.is_cancelled() {
                            StepPhase::Aborted
                        } else {
                            StepPhase::Failed
                        };
                        s.reason = r.clone();
                    }
                    None => s.phase = StepPhase::Succeeded,
                }
            });
            if let Some(r) = reason {
                let phase = self.cell.read(|s| s.stages[i].phase);
                if status::fails(phase, stage.continue_on_error) {
                    failure.get_or_insert(format!("stage `{}`: {r}", stage.name));
                }
            }
            // Not flushed here: the next step's start (or the finish) writes it,
            // and a resumed run derives a stage's end from its steps.
        }

        if !spec.finally.is_empty() && !self.core.shutdown.is_cancelled() {
            let locs: Vec<Loc> = (0..spec.finally.len()).map(Loc::Finally).collect();
            let phases = self
                .run_group("finally", &spec.finally, &locs, self.deadline, true)
                .await?;
            if let Some(j) = phases
                .iter()
                .zip(&spec.finally)
                .position(|(p, step)| *p == StepPhase::Failed && !step.continue_on_error)
            {
                let why = self.cell.read(|s| s.finally[j].reason.clone());
                failure.get_or_insert(format!(
                    "finally step `{}` failed: {why}",
                    spec.finally[j].name
                ));
            }
        }
        if self.core.shutdown.is_cancelled() {
            // Stopped by a shutdown: stay `Running`; the next start resumes.
            self.cell.flush().await?;
            return Ok(());
        }
        if self.abort.is_cancelled() {
            return self
                .finish(ExecutionPhase::Aborted, "aborted".to_owned())
                .await;
        }
        match failure {
            Some(reason) => self.finish(ExecutionPhase::Failed, reason).await,
            None => self.finish(ExecutionPhase::Succeeded, String::new()).await,
        }
    }

    /// Why no new stage may start, if something says so.
    fn stop_reason(&self, failure: &Option<String>) -> Option<String> {
        if self.core.shutdown.is_cancelled() {
            return Some("shutdown".into());
        }
        if self.abort.is_cancelled() {
            return Some("aborted".into());
        }
        if let Some((at, timeout)) = self.deadline
            && Instant::now() >= at
        {
            return Some(format!(
                "timeout: the pipeline's {} passed",
                humantime::format_duration(timeout)
            ));
        }
        failure
            .as_ref()
            .map(|_| "an earlier stage failed".to_owned())
    }

    fn skip_stage(&self, i: usize, why: &str) {
        if why == "shutdown" {
            return;
        }
        self.cell.update(|st| {
            let s = &mut st.stages[i];
            s.phase = StepPhase::Skipped;
            s.reason = why.to_owned();
            for step in &mut s.steps {
                if step.phase == StepPhase::Waiting {
                    step.phase = StepPhase::Skipped;
                    step.reason = why.to_owned();
                }
            }
        });
    }

    async fn finish(&self, phase: ExecutionPhase, reason: String) -> Result<(), Deleted> {
        let now = self.core.clock.now();
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
        self.cell.flush().await
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
    fn eval_context(&self, secrets: &BTreeMap<String, String>) -> MapContext {
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
            (st.outputs.clone(), states)
        });
        MapContext {
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
            ..MapContext::default()
        }
    }

    /// Runs steps in parallel; returns their final phases.
    async fn run_group(
        &self,
        stage: &str,
        steps: &[Step],
        locs: &[Loc],
        deadline: Option<(Instant, Duration)>,
        is_finally: bool,
    ) -> Result<Vec<StepPhase>, Deleted> {
        let siblings = CancelToken::new();
        let remaining = std::sync::atomic::AtomicUsize::new(steps.len());
        let runs = steps.iter().zip(locs).map(|(step, loc)| {
            let (siblings, remaining) = (&siblings, &remaining);
            async move {
                let phase = self
                    .run_step(stage, step, *loc, deadline, is_finally, siblings)
                    .await?;
                // A step that ends while siblings still run is written now
                // (they may run long). The last one's end is carried by the
                // next write, which follows at once: the next step's start,
                // a skipped stage's, or the finish — one commit fewer per
                // group. A crash in between finds the step `Running`, and it
                // runs again as an interrupted attempt (at-least-once until
                // its completion is recorded, as always).
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
        step: &Step,
        loc: Loc,
        deadline: Option<(Instant, Duration)>,
        is_finally: bool,
        siblings: &CancelToken,
    ) -> Result<StepPhase, Deleted> {
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
            StepPhase::Running if !step.repeat_on_restart => {
                let reason = format!(
                    "interrupted: attempt {attempts} was cut off by a restart and the step is not run again (repeat_on_restart: false)"
                );
                self.note(step, attempts, &reason);
                return self
                    .end_step(loc, StepPhase::Failed, reason, None, siblings)
                    .await;
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
                return self
                    .end_step(loc, StepPhase::Failed, reason, None, siblings)
                    .await;
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
                .end_step(loc, StepPhase::Skipped, "aborted".into(), None, siblings)
                .await;
        }
        if let Some(when) = &step.when {
            match when.evaluate(&self.eval_context(&BTreeMap::new())) {
                Ok(true) => {}
                Ok(false) => {
                    return self
                        .end_step(
                            loc,
                            StepPhase::Skipped,
                            "when: condition is false".into(),
                            None,
                            siblings,
                        )
                        .await;
                }
                Err(e) => {
                    return self
                        .end_step(loc, StepPhase::Failed, format!("when: {e}"), None, siblings)
                        .await;
                }
            }
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
                        .end_step(
                            loc,
                            StepPhase::Succeeded,
                            String::new(),
                            Some(outputs),
                            siblings,
                        )
                        .await;
                }
                Err(f) if f.cancelled => {
                    let reason = if self.abort.is_cancelled() {
                        "aborted".to_owned()
                    } else {
                        "cancelled: a sibling step failed (fail_fast)".to_owned()
                    };
                    return self
                        .end_step(loc, StepPhase::Aborted, reason, None, siblings)
                        .await;
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
                                    .end_step(loc, StepPhase::Aborted, "aborted while waiting to retry".into(), None, siblings)
                                    .await;
                            }
                        }
                    }
                    return self
                        .end_step(loc, StepPhase::Failed, f.reason, None, siblings)
                        .await;
                }
            }
        }
    }

    /// Records a step's end; a failure cancels the siblings under `fail_fast`.
    async fn end_step(
        &self,
        loc: Loc,
        phase: StepPhase,
        reason: String,
        outputs: Option<BTreeMap<String, String>>,
        siblings: &CancelToken,
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
        if phase == StepPhase::Failed
            && self.exec.spec.pipeline_spec.fail_fast
            && !status::spec_at(&self.exec.spec.pipeline_spec, loc).continue_on_error
        {
            siblings.cancel();
        }
        // Written by `run_group` (now, or with the next write).
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
