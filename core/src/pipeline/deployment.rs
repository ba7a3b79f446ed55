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
use crate::pipeline::context::EngineCore;
use crate::pipeline::error::{DeployError, ReconcileError};
use crate::runtime::{Activation, BizInfo, BizState};
use crate::store::{Api, StoreError};

/// The name of an engine's [`BizDeployment`].
pub const DEPLOYMENT_NAME: &str = "default";

/// Deploys a biz from its archive bytes as desired state (see
/// [`Engine::deploy_biz`](crate::Engine::deploy_biz)): verified, kept in the
/// archive store, recorded in the engine's `BizDeployment`, installed; taken out
/// of the desired state again when installing fails.
pub(crate) async fn deploy_biz(
    core: &EngineCore,
    bytes: &[u8],
    grants: &[String],
    activate: bool,
) -> Result<BizInfo, DeployError> {
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
    if let Some(info) = core.registry.get(&name, &ark.manifest.version)
        && info.sha256 != ark.manifest.component.sha256
    {
        return Err(DeployError::VersionClash { biz: name, version });
    }
    // Desired state first (the archive kept, then recorded), so the
    // reconciler never acts on a spec that lacks what is being installed.
    let _changing = core.deploy_lock.lock().await;
    core.arks
        .put(&digest, bytes)
        .await
        .map_err(|source| DeployError::Keep {
            biz: format!("{name}@{version}"),
            location: core.arks.location(),
            source,
        })?;
    let semver_version = ark.manifest.version.clone();
    update_spec(core, |spec| {
        let entry = match spec.bizes.iter_mut().position(|b| b.name == name) {
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
        if !entry.versions.contains(&version) {
            entry.versions.push(version.clone());
        }
        entry.digests.insert(version.clone(), digest.clone());
        entry.grants = grants.to_vec();
        if activate || entry.active.is_empty() {
            entry.active = version.clone();
        }
    })
    .await?;
    let installed = match core.registry.get(&name, &ark.manifest.version) {
        Some(info) => Ok(info),
        None => match core
            .registry
            .install(Arc::new(ark), &caps, Activation::Never)
            .await
        {
            Ok(info) => Ok(info),
            // The reconciler installed it from the desired state meanwhile.
            Err(e) => match core.registry.get(&name, &semver_version) {
                Some(info) => Ok(info),
                None => Err(e),
            },
        },
    };
    let info = match installed {
        Ok(info) => info,
        Err(e) => {
            // Take it out of the desired state again: nothing is recorded.
            let v = version.clone();
            update_spec(core, |spec| {
                if let Some(b) = spec.bizes.iter_mut().find(|b| b.name == name) {
                    b.versions.retain(|x| *x != v);
                    b.digests.remove(&v);
                    if b.active == v {
                        b.active = b.versions.last().cloned().unwrap_or_default();
                    }
                }
                spec.bizes.retain(|b| !b.versions.is_empty());
            })
            .await?;
            return Err(DeployError::Install(e));
        }
    };
    let wanted_active = crate::store::Api::<crate::model::BizDeployment>::new(core.store.clone())
        .get(&core.name, DEPLOYMENT_NAME)
        .await?
        .and_then(|d| d.spec.bizes.into_iter().find(|b| b.name == name))
        .map(|b| b.active);
    if wanted_active.as_deref() == Some(version.as_str()) {
        core.registry
            .switch(&name, &info.version)
            .map_err(|e| DeployError::Install(e.into()))?;
    }
    Ok(core.registry.get(&info.name, &info.version).unwrap_or(info))
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
