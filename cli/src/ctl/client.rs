//! The HTTP client of `arkline ctl`: one request per call, bearer token, and the
//! server's JSON errors turned into [`ApiFailure`].

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::serve::error::ErrorBody;

/// An error answered by the server: printed with its code, and a non-zero exit.
#[derive(Debug, thiserror::Error)]
#[error("{message} [{code}, HTTP {status}]")]
pub struct ApiFailure {
    /// HTTP status.
    pub status: StatusCode,
    /// The stable error code.
    pub code: String,
    /// The server's message.
    pub message: String,
}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

impl Client {
    /// A client of `server` (`http://host:port`) presenting `token`.
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Client> {
        let server = server.trim_end_matches('/').to_owned();
        url::Url::parse(&server).with_context(|| {
            format!("`{server}` is not a server URL: write it like http://127.0.0.1:8740")
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            server,
            token,
        })
    }

    /// A request to `path` (starting with `/`).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.server));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Sends `req`; a non-success answer becomes an [`ApiFailure`].
    pub async fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        let response = req
            .send()
            .await
            .with_context(|| format!("cannot reach the arkline server at {}: is `arkline serve` running there? (set --server or ARKLINE_SERVER)", self.server))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let failure = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => ApiFailure {
                status,
                code: body.code,
                message: body.message,
            },
            Err(_) => ApiFailure {
                status,
                code: "http".into(),
                message: if text.is_empty() {
                    format!("the server answered {status}")
                } else {
                    text
                },
            },
        };
        Err(failure.into())
    }

    /// Sends `req` and decodes its JSON answer.
    pub async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> anyhow::Result<T> {
        let response = self.send(req).await?;
        let bytes = response
            .bytes()
            .await
            .context("the server's answer was cut off")?;
        serde_json::from_slice(&bytes).context("the server's answer is not the JSON expected; are the server and ctl the same version?")
    }

    /// Sends `req` and returns its JSON answer as it is.
    pub async fn value(&self, req: RequestBuilder) -> anyhow::Result<serde_json::Value> {
        self.json(req).await
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (empty means `message`).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
    /// `id:`.
    pub id: String,
}

/// Reads the server-sent events of `response`, calling `on_event` for each until
/// it returns `false` or the stream ends.
pub async fn read_events(
    response: Response,
    mut on_event: impl FnMut(SseEvent) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut stream = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut current = SseEvent::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the log stream broke")?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !current.data.is_empty() || !current.event.is_empty() {
                    let event = std::mem::take(&mut current);
                    if !on_event(event)? {
                        return Ok(());
                    }
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => current.event = value.to_owned(),
                "id" => current.id = value.to_owned(),
                "data" => {
                    if !current.data.is_empty() {
                        current.data.push('\n');
                    }
                    current.data.push_str(value);
                }
                _ => {}
            }
        }
    }
    Ok(())
}
