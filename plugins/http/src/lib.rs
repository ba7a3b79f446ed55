//! The `http` biz: HTTP requests with status checks, retries and outputs taken
//! from the JSON response, and webhook notifications.
//!
//! ```yaml
//! - name: release
//!   uses: http/request@0.1
//!   with:
//!     method: POST
//!     url: https://api.example.com/v1/releases
//!     headers: { authorization: "Bearer ${{ secrets.api_token }}" }
//!     json: { version: "${{ params.version }}" }
//!     expect_status: [201]
//!     retries: 3
//!     outputs: { id: /data/id }
//! finally:
//!   - name: notify
//!     uses: http/notify@0.1
//!     with:
//!       url: https://hooks.example.com/services/T000/B000
//!       message: "{{ arkline.pipeline }} #{{ arkline.run }}: {{ state }}"
//!       values: { state: "${{ steps.release.state }}" }
//! ```
//!
//! The biz requests `http: *`; the engine's grant decides the hosts it may reach
//! (a loopback or private host only when the grant names it exactly). Outputs of
//! `request`: `status`, `bytes`, and one per `outputs` entry (a JSON pointer into the
//! response; strings as they are, other values as JSON text). `notify` outputs
//! `status`. Header values are never logged.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use arkline_sdk::prelude::*;
use serde_json::Value;

use arkline_sdk::workspace::{guest_path, relative_path};

/// The host's response cap (16 MiB): larger bodies never reach the guest.
const HOST_RESPONSE_CAP: u64 = 16 << 20;

/// Configuration of the `request` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Absolute `http` or `https` URL; its host must be granted to the biz.
    pub url: String,
    /// Method (default `GET`).
    #[serde(default = "default_get")]
    pub method: String,
    /// Request headers. Values are never written to the log.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A text body.
    #[serde(default)]
    pub body: Option<String>,
    /// A JSON body (sets `content-type: application/json` unless a header does).
    #[serde(default)]
    pub json: Option<Value>,
    /// A workspace file sent as the body, relative to the workspace root.
    #[serde(default)]
    pub body_file: Option<String>,
    /// Statuses that count as success (default: any 2xx).
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// Attempts after the first when the server answers 5xx or 429, or the
    /// exchange fails or times out (default 0).
    #[serde(default)]
    pub retries: u32,
    /// Wait before the first retry, doubled for each later one (default `1s`).
    #[serde(default = "default_retry_delay")]
    pub retry_delay: String,
    /// Time limit of each attempt, e.g. `30s` or `2m` (default: the host's, 30 s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Fail when the response body is larger than this many bytes (default 16 MiB,
    /// the host's own cap).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: u64,
    /// Save the response body to this workspace file (parents are created).
    #[serde(default)]
    pub save_to: Option<String>,
    /// Outputs read from the JSON response body: output name → JSON pointer
    /// (RFC 6901, e.g. `/data/items/0/id`).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// Follow redirects, each hop checked against the grant (default: true).
    #[serde(default = "default_true")]
    pub follow_redirects: bool,
}

/// Configuration of the `notify` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// The webhook URL; its host must be granted to the biz.
    pub url: String,
    /// The message, a minijinja template seeing `values` and `arkline` (`engine`,
    /// `pipeline`, `run`, `stage`, `step`).
    pub message: String,
    /// The JSON payload; every string in it is a template that also sees
    /// `message` (rendered). Default `{"text": "{{ message }}"}` (Slack, Mattermost,
    /// Teams-compatible).
    #[serde(default)]
    pub payload: Option<Value>,
    /// Variables for the templates, e.g. `state: ${{ steps.deploy.state }}`.
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// Extra headers. Values are never written to the log.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Attempts after the first on 5xx, 429 or a failed exchange (default 2).
    #[serde(default = "default_notify_retries")]
    pub retries: u32,
    /// Time limit of each attempt (default `10s`).
    #[serde(default = "default_notify_timeout")]
    pub timeout: String,
}

fn default_get() -> String {
    "GET".to_owned()
}
fn default_retry_delay() -> String {
    "1s".to_owned()
}
fn default_max_response() -> u64 {
    HOST_RESPONSE_CAP
}
fn default_true() -> bool {
    true
}
fn default_notify_retries() -> u32 {
    2
}
fn default_notify_timeout() -> String {
    "10s".to_owned()
}

/// One exchange to make, with how to judge and retry it.
struct Exchange {
    request: http::Request,
    label: String,
    expect: Vec<u16>,
    retries: u32,
    delay: Duration,
}

