//! `POST /hooks/{engine}/{pipeline}`: GitHub-, GitLab-, Gitea- and
//! Forgejo-compatible webhooks.
//!
//! A delivery is authenticated with the pipeline's webhook secret (the engine
//! secret its webhook trigger names with `secret:`): GitHub's
//! `X-Hub-Signature-256` HMAC of the body, Gitea's and Forgejo's
//! `X-Gitea-Signature`/`X-Forgejo-Signature` (the same HMAC in bare hex), or
//! GitLab's `X-Gitlab-Token`. It is
//! then read as an event (`push`, `tag`, `pull_request`), a branch and a
//! commit ([`delivery`]), matched against the trigger's `events` and `branch`
//! filters, and, when one accepts it, starts an execution whose spec carries
//! the event, branch and commit (`trigger: webhook`).
//!
//! Answers, all JSON:
//! - `202 {"triggered": true, "execution": …}` — an execution was created;
//! - `200 {"triggered": false, "reason": …}` — authenticated, nothing to run
//!   (GitHub's `ping`, an event or branch the trigger does not accept, a branch
//!   deletion, a closed pull request, or a delivery id already seen within the
//!   replay window: then `execution` names the first delivery's execution; see
//!   [`replay`]);
//! - errors `{"code", "message"}`: 400 (not a GitHub/GitLab delivery, bad JSON),
//!   401 (no signature, or nothing here verifies it; nothing is triggered),
//!   408 (the body did not arrive in time), 413 (body over [`MAX_BODY`]), 422
//!   (the pipeline needs params a webhook cannot give).
//!
//! The endpoint needs no admin token: the signature is the credential. Until it
//! is verified, the answer does not depend on what exists: an unknown engine,
//! an unknown pipeline, a pipeline without a webhook trigger, a trigger whose
//! secret is not set and a wrong signature all get the same `401` (the server
//! logs which it was), so an unauthenticated caller cannot map engines and
//! pipelines.

pub mod delivery;
pub mod registry;
pub mod replay;
pub mod repo;
pub mod signature;

use std::collections::BTreeMap;

use arkline::TriggerError;
use arkline::model::{Filter, Pipeline, TriggerKind};
use arkline::{Engine, EngineError, TriggerRequest};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;

use self::delivery::{Delivery, Provider};
use self::replay::Claim;
use self::signature::{GithubSignature, SignatureError};
use super::AppState;

/// The largest delivery body accepted, in bytes (GitHub caps payloads at 25 MB
/// but pushes of normal size are a few KiB; 1 MiB leaves room for big pushes).
pub const MAX_BODY: usize = 1 << 20;

/// Label: which forge sent the delivery (`github`, `gitlab`).
pub const PROVIDER_LABEL: &str = "arkline.dev/webhook-provider";
/// Label: the forge's delivery id (`X-GitHub-Delivery`, `X-Gitlab-Event-UUID`,
/// `X-Gitea-Delivery`).
pub const DELIVERY_LABEL: &str = "arkline.dev/webhook-delivery";

/// A refused delivery: `{code, message}` with an HTTP status (the admin API's
/// error shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HookError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "webhook: {what}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what}: {e}"),
        )
    }
}

impl IntoResponse for HookError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({ "code": self.code, "message": self.message })),
        )
            .into_response();
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may never come: do not wait for it.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// The one answer to a delivery that cannot be verified, whatever the reason:
/// unknown engine or pipeline, no webhook trigger, no secret set, wrong
/// signature. `why` goes to the log only.
fn unverified(engine: &str, pipeline: &str, why: &str) -> HookError {
    tracing::warn!(engine, pipeline, "webhook refused: {why}");
    HookError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the delivery cannot be verified: no webhook at this address has a secret that \
         matches its signature or token; check the webhook's URL and secret (the server's \
         log says which)",
    )
}

/// One webhook trigger of the pipeline.
struct Hook {
    events: Vec<String>,
    branch: Filter,
    secret: Option<String>,
}

impl Hook {
    fn accepts(&self, event: &str, branch: &str) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| e == event))
            && self.branch.matches(branch)
    }

    fn describe(&self) -> String {
        let events = if self.events.is_empty() {
            "any event".to_owned()
        } else {
            format!("events [{}]", self.events.join(", "))
        };
        let branch = if self.branch.is_empty() {
            "any branch".to_owned()
        } else {
            let mut parts = Vec::new();
            if !self.branch.include.is_empty() {
                parts.push(format!("include [{}]", self.branch.include.join(", ")));
            }
            if !self.branch.exclude.is_empty() {
                parts.push(format!("exclude [{}]", self.branch.exclude.join(", ")));
            }
            format!("branch {}", parts.join(" "))
        };
        format!("{events} on {branch}")
    }
}

