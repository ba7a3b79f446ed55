//! The bizes of one engine: install, activate, switch, lease, uninstall.
//!
//! Lifecycle of one `name@version`:
//!
//! ```text
//! install ─▶ Resolved ─▶ Activated ◀──switch──▶ Deactivated
//!                │            │                      │
//!                └────────────┴──── uninstall ───────┴─▶ Draining ─▶ Uninstalled
//! (an instantiation failure at call time) ─▶ Broken
//! ```
//!
//! At most one version of a name is *activated*: the one `resolve` hands out. Every
//! call runs under a [`BizLease`]; `uninstall` moves the version to `Draining` (no
//! new leases) and completes when the last lease is dropped, or, when forced,
//! cancels the calls running under its leases first. Dropping the last lease of an
//! uninstalled version frees its code.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use semver::{Version, VersionReq};
use tokio::sync::{Notify, broadcast};

use super::invoke::{self, Invocable, StepCall, StepFault, StepReport};
use super::{CancelToken, ComponentError, PreparedBiz, Runtime};
use crate::ark::{Ark, Manifest};
use crate::host::Capabilities;
use crate::host::http::HttpPolicy;
use crate::host::{BlobCache, CallerIdentity, EffectiveCapabilities, ProcessPolicy, StepLog};

/// Where a biz version is in its lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BizState {
    /// Installed and linked, not activated.
    Resolved,
    /// The version `resolve` hands out.
    Activated,
    /// Installed, but another version (or none) is activated.
    Deactivated,
    /// Being uninstalled: no new leases; waiting for running ones.
    Draining,
    /// Gone.
    Uninstalled,
    /// Unusable: its instantiation failed; the reason is kept.
    Broken(String),
}

impl fmt::Display for BizState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BizState::Resolved => f.write_str("resolved"),
            BizState::Activated => f.write_str("activated"),
            BizState::Deactivated => f.write_str("deactivated"),
            BizState::Draining => f.write_str("draining"),
            BizState::Uninstalled => f.write_str("uninstalled"),
            BizState::Broken(reason) => write!(f, "broken ({reason})"),
        }
    }
}

/// A lifecycle change, sent to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The engine.
    pub engine: String,
    /// Biz name.
    pub name: String,
    /// Biz version.
    pub version: Version,
    /// The state it entered.
    pub state: BizState,
}

/// Whether an install activates the new version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Activation {
    /// Activate when no version of the name is activated (the default).
    #[default]
    IfNone,
    /// Activate it, deactivating the current version (install + switch).
    Always,
    /// Leave it `Resolved`.
    Never,
}

/// How `uninstall` treats running calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UninstallMode {
    /// Wait until every lease is released.
    #[default]
    Wait,
    /// Cancel the calls running under its leases, then wait for their leases.
    Force,
}

/// A lifecycle operation that cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// Not installed in this engine.
    #[error(
        "biz `{name}` is not installed in engine `{engine}`{}",
        versions_hint(installed)
    )]
    NotInstalled {
        /// Engine.
        engine: String,
        /// What was asked for.
        name: String,
        /// Installed versions of the name with their states.
        installed: Vec<(Version, BizState)>,
    },
    /// No activated version matches the request.
    #[error(
        "no activated version of biz `{name}` matches `{req}` in engine `{engine}`{}; install a matching version or `switch` to one",
        versions_hint(installed)
    )]
    NoMatch {
        /// Engine.
        engine: String,
        /// Biz name.
        name: String,
        /// The version requirement.
        req: VersionReq,
        /// Installed versions with their states.
        installed: Vec<(Version, BizState)>,
    },
    /// The version exists but cannot take the operation in its state.
    #[error("biz `{biz}` in engine `{engine}` is {state}; {what}")]
    WrongState {
        /// Engine.
        engine: String,
        /// `name@version`.
        biz: String,
        /// Its state.
        state: BizState,
        /// What cannot be done.
        what: String,
    },
    /// The same `name@version` is already installed.
    #[error(
        "biz `{biz}` is already installed in engine `{engine}`; uninstall it first or bump the version"
    )]
    AlreadyInstalled {
        /// Engine.
        engine: String,
        /// `name@version`.
        biz: String,
    },
    /// A `uses` reference that does not parse.
    #[error(
        "invalid biz reference `{0}`: expected `name`, `name@<semver requirement>` (e.g. `shell@^0.1`)"
    )]
    InvalidReference(String),
}

