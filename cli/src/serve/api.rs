//! The `/api/v1` admin API: engines, bizes, pipelines, executions, step logs
//! (JSON or a live server-sent event stream) and secrets, plus `/healthz`,
//! `/readyz` and the OpenAPI document.
//!
//! Every route is declared once, in [`routes`], with the [`Operation`] that
//! documents it: the router and the OpenAPI document come from the same table.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use arkline::container::archive::ContainerArchive;
use arkline::engine::StoredLine;
use arkline::model::{ByteSize, Pipeline, PipelineExecution, PipelineSettingSpec, StepPhase};
use arkline::runtime::{BizInfo, BizState, UninstallMode};
use arkline::{Deploying, Engine, PendingBiz, TriggerRequest};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::{Access, Caller};
use super::error::ApiError;
use super::listing::{ListParams, Order, list_or_watch};
use super::openapi::{Operation, Payload, QueryParam, Reply, schema};

/// Bytes read past the limit (and thrown away) before an oversize request is
/// answered, so that a client still sending its body reads the 413 rather than
/// a reset connection.
const DRAIN_PAST_LIMIT: u64 = 16 << 20;

/// How long an uninstall is awaited before it is answered as `draining`.
const UNINSTALL_WAIT: Duration = Duration::from_secs(2);

// ---- bodies ----

/// An engine of the container.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EngineView {
    /// Engine name.
    pub name: String,
    /// Installed biz versions.
    pub bizes: usize,
    /// Pipelines.
    pub pipelines: usize,
}

/// An installed biz version.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BizView {
    /// Biz name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `resolved`, `activated`, `deactivated`, `draining`, `uninstalled` or
    /// `broken`; for an install in the background (`?wait=false`),
    /// `installing` while it compiles and `failed` when it did not install.
    pub state: String,
    /// Why it is broken or failed, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
    /// Executions holding it now.
    pub leases: usize,
    /// The `arkline:step` API version it targets (while it installs: the
    /// versions its manifest accepts, `^0.1`).
    pub api_version: String,
    /// SHA-256 of its component.
    pub sha256: String,
    /// Its step types.
    pub step_types: Vec<String>,
    /// What it may use in this engine, in the grant syntax (`process=sh`, `cache`).
    pub grants: Vec<String>,
}

/// Who the caller is (`GET /api/v1/whoami`): what a client may show.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WhoAmIView {
    /// The token's name (`anonymous` without tokens).
    pub name: String,
    /// `read` or `write`.
    pub access: String,
    /// The engines it may use (patterns; `*` for all).
    pub engines: Vec<String>,
    /// Its groups (for approvals).
    pub groups: Vec<String>,
}

/// What a `.arkc` upload deployed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeployedView {
    /// The container archive's `name@version`.
    pub archive: String,
    /// The engines it deployed, as they are now.
    pub engines: Vec<EngineView>,
}

/// Where an uninstall is.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct UninstallView {
    /// Biz name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `uninstalled`, or `draining` while executions still hold it (it goes
    /// when they end; list the bizes to see).
    pub state: String,
}

/// Body of `switch`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchBody {
    /// The installed version new executions resolve to from now on.
    pub version: String,
}

/// Body of a trigger; every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerBody {
    /// Param values, checked against the pipeline's declarations.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Branch built.
    pub branch: String,
    /// Commit built.
    pub commit: String,
    /// Event (`push`, `pull_request`, `tag`, `manual`); `manual` when empty.
    pub event: String,
    /// Run the pipeline as its file is at this branch or full commit SHA of
    /// the engine's `pipelines_from_repo` repository (pipelines as code),
    /// instead of the stored pipeline.
    #[serde(rename = "ref")]
    pub reference: String,
}

/// Body of a decision on an approval step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// `approve` or `reject`.
    pub decision: DecisionKind,
    /// What the approver says (kept with the decision, at most 1 KiB).
    #[serde(default)]
    pub comment: String,
}

/// A decision.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Let the execution go on.
    Approve,
    /// Fail the step (and so the execution, unless it continues on error).
    Reject,
}

/// Body of a secret write.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretBody {
    /// The value (stored encrypted, never returned).
    pub value: String,
}

/// The names of an engine's secrets.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SecretNames {
    /// Names only: values are never returned.
    pub names: Vec<String>,
}

/// The public key that verifies an engine's build provenance.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProvenanceKey {
    /// The secret holding the signing key (`provenance.key_secret`).
    pub key_secret: String,
    /// The ed25519 public key, 64 hex digits (`arkline ctl verify-provenance --key`).
    pub public_key: String,
    /// Its id: the first 16 hex digits, as in the envelopes' `keyid`.
    pub key_id: String,
}

/// One line of a step log.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// Position in the step's log, from 0, across attempts.
    pub seq: u64,
    /// When the host received it (RFC 3339).
    pub time: String,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `stdout`, `stderr`, `log` or `host`.
    pub source: String,
    /// The text, with secrets masked.
    pub message: String,
    /// Structured fields of a `log` call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

impl From<StoredLine> for LogLine {
    fn from(l: StoredLine) -> Self {
        Self {
            seq: l.seq,
            time: l.time.to_rfc3339(),
            attempt: l.attempt,
            level: l.level,
            source: l.source,
            message: l.message,
            fields: l.fields,
        }
    }
}

/// The end of a followed log.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LogEnd {
    /// The step's phase when the stream ended (`Succeeded`, `Failed`, …).
    pub phase: String,
}

/// Health and readiness.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UninstallQuery {
    #[serde(default)]
    force: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    format: LogFormat,
}

/// How a step's log is answered: JSON lines (`json`, the default) or the
/// messages as plain text, one per line, as a download (`text`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    #[default]
    Json,
    Text,
}

// ---- the route table ----

struct Routes {
    router: Router<AppState>,
    ops: Vec<Operation>,
}

impl Routes {
    fn add(mut self, op: Operation, handler: MethodRouter<AppState>) -> Self {
        self.router = self.router.route(op.path, handler);
        self.ops.push(op);
        self
    }
}

const fn op(
    method: Method,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    tag: &'static str,
    access: Option<Access>,
) -> Operation {
    Operation {
        method,
        path,
        id,
        summary,
        tag,
        access,
        query: &[],
        request: Payload::None,
        reply: Reply::Empty(204),
    }
}

const READ: Option<Access> = Some(Access::Read);
const WRITE: Option<Access> = Some(Access::Write);
const ENGINE: &str = "/api/v1/engines/{engine}";

