//! `POST /registry-hooks/{engine}`: image pushes from a container registry
//! start the engine's pipelines whose `image_push` triggers accept them.
//!
//! Two senders are understood:
//! - CNCF distribution's notifications (`docker-registry`, and registries
//!   built on it): an envelope `{"events": [...]}` of media type
//!   `application/vnd.docker.distribution.events.v1+json`; each event with
//!   action `push` and a manifest (or index) as its target is a push, with
//!   the repository, digest, tag (none for a push by digest) and the
//!   registry's host from the request;
//! - Harbor's webhook (`"type": "PUSH_ARTIFACT"`): each resource of
//!   `event_data.resources` is a push of `event_data.repository`.
//!
//! The sender is authenticated with the engine's `registry_notifications`
//! setting: its `Authorization` header must hold the token of the secret
//! the setting names (`Bearer <token>`, or the token alone), compared in
//! constant time. Until then every refusal is the same 401, as for forge
//! webhooks.
//!
//! Each event is remembered by its id (distribution's event id; for Harbor,
//! the digest of the resource with the event's time) for the replay window,
//! per pipeline, so a notification sent again starts nothing. A pipeline
//! does not run for an image it published itself (an output of one of its
//! last executions holds the pushed digest) unless its trigger says
//! `self: true`: a pipeline that publishes the image that triggers it would
//! otherwise loop.
//!
//! Answers: `202 {"triggered": true, "executions": [...], "skipped": [...]}`
//! when something started; `200 {"triggered": false, "reason", "skipped"}`
//! when nothing did (no push in the notification, or no trigger accepts
//! it); 400 for a body that is neither; 401 as said.

use std::collections::BTreeMap;

use arkline::model::{ImagePush, Pipeline, PipelineExecution, Trigger, TriggerKind};
use arkline::{Engine, EngineError, TriggerError, TriggerRequest};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{
    DELIVERY_LABEL, HookError, MAX_BODY, PROVIDER_LABEL, header, not_triggered, read_body, replay,
    unverified,
};
use crate::serve::AppState;

/// The replay records' pipeline part is the pipeline; this is their source.
const SOURCE: &str = "registry";

/// How many of a pipeline's latest executions are looked at for the digest
/// it is asked to run for (the loop check).
const LOOP_WINDOW: usize = 50;

/// The media types of what a push of an image puts under a tag or digest.
const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

/// One push read from a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Push {
    /// The event's id, for replays.
    id: String,
    /// Which sender (`distribution`, `harbor`): a label on the execution.
    sender: &'static str,
    /// The repository as the registry names it (`team/app`).
    repository: String,
    /// The registry's host (`registry.example.com:5000`), when given.
    host: String,
    digest: String,
    /// Empty for a push by digest.
    tag: String,
    /// The pusher's `User-Agent` (distribution's `request.useragent`): the
    /// `image` biz names its engine and pipeline in it.
    agent: String,
}

impl Push {
    /// What the execution reads as `trigger.*`: the image with its host
    /// when known.
    fn image(&self) -> ImagePush {
        ImagePush {
            image: if self.host.is_empty() {
                self.repository.clone()
            } else {
                format!("{}/{}", self.host, self.repository)
            },
            digest: self.digest.clone(),
            tag: self.tag.clone(),
        }
    }
}