/// What every delivery goes through before anything is looked up, so these
/// answers are the same for every address: the forge and event from the
/// headers, the size, the signature or token header, the body (within
/// [`MAX_BODY`]).
async fn admit(
    headers: &HeaderMap,
    body: Body,
) -> Result<(Provider, String, Credential<'_>, Vec<u8>), HookError> {
    let (provider, event) = provider_of(headers)?;
    if let Some(len) = header(headers, "content-length").and_then(|l| l.parse::<u64>().ok())
        && len > MAX_BODY as u64
    {
        return Err(HookError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the delivery is {len} bytes, over the {MAX_BODY} bytes a webhook may send"),
        ));
    }
    let credential = Credential::parse(provider, headers)?;
    let body = read_body(body).await?;
    Ok((provider, event, credential, body))
}

/// The verified body as JSON, and what it means.
fn read_delivery(
    provider: Provider,
    event: &str,
    body: &[u8],
) -> Result<(serde_json::Value, Delivery), HookError> {
    let payload: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        HookError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the delivery's body is not JSON: {e}"),
        )
    })?;
    let delivery = match provider {
        Provider::Github => delivery::github(event, &payload),
        Provider::Gitlab => delivery::gitlab(event, &payload),
        Provider::Gitea => delivery::gitea(event, &payload),
    }
    .map_err(|e| HookError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    Ok((payload, delivery))
}

/// The forge that sent a delivery and its event, from the event headers.
fn provider_of(headers: &HeaderMap) -> Result<(Provider, String), HookError> {
    let gitea = header(headers, "x-gitea-event").or_else(|| header(headers, "x-forgejo-event"));
    let (provider, event) = if let Some(e) = gitea {
        (Provider::Gitea, e.to_owned())
    } else if let Some(e) = header(headers, "x-github-event") {
        (Provider::Github, e.to_owned())
    } else if let Some(e) = header(headers, "x-gitlab-event") {
        (Provider::Gitlab, e.to_owned())
    } else {
        return Err(HookError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "not a GitHub, GitLab, Gitea or Forgejo delivery: it has no `X-GitHub-Event`, `X-Gitlab-Event`, `X-Gitea-Event` or `X-Forgejo-Event` header",
        ));
    };
    Ok((provider, event))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Reads the body, refusing it as soon as it passes [`MAX_BODY`] (whatever
/// `Content-Length` claims).
async fn read_body(body: Body) -> Result<Vec<u8>, HookError> {
    let too_large = || {
        HookError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the delivery is larger than {MAX_BODY} bytes, the most a webhook may send"),
        )
    };
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match super::connections::body_timeout(&e) {
            Some(timeout) => HookError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                timeout.to_string(),
            ),
            None => HookError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("cannot read the delivery's body: {e}"),
            ),
        })?;
        if out.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// No delivery that cannot be verified is answered sooner than this after it
/// arrived: whether the engine (or pipeline) exists, has a secret, or the
/// secret did not match, the refusal takes the same time, so its timing does
/// not tell which engines exist.
const UNVERIFIED_FLOOR: std::time::Duration = std::time::Duration::from_millis(200);

/// Holds back a refusal of an unverified delivery until [`UNVERIFIED_FLOOR`]
/// after `started`.
pub(crate) async fn evened<T>(
    started: tokio::time::Instant,
    result: Result<T, HookError>,
) -> Result<T, HookError> {
    if let Err(e) = &result
        && e.status == StatusCode::UNAUTHORIZED
    {
        tokio::time::sleep_until(started + UNVERIFIED_FLOOR).await;
    }
    result
}

