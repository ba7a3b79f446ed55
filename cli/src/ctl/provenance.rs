//! `arkline ctl verify-provenance IMAGE --key PUB`: fetch the signed
//! provenance of an image from its registry and check it.
//!
//! A pipeline whose engine has `provenance` set pushes, next to each image it
//! publishes, a DSSE envelope ([`provenance::ARTIFACT_TYPE`]) as an OCI
//! referrer of the image's manifest: an image manifest whose only layer is the
//! envelope and whose `subject` is the image. This command talks to the
//! registry alone (no arkline server): it resolves the image to its manifest
//! digest, lists the referrers (the OCI 1.1 referrers API, or the
//! `sha256-<hex>` tag schema where the registry answers 404 to it), checks
//! each envelope's signature with the key and that its statement names the
//! image's digest.
//!
//! Exit status: 0 when at least one attestation verifies and names the image;
//! 1 when none does (none found, a bad signature, another subject); 2 when the
//! check could not be made (bad arguments, registry unreachable or answering
//! an error).
//!
//! The registry is spoken to over https unless `--plain-http` is given (also
//! for loopback hosts: nothing is guessed from the host name).

use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use arkline::ark::PublicKey;
use arkline::provenance::{self, Envelope};
use clap::Args;
use reqwest::header::{ACCEPT, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// OCI image manifest.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 manifest.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The largest manifest or index read.
const MAX_MANIFEST: usize = 4 << 20;
/// The largest envelope read.
const MAX_ENVELOPE: usize = 16 << 20;
/// How many referrers are checked, at most.
const MAX_REFERRERS: usize = 64;

/// Arguments of `arkline ctl verify-provenance`.
#[derive(Debug, Args)]
pub struct VerifyProvenanceArgs {
    /// The image: `host[:port]/repository[:tag|@sha256:<hex>]` (tag `latest`
    /// by default).
    pub image: String,
    /// The engine's public key: 64 hex digits, or a file holding them (the
    /// `.pub` of `cargo ark keygen`).
    #[arg(long)]
    pub key: String,
    /// Registry user name (basic auth, or for the registry's token service).
    #[arg(long, env = "ARKLINE_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Read the registry password from stdin (else from
    /// `ARKLINE_REGISTRY_PASSWORD`).
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Speak http, not https, to the registry (needed for loopback
    /// registries without TLS too).
    #[arg(long)]
    pub plain_http: bool,
}

/// An image reference: registry host, repository, and a tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`.
    pub host: String,
    /// `team/app`.
    pub repository: String,
    /// A tag or `sha256:<hex>`.
    pub reference: String,
}

impl ImageRef {
    /// Parses `host[:port]/repo[:tag|@sha256:<hex>]`.
    pub fn parse(text: &str) -> anyhow::Result<ImageRef> {
        let example = "write it like 127.0.0.1:5000/team/app:v1 or registry.example.com/team/app@sha256:<64 hex>";
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let hex = digest.strip_prefix("sha256:").unwrap_or("");
                if !is_sha256_hex(hex) {
                    bail!(
                        "`{text}`: the digest must be sha256:<64 lowercase hex digits>; {example}"
                    );
                }
                (name, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        let Some((host, path)) = name.split_once('/') else {
            bail!("`{text}` names no registry host; {example}");
        };
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            bail!(
                "`{text}`: `{host}` is not a registry host (it needs a dot, a port or to be `localhost`); {example}"
            );
        }
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repo_ok {
            bail!(
                "`{text}`: `{repository}` is not a repository name (lowercase letters, digits, `._-`, parts joined by `/`); {example}"
            );
        }
        if let Some(tag) = tag {
            let tag_ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !tag_ok {
                bail!("`{text}`: `{tag}` is not a tag; {example}");
            }
        }
        Ok(ImageRef {
            host: host.to_owned(),
            repository: repository.to_owned(),
            reference: digest.unwrap_or_else(|| tag.unwrap_or("latest").to_owned()),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{}/{}{sep}{}",
            self.host, self.repository, self.reference
        )
    }
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads `--key`: 64 hex digits, or a file holding them.
pub fn read_key(text: &str) -> anyhow::Result<PublicKey> {
    let trimmed = text.trim();
    if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return trimmed
            .parse()
            .with_context(|| format!("--key {trimmed} is not an ed25519 public key"));
    }
    let path = Path::new(text);
    let contents = std::fs::read_to_string(path).with_context(|| {
        format!(
            "--key `{text}` is neither 64 hex digits nor a readable key file (the `.pub` of `cargo ark keygen`)"
        )
    })?;
    contents
        .trim()
        .parse()
        .with_context(|| format!("{} is not a public key file", path.display()))
}

/// An error the registry answered.
#[derive(Debug, thiserror::Error)]
#[error(
    "registry {registry}, repository {repository}: {what} answered HTTP {status} {code}{message}{hint}"
)]
pub struct RegistryError {
    /// The registry host.
    pub registry: String,
    /// The repository.
    pub repository: String,
    /// What was asked.
    pub what: String,
    /// HTTP status.
    pub status: StatusCode,
    /// The registry's error code (`MANIFEST_UNKNOWN`, `UNAUTHORIZED`, …), or `-`.
    pub code: String,
    /// `: <message>`, or empty.
    pub message: String,
    /// `; <what to do>`, or empty.
    pub hint: String,
}