/// The admin API's router and the operations it serves.
pub fn routes() -> (Router<AppState>, Vec<Operation>) {
    let r = Routes {
        router: Router::new(),
        ops: Vec::new(),
    };
    let r = r
        .add(
            Operation {
                reply: Reply::Json(200, schema::<Status>),
                ..op(Method::GET, "/healthz", "health", "The process is up.", "health", None)
            },
            get(healthz),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<Status>),
                ..op(Method::GET, "/readyz", "ready", "The engines are restored and the API answers (503 while starting or shutting down).", "health", None)
            },
            get(readyz),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<serde_json::Value>),
                ..op(Method::GET, "/api/v1/openapi.json", "openapi", "This document.", "health", None)
            },
            get(openapi),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<Vec<NodeView>>),
                ..op(Method::GET, "/api/v1/nodes", "listNodes", "The live nodes serving this store (on etcd, every registered node; otherwise this one): id, address, capacity, engines, load.", "nodes", READ)
            },
            get(list_nodes),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<Vec<EngineView>>),
                ..op(Method::GET, "/api/v1/engines", "listEngines", "The engines the token may see.", "engines", READ)
            },
            get(list_engines),
        )
        .add(
            Operation {
                request: Payload::Binary("application/vnd.arkline.arkc"),
                reply: Reply::Json(201, schema::<DeployedView>),
                ..op(Method::POST, "/api/v1/engines", "deployContainer", "Deploy a .arkc: its engines are created or updated (settings, bizes with grants, pipelines). Needs write access to every engine it names. A refused archive changes nothing.", "engines", WRITE)
            },
            post(deploy_container),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<EngineView>),
                ..op(Method::GET, ENGINE, "getEngine", "One engine.", "engines", READ)
            },
            get(get_engine),
        )
        .add(
            op(Method::DELETE, ENGINE, "removeEngine", "Remove an engine: its executions are interrupted, its bizes uninstalled, and its pipelines, executions, secrets and logs deleted.", "engines", WRITE),
            delete(remove_engine),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<WhoAmIView>),
                ..op(Method::GET, "/api/v1/whoami", "whoAmI", "Who the token is: its name, access, engines and groups.", "engines", READ)
            },
            get(who_am_i),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<Vec<BizView>>),
                ..op(Method::GET, "/api/v1/engines/{engine}/bizes", "listBizes", "Installed biz versions: states, leases, grants.", "bizes", READ)
            },
            get(list_bizes),
        )
        .add(
            Operation {
                query: &[
                    QueryParam { name: "grant", ty: "string", repeated: true, description: "A capability granted to the biz in this engine, in the grant syntax (`process=sh`, `http=example.com`, `cache`, `host-call=kv.get`); repeat for several." },
                    QueryParam { name: "activate", ty: "boolean", repeated: false, description: "Make this version the one new executions resolve to (default true; the first version of a name is activated anyway)." },
                    QueryParam { name: "wait", ty: "boolean", repeated: false, description: "Wait for the component to compile (default true: 201 once installed). `false` answers 202 with state `installing` once the archive is checked and recorded, and compiles in the background (seconds for a big Python or JavaScript component not compiled before); the biz list shows it `installing`, then installed, or `failed` with the reason. Executions that need it meanwhile wait for it." },
                ],
                request: Payload::Binary("application/vnd.arkline.ark"),
                reply: Reply::Json(201, schema::<BizView>),
                ..op(Method::POST, "/api/v1/engines/{engine}/bizes", "installBiz", "Install a .ark (kept as desired state: a restart installs it again).", "bizes", WRITE)
            },
            post(install_biz),
        )
        .add(
            Operation {
                request: Payload::Json(schema::<SwitchBody>),
                reply: Reply::Json(200, schema::<BizView>),
                ..op(Method::POST, "/api/v1/engines/{engine}/bizes/{name}/switch", "switchBiz", "Make an installed version the one new executions resolve to.", "bizes", WRITE)
            },
            post(switch_biz),
        )
        .add(
            Operation {
                query: &[QueryParam { name: "force", ty: "boolean", repeated: false, description: "Cancel the steps running on this version instead of waiting for them." }],
                reply: Reply::Json(200, schema::<UninstallView>),
                ..op(Method::DELETE, "/api/v1/engines/{engine}/bizes/{name}/{version}", "uninstallBiz", "Uninstall a version: no new execution resolves to it; it goes when the executions holding it end (202 `draining` until then).", "bizes", WRITE)
            },
            delete(uninstall_biz),
        )
        .add(
            Operation {
                query: LIST_PARAMS,
                reply: Reply::Json(200, schema::<Vec<Pipeline>>),
                ..op(Method::GET, "/api/v1/engines/{engine}/pipelines", "listPipelines", LIST_PIPELINES, "pipelines", READ)
            },
            get(list_pipelines),
        )
        .add(
            Operation {
                request: Payload::Yaml,
                reply: Reply::Json(200, schema::<Pipeline>),
                ..op(Method::POST, "/api/v1/engines/{engine}/pipelines", "applyPipeline", "Create or replace the pipeline a YAML file describes (named by its `name`).", "pipelines", WRITE)
            },
            post(apply_pipeline),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<Pipeline>),
                ..op(Method::GET, "/api/v1/engines/{engine}/pipelines/{pipeline}", "getPipeline", "One pipeline.", "pipelines", READ)
            },
            get(get_pipeline),
        )
        .add(
            Operation {
                request: Payload::Yaml,
                reply: Reply::Json(200, schema::<Pipeline>),
                ..op(Method::PUT, "/api/v1/engines/{engine}/pipelines/{pipeline}", "putPipeline", "Create or replace a pipeline; the YAML's `name` must be the one in the path. With `If-Match: <metadata.resource_version>` (as read), only if it has not changed since: 409 `conflict` otherwise.", "pipelines", WRITE)
            },
            put(put_pipeline),
        )
        .add(
            op(Method::DELETE, "/api/v1/engines/{engine}/pipelines/{pipeline}", "deletePipeline", "Delete a pipeline (its executions stay until retention removes them). With `If-Match: <metadata.resource_version>` (as read), only if it has not changed since: 409 `conflict` otherwise.", "pipelines", WRITE),
            delete(delete_pipeline),
        )
        .add(
            Operation {
                request: Payload::Json(schema::<TriggerBody>),
                reply: Reply::Json(201, schema::<PipelineExecution>),
                ..op(Method::POST, "/api/v1/engines/{engine}/pipelines/{pipeline}/executions", "trigger", "Start an execution (queued until the engine's quota admits it).", "executions", WRITE)
            },
            post(trigger),
        )
        .add(
            Operation {
                query: EXECUTION_LIST_PARAMS,
                reply: Reply::Json(200, schema::<Vec<PipelineExecution>>),
                ..op(Method::GET, "/api/v1/engines/{engine}/executions", "listExecutions", LIST_EXECUTIONS, "executions", READ)
            },
            get(list_executions),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<PipelineExecution>),
                ..op(Method::GET, "/api/v1/engines/{engine}/executions/{execution}", "getExecution", "One execution with its stage and step states.", "executions", READ)
            },
            get(get_execution),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<PipelineExecution>),
                ..op(Method::POST, "/api/v1/engines/{engine}/executions/{execution}/abort", "abortExecution", "Abort: running steps are interrupted, `finally` runs, the phase becomes `Aborted`. A finished execution is left as it is.", "executions", WRITE)
            },
            post(abort_execution),
        )
        .add(
            Operation {
                reply: Reply::Json(201, schema::<PipelineExecution>),
                ..op(Method::POST, "/api/v1/engines/{engine}/executions/{execution}/rerun", "rerunExecution", "Start a new execution of the same pipeline (its current spec; as read from the repository for one that was) with the same params, event, branch and commit, labelled `arkline.dev/rerun-of: <execution>`. Any execution may be rerun, finished or not.", "executions", WRITE)
            },
            post(rerun_execution),
        )
        .add(
            Operation {
                request: Payload::Json(schema::<DecisionBody>),
                reply: Reply::Json(200, schema::<PipelineExecution>),
                ..op(Method::POST, "/api/v1/engines/{engine}/executions/{execution}/approvals/{step}", "decideApproval", "Approves or rejects an approval step that is waiting, as the calling token (which must be one of the step's approvers, by name or `group:<name>`). 409 when the step is not waiting, 403 when the token may not decide.", "executions", WRITE)
            },
            post(decide_approval),
        )
        .add(
            Operation {
                query: &[
                    QueryParam { name: "follow", ty: "boolean", repeated: false, description: "Stream the lines (server-sent events) until the step ends." },
                    QueryParam { name: "format", ty: "string", repeated: false, description: "`json` (the default) or `text`: the whole log as plain text, one message per line, as a download (not with `follow`)." },
                ],
                reply: Reply::LogLines(schema::<LogLine>),
                ..op(Method::GET, "/api/v1/engines/{engine}/executions/{execution}/steps/{step}/logs", "stepLogs", "A step's log, every attempt: JSON lines; live with `follow=true` (server-sent events); `format=text` for the messages as a plain-text download. Step `@source` is the host's checkout of the pipeline's `source`.", "executions", READ)
            },
            get(step_logs),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<PipelineSettingSpec>),
                ..op(Method::GET, "/api/v1/engines/{engine}/settings", "getSettings", "The engine's settings (quota, limits, caches, retention, trust, forge…): the `PipelineSetting` named `default`, its version as `ETag` (`\"0\"` when none were applied).", "settings", READ)
            },
            get(get_settings),
        )
        .add(
            Operation {
                request: Payload::Json(schema::<PipelineSettingSpec>),
                reply: Reply::Json(200, schema::<PipelineSettingSpec>),
                ..op(Method::PUT, "/api/v1/engines/{engine}/settings", "putSettings", "Replace the engine's settings; 400 naming the field when one is out of its range. With `If-Match: <ETag>` (as read), only if they have not changed since: 409 `conflict` otherwise.", "settings", WRITE)
            },
            put(put_settings),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<ProvenanceKey>),
                ..op(Method::GET, "/api/v1/engines/{engine}/provenance-key", "getProvenanceKey", "The public key that verifies the engine's build provenance (from the secret its `provenance.key_secret` setting names). 404 when the engine signs no provenance; 409 when the secret is missing or holds no ed25519 key.", "settings", READ)
            },
            get(get_provenance_key),
        )
        .add(
            Operation {
                reply: Reply::Json(200, schema::<SecretNames>),
                ..op(Method::GET, "/api/v1/engines/{engine}/secrets", "listSecrets", "The names of the engine's secrets (never their values).", "secrets", READ)
            },
            get(list_secrets),
        )
        .add(
            Operation {
                request: Payload::Json(schema::<SecretBody>),
                ..op(Method::PUT, "/api/v1/engines/{engine}/secrets/{secret}", "putSecret", "Create or replace a secret (stored encrypted; write-only).", "secrets", WRITE)
            },
            put(put_secret),
        )
        .add(
            op(Method::DELETE, "/api/v1/engines/{engine}/secrets/{secret}", "deleteSecret", "Delete a secret.", "secrets", WRITE),
            delete(delete_secret),
        )
        .add(
            Operation {
                request: Payload::Json(schema::<serde_json::Value>),
                reply: Reply::Json(202, schema::<serde_json::Value>),
                ..op(Method::POST, "/hooks/{engine}/{pipeline}", "webhook", "A GitHub-compatible (`X-Hub-Signature-256`, `X-GitHub-Event`) or GitLab-compatible (`X-Gitlab-Token`, `X-Gitlab-Event`) push, tag or pull/merge-request delivery, checked against the secret named by the pipeline's webhook trigger (no bearer token). 202 with the execution when one starts; 200 `{triggered: false, reason}` for a ping, a delivery the trigger's filters turn away, or a delivery id already seen (`execution` names the first one's); 401, the same for every address, when the delivery cannot be verified (unknown engine or pipeline, no webhook trigger or secret, wrong signature).", "webhooks", None)
            },
            post(super::hooks::receive),
        )
        .add(
            Operation {
                request: Payload::Json(schema::<serde_json::Value>),
                reply: Reply::Json(202, schema::<serde_json::Value>),
                ..op(Method::POST, "/hooks/{engine}", "repositoryWebhook", "A repository's GitHub-, GitLab-, Gitea- or Forgejo-compatible delivery for an engine that runs its pipelines from that repository (the `pipelines_from_repo` setting), checked against the setting's `webhook_secret`. Runs each pipeline file at the delivery's commit whose webhook triggers accept its event and branch, at that exact content (the file's digest is in the execution's `origin`); pull requests from forks and events outside `trusted_events` run untrusted (no secrets). 202 `{triggered: true, commit, trusted, executions, files}`; 200 `{triggered: false, reason, files}` when nothing ran (invalid files carry their diagnostics); 404 for a repository the engine does not follow; 422 when the repository cannot be read; 401 as for pipeline webhooks.", "webhooks", None)
            },
            post(super::hooks::repo::receive),
        )
        .add(
            Operation {
                request: Payload::Json(schema::<serde_json::Value>),
                reply: Reply::Json(202, schema::<serde_json::Value>),
                ..op(Method::POST, "/registry-hooks/{engine}", "registryNotification", "Image pushes from a container registry: CNCF distribution's notification envelope (`application/vnd.docker.distribution.events.v1+json`; `push` events of manifests and indexes) or Harbor's `PUSH_ARTIFACT` webhook, authenticated by the `Authorization` header holding the token of the engine's `registry_notifications.token_secret` (`Bearer <token>` or the token alone). Starts each pipeline whose `image_push` trigger accepts the repository and tag, with `trigger.image`, `trigger.digest` and `trigger.tag`; an event id seen within the replay window, or an image the pipeline published itself (unless its trigger says `self: true`), starts nothing. 202 `{triggered: true, executions, skipped}`; 200 `{triggered: false, reason, skipped}`; 400 for a body that is no notification; 401, the same for every address, when the token does not match.", "webhooks", None)
            },
            post(super::hooks::registry::receive),
        )
        .add(
            Operation {
                reply: Reply::Text(200, "text/plain; version=0.0.4"),
                ..op(Method::GET, "/metrics", "metrics", "Prometheus metrics (text exposition format 0.0.4): executions by engine and phase, queue depth, step durations by biz, instantiations and faults by kind, cache hits and misses, guest-thread CPU and weight by engine, store commit latency. No token: serve on a private interface.", "metrics", None)
            },
            get(super::metrics::scrape),
        );
    (r.router, r.ops)
}

