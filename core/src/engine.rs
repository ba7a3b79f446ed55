//! One named pipeline engine: its pipelines, settings, bizes, secrets and
//! executions. Get one from [`Container::engine`](crate::Container::engine).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};

mod repo;

pub use repo::{RepoEvent, RepoFile, RepoOutcome, RepoRun};

use crate::ark::Ark;
use crate::host::Capabilities;
use crate::model::{
    Diagnostics, DynamicObject, ObjectMeta, Pipeline, PipelineExecution, PipelineSetting,
    PipelineSettingSpec, Resource, StepPhase,
};
use crate::pipeline::EngineCore;
use crate::pipeline::logs::LogKey;
pub use crate::pipeline::{
    CALL_DEPTH_LABEL, CALLED_BY_LABEL, CALLED_BY_STEP_LABEL, DeployError, Deploying, LogError,
    PIPELINE_LABEL, PendingBiz, SETTINGS_NAME, SecretError, StoredLine, TriggerError,
    TriggerRequest,
};
use crate::runtime::{Activation, BizInfo, BizLease, InstallError, LifecycleError, UninstallMode};
use crate::store::watcher::{self, Event};
use crate::store::{Api, DeleteOptions, LabelSelector, Requirement, StoreError, await_condition};

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A pipeline file does not parse or validate.
    #[error("the pipeline is not valid:\n{0}")]
    Invalid(Diagnostics),
    /// The settings are not valid (the message names the field and the fix).
    #[error("the engine's settings are not valid: {0}")]
    InvalidSettings(String),
    /// A trigger was refused.
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    /// A biz did not install.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// A biz lifecycle operation was refused.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// A secret operation failed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Reading a log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A biz could not be deployed (bad archive, bad grant, version clash, the
    /// archive not kept, the install failed).
    #[error("cannot deploy a biz in engine `{engine}`: {error}")]
    Deploy {
        /// The engine.
        engine: String,
        /// What went wrong.
        #[source]
        error: Box<DeployError>,
    },
    /// No such object.
    #[error("{kind} `{name}` does not exist in engine `{engine}`")]
    NotFound {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// Engine.
        engine: String,
    },
    /// Pipelines cannot be read from the engine's repository.
    #[error("cannot run pipelines from the repository of engine `{engine}`: {reason}")]
    Repo {
        /// Engine.
        engine: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A decision on an approval step was refused.
    #[error("cannot decide step `{step}` of execution `{execution}`: {reason}")]
    Decision {
        /// The execution.
        execution: String,
        /// The step.
        step: String,
        /// What is wrong, and what to do.
        reason: String,
        /// Which refusal.
        refusal: Refusal,
    },
}

/// Why a decision on an approval step was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The step is not an approval gate.
    NotAGate,
    /// The step is not waiting for a decision (not started, decided, or the
    /// execution ended).
    NotWaiting,
    /// The one deciding is not among the gate's approvers.
    NotAnApprover,
}

/// A decision on an approval step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Approve (`true`) or reject.
    pub approve: bool,
    /// Who decides (an API token's name).
    pub by: String,
    /// The groups they belong to (matched against `group:<name>` approvers).
    pub groups: Vec<String>,
    /// What they say (at most 1 KiB kept).
    pub comment: String,
}

/// A handle on one engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) core: Arc<EngineCore>,
}

/// A stream of an execution's successive states.
pub type ExecutionStream =
    Pin<Box<dyn Stream<Item = Result<PipelineExecution, StoreError>> + Send + 'static>>;

/// A stream of log lines.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<StoredLine, LogError>> + Send + 'static>>;

impl Engine {
    /// The engine's name.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// The node this engine runs on.
    pub fn node(&self) -> &str {
        &self.core.node
    }

    /// One installed biz version, as it is now; `None` when it is not installed.
    pub fn biz(&self, name: &str, version: &semver::Version) -> Option<BizInfo> {
        self.core.registry.get(name, version)
    }

    /// A lease on the version `reference` resolves to (`name`, `name@req` or
    /// `name@version`): the version stays installed while the lease is held, and
    /// [`BizLease::invoke`] calls a step of it directly, outside any pipeline.
    ///
    /// # Errors
    /// [`EngineError::Lifecycle`] when no activated version satisfies `reference`.
    pub fn lease(&self, reference: &str) -> Result<BizLease, EngineError> {
        Ok(self.core.registry.resolve(reference)?)
    }

    fn not_found(&self, kind: &'static str, name: &str) -> EngineError {
        EngineError::NotFound {
            kind,
            name: name.to_owned(),
            engine: self.core.name.clone(),
        }
    }

    // ---- settings and pipelines ----

    /// Replaces the engine's settings.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidSettings`] when a field is out of its range;
    /// [`EngineError::Store`] when the settings cannot be written.
    pub async fn apply_settings(&self, spec: PipelineSettingSpec) -> Result<(), EngineError> {
        self.apply_settings_at(spec, None).await.map(|_| ())
    }

