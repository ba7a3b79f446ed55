//! The pipeline's `source`: the repository checked out by the host into an
//! execution's workspace before its first step.
//!
//! - **Who runs git.** The host's `git`, through [`crate::host::process::run`]:
//!   the same namespace sandbox, Landlock domain, cgroup and scrubbed
//!   environment as a biz's `process` capability. Git is not run by a biz
//!   (the `git` plugin) because the checkout must happen before any step, and
//!   whether the host may reach the repository is the pipeline's declaration,
//!   not a grant.
//! - **Two runs, two views.** The objects are fetched into a host-side copy of
//!   the repository kept per engine and repository
//!   ([`crate::pipeline::workspace::Workspaces::git_mirror`]): one sandboxed
//!   run sees that copy read-write and the network. The checkout is a second
//!   run that sees the workspace read-write, the copy read-only and no
//!   network. The next execution fetches only the objects the copy lacks.
//! - **Credentials.** The `credential` secret reaches git as an
//!   `Authorization: Basic` header scoped to the repository's origin, through
//!   `GIT_CONFIG_*` variables of the fetch run only: never in a URL, a command
//!   line, `.git/config` or the workspace; the log is masked.
//! - **Shallow.** One commit of history unless `depth` says otherwise.
//! - **Resumes.** The commit is recorded in the execution's status before the
//!   first step runs; a resumed execution checks out that commit again only
//!   when its workspace has no repository.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use zeroize::Zeroizing;

use crate::host::process::{self, ProcessContext, ProcessPolicy, ProcessRequest, ProcessStatus};
use crate::host::step_log::{LogCapture, LogLevel, LogSource};
use crate::model::{PipelineExecution, SourceSpec, SourceStatus};
use crate::pipeline::context::EngineCore;
use crate::pipeline::secrets::Masker;

/// The log key (in place of a step name) of the checkout's log. Step names
/// cannot start with `@`.
pub(crate) const LOG_STEP: &str = "@source";

/// Longest one git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The user name sent with a token-only credential (GitHub, GitLab and Gitea
/// accept any name with a token as the password).
const TOKEN_USER: &str = "x-access-token";

/// One fetch at a time per host-side copy (a shallow fetch rewrites its
/// `shallow` file).
static MIRROR_LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

fn mirror_lock(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = MIRROR_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    locks.entry(dir.to_path_buf()).or_default().clone()
}

/// What to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    /// This commit (full SHA).
    Commit(String),
    /// The head of this branch.
    Branch(String),
    /// The remote's default branch.
    Head,
}

impl Want {
    /// The commit when there is one (a full SHA), else the branch's head
    /// (a checked name), else the remote's default branch.
    fn of(commit: &str, branch: &str) -> Result<Want, String> {
        if !branch.is_empty() {
            crate::model::check_branch_name(branch).map_err(|why| format!("the branch {why}"))?;
        }
        if !commit.is_empty() {
            if !is_full_sha(commit) {
                return Err(format!(
                    "commit `{commit}` is not a full commit SHA (40 or 64 hex digits)"
                ));
            }
            Ok(Want::Commit(commit.to_ascii_lowercase()))
        } else if !branch.is_empty() {
            Ok(Want::Branch(branch.to_owned()))
        } else {
            Ok(Want::Head)
        }
    }
}

/// One execution's checkout.
pub(crate) struct Checkout<'a> {
    pub(crate) core: &'a EngineCore,
    pub(crate) source: &'a SourceSpec,
    pub(crate) exec: &'a PipelineExecution,
    pub(crate) workspace: &'a Path,
    pub(crate) log: &'a LogCapture,
    /// The engine requires the process sandbox.
    pub(crate) require_sandbox: bool,
    /// The secret holding the credential, as [`credential_for`] decided.
    pub(crate) credential: Option<String>,
}