/// The operations the admin API serves (one per route and method).
pub fn operations() -> Vec<Operation> {
    routes().1
}

// ---- helpers ----

/// Reads a body of at most `limit` bytes; a longer one is a 413 naming `flag`.
async fn read_body(body: Body, limit: ByteSize, flag: &str) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen: u64 = 0;
    let cap = limit.bytes();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match super::connections::body_timeout(&e) {
            Some(timeout) => ApiError::request_timeout(timeout.to_string()),
            None => ApiError::bad_request(format!("cannot read the request body: {e}")),
        })?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > cap {
            // Drain a while so the client reads the answer, then give up.
            while seen <= cap.saturating_add(DRAIN_PAST_LIMIT) {
                match stream.next().await {
                    Some(Ok(c)) => seen = seen.saturating_add(c.len() as u64),
                    _ => break,
                }
            }
            return Err(ApiError::payload_too_large(limit, flag));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_body(body, state.limits.max_body, "--max-body").await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the JSON body does not fit this request: {e}")))
}

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
}

fn parse_version(version: &str) -> Result<semver::Version, ApiError> {
    semver::Version::parse(version).map_err(|e| {
        ApiError::bad_request(format!(
            "`{version}` is not a semantic version ({e}): write it like `1.2.0`"
        ))
    })
}

