//! The pipeline model: resource types, the pipeline file format, validation
//! with precise diagnostics, and the expression language.
//!
//! # The pipeline file
//!
//! A pipeline file is one YAML document in either of two forms:
//!
//! * **bare** — `name:` (plus optional `engine:`, `labels:`, `annotations:`) next
//!   to the spec fields, the form people write by hand;
//! * **resource** — `apiVersion: arkline.dev/v1alpha1`, `kind: Pipeline`,
//!   `metadata: {name, engine, labels, annotations}`, `spec: {…}`, the form
//!   the store and the admin API (`GET …/pipelines/{name}`) use. `status` is never read from a file.
//!
//! ```yaml
//! name: build-and-deploy
//! description: Build the image, test it, deploy it from main.
//! params:                       # type: string | number | bool | array; default is optional
//!   - { name: target, type: string, default: staging }
//!   - { name: deploy, type: bool, default: false }
//! secrets: [registry-token, git-key]   # secrets the pipeline may read as secrets.<name>
//! source: { repository: "https://git.example.com/app.git", branch: main, credential: git-key }
//! triggers:
//!   - type: manual
//!   - type: cron
//!     schedule: "0 3 * * 1-5"            # five fields or @daily-style macros
//!   - type: webhook
//!     events: [push, pull_request]       # push, pull_request, tag, manual
//!     branch: { include: [main, "release/*"], exclude: ["release/old-*"] }
//! env: { RUST_LOG: info }               # given to every step
//! timeout: 1h                            # humantime: 90s, 10m, 1h 30m
//! fail_fast: true                        # cancel running siblings of a failed step
//! stages:                                # run in order
//!   - name: build
//!     steps:                             # run in parallel
//!       - name: compile
//!         uses: rust/cargo@^1.2          # biz | biz@req | biz/step@req (semver req)
//!         with: { command: build, release: true }   # checked against the step's schema
//!         timeout: 20m
//!         retries: { count: 2, backoff: 30s }        # or `retries: 2`
//!         cache: { key: "cargo-${{ branch }}", paths: [target] }
//!   - name: deploy
//!     when:                              # all parts must hold, else the stage is Skipped
//!       branch: [main]                   # a list is shorthand for include
//!       event: { exclude: [pull_request] }
//!       if: params.deploy && steps.compile.state == 'Succeeded'
//!     steps:
//!       - name: push
//!         uses: image/publish@0.1
//!         with:
//!           base: registry.example.com/base/runtime:1.4
//!           layers: [{ paths: [app], working_dir: target/release, destination: /usr/local/bin }]
//!           target: registry.example.com/team/app
//!           tags: ["${{ steps.compile.outputs.version }}"]
//!           credential: { username: robot, password: "${{ secrets.registry-token }}" }
//!         env: { TARGET: "${{ params.target }}" }
//! finally:                               # run whatever happened, also on abort
//!   - name: notify
//!     uses: chat@1
//!     with: { text: "build ${{ steps.compile.state }}" }
//! ```
//!
//! Step names are unique across the whole pipeline (`steps.<name>` names one
//! step). A step may read the results of steps in *earlier* stages; `finally`
//! steps may read any stage step. Conditions may not read secrets.
//! Expressions are described in [`expr`].
//!
//! # Diagnostics
//!
//! [`parse_pipeline`] reports every problem at once; each [`Diagnostic`] has the
//! file, line, column, offending text and a hint, renders like rustc
//! ([`Diagnostic::render`]) and serializes to JSON.
//!
//! ```
//! let src = "name: p\nstages:\n  - name: s\n    steps:\n      - name: a\n        uses: shell\n        tiemout: 10m\n";
//! let err = arkline::model::parse_pipeline("p.yaml", src).unwrap_err();
//! assert!(err.render(src).contains("did you mean `timeout`?"));
//! ```

mod byte_size;
pub mod config_schema;
pub mod decode;
pub mod diagnostic;
pub mod expr;
pub(crate) mod hash_files;
mod limits;
pub mod meta;
pub mod pipeline;
mod position;
pub mod resources;
mod typecheck;
pub mod validate;
mod work;
mod yaml;

