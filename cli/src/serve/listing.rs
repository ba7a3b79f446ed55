//! Lists and watches in Kubernetes' manner, for the list routes of pipelines
//! and executions:
//!
//! - `labelSelector=` (`app=web,tier!=db`, `env in (a,b)`, `!draft`) keeps the
//!   objects whose labels match;
//! - `limit=N` and `continue=TOKEN` page through the list: an answer that
//!   stops short carries `X-Continue: TOKEN` for the next page; every list
//!   answer carries `X-Resource-Version`, the store's revision it was read at;
//! - `watch=true` streams the changes instead: from `resourceVersion=R` (the
//!   changes after it), or without one the objects as they are (`ADDED`) and
//!   then their changes. Server-sent events (`event: ADDED`, `id:` the
//!   revision, `data:` the object; a reconnecting `EventSource`'s
//!   `Last-Event-ID` resumes) when the client accepts `text/event-stream`,
//!   otherwise JSON lines `{"type": "MODIFIED", "object": {…}}`. A revision
//!   the store has compacted away answers `410 Gone` (code `gone`): list
//!   again and watch from the list's revision. A watch that falls behind
//!   compaction later ends with an `ERROR` event of code 410.

use std::collections::BTreeMap;
use std::convert::Infallible;

use arkline::Engine;
use arkline::model::Resource;
use arkline::store::{Api, EventType, LabelSelector, StoreError, TypedEvent};
use axum::body::{Body, Bytes};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;

use super::error::ApiError;
use super::state::AppState;

/// The most objects one page holds (`limit` above it is lowered to it).
pub const MAX_LIMIT: usize = 1_000;

/// The query of a list route, read from its query string.
#[derive(Debug, Default)]
pub struct ListParams {
    /// `labelSelector`.
    pub selector: LabelSelector,
    /// `limit`.
    pub limit: Option<usize>,
    /// `continue`: the sort key of the last object of the page before.
    pub after: Option<String>,
    /// `watch=true`.
    pub watch: bool,
    /// `resourceVersion`: for a watch, the revision to stream changes after.
    pub resource_version: Option<u64>,
    /// The route's own parameters (`pipeline` for executions).
    pub extra: BTreeMap<String, String>,
}

impl ListParams {
    /// Reads `raw` (the query string); `extra` names the route's own
    /// parameters.
    pub fn parse(raw: Option<&str>, extra: &[&str]) -> Result<Self, ApiError> {
        let mut params = ListParams::default();
        let known = || {
            let mut all = vec![
                "labelSelector",
                "limit",
                "continue",
                "watch",
                "resourceVersion",
            ];
            all.extend_from_slice(extra);
            all.join(", ")
        };
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            match &*key {
                "labelSelector" => {
                    params.selector = value.parse().map_err(|e| {
                        ApiError::bad_request(format!("`labelSelector={value}`: {e}"))
                    })?;
                }
                "limit" => {
                    let n: usize = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "`limit={value}`: write a number of objects from 1 to {MAX_LIMIT}"
                        ))
                    })?;
                    params.limit = Some(n.min(MAX_LIMIT));
                }
                "continue" => params.after = Some(decode_token(&value)?),
                "watch" => {
                    params.watch = value.parse().map_err(|_| {
                        ApiError::bad_request(format!("`watch={value}`: write `true` or `false`"))
                    })?;
                }
                "resourceVersion" => {
                    params.resource_version = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "`resourceVersion={value}` is not a revision: send the `X-Resource-Version` of a list, or an object's `metadata.resource_version`"
                        ))
                    })?);
                }
                other if extra.contains(&other) => {
                    params.extra.insert(other.to_owned(), value.into_owned());
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter `{other}`: this list takes {}",
                        known()
                    )));
                }
            }
        }
        if params.watch && (params.limit.is_some() || params.after.is_some()) {
            return Err(ApiError::bad_request(
                "`watch=true` streams every change: it takes no `limit` or `continue`",
            ));
        }
        Ok(params)
    }
}

