//! The resource kinds every controller works on.
//!
//! Each kind is `apiVersion` + `kind` + `metadata` + `spec` + `status` and
//! implements [`Resource`](crate::model::Resource) so the store can keep it untyped.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::meta::{API_VERSION, ObjectMeta, impl_resource};
use crate::model::pipeline::{DurationSpec, Filter, PipelineSpec};

/// Declares a resource struct with the Kubernetes-shaped envelope, so every kind
/// has the same field names and serde attributes.
macro_rules! resource {
    ($(#[$doc:meta])* $name:ident, $spec:ty, $status:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Always [`API_VERSION`].
            #[serde(rename = "apiVersion")]
            pub api_version: String,
            /// Always the kind's name.
            pub kind: String,
            /// Metadata.
            pub metadata: ObjectMeta,
            /// Desired state.
            pub spec: $spec,
            /// Observed state, written by controllers.
            #[serde(default)]
            pub status: $status,
        }

        impl $name {
            /// A new object with the given metadata and spec and an empty status.
            pub fn new(metadata: ObjectMeta, spec: $spec) -> Self {
                Self {
                    api_version: API_VERSION.to_owned(),
                    kind: stringify!($name).to_owned(),
                    metadata,
                    spec,
                    status: <$status>::default(),
                }
            }
        }

        impl_resource!($name, $spec, $status);
    };
}

resource!(
    /// Per-engine settings: quota, default limits, cache and retention.
    PipelineSetting, PipelineSettingSpec, PipelineSettingStatus
);
resource!(
    /// A pipeline definition and its observed state.
    Pipeline, PipelineSpec, PipelineStatus
);
resource!(
    /// One run of a pipeline.
    PipelineExecution, PipelineExecutionSpec, PipelineExecutionStatus
);
resource!(
    /// Secret values of an engine, encrypted at rest.
    Secret, SecretSpec, SecretStatus
);
resource!(
    /// The bizes an engine should have and which version of each is active.
    BizDeployment, BizDeploymentSpec, BizDeploymentStatus
);
resource!(
    /// An engine merged into the container (container-scoped: its
    /// `metadata.engine` is empty and its name is the engine's).
    EngineRecord, EngineRecordSpec, EngineRecordStatus
);

/// Spec of an [`EngineRecord`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineRecordSpec {
    /// For people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Status of an [`EngineRecord`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineRecordStatus {}

/// Settings of one engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettingSpec {
    /// Most executions running at once; `<= 0` means unlimited.
    #[serde(default)]
    pub executor_quota: i64,
    /// Limits applied to a step that sets none.
    #[serde(default)]
    pub default_step_limits: StepLimits,
    /// Step cache settings.
    #[serde(default)]
    pub cache: CacheSettings,
    /// How long finished executions and their logs are kept.
    #[serde(default)]
    pub retention: Retention,
    /// Refuse bizes whose archive is not signed (by one of `trusted_keys`, when
    /// any are given), whether they come in a `.arkc` or through the API.
    #[serde(default)]
    pub require_signed_bizes: bool,
    /// Hex ed25519 public keys (`cargo ark keygen`) the operator trusts: when
    /// any are given, a signed biz must be signed by one of them, whether it
    /// comes in a `.arkc` or through the API. A signature that does not verify
    /// is refused always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// Refuse to run `process` steps whose sandbox (namespaces, per-run
    /// cgroup) cannot be built, even where the host does not require it.
    #[serde(default)]
    pub require_sandbox: bool,
    /// How many times a step attempt cut off by a restart of the host (a crash,
    /// a kill, a shutdown) is run again beyond the step's own `retries`; unset
    /// means [`DEFAULT_INTERRUPTED_RETRIES`], `0` counts an interrupted attempt
    /// against the step's retries. Steps with `repeat_on_restart: false` are
    /// never run again after an interruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_retries: Option<u32>,
    /// This engine's share of the guest threads against the other engines of
    /// the container when both have guests computing (as cgroup v2's
    /// `cpu.weight`: 1–10,000, unset means 100). An engine of weight 200 gets
    /// twice the guest-thread time of an engine of weight 100 while both have
    /// work, and all of it while it alone has work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u32>,
    /// Where the engine reports each execution's state on its commit
    /// (GitHub, GitLab or Gitea commit statuses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<ForgeSettings>,
    /// Pipelines as code: the engine runs the pipeline files of a repository
    /// as they are at the commit a webhook delivery (or `ctl exec start
    /// --ref`) names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipelines_from_repo: Option<RepoPipelines>,
    /// Image pushes from a container registry start the pipelines whose
    /// `image_push` triggers accept them: the registry's notifications (or
    /// Harbor's webhook) are sent to `POST /registry-hooks/<engine>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_notifications: Option<RegistryNotifications>,
    /// Build provenance: the engine signs an in-toto statement (SLSA
    /// provenance v1) for what its steps publish, when their biz is granted
    /// the host call `arkline.provenance` (the `image` biz pushes it as an OCI
    /// referrer of each image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<ProvenanceSettings>,
}

