//! Pipelines as code: the engine reads its pipelines from a repository at the
//! commit an event names, and runs those whose triggers accept the event, at
//! that exact content.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{Engine, EngineError};
use crate::model::{PipelineOrigin, TriggerKind};
use crate::pipeline::{FromRepo, TriggerRequest};

/// An event in the repository the engine reads its pipelines from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoEvent {
    /// `push`, `tag`, `pull_request`, or `manual` (from `ctl exec start
    /// --ref`).
    pub event: String,
    /// The branch (the tag for `tag`, the target branch of a pull request).
    pub branch: String,
    /// The commit; empty for the head of `branch` (or of the default branch).
    pub commit: String,
    /// The change comes from a fork (a pull request from another
    /// repository): the run is untrusted whatever the event.
    pub from_fork: bool,
    /// What started it.
    pub kind: TriggerKind,
    /// Labels added to each execution.
    pub labels: BTreeMap<String, String>,
    /// Run only the pipeline of this name, whatever its triggers say (a
    /// person asking for it); `None` runs every pipeline whose webhook
    /// triggers accept the event and branch.
    pub only: Option<String>,
    /// Param values (for `only`).
    pub params: BTreeMap<String, serde_json::Value>,
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoRun {
    /// The commit read.
    pub commit: String,
    /// Whether the executions are trusted.
    pub trusted: bool,
    /// Each pipeline file, sorted by path.
    pub files: Vec<RepoFile>,
}

