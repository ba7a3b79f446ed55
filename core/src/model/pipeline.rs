//! The pipeline spec: what a user writes in a pipeline file and what a
//! `PipelineExecution` snapshots.
//!
//! The serde form here is the canonical one (what the store keeps and what
//! [`to_yaml`](crate::model::to_yaml) writes). The YAML front end in
//! [`parse_pipeline`](crate::model::parse_pipeline) additionally accepts the
//! shorthands documented on each type (e.g. `retries: 3`, `branch: [main]`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The desired state of a pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// What the pipeline does, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Parameters a trigger may set; each has a type and optionally a default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<ParamSpec>,
    /// Names of the engine's secrets this pipeline may reference as `secrets.<name>`.
    /// Declaring them up front lets validation catch typos and lets the engine
    /// refuse a pipeline that would read a secret it was not granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// The source repository checked out into the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// What starts an execution. An empty list means manual only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// Environment variables given to every step (a step's own `env` wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Deadline for the whole execution, `finally` included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Cancel the running siblings of a failed step instead of letting them finish.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fail_fast: bool,
    /// At most one running execution per group (GitHub's `concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Stages run in order; the steps of a stage run in parallel.
    pub stages: Vec<Stage>,
    /// Steps run after the stages whatever their outcome (also on abort).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<Step>,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_false(b: &bool) -> bool {
    !*b
}

impl PipelineSpec {
    /// Every step, stage steps first (in order) then `finally` steps.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.stages
            .iter()
            .flat_map(|s| s.steps.iter())
            .chain(self.finally.iter())
    }

    /// Every distinct `uses` of the pipeline, in first-use order.
    pub fn uses(&self) -> Vec<&Uses> {
        let mut out: Vec<&Uses> = Vec::new();
        for uses in self.all_steps().filter_map(|s| s.uses.as_ref()) {
            if !out.contains(&uses) {
                out.push(uses);
            }
        }
        out
    }
}

/// A concurrency group: the engine runs at most one execution of a group at
/// a time; a newer one waits for the running one, or, with
/// `cancel_in_progress`, cancels the older ones of its group (they end
/// `Cancelled`, naming it, after their `finally`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// The group's name, worked out when the execution is created: may read
    /// `${{ pipeline }}`, `params`, `branch`, `event` and `commit`.
    pub group: String,
    /// Whether a newer execution of the group cancels the older ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_in_progress: bool,
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// Name, referenced as `params.<name>`.
    pub name: String,
    /// Value type; defaults to `string`.
    #[serde(rename = "type", default)]
    pub kind: ParamType,
    /// Value used when the trigger gives none; a param without default is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// For people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The type of a parameter value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// A string.
    #[default]
    String,
    /// A number (integer or float).
    Number,
    /// `true` or `false`.
    Bool,
    /// A list of strings.
    Array,
}

impl ParamType {
    /// All types, for hints.
    pub const ALL: [&'static str; 4] = ["string", "number", "bool", "array"];

    /// The YAML/JSON name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Bool => "bool",
            Self::Array => "array",
        }
    }

    /// Whether `value` has this type (arrays must hold strings only).
    pub fn accepts(self, value: &serde_json::Value) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Number => value.is_number(),
            Self::Bool => value.is_boolean(),
            Self::Array => value
                .as_array()
                .is_some_and(|a| a.iter().all(serde_json::Value::is_string)),
        }
    }
}

/// The repository an execution starts from: the host checks it out into the
/// execution's workspace (its root) before the first step, at the execution's
/// commit, or at the head of its branch (resolved to a commit and recorded in
/// the execution's status first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Repository URL (`https://`, `http://`, `git://` or `file://`), with no
    /// credential in it.
    pub repository: String,
    /// Branch checked out when the trigger names none (default: the
    /// repository's default branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Name of a declared secret holding the credential for an `http(s)`
    /// repository: its `value` is a token (sent as the password of user
    /// `x-access-token`), or it has the keys `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Commits of history checked out (default 1; 0 for the whole history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
}

