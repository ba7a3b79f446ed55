//! A real OCI registry for tests: Debian's `docker-registry` (CNCF
//! distribution 2.8) on a free loopback port with a storage directory of its
//! own, open or behind htpasswd basic auth, killed on drop; and
//! [`skopeo`] to look at what was pushed.
//!
//! A test that needs them and finds no binary fails with a message that says
//! how to install it (`.ci/deps.sh --test` does); it never skips silently.
//!
//! ```no_run
//! use arkline_testkit::registry::{Registry, skopeo};
//!
//! let registry = Registry::builder().basic_auth("ci", "s3cret").start();
//! let out = skopeo(&["inspect", "--tls-verify=false", "--creds", "ci:s3cret",
//!     &format!("docker://{}/app:latest", registry.host())]);
//! assert!(!out.status.success());
//! assert!(registry.requests().iter().any(|r| r.path.starts_with("/v2/")));
//! ```

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How to install what these helpers run.
const INSTALL: &str = "Debian/Ubuntu: apt-get install docker-registry skopeo apache2-utils; \
                       `bash .ci/deps.sh --test` installs them";

/// How to start a [`Registry`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RegistryBuilder {
    basic_auth: Option<(String, String)>,
}

impl RegistryBuilder {
    /// Requires this user name and password (htpasswd, bcrypt).
    pub fn basic_auth(mut self, username: &str, password: &str) -> Self {
        self.basic_auth = Some((username.to_owned(), password.to_owned()));
        self
    }

    /// Starts the registry and waits until it answers.
    ///
    /// # Panics
    /// When `docker-registry` (or `htpasswd`, for basic auth) is missing or
    /// the registry does not come up, saying what to install.
    pub fn start(self) -> Registry {
        Registry::start_with(self)
    }
}

/// A request the registry logged (its access log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `HEAD`, `POST`, `PATCH`, `PUT`, `DELETE`.
    pub method: String,
    /// The request target: path and query.
    pub path: String,
    /// The status it answered.
    pub status: u16,
}

/// A running `docker-registry` on 127.0.0.1.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Registry {
    /// An open registry (no authentication).
    pub fn start() -> Registry {
        Registry::builder().start()
    }

    /// A builder, for a registry with basic auth.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    fn start_with(builder: RegistryBuilder) -> Registry {
        let binary =
            std::env::var("ARKLINE_REGISTRY_BIN").unwrap_or_else(|_| "docker-registry".into());
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "arkline-registry-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("storage")).expect("create the registry's directory");
        let auth = match &builder.basic_auth {
            Some((user, password)) => {
                let line = htpasswd_line(user, password);
                fs::write(dir.join("htpasswd"), line).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: arkline-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("cannot bind a loopback port");
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: arkline-test-secret\n\
                 {auth}",
                dir.join("storage").display()
            );
            let config_path = dir.join("config.yml");
            fs::write(&config_path, config).expect("write the registry's config");
            let stdout = fs::File::create(dir.join("access.log")).expect("create the access log");
            let stderr = fs::File::create(dir.join("registry.log")).expect("create the log");
            let child = Command::new(&binary)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "this test needs an OCI registry, `{binary}` (CNCF distribution 2.8; \
                         {INSTALL}), which cannot start: {e}"
                    )
                });
            let mut registry = Registry {
                child,
                port,
                dir: dir.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if registry.answers() {
                    return registry;
                }
                if let Ok(Some(status)) = registry.child.try_wait() {
                    last = format!(
                        "exited with {status}: {}",
                        fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Not up (the port may have been taken): kill it before the next try.
            let _ = registry.child.kill();
            let _ = registry.child.wait();
            std::mem::forget(registry);
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("the registry `{binary}` did not answer on loopback ({last}); {INSTALL}");
    }

    /// Whether `GET /v2/` gets an answer (200, or 401 behind auth).
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.0 200")
            || answer.starts_with("HTTP/1.0 401")
            || answer.starts_with("HTTP/1.1 200")
            || answer.starts_with("HTTP/1.1 401")
    }

    /// `127.0.0.1:<port>`, the registry part of a reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The registry's own log (stderr) so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// The requests the registry answered so far, from its access log, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let log = fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        log.lines().filter_map(parse_access_line).collect()
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    /// Whether the registry stores any blob or repository at all (nothing
    /// pushed yet).
    pub fn is_empty(&self) -> bool {
        dir_is_empty(&self.storage())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn dir_is_empty(dir: &Path) -> bool {
    fn files(dir: &Path) -> usize {
        fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() { files(&path) } else { 1 }
                })
                .sum()
        })
    }
    files(dir) == 0
}

/// `127.0.0.1 - - [date] "POST /v2/x/blobs/uploads/ HTTP/1.1" 202 0 "" "ua"`.
fn parse_access_line(line: &str) -> Option<LoggedRequest> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(LoggedRequest {
        method,
        path,
        status,
    })
}

/// A bcrypt htpasswd line for `user` (distribution accepts only bcrypt), made
/// by `htpasswd -Bbn`.
fn htpasswd_line(user: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .unwrap_or_else(|e| {
            panic!("a registry with basic auth needs `htpasswd` (apache2-utils; {INSTALL}): {e}")
        });
    assert!(
        out.status.success(),
        "htpasswd -Bbn failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned() + "\n"
}

/// Runs `skopeo` with `args` and returns what it did.
///
/// # Panics
/// When `skopeo` is missing, saying how to install it.
pub fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("this test needs `skopeo` ({INSTALL}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_access_lines() {
        let line = r#"127.0.0.1 - - [06/Dec/2026:14:00:00 +0000] "POST /v2/app/blobs/uploads/?mount=sha256:ab&from=base HTTP/1.1" 201 0 "" "arkline/0.1.0""#;
        assert_eq!(
            parse_access_line(line),
            Some(LoggedRequest {
                method: "POST".into(),
                path: "/v2/app/blobs/uploads/?mount=sha256:ab&from=base".into(),
                status: 201,
            })
        );
    }
}
