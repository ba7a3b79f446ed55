//! The `git` biz: clones repositories and checks out refs by running the host's
//! `git` through the `process` capability.
//!
//! ```yaml
//! - name: source
//!   uses: git/clone@0.1
//!   with:
//!     url: https://git.example.com/team/app.git
//!     ref: ${{ params.branch }}
//!     depth: 1
//!     submodules: true
//!     path: src
//!     password: ${{ secrets.git_token }}
//! - name: test
//!   uses: shell
//!   with:
//!     working_dir: src
//!     script: cargo test
//! ```
//!
//! `ref` may be a branch, a tag or a commit (full or abbreviated SHA); without it
//! the remote's default branch is cloned. Outputs: `commit`, `short_sha`, `branch`
//! (empty when a tag or commit is checked out detached), `author` (`Name
//! <email>`), `message` (the subject line).
//!
//! Credentials (`username`/`password`, for `http(s)` remotes) never appear in a
//! command line or URL: they reach git as an `Authorization` header scoped to the
//! remote's origin through `GIT_CONFIG_*` environment variables. Git never
//! prompts (`GIT_TERMINAL_PROMPT=0`), and the host's system git configuration is
//! ignored.

use std::fs;
use std::time::Duration;

use arkline_sdk::prelude::*;
use base64::Engine as _;

use arkline_sdk::workspace::{guest_path, relative_path};

/// Configuration of the `clone` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneConfig {
    /// The repository URL (`https://`, `http://`, `git://`, or a path in the
    /// workspace).
    pub url: String,
    /// The branch, tag or commit to check out (default: the remote's default branch).
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// The directory to clone into, relative to the workspace root; it must be
    /// missing or empty (default: the workspace root).
    #[serde(default)]
    pub path: Option<String>,
    /// Fetch only this many commits of history (0: everything). An abbreviated
    /// commit SHA needs the full history and ignores it.
    #[serde(default)]
    pub depth: u32,
    /// Check out submodules, recursively (with the same depth).
    #[serde(default)]
    pub submodules: bool,
    /// User name for an `http(s)` remote (default `x-access-token`, which GitHub,
    /// GitLab and Gitea accept with a token as password).
    #[serde(default)]
    pub username: Option<String>,
    /// Password or token for an `http(s)` remote; pass a secret
    /// (`${{ secrets.git_token }}`). Never written to the log or a command line.
    #[serde(default)]
    pub password: Option<String>,
    /// Time limit of each git command (default `10m`).
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

/// Configuration of the `checkout` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutConfig {
    /// The branch, tag or commit to check out.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The repository's directory, relative to the workspace root (default: the
    /// workspace root).
    #[serde(default)]
    pub path: Option<String>,
    /// Fetch `ref` from `origin` first when it is not known locally (default: true).
    #[serde(default = "default_true")]
    pub fetch: bool,
    /// History depth of that fetch (0: everything).
    #[serde(default)]
    pub depth: u32,
    /// Update submodules after the checkout.
    #[serde(default)]
    pub submodules: bool,
    /// User name for an `http(s)` origin (default `x-access-token`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password or token for an `http(s)` origin; pass a secret.
    #[serde(default)]
    pub password: Option<String>,
    /// Time limit of each git command (default `10m`).
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

fn default_timeout() -> String {
    "10m".to_owned()
}

fn default_true() -> bool {
    true
}

/// What `ref` names on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Branch(String),
    Tag(String),
    Commit(String),
}

/// Runs git in one repository with a fixed environment.
struct Git {
    dir: String,
    env: Vec<(String, String)>,
    timeout: Duration,
}

impl Git {
    fn new(
        dir: String,
        url: Option<&str>,
        credentials: Option<(String, String)>,
        timeout: Duration,
    ) -> Self {
        let mut config = vec![
            ("advice.detachedHead".to_owned(), "false".to_owned()),
            ("init.defaultBranch".to_owned(), "main".to_owned()),
            ("protocol.version".to_owned(), "2".to_owned()),
        ];
        if let (Some((user, password)), Some(url)) = (credentials, url.and_then(origin)) {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            config.push((
                format!("http.{url}.extraHeader"),
                format!("Authorization: Basic {token}"),
            ));
        }
        let mut env = vec![
            ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
            ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".to_owned()),
            ("GIT_CONFIG_COUNT".to_owned(), config.len().to_string()),
        ];
        for (i, (key, value)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), key));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), value));
        }
        Git { dir, env, timeout }
    }

    /// Runs `git <args>` in the repository; its stdout on success.
    fn run(&self, args: &[&str]) -> Result<String, StepError> {
        self.run_in(&self.dir, args)
    }

    fn run_in(&self, dir: &str, args: &[&str]) -> Result<String, StepError> {
        let out = process::Command::new("git")
            .args(args.iter().copied())
            .envs(self.env.iter().cloned())
            .current_dir(dir)
            .timeout(self.timeout)
            .stream_to_log(false)
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(5)..].join("\n");
            Err(StepError::failed(format!(
                "`git {}` ended with {}{}",
                args.first().copied().unwrap_or_default(),
                out.status,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(":\n{tail}")
                }
            )))
        }
    }
}

