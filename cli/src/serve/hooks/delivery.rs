//! What a GitHub or GitLab delivery asks for, in arkline's terms: an event
//! (`push`, `tag`, `pull_request`), the branch it is about, the commit to build
//! and a few labels, or a reason why it starts nothing.
//!
//! Branch conventions (those of GitHub Actions and Drone): a push builds its
//! branch; a tag push is the event `tag` and its "branch" is the tag name (so
//! `branch: "v*"` filters release tags); a pull/merge request is matched and
//! run against its *target* branch, with the source branch in a label.

use serde_json::Value;

/// The forge that sent a delivery, told by its event header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `X-GitHub-Event`.
    Github,
    /// `X-Gitlab-Event`.
    Gitlab,
    /// `X-Gitea-Event` or `X-Forgejo-Event` (which also send GitHub's
    /// headers; theirs are read first).
    Gitea,
}

impl Provider {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }
}

/// An event arkline runs pipelines on, with what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// `push`, `tag` or `pull_request`.
    pub event: &'static str,
    /// The branch (the tag name for `tag`, the target branch for `pull_request`).
    pub branch: String,
    /// The commit to build.
    pub commit: String,
    /// Extra labels for the execution (`arkline.dev/…`).
    pub labels: Vec<(&'static str, String)>,
}

/// What a delivery means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// GitHub's `ping`, sent when a webhook is created.
    Ping,
    /// Something to run.
    Run(Run),
    /// Valid, but nothing to run (another event, a branch deletion, a closed
    /// pull request…): the reason says which.
    Ignored(String),
}

/// The payload is not what the event header announced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the `{event}` payload {problem}")]
pub struct PayloadError {
    /// The event header's value.
    pub event: String,
    /// What is missing or wrong.
    pub problem: String,
}

/// Label: the pull or merge request number.
pub const PULL_REQUEST_LABEL: &str = "arkline.dev/pull-request";
/// Label: the source branch of a pull or merge request.
pub const SOURCE_BRANCH_LABEL: &str = "arkline.dev/source-branch";

fn text<'a>(payload: &'a Value, pointer: &str) -> Option<&'a str> {
    payload.pointer(pointer).and_then(Value::as_str)
}

fn number(payload: &Value, pointer: &str) -> Option<String> {
    payload
        .pointer(pointer)
        .and_then(Value::as_u64)
        .map(|n| n.to_string())
}

struct Reader<'a> {
    event: &'a str,
    payload: &'a Value,
}

impl Reader<'_> {
    fn missing(&self, what: &str) -> PayloadError {
        PayloadError {
            event: self.event.to_owned(),
            problem: format!("has no {what}"),
        }
    }

    fn text(&self, pointer: &str, what: &str) -> Result<String, PayloadError> {
        text(self.payload, pointer)
            .map(str::to_owned)
            .ok_or_else(|| self.missing(what))
    }

    /// `refs/heads/x` → push of branch `x`; `refs/tags/t` → tag `t`.
    fn git_ref(&self, commit: String) -> Result<Delivery, PayloadError> {
        let git_ref = self.text("/ref", "`ref`")?;
        if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
            Ok(Delivery::Run(Run {
                event: "push",
                branch: branch.to_owned(),
                commit,
                labels: Vec::new(),
            }))
        } else if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
            Ok(Delivery::Run(Run {
                event: "tag",
                branch: tag.to_owned(),
                commit,
                labels: Vec::new(),
            }))
        } else {
            Ok(Delivery::Ignored(format!(
                "`{git_ref}` is neither a branch nor a tag"
            )))
        }
    }
}

/// The names a delivery gives its repository (clone and web URLs, `owner/name`),
/// to compare with the repository an engine reads its pipelines from.
pub fn repository_names(provider: Provider, payload: &Value) -> Vec<String> {
    let pointers: &[&str] = match provider {
        Provider::Github | Provider::Gitea => &[
            "/repository/clone_url",
            "/repository/html_url",
            "/repository/ssh_url",
            "/repository/git_url",
            "/repository/full_name",
        ],
        Provider::Gitlab => &[
            "/project/git_http_url",
            "/project/git_ssh_url",
            "/project/web_url",
            "/project/path_with_namespace",
        ],
    };
    pointers
        .iter()
        .filter_map(|p| text(payload, p))
        .map(str::to_owned)
        .collect()
}

/// Whether a pull or merge request comes from another repository (a fork);
/// a request whose source repository is gone counts as one.
pub fn from_fork(provider: Provider, payload: &Value) -> bool {
    match provider {
        Provider::Github | Provider::Gitea => {
            if payload.get("pull_request").is_none() {
                return false;
            }
            let head = payload.pointer("/pull_request/head/repo/full_name");
            let base = payload.pointer("/pull_request/base/repo/full_name");
            head.is_none() || head != base
        }
        Provider::Gitlab => {
            if payload
                .pointer("/object_attributes/target_project_id")
                .is_none()
            {
                return false;
            }
            payload.pointer("/object_attributes/source_project_id")
                != payload.pointer("/object_attributes/target_project_id")
        }
    }
}

