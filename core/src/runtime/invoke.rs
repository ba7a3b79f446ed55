//! One step call: a fresh store from the biz's `InstancePre`, limits, the
//! workspace preopen, log capture, and a typed result.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::{Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::CancelToken;
use super::{Runtime, StepPre};
use crate::host::since_v0_1_0::arkline::step::types as wit;
use crate::host::step_log::{LogCapture, LogLabels};
use crate::host::{
    CallResources, CallerIdentity, EffectiveCapabilities, LogMask, LogSink, LogSource,
    ProcessPolicy, StepLimiter, StepLog, StepState,
};

/// Where guests see the workspace.
pub const WORKSPACE_GUEST_PATH: &str = "/workspace";

/// The pipeline-side facts a step receives in its `context`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallContext {
    /// Pipeline name.
    pub pipeline: String,
    /// Run number.
    pub run: u64,
    /// Stage name.
    pub stage: String,
    /// Step name (its `name:` in the pipeline).
    pub step_name: String,
    /// Attempt, from 1.
    pub attempt: u32,
    /// Environment the step sees (also as WASI environment variables).
    pub env: Vec<(String, String)>,
}

/// Per-call limits; `None` takes the runtime's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallLimits {
    /// Wall-clock limit.
    pub timeout: Option<Duration>,
    /// Linear memory limit in bytes (at most the runtime's `max_memory`).
    pub memory: Option<usize>,
    /// Fuel; `Some(u64::MAX)` is unlimited.
    pub fuel: Option<u64>,
    /// Log cap in bytes.
    pub log: Option<usize>,
    /// Output cap in bytes.
    pub output: Option<usize>,
    /// Refuse `process` runs whose sandbox cannot be built, whatever the
    /// runtime's `ProcessLimits::require_sandbox` says (an engine setting).
    pub require_process_sandbox: bool,
    /// The engine's CPU weight on the guest threads (1–10,000; `None`:
    /// [`DEFAULT_CPU_WEIGHT`](crate::runtime::DEFAULT_CPU_WEIGHT)).
    pub cpu_weight: Option<u32>,
}

/// A request to run one step.
#[derive(Clone, Default)]
pub struct StepCall {
    /// The step type id (one the biz describes).
    pub step_type: String,
    /// Its configuration (the step's `with:`), as JSON.
    pub config: serde_json::Value,
    /// Context facts.
    pub context: CallContext,
    /// Host directory preopened at `/workspace`; `None` gives the guest no files.
    pub workspace: Option<PathBuf>,
    /// Limits.
    pub limits: CallLimits,
    /// Cancels the call from another task.
    pub cancel: Option<CancelToken>,
    /// Sees each log line as it is written.
    pub log_sink: Option<LogSink>,
    /// Rewrites each log line first (secret masking).
    pub log_mask: Option<LogMask>,
    /// Answers the built-in host call
    /// [`arkline.provenance`](crate::provenance::HOST_CALL) of this call.
    pub provenance: Option<crate::host::ProvenanceFn>,
}

