//! The engine behind the `http` capability: outbound requests a guest may make, and
//! the checks that keep them inside the grant.
//!
//! A guest names a URL; what matters is where the bytes actually go. Every request is
//! therefore checked three times, each time against the *real* target rather than
//! anything the guest wrote in a header (Spin's CVE-2024-32980 trusted a `Host`
//! header):
//!
//! 1. the URL of every hop (the first and each redirect) must be `http`/`https`, carry
//!    no credentials, and name a host matched by an allowed [pattern](HttpPolicy::new);
//! 2. an IP literal in the URL, which never goes through DNS, must be a public address
//!    unless the grant names that literal exactly;
//! 3. a host name is resolved by this module's own resolver, which hands the
//!    connector only addresses it has vetted: a name that resolves to a loopback,
//!    private, link-local (cloud metadata), CGNAT, multicast or otherwise non-public
//!    address is refused unless the grant names that host exactly. The connector
//!    dials exactly the addresses the resolver returned, so a DNS answer that changes
//!    between a check and the connection (rebinding) cannot slip through.
//!
//! Decisions a guest author may trip over:
//!
//! - URLs with user info (`http://user:pw@host/`) are refused, not stripped: send an
//!   `Authorization` header instead. Silently dropping credentials would turn a
//!   guest's mistake into a confusing 401, and `allowed@evil` URLs are a classic
//!   way to mislead a reader about the target.
//! - `Host`, `Content-Length`, `Transfer-Encoding`, `Connection` and the other
//!   connection-management headers belong to the client. A `Host` or
//!   `Content-Length` equal to what the client sends anyway is dropped; any other
//!   value is refused as an invalid argument.
//! - Bodies are never decompressed and no `Accept-Encoding` is added: the guest gets
//!   the bytes the server sent, with their `Content-Encoding`, and the response cap
//!   counts those bytes (no decompression bombs).
//! - No cookie store, no proxy (an `HTTP_PROXY` in the host's environment does not
//!   apply), HTTP/1.1 only, TLS by rustls with the Mozilla (webpki) roots.
//! - A `User-Agent` of `arkline/<version>` is sent unless the guest sets one.
//! - Redirects are followed by this module, not the client library, so that each hop
//!   is checked: `301`/`302`/`303` become a body-less `GET` (except `HEAD`), `307`/`308`
//!   resend method and body, and `Authorization`, `Cookie` and
//!   `Proxy-Authorization` are dropped when a hop changes origin.
//! - The time limit covers the whole exchange: every hop and the body.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use tracing::Instrument;
use url::Url;

/// The `User-Agent` sent when the guest sets none.
pub const USER_AGENT: &str = concat!("arkline/", env!("CARGO_PKG_VERSION"));

/// Clients kept for distinct sets of exactly granted host names; past this many, a
/// policy with yet another set gets a client of its own per request (no pooling).
const MAX_CACHED_CLIENTS: usize = 32;

/// Names that lead to cloud instance metadata without looking like it; refused unless
/// granted exactly. Their addresses are link-local, so the address check catches them
/// too: this check makes the refusal name the reason before any DNS query.
const METADATA_NAMES: &[&str] = &[
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// Why an `http` call failed; mirrors the WIT `host-error` variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The target is outside the grant: host, address or redirect hop.
    #[error("denied: {0}")]
    Denied(String),
    /// The request is malformed: method, URL, scheme, header, time limit.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The exchange did not finish within its time limit.
    #[error("timed out: the exchange did not complete within its time limit")]
    Timeout,
    /// A request or response body exceeds its cap.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The exchange failed: connection, TLS, protocol, too many redirects.
    #[error("failed: {0}")]
    Failed(String),
}