impl From<BizInfo> for BizView {
    fn from(b: BizInfo) -> Self {
        let (state, broken) = match &b.state {
            BizState::Broken(reason) => ("broken".to_owned(), Some(reason.clone())),
            s => (s.to_string(), None),
        };
        Self {
            grants: b.capabilities.to_grants(),
            name: b.name,
            version: b.version.to_string(),
            state,
            broken,
            leases: b.leases,
            api_version: b.api_version.to_string(),
            sha256: b.sha256,
            step_types: b.step_types,
        }
    }
}

impl From<PendingBiz> for BizView {
    fn from(p: PendingBiz) -> Self {
        let state = if p.failed.is_some() {
            "failed"
        } else {
            "installing"
        };
        Self {
            name: p.name,
            version: p.version.to_string(),
            state: state.to_owned(),
            broken: p.failed,
            leases: 0,
            api_version: p.host_api.to_string(),
            sha256: p.sha256,
            step_types: p.step_types,
            grants: p.grants,
        }
    }
}

async fn engine_view(engine: &Engine) -> Result<EngineView, ApiError> {
    Ok(EngineView {
        name: engine.name().to_owned(),
        bizes: engine.bizes().len(),
        pipelines: engine.pipelines().await?.len(),
    })
}

/// The installed versions, and those installing in the background or whose
/// background install failed, by name and version.
fn sorted_bizes(engine: &Engine) -> Vec<BizView> {
    let installed = engine.bizes();
    let pending = engine
        .pending_bizes()
        .into_iter()
        .filter(|p| {
            !installed
                .iter()
                .any(|b| b.name == p.name && b.version == p.version)
        })
        .map(|p| ((p.name.clone(), p.version.clone()), BizView::from(p)))
        .collect::<Vec<_>>();
    let mut bizes: Vec<_> = installed
        .into_iter()
        .map(|b| ((b.name.clone(), b.version.clone()), BizView::from(b)))
        .chain(pending)
        .collect();
    bizes.sort_by(|a, b| a.0.cmp(&b.0));
    bizes.into_iter().map(|(_, view)| view).collect()
}

/// The engine, after checking the caller's scope on it (403 before 404, so a
/// token learns nothing of engines outside its scope).
fn scoped(
    state: &AppState,
    caller: &Caller,
    name: &str,
    access: Access,
) -> Result<Engine, ApiError> {
    caller.require(name, access)?;
    state.engine(name)
}

/// Parses and validates a pipeline off the async workers (see
/// [`AppState::parse_off_workers`]).
/// Parses a pipeline file off the async workers and applies it; a step's
/// `with:` that does not fit its biz's schema is a 422 with positions in the
/// posted file.
async fn apply_yaml(
    state: &AppState,
    engine: &Engine,
    source: Bytes,
    file_name: String,
    expected_name: Option<&str>,
    expected_version: Option<u64>,
) -> Result<Pipeline, ApiError> {
    let text = source.clone();
    let parsed = state
        .parse_off_workers(move || parse_yaml_now(&source, &file_name))
        .await??;
    if let Some(expected) = expected_name
        && parsed.pipeline.metadata.name != expected
    {
        return Err(ApiError::bad_request(format!(
            "the YAML names pipeline `{}` but the path names `{expected}`: make them agree, or POST it to /api/v1/engines/{}/pipelines",
            parsed.pipeline.metadata.name,
            engine.name()
        )));
    }
    match engine
        .apply_parsed_pipeline_at(&parsed, expected_version)
        .await
    {
        Err(arkline::EngineError::Invalid(diagnostics)) => Err(invalid_pipeline(
            &diagnostics,
            std::str::from_utf8(&text).unwrap_or_default(),
        )),
        other => Ok(other?),
    }
}

