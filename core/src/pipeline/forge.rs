//! Commit statuses: the engine's `forge` setting names a GitHub, GitLab or
//! Gitea API; each execution with a commit gets `pending` when its driver
//! starts and its outcome when it ends, under the context
//! `arkline/<engine>/<pipeline>`. With `stages: true` in the setting, each
//! stage also gets its own status under `arkline/<engine>/<pipeline>/<stage>`:
//! `pending` when it starts, its outcome when it ends ([`StageStatuses`]).
//!
//! Posting runs beside the execution, never in its way: a slow or failing
//! forge neither delays nor fails it. 5xx and 429 answers are retried with
//! backoff (five attempts); what still fails is counted in the metrics and
//! recorded as the execution's `Reported` condition (`False`, with the
//! forge's answer). The outcome is posted after `pending` has been, so a
//! forge never shows an older state last.

use std::sync::Arc;
use std::time::Duration;

use crate::model::resources::set_condition;
use crate::model::{
    Condition, ConditionStatus, ConditionType, ExecutionPhase, ForgeKind, ForgeSettings,
    PipelineExecution, StageStatus, StepPhase,
};
use crate::pipeline::context::EngineCore;
use crate::store::{Api, StoreError};

/// Attempts per status before it is given up.
const ATTEMPTS: u32 = 5;

/// A commit state, in GitHub's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Pending,
    Success,
    Failure,
    Error,
}

impl State {
    /// The final state of an execution that ended in `phase`.
    pub(crate) fn of(phase: ExecutionPhase) -> Self {
        match phase {
            ExecutionPhase::Succeeded => State::Success,
            ExecutionPhase::Failed => State::Failure,
            _ => State::Error,
        }
    }

    /// The final state of a stage that ended in `phase`; `None` while it has
    /// not. A skipped stage is `success`, as a skipped job is on GitHub: a
    /// branch protection requiring it is not held up by a stage the pipeline
    /// chose not to run (the execution's own status carries the outcome).
    pub(crate) fn of_stage(phase: StepPhase) -> Option<Self> {
        match phase {
            StepPhase::Waiting | StepPhase::Running => None,
            StepPhase::Succeeded | StepPhase::Skipped => Some(State::Success),
            StepPhase::Failed => Some(State::Failure),
            StepPhase::Aborted => Some(State::Error),
        }
    }

    fn word(self, kind: ForgeKind) -> &'static str {
        match (kind, self) {
            (ForgeKind::Gitlab, State::Pending) => "running",
            (ForgeKind::Gitlab, State::Failure) => "failed",
            (ForgeKind::Gitlab, State::Error) => "canceled",
            (_, State::Pending) => "pending",
            (_, State::Success) => "success",
            (_, State::Failure) => "failure",
            (_, State::Error) => "error",
        }
    }
}

/// `owner/repo` (or a GitLab project path) from a repository URL:
/// `https://github.com/acme/app.git`, `git@github.com:acme/app.git`.
pub(crate) fn repository_of(url: &str) -> Option<String> {
    let path = if let Some((_, rest)) = url.split_once("://") {
        rest.split_once('/')?.1
    } else {
        url.split_once(':')?.1
    };
    let path = path.trim_matches('/').trim_end_matches(".git");
    (path.contains('/') && !path.is_empty()).then(|| path.to_owned())
}

/// Where and what to post for one execution, or `None` when there is
/// nothing to report (no forge, no commit, no repository).
#[derive(Clone)]
pub(crate) struct Report {
    forge: ForgeSettings,
    repository: String,
    engine: String,
    execution: String,
    pipeline: String,
    commit: String,
    /// The stage whose own status this is (`forge.stages`).
    stage: Option<String>,
}

impl Report {
    pub(crate) fn new(
        core: &EngineCore,
        forge: Option<&ForgeSettings>,
        exec: &PipelineExecution,
    ) -> Option<Self> {
        let forge = forge?.clone();
        let commit = exec.spec.commit.clone();
        if commit.is_empty() {
            return None;
        }
        let repository = forge
            .repository
            .clone()
            .or_else(|| {
                exec.spec
                    .pipeline_spec
                    .source
                    .as_ref()
                    .and_then(|s| repository_of(&s.repository))
            })
            .or_else(|| {
                exec.spec
                    .origin
                    .as_ref()
                    .and_then(|o| repository_of(&o.repository))
            })?;
        Some(Report {
            forge,
            repository,
            engine: core.name.clone(),
            execution: exec.metadata.name.clone(),
            pipeline: exec.spec.pipeline.clone(),
            commit,
            stage: None,
        })
    }

