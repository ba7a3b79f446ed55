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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use semver::Version;

use crate::ark::Ark;
use crate::host::{Capabilities, merge_grants, parse_grant};
use crate::runtime::{Activation, BizState};
use crate::controller::Action;
use crate::model::resources::set_condition;
use crate::model::{
    BizDeployment, BizDeploymentSpec, Condition, ConditionStatus, ConditionType, ObjectMeta,
};
use crate::pipeline::core::EngineCore;
use crate::pipeline::reconcile::ReconcileError;
use crate::store::{Api, StoreError};

/// The name of an engine's [`BizDeployment`].
pub const DEPLOYMENT_NAME: &str = "default";

/// Uploaded `.ark` files, kept by the sha256 of their bytes
/// (`<dir>/<sha256>.ark`, written to a temporary file and renamed).
#[derive(Debug, Clone)]
pub struct ArkStore {
    dir: PathBuf,
}

impl ArkStore {
    /// The store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `bytes` (an archive already read and verified) under `sha256`.
    pub fn put(&self, sha256: &str, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{sha256}.ark"));
        if path.exists() {
            return Ok(());
        }
        let tmp = self
            .dir
            .join(format!(".{sha256}.{}.tmp", uuid::Uuid::new_v4().simple()));
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    }

    /// Reads and verifies the archive kept under `sha256`; its bytes must still
    /// hash to it.
    pub fn get(&self, sha256: &str) -> Result<Ark, String> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{sha256}` is not a sha256 digest"));
        }
        let path = self.dir.join(format!("{sha256}.ark"));
        let ark = Ark::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if ark.sha256 != sha256 {
            return Err(format!(
                "{} no longer hashes to its name (found {}): the file was changed; deploy the biz again",
                path.display(),
                ark.sha256
            ));
        }
        Ok(ark)
    }
}

/// Turns grant strings into capabilities.
pub fn grants_of(grants: &[String]) -> Result<Capabilities, String> {
    let parsed = grants
        .iter()
        .map(|g| parse_grant(g).map_err(|e| format!("grant `{g}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(merge_grants(&parsed))
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
        let caps = match grants_of(&biz.grants) {
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
            let ark = match core.arks.get(digest) {
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