/// A client of one repository of one registry, remembering how it
/// authenticated.
struct Registry {
    http: reqwest::Client,
    base: String,
    host: String,
    repository: String,
    credentials: Option<(String, String)>,
    auth: Auth,
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic,
    Bearer(String),
}

impl Registry {
    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// GETs `path` (under `/v2/<repo>/`) accepting `accept`, authenticating
    /// as the registry asks.
    async fn get(&mut self, path: &str, accept: &str) -> anyhow::Result<Response> {
        let mut retried = false;
        loop {
            let mut req = self
                .http
                .request(Method::GET, self.url(path))
                .header(ACCEPT, accept);
            req = match &self.auth {
                Auth::None => req,
                Auth::Basic => match &self.credentials {
                    Some((user, password)) => req.basic_auth(user, Some(password)),
                    None => req,
                },
                Auth::Bearer(token) => req.bearer_auth(token),
            };
            let response = req.send().await.with_context(|| {
                let hint = if self.base.starts_with("https") {
                    " (a registry without TLS needs --plain-http)"
                } else {
                    ""
                };
                format!("cannot reach the registry {}{hint}", self.base)
            })?;
            if response.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(response);
            }
            retried = true;
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let (scheme, params) = parse_challenge(&challenge);
            if scheme.eq_ignore_ascii_case("bearer") {
                self.auth = Auth::Bearer(self.token(&params).await?);
            } else if scheme.eq_ignore_ascii_case("basic") && self.credentials.is_some() {
                self.auth = Auth::Basic;
            } else {
                return Ok(response);
            }
        }
    }

    /// Asks the token service of a Bearer challenge for a pull token.
    async fn token(&self, params: &[(String, String)]) -> anyhow::Result<String> {
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let realm = param("realm").with_context(|| {
            format!(
                "registry {}: its Bearer challenge names no realm (token service)",
                self.host
            )
        })?;
        let mut url = url::Url::parse(&realm).with_context(|| {
            format!(
                "registry {}: its token service `{realm}` is not a URL",
                self.host
            )
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = param("service") {
                query.append_pair("service", &service);
            }
            let scope =
                param("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repository));
            query.append_pair("scope", &scope);
        }
        let mut req = self.http.get(url.as_str());
        if let Some((user, password)) = &self.credentials {
            req = req.basic_auth(user, Some(password));
        }
        let response = req
            .send()
            .await
            .with_context(|| format!("cannot reach the token service {realm} of {}", self.host))?;
        if !response.status().is_success() {
            return Err(self
                .failure(
                    response,
                    &format!("its token service {realm}"),
                    &self.credentials_hint(),
                )
                .await
                .into());
        }
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("the token service {realm} answered no JSON"))?;
        body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("the token service {realm} answered no token"))
    }

    fn credentials_hint(&self) -> String {
        if self.credentials.is_some() {
            "check the user name and password".into()
        } else {
            "give --username and --password-stdin (or set ARKLINE_REGISTRY_USERNAME and ARKLINE_REGISTRY_PASSWORD)".into()
        }
    }

    /// The [`RegistryError`] of a non-success `response`.
    async fn failure(&self, response: Response, what: &str, hint: &str) -> RegistryError {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let first = &body["errors"][0];
        let code = first["code"].as_str().unwrap_or("-").to_owned();
        let message = first["message"]
            .as_str()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let hint = match status {
            StatusCode::UNAUTHORIZED => self.credentials_hint(),
            StatusCode::FORBIDDEN => {
                format!("the credentials given may not pull {}", self.repository)
            }
            _ => hint.to_owned(),
        };
        RegistryError {
            registry: self.host.clone(),
            repository: self.repository.clone(),
            what: what.to_owned(),
            status,
            code,
            message,
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!("; {hint}")
            },
        }
    }

    /// GETs `path` and returns its body (at most `limit` bytes); any
    /// non-success is a [`RegistryError`].
    async fn fetch(
        &mut self,
        path: &str,
        accept: &str,
        what: &str,
        limit: usize,
    ) -> anyhow::Result<(Vec<u8>, HeaderMap)> {
        let response = self.get(path, accept).await?;
        if !response.status().is_success() {
            return Err(self.failure(response, what, "").await.into());
        }
        let headers = response.headers().clone();
        let body = read_limited(response, limit, what).await?;
        Ok((body, headers))
    }
}