pub(crate) async fn receive(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HookError> {
    let started = tokio::time::Instant::now();
    evened(started, receive_verified(state, path, headers, body).await).await
}

async fn receive_verified(
    State(state): State<AppState>,
    Path((engine_name, pipeline_name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HookError> {
    let (provider, event, credential, body) = admit(&headers, body).await?;

    // Never start an engine for a delivery: only those already running answer.
    let Some(engine) = state
        .container
        .engines()
        .into_iter()
        .find(|e| e.name() == engine_name)
    else {
        return Err(unverified(&engine_name, &pipeline_name, "no such engine"));
    };
    let Some(pipeline) = engine
        .pipeline(&pipeline_name)
        .await
        .map_err(|e| HookError::internal("cannot read the pipeline", e))?
    else {
        return Err(unverified(&engine_name, &pipeline_name, "no such pipeline"));
    };
    let hooks = webhook_triggers(&pipeline);
    if hooks.is_empty() {
        return Err(unverified(
            &engine_name,
            &pipeline_name,
            "the pipeline has no webhook trigger; add one to its `triggers`, e.g. \
             `{type: webhook, events: [push], secret: <secret name>}`",
        ));
    }
    let accepted = authenticate(&engine, &pipeline_name, &hooks, &credential, &body).await?;

    let (_, delivery) = read_delivery(provider, &event, &body)?;
    let run = match delivery {
        Delivery::Ping => {
            return Ok(not_triggered(
                "ping: the webhook reaches arkline and its signature checks out".into(),
            ));
        }
        Delivery::Ignored(reason) => return Ok(not_triggered(reason)),
        Delivery::Run(run) => run,
    };
    if !accepted.iter().any(|h| h.accepts(run.event, &run.branch)) {
        let wanted: Vec<String> = accepted.iter().map(|h| h.describe()).collect();
        return Ok(not_triggered(format!(
            "pipeline `{pipeline_name}` does not run on `{}` of `{}`: its webhook trigger accepts {}",
            run.event,
            run.branch,
            wanted.join("; or ")
        )));
    }

    let mut labels: BTreeMap<String, String> = run
        .labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    labels.insert(PROVIDER_LABEL.into(), provider.as_str().into());
    // Replays are refused by two keys, each claimed in the store for the
    // window: the forge's delivery id, and the digest of the signed body (the
    // id header is not covered by the signature, so a captured delivery sent
    // again with a new id, or none, is still the same body).
    let delivery_id = delivery_id(provider, &headers);
    if let Some(id) = delivery_id {
        labels.insert(DELIVERY_LABEL.into(), id.to_owned());
    }
    let claims = match claim_delivery(
        &state,
        &engine_name,
        &pipeline_name,
        provider,
        delivery_id,
        &body,
    )
    .await?
    {
        Ok(claims) => claims,
        Err(seen) => return Ok(seen),
    };
    let request = TriggerRequest {
        event: run.event.to_owned(),
        branch: run.branch.clone(),
        commit: run.commit.clone(),
        kind: TriggerKind::Webhook,
        labels,
        ..TriggerRequest::default()
    };
    let triggered = engine.trigger(&pipeline_name, request).await;
    let store = state.container.store();
    let exec = match triggered {
        Ok(exec) => {
            for claimed in claims {
                if let Err(e) = replay::record(store, claimed, &exec.metadata.name).await {
                    // The claim stands (a copy is still refused); only the name
                    // of the execution is missing from it.
                    tracing::warn!(error = %e, execution = %exec.metadata.name, "webhook: cannot record the delivery's execution");
                }
            }
            exec
        }
        Err(e) => {
            for claimed in &claims {
                if let Err(release) = replay::release(store, claimed).await {
                    tracing::warn!(error = %release, "webhook: cannot release the delivery id");
                }
            }
            return Err(match e {
                EngineError::Trigger(TriggerError::NoPipeline { .. }) => {
                    HookError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
                }
                EngineError::Trigger(TriggerError::Params { .. }) => HookError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_request",
                    format!("{e}; a webhook gives no params, so declare defaults for them"),
                ),
                e => HookError::internal("cannot create the execution", e),
            });
        }
    };
    tracing::info!(
        engine = %engine_name,
        pipeline = %pipeline_name,
        execution = %exec.metadata.name,
        event = run.event,
        branch = %run.branch,
        commit = %run.commit,
        "webhook started an execution"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "triggered": true,
            "engine": engine_name,
            "pipeline": pipeline_name,
            "execution": exec.metadata.name,
            "event": run.event,
            "branch": run.branch,
            "commit": run.commit,
        })),
    )
        .into_response())
}

/// Claims the delivery's id and the digest of its body for the replay
/// window: `Ok(claims)` when neither was seen (record or release them),
/// `Err(answer)` with the 200 "duplicate delivery" answer otherwise.
pub(crate) async fn claim_delivery(
    state: &AppState,
    engine_name: &str,
    pipeline_name: &str,
    provider: Provider,
    delivery_id: Option<&str>,
    body: &[u8],
) -> Result<Result<Vec<Box<arkline::model::DynamicObject>>, Response>, HookError> {
    let body_key = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)))
    };
    let mut claims = Vec::new();
    for key in delivery_id.into_iter().chain([body_key.as_str()]) {
        let claim = replay::claim(
            state.container.store(),
            engine_name,
            pipeline_name,
            provider.as_str(),
            key,
            state.webhook_dedup_window,
        )
        .await
        .map_err(|e| HookError::internal("cannot check the delivery id", e))?;
        match claim {
            Claim::New(claimed) => claims.push(claimed),
            Claim::Seen { execution } => {
                for claimed in &claims {
                    if let Err(release) = replay::release(state.container.store(), claimed).await {
                        tracing::warn!(error = %release, "webhook: cannot release the delivery id");
                    }
                }
                let reason = if key == body_key {
                    format!(
                        "duplicate delivery: a delivery with the same signed body arrived within the last {}",
                        humantime::format_duration(state.webhook_dedup_window)
                    )
                } else {
                    format!("duplicate delivery {key}")
                };
                tracing::info!(engine = %engine_name, pipeline = %pipeline_name, delivery = ?delivery_id, "webhook: {reason}");
                return Ok(Err((
                    StatusCode::OK,
                    Json(json!({
                        "triggered": false,
                        "reason": reason,
                        "execution": execution,
                    })),
                )
                    .into_response()));
            }
        }
    }
    Ok(Ok(claims))
}

