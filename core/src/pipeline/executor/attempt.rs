//! One attempt of a step: its secrets, masker and log, the call into the biz,
//! and what the attempt's failure means for retries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Driver, interpolate_json};
use crate::model::resources::{MAX_REASON_BYTES, cap_reason};
use crate::model::{Step, expr};
use crate::pipeline::logs::{LogKey, LogWriter, MaskFn};
use crate::pipeline::secrets::Masker;
use crate::runtime::{CallContext, CancelToken, StepCall, StepFailure, StepFault};

/// An attempt's secrets, masker and log.
pub(super) struct Prepared {
    pub(super) secrets: BTreeMap<String, String>,
    pub(super) masker: Masker,
    pub(super) writer: LogWriter,
}

/// Why one attempt of a step did not succeed.
pub(super) struct AttemptFailure {
    /// Status reason, e.g. `timeout`, `failed: …`.
    pub(super) reason: String,
    /// Whether another attempt may help.
    pub(super) retryable: bool,
    /// The step was cancelled (abort, fail-fast, shutdown).
    pub(super) cancelled: bool,
}

impl AttemptFailure {
    pub(super) fn fatal(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retryable: false,
            cancelled: false,
        }
    }
}

impl Driver {
    pub(super) fn note(&self, step: &Step, attempt: u32, message: &str) {
        if let Ok(w) = self.log_writer(step, attempt, None) {
            w.note(message);
            w.finish();
        }
    }

    pub(super) fn log_writer(
        &self,
        step: &Step,
        attempt: u32,
        mask: Option<MaskFn>,
    ) -> Result<LogWriter, String> {
        let key = LogKey {
            engine: self.core.name.clone(),
            execution: self.exec.metadata.name.clone(),
            step: step.name.clone(),
        };
        self.core
            .logs
            .writer(&key, attempt, self.core.options.step_log_cap, mask)
            .map_err(|e| e.to_string())
    }

    /// One attempt: secrets, interpolation, cache restore, the call, outputs, cache save.
    /// What an attempt needs before it is recorded as started: the step's
    /// secrets, the masker built from them, and its log writer (opened first, so
    /// a follower that sees the step `Running` finds the log).
    pub(super) async fn prepare(
        &self,
        step: &Step,
        attempt: u32,
    ) -> Result<Prepared, AttemptFailure> {
        let names = step.referenced_secrets();
        if self.exec.spec.untrusted && !names.is_empty() {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            return Err(AttemptFailure::fatal(format!(
                "secrets: this execution is untrusted (a pull request from a fork, or an \
                 event not in `pipelines_from_repo.trusted_events`), so it gets no secret, \
                 and the step reads {}",
                names.join(", ")
            )));
        }
        let secrets: BTreeMap<String, String> = if names.is_empty() {
            BTreeMap::new()
        } else {
            self.core
                .secrets
                .resolve(&names)
                .await
                .map_err(|e| AttemptFailure::fatal(format!("secrets: {e}")))?
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect()
        };
        let masker = Masker::new(secrets.values());
        let mask: Option<MaskFn> = if masker.is_empty() {
            None
        } else {
            let m = masker.clone();
            Some(Arc::new(move |s: &str| m.mask(s)))
        };
        let writer = self
            .log_writer(step, attempt, mask)
            .map_err(|e| AttemptFailure::fatal(format!("log: {e}")))?;
        Ok(Prepared {
            secrets,
            masker,
            writer,
        })
    }