    /// The report of a pipeline file that ran nothing (it is not valid):
    /// its context names the file, and it links nowhere.
    pub(crate) fn for_file(
        core: &EngineCore,
        forge: &ForgeSettings,
        repository_url: &str,
        path: &str,
        commit: &str,
    ) -> Option<Self> {
        let repository = forge
            .repository
            .clone()
            .or_else(|| repository_of(repository_url))?;
        Some(Report {
            forge: forge.clone(),
            repository,
            engine: core.name.clone(),
            execution: String::new(),
            pipeline: path.to_owned(),
            commit: commit.to_owned(),
            stage: None,
        })
    }

    fn request(
        &self,
        client: &reqwest::Client,
        token: &str,
        state: State,
        description: &str,
    ) -> reqwest::RequestBuilder {
        let api = self.forge.api_url.trim_end_matches('/');
        let mut context = format!("arkline/{}/{}", self.engine, self.pipeline);
        if let Some(stage) = &self.stage {
            context = format!("{context}/{stage}");
        }
        let target = self
            .forge
            .target_url
            .as_ref()
            .filter(|_| !self.execution.is_empty())
            .map(|base| {
                format!(
                    "{}/api/v1/engines/{}/executions/{}",
                    base.trim_end_matches('/'),
                    self.engine,
                    self.execution
                )
            });
        let mut body = serde_json::json!({
            "state": state.word(self.forge.kind),
            "description": description,
        });
        if let Some(t) = target {
            body["target_url"] = t.into();
        }
        match self.forge.kind {
            ForgeKind::Github | ForgeKind::Gitea => {
                body["context"] = context.into();
                let auth = if self.forge.kind == ForgeKind::Github {
                    format!("Bearer {token}")
                } else {
                    format!("token {token}")
                };
                client
                    .post(format!(
                        "{api}/repos/{}/statuses/{}",
                        self.repository, self.commit
                    ))
                    .header("Authorization", auth)
                    .header("Accept", "application/vnd.github+json")
                    .header("User-Agent", "arkline")
            }
            ForgeKind::Gitlab => {
                body["name"] = context.into();
                let project: String = self
                    .repository
                    .bytes()
                    .map(|b| match b {
                        b'/' => "%2F".to_owned(),
                        _ => (b as char).to_string(),
                    })
                    .collect();
                client
                    .post(format!("{api}/projects/{project}/statuses/{}", self.commit))
                    .header("PRIVATE-TOKEN", token)
                    .header("User-Agent", "arkline")
            }
        }
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
    }

    /// Posts `state`, retrying 5xx, 429 and connection failures; `Err` with
    /// what the forge last said when every attempt failed.
    pub(crate) async fn post(
        &self,
        core: &EngineCore,
        state: State,
        description: &str,
    ) -> Result<(), String> {
        let token = core
            .secrets
            .resolve(&std::iter::once(self.forge.token_secret.clone()).collect())
            .await
            .map_err(|e| format!("the token secret `{}`: {e}", self.forge.token_secret))?
            .into_values()
            .next()
            .ok_or_else(|| format!("the engine has no secret `{}`", self.forge.token_secret))?;
        let client = reqwest::Client::new();
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            match self
                .request(&client, &token, state, description)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    last = format!("the forge answered {status}");
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        break;
                    }
                }
                Err(e) => last = format!("the forge cannot be reached: {e}"),
            }
        }
        Err(last)
    }
}

/// The report of a running execution, with its `pending` post's task.
pub(crate) type Reporting = (Report, Posting);

/// A post's task: `Err` with why when it was given up.
pub(crate) type Posting = tokio::task::JoinHandle<Result<(), String>>;

/// Posts the final state after `pending` (awaited first), then records the
/// outcome: metrics always, the `Reported` condition when it, or one of the
/// stages' statuses (`stages`, awaited after it), failed. Recorded only
/// here, after the execution's last write, which would otherwise drop it.
pub(crate) fn finish(
    core: Arc<EngineCore>,
    report: Report,
    pending: Option<Posting>,
    phase: ExecutionPhase,
    reason: String,
    stages: Vec<Posting>,
) {
    let description = describe(&format!("{phase:?}"), &reason);
    tokio::spawn(async move {
        let mut failure = conclude(&core, &report, pending, State::of(phase), &description)
            .await
            .err();
        for stage in stages {
            if let Err(why) = stage.await.unwrap_or_else(|e| Err(e.to_string())) {
                failure.get_or_insert(why);
            }
        }
        if let Some(why) = failure {
            let _ = mark_unreported(&core, &report.execution, &why).await;
        }
    });
}

/// `word`, or `word: reason`, within the 140 characters GitHub allows.
fn describe(word: &str, reason: &str) -> String {
    if reason.is_empty() {
        return word.to_owned();
    }
    let mut d = format!("{word}: {reason}");
    if let Some((cut, _)) = d.char_indices().nth(137) {
        d.truncate(cut);
        d.push('…');
    }
    d
}