/// How a kind's list is ordered: a key per object (compared as strings),
/// ascending or descending. The `continue` token carries the key of the last
/// object sent, so a page is right after it even when objects came or went
/// in between.
pub struct Order<R> {
    /// The object's key.
    pub key: fn(&R) -> String,
    /// Newest first (descending keys).
    pub descending: bool,
}

fn encode_token(key: &str) -> String {
    format!("v1.{}", hex::encode(key))
}

fn decode_token(token: &str) -> Result<String, ApiError> {
    token
        .strip_prefix("v1.")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`continue={token}` is not a token this server gave: send the `X-Continue` of the page before, unchanged"
            ))
        })
}

/// The answer to a list route: a page of the engine's objects of kind `R`,
/// or a watch of them.
pub async fn list_or_watch<R>(
    state: &AppState,
    engine: &Engine,
    params: ListParams,
    headers: &HeaderMap,
    order: Order<R>,
) -> Result<Response, ApiError>
where
    R: Resource + Serialize,
{
    let api = Api::<R>::new(state.container.store().clone());
    if params.watch {
        return watch(state, engine, api, params, headers).await;
    }
    let (mut items, revision) = api
        .list(Some(engine.name()), params.selector.clone())
        .await?;
    let mut keyed: Vec<(String, R)> = items.drain(..).map(|r| ((order.key)(&r), r)).collect();
    keyed.sort_by(|a, b| {
        if order.descending {
            b.0.cmp(&a.0)
        } else {
            a.0.cmp(&b.0)
        }
    });
    if let Some(after) = &params.after {
        keyed.retain(|(key, _)| {
            if order.descending {
                key < after
            } else {
                key > after
            }
        });
    }
    let mut next = None;
    if let Some(limit) = params.limit
        && keyed.len() > limit
    {
        keyed.truncate(limit);
        next = keyed.last().map(|(key, _)| encode_token(key));
    }
    let page: Vec<R> = keyed.into_iter().map(|(_, r)| r).collect();
    let mut response = axum::Json(page).into_response();
    let out = response.headers_mut();
    out.insert("x-resource-version", HeaderValue::from(revision));
    if let Some(token) = next
        && let Ok(value) = HeaderValue::from_str(&token)
    {
        out.insert("x-continue", value);
    }
    Ok(response)
}

/// One change as the watch sends it.
#[derive(Serialize)]
struct Change<'a, R> {
    #[serde(rename = "type")]
    kind: &'a str,
    object: &'a R,
}

fn type_name(event: EventType) -> &'static str {
    match event {
        EventType::Added => "ADDED",
        EventType::Modified => "MODIFIED",
        EventType::Deleted => "DELETED",
    }
}

/// What the watch's last event says when it falls behind compaction.
fn gone_body(e: &StoreError) -> serde_json::Value {
    serde_json::json!({
        "code": 410,
        "reason": "Expired",
        "message": format!("{e}: list again and watch from the list's X-Resource-Version"),
    })
}