fn versions_hint(installed: &[(Version, BizState)]) -> String {
    if installed.is_empty() {
        return String::new();
    }
    let list: Vec<String> = installed
        .iter()
        .map(|(v, s)| format!("{v} ({s})"))
        .collect();
    format!(" (installed: {})", list.join(", "))
}

/// Why an install failed. Nothing is registered when it does.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The component is unusable.
    #[error("cannot install biz `{biz}`: {source}")]
    Component {
        /// `name@version`.
        biz: String,
        /// Why.
        source: ComponentError,
    },
    /// The registry refused it.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// The compile task died.
    #[error("the compile task for `{0}` failed: {1}")]
    Task(String, String),
}

/// A snapshot of one installed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BizInfo {
    /// Biz name.
    pub name: String,
    /// Biz version.
    pub version: Version,
    /// Lifecycle state.
    pub state: BizState,
    /// Leases held now.
    pub leases: usize,
    /// The `arkline:step` version it targets.
    pub api_version: Version,
    /// SHA-256 of its component.
    pub sha256: String,
    /// Its step types.
    pub step_types: Vec<String>,
    /// What it may use in this engine.
    pub capabilities: Capabilities,
}

/// One installed version: its linked code and identity. Shared by its leases.
struct Installed {
    prepared: PreparedBiz,
    manifest: Manifest,
    step_types: Vec<String>,
    caller: Arc<CallerIdentity>,
    capabilities: Arc<EffectiveCapabilities>,
    process: Arc<ProcessPolicy>,
    http: Arc<HttpPolicy>,
    cancel: CancelToken,
}

struct Entry {
    biz: Arc<Installed>,
    state: BizState,
    leases: usize,
}

#[derive(Default)]
struct Versions {
    versions: BTreeMap<Version, Entry>,
}

struct RegistryInner {
    runtime: Runtime,
    engine: String,
    bizes: Mutex<BTreeMap<String, Versions>>,
    released: Notify,
    events: broadcast::Sender<LifecycleEvent>,
    cache: Mutex<Option<BlobCache>>,
    metrics: Mutex<Option<crate::metrics::Metrics>>,
}

/// The bizes installed in one engine. Cheap to clone.
#[derive(Clone)]
pub struct BizRegistry {
    inner: Arc<RegistryInner>,
}

impl fmt::Debug for BizRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BizRegistry")
            .field("engine", &self.inner.engine)
            .finish_non_exhaustive()
    }
}

impl BizRegistry {
    /// An empty registry for the engine named `engine`.
    pub fn new(runtime: Runtime, engine: impl Into<String>) -> Self {
        let (events, _) = broadcast::channel(1024);
        BizRegistry {
            inner: Arc::new(RegistryInner {
                runtime,
                engine: engine.into(),
                bizes: Mutex::new(BTreeMap::new()),
                released: Notify::new(),
                events,
                cache: Mutex::new(None),
                metrics: Mutex::new(None),
            }),
        }
    }

    /// Gives the engine's bizes a blob cache (the `cache` capability). Calls
    /// started afterwards use it.
    pub fn set_blob_cache(&self, cache: BlobCache) {
        *self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(cache);
    }

    /// Counts the engine's step calls (instantiations, faults by kind) into
    /// `metrics`, labelled with the engine and the biz name.
    pub fn set_metrics(&self, metrics: crate::metrics::Metrics) {
        *self.inner.metrics.lock().unwrap_or_else(|p| p.into_inner()) = Some(metrics);
    }