/// The credential secret a checkout of `source` may use: the pipeline's
/// `source.credential`, but for an untrusted execution (whose pipeline file
/// a fork wrote) only the engine's own `pipelines_from_repo.credential`, and
/// only for that repository: a fork's file must not send an engine secret
/// to a host of its choosing.
pub(crate) fn credential_for(
    source: &SourceSpec,
    untrusted: bool,
    repo: Option<&crate::model::RepoPipelines>,
) -> Result<Option<String>, String> {
    if !untrusted {
        return Ok(source.credential.clone());
    }
    match repo {
        Some(repo) if repo.repository == source.repository => Ok(repo.credential.clone()),
        _ if source.credential.is_some() => Err(
            "this execution is untrusted (a pull request from a fork, or an event not in \
             `pipelines_from_repo.trusted_events`), so it gets no secret, and its `source` \
             names the credential secret of a repository other than the engine's"
                .to_owned(),
        ),
        _ => Ok(None),
    }
}

/// The secret material of one checkout, and the masker that hides it.
struct Auth {
    /// `http.<origin>/.extraHeader` and its value.
    header: Option<(String, Zeroizing<String>)>,
    masker: Masker,
}

impl Checkout<'_> {
    /// The masker of a checkout's credential, to build the log with.
    pub(crate) async fn masker(
        core: &EngineCore,
        source: &SourceSpec,
        credential: Option<&str>,
    ) -> Result<Masker, String> {
        Ok(auth(core, &source.repository, credential).await?.masker)
    }

    /// Checks the source out into the workspace and says what was checked
    /// out. With `recorded` (a resumed execution), that commit is checked out
    /// again, and nothing is done when the workspace already holds a
    /// repository.
    pub(crate) async fn run(
        &self,
        recorded: Option<&SourceStatus>,
    ) -> Result<SourceStatus, String> {
        let source = self.source;
        crate::model::check_repository_url(&source.repository)
            .map_err(|why| format!("`source.repository` {why}"))?;
        if let Some(done) = recorded
            && self.workspace.join(".git").exists()
        {
            note(
                self.log,
                &format!(
                    "resumed: the workspace already holds {} at {}",
                    done.repository, done.commit
                ),
            );
            return Ok(done.clone());
        }
        let branch = match recorded {
            Some(done) => done.branch.clone(),
            None => [
                self.exec.spec.branch.as_str(),
                source.branch.as_deref().unwrap_or(""),
            ]
            .into_iter()
            .find(|b| !b.is_empty())
            .unwrap_or_default()
            .to_owned(),
        };
        let commit = recorded
            .map(|r| r.commit.as_str())
            .unwrap_or(self.exec.spec.commit.as_str());
        let want = Want::of(commit, &branch)?;
        let auth = auth(self.core, &source.repository, self.credential.as_deref()).await?;
        let (policy, limits) = git_policy(self.core)?;
        let mirror = self
            .core
            .workspaces
            .git_mirror(&self.core.name, &source.repository)
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&mirror)
            .map_err(|e| format!("cannot create {}: {e}", mirror.display()))?;
        let lock = mirror_lock(&mirror);
        let _one_at_a_time = lock.lock().await;
        let depth = source.depth.unwrap_or(1);
        let fetch = Git {
            policy: &policy.clone().with_host_network(true),
            dir: &mirror,
            auth: &auth,
            log: self.log,
            credential: self.credential.as_deref(),
            require_sandbox: self.require_sandbox,
        };
        let commit = fetch
            .fetch_into_copy(&source.repository, &want, &branch, depth)
            .await?;

        let mut local = limits;
        local.read_only_paths.push(mirror.clone());
        let local_policy = ProcessPolicy::resolve(&["git".to_owned()], local);
        let local = Git {
            policy: &local_policy,
            dir: self.workspace,
            auth: &Auth {
                header: None,
                masker: auth.masker.clone(),
            },
            log: self.log,
            credential: None,
            require_sandbox: self.require_sandbox,
        };
        local
            .check_out(&source.repository, &mirror, &commit, &branch, depth)
            .await?;
        note(
            self.log,
            &format!(
                "checked out {} at {commit}{}",
                source.repository,
                if branch.is_empty() {
                    String::new()
                } else {
                    format!(" (branch {branch})")
                }
            ),
        );
        Ok(SourceStatus {
            repository: source.repository.clone(),
            commit,
            branch,
        })
    }
}