impl std::fmt::Debug for StepCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepCall")
            .field("step_type", &self.step_type)
            .field("config", &self.config)
            .field("context", &self.context)
            .field("workspace", &self.workspace)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl StepCall {
    /// A call of `step_type` with `config`.
    pub fn new(step_type: impl Into<String>, config: serde_json::Value) -> Self {
        StepCall {
            step_type: step_type.into(),
            config,
            context: CallContext {
                attempt: 1,
                ..CallContext::default()
            },
            ..StepCall::default()
        }
    }

    /// Preopens `dir` at `/workspace`.
    pub fn workspace(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workspace = Some(dir.into());
        self
    }

    /// Sets the context.
    pub fn context(mut self, context: CallContext) -> Self {
        self.context = context;
        self
    }

    /// Sets the wall-clock limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.limits.timeout = Some(timeout);
        self
    }

    /// Sets the memory limit.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.limits.memory = Some(bytes);
        self
    }

    /// Refuses `process` runs of this call whose sandbox cannot be built (in
    /// addition to the runtime's `ProcessLimits::require_sandbox`).
    pub fn require_process_sandbox(mut self, require: bool) -> Self {
        self.limits.require_process_sandbox = require;
        self
    }

    /// Signs this call's provenance statements (the built-in host call
    /// [`arkline.provenance`](crate::provenance::HOST_CALL), for a biz
    /// granted it) with `signer`; without one the call is answered "not
    /// configured".
    pub fn provenance(mut self, signer: Arc<crate::provenance::Signer>) -> Self {
        self.provenance = Some(Arc::new(move |request: &[u8]| {
            signer.answer(request).map_err(|e| e.to_string())
        }));
        self
    }

    /// Answers this call's provenance requests with `why` (the engine signs
    /// provenance, but its key cannot be read): only a step that asks fails.
    pub fn provenance_refused(mut self, why: String) -> Self {
        self.provenance = Some(Arc::new(move |_: &[u8]| Err(why.clone())));
        self
    }

    /// Sets the CPU weight of the caller's engine on the guest threads (an
    /// engine setting; 1–10,000, clamped).
    pub fn cpu_weight(mut self, weight: u32) -> Self {
        self.limits.cpu_weight = Some(weight);
        self
    }

    /// Sets the fuel.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.limits.fuel = Some(fuel);
        self
    }

    /// Sets the log cap.
    pub fn log_limit(mut self, bytes: usize) -> Self {
        self.limits.log = Some(bytes);
        self
    }

    /// Sets the output cap.
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.limits.output = Some(bytes);
        self
    }

    /// Watches `token` for cancellation.
    pub fn cancel_on(mut self, token: CancelToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Streams log lines to `sink` as they are written.
    pub fn log_sink(mut self, sink: LogSink) -> Self {
        self.log_sink = Some(sink);
        self
    }

    /// Rewrites every log line with `mask` before it is kept, streamed to the
    /// sink or traced (the engine masks the step's secrets so).
    pub fn log_mask(mut self, mask: LogMask) -> Self {
        self.log_mask = Some(mask);
        self
    }
}

/// What a step returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// Named outputs (a repeated key keeps its last value).
    pub outputs: BTreeMap<String, String>,
    /// A one-line summary.
    pub summary: Option<String>,
}

/// Why a step did not succeed: its own error, or a fault the host caught.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepFailure {
    /// The step rejected its configuration.
    #[error("invalid configuration{}: {message}", field.as_ref().map(|f| format!(" at `{f}`")).unwrap_or_default())]
    InvalidConfig {
        /// Path of the offending field.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The biz does not implement the step type.
    #[error("biz `{biz}` has no step type `{step_type}` (it has: {available})")]
    UnknownStepType {
        /// `name@version`.
        biz: String,
        /// The requested type.
        step_type: String,
        /// The types it has.
        available: String,
    },
    /// The step ran and reported failure.
    #[error("{0}")]
    Failed(String),
    /// The host stopped the guest.
    #[error(transparent)]
    Fault(#[from] StepFault),
}

impl StepFailure {
    /// A short, stable name of the kind of failure (for metrics and JSON): the
    /// fault's kind for faults.
    pub fn kind(&self) -> &'static str {
        match self {
            StepFailure::InvalidConfig { .. } => "invalid_config",
            StepFailure::UnknownStepType { .. } => "unknown_step_type",
            StepFailure::Failed(_) => "failed",
            StepFailure::Fault(fault) => fault.kind(),
        }
    }
}

/// A fault: the guest was stopped, and its store dropped. The host and every other
/// biz carry on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepFault {
    /// The guest trapped (a panic, an out-of-bounds access, `unreachable`).
    #[error("the step trapped: {message}")]
    Trap {
        /// The trap, with the guest's panic message when it printed one.
        message: String,
        /// The guest's call stack, when known.
        backtrace: Option<String>,
    },
    /// The guest exhausted its wasm stack (runaway recursion).
    #[error("the step overflowed its stack (runaway recursion?)")]
    StackOverflow {
        /// The guest's call stack, when known.
        backtrace: Option<String>,
    },
    /// The wall-clock limit passed.
    #[error("the step timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// The limit.
        after: Duration,
    },
    /// The guest asked for more memory than its limit.
    #[error("the step exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The limit in bytes.
        limit: usize,
    },
    /// The guest used all its fuel.
    #[error("the step ran out of fuel ({fuel} units)")]
    OutOfFuel {
        /// The fuel it had.
        fuel: u64,
    },
    /// The call was cancelled (an abort, or a forced uninstall of its biz).
    #[error("the step was cancelled")]
    Cancelled,
    /// Its outputs were larger than allowed.
    #[error("the step's outputs are {size} bytes, over the limit of {limit} bytes")]
    OutputTooLarge {
        /// Their size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// No instance slot was free: too many calls at once.
    #[error("no capacity for another step instance: {0}")]
    Capacity(String),
    /// The component could not be instantiated.
    #[error("the biz could not be instantiated: {0}")]
    Instantiate(String),
    /// The workspace could not be provided.
    #[error("cannot open the workspace: {0}")]
    Workspace(String),
}