pub use byte_size::{ByteSize, ByteSizeError};
pub use config_schema::validate_with_schemas;
pub use decode::SourceMap;
pub use diagnostic::{Diagnostic, Diagnostics, Severity, Span};
pub use expr::{EvalContext, Expr, Value, interpolate};
pub use limits::Limits;
pub use meta::{
    API_VERSION, DynamicObject, MAX_NAME_LEN, NameError, ObjectMeta, OwnerRef, Resource,
    check_object_name,
};
pub use pipeline::{
    ApprovalSpec, CacheSpec, Concurrency, DurationSpec, Filter, MAX_CALL_DEPTH, MAX_MATRIX_CELLS,
    Matrix, MatrixCell, ParamError, ParamSpec, ParamType, PipelineCall, PipelineSpec, Retry,
    SourceSpec, Stage, Step, StepInstance, Trigger, Uses, When, WhenError, check_branch_name,
    check_repository_url,
};
pub use resources::{
    Approval, BizDeployment, BizDeploymentSpec, BizDeploymentStatus, BizState, CacheSettings,
    Ciphertext, Condition, ConditionStatus, ConditionType, DEFAULT_INTERRUPTED_RETRIES, DesiredBiz,
    EngineRecord, EngineRecordSpec, EngineRecordStatus, ExecutionPhase, ForgeKind, ForgeSettings,
    ImagePush, MAX_REASON_BYTES, Pipeline, PipelineExecution, PipelineExecutionSpec,
    PipelineExecutionStatus, PipelineOrigin, PipelineSetting, PipelineSettingSpec,
    PipelineSettingStatus, PipelineStatus, ProvenanceSettings, RegistryNotifications,
    RepoPipelines, Retention, Secret, SecretSpec, SecretStatus, SourceStatus, StageStatus,
    StepLimits, StepPhase, StepStatus, TriggerKind, default_repo_path,
};
pub use validate::validate;

/// A pipeline parsed from a file, with where each value came from (for checks
/// made later, such as [`validate_with_schemas`] once the bizes are known).
#[derive(Debug, Clone)]
pub struct ParsedPipeline {
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Positions of its values.
    pub source_map: SourceMap,
    /// Warnings (errors make parsing fail).
    pub warnings: Vec<Diagnostic>,
}

/// Parses and validates a pipeline file, reporting every error at once, within
/// the default [`Limits`].
pub fn parse_pipeline(file_name: &str, source: &str) -> Result<Pipeline, Diagnostics> {
    parse_pipeline_file(file_name, source).map(|p| p.pipeline)
}

/// Like [`parse_pipeline`], with caps other than the default ones.
pub fn parse_pipeline_with(
    file_name: &str,
    source: &str,
    limits: &Limits,
) -> Result<Pipeline, Diagnostics> {
    parse_pipeline_file_with(file_name, source, limits).map(|p| p.pipeline)
}

/// Like [`parse_pipeline`], keeping the source map.
pub fn parse_pipeline_file(file_name: &str, source: &str) -> Result<ParsedPipeline, Diagnostics> {
    parse_pipeline_file_with(file_name, source, &Limits::default())
}

/// Like [`parse_pipeline_file`], with caps other than the default ones.
pub fn parse_pipeline_file_with(
    file_name: &str,
    source: &str,
    limits: &Limits,
) -> Result<ParsedPipeline, Diagnostics> {
    let (pipeline, source_map, mut collector) = decode::decode(file_name, source, limits);
    if let Some(p) = &pipeline {
        validate::check(&p.spec, &source_map, &mut collector);
        validate::check_calls(&p.metadata.name, &p.spec, &source_map, &mut collector);
    }
    let mut diags = Diagnostics(collector.finish(file_name));
    diags.sort();
    match pipeline {
        Some(pipeline) if !diags.has_errors() => Ok(ParsedPipeline {
            pipeline,
            source_map,
            warnings: diags.0,
        }),
        _ => Err(diags),
    }
}