async fn auth(
    core: &EngineCore,
    repository: &str,
    credential: Option<&str>,
) -> Result<Auth, String> {
    let Some(name) = credential else {
        return Ok(Auth {
            header: None,
            masker: Masker::default(),
        });
    };
    let (scheme, rest) = repository.split_once("://").unwrap_or(("", repository));
    if !matches!(scheme, "http" | "https") {
        return Err(format!(
            "a credential is given for `{repository}`, but credentials are sent over `http(s)` only"
        ));
    }
    let data = core
        .secrets
        .get_data(name)
        .await
        .map_err(|e| format!("credential: {e}"))?
        .ok_or_else(|| {
            format!(
                "the credential secret `{name}` does not exist in engine `{}`: set it \
                 (`arkline ctl secret set {name} …`)",
                core.name
            )
        })?;
    let (user, password) = match (
        data.get("username"),
        data.get("password"),
        data.get(crate::pipeline::secrets::VALUE_KEY),
    ) {
        (Some(u), Some(p), _) => (u.clone(), p.clone()),
        (None, None, Some(token)) => (Zeroizing::new(TOKEN_USER.to_owned()), token.clone()),
        _ => {
            return Err(format!(
                "the credential secret `{name}` has keys {:?}: give it a `value` (a token) or \
                 `username` and `password`",
                data.keys().collect::<Vec<_>>()
            ));
        }
    };
    let basic = Zeroizing::new(
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", *user, *password)),
    );
    let origin = format!("{scheme}://{}/", rest.split('/').next().unwrap_or_default());
    let header = Zeroizing::new(format!("Authorization: Basic {}", *basic));
    Ok(Auth {
        header: Some((format!("http.{origin}.extraHeader"), header)),
        masker: Masker::new([password.as_str(), basic.as_str()]),
    })
}

/// The policy running the host's `git` (with this host's process limits).
fn git_policy(
    core: &EngineCore,
) -> Result<(ProcessPolicy, crate::host::process::ProcessLimits), String> {
    let limits = core.registry.runtime().config().process_limits.clone();
    let policy = ProcessPolicy::resolve(&["git".to_owned()], limits.clone());
    if let Some(Err(why)) = policy.program("git") {
        return Err(format!(
            "repositories are read with the host's `git`, and {why}: install git on this host"
        ));
    }
    Ok((policy, limits))
}

/// The pipeline files of a repository at one commit.
pub(crate) struct RepoRead {
    /// The commit read (the branch's head resolved, when no commit was given).
    pub(crate) commit: String,
    /// Each file matching the setting's `path`, sorted: its path and content,
    /// or why it was not read.
    pub(crate) files: Vec<(String, Result<Vec<u8>, String>)>,
}

