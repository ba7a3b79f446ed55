//! A client of the OCI distribution protocol over the SDK's `http` wrapper:
//! authentication (basic, and bearer tokens from the registry's token service
//! after a `WWW-Authenticate` challenge), retries on 5xx and 429 honouring
//! `Retry-After`, manifests, blob existence checks, cross-repository mounts,
//! monolithic and chunked uploads, and ranged blob reads (the host caps a
//! request and a response body at 16 MiB).
//!
//! No credential, token or `Authorization` value is ever put in a log line or
//! an error message.
//!
//! Every request, token requests included, carries the client's
//! [`Registry::user_agent`] when one is set (the steps set
//! `arkline-image/<version> (engine=…; pipeline=…; run=…; step=…)`, see
//! [`user_agent`]), so a registry's access log and its notifications
//! (`request.useragent` in distribution's events) name the pipeline that
//! pushed: what a webhook handler needs to not start that pipeline again.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use arkline_sdk::HostError;
use arkline_sdk::http::{Request, Response};
use base64::Engine as _;
use serde_json::Value;

/// The most a `Retry-After` may make the client wait.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How to authenticate to a registry.
#[derive(Clone, Default)]
pub enum Credential {
    /// No credential: anonymous pulls (and token-service tokens for them).
    #[default]
    Anonymous,
    /// A user name and password (or personal token), sent as basic auth or to
    /// the token service.
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
    /// A registry bearer token sent as it is.
    Bearer(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// A failed exchange with a registry: which registry, repository and
/// operation, the HTTP status and the registry's error code when it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryError {
    /// `host[:port]`.
    pub registry: String,
    /// The repository, when the operation had one.
    pub repository: Option<String>,
    /// What was being done, e.g. `upload of sha256:ab12…`.
    pub operation: String,
    /// The HTTP status, when an answer came.
    pub status: Option<u16>,
    /// The registry's error codes and messages (`UNAUTHORIZED: …`), or the
    /// transport's failure.
    pub detail: String,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "registry {}", self.registry)?;
        if let Some(repository) = &self.repository {
            write!(f, ", repository {repository}")?;
        }
        write!(f, ": {} failed", self.operation)?;
        if let Some(status) = self.status {
            write!(f, " with HTTP {status}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if self.status == Some(401) {
            f.write_str(" (check the credential: user name and password or token)")?;
        } else if self.status == Some(403) {
            f.write_str(" (the credential is not allowed to do this)")?;
        }
        Ok(())
    }
}

/// What a request needs besides its URL: the repositories and actions its
/// token must cover.
#[derive(Debug, Clone, Default)]
pub struct Scope(pub Vec<String>);

impl Scope {
    /// `repository:<repo>:pull`.
    pub fn pull(repository: &str) -> Scope {
        Scope(vec![format!("repository:{repository}:pull")])
    }

    /// `repository:<repo>:pull,push`.
    pub fn push(repository: &str) -> Scope {
        Scope(vec![format!("repository:{repository}:pull,push")])
    }

    /// This scope and another.
    pub fn and(mut self, other: Scope) -> Scope {
        self.0.extend(other.0);
        self
    }
}

/// What the client last learnt about how to authenticate.
#[derive(Debug, Default)]
struct AuthState {
    /// The `Authorization` value to send, once known.
    header: Option<String>,
    /// The scopes the bearer token in `header` covers.
    scopes: BTreeSet<String>,
    /// The token service, once a challenge named it.
    bearer: Option<Challenge>,
}

/// A `Bearer` challenge's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
}

/// One registry, with its credential and what it learnt about auth.
#[derive(Debug)]
pub struct Registry {
    host: String,
    base: String,
    credential: Credential,
    auth: RefCell<AuthState>,
    retries: u32,
    timeout: Duration,
    /// Requests sent so far (token requests included), for the summary.
    requests: std::cell::Cell<u64>,
    /// The `User-Agent` of every request; the host's `arkline/<version>`
    /// when `None`.
    user_agent: Option<String>,
}

impl Registry {
    /// A client of `host` over `https`, or `http` when `plain_http`.
    pub fn new(
        host: &str,
        plain_http: bool,
        credential: Credential,
        retries: u32,
        timeout: Duration,
    ) -> Registry {
        let scheme = if plain_http { "http" } else { "https" };
        Registry {
            host: host.to_owned(),
            base: format!("{scheme}://{host}"),
            credential,
            auth: RefCell::default(),
            retries,
            timeout,
            requests: std::cell::Cell::new(0),
            user_agent: None,
        }
    }