/// What a biz may reach over HTTP, and the caps on each exchange.
///
/// Host patterns, matched case-insensitively against the URL's host (ports are not
/// part of a pattern; any port of a matched host is allowed):
///
/// - `api.example.com`: exactly that host; also the only way to reach a name that
///   resolves to a non-public address (an internal service, `localhost`);
/// - `*.example.com`: any subdomain of `example.com`, not `example.com` itself;
/// - `*`: any host with public addresses;
/// - `127.0.0.1`, `[::1]` or `::1`: exactly that address literal, public or not.
///
/// A pattern that is none of these (see [`validate_host_pattern`]) matches nothing.
///
/// ```
/// use std::time::Duration;
/// use arkline::host::http::HttpPolicy;
///
/// let policy = HttpPolicy::new(vec!["api.example.com".into(), "*.cdn.example".into()])
///     .max_response_body(1 << 20)
///     .default_timeout(Duration::from_secs(10));
/// assert_eq!(policy.allowed(), ["api.example.com", "*.cdn.example"]);
/// ```
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    allowed: Vec<String>,
    patterns: Vec<HostPattern>,
    max_request_body: usize,
    max_response_body: usize,
    default_timeout: Duration,
    max_timeout: Duration,
    max_redirects: usize,
}

impl Default for HttpPolicy {
    /// Allows no host.
    fn default() -> Self {
        HttpPolicy::new(Vec::new())
    }
}

impl HttpPolicy {
    /// A policy allowing the hosts matched by `allowed`, with caps of 16 MiB per
    /// request and response body, a 30 s default and 5 min maximum time limit, and at
    /// most 10 redirects.
    pub fn new(allowed: Vec<String>) -> Self {
        let patterns = allowed
            .iter()
            .filter_map(|p| HostPattern::parse(p).ok())
            .collect();
        HttpPolicy {
            allowed,
            patterns,
            max_request_body: 16 << 20,
            max_response_body: 16 << 20,
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            max_redirects: 10,
        }
    }

