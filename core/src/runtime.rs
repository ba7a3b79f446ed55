//! The isolation runtime: wasmtime, compiled components, bizes and step calls.
//!
//! A process-wide [`Runtime`] (one wasmtime engine with a pooling allocator, an
//! epoch ticker, the on-disk [`CompiledCache`], one linker per served
//! `arkline:step` version) prepares components; per engine, a [`BizRegistry`]
//! installs bizes, activates and switches versions, hands out [`BizLease`]s and
//! uninstalls. Every step call ([`BizLease::invoke`]) runs in a fresh store and
//! ends in a [`StepReport`]: outputs, or a [`StepFailure`] such as a
//! [`StepFault`] the host caught. [`describe_component`] and
//! [`inspect_component`] check a component and ask it for its step types.
//!
//! This layer reads archives ([`crate::ark`]) and serves the host API
//! ([`crate::host`]); it knows nothing of pipelines, executions or stores.
//!
//! ```no_run
//! use arkline::ark::Ark;
//! use arkline::host::Capabilities;
//! use arkline::runtime::{Activation, BizRegistry, Runtime, RuntimeConfig, StepCall};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::new(RuntimeConfig::default().cache_dir("data/compiled"))?;
//! let team_a = BizRegistry::new(runtime.clone(), "team-a");
//! team_a.install(Ark::open("shell-0.1.0.ark")?.into(), &Capabilities::default(), Activation::IfNone).await?;
//! let lease = team_a.resolve("shell@^0.1")?; // held until dropped; uninstall waits for it
//! let report = lease.invoke(StepCall::new("run", serde_json::json!({"script": "true"}))).await;
//! # let _ = report; Ok(()) }
//! ```

mod cancel;
mod compiled;
mod component;
mod guests;
mod idle;
mod invoke;
mod registry;