impl StepFault {
    /// A short, stable name of the kind of fault (for metrics and JSON).
    pub fn kind(&self) -> &'static str {
        match self {
            StepFault::Trap { .. } => "trap",
            StepFault::StackOverflow { .. } => "stack_overflow",
            StepFault::Timeout { .. } => "timeout",
            StepFault::MemoryLimit { .. } => "memory_limit",
            StepFault::OutOfFuel { .. } => "out_of_fuel",
            StepFault::Cancelled => "cancelled",
            StepFault::OutputTooLarge { .. } => "output_too_large",
            StepFault::Capacity(_) => "capacity",
            StepFault::Instantiate(_) => "instantiate",
            StepFault::Workspace(_) => "workspace",
        }
    }
}

/// Everything about one finished call.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The biz that ran, `name@version`.
    pub biz: String,
    /// The step type.
    pub step_type: String,
    /// The outcome or the failure.
    pub result: Result<StepOutcome, StepFailure>,
    /// The captured log.
    pub log: StepLog,
    /// Fuel the call consumed.
    pub fuel_consumed: u64,
    /// Wall-clock time of the call, instantiation included.
    pub elapsed: Duration,
    /// Whether a fresh instance was created for the call (false when it failed
    /// before that: unknown step type, workspace, instantiation, or a cancel or
    /// timeout that came first).
    pub instantiated: bool,
}

impl StepReport {
    /// The fault, if the host stopped the guest.
    pub fn fault(&self) -> Option<&StepFault> {
        match &self.result {
            Err(StepFailure::Fault(f)) => Some(f),
            _ => None,
        }
    }

    /// The outputs, if the step succeeded.
    pub fn outputs(&self) -> Option<&BTreeMap<String, String>> {
        self.result.as_ref().ok().map(|o| &o.outputs)
    }
}

/// Why a guest stopped at an epoch check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupted {
    Timeout,
    Cancelled,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interrupted::Timeout => "interrupted: deadline passed",
            Interrupted::Cancelled => "interrupted: cancelled",
        })
    }
}

impl std::error::Error for Interrupted {}

/// What the invocation needs of an installed biz.
pub(crate) struct Invocable<'a> {
    pub runtime: &'a Runtime,
    pub pre: &'a StepPre,
    pub caller: &'a Arc<CallerIdentity>,
    pub capabilities: &'a Arc<EffectiveCapabilities>,
    pub process: &'a Arc<ProcessPolicy>,
    pub cache: Option<crate::host::BlobCache>,
    pub http: &'a Arc<crate::host::http::HttpPolicy>,
    pub step_types: &'a [String],
    /// Cancelled when the biz is force-uninstalled.
    pub biz_cancel: &'a CancelToken,
}

enum GuestError {
    Instantiate(wasmtime::Error),
    Run(wasmtime::Error),
}

type GuestResult = Result<Result<wit::Outcome, wit::StepError>, GuestError>;

enum Ended {
    Returned(GuestResult),
    Cancelled,
    TimedOut,
}

/// Runs one step call to the end. Never panics on guest behaviour.
pub(crate) async fn invoke(target: Invocable<'_>, call: StepCall) -> StepReport {
    let biz = format!("{}@{}", target.caller.biz, target.caller.version);
    let span = tracing::info_span!(
        "step",
        engine = %target.caller.engine,
        biz = %biz,
        step = %call.context.step_name,
        step_type = %call.step_type,
    );
    invoke_inner(target, call, biz).instrument(span).await
}