/// A repository URL or `owner/name` reduced for comparison: no scheme,
/// credential, `.git` or trailing `/`; `git@host:path` as `host/path`; the
/// host in lower case.
pub fn normalize_repository(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = match rest.split_once('@') {
        Some((user, after)) if !user.contains('/') => after,
        _ => rest,
    };
    let rest = if url.contains("://") {
        rest.to_owned()
    } else {
        rest.replacen(':', "/", 1)
    };
    let rest = rest.trim_end_matches('/').trim_end_matches(".git");
    match rest.split_once('/') {
        Some((host, path)) => format!("{}/{path}", host.to_ascii_lowercase()),
        None => rest.to_owned(),
    }
}

/// Whether one of `names` is `repository`: the same URL, or its path as
/// `owner/name`.
pub fn same_repository(repository: &str, names: &[String]) -> bool {
    let want = normalize_repository(repository);
    let path = want.split_once('/').map_or("", |(_, p)| p);
    names.iter().any(|n| {
        let n = normalize_repository(n);
        n == want || (!n.is_empty() && n == path)
    })
}

/// Reads a Gitea or Forgejo delivery of event `event` (the `X-Gitea-Event`
/// header). The payloads are GitHub's, but for the pull request action that
/// new commits send: `synchronized`.
pub fn gitea(event: &str, payload: &Value) -> Result<Delivery, PayloadError> {
    if event == "pull_request"
        && payload.get("action").and_then(Value::as_str) == Some("synchronized")
    {
        let mut github_form = payload.clone();
        github_form["action"] = Value::String("synchronize".into());
        return github(event, &github_form);
    }
    match github(event, payload)? {
        Delivery::Ignored(reason) => Ok(Delivery::Ignored(reason.replacen("GitHub", "Gitea", 1))),
        other => Ok(other),
    }
}

/// Reads a GitHub delivery of event `event` (the `X-GitHub-Event` header).
pub fn github(event: &str, payload: &Value) -> Result<Delivery, PayloadError> {
    let r = Reader { event, payload };
    match event {
        "ping" => Ok(Delivery::Ping),
        "push" => {
            if payload.get("deleted").and_then(Value::as_bool) == Some(true) {
                return Ok(Delivery::Ignored(format!(
                    "the push deletes `{}`",
                    text(payload, "/ref").unwrap_or("a ref")
                )));
            }
            let commit = r.text("/after", "`after` commit")?;
            r.git_ref(commit)
        }
        "pull_request" => {
            let action = r.text("/action", "`action`")?;
            if !matches!(action.as_str(), "opened" | "synchronize" | "reopened") {
                return Ok(Delivery::Ignored(format!(
                    "pull request action `{action}` starts nothing (opened, synchronize and reopened do)"
                )));
            }
            let mut labels = vec![(
                SOURCE_BRANCH_LABEL,
                r.text("/pull_request/head/ref", "`pull_request.head.ref`")?,
            )];
            if let Some(n) =
                number(payload, "/number").or_else(|| number(payload, "/pull_request/number"))
            {
                labels.push((PULL_REQUEST_LABEL, n));
            }
            Ok(Delivery::Run(Run {
                event: "pull_request",
                branch: r.text("/pull_request/base/ref", "`pull_request.base.ref`")?,
                commit: r.text("/pull_request/head/sha", "`pull_request.head.sha`")?,
                labels,
            }))
        }
        other => Ok(Delivery::Ignored(format!(
            "GitHub event `{other}` starts nothing (push, pull_request and ping are handled)"
        ))),
    }
}