/// `scheme://host[:port]/` of an `http(s)` URL, the scope of the credentials.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split('/').next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    Some(format!("{scheme}://{authority}/"))
}

fn credentials(
    url: &str,
    username: &Option<String>,
    password: &Option<String>,
) -> Result<Option<(String, String)>, StepError> {
    let Some(password) = password else {
        if username.is_some() {
            return Err(StepError::invalid_config(
                "password",
                "`username` is given without `password`; pass the password or token (a secret)",
            ));
        }
        return Ok(None);
    };
    if origin(url).is_none() {
        return Err(StepError::invalid_config(
            "password",
            "credentials apply to http:// and https:// remotes without user info in the URL; remove them or use such a URL",
        ));
    }
    let user = username
        .clone()
        .unwrap_or_else(|| "x-access-token".to_owned());
    Ok(Some((user, password.clone())))
}

fn timeout(text: &str) -> Result<Duration, StepError> {
    humantime::parse_duration(text).map_err(|e| {
        StepError::invalid_config(
            "timeout",
            format!("`{text}` is not a duration such as `90s`, `10m` or `1h`: {e}"),
        )
    })
}

fn is_sha(text: &str) -> bool {
    (4..=40).contains(&text.len()) && text.chars().all(|c| c.is_ascii_hexdigit())
}

fn check_ref(reference: &str) -> Result<(), StepError> {
    let bad = reference.is_empty()
        || reference.starts_with('-')
        || reference.contains("..")
        || reference
            .chars()
            .any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c));
    if bad {
        Err(StepError::invalid_config(
            "ref",
            format!("`{reference}` is not a branch, tag or commit name"),
        ))
    } else {
        Ok(())
    }
}

fn repo_dir(path: &Option<String>) -> Result<(String, String), StepError> {
    let rel = match path {
        Some(p) => relative_path(p).ok_or_else(|| {
            StepError::invalid_config(
                "path",
                format!("`{p}` leaves the workspace; give a path relative to the workspace root"),
            )
        })?,
        None => String::new(),
    };
    Ok((guest_path(&rel), rel))
}

/// Runs the `clone` step.
pub fn clone(_ctx: &Context, config: CloneConfig) -> StepResult {
    if config.url.trim().is_empty() || config.url.starts_with('-') {
        return Err(StepError::invalid_config(
            "url",
            format!("`{}` is not a repository URL", config.url),
        ));
    }
    if let Some(r) = &config.reference {
        check_ref(r)?;
    }
    let (dir, rel) = repo_dir(&config.path)?;
    let creds = credentials(&config.url, &config.username, &config.password)?;
    let git = Git::new(
        dir.clone(),
        Some(&config.url),
        creds,
        timeout(&config.timeout)?,
    );

    match fs::read_dir(&dir) {
        Ok(mut entries) => {
            // The host keeps its own files under `.arkline` at the workspace root.
            if entries.any(|e| e.is_ok_and(|e| !(rel.is_empty() && e.file_name() == ".arkline"))) {
                return Err(StepError::invalid_config(
                    "path",
                    format!("{dir} is not empty; clone into a new directory (`path`)"),
                ));
            }
        }
        Err(_) => fs::create_dir_all(&dir)
            .map_err(|e| StepError::failed(format!("cannot create {dir}: {e}")))?,
    }
    git.run(&["init", "-q", "."])?;
    if rel.is_empty() {
        // Keep the host's directory out of `git status`.
        let _ = fs::write(format!("{dir}/.git/info/exclude"), "/.arkline/\n");
    }
    git.run(&["remote", "add", "origin", &config.url])?;
    let target = resolve(&git, config.reference.as_deref(), &config.url)?;
    fetch_and_checkout(&git, &target, config.depth)?;
    if config.submodules {
        update_submodules(&git, config.depth)?;
    }
    outcome(&git, &target, &rel)
}