fn bad_request(message: impl Into<String>) -> HookError {
    HookError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// The pushes in a notification body (empty when it holds none, such as
/// distribution's pull or blob events).
fn pushes(body: &[u8]) -> Result<Vec<Push>, HookError> {
    let payload: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("the notification's body is not JSON: {e}")))?;
    if let Some(events) = payload.get("events") {
        let events = events.as_array().ok_or_else(|| {
            bad_request("`events` is not a list: not a distribution notification envelope")
        })?;
        return Ok(events.iter().filter_map(distribution_push).collect());
    }
    match payload.get("type").and_then(Value::as_str) {
        Some("PUSH_ARTIFACT") => harbor_pushes(&payload),
        Some(_) => Ok(Vec::new()),
        None => Err(bad_request(
            "not a registry notification: neither distribution's envelope (`events`) nor a \
             Harbor webhook (`type`)",
        )),
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// A distribution event, when it is the push of a manifest.
fn distribution_push(event: &Value) -> Option<Push> {
    if text(event, "/action") != "push" {
        return None;
    }
    let media = text(event, "/target/mediaType");
    if !MANIFEST_TYPES.contains(&media) {
        return None;
    }
    let (id, repository, digest) = (
        text(event, "/id"),
        text(event, "/target/repository"),
        text(event, "/target/digest"),
    );
    if id.is_empty() || repository.is_empty() || digest.is_empty() {
        return None;
    }
    Some(Push {
        id: id.to_owned(),
        sender: "distribution",
        repository: repository.to_owned(),
        host: text(event, "/request/host").to_owned(),
        digest: digest.to_owned(),
        tag: text(event, "/target/tag").to_owned(),
        agent: text(event, "/request/useragent").to_owned(),
    })
}

/// Harbor's `PUSH_ARTIFACT`: one push per resource.
fn harbor_pushes(payload: &Value) -> Result<Vec<Push>, HookError> {
    let repository = text(payload, "/event_data/repository/repo_full_name");
    if repository.is_empty() {
        return Err(bad_request(
            "a Harbor PUSH_ARTIFACT without `event_data.repository.repo_full_name`",
        ));
    }
    let when = payload
        .get("occur_at")
        .map(ToString::to_string)
        .unwrap_or_default();
    let resources = payload
        .pointer("/event_data/resources")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    Ok(resources
        .iter()
        .filter(|r| !text(r, "/digest").is_empty())
        .map(|r| {
            let (digest, tag) = (text(r, "/digest"), text(r, "/tag"));
            // `resource_url` is `host/project/repo:tag` (or `@digest`).
            let url = text(r, "/resource_url");
            let host = url
                .split_once('/')
                .map(|(h, _)| h)
                .filter(|h| h.contains(['.', ':']))
                .unwrap_or("");
            let id = sha2::Sha256::digest(format!("{repository}\0{digest}\0{tag}\0{when}"));
            Push {
                id: format!("harbor-{}", hex::encode(&id[..16])),
                sender: "harbor",
                repository: repository.to_owned(),
                host: host.to_owned(),
                digest: digest.to_owned(),
                tag: tag.to_owned(),
                agent: String::new(),
            }
        })
        .collect())
}

/// Why a push's fields cannot be used (they reach pipelines as
/// `trigger.*`, and scripts may use them): the distribution spec's grammar
/// for repository names, tags and digests, and a host name with a port.
fn invalid(push: &Push) -> Option<String> {
    let component = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    };
    if push.repository.len() > 255 || !push.repository.split('/').all(component) {
        return Some(format!("`{}` is not a repository name", push.repository));
    }
    let tag_ok = push.tag.is_empty()
        || (push.tag.len() <= 128
            && push.tag.as_bytes()[0] != b'.'
            && push.tag.as_bytes()[0] != b'-'
            && push
                .tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    if !tag_ok {
        return Some(format!("`{}` is not a tag", push.tag));
    }
    let digest_ok = push.digest.split_once(':').is_some_and(|(algo, hex)| {
        !algo.is_empty()
            && algo
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
            && hex.len() >= 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    });
    if !digest_ok {
        return Some(format!("`{}` is not a digest", push.digest));
    }
    let host_ok = push.host.len() <= 255
        && push
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !host_ok {
        return Some(format!("`{}` is not a registry host", push.host));
    }
    None
}

/// Whether the `image` biz of `engine`'s `pipeline` made the push: its
/// registry client's `User-Agent` says `(engine=E; pipeline=P; …)`.
fn pushed_by(push: &Push, engine: &str, pipeline: &str) -> bool {
    push.agent.contains(&format!("engine={engine};"))
        && push.agent.contains(&format!("pipeline={pipeline};"))
}

/// Whether `authorization` carries `token` (`Bearer <token>` or the token).
fn authorized(authorization: Option<&str>, token: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let given = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or(value)
        .trim();
    !token.is_empty() && super::signature::gitlab_token_matches(given, token)
}

/// The image-push triggers of a pipeline that accept `push`; `Some(own)`
/// when one does (`own`: it also runs for its own images).
fn accepting(pipeline: &Pipeline, push: &Push) -> Option<bool> {
    pipeline
        .spec
        .triggers
        .iter()
        .filter(|t| t.accepts_image(&push.repository, &push.host, &push.tag))
        .map(|t| matches!(t, Trigger::ImagePush { own: true, .. }))
        .reduce(|a, b| a || b)
}

/// The execution among the pipeline's latest whose outputs hold `digest`.
fn published_by<'a>(executions: &'a [PipelineExecution], digest: &str) -> Option<&'a str> {
    executions
        .iter()
        .take(LOOP_WINDOW)
        .find(|x| {
            x.status.outputs.values().any(|outputs| {
                outputs
                    .values()
                    .any(|v| v == digest || v.ends_with(&format!("@{digest}")))
            })
        })
        .map(|x| x.metadata.name.as_str())
}