impl RepoRun {
    /// The executions started.
    pub fn executions(&self) -> Vec<&str> {
        self.files
            .iter()
            .filter_map(|f| match &f.outcome {
                RepoOutcome::Started { execution } => Some(execution.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// One pipeline file of the repository at the commit.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoFile {
    /// Its path in the repository.
    pub path: String,
    /// `sha256:<hex>` of its content (empty when it could not be read).
    pub digest: String,
    /// The pipeline's name, when the file is valid.
    pub pipeline: Option<String>,
    /// What became of it.
    pub outcome: RepoOutcome,
}

/// What became of one pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub enum RepoOutcome {
    /// An execution was created.
    Started {
        /// Its name.
        execution: String,
    },
    /// Valid, but not for this event.
    NotRun {
        /// Why.
        reason: String,
    },
    /// Not a valid pipeline (or too large to read): nothing ran.
    Invalid {
        /// The diagnostics.
        message: String,
        /// The first of them, on one line (the commit status's description).
        summary: String,
    },
}

impl Engine {
    /// Reads the pipeline files of the engine's `pipelines_from_repo`
    /// repository at the event's commit, validates each, and starts the
    /// pipelines whose webhook triggers accept the event and branch (or the
    /// one `event.only` names), each with the spec read from its file and the
    /// file's path, commit and digest in the execution's `origin`. An invalid
    /// file runs nothing; with a `forge` setting, it is reported on the
    /// commit as an `error` status with its diagnostics.
    ///
    /// # Errors
    ///
    /// [`EngineError::Repo`] when the engine reads no repository, the branch
    /// is not among its `branches`, or the repository cannot be read;
    /// [`EngineError::NotFound`] when `only` names no file's pipeline;
    /// [`EngineError::Trigger`] when an execution cannot be created.
    pub async fn run_from_repo(&self, event: RepoEvent) -> Result<RepoRun, EngineError> {
        let core = &self.core;
        let settings = core.settings().await?;
        let repo_error = |reason: String| EngineError::Repo {
            engine: core.name.clone(),
            reason,
        };
        let Some(repo) = settings.pipelines_from_repo.clone() else {
            return Err(repo_error(
                "the engine has no `pipelines_from_repo` setting; set one to run pipelines \
                 from a repository"
                    .into(),
            ));
        };
        if !event.branch.is_empty() && !repo.branches.matches(&event.branch) {
            return Err(repo_error(format!(
                "branch `{}` is not among the `pipelines_from_repo.branches` of the engine",
                event.branch
            )));
        }
        let limits = crate::model::Limits::default();
        let read = crate::pipeline::source::read_repo(
            core,
            &repo,
            &event.commit,
            &event.branch,
            limits.max_bytes,
            settings.require_sandbox,
        )
        .await
        .map_err(repo_error)?;
        let event_name = if event.event.is_empty() {
            "manual".to_owned()
        } else {
            event.event.clone()
        };
        let trusted = !event.from_fork
            && (event.kind == TriggerKind::Manual || repo.trusted_events.contains(&event_name));
        let mut files = Vec::new();
        let mut found_only = false;
        for (path, content) in read.files {
            let bytes = match content {
                Ok(bytes) => bytes,
                Err(message) => {
                    files.push(RepoFile {
                        path,
                        digest: String::new(),
                        pipeline: None,
                        outcome: RepoOutcome::Invalid {
                            summary: message.clone(),
                            message,
                        },
                    });
                    continue;
                }
            };
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            let summarize = |d: &crate::model::Diagnostics| {
                let first =
                    d.0.iter()
                        .find(|d| d.severity == crate::model::Severity::Error);
                let message = d.to_string();
                let summary = first.map_or_else(
                    || message.lines().next().unwrap_or_default().to_owned(),
                    |f| match &f.span {
                        Some(span) => format!("{}:{}: {}", path, span.line, f.message),
                        None => format!("{path}: {}", f.message),
                    },
                );
                (message, summary)
            };
            let parsed = match std::str::from_utf8(&bytes) {
                Err(e) => {
                    let m = format!("{path} is not UTF-8 text: {e}");
                    Err((m.clone(), m))
                }
                Ok(text) => match crate::model::parse_pipeline_file(&path, text) {
                    Err(diagnostics) => Err(summarize(&diagnostics)),
                    Ok(parsed) => {
                        let checked =
                            self.check_step_configs(&parsed.pipeline.spec, &parsed.source_map);
                        if checked.has_errors() {
                            Err(summarize(&checked))
                        } else {
                            Ok(parsed)
                        }
                    }
                },
            };
            let parsed = match parsed {
                Ok(p) => p,
                Err((message, summary)) => {
                    files.push(RepoFile {
                        path,
                        digest,
                        pipeline: None,
                        outcome: RepoOutcome::Invalid { message, summary },
                    });
                    continue;
                }
            };
            let name = parsed.pipeline.metadata.name.clone();
            let spec = parsed.pipeline.spec;
            let reason = match &event.only {
                Some(only) if *only != name => Some(format!("not `{only}`")),
                Some(_) => {
                    found_only = true;
                    None
                }
                None => {
                    let accepted = spec.triggers.iter().any(|t| match t {
                        crate::model::Trigger::Webhook { events, branch, .. } => {
                            (events.is_empty() || events.contains(&event_name))
                                && branch.matches(&event.branch)
                        }
                        _ => false,
                    });
                    (!accepted).then(|| {
                        format!(
                            "no webhook trigger of `{name}` accepts `{event_name}` on `{}`",
                            event.branch
                        )
                    })
                }
            };
            if let Some(reason) = reason {
                files.push(RepoFile {
                    path,
                    digest,
                    pipeline: Some(name),
                    outcome: RepoOutcome::NotRun { reason },
                });
                continue;
            }
            let request = TriggerRequest {
                params: event.params.clone(),
                event: event_name.clone(),
                branch: event.branch.clone(),
                commit: read.commit.clone(),
                kind: event.kind,
                labels: event.labels.clone(),
                from_repo: Some(FromRepo {
                    spec,
                    origin: PipelineOrigin {
                        repository: repo.repository.clone(),
                        path: path.clone(),
                        commit: read.commit.clone(),
                        digest: digest.clone(),
                    },
                }),
                untrusted: !trusted,
                image: None,
            };
            let outcome = match crate::pipeline::trigger(core, &name, request).await {
                Ok(exec) => RepoOutcome::Started {
                    execution: exec.metadata.name,
                },
                // This file cannot run for this event; the others still do.
                Err(
                    e @ (crate::pipeline::TriggerError::Params { .. }
                    | crate::pipeline::TriggerError::Group { .. }),
                ) => RepoOutcome::NotRun {
                    reason: e.to_string(),
                },
                Err(e) => return Err(e.into()),
            };
            files.push(RepoFile {
                path,
                digest,
                pipeline: Some(name),
                outcome,
            });
        }
        if let Some(only) = &event.only
            && !found_only
        {
            let invalid: Vec<String> = files
                .iter()
                .filter_map(|f| match &f.outcome {
                    RepoOutcome::Invalid { message, .. } => Some(format!("{}: {message}", f.path)),
                    _ => None,
                })
                .collect();
            if invalid.is_empty() {
                return Err(self.not_found("pipeline in the repository", only));
            }
            return Err(repo_error(format!(
                "no valid file at {} defines pipeline `{only}`, and these are not valid:\n{}",
                read.commit,
                invalid.join("\n")
            )));
        }
        if let Some(forge) = &settings.forge {
            for file in &files {
                if let RepoOutcome::Invalid { summary, .. } = &file.outcome
                    && let Some(report) = crate::pipeline::forge::Report::for_file(
                        core,
                        forge,
                        &repo.repository,
                        &file.path,
                        &read.commit,
                    )
                {
                    let (core, summary) = (core.clone(), summary.clone());
                    tokio::spawn(async move {
                        let mut description = summary.lines().next().unwrap_or("").to_owned();
                        if let Some((cut, _)) = description.char_indices().nth(137) {
                            description.truncate(cut);
                            description.push('…');
                        }
                        let outcome = report
                            .post(&core, crate::pipeline::forge::State::Error, &description)
                            .await;
                        core.metrics.count_forge_status(&core.name, outcome.is_ok());
                    });
                }
            }
        }
        Ok(RepoRun {
            commit: read.commit,
            trusted,
            files,
        })
    }
}