async fn invoke_inner(target: Invocable<'_>, call: StepCall, biz: String) -> StepReport {
    let started = Instant::now();
    let config = target.runtime.config();
    let labels = LogLabels {
        engine: target.caller.engine.clone(),
        biz: biz.clone(),
        step: if call.context.step_name.is_empty() {
            call.step_type.clone()
        } else {
            call.context.step_name.clone()
        },
    };
    let log = LogCapture::new(
        call.limits.log.unwrap_or(config.log_limit),
        labels,
        call.log_sink.clone(),
    )
    .with_mask(call.log_mask.clone());
    let instantiated = AtomicBool::new(false);
    let report =
        |result: Result<StepOutcome, StepFailure>, log: &LogCapture, fuel: u64| StepReport {
            biz: biz.clone(),
            step_type: call.step_type.clone(),
            result,
            log: log.finish(),
            fuel_consumed: fuel,
            elapsed: started.elapsed(),
            instantiated: instantiated.load(Ordering::Relaxed),
        };

    if !target.step_types.contains(&call.step_type) {
        let failure = StepFailure::UnknownStepType {
            biz: biz.clone(),
            step_type: call.step_type.clone(),
            available: target.step_types.join(", "),
        };
        return report(Err(failure), &log, 0);
    }

    let memory_limit = call
        .limits
        .memory
        .unwrap_or(config.memory_limit)
        .min(config.max_memory);
    let timeout = call.limits.timeout.unwrap_or(config.timeout);
    let fuel = call.limits.fuel.or(config.fuel).unwrap_or(u64::MAX);

    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(log.stream(LogSource::Stdout))
        .stderr(log.stream(LogSource::Stderr))
        .envs(&call.context.env);
    if let Some(dir) = &call.workspace
        && let Err(e) = wasi.preopened_dir(dir, WORKSPACE_GUEST_PATH, FsPerms::ReadWrite)
    {
        let fault = StepFault::Workspace(format!("{}: {e:#}", dir.display()));
        return report(Err(fault.into()), &log, 0);
    }
    let deadline = started + timeout;
    let state = StepState::new(
        wasi.build(),
        StepLimiter::new(memory_limit),
        log.clone(),
        target.caller.clone(),
        target.capabilities.clone(),
        CallResources {
            workspace: call.workspace.clone(),
            deadline,
            process: target.process.clone(),
            require_process_sandbox: call.limits.require_process_sandbox,
            cache: target.cache.clone(),
            http: target.http.clone(),
            http_client: target.runtime.http_client(),
            native: target.runtime.native_plugins().clone(),
            provenance: call.provenance.clone(),
        },
    );
    let mut store = Store::new(target.runtime.engine(), state);
    store.limiter(|s| &mut s.limiter);
    if let Err(e) = store.set_fuel(fuel) {
        let fault = StepFault::Instantiate(format!("cannot set fuel: {e:#}"));
        return report(Err(fault.into()), &log, 0);
    }
    if let Err(e) = store.fuel_async_yield_interval(config.slice_fuel) {
        let fault = StepFault::Instantiate(format!("cannot set the fuel yield interval: {e:#}"));
        return report(Err(fault.into()), &log, 0);
    }
    let call_token = call.cancel.clone();
    let biz_token = target.biz_cancel.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if biz_token.is_cancelled() || call_token.as_ref().is_some_and(CancelToken::is_cancelled) {
            return Err(Interrupted::Cancelled.into());
        }
        if Instant::now() >= deadline {
            return Err(Interrupted::Timeout.into());
        }
        // Yield to the executor at every tick so a CPU-bound guest shares its thread.
        Ok(UpdateDeadline::Yield(1))
    });

    let context = wit::Context {
        engine: target.caller.engine.clone(),
        pipeline: call.context.pipeline.clone(),
        run: call.context.run,
        stage: call.context.stage.clone(),
        step_name: call.context.step_name.clone(),
        step_type: call.step_type.clone(),
        attempt: call.context.attempt,
        workspace: WORKSPACE_GUEST_PATH.to_owned(),
        env: call
            .context
            .env
            .iter()
            .map(|(k, v)| wit::KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
    };
    let config_json = call.config.to_string();

    let ended = {
        let guest = run_guest(
            &mut store,
            target.pre,
            &context,
            &config_json,
            &instantiated,
        );
        tokio::select! {
            r = guest => Ended::Returned(r),
            () = cancelled(call.cancel.as_ref(), target.biz_cancel) => Ended::Cancelled,
            () = tokio::time::sleep_until(deadline.into()) => Ended::TimedOut,
        }
    };
    let consumed = fuel.saturating_sub(store.get_fuel().unwrap_or(fuel));
    let limiter = store.data().limiter().clone();
    drop(store);

    let result = match ended {
        Ended::Cancelled => Err(StepFault::Cancelled.into()),
        Ended::TimedOut => Err(StepFault::Timeout { after: timeout }.into()),
        Ended::Returned(Ok(Ok(outcome))) => {
            let limit = call.limits.output.unwrap_or(config.output_limit);
            let size: usize = outcome
                .outputs
                .iter()
                .map(|kv| kv.key.len() + kv.value.len())
                .sum::<usize>()
                + outcome.summary.as_ref().map_or(0, String::len);
            if size > limit {
                Err(StepFault::OutputTooLarge { size, limit }.into())
            } else {
                Ok(StepOutcome {
                    outputs: outcome
                        .outputs
                        .into_iter()
                        .map(|kv| (kv.key, kv.value))
                        .collect(),
                    summary: outcome.summary,
                })
            }
        }
        Ended::Returned(Ok(Err(step_error))) => Err(match step_error {
            wit::StepError::InvalidConfig(e) => StepFailure::InvalidConfig {
                field: e.field,
                message: e.message,
            },
            wit::StepError::UnknownStepType(t) => StepFailure::UnknownStepType {
                biz: biz.clone(),
                step_type: t,
                available: target.step_types.join(", "),
            },
            wit::StepError::Failed(message) => StepFailure::Failed(message),
        }),
        Ended::Returned(Err(GuestError::Instantiate(e))) => {
            Err(classify(&e, &limiter, timeout, fuel, &log, true).into())
        }
        Ended::Returned(Err(GuestError::Run(e))) => {
            Err(classify(&e, &limiter, timeout, fuel, &log, false).into())
        }
    };
    if let Err(StepFailure::Fault(fault)) = &result {
        tracing::warn!(kind = fault.kind(), "step fault: {fault}");
    }
    report(result, &log, consumed)
}