/// How an engine signs build provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvenanceSettings {
    /// The engine secret holding the ed25519 signing key: the 64 hex digits
    /// of its seed, as `cargo ark keygen` writes it (the secret's `value`).
    /// Verifiers check statements with the matching public key.
    pub key_secret: String,
}

/// How an engine takes a registry's push notifications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryNotifications {
    /// The engine secret holding the token the registry sends in its
    /// `Authorization` header (`Bearer <token>`, or the token alone), as
    /// distribution's `notifications.endpoints[].headers` or Harbor's
    /// webhook "auth header" are configured to send.
    pub token_secret: String,
}

/// Where an engine reads pipelines from a repository, and whom it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoPipelines {
    /// The repository's URL (`https://`, `http://`, `git://` or `file://`),
    /// as deliveries name it.
    pub repository: String,
    /// The pipeline files: a directory and a file pattern with `*`
    /// (default `.arkline/*.yaml`).
    #[serde(default = "default_repo_path")]
    pub path: String,
    /// Branches whose deliveries are read (empty: every branch).
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub branches: Filter,
    /// Events whose runs get the pipeline's secrets and every step its
    /// biz's grants (default `push` and `tag`). Other events, and every pull
    /// request from a fork, run untrusted: no secret, and only the bizes
    /// named in `untrusted_bizes` (or bizes granted nothing) may run.
    #[serde(default = "default_trusted_events")]
    pub trusted_events: Vec<String>,
    /// Bizes whose steps may run in an untrusted execution although the
    /// engine grants them capabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untrusted_bizes: Vec<String>,
    /// The engine secret holding the webhook secret of
    /// `POST /hooks/<engine>` (GitHub's HMAC key, GitLab's token).
    pub webhook_secret: String,
    /// The engine secret holding the credential to fetch the repository
    /// (a `value` token, or `username` and `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The default `pipelines_from_repo.path`.
pub fn default_repo_path() -> String {
    ".arkline/*.yaml".to_owned()
}

fn default_trusted_events() -> Vec<String> {
    vec!["push".to_owned(), "tag".to_owned()]
}

/// Where the pipeline of an execution came from when it was read from a
/// repository (pipelines as code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineOrigin {
    /// The repository's URL.
    pub repository: String,
    /// The file's path in the repository.
    pub path: String,
    /// The commit it was read at.
    pub commit: String,
    /// `sha256:<hex>` of the file's content.
    pub digest: String,
}

/// A forge the engine posts commit statuses to: `pending` when an execution
/// starts, then `success`, `failure` or `error`, for executions that have a
/// commit (and, with `stages`, the same for each stage). Posting never
/// blocks or fails an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgeSettings {
    /// Which API.
    pub kind: ForgeKind,
    /// The API's base URL: `https://api.github.com`,
    /// `https://gitlab.example.com/api/v4`, `https://gitea.example.com/api/v1`.
    pub api_url: String,
    /// The engine secret holding the API token.
    pub token_secret: String,
    /// `owner/repo` (GitHub, Gitea) or the project's id or path (GitLab);
    /// without it, worked out from the pipeline's `source.repository` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The base of the links the statuses carry: the execution's API address
    /// (`<target_url>/api/v1/engines/<engine>/executions/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// Also give each stage its own status, under the context
    /// `arkline/<engine>/<pipeline>/<stage>`: `pending` when it starts, then
    /// `success` (also for a skipped stage), `failure`, or `error` (aborted,
    /// cancelled). Off by default: one status per execution.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stages: bool,
}