fn parse_yaml_now(
    source: &Bytes,
    file_name: &str,
) -> Result<arkline::model::ParsedPipeline, ApiError> {
    let text = std::str::from_utf8(source).map_err(|_| {
        ApiError::bad_request("the pipeline is not UTF-8 text: send the YAML file as UTF-8")
    })?;
    arkline::model::parse_pipeline_file(file_name, text)
        .map_err(|diags| invalid_pipeline(&diags, text))
}

/// 422 with every diagnostic, rendered against the file and as details.
fn invalid_pipeline(diags: &arkline::model::Diagnostics, text: &str) -> ApiError {
    let err = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_pipeline",
        format!(
            "the pipeline is not valid; fix it and apply it again:\n{}",
            diags.render(text)
        ),
    );
    match serde_json::to_value(diags) {
        Ok(d) => err.with_details(d),
        Err(_) => err,
    }
}

fn step_names(exec: &PipelineExecution) -> impl Iterator<Item = &str> {
    let spec = &exec.spec.pipeline_spec;
    spec.stages
        .iter()
        .flat_map(|s| s.steps.iter())
        .chain(spec.finally.iter())
        .map(|s| s.name.as_str())
}

fn step_phase(exec: &PipelineExecution, step: &str) -> Option<StepPhase> {
    exec.status
        .stages
        .iter()
        .flat_map(|s| s.steps.iter())
        .chain(exec.status.finally.iter())
        .find(|s| s.name == step)
        .map(|s| s.phase)
}

fn phase_name(phase: Option<StepPhase>) -> String {
    match phase.map(serde_json::to_value) {
        Some(Ok(serde_json::Value::String(s))) => s,
        Some(_) => "Unknown".to_owned(),
        None => "Pending".to_owned(),
    }
}

// ---- handlers ----

async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    if state.is_ready() {
        Ok(Json(Status {
            status: "ready".into(),
        }))
    } else {
        Err(ApiError::not_ready())
    }
}

async fn openapi() -> Json<serde_json::Value> {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    Json(
        DOC.get_or_init(|| super::openapi::document(&operations()))
            .clone(),
    )
}

/// A live node, as its registration says.
#[derive(Debug, Serialize, JsonSchema)]
pub struct NodeView {
    /// The node's id.
    pub id: String,
    /// Where other nodes reach its API (empty for a node alone).
    pub address: String,
    /// Step instances it runs at once.
    pub capacity: u32,
    /// The engines it serves.
    pub engines: Vec<String>,
    /// The executions it drives now.
    pub load: u32,
    /// When it registered (RFC 3339; empty for a node alone).
    pub started: String,
    /// The arkline version it runs.
    pub version: String,
}

async fn list_nodes(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    let view = |n: arkline::store::etcd::NodeInfo| NodeView {
        id: n.id,
        address: n.address,
        capacity: n.capacity,
        engines: n.engines,
        load: n.load,
        started: n.started,
        version: n.version,
    };
    if let Some(store) = &state.peers {
        let nodes = store
            .nodes()
            .await
            .map_err(|e| ApiError::internal(format!("cannot list the nodes: {e}")))?;
        return Ok(Json(nodes.into_iter().map(view).collect()));
    }
    let container = &state.container;
    let mut engines: Vec<String> = container
        .engines()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    engines.sort();
    Ok(Json(vec![NodeView {
        id: container.node().to_owned(),
        address: String::new(),
        capacity: container.runtime().config().max_instances,
        engines,
        load: u32::try_from(container.running_executions()).unwrap_or(u32::MAX),
        started: String::new(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }]))
}

async fn list_engines(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<EngineView>>, ApiError> {
    let mut engines: Vec<Engine> = state
        .container
        .engines()
        .into_iter()
        .filter(|e| caller.sees(e.name()))
        .collect();
    engines.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    for engine in &engines {
        out.push(engine_view(engine).await?);
    }
    Ok(Json(out))
}

async fn deploy_container(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<(StatusCode, Json<DeployedView>), ApiError> {
    caller.require_write_access()?;
    let bytes = read_body(body, state.limits.max_upload, "--max-upload").await?;
    let archive = state
        .parse_off_workers(move || ContainerArchive::from_bytes(&bytes))
        .await?
        .map_err(|e| {
            ApiError::invalid_archive(format!(
                "the .arkc is refused: {e}; build it with `cargo ark container` and check it with `cargo ark verify`"
            ))
        })?;
    for engine in &archive.manifest.engines {
        caller.require(&engine.name, Access::Write)?;
    }
    let engines = state.container.deploy_archive(&archive).await?;
    let mut views = Vec::new();
    for engine in &engines {
        views.push(engine_view(engine).await?);
    }
    Ok((
        StatusCode::CREATED,
        Json(DeployedView {
            archive: format!("{}@{}", archive.manifest.name, archive.manifest.version),
            engines: views,
        }),
    ))
}

async fn get_engine(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<EngineView>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    Ok(Json(engine_view(&engine).await?))
}

async fn remove_engine(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&name, Access::Write)?;
    if state.container.remove_engine(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "engine `{name}` does not exist: list engines with `GET /api/v1/engines`"
        )))
    }
}

/// What a list route says about paging and watching.
macro_rules! list_manner {
    () => {
        " Every answer carries `X-Resource-Version` (the store's revision it was read at); with `limit`, an answer that stops short carries `X-Continue: TOKEN` for the next page (`continue=TOKEN`). With `watch=true` the answer is a stream of changes instead: server-sent events (`event: ADDED|MODIFIED|DELETED`, `id:` the revision, `data:` the object) when the client accepts `text/event-stream`, JSON lines `{\"type\", \"object\"}` otherwise; from `resourceVersion` (or an EventSource's `Last-Event-ID`), or without one the objects as they are (`ADDED`) and then their changes. A revision compacted away answers 410 `gone`: list again and watch from its `X-Resource-Version`."
    };
}

const LIST_PIPELINES: &str = concat!(
    "The engine's pipelines with their status, by name.",
    list_manner!()
);
const LIST_EXECUTIONS: &str = concat!("Executions, newest first.", list_manner!());