/// Checks a `source.repository`: a URL of a scheme git fetches from, with no
/// credential in it (credentials come from the `credential` secret).
pub fn check_repository_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "`{url}` is not a URL: give `https://host/owner/repo.git` (or `http://`, `git://`, `file://`)"
        ));
    };
    if !matches!(scheme, "https" | "http" | "git" | "file") {
        return Err(format!(
            "has scheme `{scheme}`; the host fetches over `https`, `http`, `git` or `file`"
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "holds a credential in its URL; put it in a secret and name it in `source.credential`"
                .to_owned(),
        );
    }
    if scheme != "file" && authority.is_empty() {
        return Err(format!("`{url}` names no host"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character".to_owned());
    }
    Ok(())
}

/// Checks a branch name the way `git check-ref-format --branch` would for
/// the names a webhook or a person gives: not empty, no leading `-`, no
/// whitespace, control characters, `..`, any of `~^:?*[\`, `@{`, no `.lock` or `/`
/// at the end.
pub fn check_branch_name(branch: &str) -> Result<(), String> {
    let bad = branch.is_empty()
        || branch.starts_with('-')
        || branch.starts_with('/')
        || branch.ends_with('/')
        || branch.ends_with('.')
        || branch.ends_with(".lock")
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch == "@"
        || branch
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if bad {
        Err(format!("`{branch}` is not a valid branch name"))
    } else {
        Ok(())
    }
}

/// What starts an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// Started by a person or an API call.
    Manual,
    /// Started on a schedule.
    Cron {
        /// Five-field cron expression (`min hour day month weekday`) or `@daily`-style macro.
        schedule: String,
        /// Branch to build; the source's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        branch: Option<String>,
    },
    /// Started by a repository webhook.
    Webhook {
        /// Events that start a run (`push`, `pull_request`, `tag`); empty means all.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        events: Vec<String>,
        /// Branches that start a run (for a `tag` event, the tag name).
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        branch: Filter,
        /// Name of a declared secret (one of the pipeline's `secrets`) holding
        /// the webhook secret: the HMAC key of GitHub's `X-Hub-Signature-256`,
        /// or the token GitLab sends as `X-Gitlab-Token`. Deliveries to a
        /// pipeline whose webhook triggers name no secret are refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
    /// Started by a push to a container registry: distribution's
    /// notifications or Harbor's `PUSH_ARTIFACT` webhook, delivered to
    /// `POST /registry-hooks/{engine}`. The execution reads the push as
    /// `trigger.image`, `trigger.digest` and `trigger.tag`.
    ImagePush {
        /// The repository (`team/app`, or with the registry's host
        /// `registry.example.com/team/app`); a glob (`team/*`).
        repository: String,
        /// Tags that start a run (globs; a list is shorthand for `include`);
        /// empty: every tag. A push by digest alone (as each platform's
        /// manifest of a multi-platform image is pushed before its index's
        /// tag) starts nothing.
        #[serde(default, skip_serializing_if = "Filter::is_empty")]
        tags: Filter,
        /// Also run for an image this pipeline published itself (an output
        /// of one of its recent executions holds the pushed digest). Off by
        /// default, so a pipeline that publishes what triggers it does not
        /// loop.
        #[serde(default, rename = "self", skip_serializing_if = "std::ops::Not::not")]
        own: bool,
    },
}

impl Trigger {
    /// Whether an image push of `image` (the repository), from the registry
    /// at `host` (empty when unknown), of `tag` (empty for a push by digest,
    /// which never starts a run) starts a run of this trigger.
    pub fn accepts_image(&self, image: &str, host: &str, tag: &str) -> bool {
        let Trigger::ImagePush {
            repository, tags, ..
        } = self
        else {
            return false;
        };
        let pattern = Filter {
            include: vec![repository.clone()],
            exclude: Vec::new(),
        };
        let repo_hit = pattern.matches(image)
            || (!host.is_empty() && pattern.matches(&format!("{host}/{image}")));
        repo_hit && !tag.is_empty() && tags.matches(tag)
    }
}

/// The webhook/repository events the engine knows.
pub const EVENTS: [&str; 5] = ["push", "pull_request", "tag", "manual", "image_push"];

/// A stage: steps that run in parallel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Name, unique in the pipeline.
    pub name: String,
    /// Condition; a stage whose condition is false is `Skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Deadline for the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// The steps, run in parallel.
    pub steps: Vec<Step>,
    /// Whether the pipeline goes on when this stage fails: the stage is
    /// recorded `Failed`, and the stages after it run as if it had succeeded
    /// (GitHub's job-level `continue-on-error`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
}

/// One step: a call of a biz step type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Name, unique in the pipeline (stages and `finally` together), referenced as `steps.<name>`.
    pub name: String,
    /// The biz step type this step calls. A step has exactly one of `uses`,
    /// `approval` and `pipeline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<Uses>,
    /// A gate: the step waits (durably, across restarts) until a person
    /// approves or rejects it through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
    /// A call of another pipeline of the same engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineCall>,
    /// The step's config, checked against the step type's JSON schema. String
    /// values may contain `${{ … }}` interpolations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub with: BTreeMap<String, serde_json::Value>,
    /// Environment variables (may contain interpolations).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Condition; a step whose condition is false is `Skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Deadline for one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Retries after a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retry>,
    /// Cache restored before and saved after the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// Whether an attempt cut off by a restart of the host (a crash, a kill, a
    /// shutdown) may run again. `false` for a step that is not safe to repeat
    /// (it pays, deploys, sends): an interrupted attempt then fails the step with
    /// reason `interrupted`, whatever its retries. Default `true`: the
    /// interrupted attempt runs again, first without counting against `retries`
    /// (the engine's `interrupted_retries`, 1 by default).
    #[serde(
        default = "repeat_on_restart_default",
        skip_serializing_if = "is_repeat_on_restart_default"
    )]
    pub repeat_on_restart: bool,
    /// Whether the stage goes on when this step fails (after its retries): the
    /// step is recorded `Failed` with its reason, its siblings are not
    /// cancelled under `fail_fast`, and its stage and the execution succeed if
    /// nothing else fails (GitHub's step-level `continue-on-error`). An abort
    /// still aborts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
    /// Steps this step waits for (GitHub's `needs`, Tekton's `runAfter`): steps
    /// of its own stage or of earlier stages, by name (a step with a `matrix`
    /// stands for all its cells; one cell may be named as `build (linux, 1)`).
    /// A step that names none waits for every step of the previous stage, so a
    /// stage is the implicit `needs` of the next one; a step that names some
    /// waits for those only and starts as soon as they have ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "needs_schema")]
    pub needs: Vec<String>,
    /// Runs the step once per cell of a matrix (GitHub's `strategy.matrix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Matrix>,
}

