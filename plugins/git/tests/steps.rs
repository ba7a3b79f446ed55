//! The `git` component in the real isolation runtime, cloning real repositories
//! made in the test and served on 127.0.0.1: by `git daemon` (one `--inetd`
//! process per connection on a listener of ours, so no port race) and by `git
//! http-backend` behind a small CGI server that demands credentials.
//!
//! The repositories live outside the workspace on purpose: the `git` child is
//! confined to the workspace (Landlock), so a remote is reached over the network
//! as a real CI remote would be.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use arkline_testkit::{Capabilities, Harness, StepCall, StepFailure, StepReport};
use serde_json::{Value, json};

fn git_cmd(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        // Clones made by a step belong to the sandbox's host id when the test
        // runs as root; git refuses to inspect them otherwise.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "safe.directory")
        .env("GIT_CONFIG_VALUE_0", "*")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "Ada Lovelace")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada Lovelace")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit(work: &Path, file: &str, content: &str, message: &str) -> String {
    std::fs::write(work.join(file), content).expect("write");
    git_cmd(work, &["add", "."]);
    git_cmd(work, &["commit", "-q", "-m", message]);
    git_cmd(work, &["rev-parse", "HEAD"])
}

/// `git daemon --inetd` for each connection to an ephemeral port.
struct Daemon {
    port: u16,
}

impl Daemon {
    fn start(root: &Path) -> Daemon {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let out = stream.try_clone().expect("clone the socket");
                let child = Command::new("git")
                    .args(["daemon", "--inetd", "--export-all"])
                    .arg(format!("--base-path={}", root.display()))
                    .stdin(Stdio::from(OwnedFd::from(stream)))
                    .stdout(Stdio::from(OwnedFd::from(out)))
                    .stderr(Stdio::null())
                    .spawn();
                if let Ok(mut child) = child {
                    std::thread::spawn(move || child.wait());
                }
            }
        });
        Daemon { port }
    }

    fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

/// The fixture: `lib.git` (one commit) and `app.git`: `main` with three commits
/// (the second tagged `v1.0`, annotated; the third adds `lib` as a submodule),
/// and `feature` branching off the first.
struct Remote {
    _dir: tempfile::TempDir,
    daemon: Daemon,
    main: Vec<String>,
    feature: String,
    lib: String,
}