/// Reads a GitLab delivery of event `event` (the `X-Gitlab-Event` header).
pub fn gitlab(event: &str, payload: &Value) -> Result<Delivery, PayloadError> {
    let r = Reader { event, payload };
    match event {
        "Push Hook" | "Tag Push Hook" => {
            // A deleted branch or tag has no checkout commit.
            let Some(commit) = text(payload, "/checkout_sha") else {
                return Ok(Delivery::Ignored(format!(
                    "the push deletes `{}`",
                    text(payload, "/ref").unwrap_or("a ref")
                )));
            };
            r.git_ref(commit.to_owned())
        }
        "Merge Request Hook" => {
            let action = r.text("/object_attributes/action", "`object_attributes.action`")?;
            let new_commits = payload.pointer("/object_attributes/oldrev").is_some();
            let runs = match action.as_str() {
                "open" | "reopen" => true,
                "update" => new_commits,
                _ => false,
            };
            if !runs {
                return Ok(Delivery::Ignored(format!(
                    "merge request action `{action}`{} starts nothing (open, reopen and update with new commits do)",
                    if action == "update" {
                        " without new commits"
                    } else {
                        ""
                    }
                )));
            }
            let mut labels = vec![(
                SOURCE_BRANCH_LABEL,
                r.text(
                    "/object_attributes/source_branch",
                    "`object_attributes.source_branch`",
                )?,
            )];
            if let Some(n) = number(payload, "/object_attributes/iid") {
                labels.push((PULL_REQUEST_LABEL, n));
            }
            Ok(Delivery::Run(Run {
                event: "pull_request",
                branch: r.text(
                    "/object_attributes/target_branch",
                    "`object_attributes.target_branch`",
                )?,
                commit: r.text(
                    "/object_attributes/last_commit/id",
                    "`object_attributes.last_commit.id`",
                )?,
                labels,
            }))
        }
        other => Ok(Delivery::Ignored(format!(
            "GitLab event `{other}` starts nothing (Push Hook, Tag Push Hook and Merge Request Hook are handled)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(d: Delivery) -> Run {
        match d {
            Delivery::Run(r) => r,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn github_push_and_tag() {
        let push = run(github("push", &json!({"ref": "refs/heads/main", "after": "abc"})).unwrap());
        assert_eq!(
            (push.event, push.branch.as_str(), push.commit.as_str()),
            ("push", "main", "abc")
        );
        let tag = run(github("push", &json!({"ref": "refs/tags/v1.2.0", "after": "def"})).unwrap());
        assert_eq!((tag.event, tag.branch.as_str()), ("tag", "v1.2.0"));
        assert!(matches!(
            github("push", &json!({"ref": "refs/heads/x", "after": "0000", "deleted": true})).unwrap(),
            Delivery::Ignored(r) if r.contains("deletes `refs/heads/x`")
        ));
        let err = github("push", &json!({"after": "abc"})).unwrap_err();
        assert_eq!(err.to_string(), "the `push` payload has no `ref`");
    }

    #[test]
    fn repositories_compare_by_url_or_path_and_forks_are_told() {
        let payload = json!({
            "repository": {"clone_url": "https://GitHub.com/acme/app.git", "full_name": "acme/app"},
            "pull_request": {"head": {"repo": {"full_name": "eve/app"}}, "base": {"repo": {"full_name": "acme/app"}}},
        });
        let names = repository_names(Provider::Github, &payload);
        assert!(same_repository("https://github.com/acme/app", &names));
        assert!(same_repository("git@github.com:acme/app.git", &names));
        assert!(!same_repository("https://github.com/acme/other", &names));
        assert!(from_fork(Provider::Github, &payload));
        let same = json!({"pull_request": {"head": {"repo": {"full_name": "acme/app"}}, "base": {"repo": {"full_name": "acme/app"}}}});
        assert!(!from_fork(Provider::Github, &same));
        assert!(!from_fork(
            Provider::Github,
            &json!({"ref": "refs/heads/main"})
        ));
        let mr = json!({"object_attributes": {"source_project_id": 7, "target_project_id": 9}});
        assert!(from_fork(Provider::Gitlab, &mr));
    }

    #[test]
    fn github_pull_request_runs_on_the_target_branch() {
        let payload = json!({
            "action": "synchronize",
            "number": 42,
            "pull_request": {"head": {"ref": "feature/x", "sha": "f00"}, "base": {"ref": "main"}},
        });
        let pr = run(github("pull_request", &payload).unwrap());
        assert_eq!(
            (pr.event, pr.branch.as_str(), pr.commit.as_str()),
            ("pull_request", "main", "f00")
        );
        assert_eq!(
            pr.labels,
            vec![
                (SOURCE_BRANCH_LABEL, "feature/x".to_owned()),
                (PULL_REQUEST_LABEL, "42".to_owned())
            ]
        );
        let closed = json!({"action": "closed", "pull_request": {}});
        assert!(
            matches!(github("pull_request", &closed).unwrap(), Delivery::Ignored(r) if r.contains("`closed`"))
        );
        assert_eq!(
            github("ping", &json!({"zen": "hi"})).unwrap(),
            Delivery::Ping
        );
        assert!(
            matches!(github("issues", &json!({})).unwrap(), Delivery::Ignored(r) if r.contains("`issues`"))
        );
    }

    #[test]
    fn gitlab_push_tag_and_merge_request() {
        let push = run(gitlab(
            "Push Hook",
            &json!({"ref": "refs/heads/dev", "checkout_sha": "a1"}),
        )
        .unwrap());
        assert_eq!(
            (push.event, push.branch.as_str(), push.commit.as_str()),
            ("push", "dev", "a1")
        );
        let tag = run(gitlab(
            "Tag Push Hook",
            &json!({"ref": "refs/tags/v2", "checkout_sha": "b2"}),
        )
        .unwrap());
        assert_eq!((tag.event, tag.branch.as_str()), ("tag", "v2"));
        assert!(matches!(
            gitlab(
                "Push Hook",
                &json!({"ref": "refs/heads/dev", "checkout_sha": null})
            )
            .unwrap(),
            Delivery::Ignored(_)
        ));
        let mr = json!({"object_attributes": {
            "action": "open", "iid": 7, "source_branch": "fix", "target_branch": "main",
            "last_commit": {"id": "c3"}}});
        let mr = run(gitlab("Merge Request Hook", &mr).unwrap());
        assert_eq!(
            (mr.event, mr.branch.as_str(), mr.commit.as_str()),
            ("pull_request", "main", "c3")
        );
        let retitled = json!({"object_attributes": {"action": "update"}});
        assert!(matches!(
            gitlab("Merge Request Hook", &retitled).unwrap(),
            Delivery::Ignored(r) if r.contains("without new commits")
        ));
    }
}