pub(crate) async fn receive(
    state: State<AppState>,
    path: Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HookError> {
    let started = tokio::time::Instant::now();
    super::evened(started, receive_verified(state, path, headers, body).await).await
}

async fn receive_verified(
    State(state): State<AppState>,
    Path(engine_name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HookError> {
    if let Some(len) = header(&headers, "content-length").and_then(|l| l.parse::<u64>().ok())
        && len > MAX_BODY as u64
    {
        return Err(HookError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the notification is {len} bytes, over the {MAX_BODY} bytes one may send"),
        ));
    }
    let authorization = header(&headers, "authorization").map(str::to_owned);
    let body = read_body(body).await?;
    let Some(engine) = state
        .container
        .engines()
        .into_iter()
        .find(|e| e.name() == engine_name)
    else {
        return Err(unverified(&engine_name, SOURCE, "no such engine"));
    };
    let settings = engine
        .settings()
        .await
        .map_err(|e| HookError::internal("cannot read the engine's settings", e))?;
    let Some(setting) = settings.registry_notifications else {
        return Err(unverified(
            &engine_name,
            SOURCE,
            "the engine has no `registry_notifications` setting",
        ));
    };
    let token = engine
        .secret_value(&setting.token_secret)
        .await
        .map_err(|e| HookError::internal("cannot read the registry token", e))?;
    let Some(token) = token else {
        return Err(unverified(
            &engine_name,
            SOURCE,
            &format!(
                "the engine has no secret `{}`, which `registry_notifications.token_secret` names",
                setting.token_secret
            ),
        ));
    };
    if !authorized(authorization.as_deref(), &token) {
        return Err(unverified(
            &engine_name,
            SOURCE,
            "the Authorization header does not hold the registry token",
        ));
    }

    let pushes = pushes(&body)?;
    if pushes.is_empty() {
        return Ok(not_triggered(
            "no image push in the notification (pulls, blob events and other types start nothing)"
                .into(),
        ));
    }
    let pipelines = engine
        .pipelines()
        .await
        .map_err(|e| HookError::internal("cannot read the pipelines", e))?;
    let mut started = Vec::new();
    let mut skipped = Vec::new();
    let mut retry = Vec::new();
    for push in &pushes {
        if let Some(why) = invalid(push) {
            tracing::warn!(engine = %engine_name, "registry notification: {why}");
            skipped.push(json!({
                "digest": push.digest,
                "tag": push.tag,
                "reason": format!("ignored: {why}"),
            }));
            continue;
        }
        for pipeline in &pipelines {
            let Some(own) = accepting(pipeline, push) else {
                continue;
            };
            let name = pipeline.metadata.name.clone();
            match run(&state, &engine, &name, push, own).await {
                Outcome::Started(execution) => started.push(json!({
                    "pipeline": name,
                    "execution": execution,
                    "image": push.image().image,
                    "digest": push.digest,
                    "tag": push.tag,
                })),
                Outcome::Skipped(reason) => skipped.push(json!({
                    "pipeline": name,
                    "digest": push.digest,
                    "tag": push.tag,
                    "reason": reason,
                })),
                Outcome::Retry(reason) => retry.push(json!({
                    "pipeline": name,
                    "digest": push.digest,
                    "tag": push.tag,
                    "reason": reason,
                })),
            }
        }
    }
    if !retry.is_empty() {
        // The registry sends the notification again on an error answer: what
        // started is claimed (a duplicate then), what failed is not.
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "code": "unavailable",
                "message": "the store failed for some pipelines; send the notification again",
                "executions": started,
                "skipped": skipped,
                "failed": retry,
            })),
        )
            .into_response());
    }
    if started.is_empty() {
        let reason = if skipped.is_empty() {
            format!(
                "no pipeline of engine `{engine_name}` has an `image_push` trigger that accepts {}",
                pushes
                    .iter()
                    .map(|p| format!(
                        "{}{}",
                        p.image().image,
                        if p.tag.is_empty() {
                            format!("@{}", p.digest)
                        } else {
                            format!(":{}", p.tag)
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "nothing to start (see `skipped`)".to_owned()
        };
        return Ok((
            StatusCode::OK,
            Json(json!({ "triggered": false, "reason": reason, "skipped": skipped })),
        )
            .into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "triggered": true,
            "engine": engine_name,
            "executions": started,
            "skipped": skipped,
        })),
    )
        .into_response())
}