/// Runs the `checkout` step.
pub fn checkout(_ctx: &Context, config: CheckoutConfig) -> StepResult {
    check_ref(&config.reference)?;
    let (dir, rel) = repo_dir(&config.path)?;
    if fs::metadata(format!("{dir}/.git")).is_err() {
        return Err(StepError::invalid_config(
            "path",
            format!("{dir} is not a git repository; clone it first (`git/clone`)"),
        ));
    }
    let probe = Git::new(dir.clone(), None, None, timeout(&config.timeout)?);
    let url = probe.run(&["remote", "get-url", "origin"]).ok();
    let url = url.as_deref().map(str::trim);
    let creds = credentials(url.unwrap_or_default(), &config.username, &config.password)?;
    let git = Git::new(dir, url, creds, timeout(&config.timeout)?);
    let local = git
        .run(&[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{}^{{commit}}", config.reference),
        ])
        .is_ok();
    let target = if local || !config.fetch {
        let branch = git
            .run(&[
                "show-ref",
                "--verify",
                "--quiet",
                &format!("refs/heads/{}", config.reference),
            ])
            .is_ok();
        git.run(&["checkout", "-q", &config.reference])?;
        if branch {
            Target::Branch(config.reference.clone())
        } else {
            Target::Commit(config.reference.clone())
        }
    } else {
        let url = url.ok_or_else(|| {
            StepError::failed(format!(
                "`{}` is not in the repository and it has no `origin` to fetch it from",
                config.reference
            ))
        })?;
        let target = resolve(&git, Some(&config.reference), url)?;
        fetch_and_checkout(&git, &target, config.depth)?;
        target
    };
    if config.submodules {
        update_submodules(&git, config.depth)?;
    }
    outcome(&git, &target, &rel)
}

/// Finds what `reference` names on `origin`.
fn resolve(git: &Git, reference: Option<&str>, url: &str) -> Result<Target, StepError> {
    let Some(reference) = reference else {
        let listing = git.run(&["ls-remote", "--symref", "origin", "HEAD"])?;
        return listing
            .lines()
            .find_map(|l| l.strip_prefix("ref: refs/heads/"))
            .and_then(|rest| rest.split('\t').next())
            .map(|b| Target::Branch(b.to_owned()))
            .ok_or_else(|| {
                StepError::failed(format!(
                    "{url} has no default branch (its HEAD names no branch); give `ref`"
                ))
            });
    };
    let heads = format!("refs/heads/{reference}");
    let tags = format!("refs/tags/{reference}");
    let listing = git.run(&["ls-remote", "origin", &heads, &tags])?;
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split('\t').nth(1))
        .collect();
    if names.contains(&heads.as_str()) {
        Ok(Target::Branch(reference.to_owned()))
    } else if names.contains(&tags.as_str()) {
        Ok(Target::Tag(reference.to_owned()))
    } else if is_sha(reference) {
        Ok(Target::Commit(reference.to_ascii_lowercase()))
    } else {
        Err(StepError::failed(format!(
            "`{reference}` is not a branch, tag or commit of {url}"
        )))
    }
}

fn fetch_and_checkout(git: &Git, target: &Target, depth: u32) -> Result<(), StepError> {
    let depth_arg = format!("--depth={depth}");
    let mut fetch = vec!["fetch", "-q", "--no-tags"];
    if depth > 0 {
        fetch.push(&depth_arg);
    }
    match target {
        Target::Branch(b) => {
            let refspec = format!("+refs/heads/{b}:refs/remotes/origin/{b}");
            fetch.extend(["origin", &refspec]);
            git.run(&fetch)?;
            let remote = format!("refs/remotes/origin/{b}");
            git.run(&["checkout", "-q", "-B", b, &remote])?;
            git.run(&["branch", "-q", &format!("--set-upstream-to=origin/{b}"), b])?;
        }
        Target::Tag(t) => {
            let refspec = format!("+refs/tags/{t}:refs/tags/{t}");
            fetch.extend(["origin", &refspec]);
            git.run(&fetch)?;
            git.run(&[
                "checkout",
                "-q",
                "--detach",
                &format!("refs/tags/{t}^{{commit}}"),
            ])?;
        }
        Target::Commit(sha) if sha.len() == 40 => {
            fetch.extend(["origin", sha]);
            git.run(&fetch).map_err(|e| {
                StepError::failed(format!(
                    "cannot fetch commit {sha} (is it on a branch or tag of the remote?): {e}"
                ))
            })?;
            git.run(&["checkout", "-q", "--detach", "FETCH_HEAD"])?;
        }
        Target::Commit(sha) => {
            if depth > 0 {
                arkline_sdk::warn!(
                    "`{sha}` is an abbreviated commit: fetching full history to find it (depth {depth} ignored)"
                );
            }
            git.run(&[
                "fetch",
                "-q",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ])?;
            let full = git
                .run(&[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("{sha}^{{commit}}"),
                ])
                .map_err(|_| {
                    StepError::failed(format!(
                        "`{sha}` is not a commit on any branch or tag of the remote"
                    ))
                })?;
            git.run(&["checkout", "-q", "--detach", full.trim()])?;
        }
    }
    Ok(())
}