fn remote() -> Remote {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("srv");
    std::fs::create_dir_all(&root).expect("mkdir");
    let daemon = Daemon::start(&root);
    for repo in ["app.git", "lib.git"] {
        git_cmd(&root, &["init", "-q", "--bare", "-b", "main", repo]);
    }
    let lib_work = dir.path().join("lib");
    std::fs::create_dir_all(&lib_work).expect("mkdir");
    git_cmd(&lib_work, &["init", "-q", "-b", "main"]);
    let lib = commit(&lib_work, "lib.txt", "library\n", "lib: first");
    git_cmd(
        &lib_work,
        &[
            "push",
            "-q",
            root.join("lib.git").to_str().expect("utf-8"),
            "main",
        ],
    );

    let work = dir.path().join("app");
    std::fs::create_dir_all(&work).expect("mkdir");
    git_cmd(&work, &["init", "-q", "-b", "main"]);
    let c1 = commit(&work, "app.txt", "one\n", "app: one");
    git_cmd(&work, &["checkout", "-q", "-b", "feature"]);
    let feature = commit(&work, "feature.txt", "feature\n", "feature: work");
    git_cmd(&work, &["checkout", "-q", "main"]);
    let c2 = commit(&work, "app.txt", "two\n", "app: two");
    git_cmd(&work, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
    git_cmd(
        &work,
        &["submodule", "add", "-q", &daemon.url("lib.git"), "lib"],
    );
    git_cmd(&work, &["commit", "-q", "-m", "app: add lib"]);
    let c3 = git_cmd(&work, &["rev-parse", "HEAD"]);
    let bare = root.join("app.git");
    git_cmd(
        &work,
        &[
            "push",
            "-q",
            "--tags",
            bare.to_str().expect("utf-8"),
            "main",
            "feature",
        ],
    );
    Remote {
        _dir: dir,
        daemon,
        main: vec![c1, c2, c3],
        feature,
        lib,
    }
}

fn git() -> Harness {
    Harness::current_crate(env!("CARGO_MANIFEST_DIR")).grant(Capabilities {
        process: vec!["git".into()],
        // The tests serve repositories on 127.0.0.1.
        process_net: true,
        ..Capabilities::default()
    })
}

fn run(workspace: &Path, step: &str, config: Value) -> StepReport {
    git().call(StepCall::new(step, config).workspace(workspace))
}

fn outputs(report: &StepReport) -> BTreeMap<String, String> {
    match &report.result {
        Ok(outcome) => outcome.outputs.clone(),
        Err(e) => panic!("the step failed: {e}\n{}", report.log.text()),
    }
}

fn commits_in(dir: &Path) -> usize {
    git_cmd(dir, &["rev-list", "--count", "HEAD"])
        .parse()
        .expect("a count")
}

#[test]
fn clone_default_branch_with_submodules() {
    let remote = remote();
    let ws = tempfile::tempdir().expect("tempdir");
    let report = run(
        ws.path(),
        "clone",
        json!({ "url": remote.daemon.url("app.git"), "path": "src", "submodules": true }),
    );
    let out = outputs(&report);
    assert_eq!(out["commit"], remote.main[2]);
    assert_eq!(out["short_sha"], remote.main[2][..out["short_sha"].len()]);
    assert!(out["short_sha"].len() >= 7);
    assert_eq!(out["branch"], "main");
    assert_eq!(out["author"], "Ada Lovelace <ada@example.com>");
    assert_eq!(out["message"], "app: add lib");
    let src = ws.path().join("src");
    assert_eq!(
        std::fs::read_to_string(src.join("app.txt")).expect("app.txt"),
        "two\n"
    );
    assert_eq!(
        std::fs::read_to_string(src.join("lib/lib.txt")).expect("submodule"),
        "library\n"
    );
    assert_eq!(
        git_cmd(&src.join("lib"), &["rev-parse", "HEAD"]),
        remote.lib
    );
    assert_eq!(git_cmd(&src, &["symbolic-ref", "--short", "HEAD"]), "main");
    assert_eq!(commits_in(&src), 3);
}

#[test]
fn clone_a_branch_shallow() {
    let remote = remote();
    let ws = tempfile::tempdir().expect("tempdir");
    let out = outputs(&run(
        ws.path(),
        "clone",
        json!({ "url": remote.daemon.url("app.git"), "ref": "main", "depth": 1 }),
    ));
    assert_eq!(out["commit"], remote.main[2]);
    assert_eq!(commits_in(ws.path()), 1, "depth 1 fetches one commit");
    assert!(
        !ws.path().join("lib/lib.txt").exists(),
        "submodules are off by default"
    );

    let ws = tempfile::tempdir().expect("tempdir");
    let out = outputs(&run(
        ws.path(),
        "clone",
        json!({ "url": remote.daemon.url("app.git"), "ref": "feature", "path": "f" }),
    ));
    assert_eq!(out["commit"], remote.feature);
    assert_eq!(out["branch"], "feature");
    assert_eq!(out["message"], "feature: work");
    assert!(ws.path().join("f/feature.txt").exists());
}

#[test]
fn clone_a_tag_and_a_commit_detached() {
    let remote = remote();
    let ws = tempfile::tempdir().expect("tempdir");
    let out = outputs(&run(
        ws.path(),
        "clone",
        json!({ "url": remote.daemon.url("app.git"), "ref": "v1.0", "path": "t", "depth": 1 }),
    ));
    assert_eq!(out["commit"], remote.main[1]);
    assert_eq!(out["branch"], "");
    assert_eq!(out["message"], "app: two");

    let out = outputs(&run(
        ws.path(),
        "clone",
        json!({ "url": remote.daemon.url("app.git"), "ref": remote.main[0], "path": "c", "depth": 1 }),
    ));
    assert_eq!(out["commit"], remote.main[0]);
    assert_eq!(commits_in(&ws.path().join("c")), 1);

    let short = &remote.main[0][..8];
    let out = outputs(&run(
        ws.path(),
        "clone",
        json!({ "url": remote.daemon.url("app.git"), "ref": short, "path": "s" }),
    ));
    assert_eq!(out["commit"], remote.main[0]);
}

#[test]
fn checkout_moves_a_clone_to_another_ref() {
    let remote = remote();
    let ws = tempfile::tempdir().expect("tempdir");
    outputs(&run(
        ws.path(),
        "clone",
        json!({ "url": remote.daemon.url("app.git"), "ref": "main", "depth": 1, "path": "src" }),
    ));
    // `feature` was not fetched: checkout fetches it.
    let out = outputs(&run(
        ws.path(),
        "checkout",
        json!({ "path": "src", "ref": "feature" }),
    ));
    assert_eq!(out["commit"], remote.feature);
    assert_eq!(out["branch"], "feature");
    // Back to a branch known locally.
    let out = outputs(&run(
        ws.path(),
        "checkout",
        json!({ "path": "src", "ref": "main" }),
    ));
    assert_eq!(out["commit"], remote.main[2]);
    assert_eq!(out["branch"], "main");
}

#[test]
fn unknown_refs_and_bad_configuration_are_explained() {
    let remote = remote();
    let ws = tempfile::tempdir().expect("tempdir");
    let report = run(
        ws.path(),
        "clone",
        json!({ "url": remote.daemon.url("app.git"), "ref": "nope", "path": "x" }),
    );
    match &report.result {
        Err(StepFailure::Failed(m)) => {
            assert!(m.contains("`nope` is not a branch, tag or commit"), "{m}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    std::fs::write(ws.path().join("occupied"), "x").expect("write");
    for (config, field, expected) in [
        (
            json!({ "url": remote.daemon.url("app.git") }),
            "path",
            "is not empty",
        ),
        (
            json!({ "url": "x", "path": "../up" }),
            "path",
            "leaves the workspace",
        ),
        (
            json!({ "url": "x", "path": "y", "ref": "--upload-pack=touch" }),
            "ref",
            "not a branch",
        ),
        (
            json!({ "url": "git://h/r", "path": "y", "password": "p" }),
            "password",
            "http:// and https://",
        ),
        (
            json!({ "url": "x", "path": "y", "timeout": "whenever" }),
            "timeout",
            "not a duration",
        ),
    ] {
        match &run(ws.path(), "clone", config).result {
            Err(StepFailure::InvalidConfig { field: f, message }) => {
                assert_eq!(f.as_deref(), Some(field), "{message}");
                assert!(message.contains(expected), "{field}: {message}");
            }
            other => panic!("expected invalid-config on {field}, got {other:?}"),
        }
    }
}

/// A smart-HTTP git server: `git http-backend` as CGI behind Basic authentication.
struct HttpGit {
    port: u16,
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
}

impl HttpGit {
    fn start(root: PathBuf, expected: &'static str) -> HttpGit {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let seen = authorizations.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, seen) = (root.clone(), seen.clone());
                std::thread::spawn(move || cgi(stream, &root, expected, &seen));
            }
        });
        HttpGit {
            port,
            authorizations,
        }
    }
}

fn cgi(stream: TcpStream, root: &Path, expected: &str, seen: &Mutex<Vec<Option<String>>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    let auth = headers.get("authorization").cloned();
    seen.lock().expect("lock").push(auth.clone());
    let mut stream = stream;
    if auth.as_deref() != Some(expected) {
        let _ = stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"git\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
        return;
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env(
            "CONTENT_TYPE",
            headers.get("content-type").cloned().unwrap_or_default(),
        )
        .env("CONTENT_LENGTH", length.to_string())
        .env(
            "GIT_PROTOCOL",
            headers.get("git-protocol").cloned().unwrap_or_default(),
        )
        .env("REMOTE_USER", "ci")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output().expect("http-backend output");
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        });
    let Some((end, sep)) = split else { return };
    let head = String::from_utf8_lossy(&out.stdout[..end]).into_owned();
    let content = &out.stdout[end + sep..];
    let mut status = "200 OK".to_owned();
    let mut response = String::new();
    for h in head.lines() {
        match h.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_owned(),
            Some(_) => response.push_str(&format!("{h}\r\n")),
            None => {}
        }
    }
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 {status}\r\n{response}content-length: {}\r\nconnection: close\r\n\r\n",
            content.len()
        )
        .as_bytes(),
    );
    let _ = stream.write_all(content);
}