/// The query of the list routes (`listing.rs`).
const LIST_PARAMS: &[QueryParam] = &[
    QueryParam {
        name: "labelSelector",
        ty: "string",
        repeated: false,
        description: "Only objects whose labels match, in Kubernetes' syntax: `a=b,c!=d`, `e in (x,y)`, `f notin (z)`, `g`, `!h`.",
    },
    QueryParam {
        name: "limit",
        ty: "integer",
        repeated: false,
        description: "At most this many objects (1 to 1000); `X-Continue` when there are more.",
    },
    QueryParam {
        name: "continue",
        ty: "string",
        repeated: false,
        description: "The `X-Continue` of the page before: the next page.",
    },
    QueryParam {
        name: "watch",
        ty: "boolean",
        repeated: false,
        description: "Stream the changes instead of listing (no `limit`/`continue`).",
    },
    QueryParam {
        name: "resourceVersion",
        ty: "integer",
        repeated: false,
        description: "With `watch`: the changes after this revision (a list's `X-Resource-Version`, or an object's `metadata.resource_version`).",
    },
];

const EXECUTION_LIST_PARAMS: &[QueryParam] = &[
    QueryParam {
        name: "pipeline",
        ty: "string",
        repeated: false,
        description: "Only this pipeline's executions (`labelSelector=arkline.dev/pipeline=NAME`).",
    },
    LIST_PARAMS[0],
    LIST_PARAMS[1],
    LIST_PARAMS[2],
    LIST_PARAMS[3],
    LIST_PARAMS[4],
];

async fn who_am_i(caller: Caller) -> Json<WhoAmIView> {
    let (name, groups) = caller.identity();
    let (access, engines) = caller.scope();
    Json(WhoAmIView {
        name,
        access: access.to_owned(),
        engines,
        groups,
    })
}

async fn list_bizes(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<BizView>>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    Ok(Json(sorted_bizes(&engine)))
}