/// An approval gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// What the approver is asked (may contain interpolations).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Who may decide: API token names, `group:<name>` for every token of a
    /// group, or `*` for any caller allowed to write to the engine.
    pub approvers: Vec<String>,
    /// How long it waits; past it the step fails. Without it, it waits until
    /// decided or until the pipeline's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
}

/// A call of another pipeline: the step triggers it and (by default) waits
/// for it, its outputs becoming the step's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineCall {
    /// The pipeline called (of the same engine).
    pub name: String,
    /// Its params (string values may contain interpolations).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Whether the step waits for the called execution to finish (default
    /// `true`); without waiting it succeeds once the execution is created.
    #[serde(default = "wait_default", skip_serializing_if = "is_wait_default")]
    pub wait: bool,
}

fn wait_default() -> bool {
    true
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's signature")]
fn is_wait_default(wait: &bool) -> bool {
    *wait
}

/// How deep pipelines may call pipelines: a call past it fails its step.
pub const MAX_CALL_DEPTH: u32 = 8;

/// The most cells one matrix may expand to (GitHub's cap too); more is almost
/// always a mistake that would queue hundreds of step runs.
pub const MAX_MATRIX_CELLS: usize = 256;

/// A matrix: every combination of the axes' values is a cell, a run of the
/// step named `<step> (<values>)` that reads its values as `${{ matrix.<axis> }}`.
///
/// In YAML it is one mapping: the axes (`os: [linux, mac]`) beside the
/// reserved keys `include`, `exclude`, `max_parallel` and `fail_fast`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Axis name → its values (strings, numbers or booleans).
    pub axes: BTreeMap<String, Vec<serde_json::Value>>,
    /// Combinations added: an entry whose axis values match existing cells
    /// adds its other keys to them; one that matches none is a cell of its own.
    pub include: Vec<BTreeMap<String, serde_json::Value>>,
    /// Combinations removed: every cell matching all of an entry's keys.
    pub exclude: Vec<BTreeMap<String, serde_json::Value>>,
    /// At most this many cells run at once (all when absent).
    pub max_parallel: Option<u32>,
    /// Whether a failed cell cancels the matrix's other cells (default `true`,
    /// as in GitHub).
    pub fail_fast: bool,
}