fn not_triggered(reason: String) -> Response {
    (
        StatusCode::OK,
        Json(json!({ "triggered": false, "reason": reason })),
    )
        .into_response()
}

fn webhook_triggers(pipeline: &Pipeline) -> Vec<Hook> {
    pipeline
        .spec
        .triggers
        .iter()
        .filter_map(|t| match t {
            arkline::model::Trigger::Webhook {
                events,
                branch,
                secret,
            } => Some(Hook {
                events: events.clone(),
                branch: branch.clone(),
                secret: secret.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// The forge's id of a delivery, when it sends one of a plausible length:
/// GitHub's `X-GitHub-Delivery`; GitLab's `Idempotency-Key` (the same across
/// its retries) or else `X-Gitlab-Event-UUID`.
fn delivery_id(provider: Provider, headers: &HeaderMap) -> Option<&str> {
    let id = match provider {
        Provider::Github => header(headers, "x-github-delivery"),
        Provider::Gitea => header(headers, "x-gitea-delivery")
            .or_else(|| header(headers, "x-forgejo-delivery"))
            .or_else(|| header(headers, "x-github-delivery")),
        Provider::Gitlab => header(headers, "idempotency-key")
            .filter(|id| !id.is_empty())
            .or_else(|| header(headers, "x-gitlab-event-uuid")),
    };
    id.filter(|id| !id.is_empty() && id.len() <= replay::MAX_ID_LEN)
}

/// What the delivery presents as its credential.
enum Credential<'a> {
    Github(GithubSignature),
    Gitlab(&'a str),
}

impl<'a> Credential<'a> {
    /// Reads the signature or token header; its absence is said the same way
    /// for every address.
    fn parse(provider: Provider, headers: &'a HeaderMap) -> Result<Self, HookError> {
        let refused = |e: SignatureError| {
            tracing::warn!("webhook refused: {e}");
            HookError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
        };
        match provider {
            Provider::Github => header(headers, "x-hub-signature-256")
                .ok_or(SignatureError::MissingGithubSignature)
                .and_then(GithubSignature::parse)
                .map(Credential::Github)
                .map_err(refused),
            Provider::Gitlab => header(headers, "x-gitlab-token")
                .ok_or(SignatureError::MissingGitlabToken)
                .map(Credential::Gitlab)
                .map_err(refused),
            Provider::Gitea => header(headers, "x-gitea-signature")
                .or_else(|| header(headers, "x-forgejo-signature"))
                .ok_or(SignatureError::MissingGiteaSignature)
                .and_then(GithubSignature::parse_gitea)
                .map(Credential::Github)
                .map_err(refused),
        }
    }

    fn verifies(&self, secret: &str, body: &[u8]) -> bool {
        match self {
            Credential::Github(sig) => sig.verifies(secret.as_bytes(), body),
            Credential::Gitlab(token) => signature::gitlab_token_matches(token, secret),
        }
    }
}

/// Checks the delivery against the secret of each webhook trigger; answers the
/// triggers whose secret it carries (at least one, or the one [`unverified`]
/// error).
async fn authenticate<'h>(
    engine: &Engine,
    pipeline: &str,
    hooks: &'h [Hook],
    credential: &Credential<'_>,
    body: &[u8],
) -> Result<Vec<&'h Hook>, HookError> {
    let mut names: Vec<&str> = hooks.iter().filter_map(|h| h.secret.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Err(unverified(
            engine.name(),
            pipeline,
            "its webhook trigger names no secret; add `secret: <name>` (an engine secret \
             also listed in the pipeline's `secrets`) and give the forge the same value",
        ));
    }
    let total = names.len();
    let mut matched: Vec<&str> = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    for name in names {
        let value = engine
            .secret_value(name)
            .await
            .map_err(|e| HookError::internal("cannot read the webhook secret", e))?;
        let Some(value) = value else {
            missing.push(name);
            continue;
        };
        if credential.verifies(&value, body) {
            matched.push(name);
        }
    }
    if matched.is_empty() {
        let why = if missing.len() == total {
            format!(
                "the engine has no secret `{}`, which the webhook trigger names: set it to the \
                 forge's webhook secret",
                missing.join("`, `")
            )
        } else {
            SignatureError::Mismatch.to_string()
        };
        return Err(unverified(engine.name(), pipeline, &why));
    }
    Ok(hooks
        .iter()
        .filter(|h| h.secret.as_deref().is_some_and(|s| matched.contains(&s)))
        .collect())
}