async fn install_biz(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<(StatusCode, Json<BizView>), ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    let mut grants = Vec::new();
    let mut activate = true;
    let mut wait = true;
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let flag = |name: &str| {
            value.parse::<bool>().map_err(|_| {
                ApiError::bad_request(format!("`{name}={value}`: write `true` or `false`"))
            })
        };
        match &*key {
            "grant" => grants.push(value.into_owned()),
            "activate" => activate = flag("activate")?,
            "wait" => wait = flag("wait")?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{other}`: this request takes `grant` (repeatable), `activate` and `wait`"
                )));
            }
        }
    }
    let bytes = read_body(body, state.limits.max_upload, "--max-upload").await?;
    // Reading the archive runs on a blocking thread inside `deploy_biz`; the
    // permit bounds how many uploads are read at once, as for pipelines.
    let _permit = state.parse_permit().await?;
    if wait {
        let info = engine.deploy_biz(&bytes, &grants, activate).await?;
        return Ok((StatusCode::CREATED, Json(info.into())));
    }
    Ok(
        match engine
            .deploy_biz_in_background(&bytes, &grants, activate)
            .await?
        {
            Deploying::Installed(info) => (StatusCode::CREATED, Json(info.into())),
            Deploying::Installing(pending) => (StatusCode::ACCEPTED, Json(pending.into())),
            _ => unreachable!("a new way of deploying needs its answer here"),
        },
    )
}

async fn switch_biz(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, biz)): Path<(String, String)>,
    body: Body,
) -> Result<Json<BizView>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    let SwitchBody { version } = read_json(&state, body).await?;
    let version = parse_version(&version)?;
    engine.switch(&biz, &version).await?;
    let info = engine
        .biz(&biz, &version)
        .ok_or_else(|| ApiError::conflict(format!("{biz}@{version} was uninstalled meanwhile")))?;
    Ok(Json(info.into()))
}

async fn uninstall_biz(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, biz, version)): Path<(String, String, String)>,
    q: Result<Query<UninstallQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(StatusCode, Json<UninstallView>), ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    let UninstallQuery { force } = query(q)?;
    let version = parse_version(&version)?;
    let pending = || {
        engine
            .pending_bizes()
            .into_iter()
            .any(|p| p.name == biz && p.version == version)
    };
    if engine.biz(&biz, &version).is_none() && !pending() {
        return Err(ApiError::not_found(format!(
            "{biz}@{version} is not installed in engine `{name}`: list its bizes with `GET /api/v1/engines/{name}/bizes`"
        )));
    }
    let mode = if force {
        UninstallMode::Force
    } else {
        UninstallMode::Wait
    };
    // The uninstall goes on after the answer when executions still hold the
    // version: the client is not kept waiting for them.
    let task = {
        let (engine, biz, version) = (engine.clone(), biz.clone(), version.clone());
        tokio::spawn(async move {
            let result = engine.uninstall(&biz, &version, mode).await;
            if let Err(e) = &result {
                tracing::warn!(engine = %engine.name(), biz = %biz, %version, error = %e, "uninstall failed");
            }
            result
        })
    };
    let view = |state: &str| UninstallView {
        name: biz.clone(),
        version: version.to_string(),
        state: state.to_owned(),
    };
    match tokio::time::timeout(UNINSTALL_WAIT, task).await {
        Ok(Ok(Ok(()))) => Ok((StatusCode::OK, Json(view("uninstalled")))),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(e)) => Err(ApiError::internal(format!(
            "the uninstall task failed: {e}"
        ))),
        Err(_) => Ok((StatusCode::ACCEPTED, Json(view("draining")))),
    }
}

async fn list_pipelines(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    let params = ListParams::parse(raw.as_deref(), &[])?;
    let order = Order {
        key: |p: &Pipeline| p.metadata.name.clone(),
        descending: false,
    };
    list_or_watch(&state, &engine, params, &headers, order).await
}

async fn apply_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<Pipeline>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    let bytes = read_body(body, state.limits.max_body, "--max-body").await?;
    Ok(Json(
        apply_yaml(&state, &engine, bytes, "pipeline.yaml".into(), None, None).await?,
    ))
}

async fn get_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, pipeline)): Path<(String, String)>,
) -> Result<Json<Pipeline>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    engine.pipeline(&pipeline).await?.map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "pipeline `{pipeline}` does not exist in engine `{name}`: apply it first"
        ))
    })
}

async fn put_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, pipeline)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Json<Pipeline>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    // `If-Match: <metadata.resource_version>`: replace only what was read.
    let expected = if_match(&headers)?;
    let bytes = read_body(body, state.limits.max_body, "--max-body").await?;
    Ok(Json(
        apply_yaml(
            &state,
            &engine,
            bytes,
            format!("{pipeline}.yaml"),
            Some(&pipeline),
            expected,
        )
        .await?,
    ))
}

/// `If-Match: <metadata.resource_version>` (quoted or not): the version a
/// write expects the object to be at.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or_default().trim().trim_matches('"');
    text.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "`If-Match: {text}` is not a resource version: send the object's `metadata.resource_version` as read"
        ))
    })
}

async fn delete_pipeline(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, pipeline)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    engine
        .delete_pipeline_at(&pipeline, if_match(&headers)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn trigger(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, pipeline)): Path<(String, String)>,
    body: Body,
) -> Result<(StatusCode, Json<PipelineExecution>), ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    let bytes = read_body(body, state.limits.max_body, "--max-body").await?;
    let body: TriggerBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        TriggerBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "the trigger body does not fit (`params`, `branch`, `commit`, `event`, `ref`): {e}"
            ))
        })?
    };
    if !body.reference.is_empty() {
        if !body.commit.is_empty() || !body.branch.is_empty() {
            return Err(ApiError::bad_request(
                "give `ref` (a branch or a full commit SHA) or `branch`/`commit`, not both",
            ));
        }
        let is_sha = matches!(body.reference.len(), 40 | 64)
            && body.reference.bytes().all(|b| b.is_ascii_hexdigit());
        let (branch, commit) = if is_sha {
            (String::new(), body.reference)
        } else {
            (body.reference, String::new())
        };
        let run = engine
            .run_from_repo(arkline::RepoEvent {
                event: body.event,
                branch,
                commit,
                kind: arkline::model::TriggerKind::Manual,
                only: Some(pipeline.clone()),
                params: body.params,
                ..arkline::RepoEvent::default()
            })
            .await?;
        let Some(name) = run.executions().first().map(|n| (*n).to_owned()) else {
            return Err(ApiError::internal(format!(
                "pipeline `{pipeline}` was read at {} but did not start",
                run.commit
            )));
        };
        let exec = execution_of(&engine, &name).await?;
        return Ok((StatusCode::CREATED, Json(exec)));
    }
    let request = TriggerRequest {
        params: body.params,
        event: body.event,
        branch: body.branch,
        commit: body.commit,
        ..TriggerRequest::manual()
    };
    let exec = engine.trigger(&pipeline, request).await?;
    Ok((StatusCode::CREATED, Json(exec)))
}

async fn list_executions(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    let mut params = ListParams::parse(raw.as_deref(), &["pipeline"])?;
    // `pipeline=p` is `labelSelector=arkline.dev/pipeline=p`.
    if let Some(pipeline) = params.extra.remove("pipeline") {
        params.selector = std::mem::take(&mut params.selector).and(
            arkline::store::Requirement::Equals(arkline::engine::PIPELINE_LABEL.into(), pipeline),
        );
    }
    // Newest first: by creation, then run number (zero-padded, so the keys
    // compare as the numbers do), then name.
    let order = Order {
        key: |e: &PipelineExecution| {
            let created = e.metadata.created.map_or_else(String::new, |t| {
                t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            });
            format!("{created}\u{1f}{:020}\u{1f}{}", e.spec.run, e.metadata.name)
        },
        descending: true,
    };
    list_or_watch(&state, &engine, params, &headers, order).await
}

async fn execution_of(engine: &Engine, execution: &str) -> Result<PipelineExecution, ApiError> {
    engine.execution(execution).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "execution `{execution}` does not exist in engine `{}`: list them with `GET /api/v1/engines/{}/executions`",
            engine.name(),
            engine.name()
        ))
    })
}

async fn get_execution(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, execution)): Path<(String, String)>,
) -> Result<Json<PipelineExecution>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    Ok(Json(execution_of(&engine, &execution).await?))
}

async fn abort_execution(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, execution)): Path<(String, String)>,
) -> Result<Json<PipelineExecution>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    Ok(Json(engine.abort(&execution).await?))
}

async fn rerun_execution(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, execution)): Path<(String, String)>,
) -> Result<(StatusCode, Json<PipelineExecution>), ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    Ok((StatusCode::CREATED, Json(engine.rerun(&execution).await?)))
}

async fn decide_approval(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, execution, step)): Path<(String, String, String)>,
    body: Body,
) -> Result<Json<PipelineExecution>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    let bytes = read_body(body, state.limits.max_body, "--max-body").await?;
    let body: DecisionBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the decision body does not fit (`{{\"decision\": \"approve\" | \"reject\", \"comment\": \"…\"}}`): {e}"
        ))
    })?;
    let (by, groups) = caller.identity();
    let decision = arkline::engine::Decision {
        approve: body.decision == DecisionKind::Approve,
        by,
        groups,
        comment: body.comment,
    };
    Ok(Json(engine.decide(&execution, &step, decision).await?))
}