/// Runs the `request` step.
pub fn request(_ctx: &Context, config: Request) -> StepResult {
    let method = check_method(&config.method)?;
    check_url(&config.url)?;
    let bodies = [
        config.body.is_some(),
        config.json.is_some(),
        config.body_file.is_some(),
    ];
    if bodies.iter().filter(|b| **b).count() > 1 {
        return Err(StepError::invalid_config(
            "body",
            "give at most one of `body`, `json` and `body_file`",
        ));
    }
    for (name, pointer) in &config.outputs {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name || name == "status" || name == "bytes" {
            return Err(StepError::invalid_config(
                format!("outputs.{name}"),
                "an output name holds letters, digits, `_` and `-`, and is not `status` or `bytes`",
            ));
        }
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(StepError::invalid_config(
                format!("outputs.{name}"),
                format!(
                    "`{pointer}` is not a JSON pointer; pointers start with `/`, e.g. `/data/id`"
                ),
            ));
        }
    }
    let save_to = config
        .save_to
        .as_deref()
        .map(|p| workspace_file("save_to", p))
        .transpose()?;
    let delay = duration("retry_delay", &config.retry_delay)?;
    let timeout = config
        .timeout
        .as_deref()
        .map(|t| duration("timeout", t))
        .transpose()?;

    let mut request = http::Request::new(method.clone(), config.url.clone())
        .follow_redirects(config.follow_redirects);
    for (name, value) in &config.headers {
        request = request.header(name, value);
    }
    let has_header = |name: &str| config.headers.keys().any(|k| k.eq_ignore_ascii_case(name));
    if let Some(body) = &config.body {
        request = request.body(body.as_bytes().to_vec());
    } else if let Some(json) = &config.json {
        if !has_header("content-type") {
            request = request.header("content-type", "application/json");
        }
        request = request.body(json.to_string().into_bytes());
    } else if let Some(file) = &config.body_file {
        let path = guest_path(&workspace_file("body_file", file)?);
        let bytes = fs::read(&path).map_err(|e| {
            StepError::invalid_config("body_file", format!("cannot read {path}: {e}"))
        })?;
        request = request.body(bytes);
    }
    if let Some(timeout) = timeout {
        request = request.timeout(timeout);
    }
    let exchange = Exchange {
        request,
        label: format!("{method} {}", redact_query(&config.url)),
        expect: config.expect_status.clone(),
        retries: config.retries,
        delay,
    };
    let response = send(&exchange)?;
    let size = response.body.len() as u64;
    if size > config.max_response_bytes {
        return Err(StepError::failed(format!(
            "{}: the response body is {size} bytes, larger than max_response_bytes ({})",
            exchange.label, config.max_response_bytes
        )));
    }
    let mut outcome = Outcome::new()
        .output("status", response.status.to_string())
        .output("bytes", size.to_string());
    if !config.outputs.is_empty() {
        let json: Value = serde_json::from_slice(&response.body).map_err(|e| {
            StepError::failed(format!(
                "{}: `outputs` need a JSON response, but the body is not JSON ({e}){}",
                exchange.label,
                excerpt(&response.body)
            ))
        })?;
        for (name, pointer) in &config.outputs {
            let value = json.pointer(pointer).ok_or_else(|| {
                StepError::failed(format!(
                    "{}: the response has nothing at `{pointer}` (output `{name}`)",
                    exchange.label
                ))
            })?;
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            outcome = outcome.output(name.clone(), text);
        }
    }
    if let Some(rel) = save_to {
        let path = guest_path(&rel);
        if let Some(parent) = Path::new(&path).parent() {
            fs::create_dir_all(parent).map_err(|e| {
                StepError::failed(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        fs::write(&path, &response.body)
            .map_err(|e| StepError::failed(format!("cannot write {path}: {e}")))?;
        outcome = outcome.output("path", rel);
    }
    Ok(outcome.summary(format!(
        "{} → {} ({size} bytes)",
        exchange.label, response.status
    )))
}

/// Runs the `notify` step.
pub fn notify(ctx: &Context, config: Notify) -> StepResult {
    check_url(&config.url)?;
    let timeout = duration("timeout", &config.timeout)?;
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let mut context = serde_json::Map::new();
    context.insert(
        "arkline".to_owned(),
        serde_json::json!({
            "engine": ctx.engine,
            "pipeline": ctx.pipeline,
            "run": ctx.run,
            "stage": ctx.stage,
            "step": ctx.step_name,
        }),
    );
    for (k, v) in &config.values {
        context.insert(k.clone(), v.clone());
    }
    let message = env
        .render_str(&config.message, &context)
        .map_err(|e| StepError::invalid_config("message", e.to_string()))?;
    context.insert("message".to_owned(), Value::String(message));
    let template = config
        .payload
        .clone()
        .unwrap_or_else(|| serde_json::json!({ "text": "{{ message }}" }));
    let payload = render_json(&env, &template, &Value::Object(context), "payload")?;

    let mut request = http::Request::post(config.url.clone())
        .timeout(timeout)
        .header("content-type", "application/json");
    for (name, value) in &config.headers {
        request = request.header(name, value);
    }
    let exchange = Exchange {
        request: request.body(payload.to_string().into_bytes()),
        label: format!("POST {}", redact_query(&config.url)),
        expect: Vec::new(),
        retries: config.retries,
        delay: Duration::from_secs(1),
    };
    let response = send(&exchange)?;
    Ok(Outcome::new()
        .output("status", response.status.to_string())
        .summary(format!("notified {} ({})", exchange.label, response.status)))
}

/// Renders every string of a JSON template.
fn render_json(
    env: &minijinja::Environment<'_>,
    template: &Value,
    context: &Value,
    field: &str,
) -> Result<Value, StepError> {
    Ok(match template {
        Value::String(s) => Value::String(
            env.render_str(s, context)
                .map_err(|e| StepError::invalid_config(field, e.to_string()))?,
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| render_json(env, v, context, &format!("{field}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        render_json(env, v, context, &format!("{field}.{k}"))?,
                    ))
                })
                .collect::<Result<_, StepError>>()?,
        ),
        other => other.clone(),
    })
}

/// Sends with retries; the last answer or failure decides.
fn send(exchange: &Exchange) -> Result<http::Response, StepError> {
    let attempts = exchange.retries.saturating_add(1);
    let mut delay = exchange.delay;
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            arkline_sdk::warn!(
                "{}: {last}; retrying in {} (attempt {attempt} of {attempts})",
                exchange.label,
                humantime::format_duration(delay)
            );
            std::thread::sleep(delay);
            delay = delay.saturating_mul(2);
        }
        match exchange.request.send() {
            Ok(response) => {
                let ok = if exchange.expect.is_empty() {
                    (200..300).contains(&response.status)
                } else {
                    exchange.expect.contains(&response.status)
                };
                if ok {
                    arkline_sdk::info!(
                        "{} → {} ({} bytes)",
                        exchange.label,
                        response.status,
                        response.body.len()
                    );
                    return Ok(response);
                }
                let retryable = response.status >= 500 || response.status == 429;
                last = format!("status {}{}", response.status, excerpt(&response.body));
                if !retryable {
                    break;
                }
            }
            // Outside the grant, malformed or over the host's cap: retrying cannot help.
            Err(
                e @ (HostError::Denied(_) | HostError::InvalidArgument(_) | HostError::TooLarge(_)),
            ) => {
                return Err(StepError::failed(format!("{}: {e}", exchange.label)));
            }
            Err(e) => last = e.to_string(),
        }
    }
    let expected = if exchange.expect.is_empty() {
        "a 2xx status".to_owned()
    } else {
        format!(
            "status {}",
            exchange
                .expect
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        )
    };
    Err(StepError::failed(format!(
        "{}: expected {expected}, got {last} (after {attempts} attempt{})",
        exchange.label,
        if attempts == 1 { "" } else { "s" }
    )))
}