    #[expect(clippy::too_many_arguments, reason = "one attempt's whole context")]
    pub(super) async fn attempt(
        &self,
        stage: &str,
        step: &Step,
        attempt: u32,
        allowed: u32,
        deadline: Option<(Instant, Duration)>,
        cancel: &CancelToken,
        prepared: Result<Prepared, AttemptFailure>,
    ) -> Result<BTreeMap<String, String>, AttemptFailure> {
        let Prepared {
            secrets,
            masker,
            writer,
        } = prepared?;
        let started = Instant::now();
        let result = self
            .attempt_logged(
                stage, step, attempt, allowed, deadline, cancel, &secrets, &masker, &writer,
            )
            .await;
        if let Some((lease, _)) = step
            .uses
            .as_ref()
            .and_then(|u| self.leases.get(&u.to_string()))
        {
            self.core
                .metrics
                .observe_step(&self.core.name, lease.name(), started.elapsed());
        }
        match &result {
            Ok(_) => writer.note(&format!("attempt {attempt} succeeded")),
            Err(f) => writer.note(&format!("attempt {attempt} failed: {}", f.reason)),
        }
        // The log is durable before the attempt's outcome is recorded, and
        // shipped to the nodes' shared archive (when there is one) before it
        // too: a recorded outcome's log outlives this node.
        writer.finish_before_store_writes().await;
        if self.core.logs.ships() {
            let key = crate::pipeline::logs::LogKey {
                engine: self.core.name.clone(),
                execution: self.exec.metadata.name.clone(),
                step: step.name.clone(),
            };
            if let Err(e) = self.core.logs.ship(&key).await {
                tracing::warn!(engine = %self.core.name, execution = %key.execution, step = %key.step, error = %e, "cannot ship the step's log to the archive; it stays on this node");
            }
        }
        result
    }

