//! Bearer tokens of the admin API: the tokens file, constant-time lookup, and
//! the scope check every handler makes.
//!
//! The tokens file is TOML:
//!
//! ```toml
//! [[tokens]]
//! name = "ci"                     # shown in logs, never the token
//! token = "a-long-random-string"  # or: sha256 = "<hex of sha256(token)>"
//! engines = ["team-a", "team-*"]  # engine names, `prefix-*` patterns, or "*"
//! access = "write"                # "read" (GET only) or "write" (everything)
//! ```

use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::ApiError;

/// Shortest plain token accepted in a tokens file.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read-only requests (`GET`).
    Read,
    /// Every request (implies `read`).
    Write,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    token: Option<String>,
    sha256: Option<String>,
    engines: Vec<String>,
    access: Access,
    #[serde(default)]
    groups: Vec<String>,
}

/// One token of the tokens file (its SHA-256 only).
#[derive(Debug, Clone)]
pub struct Token {
    /// Its name, for logs and messages.
    pub name: String,
    digest: [u8; 32],
    engines: Vec<String>,
    /// What it may do.
    pub access: Access,
    /// The groups it belongs to (approval steps may name `group:<name>`).
    pub groups: Vec<String>,
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Bearer tokens from a tokens file.
    Tokens(Vec<Token>),
    /// Every request is allowed (`--insecure-no-auth`, loopback only).
    Disabled,
}

impl Auth {
    /// Reads a tokens file.
    pub fn load(path: &Path) -> anyhow::Result<Auth> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the tokens file {}: {e}", path.display()))?;
        let auth = Auth::parse(&text)
            .map_err(|e| anyhow::anyhow!("tokens file {}: {e}", path.display()))?;
        // Plaintext tokens are credentials: like `secret.key`, the file must
        // not be readable by others (digests may be).
        let plaintext = toml::from_str::<TokensFile>(&text)
            .map(|f| f.tokens.iter().any(|t| t.token.is_some()))
            .unwrap_or(true);
        if plaintext {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| {
                    anyhow::anyhow!("cannot read the tokens file {}: {e}", path.display())
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "the tokens file {} holds plaintext tokens and is readable by others (mode {:o}): run `chmod 600 {}`, or keep only `sha256` digests in it",
                    path.display(),
                    mode & 0o777,
                    path.display()
                );
            }
        }
        Ok(auth)
    }

    /// Parses the text of a tokens file; every problem names the token and what to fix.
    pub fn parse(text: &str) -> Result<Auth, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.tokens.is_empty() {
            return Err(
                "no `[[tokens]]`: add at least one (name, token or sha256, engines, access)".into(),
            );
        }
        let mut tokens: Vec<Token> = Vec::new();
        for entry in file.tokens {
            let name = entry.name;
            let digest = match (entry.token, entry.sha256) {
                (Some(token), None) => {
                    if token.len() < MIN_TOKEN_LEN {
                        return Err(format!(
                            "token `{name}` is shorter than {MIN_TOKEN_LEN} characters: use a long random string (e.g. `openssl rand -hex 32`)"
                        ));
                    }
                    Sha256::digest(token.as_bytes()).into()
                }
                (None, Some(hex_digest)) => {
                    let bytes = hex::decode(hex_digest.trim()).ok();
                    match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                        Some(d) => d,
                        None => {
                            return Err(format!(
                                "token `{name}`: `sha256` must be 64 hex digits (the SHA-256 of the token, e.g. from `printf %s TOKEN | sha256sum`)"
                            ));
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "token `{name}` needs exactly one of `token` (the token itself) or `sha256` (its SHA-256 in hex)"
                    ));
                }
            };
            if entry.engines.is_empty() {
                return Err(format!(
                    "token `{name}` has no `engines`: list engine names, `prefix-*` patterns, or \"*\" for every engine"
                ));
            }
            for pattern in &entry.engines {
                let stem = pattern.strip_suffix('*').unwrap_or(pattern);
                if stem.contains('*')
                    || !stem
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    return Err(format!(
                        "token `{name}`: `{pattern}` is not an engine pattern: use an engine name, a `prefix-*` pattern, or \"*\""
                    ));
                }
            }
            if tokens.iter().any(|t| t.name == name) {
                return Err(format!(
                    "two tokens are named `{name}`: names must be unique"
                ));
            }
            if tokens.iter().any(|t| bool::from(t.digest.ct_eq(&digest))) {
                return Err(format!(
                    "token `{name}` has the same secret as another token: give each its own"
                ));
            }
            tokens.push(Token {
                name,
                digest,
                engines: entry.engines,
                access: entry.access,
                groups: entry.groups,
            });
        }
        Ok(Auth::Tokens(tokens))
    }

    /// The caller presenting `bearer`, if it is a known token. Every token is
    /// compared, in constant time, whatever matches.
    fn authenticate(&self, bearer: &str) -> Option<Caller> {
        match self {
            Auth::Disabled => Some(Caller::Anyone),
            Auth::Tokens(tokens) => {
                let digest: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
                let mut found = None;
                for token in tokens {
                    let equal = bool::from(token.digest.ct_eq(&digest));
                    if equal && found.is_none() {
                        found = Some(token.clone());
                    }
                }
                found.map(Caller::Token)
            }
        }
    }
}