    /// The engine's blob cache, if set.
    pub fn blob_cache(&self) -> Option<BlobCache> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The engine name.
    pub fn engine(&self) -> &str {
        &self.inner.engine
    }

    /// The runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.inner.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Versions>> {
        lock(&self.inner)
    }

    /// Installs a verified archive with the engine's `grants` for it: compiles (or
    /// loads from the compiled cache) on a blocking thread, links, registers.
    /// Nothing is registered when it fails.
    pub async fn install(
        &self,
        ark: Arc<Ark>,
        grants: &Capabilities,
        activation: Activation,
    ) -> Result<BizInfo, InstallError> {
        self.check_not_installed(&ark.manifest.name, &ark.manifest.version)?;
        let prepared = self.prepare(ark.clone()).await?;
        Ok(self.register(prepared, ark.manifest.clone(), grants, activation)?)
    }

    /// Compiles `ark`'s component (or loads it from the compiled cache) on a
    /// blocking thread and links it, registering nothing: [`register`](Self::register)
    /// does that. Compiles of several archives run in parallel, each on its
    /// own blocking thread (and wasmtime compiles a component's functions in
    /// parallel).
    pub async fn prepare(&self, ark: Arc<Ark>) -> Result<PreparedBiz, InstallError> {
        let runtime = self.inner.runtime.clone();
        let id = format!("{}@{}", ark.manifest.name, ark.manifest.version);
        let compiling = ark.clone();
        tokio::task::spawn_blocking(move || runtime.prepare(&compiling))
            .await
            .map_err(|e| InstallError::Task(id.clone(), e.to_string()))?
            .map_err(|source| InstallError::Component { biz: id, source })
    }

    /// Like [`install`](Self::install), compiling on the calling thread.
    pub fn install_blocking(
        &self,
        ark: &Ark,
        grants: &Capabilities,
        activation: Activation,
    ) -> Result<BizInfo, InstallError> {
        self.check_not_installed(&ark.manifest.name, &ark.manifest.version)?;
        let prepared =
            self.inner
                .runtime
                .prepare(ark)
                .map_err(|source| InstallError::Component {
                    biz: format!("{}@{}", ark.manifest.name, ark.manifest.version),
                    source,
                })?;
        Ok(self.register(prepared, ark.manifest.clone(), grants, activation)?)
    }

    fn check_not_installed(&self, name: &str, version: &Version) -> Result<(), LifecycleError> {
        let bizes = self.lock();
        if bizes
            .get(name)
            .is_some_and(|v| v.versions.contains_key(version))
        {
            return Err(LifecycleError::AlreadyInstalled {
                engine: self.inner.engine.clone(),
                biz: format!("{name}@{version}"),
            });
        }
        Ok(())
    }

    /// Registers a prepared biz.
    pub fn register(
        &self,
        prepared: PreparedBiz,
        manifest: Manifest,
        grants: &Capabilities,
        activation: Activation,
    ) -> Result<BizInfo, LifecycleError> {
        let name = manifest.name.clone();
        let version = manifest.version.clone();
        let capabilities = Arc::new(EffectiveCapabilities::new(&manifest.capabilities, grants));
        // Granted programs are resolved now, once, not at every call.
        let process = Arc::new(
            ProcessPolicy::resolve(
                &capabilities.effective().process,
                self.inner.runtime.config().process_limits.clone(),
            )
            .with_host_network(capabilities.effective().process_net)
            .with_workspace_exec(capabilities.effective().process_exec)
            .with_builders(capabilities.effective().process_builder.clone()),
        );
        let http = Arc::new(HttpPolicy::new(capabilities.effective().http.clone()));
        let biz = Arc::new(Installed {
            step_types: manifest.steps.iter().map(|s| s.id.clone()).collect(),
            caller: Arc::new(CallerIdentity {
                engine: self.inner.engine.clone(),
                biz: name.clone(),
                version: version.clone(),
            }),
            capabilities,
            process,
            http,
            cancel: CancelToken::new(),
            prepared,
            manifest,
        });
        let mut events = Vec::new();
        let info = {
            let mut bizes = self.lock();
            let versions = bizes.entry(name.clone()).or_default();
            if versions.versions.contains_key(&version) {
                return Err(LifecycleError::AlreadyInstalled {
                    engine: self.inner.engine.clone(),
                    biz: format!("{name}@{version}"),
                });
            }
            versions.versions.insert(
                version.clone(),
                Entry {
                    biz,
                    state: BizState::Resolved,
                    leases: 0,
                },
            );
            events.push((version.clone(), BizState::Resolved));
            let any_active = versions
                .versions
                .values()
                .any(|e| e.state == BizState::Activated);
            let activate = match activation {
                Activation::IfNone => !any_active,
                Activation::Always => true,
                Activation::Never => false,
            };
            if activate {
                activate_locked(versions, &version, &mut events);
            }
            info_of(&versions.versions[&version], &name, &version)
        };
        self.emit(&name, events);
        Ok(info)
    }

    /// Makes `version` the activated version of `name`; the previously activated
    /// one (if any) becomes `Deactivated`. Running calls are not disturbed: they
    /// hold leases on the version they resolved.
    pub fn switch(&self, name: &str, version: &Version) -> Result<(), LifecycleError> {
        let mut events = Vec::new();
        {
            let mut bizes = self.lock();
            let versions = self.versions_mut(&mut bizes, name)?;
            let entry =
                versions
                    .versions
                    .get(version)
                    .ok_or_else(|| LifecycleError::NotInstalled {
                        engine: self.inner.engine.clone(),
                        name: format!("{name}@{version}"),
                        installed: states(versions),
                    })?;
            match &entry.state {
                BizState::Resolved | BizState::Activated | BizState::Deactivated => {}
                other => {
                    return Err(LifecycleError::WrongState {
                        engine: self.inner.engine.clone(),
                        biz: format!("{name}@{version}"),
                        state: other.clone(),
                        what: "only an installed, healthy version can be activated".into(),
                    });
                }
            }
            activate_locked(versions, version, &mut events);
        }
        self.emit(name, events);
        Ok(())
    }

    /// Deactivates whichever version of `name` is activated: `resolve` then fails
    /// for it until a `switch`.
    pub fn deactivate(&self, name: &str) -> Result<(), LifecycleError> {
        let mut events = Vec::new();
        {
            let mut bizes = self.lock();
            let versions = self.versions_mut(&mut bizes, name)?;
            for (v, e) in versions.versions.iter_mut() {
                if e.state == BizState::Activated {
                    e.state = BizState::Deactivated;
                    events.push((v.clone(), BizState::Deactivated));
                }
            }
        }
        self.emit(name, events);
        Ok(())
    }

    /// Leases the activated version of a biz reference `name` or
    /// `name@<requirement>` (`shell`, `shell@^0.1`, `shell@=0.1.2`).
    pub fn resolve(&self, reference: &str) -> Result<BizLease, LifecycleError> {
        let (name, req) = parse_reference(reference)?;
        let mut bizes = self.lock();
        let versions = self.versions_mut(&mut bizes, name)?;
        let found = versions
            .versions
            .iter_mut()
            .find(|(v, e)| e.state == BizState::Activated && req.matches(v));
        match found {
            Some((_, entry)) => Ok(self.lease_locked(entry)),
            None => Err(LifecycleError::NoMatch {
                engine: self.inner.engine.clone(),
                name: name.to_owned(),
                req,
                installed: states(versions),
            }),
        }
    }

    /// The config schema of step type `step` of biz `name` (its only step type
    /// when `None`), from the version a call would resolve now (the first
    /// activated one matching `req`); `None` when no such version is installed
    /// or it carries no schema.
    pub fn step_schema(
        &self,
        name: &str,
        req: Option<&semver::VersionReq>,
        step: Option<&str>,
    ) -> Option<serde_json::Value> {
        let bizes = self.lock();
        let (_, entry) = bizes.get(name)?.versions.iter().find(|(v, e)| {
            e.state == BizState::Activated && req.is_none_or(|req| req.matches(v))
        })?;
        let step = match step {
            Some(step) => step,
            None => match entry.biz.step_types.as_slice() {
                [only] => only.as_str(),
                _ => return None,
            },
        };
        let text = entry.biz.prepared.schemas.get(step)?;
        // Written by `to_string` of a parsed schema at install: it parses.
        serde_json::from_str(text).ok()
    }

    /// Leases exactly `name@version`, activated or not (an execution resuming on
    /// the version it resolved before a restart). Refused while draining or broken.
    pub fn lease(&self, name: &str, version: &Version) -> Result<BizLease, LifecycleError> {
        let mut bizes = self.lock();
        let versions = self.versions_mut(&mut bizes, name)?;
        let installed = states(versions);
        let entry =
            versions
                .versions
                .get_mut(version)
                .ok_or_else(|| LifecycleError::NotInstalled {
                    engine: self.inner.engine.clone(),
                    name: format!("{name}@{version}"),
                    installed,
                })?;
        match &entry.state {
            BizState::Resolved | BizState::Activated | BizState::Deactivated => {
                Ok(self.lease_locked(entry))
            }
            other => Err(LifecycleError::WrongState {
                engine: self.inner.engine.clone(),
                biz: format!("{name}@{version}"),
                state: other.clone(),
                what: "it takes no new leases".into(),
            }),
        }
    }

    fn lease_locked(&self, entry: &mut Entry) -> BizLease {
        entry.leases += 1;
        BizLease {
            registry: self.inner.clone(),
            biz: entry.biz.clone(),
        }
    }

    /// Uninstalls `name@version`: no new leases from now on; completes when the
    /// last lease is released (with [`UninstallMode::Force`], after cancelling the
    /// calls running under them). The activated version may be uninstalled; the
    /// name then has no activated version.
    pub async fn uninstall(
        &self,
        name: &str,
        version: &Version,
        mode: UninstallMode,
    ) -> Result<(), LifecycleError> {
        let mut events = Vec::new();
        let biz =
            {
                let mut bizes = self.lock();
                let versions = self.versions_mut(&mut bizes, name)?;
                let installed = states(versions);
                let entry = versions.versions.get_mut(version).ok_or_else(|| {
                    LifecycleError::NotInstalled {
                        engine: self.inner.engine.clone(),
                        name: format!("{name}@{version}"),
                        installed,
                    }
                })?;
                if entry.state != BizState::Draining {
                    entry.state = BizState::Draining;
                    events.push((version.clone(), BizState::Draining));
                }
                entry.biz.clone()
            };
        self.emit(name, events);
        if mode == UninstallMode::Force {
            biz.cancel.cancel();
        }
        loop {
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if finish_draining(&self.inner, name, version, &biz) {
                return Ok(());
            }
            released.await;
        }
    }

    /// Every installed version, by name then version.
    pub fn list(&self) -> Vec<BizInfo> {
        let bizes = self.lock();
        bizes
            .iter()
            .flat_map(|(name, versions)| {
                versions
                    .versions
                    .iter()
                    .map(move |(version, entry)| info_of(entry, name, version))
            })
            .collect()
    }

    /// One installed version.
    pub fn get(&self, name: &str, version: &Version) -> Option<BizInfo> {
        let bizes = self.lock();
        let entry = bizes.get(name)?.versions.get(version)?;
        Some(info_of(entry, name, version))
    }

    fn versions_mut<'a>(
        &self,
        bizes: &'a mut BTreeMap<String, Versions>,
        name: &str,
    ) -> Result<&'a mut Versions, LifecycleError> {
        match bizes.get_mut(name) {
            Some(v) if !v.versions.is_empty() => Ok(v),
            _ => Err(LifecycleError::NotInstalled {
                engine: self.inner.engine.clone(),
                name: name.to_owned(),
                installed: Vec::new(),
            }),
        }
    }

    fn emit(&self, name: &str, events: Vec<(Version, BizState)>) {
        emit(&self.inner, name, events);
    }
}