/// Posts `state` after `pending` (awaited first) and counts the pair in the
/// metrics; `Err` with why (naming the stage for a stage's) when either
/// was given up.
async fn conclude(
    core: &EngineCore,
    report: &Report,
    pending: Option<Posting>,
    state: State,
    description: &str,
) -> Result<(), String> {
    let pending = match pending {
        Some(task) => task.await.unwrap_or_else(|e| Err(e.to_string())),
        None => Ok(()),
    };
    let done = report.post(core, state, description).await;
    let failure = pending.err().or(done.err());
    core.metrics
        .count_forge_status(&core.name, failure.is_none());
    match failure {
        None => Ok(()),
        Some(why) => {
            tracing::warn!(engine = %core.name, execution = %report.execution, stage = report.stage.as_deref().unwrap_or(""), error = %why, "cannot post the commit status");
            Err(match &report.stage {
                Some(stage) => format!("stage `{stage}`: {why}"),
                None => why,
            })
        }
    }
}

/// Each stage's own commit status (the setting's `stages: true`): `pending`
/// when the stage starts, its outcome ([`State::of_stage`]) when it ends,
/// posted as the execution's are (beside it, retried, counted); what failed
/// is recorded by the execution's [`finish`].
pub(crate) struct StageStatuses {
    /// The execution's report; each stage's is this one with its name.
    report: Report,
    /// Per stage: the phase last reported, and the `pending` post's task
    /// until the outcome (posted after it) takes it.
    seen: Vec<(StepPhase, Option<Posting>)>,
    /// The outcomes' tasks, for [`finish`].
    ended: Vec<Posting>,
}

impl StageStatuses {
    /// The stage statuses of the execution `report` is about, when its forge
    /// setting asks for them.
    pub(crate) fn new(report: &Report) -> Option<Self> {
        report.forge.stages.then(|| StageStatuses {
            report: report.clone(),
            seen: Vec::new(),
            ended: Vec::new(),
        })
    }

    /// Posts what changed since the last call: `pending` for a stage that
    /// started, the outcome for one that ended. Cheap when nothing did.
    pub(crate) fn observe(&mut self, core: &Arc<EngineCore>, stages: &[StageStatus]) {
        if self.seen.len() < stages.len() {
            self.seen
                .resize_with(stages.len(), || (StepPhase::Waiting, None));
        }
        for (stage, (seen, pending)) in stages.iter().zip(&mut self.seen) {
            if stage.phase == *seen {
                continue;
            }
            *seen = stage.phase;
            let report = Report {
                stage: Some(stage.name.clone()),
                ..self.report.clone()
            };
            let core = core.clone();
            match State::of_stage(stage.phase) {
                None if stage.phase == StepPhase::Running => {
                    *pending = Some(tokio::spawn(async move {
                        report.post(&core, State::Pending, "running").await
                    }));
                }
                None => {}
                Some(state) => {
                    let description = describe(stage.phase.as_str(), &stage.reason);
                    let pending = pending.take();
                    self.ended.push(tokio::spawn(async move {
                        conclude(&core, &report, pending, state, &description).await
                    }));
                }
            }
        }
    }

    /// The outcomes' tasks so far, for the execution's [`finish`].
    pub(crate) fn take_ended(&mut self) -> Vec<Posting> {
        std::mem::take(&mut self.ended)
    }
}

async fn mark_unreported(core: &EngineCore, name: &str, why: &str) -> Result<(), StoreError> {
    let api = Api::<PipelineExecution>::new(core.store.clone());
    loop {
        let Some(mut exec) = api.get(&core.name, name).await? else {
            return Ok(());
        };
        set_condition(
            &mut exec.status.conditions,
            Condition {
                kind: ConditionType::Reported,
                status: ConditionStatus::False,
                reason: "ForgeUnavailable".into(),
                message: why.to_owned(),
                last_transition: Some(core.clock.now()),
            },
        );
        match api.update_status(&exec).await {
            Err(StoreError::Conflict { .. }) => continue,
            other => return other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_come_from_https_and_ssh_urls() {
        assert_eq!(
            repository_of("https://github.com/acme/app.git").as_deref(),
            Some("acme/app")
        );
        assert_eq!(
            repository_of("git@github.com:acme/app.git").as_deref(),
            Some("acme/app")
        );
        assert_eq!(
            repository_of("https://gitlab.example.com/group/sub/app").as_deref(),
            Some("group/sub/app")
        );
        assert_eq!(repository_of("https://example.com/app"), None);
    }
}
