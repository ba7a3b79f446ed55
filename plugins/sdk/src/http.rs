//! Outbound HTTP to granted hosts (the `http` capability).
//!
//! ```no_run
//! # fn f() -> Result<(), arkline_sdk::HostError> {
//! let resp = arkline_sdk::http::Request::get("https://api.example.com/v1/status")
//!     .header("accept", "application/json")
//!     .send()?;
//! assert_eq!(resp.status, 200);
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::HostError;
use crate::bindings::arkline::step::http as wit;

/// An outbound request.
#[derive(Debug, Clone)]
#[must_use]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
    follow_redirects: bool,
}

impl Request {
    /// A request with this method and absolute URL.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout: None,
            follow_redirects: true,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// A time limit for the whole exchange.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether to follow redirects (default: yes; each hop is checked against the grant).
    pub fn follow_redirects(mut self, follow: bool) -> Self {
        self.follow_redirects = follow;
        self
    }

    /// Sends the request and waits for the whole response.
    pub fn send(&self) -> Result<Response, HostError> {
        let request = wit::Request {
            method: self.method.clone(),
            url: self.url.clone(),
            headers: crate::context::key_values(self.headers.iter().cloned()),
            body: self.body.clone(),
            timeout_ms: self
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            follow_redirects: self.follow_redirects,
        };
        let resp = wit::send(&request)?;
        Ok(Response {
            status: resp.status,
            headers: resp
                .headers
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
            body: resp.body,
        })
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, in the order received.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
