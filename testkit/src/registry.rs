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
    token: Option<TokenAuth>,
    notify: Option<(String, String)>,
}

/// What a registry behind a token service needs to know of it.
#[derive(Debug, Clone)]
struct TokenAuth {
    realm: String,
    certificate: PathBuf,
}

impl RegistryBuilder {
    /// Requires this user name and password (htpasswd, bcrypt).
    pub fn basic_auth(mut self, username: &str, password: &str) -> Self {
        self.basic_auth = Some((username.to_owned(), password.to_owned()));
        self
    }

    /// Requires bearer tokens from `service` (the distribution spec's token
    /// authentication), instead of basic auth.
    pub fn token_auth(mut self, service: &TokenService) -> Self {
        self.token = Some(TokenAuth {
            realm: service.realm(),
            certificate: service.dir.join("token.crt"),
        });
        self
    }

    /// Sends the registry's notifications (distribution's event envelopes)
    /// to `url`, with `authorization` as their `Authorization` header.
    pub fn notify(mut self, url: &str, authorization: &str) -> Self {
        self.notify = Some((url.to_owned(), authorization.to_owned()));
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
        let auth = match (&builder.basic_auth, &builder.token) {
            (_, Some(token)) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                token.realm,
                token.certificate.display()
            ),
            (Some((user, password)), None) => {
                let line = htpasswd_line(user, password);
                fs::write(dir.join("htpasswd"), line).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: arkline-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                )
            }
            (None, None) => String::new(),
        };
        let notify = builder
            .notify
            .as_ref()
            .map_or_else(String::new, |(url, auth)| {
                format!(
                    "notifications:\n  endpoints:\n    - name: arkline\n      url: {url}\n      \
                 headers:\n        Authorization: [\"{auth}\"]\n      timeout: 2s\n      \
                 threshold: 5\n      backoff: 200ms\n"
                )
            });
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
                 {auth}{notify}",
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

/// The `service` a [`TokenService`]'s registry names in its challenges.
const TOKEN_SERVICE: &str = "arkline-test-registry";
/// The issuer of a [`TokenService`]'s tokens.
const TOKEN_ISSUER: &str = "arkline-test-token-service";

/// A token request a [`TokenService`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `service` parameter.
    pub service: Option<String>,
    /// The `scope` parameters, in order.
    pub scopes: Vec<String>,
    /// The user name of its basic auth, if it had any.
    pub username: Option<String>,
    /// 200 (a token) or 401 (a wrong credential).
    pub status: u16,
}

/// A token service as the distribution spec describes it: `GET
/// /token?service=…&scope=…` with optional basic auth answers a JWT (RS256,
/// its certificate in `x5c`) granting the scopes asked for to the right
/// credential, nothing to an anonymous caller, and 401 to a wrong
/// credential. Start a registry that trusts it with
/// [`RegistryBuilder::token_auth`]. Needs `openssl` (to make its key and
/// sign).
#[derive(Debug)]
pub struct TokenService {
    port: u16,
    dir: PathBuf,
    requests: std::sync::Arc<std::sync::Mutex<Vec<TokenRequest>>>,
}

impl TokenService {
    /// Starts the service on a free loopback port, accepting `username` and
    /// `password`.
    ///
    /// # Panics
    /// When `openssl` is missing or fails.
    pub fn start(username: &str, password: &str) -> TokenService {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "arkline-token-service-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the token service's directory");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| {
                    panic!("the token service needs `openssl` (apt-get install openssl): {e}")
                });
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "token.key",
            "-out",
            "token.crt",
            "-days",
            "2",
            "-subj",
            "/CN=arkline-test-token-service",
        ]);
        openssl(&[
            "x509",
            "-in",
            "token.crt",
            "-outform",
            "DER",
            "-out",
            "token.der",
        ]);
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let state = std::sync::Arc::new(TokenState {
            dir: dir.clone(),
            username: username.to_owned(),
            password: password.to_owned(),
            requests: requests.clone(),
        });
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || state.answer(stream));
            }
        });
        TokenService {
            port,
            dir,
            requests,
        }
    }

    /// The token endpoint, `http://127.0.0.1:<port>/token`.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The requests answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct TokenState {
    dir: PathBuf,
    username: String,
    password: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<TokenRequest>>>,
}

impl TokenState {
    fn answer(&self, stream: TcpStream) {
        use base64::Engine as _;
        use std::io::BufRead as _;
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut authorization = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.trim().eq_ignore_ascii_case("authorization")
            {
                authorization = Some(value.trim().to_owned());
            }
        }
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let mut service = None;
        let mut scopes = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "service" => service = Some(percent_decode(value)),
                "scope" => scopes.push(percent_decode(value)),
                _ => {}
            }
        }
        let credential = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|pair| {
                pair.split_once(':')
                    .map(|(u, p)| (u.to_owned(), p.to_owned()))
            });
        let (status, body) = match &credential {
            Some((user, password)) if *user != self.username || *password != self.password => (
                401,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong user name or password"}]}"#
                    .to_owned(),
            ),
            _ => {
                let granted = if credential.is_some() {
                    scopes.as_slice()
                } else {
                    &[]
                };
                let token = self.token(credential.as_ref().map_or("", |(u, _)| u), granted);
                (200, format!(r#"{{"token":"{token}","expires_in":300}}"#))
            }
        };
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(TokenRequest {
                service,
                scopes,
                username: credential.map(|(u, _)| u),
                status,
            });
        let mut stream = reader.into_inner();
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    /// A JWT granting `scopes` (`repository:<name>:<actions>`) to `subject`.
    fn token(&self, subject: &str, scopes: &[String]) -> String {
        use base64::Engine as _;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let certificate = fs::read(self.dir.join("token.der")).expect("the token certificate");
        let header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(certificate)],
        });
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .flat_map(|s| s.split(' '))
            .filter_map(|scope| {
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        static JTI: AtomicUsize = AtomicUsize::new(0);
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + 300,
            "nbf": now.saturating_sub(10),
            "iat": now,
            "jti": format!("{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            url.encode(header.to_string()),
            url.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(self.dir.join("token.key"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl signs");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("openssl reads");
        }
        let out = child.wait_with_output().expect("openssl signs");
        assert!(out.status.success(), "openssl dgst -sign failed");
        format!("{input}.{}", url.encode(out.stdout))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(
            percent_decode("repository%3Ateam%2Fapp%3Apull%2Cpush"),
            "repository:team/app:pull,push"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }

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