async fn run_guest(
    store: &mut Store<StepState>,
    pre: &StepPre,
    context: &wit::Context,
    config: &str,
    instantiated: &AtomicBool,
) -> GuestResult {
    match pre {
        StepPre::V0_1_0(pre) => {
            let instance = pre
                .instantiate_async(&mut *store)
                .await
                .map_err(GuestError::Instantiate)?;
            instantiated.store(true, Ordering::Relaxed);
            instance
                .arkline_step_plugin()
                .call_run(&mut *store, context, config)
                .await
                .map_err(GuestError::Run)
        }
    }
}

async fn cancelled(call: Option<&CancelToken>, biz: &CancelToken) {
    match call {
        Some(call) => tokio::select! {
            () = call.cancelled() => {},
            () = biz.cancelled() => {},
        },
        None => biz.cancelled().await,
    }
}

fn classify(
    error: &wasmtime::Error,
    limiter: &StepLimiter,
    timeout: Duration,
    fuel: u64,
    log: &LogCapture,
    instantiating: bool,
) -> StepFault {
    if let Some(interrupted) = error.downcast_ref::<Interrupted>() {
        return match interrupted {
            Interrupted::Timeout => StepFault::Timeout { after: timeout },
            Interrupted::Cancelled => StepFault::Cancelled,
        };
    }
    if limiter.memory_exceeded() {
        return StepFault::MemoryLimit {
            limit: limiter.memory_limit(),
        };
    }
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return StepFault::Capacity(format!("{error:#}"));
    }
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(|bt| {
            let text = bt.to_string();
            // wasmtime's heading says nothing the fault does not.
            match text.split_once('\n') {
                Some((first, rest)) if first.contains("wasm backtrace") => rest.to_owned(),
                _ => text,
            }
        })
        .filter(|bt| !bt.trim().is_empty());
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => StepFault::OutOfFuel { fuel },
        Some(Trap::StackOverflow) => StepFault::StackOverflow { backtrace },
        Some(trap) => {
            let mut message = trap.to_string();
            if let Some(panic) = panic_message(&log.finish()) {
                message = format!("{message}; the guest panicked: {panic}");
            }
            StepFault::Trap { message, backtrace }
        }
        None if instantiating => StepFault::Instantiate(format!("{error:#}")),
        None => StepFault::Trap {
            message: format!("{error:#}"),
            backtrace,
        },
    }
}

/// The message of a Rust panic the guest printed to stderr, if any.
fn panic_message(log: &StepLog) -> Option<String> {
    let stderr: Vec<&str> = log
        .from_source(LogSource::Stderr)
        .map(|l| l.message.as_str())
        .collect();
    let start = stderr.iter().rposition(|l| l.contains("panicked at"))?;
    let message: Vec<&str> = stderr[start + 1..]
        .iter()
        .take_while(|l| !l.starts_with("note: "))
        .copied()
        .collect();
    let text = message.join("\n").trim().to_owned();
    Some(if text.is_empty() {
        stderr[start].to_owned()
    } else {
        text
    })
}