/// The keys of a matrix mapping that are not axes.
pub const MATRIX_KEYS: [&str; 4] = ["include", "exclude", "max_parallel", "fail_fast"];

/// One cell of a matrix: its values by key, and its name suffix.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixCell {
    /// Axis (and included) key → value.
    pub values: BTreeMap<String, serde_json::Value>,
}

fn matrix_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Matrix {
    /// The cells, in order: the product of the axes (axes sorted by name, the
    /// first varying slowest), less the excluded ones, with `include` applied.
    pub fn cells(&self) -> Vec<MatrixCell> {
        let mut cells: Vec<BTreeMap<String, serde_json::Value>> = vec![BTreeMap::new()];
        if self.axes.is_empty() {
            cells.clear();
        }
        for (axis, values) in &self.axes {
            let mut next = Vec::with_capacity(cells.len() * values.len());
            for cell in &cells {
                for v in values {
                    let mut c = cell.clone();
                    c.insert(axis.clone(), v.clone());
                    next.push(c);
                }
                // Guard the product before it grows past any sane size.
                if next.len() > MAX_MATRIX_CELLS * 4 {
                    break;
                }
            }
            cells = next;
        }
        cells.retain(|cell| {
            !self
                .exclude
                .iter()
                .any(|ex| !ex.is_empty() && ex.iter().all(|(k, v)| cell.get(k) == Some(v)))
        });
        for entry in &self.include {
            let mut added = false;
            for cell in &mut cells {
                let fits = entry
                    .iter()
                    .filter(|(k, _)| self.axes.contains_key(*k))
                    .all(|(k, v)| cell.get(k) == Some(v));
                if fits {
                    for (k, v) in entry {
                        if !self.axes.contains_key(k) {
                            cell.insert(k.clone(), v.clone());
                        }
                    }
                    added = true;
                }
            }
            if !added {
                cells.push(entry.clone());
            }
        }
        cells
            .into_iter()
            .map(|values| MatrixCell { values })
            .collect()
    }

    /// The number of cells before `exclude`/`include`, saturating: for the cap
    /// check without building them.
    pub fn product(&self) -> usize {
        self.axes
            .values()
            .fold(1usize, |n, v| n.saturating_mul(v.len()))
    }
}

impl MatrixCell {
    /// The cell's step name: `<step> (v1, v2, …)`, the axes' values in axis
    /// order, then included keys' values in key order.
    pub fn name(&self, step: &str, matrix: &Matrix) -> String {
        let mut parts: Vec<String> = matrix
            .axes
            .keys()
            .filter_map(|k| self.values.get(k).map(matrix_text))
            .collect();
        parts.extend(
            self.values
                .iter()
                .filter(|(k, _)| !matrix.axes.contains_key(*k))
                .map(|(_, v)| matrix_text(v)),
        );
        format!("{step} ({})", parts.join(", "))
    }
}

