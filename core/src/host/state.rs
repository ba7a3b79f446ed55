//! The per-call store data every host function sees.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::capability::{CallerIdentity, Capability, EffectiveCapabilities};
use super::process::ProcessPolicy;
use super::step_log::LogCapture;

/// Memory, table and instance limits of one call, recording when the guest hit
/// the memory limit so the fault can say so.
#[derive(Debug, Clone)]
pub struct StepLimiter {
    memory_limit: usize,
    memory_in_use: usize,
    memory_exceeded: bool,
    table_elements: usize,
}

impl StepLimiter {
    /// Limits linear memory (summed over the component's memories) to
    /// `memory_limit` bytes.
    pub fn new(memory_limit: usize) -> Self {
        StepLimiter {
            memory_limit,
            memory_in_use: 0,
            memory_exceeded: false,
            table_elements: 1 << 20,
        }
    }

    /// Whether a memory growth was refused at the limit.
    pub fn memory_exceeded(&self) -> bool {
        self.memory_exceeded
    }

    /// The memory limit in bytes.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }

    /// Peak linear memory reserved by the guest, in bytes.
    pub fn memory_in_use(&self) -> usize {
        self.memory_in_use
    }
}

impl wasmtime::ResourceLimiter for StepLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.memory_in_use - current.min(self.memory_in_use) + desired;
        if after > self.memory_limit {
            self.memory_exceeded = true;
            return Ok(false);
        }
        self.memory_in_use = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// Store data of one step call: WASI (the workspace preopen, captured stdio), the
/// log, the caller's identity and its effective capabilities.
pub struct StepState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: StepLimiter,
    pub(crate) log: LogCapture,
    pub(crate) caller: Arc<CallerIdentity>,
    pub(crate) capabilities: Arc<EffectiveCapabilities>,
    pub(crate) call: CallResources,
}

/// What host functions of one call may use besides the identity: the host
/// workspace, the deadline, the biz's resolved process policy.
#[derive(Clone)]
pub struct CallResources {
    /// The host directory preopened at `/workspace`.
    pub workspace: Option<PathBuf>,
    /// When the call times out.
    pub deadline: Instant,
    /// Programs the biz may run.
    pub process: Arc<ProcessPolicy>,
    /// The call requires the `process` sandbox (an engine setting).
    pub require_process_sandbox: bool,
    /// The engine's blob cache, when it has one.
    pub cache: Option<super::BlobCache>,
    /// Hosts the biz may reach.
    pub http: Arc<super::http::HttpPolicy>,
    /// The runtime's HTTP client, or why there is none.
    pub http_client: Result<super::http::HttpClient, String>,
    /// The native plugins serving `host-call`.
    pub native: crate::native::NativePlugins,
    /// Answers the built-in host call [`PROVENANCE_CALL`], when the engine
    /// signs provenance.
    pub provenance: Option<ProvenanceFn>,
}

/// The built-in `host-call` name a biz calls to have what it published
/// attested (see `crate::provenance`, which answers it).
pub const PROVENANCE_CALL: &str = "arkline.provenance";

/// Answers a [`PROVENANCE_CALL`] request: its payload → the reply, or the
/// message of an invalid request.
pub type ProvenanceFn = std::sync::Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

impl StepState {
    /// Assembles the state of one call.
    pub fn new(
        wasi: WasiCtx,
        limiter: StepLimiter,
        log: LogCapture,
        caller: Arc<CallerIdentity>,
        capabilities: Arc<EffectiveCapabilities>,
        call: CallResources,
    ) -> Self {
        StepState {
            wasi,
            table: ResourceTable::new(),
            limiter,
            log,
            caller,
            capabilities,
            call,
        }
    }

    /// The limiter, for reading after a call.
    pub fn limiter(&self) -> &StepLimiter {
        &self.limiter
    }

    /// Checks `capability` on `target`; `Err` is the message the guest receives.
    pub(crate) fn check(&self, capability: Capability, target: Option<&str>) -> Result<(), String> {
        self.capabilities
            .check(capability, target)
            .map_err(|why| self.caller.denial(capability, &why))
    }
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