pub use cancel::CancelToken;
pub use compiled::{CacheOutcome, CompiledCache};
pub use component::{
    ComponentError, ComponentInfo, DescribedStep, describe_component, describe_engine,
    inspect_component,
};
pub use guests::{DEFAULT_CPU_WEIGHT, EngineCpu, MAX_CPU_WEIGHT};
pub use invoke::{
    CallContext, CallLimits, StepCall, StepFailure, StepFault, StepOutcome, StepReport,
    WORKSPACE_GUEST_PATH,
};
pub use registry::{
    Activation, BizInfo, BizLease, BizRegistry, BizState, InstallError, LifecycleError,
    LifecycleEvent, UninstallMode, parse_reference,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use semver::Version;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::ark::Ark;
use crate::host::{self, StepState, since_v0_1_0};

/// How the runtime is set up. `Default` suits a server; every field has a builder.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled components are cached; `None` compiles in memory on every
    /// install.
    pub cache_dir: Option<PathBuf>,
    /// Use the pooling instance allocator (falls back to on-demand allocation, with
    /// a warning, when its address space cannot be reserved).
    pub pooling: bool,
    /// Step calls that can run at once (pooling slots).
    pub max_instances: u32,
    /// The largest linear memory any step may have (the pooling slot size); the
    /// per-call limit cannot exceed it.
    pub max_memory: usize,
    /// Bytes of each linear memory kept resident between calls (pooling): faster
    /// re-instantiation for a little RSS.
    pub keep_resident: usize,
    /// Idle pooling slots kept warm for bizes other than the one being
    /// instantiated (wasmtime's `max_unused_warm_slots`): fewer saves RSS when
    /// many distinct bizes run, more keeps rarely-called bizes fast.
    pub warm_slots: u32,
    /// How often the epoch advances: the granularity of timeouts, cancellation and
    /// async yields of CPU-bound guests.
    pub epoch_tick: Duration,
    /// Fuel a guest burns between two yields to its executor (wasmtime's
    /// `fuel_async_yield_interval`; `None`: only the epoch tick yields). The
    /// default, 1,000,000 (about a millisecond of guest code here), bounds how
    /// long a computing guest's first poll holds the caller's async worker, and
    /// how long a call of another engine waits for a guest thread, to about a
    /// millisecond instead of up to an epoch tick.
    pub slice_fuel: Option<u64>,
    /// Threads that run guest code that outlasts its first epoch slice (0: one
    /// per CPU but one, at least one, so the control plane keeps a core). Such
    /// calls run on these, never on the caller's async workers, so a guest
    /// computing until its deadline cannot starve the store, timers and
    /// controllers of the embedder's runtime, nor other engines' bookkeeping
    /// (the noisy-neighbour bench: quiet-engine step p99 1.9× with one guest
    /// thread on 2 CPUs, 4.5× with two).
    pub guest_threads: usize,
    /// Nice value added to the guest threads (Linux; 0 leaves them alone). The
    /// default, 10, lets the host's control plane — store writes, timers,
    /// controllers, the API — preempt guests that compute, so a neighbour's
    /// busy guest delays another engine's bookkeeping by little.
    pub guest_nice: i32,
    /// Default memory limit of one step call.
    pub memory_limit: usize,
    /// Default wall-clock limit of one step call.
    pub timeout: Duration,
    /// Default fuel of one step call; `None` is unlimited (fuel metering stays on).
    pub fuel: Option<u64>,
    /// Default cap on a step's captured log, in bytes.
    pub log_limit: usize,
    /// Default cap on a step's outputs (keys plus values), in bytes.
    pub output_limit: usize,
    /// Wasm stack size of a step call.
    pub max_wasm_stack: usize,
    /// Limits of programs run through the `process` capability.
    pub process_limits: crate::host::ProcessLimits,
    /// Hand the pages of a biz's compiled code back to the kernel once no call
    /// has used it for this long (`None`: never). The code stays mapped; its
    /// next call faults the pages it needs back in from the compiled cache
    /// (once, a few hundred microseconds to a few milliseconds). Only code
    /// loaded from the cache directory is released. Default: 60 s.
    pub idle_release: Option<Duration>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            pooling: true,
            max_instances: 256,
            max_memory: 1 << 30,
            keep_resident: 1 << 20,
            warm_slots: 100,
            epoch_tick: Duration::from_millis(10),
            slice_fuel: Some(1_000_000),
            guest_threads: 0,
            guest_nice: 10,
            memory_limit: 256 << 20,
            timeout: Duration::from_secs(600),
            fuel: None,
            log_limit: 4 << 20,
            output_limit: 1 << 20,
            max_wasm_stack: 1 << 20,
            process_limits: crate::host::ProcessLimits::default(),
            idle_release: Some(Duration::from_secs(60)),
        }
    }
}

impl RuntimeConfig {
    /// Caches compiled components in `dir`.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Turns the pooling allocator on or off.
    pub fn pooling(mut self, on: bool) -> Self {
        self.pooling = on;
        self
    }

    /// Sets the number of concurrent step calls (pooling slots).
    pub fn max_instances(mut self, n: u32) -> Self {
        self.max_instances = n;
        self
    }

    /// Sets the largest memory any step may have (the pooling slot size).
    pub fn max_memory(mut self, bytes: usize) -> Self {
        self.max_memory = bytes;
        self
    }

    /// Sets how many idle pooling slots stay warm for other bizes.
    pub fn warm_slots(mut self, n: u32) -> Self {
        self.warm_slots = n;
        self
    }

    /// Sets how much of each linear memory stays resident between calls.
    pub fn keep_resident(mut self, bytes: usize) -> Self {
        self.keep_resident = bytes;
        self
    }

    /// Sets the default per-call memory limit.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Sets the default per-call timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the default per-call fuel.
    pub fn fuel(mut self, fuel: Option<u64>) -> Self {
        self.fuel = fuel;
        self
    }

    /// Sets the epoch tick.
    pub fn epoch_tick(mut self, tick: Duration) -> Self {
        self.epoch_tick = tick;
        self
    }

    /// Sets the number of guest threads (0: one per CPU but one, at least one).
    pub fn guest_threads(mut self, threads: usize) -> Self {
        self.guest_threads = threads;
        self
    }

