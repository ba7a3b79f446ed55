//! `POST /hooks/{engine}`: a repository's webhook for an engine that runs its
//! pipelines from that repository (the `pipelines_from_repo` setting).
//!
//! The delivery is verified with the setting's `webhook_secret`, must name
//! the setting's repository (404 otherwise), and runs every pipeline file
//! at the delivery's commit whose webhook triggers accept its event and
//! branch ([`arkline::Engine::run_from_repo`]). Pull requests from forks, and
//! events outside `trusted_events`, run untrusted (no secrets). Deliveries
//! are deduplicated as for `POST /hooks/{engine}/{pipeline}`.
//!
//! Answers: `202 {triggered: true, commit, trusted, executions, files}` when
//! one started; `200 {triggered: false, reason, files}` when none did (a
//! ping, a branch the setting does not follow, no pipeline for the event,
//! invalid files: each file says which); 401 as for pipeline webhooks; 404
//! for another repository; 422 when the repository cannot be read.

use std::collections::BTreeMap;

use arkline::model::TriggerKind;
use arkline::{EngineError, RepoEvent, RepoOutcome};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::delivery::{self, Delivery};
use super::{
    DELIVERY_LABEL, HookError, PROVIDER_LABEL, admit, claim_delivery, delivery_id, not_triggered,
    read_delivery, replay, unverified,
};
use crate::serve::AppState;

/// The replay records' pipeline part for repository deliveries (not a
/// pipeline name: those cannot start with `@`).
const REPO_KEY: &str = "@repository";

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
    let (provider, event, credential, body) = admit(&headers, body).await?;
    let Some(engine) = state
        .container
        .engines()
        .into_iter()
        .find(|e| e.name() == engine_name)
    else {
        return Err(unverified(&engine_name, REPO_KEY, "no such engine"));
    };
    let settings = engine
        .settings()
        .await
        .map_err(|e| HookError::internal("cannot read the engine's settings", e))?;
    let Some(repo) = settings.pipelines_from_repo else {
        return Err(unverified(
            &engine_name,
            REPO_KEY,
            "the engine has no `pipelines_from_repo` setting",
        ));
    };
    let secret = engine
        .secret_value(&repo.webhook_secret)
        .await
        .map_err(|e| HookError::internal("cannot read the webhook secret", e))?;
    match secret {
        None => {
            return Err(unverified(
                &engine_name,
                REPO_KEY,
                &format!(
                    "the engine has no secret `{}`, which `pipelines_from_repo.webhook_secret` \
                     names: set it to the forge's webhook secret",
                    repo.webhook_secret
                ),
            ));
        }
        Some(value) if !credential.verifies(&value, &body) => {
            return Err(unverified(
                &engine_name,
                REPO_KEY,
                "the signature does not match the webhook secret",
            ));
        }
        Some(_) => {}
    }
    let (payload, parsed) = read_delivery(provider, &event, &body)?;
    let run = match parsed {
        Delivery::Ping => {
            return Ok(not_triggered(
                "ping: the webhook reaches arkline and its signature checks out".into(),
            ));
        }
        Delivery::Ignored(reason) => return Ok(not_triggered(reason)),
        Delivery::Run(run) => run,
    };
    let names = delivery::repository_names(provider, &payload);
    if !delivery::same_repository(&repo.repository, &names) {
        return Err(HookError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "engine `{engine_name}` runs the pipelines of {}, and this delivery is for {}: \
                 point the repository's webhook at the engine that follows it",
                repo.repository,
                if names.is_empty() {
                    "a repository it does not name".to_owned()
                } else {
                    names.join(" / ")
                }
            ),
        ));
    }
    if !repo.branches.matches(&run.branch) {
        return Ok(not_triggered(format!(
            "branch `{}` is not among the branches engine `{engine_name}` runs pipelines for",
            run.branch
        )));
    }
    let mut labels: BTreeMap<String, String> = run
        .labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    labels.insert(PROVIDER_LABEL.into(), provider.as_str().into());
    let id = delivery_id(provider, &headers);
    if let Some(id) = id {
        labels.insert(DELIVERY_LABEL.into(), id.to_owned());
    }
    let claims = match claim_delivery(&state, &engine_name, REPO_KEY, provider, id, &body).await? {
        Ok(claims) => claims,
        Err(seen) => return Ok(seen),
    };
    let event = RepoEvent {
        event: run.event.to_owned(),
        branch: run.branch.clone(),
        commit: run.commit.clone(),
        from_fork: delivery::from_fork(provider, &payload),
        kind: TriggerKind::Webhook,
        labels,
        only: None,
        params: BTreeMap::new(),
    };
    // Reading the repository may outlast the forge's patience: the work runs
    // in a task of its own, so the claims are recorded or released even when
    // the forge hangs up and this handler is dropped (a claim left behind
    // would refuse the forge's redelivery for the whole window).
    let store = state.container.store().clone();
    let task = tokio::spawn(async move {
        let outcome = engine.run_from_repo(event).await;
        match &outcome {
            Ok(run) => {
                let first = run.executions().first().map_or("", |e| *e).to_owned();
                for claimed in claims {
                    if let Err(e) = replay::record(&store, claimed, &first).await {
                        tracing::warn!(error = %e, "webhook: cannot record the delivery's execution");
                    }
                }
            }
            Err(_) => {
                for claimed in &claims {
                    if let Err(e) = replay::release(&store, claimed).await {
                        tracing::warn!(error = %e, "webhook: cannot release the delivery id");
                    }
                }
            }
        }
        outcome
    });
    let outcome = match task.await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            return Err(match e {
                EngineError::Repo { .. }
                | EngineError::Trigger(
                    arkline::TriggerError::Params { .. } | arkline::TriggerError::Group { .. },
                ) => HookError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "bad_request",
                    e.to_string(),
                ),
                e => HookError::internal("cannot run the repository's pipelines", e),
            });
        }
        Err(e) => return Err(HookError::internal("the repository's run stopped", e)),
    };
    let executions: Vec<String> = outcome
        .executions()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let files: Vec<serde_json::Value> = outcome
        .files
        .iter()
        .map(|f| {
            let mut v = json!({ "path": f.path, "digest": f.digest, "pipeline": f.pipeline });
            match &f.outcome {
                RepoOutcome::Started { execution } => {
                    v["outcome"] = "started".into();
                    v["execution"] = execution.clone().into();
                }
                RepoOutcome::NotRun { reason } => {
                    v["outcome"] = "not_run".into();
                    v["reason"] = reason.clone().into();
                }
                RepoOutcome::Invalid { message, summary } => {
                    v["outcome"] = "invalid".into();
                    v["message"] = message.clone().into();
                    v["summary"] = summary.clone().into();
                }
            }
            v
        })
        .collect();
    tracing::info!(engine = %engine_name, commit = %outcome.commit, trusted = outcome.trusted, executions = ?executions, "repository webhook handled");
    let status = if executions.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut answer = json!({
        "triggered": !executions.is_empty(),
        "engine": engine_name,
        "event": run.event,
        "branch": run.branch,
        "commit": outcome.commit,
        "trusted": outcome.trusted,
        "executions": executions,
        "files": files,
    });
    if executions.is_empty() {
        answer["reason"] = if outcome.files.is_empty() {
            format!(
                "no file matches `{}` at commit {}",
                repo.path, outcome.commit
            )
        } else {
            "no pipeline file runs for this event (each file says why)".to_owned()
        }
        .into();
    }
    Ok((status, Json(answer)).into_response())
}