async fn step_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, execution, step)): Path<(String, String, String)>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    let LogsQuery { follow, format } = query(q)?;
    if follow && format == LogFormat::Text {
        return Err(ApiError::bad_request(
            "`format=text` is the whole log as a download; follow a log live with `follow=true` alone",
        ));
    }
    let exec = execution_of(&engine, &execution).await?;
    // `@source` is the host's checkout of the pipeline's `source`.
    if !step_names(&exec).any(|s| s == step) && !exec.status.logs.contains_key(&step) {
        return Err(ApiError::not_found(format!(
            "execution `{execution}` has no step `{step}`; its steps: {}",
            step_names(&exec).collect::<Vec<_>>().join(", ")
        )));
    }
    // An unfinished execution another live node runs: its log is being
    // written there, so that node answers (once ended, the log is in the
    // archive every node reads). Forwarded once at most.
    if !exec.status.phase.is_finished()
        && !headers.contains_key(FORWARDED)
        && let Some(owner) = exec.status.node.as_deref()
        && let Some(address) = state.peer_address(owner).await
    {
        // The dashboard's session is this node's: the peer gets its token.
        let mut headers = headers.clone();
        if !headers.contains_key(axum::http::header::AUTHORIZATION)
            && let Ok(Some(id)) = super::auth::session_cookie(&headers)
            && let Some(token) = state.sessions.token(&id)
            && let Ok(value) = axum::http::HeaderValue::from_str(&format!("Bearer {token}"))
        {
            headers.insert(axum::http::header::AUTHORIZATION, value);
        }
        return forward(&address, &uri, &headers).await;
    }
    let wants_stream = follow
        || headers
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
    if format == LogFormat::Text {
        let lines = engine.logs(&execution, &step).await?;
        return Ok(text_log(
            &execution,
            &step,
            lines.into_iter().map(LogLine::from),
        ));
    }
    if !wants_stream {
        let lines = engine.logs(&execution, &step).await?;
        return Ok(Json(lines.into_iter().map(LogLine::from).collect::<Vec<_>>()).into_response());
    }
    Ok(Sse::new(follow_events(state, engine, execution, step))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A log as `text/plain`, one message per line, offered as the file
/// `<execution>-<step>.log` (characters a file name should not hold become
/// `_`).
fn text_log(execution: &str, step: &str, lines: impl Iterator<Item = LogLine>) -> Response {
    let mut body = String::new();
    for line in lines {
        body.push_str(line.message.trim_end_matches('\n'));
        body.push('\n');
    }
    let file: String = format!("{execution}-{step}.log")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    (
        [
            (CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
            // What a guest wrote, served from the dashboard's origin: never
            // sniffed as anything but text, and sandboxed if opened.
            (
                axum::http::header::X_CONTENT_TYPE_OPTIONS,
                "nosniff".to_owned(),
            ),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "sandbox; default-src 'none'".to_owned(),
            ),
        ],
        body,
    )
        .into_response()
}

/// Marks a request one node forwarded to another.
const FORWARDED: &str = "x-arkline-forwarded-by";

/// Sends `uri` (path and query) to the node at `address` with the caller's
/// credentials, and streams its answer back as it comes.
async fn forward(
    address: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default()
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = client
        .get(format!("{}{path}", address.trim_end_matches('/')))
        .header(FORWARDED, "1");
    for name in [
        axum::http::header::AUTHORIZATION,
        ACCEPT,
        axum::http::HeaderName::from_static("last-event-id"),
    ] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = request.send().await.map_err(|e| {
        ApiError::peer_unavailable(format!(
            "the step runs on the node at {address}, which does not answer: {e}; try again, or once the step has ended"
        ))
    })?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::builder().status(status);
    for name in [
        reqwest::header::CONTENT_TYPE,
        reqwest::header::CONTENT_DISPOSITION,
        reqwest::header::X_CONTENT_TYPE_OPTIONS,
        reqwest::header::CONTENT_SECURITY_POLICY,
    ] {
        if let Some(value) = answer.headers().get(&name) {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .map_err(|e| ApiError::internal(format!("cannot relay the answer: {e}")))
}

/// `line` events, then one `end` event with the step's phase; cut short (without
/// `end`) when the server shuts down.
fn follow_events(
    state: AppState,
    engine: Engine,
    execution: String,
    step: String,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let lines = engine.follow_logs(&execution, &step).map(|item| {
        Ok(match item {
            Ok(line) => {
                let seq = line.seq;
                let data = serde_json::to_string(&LogLine::from(line)).unwrap_or_default();
                Event::default().event("line").id(seq.to_string()).data(data)
            }
            Err(e) => Event::default().event("error").data(
                serde_json::json!({"code": "internal", "message": format!("reading the log failed: {e}")})
                    .to_string(),
            ),
        })
    });
    let end = futures::stream::once(async move {
        let phase = match engine.execution(&execution).await {
            Ok(Some(exec)) => phase_name(step_phase(&exec, &step)),
            _ => "Unknown".to_owned(),
        };
        let data = serde_json::to_string(&LogEnd { phase }).unwrap_or_default();
        Ok(Event::default().event("end").data(data))
    });
    lines
        .chain(end)
        .take_until(Box::pin(async move { state.shutting_down().await }))
}

/// The settings with their version as an `ETag` (`"0"` when none were
/// applied), for a conditional `PUT`.
fn settings_answer(setting: Option<arkline::PipelineSetting>) -> Response {
    let (version, spec) = setting.map_or((0, PipelineSettingSpec::default()), |s| {
        (s.metadata.resource_version, s.spec)
    });
    let mut response = Json(spec).into_response();
    if let Ok(tag) = axum::http::HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(axum::http::header::ETAG, tag);
    }
    response
}

async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    Ok(settings_answer(engine.settings_object().await?))
}

async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    let expected = if_match(&headers)?;
    let spec: PipelineSettingSpec = read_json(&state, body).await?;
    let stored = engine.apply_settings_at(spec, expected).await?;
    Ok(settings_answer(Some(stored)))
}

async fn get_provenance_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ProvenanceKey>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    match engine.provenance_key().await {
        Ok(Some((key_secret, key))) => Ok(Json(ProvenanceKey {
            key_secret,
            public_key: key.to_string(),
            key_id: key.id(),
        })),
        Ok(None) => Err(ApiError::not_found(format!(
            "engine `{name}` signs no provenance: set its `provenance.key_secret` setting to a secret holding an ed25519 key (`cargo ark keygen`)"
        ))),
        Err(arkline::EngineError::InvalidSettings(message)) => Err(ApiError::conflict(message)),
        Err(e) => Err(e.into()),
    }
}

async fn list_secrets(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<SecretNames>, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Read)?;
    let mut names = engine.secret_names().await?;
    names.sort();
    Ok(Json(SecretNames { names }))
}

fn check_secret_name(secret: &str) -> Result<(), ApiError> {
    let ok = (1..=253).contains(&secret.len())
        && secret.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_'
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`{secret}` is not a valid secret name: use 1 to 253 lowercase letters, digits, `-`, `_` or `.`"
        )))
    }
}

async fn put_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, secret)): Path<(String, String)>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    check_secret_name(&secret)?;
    let SecretBody { value } = read_json(&state, body).await?;
    engine.set_secret(&secret, &value).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, secret)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let engine = scoped(&state, &caller, &name, Access::Write)?;
    if engine.delete_secret(&secret).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "secret `{secret}` does not exist in engine `{name}`"
        )))
    }
}

/// Answer for paths no route serves.
pub async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!(
            "no route for {method} {}: the routes are listed in /api/v1/openapi.json",
            uri.path()
        ),
    )
}

/// Answer for a known path with a method it does not serve.
pub async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}: the methods it takes are listed in /api/v1/openapi.json",
            uri.path()
        ),
    )
}