    #[expect(clippy::too_many_arguments, reason = "one attempt's whole context")]
    pub(super) async fn attempt_logged(
        &self,
        stage: &str,
        step: &Step,
        attempt: u32,
        allowed: u32,
        deadline: Option<(Instant, Duration)>,
        cancel: &CancelToken,
        secrets: &BTreeMap<String, String>,
        masker: &Masker,
        writer: &LogWriter,
    ) -> Result<BTreeMap<String, String>, AttemptFailure> {
        let ctx = self.eval_context(Some(step), secrets, None);
        let config = interpolate_json(
            &serde_json::Value::Object(step.with.clone().into_iter().collect()),
            &ctx,
        )
        .map_err(|e| AttemptFailure::fatal(format!("invalid-config: {e}")))?;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in self
            .exec
            .spec
            .pipeline_spec
            .env
            .iter()
            .chain(step.env.iter())
        {
            let value = expr::interpolate(v, &ctx)
                .map_err(|e| AttemptFailure::fatal(format!("invalid-config: env `{k}`: {e}")))?;
            env.insert(k.clone(), value);
        }
        let uses = step
            .uses
            .as_ref()
            .ok_or_else(|| AttemptFailure::fatal("the step calls no biz"))?;
        let (lease, step_type) = self
            .leases
            .get(&uses.to_string())
            .ok_or_else(|| AttemptFailure::fatal(format!("`{uses}` is not resolved")))?;
        writer.note(&format!(
            "attempt {attempt} of {allowed}: {} {step_type}",
            lease.id()
        ));
        if self.exec.spec.untrusted && !lease.capabilities().is_empty() {
            let allowed = self
                .settings
                .pipelines_from_repo
                .as_ref()
                .is_some_and(|r| r.untrusted_bizes.iter().any(|b| b == lease.name()));
            if !allowed {
                return Err(AttemptFailure::fatal(format!(
                    "untrusted: biz `{}` is granted capabilities in this engine, and this \
                     execution is untrusted (a pull request from a fork, or an event not in \
                     `pipelines_from_repo.trusted_events`); name the biz in \
                     `pipelines_from_repo.untrusted_bizes` to let it run",
                    lease.name()
                )));
            }
        }

        let cache_key = match &step.cache {
            Some(c) => Some(
                expr::interpolate(&c.key, &ctx)
                    .map_err(|e| AttemptFailure::fatal(format!("cache key: {e}")))?,
            ),
            None => None,
        };
        let blobs = self.core.registry.blob_cache();
        let cache_cap = self
            .settings
            .cache
            .max_bytes
            .unwrap_or(self.core.options.cache_entry_cap);
        if let (Some(key), Some(spec)) = (&cache_key, &step.cache) {
            self.restore_cache(blobs.as_ref(), key, &spec.paths, cache_cap, writer)
                .await;
        }

        // The tightest of the step's own timeout and the stage/pipeline deadlines.
        let step_timeout = step
            .timeout
            .or(self.settings.default_step_limits.timeout)
            .map(|t| t.0);
        let mut timeout = step_timeout;
        let mut bound_by_deadline = None;
        if let Some((at, total)) = deadline {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AttemptFailure::fatal(format!(
                    "timeout: the {} deadline passed before the step started",
                    humantime::format_duration(total)
                )));
            }
            if timeout.is_none_or(|t| left < t) {
                timeout = Some(left);
                bound_by_deadline = Some(total);
            }
        }
        let mut call = StepCall::new(step_type.clone(), config)
            .workspace(self.workspace.clone())
            .context(CallContext {
                pipeline: self.exec.spec.pipeline.clone(),
                run: self.exec.spec.run,
                stage: stage.to_owned(),
                step_name: step.name.clone(),
                attempt,
                env: env.into_iter().collect(),
            })
            .cancel_on(cancel.clone());
        let sink_writer = writer.clone();
        call = call.log_sink(Arc::new(move |line| sink_writer.write(line)));
        if !masker.is_empty() {
            // Masked at the source: the host traces each line too.
            let m = masker.clone();
            call = call.log_mask(Arc::new(move |s: &str| m.mask(s)));
        }
        if let Some(t) = timeout {
            call = call.timeout(t);
        }
        let limits = &self.settings.default_step_limits;
        if let Some(m) = limits.memory_bytes {
            call = call.memory_limit(usize::try_from(m).unwrap_or(usize::MAX));
        }
        if let Some(f) = limits.fuel {
            call = call.fuel(f);
        }
        if self.settings.require_sandbox {
            call = call.require_process_sandbox(true);
        }
        if let Some(weight) = self.settings.cpu_weight {
            call = call.cpu_weight(weight);
        }
        match self.provenance_signer(step, lease).await {
            Ok(Some(signer)) => call = call.provenance(Arc::new(signer)),
            Ok(None) => {}
            // Only a step that asks for a statement fails.
            Err(why) => call = call.provenance_refused(why),
        }
        // Wait for a slot of the container's pool (fair across engines) rather
        // than fail with a `Capacity` fault when the instance pool is full.
        let slot = tokio::select! {
            slot = self.core.pool.acquire(&self.core.name) => slot,
            () = cancel.cancelled() => {
                return Err(AttemptFailure {
                    reason: "cancelled".into(),
                    retryable: false,
                    cancelled: true,
                });
            }
        };
        let report = lease.invoke(call).await;
        drop(slot);
        let mut outcome = match report.result {
            Ok(outcome) => outcome,
            Err(StepFailure::Fault(StepFault::Cancelled)) => {
                return Err(AttemptFailure {
                    reason: "cancelled".into(),
                    retryable: false,
                    cancelled: true,
                });
            }
            Err(StepFailure::Fault(StepFault::Timeout { after })) => {
                let reason = match bound_by_deadline {
                    Some(total) => format!(
                        "timeout: the {} deadline of its stage or pipeline passed",
                        humantime::format_duration(total)
                    ),
                    None => format!(
                        "timeout: the step ran past {}",
                        humantime::format_duration(after)
                    ),
                };
                return Err(AttemptFailure {
                    reason,
                    retryable: bound_by_deadline.is_none(),
                    cancelled: false,
                });
            }
            Err(failure) => {
                let retryable = !matches!(
                    failure,
                    StepFailure::InvalidConfig { .. } | StepFailure::UnknownStepType { .. }
                );
                let reason = masker
                    .mask(&format!("{}: {failure}", failure.kind()))
                    .into_owned();
                // The guest chose this text: the log takes it whole (up to the
                // log's cap); the status and the notes, which are not capped
                // by the log, get the capped reason.
                if reason.len() > MAX_REASON_BYTES {
                    writer.text(&reason);
                }
                return Err(AttemptFailure {
                    reason: cap_reason(reason),
                    retryable,
                    cancelled: false,
                });
            }
        };
        for value in outcome.outputs.values_mut() {
            if let std::borrow::Cow::Owned(masked) = masker.mask(value) {
                *value = masked;
            }
        }
        if let Some(summary) = &outcome.summary {
            writer.note(&masker.mask(summary));
        }
        if let (Some(key), Some(spec)) = (&cache_key, &step.cache) {
            if self.exec.spec.untrusted {
                // The cache is the engine's: what an untrusted run saved,
                // a trusted one would restore.
                writer.note(&format!(
                    "cache `{key}` not saved: this execution is untrusted"
                ));
            } else {
                self.save_cache(blobs.as_ref(), key, &spec.paths, cache_cap, writer)
                    .await;
            }
        }
        Ok(outcome.outputs)
    }
}