fn lock(inner: &RegistryInner) -> MutexGuard<'_, BTreeMap<String, Versions>> {
    // The map is consistent between statements; a panic elsewhere does not
    // poison the lifecycle of every biz.
    inner.bizes.lock().unwrap_or_else(|p| p.into_inner())
}

fn emit(inner: &RegistryInner, name: &str, events: Vec<(Version, BizState)>) {
    for (version, state) in events {
        tracing::info!(engine = %inner.engine, biz = %format!("{name}@{version}"), %state, "biz lifecycle");
        // No subscriber is fine.
        let _ = inner.events.send(LifecycleEvent {
            engine: inner.engine.clone(),
            name: name.to_owned(),
            version,
            state,
        });
    }
}

/// Removes a draining version without leases; true when it is gone.
fn finish_draining(
    inner: &RegistryInner,
    name: &str,
    version: &Version,
    biz: &Arc<Installed>,
) -> bool {
    let removed = {
        let mut bizes = lock(inner);
        let Some(versions) = bizes.get_mut(name) else {
            return true;
        };
        match versions.versions.get(version) {
            // Already removed, or replaced by a reinstall of the same version.
            None => return true,
            Some(e) if !Arc::ptr_eq(&e.biz, biz) => return true,
            Some(e) if e.state == BizState::Draining && e.leases == 0 => {
                versions.versions.remove(version);
                if versions.versions.is_empty() {
                    bizes.remove(name);
                }
                true
            }
            Some(_) => false,
        }
    };
    if removed {
        emit(inner, name, vec![(version.clone(), BizState::Uninstalled)]);
    }
    removed
}

