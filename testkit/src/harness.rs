//! [`Harness`]: a plugin's real component, packaged and installed in the real
//! isolation runtime, for the plugin's own tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::host::{LogLine, LogSink};
use arkline::runtime::{
    Activation, BizLease, BizRegistry, PreparedBiz, Runtime, RuntimeConfig, StepCall, StepReport,
};

/// The engine name calls run under; capability refusals name it.
pub const ENGINE: &str = "test";

/// The wall-clock limit of a call that sets none: a step that never returns fails
/// the test instead of hanging it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a harness could not provide its biz.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HarnessError {
    /// `cargo ark package` of the crate failed (cargo's diagnostics went to stderr).
    #[error("cannot package the plugin crate {manifest}: {message}")]
    Package {
        /// The crate's `Cargo.toml`.
        manifest: PathBuf,
        /// What failed, with its causes.
        message: String,
    },
    /// The archive does not read back or verify.
    #[error("cannot read the archive {path}: {message}")]
    Archive {
        /// The `.ark`.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The runtime did not start.
    #[error("cannot start the arkline runtime: {0}")]
    Runtime(String),
    /// The component did not compile, link or register.
    #[error("cannot install {biz}: {message}")]
    Install {
        /// `name@version`.
        biz: String,
        /// Why.
        message: String,
    },
}

/// A plugin's component, installed in the real isolation runtime, ready to run steps
/// the way an engine runs them: a fresh instance per call, limits, a `/workspace`
/// preopen, capability checks, the captured log.
///
/// The first call packages the plugin (a wasm32 build through the `cargo-ark`
/// library, so the crate's source changes are picked up) and installs it; the
/// packaged and compiled component is shared by every harness of the same crate in
/// the test process, and compiled code is cached in `<target dir>/ark/compiled`
/// across processes. Each harness has its own grants.
///
/// ```no_run
/// // plugins/my-step/tests/steps.rs, with `arkline-testkit` as a dev-dependency
/// use arkline_testkit::{Capabilities, Harness, StepCall};
/// use serde_json::json;
///
/// let h = Harness::current_crate(env!("CARGO_MANIFEST_DIR"));
/// let report = h.run("upper", json!({ "text": "hi" }));
/// assert_eq!(report.outputs().expect("succeeds")["text"], "HI");
///
/// // A call with a workspace and limits, under a grant of `process: sh`.
/// let dir = std::env::temp_dir();
/// let h = h.grant(Capabilities { process: vec!["sh".into()], ..Default::default() });
/// let report = h.call(StepCall::new("build", json!({})).workspace(&dir));
/// println!("{}", report.log.text());
/// ```
///
/// Each log line is also echoed to the test's output (shown when a test fails)
/// unless the call brings its own [`StepCall::log_sink`].
#[derive(Debug)]
pub struct Harness {
    source: Source,
    grants: Capabilities,
    lease: OnceLock<Result<BizLease, HarnessError>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    /// A plugin crate, by its `Cargo.toml`.
    Crate(PathBuf),
    /// An archive.
    Ark(PathBuf),
}

impl Harness {
    /// The plugin crate in `manifest_dir`: pass `env!("CARGO_MANIFEST_DIR")` from the
    /// plugin's own tests.
    pub fn current_crate(manifest_dir: impl AsRef<Path>) -> Harness {
        Harness::new(Source::Crate(manifest_dir.as_ref().join("Cargo.toml")))
    }

    /// An archive already built, e.g. [`plugin`](crate::plugin)`("shell")`.
    pub fn from_ark(path: impl Into<PathBuf>) -> Harness {
        Harness::new(Source::Ark(path.into()))
    }

    fn new(source: Source) -> Harness {
        Harness {
            source,
            grants: Capabilities::default(),
            lease: OnceLock::new(),
        }
    }

    /// Grants these capabilities (default: none beyond `log`). The biz may use what
    /// its manifest requests *and* this grants; `*` in a list grants whatever the
    /// manifest requests of that kind.
    #[must_use]
    pub fn grant(mut self, grants: Capabilities) -> Harness {
        self.grants = grants;
        // A later grant applies to later calls: install again under it.
        self.lease = OnceLock::new();
        self
    }

