//! Bizes as desired state: the engine's `BizDeployment` (named `default`) lists
//! the bizes it should have, their versions, the active one and the grants; the
//! `.ark` files themselves are kept in the container's [`ArkStore`] by digest. The
//! biz-deployment reconciler installs what is missing and switches the active
//! version, so a restarted process comes back to the same bizes. It never
//! uninstalls: removing a version is an explicit
//! [`Engine::uninstall`](crate::Engine::uninstall), which drains it and removes it
//! from the desired state; a biz installed in this process only
//! ([`Engine::install`](crate::Engine::install)) is left alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use semver::Version;

use crate::ark::Ark;
use crate::controller::Action;
use crate::host::parse_grants;
use crate::model::resources::set_condition;
use crate::model::{
    BizDeployment, BizDeploymentSpec, Condition, ConditionStatus, ConditionType, ObjectMeta,
};
use crate::pipeline::context::{EngineCore, PendingBiz};
use crate::pipeline::error::{DeployError, ReconcileError};
use crate::runtime::{Activation, BizInfo, BizState, InstallError, LifecycleError};
use crate::store::{Api, StoreError};

/// The name of an engine's [`BizDeployment`].
pub const DEPLOYMENT_NAME: &str = "default";

/// What [`Engine::deploy_biz_in_background`](crate::Engine::deploy_biz_in_background) did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deploying {
    /// It was installed already (the desired state is recorded; nothing to compile).
    Installed(BizInfo),
    /// It is recorded and compiling; it becomes installed (or
    /// [`PendingBiz::failed`]) when the compile ends.
    Installing(PendingBiz),
}

/// An upload that passed its checks.
struct Checked {
    ark: Arc<Ark>,
    caps: crate::host::Capabilities,
    name: String,
    version: String,
    /// The archive's digest (its key in the archive store).
    digest: String,
}

/// Reads an upload and checks it: the archive, the grants, the engine's
/// signature policy, and that the version is not installed with another
/// component.
async fn check_upload(
    core: &EngineCore,
    bytes: &[u8],
    grants: &[String],
) -> Result<Checked, DeployError> {
    // Reading (inflating, hashing, checking) an archive is CPU work: off the
    // async workers, so a large upload does not stall other tasks.
    let owned = bytes.to_vec();
    let ark = tokio::task::spawn_blocking(move || Ark::from_bytes(&owned))
        .await
        .map_err(|e| {
            DeployError::Archive(crate::ark::ArchiveError::Zip(format!(
                "reading the archive failed: {e}"
            )))
        })?
        .map_err(DeployError::Archive)?;
    let caps = parse_grants(grants).map_err(|source| DeployError::Grant {
        biz: format!("{}@{}", ark.manifest.name, ark.manifest.version),
        source,
    })?;
    // The same signature policy as a `.arkc`'s engines get, from the settings.
    let settings = core.settings().await?;
    let signature = |source| DeployError::Signature {
        biz: format!("{}@{}", ark.manifest.name, ark.manifest.version),
        engine: core.name.clone(),
        source,
    };
    let mut trusted = Vec::new();
    for key in &settings.trusted_keys {
        trusted.push(key.parse().map_err(|e: crate::ark::KeyError| {
            signature(crate::ark::ArchiveError::BadSignature(format!(
                "the engine's trusted key `{key}` is malformed ({e}); fix the `trusted_keys` setting"
            )))
        })?);
    }
    let policy = crate::ark::SignaturePolicy {
        trusted,
        require_signature: settings.require_signed_bizes,
    };
    ark.verify_signature(&policy).map_err(signature)?;
    let (name, version, digest) = (
        ark.manifest.name.clone(),
        ark.manifest.version.to_string(),
        ark.sha256.clone(),
    );
    let clash = |sha256: &str| sha256 != ark.manifest.component.sha256;
    if core
        .registry
        .get(&name, &ark.manifest.version)
        .is_some_and(|info| clash(&info.sha256))
        || core
            .pending(&name, &ark.manifest.version)
            .is_some_and(|p| p.failed.is_none() && clash(&p.sha256))
    {
        return Err(DeployError::VersionClash { biz: name, version });
    }
    Ok(Checked {
        ark: Arc::new(ark),
        caps,
        name,
        version,
        digest,
    })
}

/// Refuses, under the deployment lock, a version that meanwhile got another
/// component, installed or compiling in the background (the checks of
/// [`check_upload`] ran before a compile of seconds). The same component in
/// another archive (signed since, say) is not a clash.
fn check_clash(core: &EngineCore, checked: &Checked) -> Result<(), DeployError> {
    let version = &checked.ark.manifest.version;
    let sha = &checked.ark.manifest.component.sha256;
    let clash = core
        .registry
        .get(&checked.name, version)
        .is_some_and(|i| i.sha256 != *sha)
        || core
            .pending(&checked.name, version)
            .is_some_and(|p| p.failed.is_none() && p.sha256 != *sha);
    if clash {
        return Err(DeployError::VersionClash {
            biz: checked.name.clone(),
            version: checked.version.clone(),
        });
    }
    Ok(())
}