#[test]
fn clone_over_http_with_credentials_from_config() {
    let remote = remote();
    // "ci:s3cret-token" in Basic form.
    let server = HttpGit::start(remote._dir.path().join("srv"), "Basic Y2k6czNjcmV0LXRva2Vu");
    let url = format!("http://127.0.0.1:{}/app.git", server.port);
    let ws = tempfile::tempdir().expect("tempdir");
    let report = run(
        ws.path(),
        "clone",
        json!({ "url": url, "ref": "main", "depth": 1, "username": "ci", "password": "s3cret-token", "path": "a" }),
    );
    let out = outputs(&report);
    assert_eq!(out["commit"], remote.main[2]);
    assert!(
        !report.log.text().contains("s3cret"),
        "{}",
        report.log.text()
    );
    let config = std::fs::read_to_string(ws.path().join("a/.git/config")).expect("config");
    assert!(
        !config.contains("s3cret") && !config.contains("Y2k6"),
        "{config}"
    );
    assert!(
        server
            .authorizations
            .lock()
            .expect("lock")
            .iter()
            .all(Option::is_some),
        "every request carried the header"
    );

    // Without credentials the server refuses, and git does not prompt.
    let report = run(ws.path(), "clone", json!({ "url": url, "path": "b" }));
    match &report.result {
        Err(StepFailure::Failed(m)) => assert!(m.contains("git ls-remote"), "{m}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}