/// Reads the pipeline files of `repo` at `commit` (or the head of `branch`,
/// or of the default branch): fetched into the engine's host-side copy and
/// read from it, each file at most `max_bytes`.
pub(crate) async fn read_repo(
    core: &EngineCore,
    repo: &crate::model::RepoPipelines,
    commit: &str,
    branch: &str,
    max_bytes: usize,
    require_sandbox: bool,
) -> Result<RepoRead, String> {
    crate::model::check_repository_url(&repo.repository)
        .map_err(|why| format!("`pipelines_from_repo.repository` {why}"))?;
    let want = Want::of(commit, branch)?;
    let (dir, pattern) = match repo.path.rsplit_once('/') {
        Some((dir, _)) if dir.contains(['*', '?', '[', '{']) => {
            return Err(format!(
                "`pipelines_from_repo.path` `{}` has a pattern in a directory; only the file \
                 name may have one (`.arkline/*.yaml`)",
                repo.path
            ));
        }
        Some((dir, _)) => (
            dir.trim_start_matches("./").to_owned(),
            repo.path.trim_start_matches("./"),
        ),
        None => (String::new(), repo.path.as_str()),
    };
    let glob = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("`pipelines_from_repo.path` `{}`: {e}", repo.path))?
        .compile_matcher();
    let auth = auth(core, &repo.repository, repo.credential.as_deref()).await?;
    let (policy, _) = git_policy(core)?;
    let mirror = core
        .workspaces
        .git_mirror(&core.name, &repo.repository)
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&mirror)
        .map_err(|e| format!("cannot create {}: {e}", mirror.display()))?;
    let log = LogCapture::new(
        1 << 20,
        crate::host::step_log::LogLabels {
            engine: core.name.clone(),
            biz: "arkline".into(),
            step: "@repository".into(),
        },
        None,
    );
    let lock = mirror_lock(&mirror);
    let _one_at_a_time = lock.lock().await;
    let git = Git {
        policy: &policy.with_host_network(true),
        dir: &mirror,
        auth: &auth,
        log: &log,
        credential: repo.credential.as_deref(),
        require_sandbox,
    };
    let branch_name = match &want {
        Want::Branch(b) => b.clone(),
        _ => branch.to_owned(),
    };
    let commit = git
        .fetch_into_copy(&repo.repository, &want, &branch_name, 1)
        .await?;
    let listing = if dir.is_empty() {
        git.git(&["ls-tree", "-l", "-z", &commit]).await?
    } else {
        let tree = format!("{commit}:{dir}");
        // No such directory at this commit: no pipeline files.
        git.git(&["ls-tree", "-l", "-z", &tree])
            .await
            .unwrap_or_default()
    };
    let mut files = Vec::new();
    for entry in listing.split('\0').filter(|e| !e.is_empty()) {
        let Some((meta, name)) = entry.split_once('\t') else {
            continue;
        };
        let fields: Vec<&str> = meta.split_whitespace().collect();
        let [_, kind, object, size] = fields[..] else {
            continue;
        };
        let path = if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        };
        if kind != "blob" || !glob.is_match(&path) {
            continue;
        }
        let size: usize = size.parse().unwrap_or(usize::MAX);
        let content = if size > max_bytes {
            Err(format!(
                "{path} is {size} bytes, over the {max_bytes} bytes a pipeline file may have"
            ))
        } else {
            git.git_bytes(&["cat-file", "blob", object]).await
        };
        files.push((path, content));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(RepoRead { commit, files })
}

/// Removes the `*.lock` files a git killed with its process (a crash, a
/// SIGKILL) left in `git_dir` and its `refs/`: git refuses to write while
/// they exist, and no git runs there now (fetches into a copy are one at a
/// time; a workspace has one driver).
fn clear_stale_locks(git_dir: &Path) {
    let mut dirs = vec![git_dir.to_path_buf()];
    let refs = git_dir.join("refs");
    let mut stack = vec![refs];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
        dirs.push(dir);
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".lock")
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A line of the host's in the checkout's log.
fn note(log: &LogCapture, message: &str) {
    log.push(
        LogLevel::Info,
        LogSource::Host,
        message.to_owned(),
        Vec::new(),
    );
}

fn is_full_sha(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Runs git in one directory, under one policy.
struct Git<'a> {
    policy: &'a ProcessPolicy,
    dir: &'a Path,
    auth: &'a Auth,
    log: &'a LogCapture,
    /// The name of the credential secret (for messages).
    credential: Option<&'a str>,
    require_sandbox: bool,
}