/// A forge's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForgeKind {
    /// `POST /repos/{owner}/{repo}/statuses/{sha}`, `Authorization: Bearer`.
    Github,
    /// `POST /projects/{id}/statuses/{sha}`, `PRIVATE-TOKEN`.
    Gitlab,
    /// `POST /repos/{owner}/{repo}/statuses/{sha}`, `Authorization: token`.
    Gitea,
}

/// Attempts cut off by a restart that a step gets again, beyond its retries,
/// when the settings say nothing: a host crash is not the step's fault.
pub const DEFAULT_INTERRUPTED_RETRIES: u32 = 1;

/// The most bytes of a step's failure reason kept in a status, marker included:
/// a guest controls that text, and a status is rewritten on every transition.
/// Longer text is cut at a character boundary and ends ` … (N bytes, cut)` (N
/// its full length), as a native plugin's message does; the step's log has the
/// text in full up to the log's cap.
pub const MAX_REASON_BYTES: usize = 64 * 1024;

/// `text` cut to [`MAX_REASON_BYTES`] (marker included) at a character
/// boundary, marked with its full length; unchanged when it fits, so capping
/// twice is capping once.
pub(crate) fn cap_reason(mut text: String) -> String {
    if text.len() <= MAX_REASON_BYTES {
        return text;
    }
    let marker = format!(" … ({} bytes, cut)", text.len());
    // The marker fits inside the cap, so capping again changes nothing.
    let mut end = MAX_REASON_BYTES - marker.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&marker);
    text
}

impl PipelineSettingSpec {
    /// [`PipelineSettingSpec::interrupted_retries`] or its default.
    pub fn interrupted_retries(&self) -> u32 {
        self.interrupted_retries
            .unwrap_or(DEFAULT_INTERRUPTED_RETRIES)
    }

    /// The quota as a count, `None` when unlimited.
    pub fn quota(&self) -> Option<u64> {
        u64::try_from(self.executor_quota).ok().filter(|q| *q > 0)
    }
}

/// Default resource limits of a step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepLimits {
    /// Linear memory cap in bytes; `None` = the container's slot size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Deadline of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Fuel per attempt; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

/// Step cache settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Cache size cap per node; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// How many recent nodes of a pipeline are preferred when placing a run.
    #[serde(default)]
    pub affinity_window: u32,
}

/// Retention of finished executions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Finished executions kept per pipeline; `None` = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executions: Option<u32>,
    /// How long logs are kept; `None` = as long as their execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<DurationSpec>,
}

/// Status of a [`PipelineSetting`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettingStatus {
    /// Executions running now.
    #[serde(default)]
    pub running: u64,
    /// Executions waiting for quota.
    #[serde(default)]
    pub queued: u64,
}

/// Whether a condition holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// It holds.
    True,
    /// It does not hold.
    False,
    /// Not known yet.
    #[default]
    Unknown,
}

/// The conditions controllers report.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum ConditionType {
    /// Every `uses` is satisfied by an installed biz.
    Resolved,
    /// The execution was admitted under the engine's quota.
    Admitted,
    /// The execution is done (whatever the outcome).
    Completed,
    /// The spec was validated.
    Valid,
    /// The execution's state was posted to the forge (`False`: it could not be).
    Reported,
}

/// A Kubernetes-style condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Which condition.
    #[serde(rename = "type")]
    pub kind: ConditionType,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// Machine-readable reason, e.g. `UnsatisfiedUses`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// For people, e.g. naming the `uses` no installed biz satisfies.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When `status` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<DateTime<Utc>>,
}

/// Sets `cond` in `conditions`, replacing one of the same type. The transition time
/// is kept when the status did not change, so it tells when it last flipped.
pub fn set_condition(conditions: &mut Vec<Condition>, mut cond: Condition) {
    match conditions.iter_mut().find(|c| c.kind == cond.kind) {
        Some(existing) => {
            if existing.status == cond.status {
                cond.last_transition = existing.last_transition;
            }
            *existing = cond;
        }
        None => conditions.push(cond),
    }
}

/// Status of a [`Pipeline`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineStatus {
    /// Conditions, e.g. `Resolved=False`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Name of the newest finished execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution: Option<String>,
    /// Phase of the newest finished execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_state: Option<ExecutionPhase>,
    /// Run number the next execution gets (starts at 1); kept up as executions
    /// finish, so after a restart it may lag by the executions in flight, whose
    /// names the next triggers skip.
    #[serde(default)]
    pub next_run: u64,
    /// Last distinct nodes that ran this pipeline, most recent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_nodes: Vec<String>,
    /// The spec generation this status describes.
    #[serde(default)]
    pub observed_generation: u64,
    /// Cron schedule → the last fire time handled (run, or collapsed into a run).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cron_last: BTreeMap<String, DateTime<Utc>>,
}