/// Who is calling: extracted from the `Authorization: Bearer` header of every
/// `/api/v1` request (401 without a known token).
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is disabled.
    Anyone,
    /// A token of the tokens file.
    Token(Token),
}

impl Caller {
    /// Who the caller is, for records such as an approval's `by`, and the
    /// groups it belongs to. Without authentication it is `anonymous`.
    pub fn identity(&self) -> (String, Vec<String>) {
        match self {
            Caller::Anyone => ("anonymous".into(), Vec::new()),
            Caller::Token(t) => (t.name.clone(), t.groups.clone()),
        }
    }

    /// `(access, engine patterns)`: what the caller may do, and where.
    pub fn scope(&self) -> (&'static str, Vec<String>) {
        match self {
            Caller::Anyone => ("write", vec!["*".to_owned()]),
            Caller::Token(t) => (t.access.as_str(), t.engines.clone()),
        }
    }

    /// Whether the caller may see `engine` at all.
    pub fn sees(&self, engine: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::Token(t) => t.engines.iter().any(|p| matches_pattern(p, engine)),
        }
    }

    /// Checks that the caller may write at all (before a large body is read for
    /// a request whose engines are only known from that body); 403 otherwise.
    pub fn require_write_access(&self) -> Result<(), ApiError> {
        match self {
            Caller::Token(token) if token.access < Access::Write => {
                Err(ApiError::forbidden(format!(
                    "token `{}` has `read` access and this request needs `write`; use a token with access = \"write\"",
                    token.name
                )))
            }
            _ => Ok(()),
        }
    }

    /// Checks that the caller may do `access` on `engine`; 403 otherwise.
    pub fn require(&self, engine: &str, access: Access) -> Result<(), ApiError> {
        let Caller::Token(token) = self else {
            return Ok(());
        };
        if !self.sees(engine) {
            return Err(ApiError::forbidden(format!(
                "token `{}` is not scoped to engine `{engine}` (it may use: {}); use a token whose `engines` include it",
                token.name,
                token.engines.join(", ")
            )));
        }
        if token.access < access {
            return Err(ApiError::forbidden(format!(
                "token `{}` has `{}` access and this request needs `{}`; use a token with access = \"{}\"",
                token.name,
                token.access.as_str(),
                access.as_str(),
                access.as_str()
            )));
        }
        Ok(())
    }
}

fn matches_pattern(pattern: &str, engine: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => engine.starts_with(prefix),
        None => pattern == engine,
    }
}