/// Keeps the archive and records it in the desired state; returns the
/// version that was active before. Under the deployment lock.
async fn record(
    core: &EngineCore,
    checked: &Checked,
    bytes: &[u8],
    grants: &[String],
    activate: bool,
) -> Result<String, DeployError> {
    let Checked {
        name,
        version,
        digest,
        ..
    } = checked;
    core.arks
        .put(digest, bytes)
        .await
        .map_err(|source| DeployError::Keep {
            biz: format!("{name}@{version}"),
            location: core.arks.location(),
            source,
        })?;
    let previous = std::sync::Mutex::new(String::new());
    update_spec(core, |spec| {
        let before = spec
            .bizes
            .iter()
            .find(|b| b.name == *name)
            .map(|b| b.active.clone())
            .unwrap_or_default();
        *previous.lock().unwrap_or_else(|p| p.into_inner()) = before;
        let entry = match spec.bizes.iter_mut().position(|b| b.name == *name) {
            Some(i) => &mut spec.bizes[i],
            None => {
                spec.bizes.push(crate::model::DesiredBiz {
                    name: name.clone(),
                    versions: Vec::new(),
                    active: String::new(),
                    grants: Vec::new(),
                    digests: Default::default(),
                });
                let last = spec.bizes.len() - 1;
                &mut spec.bizes[last]
            }
        };
        if !entry.versions.contains(version) {
            entry.versions.push(version.clone());
        }
        entry.digests.insert(version.clone(), digest.clone());
        entry.grants = grants.to_vec();
        if activate || entry.active.is_empty() {
            entry.active = version.clone();
        }
    })
    .await?;
    Ok(previous.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Takes `name@version` out of the desired state (an install that failed:
/// nothing stays recorded); if it was made the active version, `previous`
/// (the one active before) is again. Under the deployment lock.
async fn forget(
    core: &EngineCore,
    name: &str,
    version: &str,
    previous: &str,
) -> Result<(), StoreError> {
    update_spec(core, |spec| {
        if let Some(b) = spec.bizes.iter_mut().find(|b| b.name == name) {
            b.versions.retain(|x| x != version);
            b.digests.remove(version);
            if b.active == version {
                b.active = if b.versions.iter().any(|v| v == previous) {
                    previous.to_owned()
                } else {
                    String::new()
                };
            }
        }
        spec.bizes.retain(|b| !b.versions.is_empty());
    })
    .await?;
    Ok(())
}

/// Switches to `info`'s version when the desired state wants it active.
/// Under the deployment lock.
async fn activate_if_wanted(core: &EngineCore, info: &BizInfo) -> Result<(), DeployError> {
    let wanted_active = Api::<BizDeployment>::new(core.store.clone())
        .get(&core.name, DEPLOYMENT_NAME)
        .await?
        .and_then(|d| d.spec.bizes.into_iter().find(|b| b.name == info.name))
        .map(|b| b.active);
    if wanted_active == Some(info.version.to_string()) {
        core.registry
            .switch(&info.name, &info.version)
            .map_err(|e| DeployError::Install(e.into()))?;
    }
    Ok(())
}

/// Deploys a biz from its archive bytes as desired state (see
/// [`Engine::deploy_biz`](crate::Engine::deploy_biz)): verified, compiled,
/// kept in the archive store, recorded in the engine's `BizDeployment`,
/// registered. The compile runs before the deployment lock is taken, so other
/// deploys, switches and uninstalls of the engine do not wait for it and
/// several compile in parallel; when it fails nothing was recorded.
pub(crate) async fn deploy_biz(
    core: &EngineCore,
    bytes: &[u8],
    grants: &[String],
    activate: bool,
) -> Result<BizInfo, DeployError> {
    let checked = check_upload(core, bytes, grants).await?;
    let version = checked.ark.manifest.version.clone();
    let prepared = match core.registry.get(&checked.name, &version) {
        Some(_) => None,
        None => Some(
            core.registry
                .prepare(checked.ark.clone())
                .await
                .map_err(DeployError::Install)?,
        ),
    };
    let _changing = core.deploy_lock.lock().await;
    check_clash(core, &checked)?;
    let previous = record(core, &checked, bytes, grants, activate).await?;
    core.clear_failed(&checked.name, &version);
    let installed = match (core.registry.get(&checked.name, &version), prepared) {
        (Some(info), _) => Ok(info),
        (None, Some(prepared)) => core
            .registry
            .register(
                prepared,
                checked.ark.manifest.clone(),
                &checked.caps,
                Activation::Never,
            )
            .map_err(InstallError::from),
        // Uninstalled while this one waited for the lock: install it again.
        (None, None) => {
            core.registry
                .install(checked.ark.clone(), &checked.caps, Activation::Never)
                .await
        }
    };
    let info = match installed {
        Ok(info) => info,
        Err(e) => {
            forget(core, &checked.name, &checked.version, &previous).await?;
            return Err(DeployError::Install(e));
        }
    };
    activate_if_wanted(core, &info).await?;
    Ok(core.registry.get(&info.name, &info.version).unwrap_or(info))
}

/// Deploys a biz as [`deploy_biz`] does, but answers once the desired state is
/// recorded: the compile (seconds for a big component not in the compiled
/// cache) runs in a task of its own. Executions that need the version
/// meanwhile wait for it (as after a restart, up to `resume_grace`); the
/// deployment reconciler leaves it to the task. When the compile fails the
/// version is taken out of the desired state and the failure is kept in
/// [`EngineCore::pending`] (and logged).
pub(crate) async fn deploy_biz_in_background(
    core: &Arc<EngineCore>,
    bytes: &[u8],
    grants: &[String],
    activate: bool,
) -> Result<Deploying, DeployError> {
    let checked = check_upload(core, bytes, grants).await?;
    let version = checked.ark.manifest.version.clone();
    if core.registry.get(&checked.name, &version).is_some() {
        return deploy_biz(core, bytes, grants, activate)
            .await
            .map(Deploying::Installed);
    }
    let (pending, previous) = {
        let _changing = core.deploy_lock.lock().await;
        check_clash(core, &checked)?;
        if let Some(p) = core.pending(&checked.name, &version)
            && p.failed.is_none()
        {
            // Already compiling, the same component (`check_clash`): the
            // desired state takes this request's grants and activation; the
            // task registers with what the desired state says then.
            record(core, &checked, bytes, grants, activate).await?;
            return Ok(Deploying::Installing(p));
        }
        let previous = record(core, &checked, bytes, grants, activate).await?;
        let manifest = &checked.ark.manifest;
        let pending = PendingBiz {
            name: checked.name.clone(),
            version: version.clone(),
            host_api: manifest.host_api.clone(),
            sha256: manifest.component.sha256.clone(),
            step_types: manifest.steps.iter().map(|s| s.id.clone()).collect(),
            grants: grants.to_vec(),
            since: core.clock.now(),
            failed: None,
            archive: checked.digest.clone(),
        };
        core.set_pending(pending.clone());
        (pending, previous)
    };
    let core = core.clone();
    tokio::spawn(async move {
        // At most one compile per core at once, across engines: a burst of
        // background deploys queues here instead of taking every CPU.
        let prepared = {
            let _slot = compile_slots().acquire().await;
            core.registry.prepare(checked.ark.clone()).await
        };
        let _changing = core.deploy_lock.lock().await;
        let biz = format!("{}@{}", checked.name, checked.version);
        let ours = |p: &PendingBiz| p.archive == checked.digest;
        // What the desired state says now: still this archive, and with
        // which grants (they may have changed while it compiled).
        let wanted = match desired(&core, &checked.name).await {
            Ok(Some(b)) if b.digests.get(&checked.version) == Some(&checked.digest) => Some(b),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(engine = %core.name, %biz, error = %e, "cannot read the desired state after a background compile; the deployment reconciler installs it");
                core.remove_pending_if(&checked.name, &version, ours);
                return;
            }
        };
        let result = match (prepared, wanted) {
            // Uninstalled or replaced while compiling: nothing to do.
            (_, None) => Ok(()),
            (Ok(prepared), Some(desired)) => match parse_grants(&desired.grants) {
                Err(e) => Err(format!("its grants: {e}")),
                Ok(caps) => match core.registry.register(
                    prepared,
                    checked.ark.manifest.clone(),
                    &caps,
                    Activation::Never,
                ) {
                    Ok(info) => activate_if_wanted(&core, &info)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(LifecycleError::AlreadyInstalled { .. }) => Ok(()),
                    Err(e) => Err(e.to_string()),
                },
            },
            (Err(e), Some(_)) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                core.remove_pending_if(&checked.name, &version, ours);
            }
            Err(reason) => {
                tracing::warn!(engine = %core.name, %biz, error = %reason, "a background install failed; it is taken out of the desired state");
                if core.registry.get(&checked.name, &version).is_none()
                    && let Err(e) = forget(&core, &checked.name, &checked.version, &previous).await
                {
                    tracing::warn!(engine = %core.name, error = %e, "cannot take a failed install out of the desired state");
                }
                core.fail_pending_if(&checked.name, &version, ours, reason);
            }
        }
    });
    Ok(Deploying::Installing(pending))
}

/// The slots background compiles take: one per core of the machine.
fn compile_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        tokio::sync::Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
        )
    })
}

