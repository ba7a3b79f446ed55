//! Triggering a run: the request, and creating the next execution of a pipeline.

use std::collections::BTreeMap;

use crate::model::{
    ObjectMeta, OwnerRef, Pipeline, PipelineExecution, PipelineExecutionSpec, PipelineOrigin,
    PipelineSpec, TriggerKind,
};
use crate::pipeline::context::{EngineCore, PIPELINE_LABEL};
use crate::pipeline::error::TriggerError;
use crate::store::{Api, StoreError};

/// What a trigger asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriggerRequest {
    /// Param values (checked against the pipeline's declarations, defaults filled in).
    pub params: BTreeMap<String, serde_json::Value>,
    /// Event name (`push`, `pull_request`, `tag`, `manual`); `manual` when empty.
    pub event: String,
    /// Branch built.
    pub branch: String,
    /// Commit built.
    pub commit: String,
    /// What started it.
    pub kind: TriggerKind,
    /// Labels added to the execution.
    pub labels: BTreeMap<String, String>,
    /// Run this spec, read from a repository, instead of the stored
    /// pipeline's (pipelines as code).
    pub from_repo: Option<FromRepo>,
    /// The execution is untrusted: no secrets, only bizes without grants or
    /// allowed for untrusted events (see `PipelineExecutionSpec::untrusted`).
    pub untrusted: bool,
    /// The image push that started it (`TriggerKind::ImagePush`).
    pub image: Option<crate::model::ImagePush>,
}

/// A pipeline spec read from a repository file, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct FromRepo {
    /// The spec, parsed and validated.
    pub spec: PipelineSpec,
    /// The file, its commit and digest.
    pub origin: PipelineOrigin,
}

impl TriggerRequest {
    /// A manual trigger with no params.
    pub fn manual() -> Self {
        Self::default()
    }

    /// Sets a param.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.params.insert(name.into(), value.into());
        self
    }

    /// Sets the event.
    pub fn event(mut self, event: impl Into<String>) -> Self {
        self.event = event.into();
        self
    }

    /// Sets the branch.
    pub fn branch(mut self, branch: impl Into<String>) -> Self {
        self.branch = branch.into();
        self
    }

    /// Sets the commit.
    pub fn commit(mut self, commit: impl Into<String>) -> Self {
        self.commit = commit.into();
        self
    }
}

/// Creates the next execution of `pipeline`: allocates its run number (CAS on the
/// pipeline's status) and creates `<pipeline>-<run>` in phase `Queued`.
pub(crate) async fn trigger(
    core: &EngineCore,
    pipeline: &str,
    req: TriggerRequest,
) -> Result<PipelineExecution, TriggerError> {
    let stored = Api::<Pipeline>::new(core.store.clone())
        .get(&core.name, pipeline)
        .await?;
    // A pipeline read from a repository need not be stored; when one of
    // its name is, its run numbers go on.
    let (spec, floor, owner) = match (&req.from_repo, stored) {
        (Some(from), stored) => (
            from.spec.clone(),
            stored.as_ref().map_or(1, |p| p.status.next_run),
            None,
        ),
        (None, Some(p)) => (p.spec, p.status.next_run, Some(p.metadata.uid)),
        (None, None) => {
            return Err(TriggerError::NoPipeline {
                engine: core.name.clone(),
                pipeline: pipeline.to_owned(),
            });
        }
    };
    let params = spec
        .resolve_params(&req.params)
        .map_err(|problems| TriggerError::Params {
            pipeline: pipeline.to_owned(),
            problems,
        })?;
    // Run numbers come from an in-process counter per pipeline, started from the
    // pipeline's `status.next_run` (which the pipeline reconciler keeps up); the
    // execution's name `<pipeline>-<run>` is the reservation: a number already
    // taken (by another process, or before a restart) is skipped.
    let execs = Api::<PipelineExecution>::new(core.store.clone());
    loop {
        let run = core.next_run(pipeline, floor);
        let mut exec = new_execution(
            core,
            (&spec, owner.as_deref()),
            pipeline,
            run,
            &req,
            params.clone(),
        );
        // A called pipeline runs as part of its caller, which holds the
        // group (the same group would leave each waiting for the other).
        if let Some(c) = spec
            .concurrency
            .as_ref()
            .filter(|_| req.kind != TriggerKind::Pipeline)
        {
            let group = group_of(&exec, &c.group)?;
            // Groups are the engine's: an untrusted run (a fork's pull
            // request) must not cancel or hold up a trusted one.
            exec.spec.concurrency = Some(if req.untrusted {
                format!("untrusted/{group}")
            } else {
                group
            });
        }
        match execs.create(&exec).await {
            Ok(created) => return Ok(created),
            Err(StoreError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The concurrency group of an execution: its pipeline's `concurrency.group`
/// with the run's params, branch, event and commit.
fn group_of(exec: &PipelineExecution, group: &str) -> Result<String, TriggerError> {
    use crate::model::expr::{MapContext, Value};
    let spec = &exec.spec;
    let ctx = MapContext {
        params: spec
            .params
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Value::from_json(v)?)))
            .collect(),
        event: Some(spec.event.clone()).filter(|s| !s.is_empty()),
        branch: Some(spec.branch.clone()),
        commit: Some(spec.commit.clone()),
        pipeline: Some(spec.pipeline.clone()),
        image: spec.image.clone(),
        ..MapContext::default()
    };
    crate::model::expr::interpolate(group, &ctx).map_err(|e| TriggerError::Group {
        pipeline: spec.pipeline.clone(),
        group: group.to_owned(),
        message: e.to_string(),
    })
}

fn new_execution(
    core: &EngineCore,
    (spec, owner): (&PipelineSpec, Option<&str>),
    pipeline: &str,
    run: u64,
    req: &TriggerRequest,
    params: BTreeMap<String, serde_json::Value>,
) -> PipelineExecution {
    let mut meta = ObjectMeta::new(&core.name, format!("{pipeline}-{run}"));
    meta.labels = req.labels.clone();
    meta.labels
        .insert(PIPELINE_LABEL.into(), pipeline.to_owned());
    if let Some(uid) = owner {
        meta.owners.push(OwnerRef {
            kind: "Pipeline".into(),
            name: pipeline.to_owned(),
            uid: uid.to_owned(),
        });
    }
    PipelineExecution::new(
        meta,
        PipelineExecutionSpec {
            pipeline: pipeline.to_owned(),
            pipeline_spec: spec.clone(),
            run,
            trigger: req.kind,
            params,
            event: if req.event.is_empty() {
                "manual".into()
            } else {
                req.event.clone()
            },
            branch: if req.branch.is_empty() {
                spec.source
                    .as_ref()
                    .and_then(|s| s.branch.clone())
                    .unwrap_or_default()
            } else {
                req.branch.clone()
            },
            commit: req.commit.clone(),
            abort: false,
            concurrency: None,
            superseded_by: None,
            approvals: BTreeMap::new(),
            origin: req.from_repo.as_ref().map(|f| f.origin.clone()),
            untrusted: req.untrusted,
            image: req.image.clone(),
        },
    )
}