/// Without tokens (`--insecure-no-auth`, loopback only), a request must also
/// come from this machine's own clients, not a web page in a local browser:
/// its `Host` must be a loopback name or address (a DNS-rebinding page sends
/// its own name), and an `Origin` or `Sec-Fetch-Site`, which browsers send,
/// must say the same site (a cross-site `POST` would otherwise install a biz).
fn same_machine_only(parts: &Parts) -> Result<(), ApiError> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host").unwrap_or("");
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(ApiError::forbidden(format!(
            "without tokens (--insecure-no-auth) only requests addressed to a loopback name are served, not Host `{}`: this refuses pages that rebind a name to 127.0.0.1; use 127.0.0.1 or localhost, or give --tokens",
            host.escape_debug()
        )));
    }
    let same_origin = |origin: &str| {
        origin
            .strip_prefix("http://")
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    };
    if let Some(origin) = header("origin")
        && !same_origin(origin)
    {
        return Err(ApiError::forbidden(format!(
            "without tokens (--insecure-no-auth) cross-site requests are refused (Origin `{}`): a web page must not drive the admin API; give --tokens to serve browsers",
            origin.escape_debug()
        )));
    }
    if header("sec-fetch-site").is_some_and(|site| site == "cross-site" || site == "same-site") {
        return Err(ApiError::forbidden(
            "without tokens (--insecure-no-auth) cross-site requests are refused (Sec-Fetch-Site): a web page must not drive the admin API; give --tokens to serve browsers",
        ));
    }
    Ok(())
}

/// The cookie naming the dashboard's session (a random id; the token stays
/// on the server).
pub const SESSION_COOKIE: &str = "arkline_session";

/// The header a write authenticated by [`SESSION_COOKIE`] must carry.
pub const UI_REQUEST_HEADER: &str = "x-arkline-request";

/// How long a dashboard session lasts (the cookie's `Max-Age` too).
pub const SESSION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

type SessionMap = std::collections::HashMap<[u8; 32], (String, std::time::Instant)>;

/// The dashboard's sessions: a random id (the cookie) → the token signed in
/// with, in memory only (a restart signs everyone out). The id is kept as
/// its SHA-256, so even this map does not hold a usable cookie.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: std::sync::Mutex<SessionMap>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, SessionMap> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `token`: its id, for the cookie.
    pub fn open(&self, token: &str) -> Result<String, String> {
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| format!("no randomness for a session id: {e}"))?;
        let id = hex::encode(id);
        let now = std::time::Instant::now();
        let mut map = self.map();
        map.retain(|_, (_, expires)| *expires > now);
        map.insert(
            Sha256::digest(id.as_bytes()).into(),
            (token.to_owned(), now + SESSION_LIFETIME),
        );
        Ok(id)
    }

    /// The token of session `id`, if it is open and not expired.
    pub fn token(&self, id: &str) -> Option<String> {
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        self.map()
            .get(&key)
            .filter(|(_, expires)| *expires > std::time::Instant::now())
            .map(|(token, _)| token.clone())
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        let key: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        self.map().remove(&key);
    }
}

/// The session id in the request's [`SESSION_COOKIE`]: `Ok(None)` without
/// one, an error when there are several (a cookie planted by another site
/// or port beside the real one: nobody can tell which is which).
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for pair in headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
    {
        let Some((name, value)) = pair.trim().split_once('=') else {
            continue;
        };
        if name != SESSION_COOKIE || value.is_empty() {
            continue;
        }
        if found.is_some() {
            return Err(ApiError::unauthorized(
                "the request carries several dashboard session cookies: sign out, clear this site's cookies, and sign in again",
            ));
        }
        found = Some(value.to_owned());
    }
    Ok(found)
}

impl Auth {
    /// Whether `token` is a known token (the dashboard's sign-in).
    pub fn knows(&self, token: &str) -> bool {
        self.authenticate(token).is_some()
    }