fn activate_locked(
    versions: &mut Versions,
    version: &Version,
    events: &mut Vec<(Version, BizState)>,
) {
    for (v, e) in versions.versions.iter_mut() {
        if v == version {
            if e.state != BizState::Activated {
                e.state = BizState::Activated;
                events.push((v.clone(), BizState::Activated));
            }
        } else if e.state == BizState::Activated {
            e.state = BizState::Deactivated;
            events.push((v.clone(), BizState::Deactivated));
        }
    }
}

fn states(versions: &Versions) -> Vec<(Version, BizState)> {
    versions
        .versions
        .iter()
        .map(|(v, e)| (v.clone(), e.state.clone()))
        .collect()
}

fn info_of(entry: &Entry, name: &str, version: &Version) -> BizInfo {
    BizInfo {
        name: name.to_owned(),
        version: version.clone(),
        state: entry.state.clone(),
        leases: entry.leases,
        api_version: entry.biz.prepared.api_version.clone(),
        sha256: entry.biz.prepared.sha256.clone(),
        step_types: entry.biz.step_types.clone(),
        capabilities: entry.biz.capabilities.effective().clone(),
    }
}

/// Parses `name` or `name@<semver requirement>`.
pub fn parse_reference(reference: &str) -> Result<(&str, VersionReq), LifecycleError> {
    let invalid = || LifecycleError::InvalidReference(reference.to_owned());
    let (name, req) = match reference.split_once('@') {
        Some((name, req)) => (name, VersionReq::parse(req).map_err(|_| invalid())?),
        None => (reference, VersionReq::STAR),
    };
    if !crate::ark::is_valid_name(name) {
        return Err(invalid());
    }
    Ok((name, req))
}