impl Git<'_> {
    /// Fetches `want` into the host-side copy; returns the commit.
    async fn fetch_into_copy(
        &self,
        url: &str,
        want: &Want,
        branch: &str,
        depth: u32,
    ) -> Result<String, String> {
        if self.dir.join("HEAD").exists() {
            clear_stale_locks(self.dir);
        } else {
            self.git(&["init", "--bare", "-q", "."]).await?;
        }
        let shallow = self.dir.join("shallow").exists();
        let depth_arg = format!("--depth={depth}");
        let mut args = vec!["fetch", "--no-tags", "--no-auto-gc"];
        if depth > 0 {
            args.push(&depth_arg);
        } else if shallow {
            args.push("--unshallow");
        }
        args.extend(["--end-of-options", url]);
        let commit = match want {
            Want::Commit(sha) => {
                let mut by_sha = args.clone();
                by_sha.push(sha);
                match self.git(&by_sha).await {
                    Ok(_) => sha.clone(),
                    Err(why) if !branch.is_empty() => {
                        // A server that does not serve commits by SHA: the
                        // branch's whole history, where the commit must be.
                        note(
                            self.log,
                            &format!(
                                "fetching commit {sha} by itself failed ({why}); fetching branch \
                             {branch} with its history"
                            ),
                        );
                        let mut full = vec!["fetch", "--no-tags", "--no-auto-gc"];
                        if self.dir.join("shallow").exists() {
                            full.push("--unshallow");
                        }
                        let refspec = format!("refs/heads/{branch}");
                        full.extend(["--end-of-options", url, &refspec]);
                        self.git(&full).await?;
                        let object = format!("{sha}^{{commit}}");
                        self.git(&["cat-file", "-e", &object]).await.map_err(|_| {
                            format!("commit {sha} is not on branch {branch} of {url}")
                        })?;
                        sha.clone()
                    }
                    Err(why) => return Err(why),
                }
            }
            Want::Branch(name) => {
                let refspec = format!("refs/heads/{name}");
                let mut by_branch = args.clone();
                by_branch.push(&refspec);
                self.git(&by_branch)
                    .await
                    .map_err(|why| format!("branch `{name}`: {why}"))?;
                self.git(&["rev-parse", "--verify", "FETCH_HEAD^{commit}"])
                    .await?
            }
            Want::Head => {
                let mut head = args.clone();
                head.push("HEAD");
                self.git(&head).await?;
                self.git(&["rev-parse", "--verify", "FETCH_HEAD^{commit}"])
                    .await?
            }
        };
        // A ref keeps the objects from being pruned and offers them as
        // haves to the next fetch.
        let name = match want {
            Want::Branch(b) => format!("refs/arkline/heads/{b}"),
            Want::Commit(_) if !branch.is_empty() => format!("refs/arkline/heads/{branch}"),
            _ => "refs/arkline/HEAD".to_owned(),
        };
        self.git(&["update-ref", &name, &commit]).await?;
        Ok(commit)
    }

    /// Checks `commit` out of the host-side copy into the workspace.
    async fn check_out(
        &self,
        url: &str,
        copy: &Path,
        commit: &str,
        branch: &str,
        depth: u32,
    ) -> Result<(), String> {
        if self.dir.join(".git").exists() {
            clear_stale_locks(&self.dir.join(".git"));
        } else {
            self.git(&["init", "-q"]).await?;
        }
        let copy_url = format!("file://{}", copy.display());
        let depth_arg = format!("--depth={depth}");
        let mut args = vec!["fetch", "-q", "--no-tags", "--no-auto-gc"];
        if depth > 0 {
            args.push(&depth_arg);
        }
        args.extend(["--end-of-options", &copy_url, commit]);
        self.git(&args).await?;
        if branch.is_empty() {
            self.git(&["checkout", "-q", "-f", "--detach", commit])
                .await?;
        } else {
            self.git(&["checkout", "-q", "-f", "-B", branch, commit])
                .await?;
        }
        // `origin` names the repository (no credential in it), so steps can
        // fetch from it with credentials of their own.
        self.git(&["config", "remote.origin.url", url]).await?;
        self.git(&[
            "config",
            "remote.origin.fetch",
            "+refs/heads/*:refs/remotes/origin/*",
        ])
        .await?;
        Ok(())
    }

    async fn git(&self, args: &[&str]) -> Result<String, String> {
        let out = self.git_bytes(args).await?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// Runs git; its stdout, whole.
    async fn git_bytes(&self, args: &[&str]) -> Result<Vec<u8>, String> {
        let mut config: Vec<(String, String)> = vec![
            ("safe.directory".into(), "*".into()),
            ("uploadpack.allowAnySHA1InWant".into(), "true".into()),
            ("advice.detachedHead".into(), "false".into()),
            ("init.defaultBranch".into(), "main".into()),
            ("protocol.version".into(), "2".into()),
        ];
        if let Some((key, value)) = &self.auth.header {
            config.push((key.clone(), value.to_string()));
        }
        let mut env: Vec<(String, String)> = vec![
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
            ("GIT_CONFIG_COUNT".into(), config.len().to_string()),
        ];
        for (i, (key, value)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), key));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), value));
        }
        let request = ProcessRequest {
            program: "git".into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env,
            cwd: None,
            stdin: None,
            timeout: Some(GIT_TIMEOUT),
            // Not for reads of objects: their content is the output.
            stream_to_log: !matches!(args.first(), Some(&("cat-file" | "ls-tree"))),
        };
        let ctx = ProcessContext {
            policy: self.policy,
            workspace: Some(self.dir),
            log: self.log,
            deadline: Instant::now() + GIT_TIMEOUT,
            require_sandbox: self.require_sandbox,
        };
        let output = process::run(ctx, request)
            .await
            .map_err(|e| format!("cannot run `git {}`: {e}", args[0]))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = self.auth.masker.mask(stderr.trim()).into_owned();
        match output.status {
            ProcessStatus::Exited(0) if output.stdout_truncated => Err(format!(
                "`git {}` wrote more than this host's process output cap",
                args[0]
            )),
            ProcessStatus::Exited(0) => Ok(output.stdout),
            status => {
                let how = match status {
                    ProcessStatus::Exited(code) => format!("exit status {code}"),
                    ProcessStatus::Signaled(signal) => format!("signal {signal}"),
                    ProcessStatus::TimedOut => format!("timed out after {GIT_TIMEOUT:?}"),
                };
                let last = stderr.lines().last().unwrap_or("no message");
                let hint = if [
                    "could not read Username",
                    "Authentication failed",
                    " 401",
                    " 403",
                ]
                .iter()
                .any(|m| stderr.contains(m))
                {
                    match self.credential {
                        Some(name) => format!(
                            " (the repository refused the credential in secret `{name}`: check it)"
                        ),
                        None => " (the repository asks for a credential: name a secret in \
                                 `source.credential`)"
                            .to_owned(),
                    }
                } else {
                    String::new()
                };
                Err(format!("`git {}` failed ({how}): {last}{hint}", args[0]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_locks_go_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let git = dir.path();
        std::fs::create_dir_all(git.join("refs/heads/feature")).expect("mkdir");
        for f in [
            "shallow.lock",
            "HEAD",
            "refs/heads/main.lock",
            "refs/heads/feature/x.lock",
            "refs/heads/main",
        ] {
            std::fs::write(git.join(f), "x").expect("write");
        }
        clear_stale_locks(git);
        assert!(!git.join("shallow.lock").exists());
        assert!(!git.join("refs/heads/main.lock").exists());
        assert!(!git.join("refs/heads/feature/x.lock").exists());
        assert!(git.join("HEAD").exists() && git.join("refs/heads/main").exists());
    }

    #[test]
    fn full_shas_only() {
        assert!(is_full_sha(&"a".repeat(40)));
        assert!(is_full_sha(&"0123456789abcdefABCDEF".repeat(3)[..64]));
        assert!(!is_full_sha("abc1234"));
        assert!(!is_full_sha(&"g".repeat(40)));
    }
}