    /// This client, sending `user_agent` as the `User-Agent` of every
    /// request (token requests included).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Registry {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Adds the client's `User-Agent`, when it has one.
    fn identify(&self, request: Request) -> Request {
        match &self.user_agent {
            Some(agent) => request.header("user-agent", agent.clone()),
            None => request,
        }
    }

    /// How many requests the client sent.
    pub fn request_count(&self) -> u64 {
        self.requests.get()
    }

    /// `host[:port]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The URL of `path` (which starts with `/v2/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A `Location` header resolved against the registry.
    fn location(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_owned()
        } else if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            format!("{}/{location}", self.base)
        }
    }

    fn error(
        &self,
        repository: &str,
        operation: impl Into<String>,
        response: Option<&Response>,
        detail: impl Into<String>,
    ) -> RegistryError {
        let mut detail = detail.into();
        if let Some(response) = response
            && detail.is_empty()
        {
            detail = error_codes(&response.body);
        }
        RegistryError {
            registry: self.host.clone(),
            repository: (!repository.is_empty()).then(|| repository.to_owned()),
            operation: operation.into(),
            status: response.map(|r| r.status),
            detail,
        }
    }

    /// Sends the request `make` builds, authenticating on a 401 challenge and
    /// retrying 5xx, 429 and failed exchanges. Returns the last answer, whatever
    /// its status.
    pub fn send(
        &self,
        repository: &str,
        operation: &str,
        scope: &Scope,
        make: &dyn Fn() -> Request,
    ) -> Result<Response, RegistryError> {
        let mut authenticated = false;
        loop {
            let response = self.send_retrying(repository, operation, scope, make)?;
            if response.status != 401 || authenticated {
                return Ok(response);
            }
            let Some(challenge) = response.header("www-authenticate").map(str::to_owned) else {
                return Ok(response);
            };
            authenticated = true;
            if !self.authenticate(repository, operation, &challenge, scope)? {
                return Ok(response);
            }
        }
    }

    fn send_retrying(
        &self,
        repository: &str,
        operation: &str,
        scope: &Scope,
        make: &dyn Fn() -> Request,
    ) -> Result<Response, RegistryError> {
        let attempts = self.retries.saturating_add(1);
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=attempts {
            let request = self
                .identify(self.authorize(make(), scope))
                .timeout(self.timeout);
            self.requests.set(self.requests.get() + 1);
            let (wait, why) = match request.send() {
                Ok(response) if response.status >= 500 || response.status == 429 => {
                    let wait = response
                        .header("retry-after")
                        .and_then(retry_after)
                        .map_or(delay, |d| d.min(MAX_RETRY_AFTER));
                    if attempt == attempts {
                        return Ok(response);
                    }
                    let why = format!("HTTP {}{}", response.status, code_suffix(&response.body));
                    (wait, why)
                }
                Ok(response) => return Ok(response),
                Err(e @ (HostError::Denied(_) | HostError::InvalidArgument(_))) => {
                    return Err(self.error(
                        repository,
                        operation,
                        None,
                        format!("{e} (is the registry's host granted to the `image` biz?)"),
                    ));
                }
                Err(e @ HostError::TooLarge(_)) => {
                    return Err(self.error(repository, operation, None, e.to_string()));
                }
                Err(e) => {
                    if attempt == attempts {
                        return Err(self.error(
                            repository,
                            operation,
                            None,
                            format!("{e} (after {attempts} attempts)"),
                        ));
                    }
                    (delay, e.to_string())
                }
            };
            arkline_sdk::warn!(
                "{}: {operation}: {why}; retrying in {}s (attempt {} of {attempts})",
                self.host,
                wait.as_secs_f32(),
                attempt + 1
            );
            std::thread::sleep(wait);
            delay = delay.saturating_mul(2);
        }
        unreachable!("the last attempt returns")
    }

    /// Adds the `Authorization` header the client knows for `scope`.
    fn authorize(&self, request: Request, scope: &Scope) -> Request {
        if let Credential::Bearer(token) = &self.credential {
            return request.header("authorization", format!("Bearer {token}"));
        }
        let auth = self.auth.borrow();
        let covered = auth.bearer.is_none() || scope.0.iter().all(|s| auth.scopes.contains(s));
        match &auth.header {
            Some(header) if covered => request.header("authorization", header.clone()),
            _ => request,
        }
    }

    /// Answers a `WWW-Authenticate` challenge; `false` when there is nothing
    /// more to try (the caller then reports the 401).
    fn authenticate(
        &self,
        repository: &str,
        operation: &str,
        challenge: &str,
        scope: &Scope,
    ) -> Result<bool, RegistryError> {
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let Credential::Basic { username, password } = &self.credential else {
                return Ok(false);
            };
            let mut auth = self.auth.borrow_mut();
            if auth.header.is_some() {
                return Ok(false);
            }
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            auth.header = Some(format!("Basic {pair}"));
            return Ok(true);
        }
        if !scheme.eq_ignore_ascii_case("bearer")
            || matches!(self.credential, Credential::Bearer(_))
        {
            return Ok(false);
        }
        let Some(realm) = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
        else {
            return Err(self.error(
                repository,
                operation,
                None,
                "the registry's Bearer challenge names no token service (`realm`)",
            ));
        };
        let service = params
            .iter()
            .find(|(k, _)| k == "service")
            .map(|(_, v)| v.clone());
        let mut scopes: BTreeSet<String> = self.auth.borrow().scopes.clone();
        scopes.extend(scope.0.iter().cloned());
        if let Some((_, s)) = params.iter().find(|(k, _)| k == "scope") {
            scopes.extend(s.split(' ').filter(|s| !s.is_empty()).map(str::to_owned));
        }
        let mut url = realm.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        if let Some(service) = &service {
            url.push_str(&format!("{sep}service={}", query_escape(service)));
            sep = '&';
        }
        for s in &scopes {
            url.push_str(&format!("{sep}scope={}", query_escape(s)));
            sep = '&';
        }
        let mut request = self.identify(Request::get(url)).timeout(self.timeout);
        if let Credential::Basic { username, password } = &self.credential {
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            request = request.header("authorization", format!("Basic {pair}"));
        }
        self.requests.set(self.requests.get() + 1);
        let response = request.send().map_err(|e| {
            self.error(
                repository,
                format!("token request to {}", host_of(&realm)),
                None,
                e.to_string(),
            )
        })?;
        if response.status != 200 {
            return Err(self.error(
                repository,
                format!("token request to {}", host_of(&realm)),
                Some(&response),
                "",
            ));
        }
        let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
            self.error(
                repository,
                format!("token request to {}", host_of(&realm)),
                None,
                format!("the answer is not JSON: {e}"),
            )
        })?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                self.error(
                    repository,
                    format!("token request to {}", host_of(&realm)),
                    None,
                    "the answer holds no `token`",
                )
            })?;
        let mut auth = self.auth.borrow_mut();
        auth.header = Some(format!("Bearer {token}"));
        auth.scopes = scopes;
        auth.bearer = Some(Challenge { realm, service });
        Ok(true)
    }

    /// Checks that the registry answers and accepts the credential for
    /// `scope` (`GET /v2/`, as Docker clients do first): a wrong credential
    /// fails here, with the registry's error code, before anything is sent.
    pub fn ping(&self, repository: &str, scope: &Scope) -> Result<(), RegistryError> {
        let operation = "sign-in (GET /v2/)";
        let url = self.url("/v2/");
        let response = self.send(repository, operation, scope, &|| Request::get(url.clone()))?;
        match response.status {
            200 => Ok(()),
            // Some registries answer 404 at /v2/ and still serve repositories.
            404 => Ok(()),
            _ => Err(self.error(repository, operation, Some(&response), "")),
        }
    }

    /// Fetches a manifest by tag or digest; returns its media type and bytes,
    /// its digest checked against the reference (a digest) or the registry's
    /// `Docker-Content-Digest`.
    pub fn manifest(
        &self,
        repository: &str,
        reference: &str,
        max: u64,
    ) -> Result<(String, Vec<u8>, String), RegistryError> {
        let operation = format!("fetch of manifest {reference}");
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let response = self.send(repository, &operation, &Scope::pull(repository), &|| {
            Request::get(url.clone()).header("accept", crate::oci::MANIFEST_ACCEPT)
        })?;
        if response.status != 200 {
            return Err(self.error(repository, operation, Some(&response), ""));
        }
        if response.body.len() as u64 > max {
            return Err(self.error(
                repository,
                operation,
                None,
                format!(
                    "the manifest is {} bytes, over the cap of {max}",
                    response.body.len()
                ),
            ));
        }
        let digest = crate::layer::sha256(&response.body);
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_owned())
        } else {
            response
                .header("docker-content-digest")
                .filter(|d| d.starts_with("sha256:"))
                .map(str::to_owned)
        };
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(self.error(
                repository,
                operation,
                None,
                format!("the manifest's digest is {digest}, not {expected}"),
            ));
        }
        let media_type = response
            .header("content-type")
            .map(|c| c.split(';').next().unwrap_or(c).trim().to_owned())
            .unwrap_or_default();
        Ok((media_type, response.body, digest))
    }

    /// Reads a blob of known size in ranges of at most `chunk` bytes, handing
    /// each to `sink`, and checks its digest and size.
    pub fn read_blob(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        chunk: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), RegistryError>,
    ) -> Result<(), RegistryError> {
        let operation = format!("download of {}", short(digest));
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let mut hasher = crate::layer::Hashing::new(std::io::sink());
        let mut offset = 0u64;
        loop {
            let ranged = size > chunk;
            let end = (offset + chunk).min(size).saturating_sub(1);
            let response = self.send(repository, &operation, &Scope::pull(repository), &|| {
                let request = Request::get(url.clone());
                if ranged {
                    request.header("range", format!("bytes={offset}-{end}"))
                } else {
                    request
                }
            })?;
            let ok = if ranged {
                response.status == 206
            } else {
                response.status == 200
            };
            if !ok {
                return Err(self.error(repository, operation, Some(&response), ""));
            }
            if response.body.is_empty() && offset < size {
                return Err(self.error(repository, operation, None, "the registry sent no bytes"));
            }
            std::io::Write::write_all(&mut hasher, &response.body)
                .map_err(|e| self.error(repository, operation.clone(), None, e.to_string()))?;
            offset += response.body.len() as u64;
            if offset > size {
                break;
            }
            sink(&response.body)?;
            if offset == size || !ranged {
                break;
            }
        }
        let got = hasher.digest();
        if offset != size || got != digest {
            return Err(self.error(
                repository,
                operation,
                None,
                format!("the blob read is {offset} bytes with digest {got}, expected {size} bytes with {digest}"),
            ));
        }
        Ok(())
    }

    /// Fetches a small blob (a config) whole, its digest checked.
    pub fn blob(&self, repository: &str, digest: &str, max: u64) -> Result<Vec<u8>, RegistryError> {
        let operation = format!("download of {}", short(digest));
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let response = self.send(repository, &operation, &Scope::pull(repository), &|| {
            Request::get(url.clone())
        })?;
        if response.status != 200 {
            return Err(self.error(repository, operation, Some(&response), ""));
        }
        if response.body.len() as u64 > max {
            return Err(self.error(
                repository,
                operation,
                None,
                format!(
                    "the blob is {} bytes, over the cap of {max}",
                    response.body.len()
                ),
            ));
        }
        let got = crate::layer::sha256(&response.body);
        if got != digest {
            return Err(self.error(
                repository,
                operation,
                None,
                format!("the blob's digest is {got}"),
            ));
        }
        Ok(response.body)
    }

    /// Whether the repository has the blob (`HEAD`).
    pub fn has_blob(&self, repository: &str, digest: &str) -> Result<bool, RegistryError> {
        let operation = format!("check of {}", short(digest));
        let url = self.url(&format!("/v2/{repository}/blobs/{digest}"));
        let response = self.send(repository, &operation, &Scope::push(repository), &|| {
            Request::new("HEAD", url.clone())
        })?;
        match response.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.error(repository, operation, Some(&response), "")),
        }
    }

    /// Asks the registry to mount a blob of `from` (same registry) into
    /// `repository`. `Ok(true)` when mounted; `Ok(false)` when the registry
    /// opened an upload instead (it could not mount).
    pub fn mount(&self, repository: &str, digest: &str, from: &str) -> Result<bool, RegistryError> {
        let operation = format!("mount of {} from {from}", short(digest));
        let url = self.url(&format!(
            "/v2/{repository}/blobs/uploads/?mount={digest}&from={from}"
        ));
        let scope = Scope::push(repository).and(Scope::pull(from));
        let response = self.send(repository, &operation, &scope, &|| {
            Request::post(url.clone()).header("content-length", "0")
        })?;
        match response.status {
            201 => Ok(true),
            202 => {
                // An upload session opened instead; drop it (best effort).
                if let Some(location) = response.header("location") {
                    let url = self.location(location);
                    let _ = self.send(repository, "cancel of an upload", &scope, &|| {
                        Request::new("DELETE", url.clone())
                    });
                }
                Ok(false)
            }
            _ => Err(self.error(repository, operation, Some(&response), "")),
        }
    }

    /// Starts an upload; returns its location.
    fn start_upload(&self, repository: &str, operation: &str) -> Result<String, RegistryError> {
        let url = self.url(&format!("/v2/{repository}/blobs/uploads/"));
        let response = self.send(repository, operation, &Scope::push(repository), &|| {
            Request::post(url.clone()).header("content-length", "0")
        })?;
        if response.status != 202 {
            return Err(self.error(repository, operation, Some(&response), ""));
        }
        response
            .header("location")
            .map(|l| self.location(l))
            .ok_or_else(|| {
                self.error(
                    repository,
                    operation,
                    Some(&response),
                    "the registry gave no upload location",
                )
            })
    }

    /// Uploads a blob held in memory: `POST`, then `PUT ?digest=` with the bytes.
    pub fn upload(
        &self,
        repository: &str,
        digest: &str,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let operation = format!("upload of {}", short(digest));
        let location = self.start_upload(repository, &operation)?;
        let url = with_query(&location, &format!("digest={digest}"));
        let response = self.send(repository, &operation, &Scope::push(repository), &|| {
            Request::new("PUT", url.clone())
                .header("content-type", "application/octet-stream")
                .body(bytes.to_vec())
        })?;
        if response.status != 201 {
            return Err(self.error(repository, operation, Some(&response), ""));
        }
        Ok(())
    }

    /// Starts a chunked upload.
    pub fn chunked(
        &self,
        repository: &str,
        digest_hint: &str,
    ) -> Result<Chunked<'_>, RegistryError> {
        let operation = format!("upload of {}", short(digest_hint));
        let location = self.start_upload(repository, &operation)?;
        Ok(Chunked {
            registry: self,
            repository: repository.to_owned(),
            operation,
            location,
            offset: 0,
        })
    }

    /// Puts a manifest under `reference` (a tag or its digest); returns the
    /// digest the registry says it stored.
    pub fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Option<String>, RegistryError> {
        self.put_manifest_stored(repository, reference, media_type, bytes)
            .map(|stored| stored.digest)
    }

    /// [`Registry::put_manifest`], also telling whether the registry
    /// processed the manifest's `subject` (its `OCI-Subject` answer header,
    /// OCI distribution spec 1.1): a registry that did not needs the
    /// referrers tag schema kept by the client.
    pub fn put_manifest_stored(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Stored, RegistryError> {
        let operation = format!("push of manifest {reference}");
        let url = self.url(&format!("/v2/{repository}/manifests/{reference}"));
        let response = self.send(repository, &operation, &Scope::push(repository), &|| {
            Request::new("PUT", url.clone())
                .header("content-type", media_type)
                .body(bytes.to_vec())
        })?;
        if response.status != 201 && response.status != 200 {
            return Err(self.error(repository, operation, Some(&response), ""));
        }
        Ok(Stored {
            digest: response.header("docker-content-digest").map(str::to_owned),
            subject: response.header("oci-subject").map(str::to_owned),
        })
    }
}