fn check_method(method: &str) -> Result<String, StepError> {
    let upper = method.to_ascii_uppercase();
    if upper.is_empty() || !upper.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(StepError::invalid_config(
            "method",
            format!("`{method}` is not an HTTP method such as GET, POST, PUT, PATCH or DELETE"),
        ));
    }
    Ok(upper)
}

fn check_url(url: &str) -> Result<(), StepError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(StepError::invalid_config(
            "url",
            format!("`{url}` is not an absolute http:// or https:// URL"),
        ))
    }
}

fn duration(field: &str, text: &str) -> Result<Duration, StepError> {
    humantime::parse_duration(text).map_err(|e| {
        StepError::invalid_config(
            field,
            format!("`{text}` is not a duration such as `500ms`, `30s` or `2m`: {e}"),
        )
    })
}

fn workspace_file(field: &str, path: &str) -> Result<String, StepError> {
    relative_path(path)
        .filter(|rel| !rel.is_empty())
        .ok_or_else(|| {
            StepError::invalid_config(
                field,
                format!("`{path}` is not a file inside the workspace; give a path relative to the workspace root"),
            )
        })
}

/// The URL without its query, which often carries tokens.
fn redact_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The start of a body, for error messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

arkline_sdk::steps! {
    /// Sends an HTTP request; checks the status, retries, saves the body and outputs JSON fields.
    "request" => request,
    /// Posts a templated JSON message to a webhook (for `finally`).
    "notify" => notify,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_left_out_of_labels() {
        assert_eq!(redact_query("https://h/p?token=x"), "https://h/p");
        assert_eq!(redact_query("https://h/p#frag"), "https://h/p");
    }

    #[test]
    fn methods_are_upper_cased_and_checked() {
        assert_eq!(check_method("post").expect("valid"), "POST");
        assert!(check_method("GE T").is_err());
        assert!(check_method("").is_err());
    }
}