async fn read_limited(mut response: Response, limit: usize, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("{what}: the registry's answer was cut off"))?
    {
        if body.len() + chunk.len() > limit {
            bail!("{what}: larger than {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Bearer realm="…",service="…"` → (`Bearer`, [(realm, …), (service, …)]).
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    (scheme.to_owned(), params)
}

/// Why a referrer did not verify.
struct Rejected {
    referrer: String,
    reason: String,
}

/// A statement that verified.
struct Verified {
    referrer: String,
    statement: Value,
}

impl VerifyProvenanceArgs {
    /// Runs the command: exit 0 verified, 1 not verified (its reason on
    /// stderr); an `Err` when the check could not be made.
    pub async fn run(&self, json: bool) -> anyhow::Result<ExitCode> {
        let image = ImageRef::parse(&self.image)?;
        let key = read_key(&self.key)?;
        let credentials = match &self.username {
            None => None,
            Some(user) => {
                let password = if self.password_stdin {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading the registry password from stdin")?;
                    text.trim_end_matches(['\n', '\r']).to_owned()
                } else {
                    std::env::var("ARKLINE_REGISTRY_PASSWORD").map_err(|_| {
                        anyhow::anyhow!(
                            "--username {user} needs a password: give --password-stdin or set ARKLINE_REGISTRY_PASSWORD"
                        )
                    })?
                };
                Some((user.clone(), password))
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("arkline/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        let scheme = if self.plain_http { "http" } else { "https" };
        let mut registry = Registry {
            http,
            base: format!("{scheme}://{}", image.host),
            host: image.host.clone(),
            repository: image.repository.clone(),
            credentials,
            auth: Auth::None,
        };

        let digest = resolve(&mut registry, &image).await?;
        let referrers = referrers(&mut registry, &digest).await?;
        if referrers.is_empty() {
            eprintln!(
                "error: no provenance referrer of {digest} in {}/{}: was it published by a pipeline whose engine has `provenance` set?",
                image.host, image.repository
            );
            return Ok(ExitCode::from(1));
        }
        let mut verified = Vec::new();
        let mut rejected = Vec::new();
        for referrer in referrers.iter().take(MAX_REFERRERS) {
            // A referrer the registry cannot serve is one that does not verify.
            match check(&mut registry, referrer, &digest, &key).await {
                Ok(Ok(statement)) => verified.push(Verified {
                    referrer: referrer.clone(),
                    statement,
                }),
                Ok(Err(reason)) => rejected.push(Rejected {
                    referrer: referrer.clone(),
                    reason,
                }),
                Err(e) => rejected.push(Rejected {
                    referrer: referrer.clone(),
                    reason: format!("{e:#}"),
                }),
            }
        }
        if verified.is_empty() {
            eprintln!(
                "error: no provenance of {}/{}@{digest} verifies with key {}:",
                image.host,
                image.repository,
                key.id()
            );
            for r in &rejected {
                eprintln!("  attestation {}: {}", r.referrer, r.reason);
            }
            return Ok(ExitCode::from(1));
        }
        for r in &rejected {
            eprintln!(
                "warning: attestation {} of {digest} does not verify (another one does): {}",
                r.referrer, r.reason
            );
        }
        if json {
            let statements: Vec<&Value> = verified.iter().map(|v| &v.statement).collect();
            println!("{}", serde_json::to_string_pretty(&statements)?);
        } else {
            for v in &verified {
                print_summary(&image, &digest, &key, v);
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The digest of the image's manifest, checking what the registry answered.
async fn resolve(registry: &mut Registry, image: &ImageRef) -> anyhow::Result<String> {
    let accept = format!("{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_LIST}");
    let what = format!("the manifest {image}");
    let (body, headers) = registry
        .fetch(
            &format!("manifests/{}", image.reference),
            &accept,
            &what,
            MAX_MANIFEST,
        )
        .await
        .map_err(|e| match e.downcast::<RegistryError>() {
            Ok(mut e) if e.status == StatusCode::NOT_FOUND => {
                e.hint =
                    format!("; is `{image}` pushed? (`skopeo inspect docker://{image}` shows it)");
                e.into()
            }
            Ok(e) => e.into(),
            Err(e) => e,
        })?;
    let digest = sha256_digest(&body);
    if image.reference.starts_with("sha256:") && image.reference != digest {
        bail!(
            "registry {}: the manifest it answered for {image} has digest {digest}, not the one asked for",
            registry.host
        );
    }
    if let Some(header) = headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        && header.starts_with("sha256:")
        && header != digest
    {
        bail!(
            "registry {}: it says the manifest of {image} is {header}, but what it answered hashes to {digest}",
            registry.host
        );
    }
    Ok(digest)
}

/// The digests of the DSSE referrers of `digest`.
async fn referrers(registry: &mut Registry, digest: &str) -> anyhow::Result<Vec<String>> {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("artifactType", provenance::ARTIFACT_TYPE)
        .finish();
    let what = format!("the referrers API for {digest}");
    let response = registry
        .get(&format!("referrers/{digest}?{query}"), OCI_INDEX)
        .await?;
    let index: Value = if response.status() == StatusCode::NOT_FOUND {
        // No referrers API (distribution 2.8): the referrers tag schema.
        let tag = digest.replacen(':', "-", 1);
        let what = format!("the referrers tag {tag}");
        let response = registry.get(&format!("manifests/{tag}"), OCI_INDEX).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !response.status().is_success() {
            return Err(registry.failure(response, &what, "").await.into());
        }
        let body = read_limited(response, MAX_MANIFEST, &what).await?;
        serde_json::from_slice(&body).with_context(|| format!("{what} is not a JSON index"))?
    } else if response.status().is_success() {
        let body = read_limited(response, MAX_MANIFEST, &what).await?;
        serde_json::from_slice(&body).with_context(|| format!("{what} is not a JSON index"))?
    } else {
        return Err(registry.failure(response, &what, "").await.into());
    };
    Ok(index["manifests"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|d| d["artifactType"] == provenance::ARTIFACT_TYPE)
        .filter_map(|d| d["digest"].as_str())
        .filter(|d| d.strip_prefix("sha256:").is_some_and(is_sha256_hex))
        .map(str::to_owned)
        .collect())
}

/// Checks one referrer: `Ok(Ok(statement))` when it verifies and names
/// `digest`, `Ok(Err(reason))` when it does not, `Err` when the registry
/// failed.
async fn check(
    registry: &mut Registry,
    referrer: &str,
    digest: &str,
    key: &PublicKey,
) -> anyhow::Result<Result<Value, String>> {
    let what = format!("the attestation manifest {referrer}");
    let (body, _) = registry
        .fetch(
            &format!("manifests/{referrer}"),
            OCI_MANIFEST,
            &what,
            MAX_MANIFEST,
        )
        .await?;
    if sha256_digest(&body) != referrer {
        return Ok(Err(format!(
            "the registry answered a manifest hashing to {}",
            sha256_digest(&body)
        )));
    }
    let Ok(manifest) = serde_json::from_slice::<Value>(&body) else {
        return Ok(Err("its manifest is not JSON".into()));
    };
    if manifest["subject"]["digest"] != digest {
        return Ok(Err(format!(
            "its manifest's subject is {}, not {digest}",
            manifest["subject"]["digest"]
        )));
    }
    let layers: Vec<&Value> = manifest["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|l| l["mediaType"] == provenance::ARTIFACT_TYPE)
        .collect();
    let [layer] = layers.as_slice() else {
        return Ok(Err(format!(
            "its manifest has {} layers of type {}, expected exactly one",
            layers.len(),
            provenance::ARTIFACT_TYPE
        )));
    };
    let Some(blob) = layer["digest"]
        .as_str()
        .filter(|d| d.strip_prefix("sha256:").is_some_and(is_sha256_hex))
    else {
        return Ok(Err("its envelope layer has no sha256 digest".into()));
    };
    let what = format!("the envelope blob {blob}");
    let (bytes, _) = registry
        .fetch(&format!("blobs/{blob}"), "*/*", &what, MAX_ENVELOPE)
        .await?;
    if sha256_digest(&bytes) != blob
        || layer["size"]
            .as_u64()
            .is_some_and(|size| size != bytes.len() as u64)
    {
        return Ok(Err(format!(
            "the envelope blob the registry answered does not match its descriptor ({blob})"
        )));
    }
    let envelope: Envelope = match serde_json::from_slice(&bytes) {
        Ok(envelope) => envelope,
        Err(e) => return Ok(Err(format!("the envelope is not DSSE JSON: {e}"))),
    };
    let statement = match provenance::verify(&envelope, key) {
        Ok(statement) => statement,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let hex = digest.trim_start_matches("sha256:");
    let subjects = statement["subject"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !subjects.iter().any(|s| s["digest"]["sha256"] == hex) {
        let named: Vec<String> = subjects
            .iter()
            .map(|s| {
                format!(
                    "{}@sha256:{}",
                    s["name"].as_str().unwrap_or("?"),
                    s["digest"]["sha256"].as_str().unwrap_or("?")
                )
            })
            .collect();
        return Ok(Err(format!(
            "the signed statement is about {}, not {digest}: it was attached to the wrong image",
            if named.is_empty() {
                "nothing".into()
            } else {
                named.join(", ")
            }
        )));
    }
    Ok(Ok(statement))
}

fn print_summary(image: &ImageRef, digest: &str, key: &PublicKey, v: &Verified) {
    let s = &v.statement;
    let hex = digest.trim_start_matches("sha256:");
    let build = &s["predicate"]["buildDefinition"];
    let external = &build["externalParameters"];
    let internal = &build["internalParameters"];
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let subject = s["subject"]
        .as_array()
        .and_then(|subjects| subjects.iter().find(|x| x["digest"]["sha256"] == hex))
        .map_or("-".into(), |x| text(&x["name"]));
    println!(
        "verified provenance of {}/{}@{digest}",
        image.host, image.repository
    );
    println!("  subject:      {subject}@{digest}");
    println!("  key:          {}", key.id());
    println!("  attestation:  {}", v.referrer);
    println!("  pipeline:     {}", text(&external["pipeline"]));
    println!("  engine:       {}", text(&external["engine"]));
    println!(
        "  execution:    {} (run {}, step {})",
        text(&internal["execution"]),
        text(&internal["run"]),
        text(&internal["step"])
    );
    let source = &external["source"];
    if source.is_object() {
        println!("  repository:   {}", text(&source["repository"]));
        println!("  commit:       {}", text(&source["commit"]));
        println!("  branch:       {}", text(&source["branch"]));
    } else {
        println!("  source:       -");
    }
    println!("  dependencies:");
    for dep in build["resolvedDependencies"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let digest = &dep["digest"];
        let pinned = if let Some(sha) = digest["sha256"].as_str() {
            format!("sha256:{sha}")
        } else if let Some(commit) = digest["gitCommit"].as_str() {
            format!("gitCommit:{commit}")
        } else {
            text(digest)
        };
        println!("    {}  {pinned}", text(&dep["uri"]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_references() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app").expect("parses");
        assert_eq!(
            (r.host.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "team/app", "latest")
        );
        let r = ImageRef::parse("localhost/app:v1.2").expect("parses");
        assert_eq!(
            (r.repository.as_str(), r.reference.as_str()),
            ("app", "v1.2")
        );
        let digest = format!("sha256:{}", "ab".repeat(32));
        let r = ImageRef::parse(&format!("reg.example.com/a/b:v1@{digest}")).expect("parses");
        assert_eq!(r.reference, digest);
        for bad in [
            "app:v1",
            "team/app",
            "reg.io/App",
            "reg.io/a@sha256:12",
            "reg.io/",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_bearer_challenges() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                ("realm".to_owned(), "http://127.0.0.1:1/token".to_owned()),
                ("service".to_owned(), "reg".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull,push".to_owned()),
            ]
        );
    }
}