async fn watch<R>(
    state: &AppState,
    engine: &Engine,
    api: Api<R>,
    params: ListParams,
    headers: &HeaderMap,
) -> Result<Response, ApiError>
where
    R: Resource + Serialize,
{
    let sse = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    // A reconnecting EventSource says where it was.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let selector = params.selector;
    // A reconnecting EventSource's Last-Event-ID wins over the
    // `resourceVersion` its URL still carries.
    let (initial, from) = match resumed.or(params.resource_version) {
        Some(from) => (Vec::new(), from),
        None => {
            let (items, revision) = api.list(Some(engine.name()), selector.clone()).await?;
            // Only the last of the listed objects carries the list's
            // revision as its event id (0: no id): a stream cut in the middle
            // of them resumes with a fresh list, not after the revision.
            let count = items.len();
            let added = items
                .into_iter()
                .enumerate()
                .map(|(i, object)| TypedEvent {
                    event_type: EventType::Added,
                    revision: if i + 1 == count { revision } else { 0 },
                    object,
                })
                .collect();
            (added, revision)
        }
    };
    let changes = match api.watch(Some(engine.name()), from).await {
        Ok(changes) => changes,
        Err(e @ StoreError::Gone { .. }) => {
            return Err(ApiError::new(
                StatusCode::GONE,
                "gone",
                format!(
                    "{e}: list again (`GET` without `watch`) and watch from its `X-Resource-Version`"
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let shutdown = {
        let state = state.clone();
        async move { state.shutting_down().await }
    };
    // `Some(Ok)`: an event to send; `Some(Err)`: the last one (an error).
    let events = futures::stream::iter(initial.into_iter().map(Ok))
        .chain(changes)
        .filter(move |item| {
            let keep = match item {
                Ok(event) => selector.matches(&event.object.meta().labels),
                Err(_) => true,
            };
            futures::future::ready(keep)
        })
        .scan(false, |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            *ended = item.is_err();
            futures::future::ready(Some(item))
        })
        .take_until(Box::pin(shutdown));
    if sse {
        let stream = events.map(|item| -> Result<Event, Infallible> {
            Ok(match item {
                Ok(event) => {
                    let data = serde_json::to_string(&event.object).unwrap_or_default();
                    let sse = Event::default()
                        .event(type_name(event.event_type))
                        .data(data);
                    if event.revision == 0 {
                        sse
                    } else {
                        sse.id(event.revision.to_string())
                    }
                }
                Err(e) => Event::default()
                    .event("ERROR")
                    .data(gone_or_failure(&e).to_string()),
            })
        });
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let lines = events.map(|item| -> Result<Bytes, Infallible> {
        let mut line = match item {
            Ok(event) => serde_json::to_vec(&Change {
                kind: type_name(event.event_type),
                object: &event.object,
            })
            .unwrap_or_default(),
            Err(e) => serde_json::to_vec(&serde_json::json!({
                "type": "ERROR",
                "object": gone_or_failure(&e),
            }))
            .unwrap_or_default(),
        };
        line.push(b'\n');
        Ok(Bytes::from(line))
    });
    Response::builder()
        .header(CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(|e| ApiError::internal(format!("cannot stream the watch: {e}")))
}

fn gone_or_failure(e: &StoreError) -> serde_json::Value {
    if e.is_gone() {
        gone_body(e)
    } else {
        serde_json::json!({"code": 500, "reason": "InternalError", "message": format!("the watch failed: {e}")})
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arkline::model::PipelineExecution;
    use arkline::store::{MemoryStore, Store};

    use super::*;

    /// A watch from a revision the store compacted away is `410 Gone`; from
    /// the current revision it starts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compacted_revision_is_gone() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let container = arkline::Container::builder()
            .store(store.clone())
            .build()
            .expect("container");
        let engine = container.engine("e").await.expect("engine");
        for retention in [1, 2, 3] {
            let mut settings = engine.settings().await.expect("settings");
            settings.retention.executions = Some(retention);
            engine.apply_settings(settings).await.expect("applies");
        }
        let now = store.revision().await.expect("revision");
        store.compact(now).await.expect("compacts");
        let state = AppState::new(container.clone());
        let order = || Order {
            key: |e: &PipelineExecution| e.metadata.name.clone(),
            descending: false,
        };
        let watch_from = |from: u64| ListParams {
            watch: true,
            resource_version: Some(from),
            ..ListParams::default()
        };
        let headers = HeaderMap::new();
        let gone = list_or_watch(&state, &engine, watch_from(1), &headers, order())
            .await
            .expect_err("compacted");
        assert_eq!((gone.status, gone.code), (StatusCode::GONE, "gone"));
        assert!(gone.message.contains("list again"), "{}", gone.message);
        let live = list_or_watch(&state, &engine, watch_from(now), &headers, order())
            .await
            .expect("watches");
        assert_eq!(live.status(), StatusCode::OK);
        container.shutdown().await;
    }
}