/// What a registry said of a manifest it stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// Its `Docker-Content-Digest`, when sent.
    pub digest: Option<String>,
    /// Its `OCI-Subject`, when sent: the digest of the manifest's `subject`,
    /// which the registry's referrers API then lists.
    pub subject: Option<String>,
}

/// A chunked upload in progress: `PATCH` each chunk, then `PUT ?digest=`.
pub struct Chunked<'a> {
    registry: &'a Registry,
    repository: String,
    operation: String,
    location: String,
    offset: u64,
}

impl Chunked<'_> {
    /// Sends one chunk.
    pub fn patch(&mut self, chunk: &[u8]) -> Result<(), RegistryError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let end = self.offset + chunk.len() as u64 - 1;
        let range = format!("{}-{end}", self.offset);
        let url = self.location.clone();
        let response = self.registry.send(
            &self.repository,
            &self.operation,
            &Scope::push(&self.repository),
            &|| {
                Request::new("PATCH", url.clone())
                    .header("content-type", "application/octet-stream")
                    .header("content-range", range.clone())
                    .body(chunk.to_vec())
            },
        )?;
        if response.status != 202 {
            return Err(self.registry.error(
                &self.repository,
                self.operation.clone(),
                Some(&response),
                "",
            ));
        }
        if let Some(location) = response.header("location") {
            self.location = self.registry.location(location);
        }
        self.offset = end + 1;
        Ok(())
    }

    /// Ends the upload with the whole blob's digest.
    pub fn finish(self, digest: &str) -> Result<(), RegistryError> {
        let url = with_query(&self.location, &format!("digest={digest}"));
        let response = self.registry.send(
            &self.repository,
            &self.operation,
            &Scope::push(&self.repository),
            &|| Request::new("PUT", url.clone()).header("content-length", "0"),
        )?;
        if response.status != 201 {
            return Err(self.registry.error(
                &self.repository,
                self.operation.clone(),
                Some(&response),
                "",
            ));
        }
        Ok(())
    }
}