impl Serialize for Matrix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        for (axis, values) in &self.axes {
            m.serialize_entry(axis, values)?;
        }
        if !self.include.is_empty() {
            m.serialize_entry("include", &self.include)?;
        }
        if !self.exclude.is_empty() {
            m.serialize_entry("exclude", &self.exclude)?;
        }
        if let Some(n) = self.max_parallel {
            m.serialize_entry("max_parallel", &n)?;
        }
        if !self.fail_fast {
            m.serialize_entry("fail_fast", &false)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Matrix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
        let take = |raw: &mut BTreeMap<String, serde_json::Value>, key: &str| raw.remove(key);
        let include = match take(&mut raw, "include") {
            Some(v) => serde_json::from_value(v).map_err(D::Error::custom)?,
            None => Vec::new(),
        };
        let exclude = match take(&mut raw, "exclude") {
            Some(v) => serde_json::from_value(v).map_err(D::Error::custom)?,
            None => Vec::new(),
        };
        let max_parallel = match take(&mut raw, "max_parallel") {
            Some(v) => Some(serde_json::from_value(v).map_err(D::Error::custom)?),
            None => None,
        };
        let fail_fast = match take(&mut raw, "fail_fast") {
            Some(v) => serde_json::from_value(v).map_err(D::Error::custom)?,
            None => true,
        };
        let axes = raw
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::Array(values) => Ok((k, values)),
                _ => Err(D::Error::custom(format!(
                    "matrix axis `{k}` must be a list of values"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            axes,
            include,
            exclude,
            max_parallel,
            fail_fast,
        })
    }
}

impl JsonSchema for Matrix {
    fn schema_name() -> Cow<'static, str> {
        "Matrix".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Runs the step once per combination of the axes' values; each cell reads its values as `${{ matrix.<axis> }}`.",
            "type": "object",
            "properties": {
                "include": {
                    "description": "Combinations added (or extra keys for the cells they match).",
                    "type": "array",
                    "items": { "type": "object", "additionalProperties": { "type": ["string", "number", "boolean"] } }
                },
                "exclude": {
                    "description": "Combinations removed: every cell matching all of an entry's keys.",
                    "type": "array",
                    "items": { "type": "object", "additionalProperties": { "type": ["string", "number", "boolean"] } }
                },
                "max_parallel": { "description": "At most this many cells run at once.", "type": "integer", "minimum": 1 },
                "fail_fast": { "description": "Whether a failed cell cancels the other cells (default true).", "type": "boolean" }
            },
            "additionalProperties": {
                "description": "An axis: its values.",
                "type": "array",
                "items": { "type": ["string", "number", "boolean"] },
                "minItems": 1
            }
        })
    }
}

/// One run of a step: the step itself, or one cell of its matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInstance<'a> {
    /// The step as written.
    pub step: &'a Step,
    /// The instance's name: the step's, or its cell's (`build (linux, 1)`).
    pub name: String,
    /// The cell's values, for a matrix step.
    pub matrix: Option<BTreeMap<String, serde_json::Value>>,
}

impl Step {
    /// The step's runs: one per matrix cell, or the step itself.
    pub fn instances(&self) -> Vec<StepInstance<'_>> {
        match &self.matrix {
            Some(m) => m
                .cells()
                .into_iter()
                .map(|cell| StepInstance {
                    step: self,
                    name: cell.name(&self.name, m),
                    matrix: Some(cell.values),
                })
                .collect(),
            None => vec![StepInstance {
                step: self,
                name: self.name.clone(),
                matrix: None,
            }],
        }
    }
}

fn needs_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Steps this step waits for (a name, or a list of names); without it, every step of the previous stage.",
        "oneOf": [
            { "type": "string" },
            { "type": "array", "items": { "type": "string" } }
        ]
    })
}

fn repeat_on_restart_default() -> bool {
    true
}

#[expect(clippy::trivially_copy_pass_by_ref, reason = "serde's signature")]
fn is_repeat_on_restart_default(repeat: &bool) -> bool {
    *repeat
}

/// A condition on a stage or step. All parts must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Branch globs.
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub branch: Filter,
    /// Event globs.
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub event: Filter,
    /// An expression that must evaluate to `true`.
    #[serde(rename = "if", default, skip_serializing_if = "Option::is_none")]
    pub if_expr: Option<String>,
}