    /// Caps the request body at `bytes`.
    #[must_use]
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.max_request_body = bytes;
        self
    }

    /// Caps the response body at `bytes`, as received (not decompressed).
    #[must_use]
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_response_body = bytes;
        self
    }

    /// The time limit of a request that sets none.
    #[must_use]
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// The longest time limit a request may set; longer ones are shortened to it.
    #[must_use]
    pub fn max_timeout(mut self, timeout: Duration) -> Self {
        self.max_timeout = timeout;
        self
    }

    /// How many redirects a request may follow.
    #[must_use]
    pub fn max_redirects(mut self, redirects: usize) -> Self {
        self.max_redirects = redirects;
        self
    }

    /// The host patterns as given.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    /// Checks one hop's URL: scheme, credentials, host pattern, and for IP literals
    /// and metadata names, the address class.
    fn check_url(&self, url: &Url) -> Result<(), HttpError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::InvalidArgument(format!(
                "URL scheme `{}` is not supported; use `http` or `https`",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(HttpError::InvalidArgument(format!(
                "URL `{}` carries credentials; send them in an `Authorization` header instead",
                Redacted(url)
            )));
        }
        let target = match url.host() {
            Some(url::Host::Domain(name)) => Target::Name(normalize_name(name)),
            Some(url::Host::Ipv4(ip)) => Target::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Target::Ip(IpAddr::V6(ip)),
            None => {
                return Err(HttpError::InvalidArgument(format!(
                    "URL `{}` has no host",
                    Redacted(url)
                )));
            }
        };
        if !self.patterns.iter().any(|p| p.matches(&target)) {
            return Err(HttpError::Denied(format!(
                "host `{target}` is not in the http grant (allowed: {})",
                self.allowed_list()
            )));
        }
        let exact = self.patterns.iter().any(|p| p.names_exactly(&target));
        match &target {
            Target::Ip(ip) => match non_public_reason(*ip) {
                Some(reason) if !exact => Err(HttpError::Denied(format!(
                    "address `{target}` is {reason}; only a grant naming `{target}` exactly allows it"
                ))),
                _ => Ok(()),
            },
            Target::Name(name) if !exact && is_metadata_name(name) => {
                Err(HttpError::Denied(format!(
                    "host `{name}` is a cloud metadata name; only a grant naming `{name}` exactly allows it"
                )))
            }
            Target::Name(_) => Ok(()),
        }
    }

    /// Host names the grant names exactly: the resolver lets these resolve to
    /// non-public addresses.
    fn exact_names(&self) -> BTreeSet<String> {
        self.patterns
            .iter()
            .filter_map(|p| match p {
                HostPattern::Exact(Target::Name(name)) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    fn allowed_list(&self) -> String {
        if self.allowed.is_empty() {
            "nothing".to_owned()
        } else {
            self.allowed
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

/// Checks that `pattern` is a host pattern [`HttpPolicy`] understands, explaining
/// why not otherwise (an invalid pattern in a policy matches nothing).
pub fn validate_host_pattern(pattern: &str) -> Result<(), String> {
    HostPattern::parse(pattern).map(|_| ())
}

/// What a URL's host is: a normalized name or an address literal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Name(name) => f.write_str(name),
            Target::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One allowed-host pattern, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host (the address checks still apply).
    Any,
    /// `*.suffix`: any strict subdomain of `suffix`.
    Subdomains(String),
    /// A host name or address literal.
    Exact(Target),
}

impl HostPattern {
    fn parse(pattern: &str) -> Result<Self, String> {
        let trimmed = pattern.trim();
        if trimmed == "*" {
            return Ok(HostPattern::Any);
        }
        let unbracketed = trimmed
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(trimmed);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(HostPattern::Exact(Target::Ip(ip)));
        }
        let (wildcard, host) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let invalid = |why: &str| format!("host pattern `{pattern}` is invalid: {why}");
        if host.is_empty() {
            return Err(invalid("it names no host"));
        }
        if host.contains(['*', ':', '/', '@']) {
            return Err(invalid(
                "use `host`, `*.domain` or `*`, without scheme, port, path or other wildcards",
            ));
        }
        match url::Host::parse(host) {
            Ok(url::Host::Domain(name)) => {
                let name = normalize_name(&name);
                if name.is_empty() {
                    Err(invalid("it names no host"))
                } else if wildcard {
                    Ok(HostPattern::Subdomains(name))
                } else {
                    Ok(HostPattern::Exact(Target::Name(name)))
                }
            }
            Ok(url::Host::Ipv4(ip)) if !wildcard => {
                Ok(HostPattern::Exact(Target::Ip(IpAddr::V4(ip))))
            }
            Ok(url::Host::Ipv6(ip)) if !wildcard => {
                Ok(HostPattern::Exact(Target::Ip(IpAddr::V6(ip))))
            }
            Ok(_) => Err(invalid("a wildcard applies to domain names, not addresses")),
            Err(e) => Err(invalid(&e.to_string())),
        }
    }

    fn matches(&self, target: &Target) -> bool {
        match (self, target) {
            (HostPattern::Any, _) => true,
            (HostPattern::Subdomains(suffix), Target::Name(name)) => name
                .strip_suffix(suffix.as_str())
                .and_then(|prefix| prefix.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty()),
            (HostPattern::Subdomains(_), Target::Ip(_)) => false,
            (HostPattern::Exact(exact), target) => exact == target,
        }
    }

    fn names_exactly(&self, target: &Target) -> bool {
        matches!(self, HostPattern::Exact(exact) if exact == target)
    }
}

/// Lower-case, without the trailing dot of a fully qualified name.
fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn is_metadata_name(name: &str) -> bool {
    METADATA_NAMES.contains(&name)
}

/// Why `ip` is not a public unicast address, or `None` when it is one.
fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_broadcast() => "the broadcast address",
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local (where cloud instance metadata lives)",
        (10, _, _) | (192, 168, _) => "private (RFC 1918)",
        (172, 16..=31, _) => "private (RFC 1918)",
        (100, 64..=127, _) => "shared carrier-grade NAT space (100.64.0.0/10)",
        (192, 0, 0) => "reserved for IETF protocol assignments",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "reserved for documentation",
        (192, 88, 99) => "the deprecated 6to4 relay anycast range",
        (198, 18..=19, _) => "reserved for benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    let embedded_v4 = |high: usize| {
        let [a, b] = segments[high].to_be_bytes();
        let [c, d] = segments[high + 1].to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        // An IPv4-mapped address reaches the IPv4 host: judge that one.
        return non_public_v4(v4).map(|_| "an IPv4-mapped form of a non-public IPv4 address");
    }
    match segments {
        [0, 0, 0, 0, 0, 0, _, _] => Some("IPv4-compatible (deprecated, ::/96)"),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => non_public_v4(embedded_v4(6))
            .map(|_| "a NAT64 form (64:ff9b::/96) of a non-public IPv4 address"),
        [0x64, 0xff9b, 1, ..] => Some("local-use NAT64 (64:ff9b:1::/48)"),
        [0x2002, ..] => non_public_v4(embedded_v4(1))
            .map(|_| "a 6to4 form (2002::/16) of a non-public IPv4 address"),
        [0x2001, 0, ..] => Some("Teredo (2001::/32)"),
        [0x2001, 0xdb8, ..] => Some("reserved for documentation (2001:db8::/32)"),
        [0x0100, 0, 0, 0, ..] => Some("discard-only (100::/64)"),
        [first, ..] if first & 0xfe00 == 0xfc00 => Some("unique local (fc00::/7, private)"),
        [first, ..] if first & 0xffc0 == 0xfe80 => Some("link-local (fe80::/10)"),
        [first, ..] if first & 0xffc0 == 0xfec0 => Some("site-local (fec0::/10, deprecated)"),
        [first, ..] if first & 0xff00 == 0xff00 => Some("multicast"),
        // Everything public is global unicast, 2000::/3; the rest is unassigned.
        [first, ..] if first & 0xe000 != 0x2000 => Some("outside global unicast (2000::/3)"),
        _ => None,
    }
}

/// The resolver's refusal, found again in the client's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct AddressDenied(String);

/// Vets the addresses `name` resolved to: all must be public unless the grant names
/// `name` exactly (`exact`). Refusing the whole answer, rather than dropping the bad
/// addresses, makes a name that mixes public and private addresses fail loudly.
fn vet_resolved(
    name: &str,
    addrs: Vec<SocketAddr>,
    exact: &BTreeSet<String>,
) -> Result<Vec<SocketAddr>, AddressDenied> {
    let normalized = normalize_name(name);
    if exact.contains(&normalized) {
        return Ok(addrs);
    }
    if is_metadata_name(&normalized) {
        return Err(AddressDenied(format!(
            "host `{normalized}` is a cloud metadata name; only a grant naming `{normalized}` exactly allows it"
        )));
    }
    for addr in &addrs {
        if let Some(reason) = non_public_reason(addr.ip()) {
            return Err(AddressDenied(format!(
                "host `{normalized}` resolves to {}, which is {reason}; only a grant naming `{normalized}` exactly allows it",
                addr.ip()
            )));
        }
    }
    Ok(addrs)
}

/// The client's only resolver: system resolution (`getaddrinfo`), then
/// [`vet_resolved`]. What it returns is what the connector dials.
struct VettingResolver {
    exact: Arc<BTreeSet<String>>,
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let exact = Arc::clone(&self.exact);
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve_and_vet(name, &exact).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

async fn resolve_and_vet(
    name: String,
    exact: &BTreeSet<String>,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let lookup = name.clone();
    let addrs = tokio::task::spawn_blocking(move || {
        (lookup.as_str(), 0).to_socket_addrs().map(Vec::from_iter)
    })
    .await
    .map_err(|e| format!("resolving `{name}` was interrupted: {e}"))?
    .map_err(|e| format!("resolving `{name}`: {e}"))?;
    Ok(vet_resolved(&name, addrs, exact)?)
}

/// One outbound request from a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Absolute `http` or `https` URL.
    pub url: String,
    /// Request headers, in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Option<Vec<u8>>,
    /// Time limit for the whole exchange; the policy's default when `None`.
    pub timeout: Option<Duration>,
    /// Follow redirects, each hop checked against the grant.
    pub follow_redirects: bool,
}

impl HttpRequest {
    /// A request without headers or body that follows redirects and uses the
    /// policy's time limit.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        HttpRequest {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout: None,
            follow_redirects: true,
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets the time limit.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether to follow redirects.
    #[must_use]
    pub fn follow_redirects(mut self, follow: bool) -> Self {
        self.follow_redirects = follow;
        self
    }
}

/// A response, with its whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Response headers, in order; values that are not UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    /// The body as received, at most the policy's response cap.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The HTTP client shared by every `http` call of a runtime; cheap to clone.
///
/// Connections are pooled per set of host names the grants name exactly, because
/// those decide what the resolver lets through: two policies with the same set share
/// connections, which both would have been allowed to open.
///
/// ```no_run
/// # async fn demo() -> Result<(), arkline::host::http::HttpError> {
/// use arkline::host::http::{HttpClient, HttpPolicy, HttpRequest};
///
/// let client = HttpClient::new()?;
/// let policy = HttpPolicy::new(vec!["*.example.com".into()]);
/// let response = client
///     .send(&policy, HttpRequest::new("GET", "https://api.example.com/v1/status"))
///     .await?;
/// println!("{} ({} bytes)", response.status, response.body.len());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    /// For policies that name no host exactly (the common case).
    public_only: reqwest::Client,
    /// Keyed by the host names a policy names exactly.
    by_exact_names: Mutex<HashMap<BTreeSet<String>, reqwest::Client>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Builds the client (TLS configuration and the vetting resolver).
    pub fn new() -> Result<Self, HttpError> {
        Ok(HttpClient {
            inner: Arc::new(ClientInner {
                public_only: build_client(BTreeSet::new())?,
                by_exact_names: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Sends `request` if `policy` allows it, following redirects that `policy` also
    /// allows, and returns the whole response.
    ///
    /// Must be called within a Tokio runtime (name resolution runs on its blocking
    /// pool; the time limit is a Tokio timer).
    pub async fn send(
        &self,
        policy: &HttpPolicy,
        request: HttpRequest,
    ) -> Result<HttpResponse, HttpError> {
        let timeout = match request.timeout {
            Some(t) if t.is_zero() => {
                return Err(HttpError::InvalidArgument(
                    "the time limit must be longer than zero".to_owned(),
                ));
            }
            Some(t) => t.min(policy.max_timeout),
            None => policy.default_timeout,
        };
        let prepared = prepare(policy, request)?;
        let span = tracing::debug_span!(
            "http_send",
            method = %prepared.method,
            host = prepared.url.host_str().unwrap_or_default(),
        );
        let client = self.client_for(policy)?;
        within(timeout, exchange(&client, policy, prepared))
            .instrument(span)
            .await
    }

    fn client_for(&self, policy: &HttpPolicy) -> Result<reqwest::Client, HttpError> {
        let exact = policy.exact_names();
        if exact.is_empty() {
            return Ok(self.inner.public_only.clone());
        }
        let mut clients = self
            .inner
            .by_exact_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&exact) {
            return Ok(client.clone());
        }
        let client = build_client(exact.clone())?;
        if clients.len() < MAX_CACHED_CLIENTS {
            clients.insert(exact, client.clone());
        }
        Ok(client)
    }
}

fn build_client(exact: BTreeSet<String>) -> Result<reqwest::Client, HttpError> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .http1_only()
        .pool_idle_timeout(Duration::from_secs(30))
        .dns_resolver(Arc::new(VettingResolver {
            exact: Arc::new(exact),
        }))
        .build()
        .map_err(|e| HttpError::Failed(format!("building the HTTP client: {}", chain(&e))))
}

async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, HttpError>>,
) -> Result<T, HttpError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(HttpError::Timeout))
}