/// A `Retry-After` value: delay seconds, or an HTTP date (IMF-fixdate, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`) compared with the clock.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = http_date(value)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of an IMF-fixdate.
fn http_date(value: &str) -> Option<u64> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

/// The `User-Agent` the steps send:
/// `arkline-image/<version> (engine=<engine>; pipeline=<pipeline>; run=<run>; step=<step>)`.
/// A character with no place in a header comment (not visible ASCII, or one
/// of `(`, `)`, `;`, `\`) becomes `_`, so the value is always a valid header
/// and its fields always parse.
pub fn user_agent(engine: &str, pipeline: &str, run: u64, step: &str) -> String {
    fn clean(text: &str) -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';' | '\\') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
    format!(
        "arkline-image/{} (engine={}; pipeline={}; run={run}; step={})",
        env!("CARGO_PKG_VERSION"),
        clean(engine),
        clean(pipeline),
        clean(step)
    )
}

/// `sha256:0123456789ab` (the first 12 hex digits).
pub fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

fn with_query(url: &str, query: &str) -> String {
    if url.contains('?') {
        format!("{url}&{query}")
    } else {
        format!("{url}?{query}")
    }
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

fn query_escape(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme` and `key="value"` pairs of a `WWW-Authenticate` value.
fn parse_challenge(value: &str) -> (String, Vec<(String, String)>) {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        params.push((key, val.to_owned()));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_owned(), params)
}

/// The registry's error codes and messages from an error body (`UNAUTHORIZED:
/// authentication required`), or an excerpt of the body.
fn error_codes(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body)
        && let Some(errors) = value.get("errors").and_then(Value::as_array)
    {
        let texts: Vec<String> = errors
            .iter()
            .map(|e| {
                let code = e.get("code").and_then(Value::as_str).unwrap_or("UNKNOWN");
                match e.get("message").and_then(Value::as_str) {
                    Some(m) if !m.is_empty() => format!("{code}: {m}"),
                    _ => code.to_owned(),
                }
            })
            .collect();
        if !texts.is_empty() {
            return texts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        let excerpt: String = text.chars().take(200).collect();
        format!("`{}`", excerpt.replace('\n', " "))
    }
}

fn code_suffix(body: &[u8]) -> String {
    let codes = error_codes(body);
    if codes.is_empty() {
        String::new()
    } else {
        format!(" ({codes})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        let (scheme, params) = parse_challenge(r#"Basic realm="basic-realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params, vec![("realm".into(), "basic-realm".into())]);
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        // A date in the past means now.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn error_bodies_give_codes() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
        assert_eq!(error_codes(body), "UNAUTHORIZED: authentication required");
        assert_eq!(error_codes(b""), "");
    }

    #[test]
    fn user_agents_name_the_step_and_stay_one_header_comment() {
        let agent = user_agent("prod", "release (eu); v2", 7, "push image");
        assert_eq!(
            agent,
            format!(
                "arkline-image/{} (engine=prod; pipeline=release__eu___v2; run=7; step=push_image)",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn credentials_do_not_print() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credential::Bearer("tok".into())).contains("tok"));
    }
}