    /// Sets the fuel between two yields of a computing guest (`None`: only the
    /// epoch tick yields).
    pub fn slice_fuel(mut self, fuel: Option<u64>) -> Self {
        self.slice_fuel = fuel;
        self
    }

    /// Sets the nice value of the guest threads (0: unchanged).
    pub fn guest_nice(mut self, nice: i32) -> Self {
        self.guest_nice = nice;
        self
    }

    /// Sets the default log cap.
    pub fn log_limit(mut self, bytes: usize) -> Self {
        self.log_limit = bytes;
        self
    }

    /// Sets the default output cap.
    pub fn output_limit(mut self, bytes: usize) -> Self {
        self.output_limit = bytes;
        self
    }

    /// Sets [`RuntimeConfig::idle_release`].
    pub fn idle_release(mut self, after: Option<Duration>) -> Self {
        self.idle_release = after;
        self
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// wasmtime rejected the configuration.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The compiled-cache directory is unusable.
    #[error("cannot use the compiled-component cache directory {path}: {source}")]
    CacheDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
}

/// The process-wide runtime. Cheap to clone; the epoch ticker stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    config: RuntimeConfig,
    pooling: bool,
    cache: Option<CompiledCache>,
    linker_v0_1_0: Linker<StepState>,
    ticker: Mutex<Option<Ticker>>,
    guests: Guests,
    http: std::sync::OnceLock<Result<crate::host::http::HttpClient, String>>,
    native: crate::native::NativePlugins,
    images: Arc<idle::Images>,
}

/// The threads step calls run on once their first poll did not finish them,
/// shared fairly by engines (weighted fair queueing, see `runtime/guests.rs`), so the CPU a guest burns is scheduled
/// against other guests, not against the host's control plane.
struct Guests {
    threads: Option<guests::GuestThreads>,
}

/// Adds `nice` to the calling thread's nice value (Linux: per thread). Best
/// effort: a failure leaves the thread at its priority.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: plain syscalls on the calling thread, no memory passed.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let current = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(
                libc::PRIO_PROCESS,
                tid,
                current.saturating_add(nice).min(19),
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