    /// The installed biz: packages, compiles and installs it on first use (which
    /// blocks, also when called from async code).
    pub fn lease(&self) -> Result<&BizLease, HarnessError> {
        if self.lease.get().is_none() {
            // Packaging describes the component on a tokio runtime of its own, which
            // cannot start on a thread that already drives one (an async test).
            let installed = std::thread::scope(|s| {
                s.spawn(|| install(&self.source, &self.grants))
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            // A concurrent first use may have won; either lease is as good.
            let _ = self.lease.set(installed);
        }
        match self.lease.get() {
            Some(installed) => installed.as_ref().map_err(Clone::clone),
            None => unreachable!("the lease was set above"),
        }
    }

    /// Runs step type `step_type` with configuration `config` (its `with:`), with
    /// no workspace and the default limits, and waits for it.
    ///
    /// # Panics
    /// When the plugin cannot be packaged or installed, or when called from inside
    /// an async runtime (use [`invoke`](Self::invoke) there).
    pub fn run(&self, step_type: &str, config: serde_json::Value) -> StepReport {
        self.call(StepCall::new(step_type, config))
    }

    /// Runs one call and waits for it, on a runtime of its own.
    ///
    /// # Panics
    /// As [`run`](Self::run).
    pub fn call(&self, call: StepCall) -> StepReport {
        if tokio::runtime::Handle::try_current().is_ok() {
            panic!(
                "arkline-testkit: Harness::call blocks and cannot run inside an async runtime; use `Harness::invoke(call).await`"
            );
        }
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => panic!("arkline-testkit: cannot start a tokio runtime: {e}"),
        };
        runtime.block_on(self.invoke(call))
    }

    /// Runs one call (the async variant, for `#[tokio::test]`s). The first use
    /// packages and compiles the plugin on the calling thread.
    ///
    /// # Panics
    /// When the plugin cannot be packaged or installed.
    pub async fn invoke(&self, mut call: StepCall) -> StepReport {
        let lease = match self.lease() {
            Ok(lease) => lease,
            Err(e) => panic!("arkline-testkit: {e}"),
        };
        if call.limits.timeout.is_none() {
            call.limits.timeout = Some(DEFAULT_TIMEOUT);
        }
        if call.log_sink.is_none() {
            call.log_sink = Some(echo(format!("{}/{}", lease.name(), call.step_type)));
        }
        lease.invoke(call).await
    }
}

/// A sink that prints each log line with `eprintln!`, which the test harness
/// captures and shows for failing tests.
fn echo(step: String) -> LogSink {
    Arc::new(move |line: &LogLine| {
        let source = line.source.as_str();
        let fields: String = line
            .fields
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect();
        eprintln!(
            "[{step}] {:>5} {source:<6} | {}{fields}",
            line.level.as_str(),
            line.message
        );
    })
}

/// A packaged and compiled biz, shared by the harnesses of one source.
#[derive(Clone)]
struct Compiled {
    ark: Arc<Ark>,
    prepared: PreparedBiz,
    runtime: Runtime,
}

type Slot = Arc<OnceLock<Result<Compiled, HarnessError>>>;

fn compiled(source: &Source) -> Result<Compiled, HarnessError> {
    static SLOTS: OnceLock<Mutex<HashMap<Source, Slot>>> = OnceLock::new();
    let slot = {
        let slots = SLOTS.get_or_init(Default::default);
        let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(source.clone()).or_default().clone()
    };
    slot.get_or_init(|| compile(source)).clone()
}

fn install(source: &Source, grants: &Capabilities) -> Result<BizLease, HarnessError> {
    let compiled = compiled(source)?;
    let manifest = &compiled.ark.manifest;
    let failed = |message: String| HarnessError::Install {
        biz: format!("{}@{}", manifest.name, manifest.version),
        message,
    };
    let registry = BizRegistry::new(compiled.runtime.clone(), ENGINE);
    registry
        .register(
            compiled.prepared.clone(),
            manifest.clone(),
            grants,
            Activation::Always,
        )
        .map_err(|e| failed(e.to_string()))?;
    registry
        .lease(&manifest.name, &manifest.version)
        .map_err(|e| failed(e.to_string()))
}

fn compile(source: &Source) -> Result<Compiled, HarnessError> {
    let (path, cache) = match source {
        Source::Crate(manifest) => {
            let selection = cargo_ark::cmd::PackageSelection {
                manifest_path: Some(manifest.clone()),
                package: None,
            };
            let packaged = cargo_ark::package_crate(
                &selection,
                &cargo_ark::cmd::CargoOptions::default(),
                &crate::quiet_shell(),
            )
            .map_err(|e| HarnessError::Package {
                manifest: manifest.clone(),
                message: format!("{e:#}"),
            })?;
            (packaged.archive, Some(packaged.compiled_cache))
        }
        Source::Ark(path) => (path.clone(), None),
    };
    let ark = Ark::open(&path).map_err(|e| HarnessError::Archive {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let runtime = runtime(cache)?;
    let prepared = runtime.prepare(&ark).map_err(|e| HarnessError::Install {
        biz: format!("{}@{}", ark.manifest.name, ark.manifest.version),
        message: e.to_string(),
    })?;
    Ok(Compiled {
        ark: Arc::new(ark),
        prepared,
        runtime,
    })
}

/// The process's runtime, created on first use with the compiled cache of the
/// first crate packaged (an archive alone gives none).
fn runtime(cache: Option<PathBuf>) -> Result<Runtime, HarnessError> {
    static RUNTIME: OnceLock<Result<Runtime, HarnessError>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let mut config = RuntimeConfig::default()
                .max_instances(64)
                .timeout(DEFAULT_TIMEOUT);
            if let Some(dir) = cache {
                config = config.cache_dir(dir);
            }
            Runtime::new(config).map_err(|e| HarnessError::Runtime(e.to_string()))
        })
        .clone()
}