impl PipelineStatus {
    /// Records that `node` ran the pipeline, keeping at most `window` distinct
    /// nodes, most recent first.
    pub fn record_node(&mut self, node: &str, window: usize) {
        self.recent_nodes.retain(|n| n != node);
        self.recent_nodes.insert(0, node.to_owned());
        self.recent_nodes.truncate(window);
    }
}

/// Phase of an execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExecutionPhase {
    /// Waiting for the engine's quota.
    #[default]
    Queued,
    /// Admitted, waiting for a worker/node.
    Pending,
    /// Running.
    Running,
    /// Every stage succeeded (skipped stages count as success).
    Succeeded,
    /// A step failed or a deadline passed.
    Failed,
    /// Aborted by a person or an uninstall.
    Aborted,
    /// Cancelled by a newer execution of its concurrency group
    /// (`spec.superseded_by` names it).
    Cancelled,
}

impl ExecutionPhase {
    /// Whether the execution is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Aborted | Self::Cancelled
        )
    }
}

/// State of a stage or step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepPhase {
    /// Not started.
    #[default]
    Waiting,
    /// Running.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed (after its retries).
    Failed,
    /// Its `when` was false, or an earlier stage failed.
    Skipped,
    /// Interrupted by an abort.
    Aborted,
}

impl StepPhase {
    /// The name expressions see in `steps.<name>.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "Waiting",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Skipped => "Skipped",
            Self::Aborted => "Aborted",
        }
    }

    /// Whether it has ended: succeeded, failed, skipped or aborted.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Aborted
        )
    }
}

/// What started an execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// A person or API call.
    #[default]
    Manual,
    /// A cron schedule.
    Cron,
    /// A webhook.
    Webhook,
    /// A step of another pipeline (`pipeline:`); label
    /// `arkline.dev/called-by` names the calling execution.
    Pipeline,
    /// A push to a container registry (an `image_push` trigger); the
    /// execution's `image` says which.
    ImagePush,
}

/// The image push that started an execution (`trigger.image`,
/// `trigger.digest`, `trigger.tag` in expressions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagePush {
    /// The repository as the registry names it (`team/app`), with the
    /// registry's host when the notification gave one
    /// (`registry.example.com/team/app`).
    pub image: String,
    /// The manifest's digest (`sha256:…`).
    pub digest: String,
    /// The tag pushed; empty for a push by digest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

/// Spec of a [`PipelineExecution`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineExecutionSpec {
    /// Name of the pipeline.
    pub pipeline: String,
    /// Snapshot of the pipeline spec at trigger time, so edits do not change a run.
    pub pipeline_spec: PipelineSpec,
    /// Run number (1-based, per pipeline).
    pub run: u64,
    /// What started it.
    #[serde(default)]
    pub trigger: TriggerKind,
    /// Parameter values (defaults already applied).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Event name (`push`, `pull_request`, `tag`, `manual`, `image_push`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event: String,
    /// Branch built.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub branch: String,
    /// Commit built.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit: String,
    /// Set to request an abort; running steps are interrupted and `finally` runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abort: bool,
    /// The concurrency group, as worked out from the pipeline's
    /// `concurrency.group` when the execution was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<String>,
    /// The newer execution of its concurrency group that cancelled this one
    /// (set with `abort`; it then ends `Cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// Decisions on its approval steps, by step name (written through the
    /// API, read by the driver).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub approvals: BTreeMap<String, Approval>,
    /// The repository file the pipeline spec was read from (pipelines as
    /// code); `None` for a pipeline stored in the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<PipelineOrigin>,
    /// Started by an event the engine does not trust (a pull request from a
    /// fork, an event outside `pipelines_from_repo.trusted_events`), or
    /// called by such an execution: its steps get no secret, and only bizes
    /// granted nothing or named in `untrusted_bizes` run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untrusted: bool,
    /// The image push that started it (`trigger: image_push`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImagePush>,
}