    /// Replaces the engine's settings if they are still at `resource_version`
    /// (as read with [`Engine::settings_object`]; `0` for "none applied yet"),
    /// and returns the stored object. `None` replaces whatever they are.
    ///
    /// # Errors
    ///
    /// As [`Engine::apply_settings`]; [`StoreError::Conflict`] (in
    /// [`EngineError::Store`]) when they changed since.
    pub async fn apply_settings_at(
        &self,
        spec: PipelineSettingSpec,
        resource_version: Option<u64>,
    ) -> Result<PipelineSetting, EngineError> {
        crate::pipeline::check_settings(&spec).map_err(EngineError::InvalidSettings)?;
        let api = Api::<PipelineSetting>::new(self.core.store.clone());
        loop {
            let current = api.get(&self.core.name, SETTINGS_NAME).await?;
            if let Some(expected) = resource_version {
                let actual = current.as_ref().map_or(0, |s| s.metadata.resource_version);
                if actual != expected {
                    return Err(StoreError::Conflict {
                        key: crate::store::ObjectRef::new(
                            PipelineSetting::KIND,
                            &self.core.name,
                            SETTINGS_NAME,
                        ),
                        expected,
                        actual,
                    }
                    .into());
                }
            }
            let result = match current {
                Some(mut s) => {
                    s.spec = spec.clone();
                    api.update(&s).await
                }
                None => {
                    api.create(&PipelineSetting::new(
                        ObjectMeta::new(&self.core.name, SETTINGS_NAME),
                        spec.clone(),
                    ))
                    .await
                }
            };
            match result {
                Ok(stored) => return Ok(stored),
                // Changed meanwhile: with a precondition, the next pass reports it.
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The engine's settings object with its `resource_version`, `None` when
    /// none were applied.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read.
    pub async fn settings_object(&self) -> Result<Option<PipelineSetting>, EngineError> {
        Ok(Api::<PipelineSetting>::new(self.core.store.clone())
            .get(&self.core.name, SETTINGS_NAME)
            .await?)
    }

    /// The engine's settings (defaults when none were applied).
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read.
    pub async fn settings(&self) -> Result<PipelineSettingSpec, EngineError> {
        Ok(self.core.settings().await?)
    }

    /// The public key that verifies this engine's build provenance (the
    /// `provenance.key_secret` setting's key), with the secret's name; `None`
    /// when the engine signs no provenance.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidSettings`] when the secret is missing or holds
    /// no ed25519 key; [`EngineError::Secret`] or [`EngineError::Store`] when
    /// it cannot be read.
    pub async fn provenance_key(
        &self,
    ) -> Result<Option<(String, crate::ark::PublicKey)>, EngineError> {
        let Some(setting) = self.settings().await?.provenance else {
            return Ok(None);
        };
        let name = setting.key_secret;
        let Some(value) = self.secret_value(&name).await? else {
            return Err(EngineError::InvalidSettings(format!(
                "`provenance.key_secret` names secret `{name}`, which engine `{}` does not have: \
                 set it to the seed `cargo ark keygen` writes",
                self.name()
            )));
        };
        // The parse error is not passed on: it would quote the secret.
        let key: crate::ark::SecretKey = value.parse().map_err(|_| {
            EngineError::InvalidSettings(format!(
                "secret `{name}` (`provenance.key_secret`) is not an ed25519 seed: set it to \
                 the 64 hex digits `cargo ark keygen` writes"
            ))
        })?;
        Ok(Some((name, key.public_key())))
    }

    /// Checks every step's `with:` against the config schema of the biz version
    /// it would run now (a JSON Schema validator: `$ref`s, `$defs`, every
    /// keyword). A step whose biz is not installed in this engine is not checked:
    /// it may be installed later, and is checked again when it runs. `map`
    /// places the diagnostics ([`SourceMap::detached`](crate::model::SourceMap::detached)
    /// for none).
    pub fn check_step_configs(
        &self,
        spec: &crate::model::PipelineSpec,
        map: &crate::model::SourceMap,
    ) -> crate::model::Diagnostics {
        let registry = &self.core.registry;
        let schema_for = |uses: &crate::model::Uses| {
            registry.step_schema(&uses.biz, uses.req.as_ref(), uses.step.as_deref())
        };
        crate::model::Diagnostics(crate::model::validate_with_schemas(spec, map, &schema_for))
    }

    /// Creates the pipeline, or replaces the spec of the one with its name. The
    /// engine name in its metadata is ignored. Steps' `with:` are checked against
    /// their bizes' schemas first ([`Engine::check_step_configs`]).
    ///
    /// # Errors
    ///
    /// [`EngineError::Invalid`] with every diagnostic when a step's `with:` does not
    /// fit its biz's schema; [`EngineError::Store`] when it cannot be written.
    pub async fn apply_pipeline(&self, pipeline: &Pipeline) -> Result<Pipeline, EngineError> {
        let map =
            crate::model::SourceMap::detached(&format!("pipeline `{}`", pipeline.metadata.name));
        let diagnostics = self.check_step_configs(&pipeline.spec, &map);
        if diagnostics.has_errors() {
            return Err(EngineError::Invalid(diagnostics));
        }
        self.write_pipeline(pipeline).await
    }

    /// Refuses a pipeline whose `pipeline:` steps call back to it through the
    /// engine's other pipelines (a call of itself is refused when parsing).
    async fn check_call_cycle(&self, pipeline: &Pipeline) -> Result<(), EngineError> {
        let calls = |spec: &crate::model::PipelineSpec| -> Vec<String> {
            spec.all_steps()
                .filter_map(|s| s.pipeline.as_ref().map(|c| c.name.clone()))
                .collect()
        };
        let first = calls(&pipeline.spec);
        if first.is_empty() {
            return Ok(());
        }
        let name = &pipeline.metadata.name;
        let (stored, _) = Api::<Pipeline>::new(self.core.store.clone())
            .list(Some(&self.core.name), LabelSelector::default())
            .await?;
        let graph: std::collections::BTreeMap<String, Vec<String>> = stored
            .iter()
            .filter(|p| p.metadata.name != *name)
            .map(|p| (p.metadata.name.clone(), calls(&p.spec)))
            .chain(std::iter::once((name.clone(), first)))
            .collect();
        // Depth-first from the applied pipeline, keeping the path.
        let mut path: Vec<(String, usize)> = vec![(name.clone(), 0)];
        let mut seen = std::collections::BTreeSet::new();
        while let Some((node, next)) = path.last_mut() {
            let edges = graph.get(node.as_str()).map_or(&[][..], Vec::as_slice);
            let Some(child) = edges.get(*next).cloned() else {
                path.pop();
                continue;
            };
            *next += 1;
            if child == *name {
                let mut cycle: Vec<String> = path.iter().map(|(n, _)| format!("`{n}`")).collect();
                cycle.push(format!("`{name}`"));
                let mut d = crate::model::Diagnostic::error(
                    "pipeline-call-cycle",
                    format!(
                        "pipelines call each other in a cycle: {}",
                        cycle.join(" calls ")
                    ),
                );
                d.file = format!("pipeline `{name}`");
                d.hint = Some(
                    "a cycle of calls would never end; remove one of the `pipeline:` steps".into(),
                );
                return Err(EngineError::Invalid(crate::model::Diagnostics(vec![d])));
            }
            if seen.insert(child.clone()) {
                path.push((child, 0));
            }
        }
        Ok(())
    }

    async fn write_pipeline(&self, pipeline: &Pipeline) -> Result<Pipeline, EngineError> {
        self.write_pipeline_at(pipeline, None).await
    }

    /// Writes a pipeline; with `expected`, only over the stored one at that
    /// `resource_version` (a conflict otherwise, never retried).
    async fn write_pipeline_at(
        &self,
        pipeline: &Pipeline,
        expected: Option<u64>,
    ) -> Result<Pipeline, EngineError> {
        self.check_call_cycle(pipeline).await?;
        let api = Api::<Pipeline>::new(self.core.store.clone());
        let name = &pipeline.metadata.name;
        loop {
            let stored = api.get(&self.core.name, name).await?;
            if let Some(want) = expected {
                let actual = stored.as_ref().map_or(0, |p| p.metadata.resource_version);
                if actual != want {
                    return Err(EngineError::Store(StoreError::Conflict {
                        key: crate::store::ObjectRef::new("Pipeline", &self.core.name, name),
                        expected: want,
                        actual,
                    }));
                }
            }
            let result = match stored {
                Some(mut existing) => {
                    existing.spec = pipeline.spec.clone();
                    existing.metadata.labels = pipeline.metadata.labels.clone();
                    existing.metadata.annotations = pipeline.metadata.annotations.clone();
                    api.update(&existing).await
                }
                None => {
                    let mut meta = ObjectMeta::new(&self.core.name, name);
                    meta.labels = pipeline.metadata.labels.clone();
                    meta.annotations = pipeline.metadata.annotations.clone();
                    api.create(&Pipeline::new(meta, pipeline.spec.clone()))
                        .await
                }
            };
            match result {
                Ok(p) => return Ok(p),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Parses, validates and applies a pipeline file; steps' `with:` are checked
    /// against their bizes' schemas, with positions in the file.
    ///
    /// # Errors
    ///
    /// [`EngineError::Invalid`] with every diagnostic (file, line, column, hint) when the
    /// YAML does not parse or validate; [`EngineError::Store`] when it cannot be written.
    pub async fn apply_pipeline_yaml(
        &self,
        file_name: &str,
        source: &str,
    ) -> Result<Pipeline, EngineError> {
        let parsed =
            crate::model::parse_pipeline_file(file_name, source).map_err(EngineError::Invalid)?;
        self.apply_parsed_pipeline(&parsed).await
    }

    /// Applies a pipeline file parsed with
    /// [`parse_pipeline_file`](crate::model::parse_pipeline_file) (by a caller
    /// that parses elsewhere, such as off its async workers); steps' `with:` are
    /// checked against their bizes' schemas, with positions in the file.
    ///
    /// # Errors
    ///
    /// [`EngineError::Invalid`] with every diagnostic when a step's `with:` does not
    /// fit its biz's schema; [`EngineError::Store`] when it cannot be written.
    pub async fn apply_parsed_pipeline(
        &self,
        parsed: &crate::model::ParsedPipeline,
    ) -> Result<Pipeline, EngineError> {
        self.apply_parsed_pipeline_at(parsed, None).await
    }

    /// [`Engine::apply_parsed_pipeline`], only if the stored pipeline is still
    /// at `resource_version` (`Some`): the compare-and-swap an API client asks
    /// for with `If-Match` after reading the pipeline, so two people editing
    /// it do not overwrite each other.
    ///
    /// # Errors
    ///
    /// As [`Engine::apply_parsed_pipeline`], and [`EngineError::Store`] with
    /// [`StoreError::Conflict`] when the pipeline changed (or does not exist).
    pub async fn apply_parsed_pipeline_at(
        &self,
        parsed: &crate::model::ParsedPipeline,
        resource_version: Option<u64>,
    ) -> Result<Pipeline, EngineError> {
        let diagnostics = self.check_step_configs(&parsed.pipeline.spec, &parsed.source_map);
        if diagnostics.has_errors() {
            return Err(EngineError::Invalid(diagnostics));
        }
        self.write_pipeline_at(&parsed.pipeline, resource_version)
            .await
    }

    /// A pipeline with its status.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read.
    pub async fn pipeline(&self, name: &str) -> Result<Option<Pipeline>, EngineError> {
        Ok(Api::<Pipeline>::new(self.core.store.clone())
            .get(&self.core.name, name)
            .await?)
    }

    /// Every pipeline of the engine.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read.
    pub async fn pipelines(&self) -> Result<Vec<Pipeline>, EngineError> {
        Ok(Api::<Pipeline>::new(self.core.store.clone())
            .list(Some(&self.core.name), LabelSelector::default())
            .await?
            .0)
    }

    /// Deletes a pipeline (its executions are kept until retention removes them).
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`] when there is no such pipeline; [`EngineError::Store`]
    /// when the store fails.
    pub async fn delete_pipeline(&self, name: &str) -> Result<(), EngineError> {
        self.delete_pipeline_at(name, None).await
    }

    /// Deletes a pipeline if it is still at `resource_version` (as read):
    /// [`StoreError::Conflict`] (in [`EngineError::Store`]) when it changed
    /// since. `None` deletes whatever it is now.
    ///
    /// # Errors
    ///
    /// As [`Engine::delete_pipeline`], and the conflict.
    pub async fn delete_pipeline_at(
        &self,
        name: &str,
        resource_version: Option<u64>,
    ) -> Result<(), EngineError> {
        let options = DeleteOptions { resource_version };
        match Api::<Pipeline>::new(self.core.store.clone())
            .delete(&self.core.name, name, &options)
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound { .. }) => Err(self.not_found("pipeline", name)),
            Err(e) => Err(e.into()),
        }
    }

    // ---- bizes ----

    /// Installs a biz in this process only, with the capabilities this engine
    /// grants it; the first version of a name is activated. Not kept across
    /// restarts: use [`Engine::deploy_biz`] for that.
    ///
    /// # Errors
    ///
    /// [`EngineError::Install`] when the component does not compile or link, or the
    /// registry refuses it (the same version installed with another component).
    pub async fn install(&self, ark: Ark, grants: &Capabilities) -> Result<BizInfo, EngineError> {
        self.install_with(ark, grants, Activation::IfNone).await
    }

    /// Installs a biz, choosing whether it becomes the activated version.
    ///
    /// # Errors
    ///
    /// [`EngineError::Install`] when the component does not compile or link, or the
    /// registry refuses it.
    pub async fn install_with(
        &self,
        ark: Ark,
        grants: &Capabilities,
        activation: Activation,
    ) -> Result<BizInfo, EngineError> {
        Ok(self
            .core
            .registry
            .install(Arc::new(ark), grants, activation)
            .await?)
    }

    /// Deploys a biz from its archive bytes, as desired state: the archive is
    /// verified, installed with `grants` (the grant syntax: `process=sh`,
    /// `http=host`, `cache`, `host-call=name`), kept in the container's archive
    /// store, and recorded in the engine's `BizDeployment`, so a restart installs
    /// it again. `activate` makes it the version new executions resolve to (the
    /// first version of a name is activated anyway). Nothing is recorded when
    /// installing fails.
    ///
    /// # Errors
    ///
    /// [`EngineError::Deploy`] naming the engine, with a [`DeployError`] callers can match:
    /// the archive or a grant is bad, the version clashes with an installed one, the
    /// archive could not be kept, the install failed, or the store failed. Nothing is
    /// recorded when it fails.
    pub async fn deploy_biz(
        &self,
        bytes: &[u8],
        grants: &[String],
        activate: bool,
    ) -> Result<BizInfo, EngineError> {
        crate::pipeline::deployment::deploy_biz(&self.core, bytes, grants, activate)
            .await
            .map_err(|error| EngineError::Deploy {
                engine: self.core.name.clone(),
                error: Box::new(error),
            })
    }

    /// Deploys a biz as [`Engine::deploy_biz`] does, but returns once the
    /// archive is checked, kept and recorded as desired state, without waiting
    /// for its compile: a big component not in the compiled cache compiles for
    /// seconds (a Python or JavaScript step: 7–9 s here). The compile runs in a
    /// task of its own, beside other compiles; [`Engine::pending_bizes`] shows
    /// it until it is installed. Executions that need it meanwhile wait for it
    /// (up to the `resume_grace` option). When the compile fails, the version
    /// is taken out of the desired state and the failure is kept in
    /// [`Engine::pending_bizes`] until the version is deployed again or
    /// uninstalled.
    ///
    /// # Errors
    ///
    /// [`EngineError::Deploy`] for what can be known before compiling: the
    /// archive, a grant, the signature policy, a version clash, keeping the
    /// archive, the store.
    pub async fn deploy_biz_in_background(
        &self,
        bytes: &[u8],
        grants: &[String],
        activate: bool,
    ) -> Result<Deploying, EngineError> {
        crate::pipeline::deployment::deploy_biz_in_background(&self.core, bytes, grants, activate)
            .await
            .map_err(|error| EngineError::Deploy {
                engine: self.core.name.clone(),
                error: Box::new(error),
            })
    }

    /// Bizes installing in the background
    /// ([`Engine::deploy_biz_in_background`]) and background installs that
    /// failed, by name and version.
    pub fn pending_bizes(&self) -> Vec<PendingBiz> {
        self.core.pending_list()
    }

    /// Makes `name@version` the version new executions resolve to (recorded in
    /// the engine's `BizDeployment` when the biz was deployed).
    ///
    /// # Errors
    ///
    /// [`EngineError::Lifecycle`] when `name@version` is not installed or cannot be
    /// activated (draining, broken); [`EngineError::Store`] when the desired state cannot
    /// be written.
    pub async fn switch(&self, name: &str, version: &semver::Version) -> Result<(), EngineError> {
        // Under the deployment lock: the reconciler sees both changes or neither.
        let _changing = self.core.deploy_lock.lock().await;
        self.core.registry.switch(name, version)?;
        let v = version.to_string();
        crate::pipeline::deployment::update_spec(&self.core, |spec| {
            if let Some(b) = spec.bizes.iter_mut().find(|b| b.name == name)
                && b.versions.contains(&v)
            {
                b.active = v.clone();
            }
        })
        .await?;
        Ok(())
    }

    /// Uninstalls `name@version` (waiting for the executions holding it, or
    /// cancelling their calls with [`UninstallMode::Force`]) and removes it from
    /// the engine's `BizDeployment`.
    ///
    /// # Errors
    ///
    /// [`EngineError::Lifecycle`] when `name@version` is not installed;
    /// [`EngineError::Store`] when the desired state cannot be written.
    pub async fn uninstall(
        &self,
        name: &str,
        version: &semver::Version,
        mode: UninstallMode,
    ) -> Result<(), EngineError> {
        let v = version.to_string();
        let was_pending = {
            let _changing = self.core.deploy_lock.lock().await;
            crate::pipeline::deployment::update_spec(&self.core, |spec| {
                if let Some(b) = spec.bizes.iter_mut().find(|b| b.name == name) {
                    b.versions.retain(|x| *x != v);
                    b.digests.remove(&v);
                    if b.active == v {
                        b.active.clear();
                    }
                }
                spec.bizes.retain(|b| !b.versions.is_empty());
            })
            .await?;
            // A background install (compiling: its task finds it no longer
            // wanted and drops it; or failed) goes with its desired state,
            // under the lock the task registers under.
            self.core.remove_pending(name, version).is_some()
        };
        if was_pending && self.core.registry.get(name, version).is_none() {
            return Ok(());
        }
        // Draining may wait for running calls: not under the lock.
        Ok(self.core.registry.uninstall(name, version, mode).await?)
    }

    /// The installed bizes.
    pub fn bizes(&self) -> Vec<BizInfo> {
        self.core.registry.list()
    }

    // ---- secrets ----

    /// Creates or replaces a secret (stored encrypted; referenced as `secrets.<name>`).
    ///
    /// # Errors
    ///
    /// [`EngineError::Secret`] when the value cannot be encrypted or stored.
    pub async fn set_secret(&self, name: &str, value: &str) -> Result<(), EngineError> {
        Ok(self.core.secrets.set(name, value).await?)
    }

    /// Deletes a secret; `false` when it did not exist.
    ///
    /// # Errors
    ///
    /// [`EngineError::Secret`] when the store fails.
    pub async fn delete_secret(&self, name: &str) -> Result<bool, EngineError> {
        Ok(self.core.secrets.delete(name).await?)
    }

    /// The decrypted value of the secret `name`; `None` when the engine has no
    /// such secret.
    ///
    /// **Plaintext.** This is for host-side checks that need the value itself,
    /// such as verifying a webhook's signature with the pipeline's webhook
    /// secret. Never log it, return it to a client, or keep it longer than the
    /// check: the value is zeroed when the returned guard is dropped. Steps get
    /// secrets through `${{ secrets.<name> }}` instead, with masking.
    ///
    /// # Errors
    ///
    /// [`EngineError::Secret`] when the secret cannot be read or decrypted (another node
    /// key).
    pub async fn secret_value(
        &self,
        name: &str,
    ) -> Result<Option<zeroize::Zeroizing<String>>, EngineError> {
        Ok(self.core.secrets.get(name).await?)
    }

    /// The names of the engine's secrets (never their values).
    ///
    /// # Errors
    ///
    /// [`EngineError::Secret`] when the store fails.
    pub async fn secret_names(&self) -> Result<Vec<String>, EngineError> {
        Ok(self.core.secrets.names().await?)
    }

    // ---- executions ----

    /// Starts an execution of `pipeline`. It is `Queued` until the engine's
    /// quota admits it; await it with [`Engine::wait`].
    ///
    /// # Errors
    ///
    /// [`EngineError::Trigger`]: no such pipeline, params that do not match its
    /// declarations, or the store failed.
    pub async fn trigger(
        &self,
        pipeline: &str,
        request: TriggerRequest,
    ) -> Result<PipelineExecution, EngineError> {
        Ok(crate::pipeline::trigger(&self.core, pipeline, request).await?)
    }

    /// Starts a new execution with the same params, event, branch and commit as
    /// `execution`, on the pipeline's current spec.
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`] when there is no such execution; [`EngineError::Trigger`]
    /// as for [`Engine::trigger`].
    pub async fn rerun(&self, execution: &str) -> Result<PipelineExecution, EngineError> {
        let old = self
            .execution(execution)
            .await?
            .ok_or_else(|| self.not_found("execution", execution))?;
        let mut req = TriggerRequest {
            params: old.spec.params.clone(),
            event: old.spec.event.clone(),
            branch: old.spec.branch.clone(),
            commit: old.spec.commit.clone(),
            kind: old.spec.trigger,
            // A pipeline read from a repository reruns as it was read, with
            // the trust it had.
            from_repo: old
                .spec
                .origin
                .clone()
                .map(|origin| crate::pipeline::FromRepo {
                    spec: old.spec.pipeline_spec.clone(),
                    origin,
                }),
            untrusted: old.spec.untrusted,
            image: old.spec.image.clone(),
            ..TriggerRequest::default()
        };
        req.labels
            .insert("arkline.dev/rerun-of".into(), execution.to_owned());
        self.trigger(&old.spec.pipeline, req).await
    }

    /// One execution.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read.
    pub async fn execution(&self, name: &str) -> Result<Option<PipelineExecution>, EngineError> {
        Ok(Api::<PipelineExecution>::new(self.core.store.clone())
            .get(&self.core.name, name)
            .await?)
    }

    /// The executions of one pipeline, or of every pipeline, newest run first.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read.
    pub async fn executions(
        &self,
        pipeline: Option<&str>,
    ) -> Result<Vec<PipelineExecution>, EngineError> {
        let selector = match pipeline {
            Some(p) => LabelSelector::everything()
                .and(Requirement::Equals(PIPELINE_LABEL.into(), p.to_owned())),
            None => LabelSelector::default(),
        };
        let (mut items, _) = Api::<PipelineExecution>::new(self.core.store.clone())
            .list(Some(&self.core.name), selector)
            .await?;
        items.sort_by(|a, b| {
            (b.metadata.created, b.spec.run).cmp(&(a.metadata.created, a.spec.run))
        });
        Ok(items)
    }

    /// Requests an abort: running steps are interrupted, `finally` runs, the phase
    /// becomes `Aborted`. A finished execution is left as it is.
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`] when there is no such execution; [`EngineError::Store`]
    /// when the abort cannot be written.
    pub async fn abort(&self, execution: &str) -> Result<PipelineExecution, EngineError> {
        let api = Api::<PipelineExecution>::new(self.core.store.clone());
        loop {
            let mut exec = api
                .get(&self.core.name, execution)
                .await?
                .ok_or_else(|| self.not_found("execution", execution))?;
            if exec.spec.abort || exec.status.phase.is_finished() {
                return Ok(exec);
            }
            exec.spec.abort = true;
            match api.update(&exec).await {
                Ok(e) => return Ok(e),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Approves or rejects an approval step that is waiting, as `decision.by`
    /// (who must be one of the gate's approvers, by name or by a
    /// `group:<name>`). The decision is recorded in the execution's spec; the
    /// driver, wherever it runs, reads it and ends the step (`Succeeded` with
    /// outputs `approved_by` and `comment`, or `Failed`).
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`]; [`EngineError::Decision`] when the step is
    /// no gate, is not waiting, or `by` may not decide; [`EngineError::Store`].
    pub async fn decide(
        &self,
        execution: &str,
        step: &str,
        decision: Decision,
    ) -> Result<PipelineExecution, EngineError> {
        let api = Api::<PipelineExecution>::new(self.core.store.clone());
        let refuse = |refusal: Refusal, reason: String| EngineError::Decision {
            execution: execution.to_owned(),
            step: step.to_owned(),
            reason,
            refusal,
        };
        loop {
            let mut exec = api
                .get(&self.core.name, execution)
                .await?
                .ok_or_else(|| self.not_found("execution", execution))?;
            let gate = exec
                .spec
                .pipeline_spec
                .all_steps()
                .flat_map(crate::model::Step::instances)
                .find(|i| i.name == step)
                .map(|i| i.step.approval.clone());
            let gate = match gate {
                None => {
                    return Err(refuse(
                        Refusal::NotAGate,
                        format!("the execution has no step `{step}`"),
                    ));
                }
                Some(None) => {
                    return Err(refuse(
                        Refusal::NotAGate,
                        "it is not an approval step".into(),
                    ));
                }
                Some(Some(gate)) => gate,
            };
            let waiting = exec
                .status
                .stages
                .iter()
                .flat_map(|s| s.steps.iter())
                .chain(exec.status.finally.iter())
                .any(|s| s.name == step && s.phase == crate::model::StepPhase::Running);
            if exec.spec.approvals.contains_key(step) {
                return Err(refuse(Refusal::NotWaiting, "it is already decided".into()));
            }
            if exec.status.phase.is_finished() || !waiting {
                return Err(refuse(
                    Refusal::NotWaiting,
                    format!(
                        "it is not waiting for a decision (the execution is {:?})",
                        exec.status.phase
                    ),
                ));
            }
            let allowed = gate.approvers.iter().any(|a| {
                *a == decision.by
                    || a == "*"
                    || a.strip_prefix("group:")
                        .is_some_and(|g| decision.groups.iter().any(|mine| mine == g))
            });
            if !allowed {
                return Err(refuse(
                    Refusal::NotAnApprover,
                    format!(
                        "`{}` is not one of its approvers ({})",
                        decision.by,
                        gate.approvers.join(", ")
                    ),
                ));
            }
            let mut comment = decision.comment.clone();
            if comment.len() > 1024 {
                let mut end = 1024;
                while !comment.is_char_boundary(end) {
                    end -= 1;
                }
                comment.truncate(end);
            }
            exec.spec.approvals.insert(
                step.to_owned(),
                crate::model::Approval {
                    approved: decision.approve,
                    by: decision.by.clone(),
                    at: self.core.clock.now(),
                    comment,
                },
            );
            match api.update(&exec).await {
                Ok(e) => return Ok(e),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The successive states of an execution, from now until it finishes (the
    /// current state first). Ends after the finished state, or after the
    /// execution was deleted (its last state). Store errors are items; the
    /// stream goes on after them (it lists again, so it survives compaction).
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`] when there is no such execution; [`EngineError::Store`]
    /// when the watch cannot start.
    pub async fn watch_execution(&self, execution: &str) -> Result<ExecutionStream, EngineError> {
        let events = watcher::watcher(
            self.core.store.clone(),
            PipelineExecution::KIND,
            Some(&self.core.name),
            watcher::Config::default(),
        );
        let mut states = ExecutionStates {
            events: Box::pin(events),
            name: execution.to_owned(),
            listed: None,
            seen: None,
            done: false,
        };
        let current = match states.next().await {
            Some(Ok(current)) => current,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(self.not_found("execution", execution)),
        };
        let rest = futures::stream::unfold(states, |mut states| async move {
            let item = states.next().await?;
            Some((item, states))
        });
        Ok(Box::pin(futures::stream::iter([Ok(current)]).chain(rest)))
    }

    /// Waits until the execution finishes and returns its final state.
    ///
    /// # Errors
    ///
    /// [`EngineError::NotFound`] when there is no such execution; [`EngineError::Store`]
    /// when the store fails.
    pub async fn wait(&self, execution: &str) -> Result<PipelineExecution, EngineError> {
        let api = Api::<PipelineExecution>::new(self.core.store.clone());
        let finished =
            |e: Option<&PipelineExecution>| e.is_none_or(|e| e.status.phase.is_finished());
        await_condition(&api, &self.core.name, execution, finished)
            .await?
            .ok_or_else(|| self.not_found("execution", execution))
    }

    /// The log of one step so far (every attempt).
    ///
    /// # Errors
    ///
    /// [`EngineError::Log`] when the log cannot be read.
    pub async fn logs(&self, execution: &str, step: &str) -> Result<Vec<StoredLine>, EngineError> {
        Ok(self.core.logs.read(&self.log_key(execution, step)).await?)
    }

    /// The log of one step: the lines so far, then new ones as they are written,
    /// across retries, ending when the step has finished (or its execution has).
    pub fn follow_logs(&self, execution: &str, step: &str) -> LogStream {
        let state = Follow {
            engine: self.clone(),
            execution: execution.to_owned(),
            step: step.to_owned(),
            inner: None,
            last: None,
            draining: false,
            states: None,
        };
        Box::pin(futures::stream::unfold(Some(state), |state| async move {
            let mut f = state?;
            loop {
                if f.inner.is_none() {
                    f.inner = Some(Box::pin(
                        f.engine
                            .core
                            .logs
                            .follow(&f.engine.log_key(&f.execution, &f.step)),
                    ));
                }
                match f.inner.as_mut()?.next().await {
                    Some(Ok(line)) => {
                        if f.last.is_some_and(|l| line.seq <= l) {
                            continue;
                        }
                        f.last = Some(line.seq);
                        return Some((Ok(line), Some(f)));
                    }
                    Some(Err(LogError::NotFound(_))) | None => {
                        f.inner = None;
                        if f.draining {
                            return None;
                        }
                        // Between attempts, or not started: wait for the step's
                        // next state change, or finish after a last pass.
                        match f.step_state().await {
                            Ok(true) => f.draining = true,
                            Ok(false) => {}
                            Err(e) => return Some((Err(e), None)),
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), None)),
                }
            }
        }))
    }

    fn log_key(&self, execution: &str, step: &str) -> LogKey {
        LogKey {
            engine: self.core.name.clone(),
            execution: execution.to_owned(),
            step: step.to_owned(),
        }
    }
}

/// The state of [`Engine::watch_execution`]: one execution's states picked
/// out of a watcher of the engine's executions.
struct ExecutionStates {
    events: Pin<Box<dyn Stream<Item = Result<Event<DynamicObject>, StoreError>> + Send>>,
    name: String,
    /// While a list is read: the execution, if listed.
    listed: Option<Option<DynamicObject>>,
    /// The `resource_version` of the last state yielded.
    seen: Option<u64>,
    done: bool,
}

impl ExecutionStates {
    /// The next state; `None` once finished or deleted (or, before the first
    /// state, when the execution does not exist).
    async fn next(&mut self) -> Option<Result<PipelineExecution, StoreError>> {
        while !self.done {
            let event = match self.events.next().await? {
                Ok(event) => event,
                Err(e) => return Some(Err(e)),
            };
            let named = |o: &DynamicObject| o.metadata.name == self.name;
            let state = match event {
                Event::Init => {
                    self.listed = Some(None);
                    continue;
                }
                Event::InitApply(obj) if named(&obj) => {
                    self.listed = Some(Some(obj));
                    continue;
                }
                Event::InitDone { .. } => match self.listed.take() {
                    // Unchanged since the last state yielded.
                    Some(Some(obj)) if Some(obj.metadata.resource_version) == self.seen => continue,
                    Some(Some(obj)) => obj,
                    // Not there (deleted in a gap of the watch, or never created).
                    Some(None) | None => return None,
                },
                Event::Apply(obj) if named(&obj) => obj,
                Event::Delete(obj) if named(&obj) => {
                    self.done = true;
                    obj
                }
                Event::InitApply(_) | Event::Apply(_) | Event::Delete(_) => continue,
            };
            self.seen = Some(state.metadata.resource_version);
            let state = watcher::convert::<PipelineExecution>(state);
            if let Ok(exec) = &state {
                self.done |= exec.status.phase.is_finished();
            }
            return Some(state);
        }
        None
    }
}

/// The state of [`Engine::follow_logs`].
struct Follow {
    engine: Engine,
    execution: String,
    step: String,
    inner: Option<LogStream>,
    last: Option<u64>,
    /// One more pass over the log after the step was seen finished.
    draining: bool,
    states: Option<ExecutionStream>,
}

impl Follow {
    /// Waits for the next change of the execution; `true` when the step (or the
    /// execution) is over.
    async fn step_state(&mut self) -> Result<bool, LogError> {
        let over = |e: &PipelineExecution, step: &str| {
            e.status.phase.is_finished()
                || e.status
                    .stages
                    .iter()
                    .flat_map(|s| s.steps.iter())
                    .chain(e.status.finally.iter())
                    .find(|s| s.name == step)
                    .is_some_and(|s| {
                        matches!(
                            s.phase,
                            StepPhase::Succeeded
                                | StepPhase::Failed
                                | StepPhase::Skipped
                                | StepPhase::Aborted
                        )
                    })
        };
        if self.states.is_none() {
            match self.engine.watch_execution(&self.execution).await {
                Ok(s) => self.states = Some(s),
                Err(_) => return Ok(true),
            }
        }
        let Some(states) = self.states.as_mut() else {
            return Ok(true);
        };
        match states.next().await {
            Some(Ok(e)) => Ok(over(&e, &self.step)),
            Some(Err(_)) | None => Ok(true),
        }
    }
}