/// Error writing a resource as YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize resource: {0}")]
pub struct SerializeError(#[from] serde_json::Error);

/// Writes a resource (or any serializable value) as block-style YAML that
/// [`parse_pipeline`] reads back to the same value.
pub fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, SerializeError> {
    Ok(yaml::to_yaml_string(&serde_json::to_value(value)?))
}

/// Writes a pipeline in the resource form of the pipeline file: only the
/// metadata a person sets, the spec, and no status.
pub fn to_pipeline_file(pipeline: &Pipeline) -> Result<String, SerializeError> {
    let m = &pipeline.metadata;
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), m.name.clone().into());
    if !m.engine.is_empty() {
        metadata.insert("engine".into(), m.engine.clone().into());
    }
    if !m.labels.is_empty() {
        metadata.insert("labels".into(), serde_json::to_value(&m.labels)?);
    }
    if !m.annotations.is_empty() {
        metadata.insert("annotations".into(), serde_json::to_value(&m.annotations)?);
    }
    let file = serde_json::json!({
        "apiVersion": pipeline.api_version,
        "kind": pipeline.kind,
        "metadata": metadata,
        "spec": serde_json::to_value(&pipeline.spec)?,
    });
    Ok(yaml::to_yaml_string(&file))
}

/// The JSON Schema of the pipeline file format (both forms), as published in
/// `schema/pipeline.schema.json`.
pub fn pipeline_file_schema() -> serde_json::Value {
    use serde_json::json;
    let root = schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<Pipeline>()
        .to_value();
    let mut defs = root.get("$defs").cloned().unwrap_or_else(|| json!({}));
    // Files may write a step's or stage's condition as `if:` (GitHub's form);
    // the decoder folds it into `when.if`.
    for def in ["Step", "Stage"] {
        if let Some(props) = defs[def]
            .get_mut("properties")
            .and_then(|p| p.as_object_mut())
        {
            props.insert(
                "if".into(),
                json!({
                    "type": "string",
                    "description": "Short for `when: { if: … }`: an expression that must evaluate to `true`, or the step (stage) is `Skipped`. Not together with `when.if`."
                }),
            );
        }
    }
    let file_meta_props = json!({
        "name": { "type": "string", "description": "Pipeline name, unique per engine." },
        "engine": { "type": "string", "description": "Engine the pipeline belongs to." },
        "labels": { "type": "object", "additionalProperties": { "type": "string" } },
        "annotations": { "type": "object", "additionalProperties": { "type": "string" } }
    });
    // Files carry only the metadata a person sets; the store owns the rest.
    defs["FileMetadata"] = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["name"],
        "properties": file_meta_props.clone()
    });
    let mut resource = root.clone();
    if let Some(obj) = resource.as_object_mut() {
        obj.remove("$defs");
        obj.remove("$schema");
    }
    if let Some(props) = resource
        .get_mut("properties")
        .and_then(|p| p.as_object_mut())
    {
        props.remove("status");
        props.insert("metadata".into(), json!({ "$ref": "#/$defs/FileMetadata" }));
        props.insert("apiVersion".into(), json!({ "const": API_VERSION }));
        props.insert("kind".into(), json!({ "const": "Pipeline" }));
    }
    let mut bare = defs
        .get("PipelineSpec")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(props) = bare.get_mut("properties").and_then(|p| p.as_object_mut())
        && let Some(extra) = file_meta_props.as_object()
    {
        props.extend(extra.clone());
    }
    if let Some(req) = bare.get_mut("required").and_then(|r| r.as_array_mut()) {
        req.insert(0, json!("name"));
    }
    bare["title"] = json!("bare pipeline");
    resource["title"] = json!("Pipeline resource");
    for unused in [
        "PipelineStatus",
        "Condition",
        "ConditionType",
        "ConditionStatus",
        "ExecutionPhase",
        "ObjectMeta",
        "OwnerRef",
    ] {
        if let Some(d) = defs.as_object_mut() {
            d.remove(unused);
        }
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://arkline.dev/schema/pipeline.schema.json",
        "title": "arkline pipeline file",
        "description": "A pipeline: either bare (`name` + spec fields) or a full `Pipeline` resource.",
        "oneOf": [bare, resource],
        "$defs": defs
    })
}