struct Ticker {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        let ticker = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(ticker) = ticker {
            drop(ticker.stop);
            let _ = ticker.thread.join();
        }
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("pooling", &self.inner.pooling)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Starts a runtime: builds the engine (pooling if possible), the linkers and
    /// the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        if config.memory_limit > config.max_memory {
            return Err(RuntimeError::Config(format!(
                "memory_limit ({} bytes) exceeds max_memory ({} bytes), the largest memory the allocator provides",
                config.memory_limit, config.max_memory
            )));
        }
        if config.epoch_tick.is_zero() {
            return Err(RuntimeError::Config("epoch_tick must be above zero".into()));
        }
        if config.slice_fuel == Some(0) {
            return Err(RuntimeError::Config(
                "slice_fuel must be above zero (or None: yield on the epoch tick only)".into(),
            ));
        }
        let (engine, pooling) = build_engine(&config)?;
        let cache = match &config.cache_dir {
            Some(dir) => {
                Some(
                    CompiledCache::open(dir).map_err(|source| RuntimeError::CacheDir {
                        path: dir.display().to_string(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .and_then(|()| since_v0_1_0::add_to_linker(&mut linker))
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let (stop, stopped) = mpsc::channel::<()>();
        let tick = config.epoch_tick;
        let ticking = engine.clone();
        let images = Arc::new(idle::Images::default());
        let sweeping = images.clone();
        let idle_release = config.idle_release;
        let thread = std::thread::Builder::new()
            .name("arkline-epoch".into())
            .spawn(move || {
                // Idle images are looked for a few times per release period.
                let sweep_every =
                    idle_release.map(|idle| (idle / 4).clamp(tick, Duration::from_secs(5)));
                let mut last_sweep = std::time::Instant::now();
                // Ends when the runtime drops its sender.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    ticking.increment_epoch();
                    if let (Some(idle), Some(every)) = (idle_release, sweep_every)
                        && last_sweep.elapsed() >= every
                    {
                        last_sweep = std::time::Instant::now();
                        sweeping.sweep(idle);
                    }
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        let threads = match config.guest_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
            n => n,
        };
        let guests = guests::GuestThreads::start(threads, config.guest_nice)
            .map_err(|e| RuntimeError::Engine(format!("cannot start the guest threads: {e}")))?;

        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                config,
                pooling,
                cache,
                linker_v0_1_0: linker,
                ticker: Mutex::new(Some(Ticker { stop, thread })),
                guests: Guests {
                    threads: Some(guests),
                },
                http: std::sync::OnceLock::new(),
                native: crate::native::NativePlugins::new(),
                images,
            }),
        })
    }

    /// Runs `call` to its end. Its first poll runs on the caller's thread: most
    /// step calls finish there without waiting (no thread hop, which would cost
    /// more than a short call). A call that waits — a guest that used up its
    /// epoch slice and yields, or one waiting on a host call — moves to the
    /// guest threads, so a guest computing until its deadline never holds a
    /// worker of the caller's runtime for more than one slice. There the
    /// engines share the threads by `cpu_weight` (weighted fair queueing by
    /// the CPU each engine's calls used), not first come, first served. Dropping the
    /// returned future aborts the call (its store is dropped where it runs).
    pub(crate) async fn run_guest_call<T: Send + 'static>(
        &self,
        engine: &str,
        cpu_weight: u32,
        call: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, String> {
        use std::task::Poll;
        let mut call = Box::pin(call);
        if let Poll::Ready(done) =
            std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await
        {
            return Ok(done);
        }
        let Some(threads) = &self.inner.guests.threads else {
            return Err("the guest threads have stopped".into());
        };
        threads.spawn(engine, cpu_weight, call).await
    }

    /// What the guest threads did for each engine so far (polls, busy time,
    /// weight), by engine name: how the engines' CPU shares came out.
    pub fn guest_cpu(&self) -> Vec<(String, EngineCpu)> {
        self.inner
            .guests
            .threads
            .as_ref()
            .map(guests::GuestThreads::cpu)
            .unwrap_or_default()
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Whether the pooling allocator is in use (false after a fallback).
    pub fn is_pooling(&self) -> bool {
        self.inner.pooling
    }

    /// The HTTP client every `http` capability call shares (built on first use),
    /// or why it could not be built.
    pub fn http_client(&self) -> Result<crate::host::http::HttpClient, String> {
        self.inner
            .http
            .get_or_init(|| crate::host::http::HttpClient::new().map_err(|e| e.to_string()))
            .clone()
    }

    /// The process-wide native plugins (trusted host extensions serving
    /// `host-call`). Load them with [`NativePlugins::load`](crate::native::NativePlugins::load).
    pub fn native_plugins(&self) -> &crate::native::NativePlugins {
        &self.inner.native
    }

    /// The compiled-component cache, when configured.
    pub fn compiled_cache(&self) -> Option<&CompiledCache> {
        self.inner.cache.as_ref()
    }

    /// Compiles (or loads from the cache) the component of a verified archive and
    /// links it against the step API version it exports.
    ///
    /// This is the CPU-heavy half of an install; it does not touch any registry.
    pub fn prepare(&self, ark: &Ark) -> Result<PreparedBiz, ComponentError> {
        component::check_header(&ark.component)?;
        let sha256 = &ark.manifest.component.sha256;
        let (component, cache) = match &self.inner.cache {
            Some(cache) => cache.load_or_compile(&self.inner.engine, sha256, &ark.component)?,
            None => (
                compiled::compile(&self.inner.engine, &ark.component)?,
                CacheOutcome::Uncached,
            ),
        };
        let api_version = component::step_api_version(&self.inner.engine, &component)?;
        let pre = self.link(&component, &api_version)?;
        let image = self.inner.images.track(
            component.image_range(),
            !matches!(cache, CacheOutcome::Uncached),
        );
        // Kept as compact JSON text, parsed when a pipeline is checked: a
        // `serde_json::Value` tree costs several times its text in small heap
        // nodes, for every installed biz (ARCHITECTURE.md, "density").
        let schemas = ark
            .manifest
            .steps
            .iter()
            .filter_map(|step| {
                let schema = ark.step_schema(&step.id)?;
                Some((step.id.clone(), Box::<str>::from(schema.to_string())))
            })
            .collect();
        Ok(PreparedBiz {
            name: ark.manifest.name.clone(),
            version: ark.manifest.version.clone(),
            sha256: sha256.clone(),
            api_version,
            pre,
            image,
            schemas: Arc::new(schemas),
            cache,
        })
    }

    fn link(&self, component: &Component, api: &Version) -> Result<StepPre, ComponentError> {
        if *api == since_v0_1_0::VERSION {
            let pre = self
                .inner
                .linker_v0_1_0
                .instantiate_pre(component)
                .map_err(|e| ComponentError::Link(format!("{e:#}")))?;
            let pre = since_v0_1_0::StepPre::new(pre)
                .map_err(|e| ComponentError::Link(format!("{e:#}")))?;
            return Ok(StepPre::V0_1_0(pre));
        }
        Err(ComponentError::UnsupportedApi {
            found: api.clone(),
            supported: host::supported_api_versions()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// A component linked against the step API version it targets.
#[derive(Clone)]
pub(crate) enum StepPre {
    /// `arkline:step@0.1.0`.
    V0_1_0(since_v0_1_0::StepPre<StepState>),
}

/// A compiled and linked biz, ready to be registered.
#[derive(Clone)]
pub struct PreparedBiz {
    /// Biz name.
    pub name: String,
    /// Biz version.
    pub version: Version,
    /// SHA-256 of the component.
    pub sha256: String,
    /// The `arkline:step` version it targets.
    pub api_version: Version,
    pub(crate) pre: StepPre,
    /// Its compiled code's mapping, released when idle.
    pub(crate) image: Arc<idle::Image>,
    /// The config schema of each step type the archive carries (step id →
    /// JSON Schema, as compact JSON text), which pipelines' `with:` are
    /// checked against.
    pub(crate) schemas: Arc<BTreeMap<String, Box<str>>>,
    /// Where the compiled code came from.
    pub cache: CacheOutcome,
}

impl std::fmt::Debug for PreparedBiz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedBiz")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("api_version", &self.api_version)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

fn base_config(config: &RuntimeConfig) -> Config {
    let mut c = Config::new();
    c.consume_fuel(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .max_wasm_stack(config.max_wasm_stack)
        // Each biz's compiled artifact is mapped for as long as it is installed,
        // and the pages around every touched one come in with it (fault-around),
        // so sections nothing reads still cost memory per biz. Wasmtime's own
        // trap handling and backtraces need neither of these: native unwind
        // tables (`.eh_frame`) serve only outside unwinders, and the address map
        // only adds a wasm offset beside each function name in a guest backtrace.
        // Together they were ~13 % of a compiled biz (ARCHITECTURE.md, "density").
        .native_unwind_info(false)
        .generate_address_map(false);
    c
}

fn build_engine(config: &RuntimeConfig) -> Result<(Engine, bool), RuntimeError> {
    if config.pooling {
        let mut pool = PoolingAllocationConfig::new();
        // A Rust wasip2 component has a handful of core instances (the program,
        // the WASI adapter and shims) and two memories.
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances.saturating_mul(8))
            .total_memories(config.max_instances.saturating_mul(2))
            .total_tables(config.max_instances.saturating_mul(4))
            .total_stacks(config.max_instances)
            .max_core_instances_per_component(16)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_memory_size(config.max_memory)
            .linear_memory_keep_resident(config.keep_resident)
            .max_unused_warm_slots(config.warm_slots)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut c = base_config(config);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&c) {
            Ok(engine) => return Ok((engine, true)),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "cannot reserve the pooling allocator's address space; falling back to on-demand allocation (slower instantiation)"
            ),
        }
    }
    let c = base_config(config);
    Engine::new(&c)
        .map(|e| (e, false))
        .map_err(|e| RuntimeError::Engine(format!("{e:#}")))
}