/// The desired state of biz `name`.
async fn desired(
    core: &EngineCore,
    name: &str,
) -> Result<Option<crate::model::DesiredBiz>, StoreError> {
    Ok(Api::<BizDeployment>::new(core.store.clone())
        .get(&core.name, DEPLOYMENT_NAME)
        .await?
        .and_then(|d| d.spec.bizes.into_iter().find(|b| b.name == name)))
}

/// The biz-deployment reconciler.
pub(crate) async fn reconcile_deployment(
    dep: Arc<BizDeployment>,
    core: Arc<EngineCore>,
) -> Result<Action, ReconcileError> {
    if dep.metadata.name != DEPLOYMENT_NAME {
        return Ok(Action::await_change());
    }
    let _changing = core.deploy_lock.lock().await;
    // The event may be older than a change made while waiting for the lock.
    let Some(dep) = Api::<BizDeployment>::new(core.store.clone())
        .get(&core.name, DEPLOYMENT_NAME)
        .await?
    else {
        return Ok(Action::await_change());
    };
    let registry = &core.registry;
    let mut problems = Vec::new();
    let mut in_flight = false;
    for biz in &dep.spec.bizes {
        let caps = match parse_grants(&biz.grants) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{}: {e}", biz.name));
                continue;
            }
        };
        for v in &biz.versions {
            let Ok(version) = Version::parse(v) else {
                problems.push(format!("{}: `{v}` is not a version", biz.name));
                continue;
            };
            if registry.get(&biz.name, &version).is_some() {
                continue;
            }
            // Compiling in the background: its task registers it; look again soon.
            if core
                .pending(&biz.name, &version)
                .is_some_and(|p| p.failed.is_none())
            {
                in_flight = true;
                continue;
            }
            let Some(digest) = biz.digests.get(v) else {
                problems.push(format!("{}@{v}: no archive digest recorded", biz.name));
                continue;
            };
            let ark = match core.arks.get(digest).await {
                Ok(a) => a,
                Err(e) => {
                    problems.push(format!("{}@{v}: {e}", biz.name));
                    continue;
                }
            };
            if let Err(e) = registry
                .install(Arc::new(ark), &caps, Activation::Never)
                .await
            {
                problems.push(format!("{}@{v}: {e}", biz.name));
            }
        }
        if let Ok(active) = Version::parse(&biz.active)
            && let Some(info) = registry.get(&biz.name, &active)
            && info.state != BizState::Activated
            && let Err(e) = registry.switch(&biz.name, &active)
        {
            problems.push(format!("{}@{}: {e}", biz.name, biz.active));
        }
    }
    let mut status = dep.status.clone();
    status.installed = registry
        .list()
        .into_iter()
        .map(|i| {
            let state = match i.state {
                BizState::Resolved => crate::model::BizState::Resolved,
                BizState::Activated => crate::model::BizState::Activated,
                BizState::Deactivated => crate::model::BizState::Deactivated,
                BizState::Draining => crate::model::BizState::Draining,
                BizState::Uninstalled => crate::model::BizState::Uninstalled,
                BizState::Broken(_) => crate::model::BizState::Broken,
            };
            (format!("{}@{}", i.name, i.version), state)
        })
        .collect();
    status.active = registry
        .list()
        .into_iter()
        .filter(|i| i.state == BizState::Activated)
        .map(|i| (i.name, i.version.to_string()))
        .collect::<BTreeMap<_, _>>();
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
                "Deployed".into()
            } else {
                "DeployFailed".into()
            },
            message: problems.join("; "),
            last_transition: Some(core.clock.now()),
        },
    );
    if status != dep.status {
        let mut updated = dep.clone();
        updated.status = status;
        match Api::<BizDeployment>::new(core.store.clone())
            .update_status(&updated)
            .await
        {
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if in_flight {
        // The status follows once the background compiles are done.
        return Ok(Action::requeue(std::time::Duration::from_millis(250)));
    }
    Ok(Action::await_change())
}

/// Changes the engine's desired bizes with compare-and-swap (creating the
/// deployment on first use).
pub(crate) async fn update_spec(
    core: &EngineCore,
    change: impl Fn(&mut BizDeploymentSpec),
) -> Result<BizDeployment, StoreError> {
    let api = Api::<BizDeployment>::new(core.store.clone());
    loop {
        let result = match api.get(&core.name, DEPLOYMENT_NAME).await? {
            Some(mut dep) => {
                change(&mut dep.spec);
                api.update(&dep).await
            }
            None => {
                let mut spec = BizDeploymentSpec::default();
                change(&mut spec);
                api.create(&BizDeployment::new(
                    ObjectMeta::new(&core.name, DEPLOYMENT_NAME),
                    spec,
                ))
                .await
            }
        };
        match result {
            Ok(d) => return Ok(d),
            Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}