/// Include/exclude glob lists. In YAML a single glob or a plain list is
/// shorthand for `include`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// A value matches when it matches one of these (or the list is empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// A value never matches when it matches one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl Filter {
    /// Whether the filter has no patterns (matches everything).
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether `value` passes the filter. Invalid globs (which validation
    /// reports) never match, so a broken filter fails closed.
    pub fn matches(&self, value: &str) -> bool {
        let hit =
            |p: &String| globset::Glob::new(p).is_ok_and(|g| g.compile_matcher().is_match(value));
        (self.include.is_empty() || self.include.iter().any(hit)) && !self.exclude.iter().any(hit)
    }
}

impl JsonSchema for Filter {
    fn schema_name() -> Cow<'static, str> {
        "Filter".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Glob filter: a glob or a list of globs (shorthand for `include`), or `{include, exclude}`.",
            "oneOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "include": { "type": "array", "items": { "type": "string" } },
                        "exclude": { "type": "array", "items": { "type": "string" } }
                    }
                }
            ]
        })
    }
}

/// Retry policy. In YAML `retries: 3` is shorthand for `{count: 3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Retries after the first attempt.
    pub count: u32,
    /// Delay before the first retry, doubled for each later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<DurationSpec>,
}

impl JsonSchema for Retry {
    fn schema_name() -> Cow<'static, str> {
        "Retry".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Retries after a failed attempt: a count, or `{count, backoff}`.",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["count"],
                    "properties": {
                        "count": { "type": "integer", "minimum": 0 },
                        "backoff": { "type": "string", "description": "Delay before the first retry, doubled for each later one." }
                    }
                }
            ]
        })
    }
}

/// The most retries a step may ask for; more is almost always a mistake that
/// would hold a worker for hours.
pub const MAX_RETRIES: u32 = 20;

/// A step cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Cache key (may contain interpolations).
    pub key: String,
    /// Workspace paths saved and restored.
    pub paths: Vec<String>,
}

/// A duration written the humantime way (`90s`, `10m`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DurationSpec(pub Duration);

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for DurationSpec {
    type Err = humantime::DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Self)
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DurationSpec {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration such as `90s`, `10m` or `1h 30m`.",
            "type": "string"
        })
    }
}

/// What a step calls: `biz`, `biz@req` or `biz/step@req`, where `req` is a
/// semver requirement. A bare biz is allowed when it has a single step type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uses {
    /// Biz name.
    pub biz: String,
    /// Step type inside the biz; `None` when the biz has exactly one.
    pub step: Option<String>,
    /// Version requirement; `None` means any version.
    pub req: Option<semver::VersionReq>,
}

/// Why a `uses` string is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsesError {
    /// The biz or step name is empty or has characters outside `[A-Za-z0-9_.-]`.
    #[error("`{0}` is not a valid biz or step name (use letters, digits, `-`, `_` and `.`)")]
    BadName(String),
    /// The requirement after `@` does not parse.
    #[error("`{req}` is not a semver requirement: {reason}")]
    BadReq {
        /// The text after `@`.
        req: String,
        /// The semver parser's message.
        reason: String,
    },
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl FromStr for Uses {
    type Err = UsesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (path, req) = match s.split_once('@') {
            Some((path, req)) => {
                let parsed =
                    semver::VersionReq::parse(req.trim()).map_err(|e| UsesError::BadReq {
                        req: req.to_owned(),
                        reason: e.to_string(),
                    })?;
                (path, Some(parsed))
            }
            None => (s, None),
        };
        let (biz, step) = match path.split_once('/') {
            Some((biz, step)) => (biz, Some(step)),
            None => (path, None),
        };
        if !valid_name(biz) {
            return Err(UsesError::BadName(biz.to_owned()));
        }
        if let Some(step) = step
            && !valid_name(step)
        {
            return Err(UsesError::BadName(step.to_owned()));
        }
        Ok(Self {
            biz: biz.to_owned(),
            step: step.map(str::to_owned),
            req,
        })
    }
}

impl fmt::Display for Uses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.biz)?;
        if let Some(step) = &self.step {
            write!(f, "/{step}")?;
        }
        if let Some(req) = &self.req {
            write!(f, "@{req}")?;
        }
        Ok(())
    }
}