/// A request checked and converted, ready for its first hop.
struct Prepared {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    follow_redirects: bool,
}

fn prepare(policy: &HttpPolicy, request: HttpRequest) -> Result<Prepared, HttpError> {
    if let Some(body) = &request.body
        && body.len() > policy.max_request_body
    {
        return Err(HttpError::TooLarge(format!(
            "the request body is {} bytes, over the cap of {} bytes",
            body.len(),
            policy.max_request_body
        )));
    }
    let method = Method::from_bytes(request.method.as_bytes()).map_err(|_| {
        HttpError::InvalidArgument(format!(
            "`{}` is not a valid HTTP method",
            request.method.escape_debug()
        ))
    })?;
    if method == Method::CONNECT {
        return Err(HttpError::InvalidArgument(
            "the CONNECT method is not supported".to_owned(),
        ));
    }
    let mut url = Url::parse(&request.url).map_err(|e| {
        HttpError::InvalidArgument(format!(
            "`{}` is not an absolute URL: {e}",
            request.url.escape_debug()
        ))
    })?;
    url.set_fragment(None);
    policy.check_url(&url)?;

    let body_len = request.body.as_ref().map_or(0, Vec::len);
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            HttpError::InvalidArgument(format!(
                "`{}` is not a valid header name",
                name.escape_debug()
            ))
        })?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            HttpError::InvalidArgument(format!(
                "the value of header `{name}` is not valid (control characters or line breaks)"
            ))
        })?;
        if name == header::HOST {
            let authority = authority(&url);
            if value.as_bytes().eq_ignore_ascii_case(authority.as_bytes()) {
                continue;
            }
            return Err(HttpError::InvalidArgument(format!(
                "the `Host` header is set from the URL (`{authority}`), not by the guest; remove it or change the URL"
            )));
        }
        if name == header::CONTENT_LENGTH {
            if value.as_bytes() == body_len.to_string().as_bytes() {
                continue;
            }
            return Err(HttpError::InvalidArgument(format!(
                "the `Content-Length` header does not match the {body_len}-byte body; remove it"
            )));
        }
        if is_connection_header(&name) {
            return Err(HttpError::InvalidArgument(format!(
                "the `{name}` header is managed by the host's HTTP client; remove it"
            )));
        }
        headers.append(name, value);
    }
    if !headers.contains_key(header::USER_AGENT) {
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    }
    Ok(Prepared {
        method,
        url,
        headers,
        body: request.body.map(Bytes::from),
        follow_redirects: request.follow_redirects,
    })
}