/// A hold on one installed version: calls run through it, and its version cannot
/// finish uninstalling while it exists. Dropping it releases the hold.
pub struct BizLease {
    registry: Arc<RegistryInner>,
    biz: Arc<Installed>,
}

impl fmt::Debug for BizLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BizLease")
            .field("engine", &self.registry.engine)
            .field("biz", &self.biz.manifest.name)
            .field("version", &self.biz.manifest.version)
            .finish()
    }
}

impl BizLease {
    /// Biz name.
    pub fn name(&self) -> &str {
        &self.biz.manifest.name
    }

    /// Biz version.
    pub fn version(&self) -> &Version {
        &self.biz.manifest.version
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name(), self.version())
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.biz.manifest
    }

    /// SHA-256 (hex) of the biz's component.
    pub fn sha256(&self) -> &str {
        &self.biz.prepared.sha256
    }

    /// What the biz may do here: what its manifest requests and the engine
    /// grants.
    pub fn capabilities(&self) -> &crate::host::Capabilities {
        self.biz.capabilities.effective()
    }

    /// Runs one step call in a fresh instance. A fault comes back in the report;
    /// an instantiation failure also marks the version `Broken`.
    pub async fn invoke(&self, call: StepCall) -> StepReport {
        // Read before the call: the lock must not be held across an await.
        let cache = self
            .registry
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (runtime, biz, started) = (
            self.registry.runtime.clone(),
            self.biz.clone(),
            std::time::Instant::now(),
        );
        let step_type = call.step_type.clone();
        let cpu_weight = call.limits.cpu_weight.unwrap_or(super::DEFAULT_CPU_WEIGHT);
        let guest = {
            let runtime = runtime.clone();
            async move {
                let _in_use = biz.prepared.image.begin();
                invoke::invoke(
                    Invocable {
                        runtime: &runtime,
                        pre: &biz.prepared.pre,
                        caller: &biz.caller,
                        capabilities: &biz.capabilities,
                        process: &biz.process,
                        cache,
                        http: &biz.http,
                        step_types: &biz.step_types,
                        biz_cancel: &biz.cancel,
                    },
                    call,
                )
                .await
            }
        };
        let report = match runtime
            .run_guest_call(&self.registry.engine, cpu_weight, guest)
            .await
        {
            Ok(report) => report,
            Err(reason) => StepReport {
                biz: self.id(),
                step_type,
                result: Err(StepFault::Trap {
                    message: reason,
                    backtrace: None,
                }
                .into()),
                log: StepLog::default(),
                fuel_consumed: 0,
                elapsed: started.elapsed(),
                instantiated: false,
            },
        };
        let metrics = self
            .registry
            .metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(metrics) = metrics {
            metrics.record_call(
                &self.registry.engine,
                self.name(),
                report.instantiated,
                report.fault().map(StepFault::kind),
            );
        }
        if let Some(StepFault::Instantiate(reason)) = report.fault() {
            self.mark_broken(reason.clone());
        }
        report
    }

    fn mark_broken(&self, reason: String) {
        let name = self.name().to_owned();
        let version = self.version().clone();
        let changed = {
            let mut bizes = lock(&self.registry);
            match bizes
                .get_mut(&name)
                .and_then(|v| v.versions.get_mut(&version))
            {
                Some(e)
                    if Arc::ptr_eq(&e.biz, &self.biz)
                        && matches!(
                            e.state,
                            BizState::Resolved | BizState::Activated | BizState::Deactivated
                        ) =>
                {
                    e.state = BizState::Broken(reason.clone());
                    true
                }
                _ => false,
            }
        };
        if changed {
            emit(
                &self.registry,
                &name,
                vec![(version, BizState::Broken(reason))],
            );
        }
    }
}

impl Drop for BizLease {
    fn drop(&mut self) {
        let draining = {
            let mut bizes = lock(&self.registry);
            match bizes
                .get_mut(&self.biz.manifest.name)
                .and_then(|v| v.versions.get_mut(&self.biz.manifest.version))
            {
                Some(e) if Arc::ptr_eq(&e.biz, &self.biz) => {
                    e.leases = e.leases.saturating_sub(1);
                    e.state == BizState::Draining && e.leases == 0
                }
                _ => false,
            }
        };
        if draining {
            // Completes the uninstall even when its caller stopped waiting.
            finish_draining(
                &self.registry,
                &self.biz.manifest.name,
                &self.biz.manifest.version,
                &self.biz,
            );
        }
        self.registry.released.notify_waiters();
    }
}