/// Releases a claimed event (so a notification sent again may start it),
/// and gives `why` back.
async fn give_up(
    store: &std::sync::Arc<dyn arkline::store::Store>,
    claimed: &arkline::model::DynamicObject,
    why: String,
) -> String {
    if let Err(e) = replay::release(store, claimed).await {
        tracing::warn!(error = %e, "registry notification: cannot release the event id");
    }
    why
}

/// What became of one pipeline for one push.
enum Outcome {
    /// This execution started.
    Started(String),
    /// Nothing to start, and nothing to retry: why.
    Skipped(String),
    /// The store failed: the event's claim is given up, so the registry's
    /// next attempt (it retries on an error answer) may start it.
    Retry(String),
}

/// Starts `pipeline` for `push` unless the event was seen or the pipeline
/// made the push itself (and may not run for its own images).
async fn run(state: &AppState, engine: &Engine, pipeline: &str, push: &Push, own: bool) -> Outcome {
    let store = state.container.store();
    let claim = replay::claim(
        store,
        engine.name(),
        pipeline,
        SOURCE,
        &push.id,
        state.webhook_dedup_window,
    )
    .await;
    let claimed = match claim {
        Ok(replay::Claim::New(claimed)) => claimed,
        Ok(replay::Claim::Seen { execution }) => {
            return Outcome::Skipped(format!(
                "duplicate notification: event {} was seen{}",
                push.id,
                execution.map_or_else(String::new, |x| format!(" and started `{x}`"))
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "registry notification: cannot check the event id");
            return Outcome::Retry(format!("cannot check the event id: {e}"));
        }
    };
    // After the claim, a copy of this event is a duplicate either way.
    if !own {
        let own_push = |by: String| {
            Outcome::Skipped(format!(
                "{by} of this pipeline pushed {}: a pipeline does not run for its own images \
                 (set `self: true` on its image_push trigger to let it)",
                push.digest
            ))
        };
        if pushed_by(push, engine.name(), pipeline) {
            return own_push("a step".into());
        }
        let recent = match engine.executions(Some(pipeline)).await {
            Ok(recent) => recent,
            Err(e) => {
                tracing::error!(error = %e, "registry notification: cannot read the pipeline's executions");
                return Outcome::Retry(
                    give_up(
                        store,
                        &claimed,
                        format!("cannot read the pipeline's executions: {e}"),
                    )
                    .await,
                );
            }
        };
        if let Some(by) = published_by(&recent, &push.digest) {
            return own_push(format!("execution `{by}`"));
        }
    }
    let request = TriggerRequest {
        event: "image_push".into(),
        kind: TriggerKind::ImagePush,
        labels: BTreeMap::from([
            (PROVIDER_LABEL.to_owned(), push.sender.to_owned()),
            (DELIVERY_LABEL.to_owned(), push.id.clone()),
        ]),
        image: Some(push.image()),
        ..TriggerRequest::default()
    };
    match engine.trigger(pipeline, request).await {
        Ok(exec) => {
            let name = exec.metadata.name;
            if let Err(e) = replay::record(store, claimed, &name).await {
                tracing::warn!(error = %e, execution = %name, "registry notification: cannot record the event's execution");
            }
            tracing::info!(engine = %engine.name(), pipeline, execution = %name, digest = %push.digest, tag = %push.tag, "an image push started an execution");
            Outcome::Started(name)
        }
        Err(EngineError::Store(e)) => {
            tracing::error!(error = %e, "registry notification: cannot create the execution");
            Outcome::Retry(
                give_up(store, &claimed, format!("cannot create the execution: {e}")).await,
            )
        }
        Err(e) => {
            let hint = if matches!(e, EngineError::Trigger(TriggerError::Params { .. })) {
                "; an image push gives no params, so declare defaults for them"
            } else {
                ""
            };
            Outcome::Skipped(give_up(store, &claimed, format!("cannot start it: {e}{hint}")).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_envelopes_give_their_manifest_pushes_only() {
        let body = json!({"events": [
            {"id": "e1", "action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
              "repository": "team/app", "digest": "sha256:aa", "tag": "v1"}, "request": {"host": "127.0.0.1:5000"}},
            {"id": "e2", "action": "push", "target": {"mediaType": "application/octet-stream",
              "repository": "team/app", "digest": "sha256:bb"}},
            {"id": "e3", "action": "pull", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
              "repository": "team/app", "digest": "sha256:aa", "tag": "v1"}},
            {"id": "e4", "action": "push", "target": {"mediaType": "application/vnd.oci.image.index.v1+json",
              "repository": "team/app", "digest": "sha256:cc"}}
        ]});
        let got = pushes(body.to_string().as_bytes()).expect("reads");
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].image(),
            ImagePush {
                image: "127.0.0.1:5000/team/app".into(),
                digest: "sha256:aa".into(),
                tag: "v1".into()
            }
        );
        assert_eq!((got[1].id.as_str(), got[1].tag.as_str()), ("e4", ""));
    }

    #[test]
    fn harbor_pushes_name_their_host_and_get_a_stable_id() {
        let body = json!({"type": "PUSH_ARTIFACT", "occur_at": 1_700_000_000, "operator": "admin",
            "event_data": {"resources": [{"digest": "sha256:aa", "tag": "v2",
              "resource_url": "harbor.example.com/library/app:v2"}],
              "repository": {"name": "app", "namespace": "library", "repo_full_name": "library/app"}}});
        let a = pushes(body.to_string().as_bytes()).expect("reads");
        let b = pushes(body.to_string().as_bytes()).expect("reads");
        assert_eq!(a, b);
        assert_eq!(a[0].image().image, "harbor.example.com/library/app");
        assert_eq!(a[0].sender, "harbor");
        let other = json!({"type": "DELETE_ARTIFACT"});
        assert!(
            pushes(other.to_string().as_bytes())
                .expect("reads")
                .is_empty()
        );
        let err = pushes(b"{\"x\": 1}").expect_err("refused");
        assert!(
            err.message.contains("not a registry notification"),
            "{err:?}"
        );
    }

    #[test]
    fn fields_outside_the_distribution_grammar_are_refused() {
        let ok = Push {
            id: "e".into(),
            sender: "distribution",
            repository: "team/my-app_1".into(),
            host: "registry.example.com:5000".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            tag: "v1.2_rc-3".into(),
            agent: String::new(),
        };
        assert_eq!(invalid(&ok), None);
        for (field, value) in [
            ("repository", "Team/app"),
            ("repository", "team//app"),
            ("repository", "team/app$(x)"),
            ("tag", "-v1"),
            ("tag", "v1 x"),
            ("digest", "sha256:xyz"),
            ("digest", "sha256"),
            ("host", "evil host"),
        ] {
            let mut p = ok.clone();
            match field {
                "repository" => p.repository = value.into(),
                "tag" => p.tag = value.into(),
                "digest" => p.digest = value.into(),
                _ => p.host = value.into(),
            }
            assert!(invalid(&p).is_some(), "{field} {value}");
        }
        let mut own = ok.clone();
        own.agent = "arkline-image/0.1.0 (engine=rel; pipeline=deploy; run=1; step=image)".into();
        assert!(pushed_by(&own, "rel", "deploy"));
        assert!(!pushed_by(&own, "rel", "deploy-2"));
        assert!(!pushed_by(&own, "other", "deploy"));
    }

    #[test]
    fn the_token_may_come_as_bearer_or_alone_and_must_match_whole() {
        assert!(authorized(Some("Bearer s3cret"), "s3cret"));
        assert!(authorized(Some("s3cret"), "s3cret"));
        assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
        assert!(!authorized(None, "s3cret"));
        assert!(!authorized(Some("Bearer "), ""));
    }
}