    /// Whether tokens are checked at all.
    pub fn enabled(&self) -> bool {
        !matches!(self, Auth::Disabled)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.is_ready() {
            return Err(ApiError::not_ready());
        }
        if let Auth::Disabled = *state.auth {
            same_machine_only(parts)?;
            return Ok(Caller::Anyone);
        }
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            // The dashboard's pages: the token the sign-in kept in an
            // HttpOnly, SameSite=Strict cookie. A write with it must also
            // carry `X-Arkline-Request` (a header no cross-site form can
            // send, and no cross-site script either: nothing answers CORS).
            if let Some(id) = session_cookie(&parts.headers)? {
                let safe = matches!(parts.method.as_str(), "GET" | "HEAD" | "OPTIONS");
                if !safe && !parts.headers.contains_key(UI_REQUEST_HEADER) {
                    return Err(ApiError::forbidden(format!(
                        "a write signed in with the dashboard's cookie must carry the `{UI_REQUEST_HEADER}` header (the dashboard sends it); other clients send `Authorization: Bearer <token>`"
                    )));
                }
                return state
                    .sessions
                    .token(&id)
                    .and_then(|token| state.auth.authenticate(&token))
                    .ok_or_else(|| {
                        ApiError::unauthorized(
                            "the dashboard's session has ended (signed out, expired, or the server restarted): sign in again",
                        )
                    });
            }
            return Err(ApiError::unauthorized(
                "this request needs a token: send `Authorization: Bearer <token>` (arkline ctl: --token or ARKLINE_TOKEN)",
            ));
        };
        let bearer = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        state.auth.authenticate(bearer).ok_or_else(|| {
            ApiError::unauthorized(
                "unknown token: check the token you sent against the server's tokens file",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[tokens]]
name = "admin"
token = "admin-token-0123456789"
engines = ["*"]
access = "write"

[[tokens]]
name = "team-a-reader"
sha256 = "SHA"
engines = ["team-a", "ops-*"]
access = "read"
"#;

    fn auth() -> Auth {
        let digest = hex::encode(Sha256::digest(b"reader-token-0123456789"));
        Auth::parse(&FILE.replace("SHA", &digest)).expect("parses")
    }

    #[test]
    fn tokens_match_by_value_or_digest_and_are_scoped() {
        let auth = auth();
        assert!(auth.authenticate("nope").is_none());
        let admin = auth.authenticate("admin-token-0123456789").expect("admin");
        assert!(admin.require("anything", Access::Write).is_ok());
        let reader = auth
            .authenticate("reader-token-0123456789")
            .expect("reader");
        assert!(reader.require("team-a", Access::Read).is_ok());
        assert!(reader.require("ops-x", Access::Read).is_ok());
        let write = reader.require("team-a", Access::Write).unwrap_err();
        assert_eq!(write.code, "forbidden");
        assert!(write.message.contains("`read` access"), "{}", write.message);
        let other = reader.require("team-b", Access::Read).unwrap_err();
        assert!(other.message.contains("not scoped to engine `team-b`"));
        assert!(!reader.sees("team-ab"));
    }

    #[test]
    fn a_tokens_file_with_plaintext_tokens_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.toml");
        let plain =
            "[[tokens]]\nname='x'\ntoken='0123456789abcdefgh'\nengines=['*']\naccess='read'\n";
        std::fs::write(&path, plain).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let Err(e) = Auth::load(&path) else {
            panic!("a readable file of plaintext tokens loads");
        };
        let e = e.to_string();
        assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Auth::load(&path).expect("a private file loads");
        // Digests are not credentials: a readable file of them loads.
        let digest = format!(
            "[[tokens]]\nname='x'\nsha256='{}'\nengines=['*']\naccess='read'\n",
            "ab".repeat(32)
        );
        std::fs::write(&path, digest).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        Auth::load(&path).expect("a file of digests loads");
    }

    #[test]
    fn bad_tokens_files_are_refused_with_the_fix() {
        let short = "[[tokens]]\nname='x'\ntoken='short'\nengines=['*']\naccess='read'\n";
        assert!(Auth::parse(short).unwrap_err().contains("shorter than 16"));
        let both = "[[tokens]]\nname='x'\ntoken='0123456789abcdefgh'\nsha256='00'\nengines=['*']\naccess='read'\n";
        assert!(Auth::parse(both).unwrap_err().contains("exactly one"));
        let pattern =
            "[[tokens]]\nname='x'\ntoken='0123456789abcdefgh'\nengines=['a*b']\naccess='read'\n";
        assert!(
            Auth::parse(pattern)
                .unwrap_err()
                .contains("not an engine pattern")
        );
        let access =
            "[[tokens]]\nname='x'\ntoken='0123456789abcdefgh'\nengines=['*']\naccess='admin'\n";
        assert!(Auth::parse(access).is_err());
        assert!(Auth::parse("").unwrap_err().contains("no `[[tokens]]`"));
        let dup = "[[tokens]]\nname='x'\ntoken='0123456789abcdefgh'\nengines=['*']\naccess='read'\n\
                   [[tokens]]\nname='y'\ntoken='0123456789abcdefgh'\nengines=['*']\naccess='write'\n";
        assert!(Auth::parse(dup).unwrap_err().contains("same secret"));
    }
}