impl Serialize for Uses {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Uses {
    fn schema_name() -> Cow<'static, str> {
        "Uses".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`biz`, `biz@req` or `biz/step@req` (req: a semver requirement).",
            "type": "string",
            "pattern": "^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?(@.+)?$"
        })
    }
}

/// Why a `when` could not be decided.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WhenError {
    /// `if` does not parse (validation reports this earlier for files).
    #[error("`when.if` does not parse: {0}")]
    Parse(#[from] crate::model::expr::ExprError),
    /// `if` failed to evaluate (a missing output, a type mismatch).
    #[error("`when.if` failed: {0}")]
    Eval(#[from] crate::model::expr::EvalError),
}

impl When {
    /// Whether the condition holds: the branch and event filters are matched
    /// against the context's `branch` and `event` (absent counts as the empty
    /// string, so a run without a branch passes only an empty or `*`-like
    /// filter), then `if` must evaluate to `true`. The filters are checked first
    /// so `if` is not evaluated for runs the filters already rule out.
    pub fn evaluate(&self, ctx: &dyn crate::model::expr::EvalContext) -> Result<bool, WhenError> {
        use crate::model::expr::{self, Reference, Value};
        let text = |r: &Reference| match ctx.lookup(r) {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        if !self.branch.matches(&text(&Reference::Branch))
            || !self.event.matches(&text(&Reference::Event))
        {
            return Ok(false);
        }
        match &self.if_expr {
            Some(src) => Ok(expr::evaluate_condition(&expr::parse(src)?, ctx)?),
            None => Ok(true),
        }
    }
}

/// A problem with the params a trigger supplies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// The pipeline declares no such param.
    #[error("unknown param `{0}`")]
    Unknown(String),
    /// A param without default was not given.
    #[error("param `{0}` is required (it has no default)")]
    Missing(String),
    /// A value of the wrong type.
    #[error("param `{name}` must be a {expected}")]
    Type {
        /// Param name.
        name: String,
        /// Declared type.
        expected: &'static str,
    },
}

impl PipelineSpec {
    /// The params of a run: `given` checked against the declarations, defaults
    /// filled in. Reports every problem, not just the first.
    pub fn resolve_params(
        &self,
        given: &BTreeMap<String, serde_json::Value>,
    ) -> Result<BTreeMap<String, serde_json::Value>, Vec<ParamError>> {
        let mut errors: Vec<ParamError> = given
            .keys()
            .filter(|k| !self.params.iter().any(|p| &p.name == *k))
            .map(|k| ParamError::Unknown(k.clone()))
            .collect();
        let mut out = BTreeMap::new();
        for p in &self.params {
            match given.get(&p.name).or(p.default.as_ref()) {
                Some(v) if p.kind.accepts(v) => {
                    out.insert(p.name.clone(), v.clone());
                }
                Some(_) => errors.push(ParamError::Type {
                    name: p.name.clone(),
                    expected: p.kind.as_str(),
                }),
                None => errors.push(ParamError::Missing(p.name.clone())),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

impl Step {
    /// The secrets the step's `with` and `env` reference. The engine gives a
    /// step these secrets and no others, and masks their values in its logs.
    /// Strings that do not parse contribute nothing (validation reports them).
    pub fn referenced_secrets(&self) -> std::collections::BTreeSet<String> {
        fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
            match v {
                serde_json::Value::String(s) => out.push(s),
                serde_json::Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
                serde_json::Value::Object(m) => m.values().for_each(|i| strings(i, out)),
                _ => {}
            }
        }
        let mut texts: Vec<&str> = self.env.values().map(String::as_str).collect();
        self.with.values().for_each(|v| strings(v, &mut texts));
        let mut out = std::collections::BTreeSet::new();
        for text in texts {
            if let Ok(t) = crate::model::expr::parse_template(text) {
                for (r, _) in t.references() {
                    if let crate::model::expr::Reference::Secret(name) = r {
                        out.insert(name.clone());
                    }
                }
            }
        }
        out
    }
}

/// Parses a cron schedule the way validation does (five fields, no seconds,
/// `@daily`-style macros), so the pipeline reconciler schedules exactly what
/// was accepted.
pub fn parse_cron(schedule: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(schedule)
}