/// `git submodule` is a shell script that needs `sed`, `basename` and `uname`,
/// while the host gives the child a `PATH` of the granted programs' directories
/// only. It gets the usual system directories too: this widens no access (the
/// child may execute from them anyway under the host's confinement), it only lets
/// git's own scripts find their tools.
fn update_submodules(git: &Git, depth: u32) -> Result<(), StepError> {
    let exec_path = git.run(&["--exec-path"])?;
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", exec_path.trim());
    let depth_arg = format!("--depth={depth}");
    let mut args = vec!["submodule", "update", "--init", "--recursive"];
    if depth > 0 {
        args.push(&depth_arg);
    }
    let with_path = Git {
        dir: git.dir.clone(),
        env: git
            .env
            .iter()
            .cloned()
            .chain([("PATH".to_owned(), path)])
            .collect(),
        timeout: git.timeout,
    };
    with_path.run(&args)?;
    Ok(())
}

fn outcome(git: &Git, target: &Target, rel: &str) -> StepResult {
    let log = git.run(&["log", "-1", "--format=%H%x00%h%x00%an <%ae>%x00%s"])?;
    let mut fields = log.trim_end_matches('\n').split('\0');
    let mut next = || fields.next().unwrap_or_default().to_owned();
    let (commit, short, author, message) = (next(), next(), next(), next());
    let branch = match target {
        Target::Branch(b) => b.clone(),
        _ => String::new(),
    };
    let at = match target {
        Target::Branch(b) => format!("branch {b}"),
        Target::Tag(t) => format!("tag {t}"),
        Target::Commit(_) => "commit".to_owned(),
    };
    let place = if rel.is_empty() { "." } else { rel };
    Ok(Outcome::new()
        .output("commit", commit)
        .output("short_sha", short.clone())
        .output("branch", branch)
        .output("author", author)
        .output("message", message.clone())
        .summary(format!("{place}: {at} at {short} {message}")))
}

arkline_sdk::steps! {
    /// Clones a repository at a branch, tag or commit, optionally shallow and with submodules.
    "clone" => clone,
    /// Checks out a branch, tag or commit in a cloned repository, fetching it when needed.
    "checkout" => checkout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_scoped_to_the_remote_origin() {
        assert_eq!(
            origin("https://git.example.com:8443/team/app.git").as_deref(),
            Some("https://git.example.com:8443/")
        );
        assert_eq!(origin("git://host/repo"), None);
        assert_eq!(origin("https://user@host/repo"), None);
        let git = Git::new(
            "/workspace".into(),
            Some("https://h/r.git"),
            Some(("u".into(), "p".into())),
            Duration::from_secs(1),
        );
        let env: std::collections::BTreeMap<_, _> = git.env.iter().cloned().collect();
        assert_eq!(env["GIT_CONFIG_COUNT"], "4");
        assert_eq!(env["GIT_CONFIG_KEY_3"], "http.https://h/.extraHeader");
        assert_eq!(env["GIT_CONFIG_VALUE_3"], "Authorization: Basic dTpw");
        assert_eq!(env["GIT_TERMINAL_PROMPT"], "0");
    }

    #[test]
    fn refs_and_durations_are_checked() {
        assert!(check_ref("feature/x-1").is_ok());
        assert!(check_ref("v1.0").is_ok());
        assert!(check_ref("--upload-pack=evil").is_err());
        assert!(check_ref("a..b").is_err());
        assert!(check_ref("a b").is_err());
        assert_eq!(timeout("10m").expect("valid"), Duration::from_secs(600));
        assert!(timeout("soon").is_err());
        assert!(is_sha("abc1234") && !is_sha("main"));
    }
}