/// A decision on an approval step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Approved (`true`) or rejected.
    pub approved: bool,
    /// Who decided (the API token's name).
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// What they said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

/// Status of a [`PipelineExecution`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineExecutionStatus {
    /// Phase.
    #[serde(default)]
    pub phase: ExecutionPhase,
    /// Conditions (`Admitted`, `Resolved`, `Completed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per-stage state, in pipeline order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// Per-step state of the `finally` steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finally: Vec<StepStatus>,
    /// Node running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pipeline's `source` as checked out into the workspace: recorded
    /// before the first step runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,
    /// Each `uses` (as written) → exact `name@version` it resolved to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resolved: BTreeMap<String, String>,
    /// Step name → output key → value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, BTreeMap<String, String>>,
    /// Step name → log reference (opaque to the model).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub logs: BTreeMap<String, String>,
    /// Start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    /// Finish time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// Why it failed or was aborted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The repository an execution's workspace was checked out from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceStatus {
    /// Repository URL.
    pub repository: String,
    /// The commit checked out (full SHA).
    pub commit: String,
    /// The branch it was resolved from (empty when a commit was given).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub branch: String,
}

/// State of one stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// State.
    #[serde(default)]
    pub phase: StepPhase,
    /// Start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    /// Finish time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// Why it was skipped or failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Its steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,
}

/// State of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepStatus {
    /// Step name.
    pub name: String,
    /// State.
    #[serde(default)]
    pub phase: StepPhase,
    /// Attempts started so far.
    #[serde(default)]
    pub attempts: u32,
    /// Attempts cut off by a restart of the host and run again without counting
    /// against the step's retries (see `PipelineSettingSpec::interrupted_retries`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interruptions: u32,
    /// Start of the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    /// Finish of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// Why it failed or was skipped (e.g. `timeout`, `interrupted`, `when`); at
    /// most [`MAX_REASON_BYTES`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// An approval step's decision, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// A pipeline-call step's execution of the called pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub called: Option<String>,
}

/// Spec of a [`Secret`]: values are ciphertext, base64-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// Key → base64 ciphertext. Plaintext never appears in this type.
    #[serde(default)]
    pub data: BTreeMap<String, Ciphertext>,
}

/// Opaque base64 ciphertext of one secret value. `Debug` does not print it, so
/// logging a `Secret` cannot leak even the ciphertext.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Ciphertext(pub String);

impl std::fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ciphertext({} bytes)", self.0.len())
    }
}

/// Status of a [`Secret`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretStatus {
    /// Id of the node key the values are encrypted with.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
}

/// Spec of a [`BizDeployment`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BizDeploymentSpec {
    /// The desired bizes.
    #[serde(default)]
    pub bizes: Vec<DesiredBiz>,
}

/// One desired biz.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DesiredBiz {
    /// Biz name.
    pub name: String,
    /// Versions to keep installed.
    pub versions: Vec<String>,
    /// The version new executions resolve to.
    pub active: String,
    /// What the engine grants the biz (the grant syntax: `process=sh`, `http=h`,
    /// `cache`, `host-call=n`), for every version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
    /// Version → sha256 of its `.ark`, kept in the container's archive store.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
}

/// Lifecycle state of an installed biz version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BizState {
    /// Verified and compiled.
    #[default]
    Resolved,
    /// Chosen for new executions.
    Activated,
    /// Installed but not chosen.
    Deactivated,
    /// Waiting for lease holders before uninstall.
    Draining,
    /// Removed.
    Uninstalled,
    /// Failed to install.
    Broken,
}

/// Status of a [`BizDeployment`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BizDeploymentStatus {
    /// Installed `name@version` → state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub installed: BTreeMap<String, BizState>,
    /// Biz name → active version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub active: BTreeMap<String, String>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_capped_once_at_a_char_boundary() {
        assert_eq!(cap_reason("short".into()), "short");
        let long = "é".repeat(MAX_REASON_BYTES);
        let capped = cap_reason(long.clone());
        assert!(capped.len() <= MAX_REASON_BYTES, "{}", capped.len());
        let marker = format!(" … ({} bytes, cut)", long.len());
        assert!(capped.ends_with(&marker));
        assert!(capped.trim_end_matches(&marker).chars().all(|c| c == 'é'));
        assert_eq!(cap_reason(capped.clone()), capped, "idempotent");
    }
}