fn is_connection_header(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// `host[:port]` as a client sends it in `Host`.
fn authority(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => String::new(),
    }
}

/// Sends the hops and reads the final body.
async fn exchange(
    client: &reqwest::Client,
    policy: &HttpPolicy,
    prepared: Prepared,
) -> Result<HttpResponse, HttpError> {
    let Prepared {
        mut method,
        mut url,
        mut headers,
        mut body,
        follow_redirects,
    } = prepared;
    let mut redirects = 0;
    loop {
        let mut builder = client
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(body) = &body {
            builder = builder.body(body.clone());
        }
        let response = builder
            .send()
            .await
            .map_err(|e| send_error(&method, &url, e))?;
        let status = response.status();
        if !(follow_redirects && status.is_redirection()) {
            return read_response(response, policy.max_response_body).await;
        }
        let Some(location) = response.headers().get(header::LOCATION) else {
            // Not a redirect to follow (e.g. 304); the guest gets it as it is.
            return read_response(response, policy.max_response_body).await;
        };
        let mut next = location
            .to_str()
            .ok()
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| {
                HttpError::Failed(format!(
                    "{} answered {status} with a `Location` that is not a valid URL",
                    Redacted(&url)
                ))
            })?;
        if redirects == policy.max_redirects {
            return Err(HttpError::Failed(format!(
                "stopped after {redirects} redirects at {} (the limit is {})",
                Redacted(&url),
                policy.max_redirects
            )));
        }
        redirects += 1;
        next.set_fragment(None);
        policy
            .check_url(&next)
            .map_err(|e| redirect_refused(&url, &next, e))?;
        drop(response);

        if matches!(
            status,
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND | StatusCode::SEE_OTHER
        ) && method != Method::HEAD
        {
            method = Method::GET;
            body = None;
            for name in [
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::CONTENT_LANGUAGE,
                header::CONTENT_LOCATION,
            ] {
                headers.remove(name);
            }
        }
        if next.origin() != url.origin() {
            for name in [
                header::AUTHORIZATION,
                header::COOKIE,
                header::PROXY_AUTHORIZATION,
                header::WWW_AUTHENTICATE,
            ] {
                headers.remove(name);
            }
        }
        tracing::debug!(from = %Redacted(&url), to = %Redacted(&next), %status, "following redirect");
        url = next;
    }
}

/// A redirect hop's refusal, saying which hop.
fn redirect_refused(from: &Url, to: &Url, error: HttpError) -> HttpError {
    let hop = format!("redirect from {} to {}", Redacted(from), Redacted(to));
    match error {
        HttpError::Denied(why) => HttpError::Denied(format!("{hop}: {why}")),
        // The guest did not write this URL; it is the server's doing.
        HttpError::InvalidArgument(why) | HttpError::Failed(why) | HttpError::TooLarge(why) => {
            HttpError::Failed(format!("{hop} refused: {why}"))
        }
        HttpError::Timeout => HttpError::Timeout,
    }
}

fn send_error(method: &Method, url: &Url, error: reqwest::Error) -> HttpError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if let Some(denied) = e.downcast_ref::<AddressDenied>() {
            return HttpError::Denied(denied.0.clone());
        }
        source = e.source();
    }
    if error.is_timeout() {
        return HttpError::Timeout;
    }
    HttpError::Failed(format!(
        "{method} {}: {}",
        Redacted(url),
        chain(&error.without_url())
    ))
}

/// An error and its causes, `: `-separated.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

async fn read_response(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<HttpResponse, HttpError> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let declared = response.content_length();
    if let Some(declared) = declared
        && declared > cap as u64
    {
        return Err(HttpError::TooLarge(format!(
            "the response body is {declared} bytes (Content-Length), over the cap of {cap} bytes"
        )));
    }
    // The declared length may lie; the cap is enforced on what arrives.
    let mut body = Vec::with_capacity(declared.map_or(0, |d| d as usize).min(64 << 10));
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        HttpError::Failed(format!(
            "reading the response body: {}",
            chain(&e.without_url())
        ))
    })? {
        if body.len() + chunk.len() > cap {
            return Err(HttpError::TooLarge(format!(
                "the response body exceeds the cap of {cap} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// A URL for messages and logs: scheme, host, port and path, without credentials,
/// query or fragment, which may hold secrets.
struct Redacted<'a>(&'a Url);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        write!(
            f,
            "{}://{}",
            url.scheme(),
            url.host_str().unwrap_or_default()
        )?;
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(url.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str) -> Target {
        match host.parse::<IpAddr>() {
            Ok(ip) => Target::Ip(ip),
            Err(_) => Target::Name(normalize_name(host)),
        }
    }

    fn matches(pattern: &str, host: &str) -> bool {
        HostPattern::parse(pattern)
            .expect("valid pattern")
            .matches(&target(host))
    }

    #[test]
    fn exact_patterns_match_only_that_host_case_insensitively() {
        assert!(matches("api.example.com", "api.example.com"));
        assert!(matches("API.Example.com", "api.example.com"));
        assert!(matches("api.example.com.", "api.example.com"));
        assert!(!matches("api.example.com", "example.com"));
        assert!(!matches("api.example.com", "x.api.example.com"));
        assert!(!matches("api.example.com", "api.example.com.evil.net"));
    }

    #[test]
    fn wildcard_patterns_match_strict_subdomains_only() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "badexample.com"));
        assert!(!matches("*.example.com", "a.example.com.evil.net"));
        assert!(!matches("*.example.com", "1.2.3.4"));
        assert!(matches("*", "anything.example"));
        assert!(matches("*", "8.8.8.8"));
    }

    #[test]
    fn address_patterns_match_the_same_address_in_any_spelling() {
        assert!(matches("127.0.0.1", "127.0.0.1"));
        assert!(matches("::1", "::1"));
        assert!(matches("[::1]", "::1"));
        assert!(matches("[::ffff:127.0.0.1]", "::ffff:7f00:1"));
        assert!(!matches("127.0.0.1", "::ffff:127.0.0.1"));
        assert!(!matches("127.0.0.1", "127.0.0.2"));
    }

    #[test]
    fn international_names_match_in_their_ascii_form() {
        assert!(matches("bücher.example", "xn--bcher-kva.example"));
        assert!(matches("*.bücher.example", "shop.xn--bcher-kva.example"));
    }

    #[test]
    fn malformed_patterns_are_explained() {
        for bad in [
            "",
            "*.",
            "foo*.example.com",
            "*.*.example.com",
            "https://example.com",
            "example.com:443",
            "*.127.0.0.1",
            "user@example.com",
        ] {
            let err = validate_host_pattern(bad).expect_err(bad);
            assert!(err.contains("is invalid"), "{bad}: {err}");
        }
        let policy = HttpPolicy::new(vec!["https://example.com".into()]);
        let url = Url::parse("https://example.com/").expect("url");
        assert!(matches!(policy.check_url(&url), Err(HttpError::Denied(_))));
    }

    #[test]
    fn public_addresses_are_public() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(non_public_reason(ip), None, "{ip}");
        }
    }

    #[test]
    fn non_public_addresses_are_classified() {
        for (ip, reason) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.100.100.200", "carrier-grade NAT"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "IPv4-mapped"),
            ("::ffff:169.254.169.254", "IPv4-mapped"),
            ("::ffff:10.1.2.3", "IPv4-mapped"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "NAT64"),
            ("64:ff9b::a9fe:a9fe", "NAT64"),
            ("2002:7f00:1::", "6to4"),
            ("2002:a9fe:a9fe::", "6to4"),
            ("fc00::1", "unique local"),
            ("fd00:ec2::254", "unique local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2001::1", "Teredo"),
            ("4000::1", "global unicast"),
        ] {
            let parsed: IpAddr = ip.parse().expect("ip");
            let got = non_public_reason(parsed).unwrap_or_else(|| panic!("{ip} is not public"));
            assert!(got.contains(reason), "{ip}: {got}");
        }
        // A mapped public address is as public as the address it maps.
        assert_eq!(
            non_public_reason("::ffff:8.8.8.8".parse().expect("ip")),
            None
        );
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter()
            .map(|a| SocketAddr::new(a.parse().expect("ip"), 443))
            .collect()
    }

    #[test]
    fn resolved_addresses_are_vetted_unless_the_name_is_granted_exactly() {
        let none = BTreeSet::new();
        let ok = vet_resolved("api.example.com", addrs(&["93.184.216.34"]), &none)
            .expect("public address");
        assert_eq!(ok, addrs(&["93.184.216.34"]));

        // A rebinding answer: one public address and one loopback.
        let err = vet_resolved(
            "rebind.example.com",
            addrs(&["93.184.216.34", "127.0.0.1"]),
            &none,
        )
        .expect_err("loopback among the answers");
        assert!(
            err.0.contains("`rebind.example.com` resolves to 127.0.0.1"),
            "{}",
            err.0
        );
        assert!(err.0.contains("loopback"), "{}", err.0);

        let err = vet_resolved("evil.example", addrs(&["::ffff:169.254.169.254"]), &none)
            .expect_err("mapped metadata address");
        assert!(err.0.contains("IPv4-mapped"), "{}", err.0);

        let err = vet_resolved("Metadata.Google.Internal.", addrs(&["8.8.8.8"]), &none)
            .expect_err("metadata name");
        assert!(err.0.contains("cloud metadata"), "{}", err.0);

        let exact = BTreeSet::from(["localhost".to_owned()]);
        let ok = vet_resolved("LOCALHOST.", addrs(&["127.0.0.1", "::1"]), &exact)
            .expect("granted exactly");
        assert_eq!(ok.len(), 2);
    }

    #[test]
    fn urls_are_checked_against_the_grant() {
        let check = |grant: &[&str], url: &str| {
            let policy = HttpPolicy::new(grant.iter().map(|g| g.to_string()).collect());
            policy.check_url(&Url::parse(url).expect("url"))
        };
        assert_eq!(check(&["*"], "https://example.com/x"), Ok(()));
        assert_eq!(check(&["127.0.0.1"], "http://127.0.0.1:8080/"), Ok(()));
        // url normalizes odd IPv4 spellings before the check sees them.
        assert!(matches!(
            check(&["*"], "http://2130706433/"),
            Err(HttpError::Denied(m)) if m.contains("127.0.0.1") && m.contains("loopback")
        ));
        assert!(matches!(
            check(&["*"], "http://0x7f.1/"),
            Err(HttpError::Denied(m)) if m.contains("127.0.0.1")
        ));
        assert!(matches!(
            check(&["*"], "http://metadata.google.internal/computeMetadata/v1/"),
            Err(HttpError::Denied(m)) if m.contains("cloud metadata")
        ));
        assert_eq!(
            check(
                &["metadata.google.internal"],
                "http://metadata.google.internal/"
            ),
            Ok(())
        );
        assert!(matches!(
            check(&["example.com"], "http://allowed.example.com@evil.net/"),
            Err(HttpError::InvalidArgument(m)) if m.contains("credentials") && !m.contains("allowed.example.com")
        ));
        assert!(matches!(
            check(&["*"], "file:///etc/passwd"),
            Err(HttpError::InvalidArgument(m)) if m.contains("`file`")
        ));
        assert!(matches!(
            check(&[], "https://example.com/"),
            Err(HttpError::Denied(m)) if m.contains("`example.com`") && m.contains("allowed: nothing")
        ));
    }

    #[test]
    fn redacted_urls_hide_credentials_and_queries() {
        let url = Url::parse("https://u:p@example.com:8443/a/b?token=s3cret#frag").expect("url");
        assert_eq!(Redacted(&url).to_string(), "https://example.com:8443/a/b");
    }
}
