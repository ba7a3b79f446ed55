//! The `call-capability` step: one call of one capability through the SDK, with the
//! result returned as outputs (never as a step error) so a test can check whether
//! the host granted or denied it.

use arkline_sdk::prelude::*;

/// Configuration of the `call-capability` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallCapability {
    /// The capability to call.
    pub capability: Capability,
}

/// A capability `call-capability` can exercise, and the call it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Runs the program `true` with no arguments.
    Process,
    /// Sends `GET http://127.0.0.1:1/`.
    Http,
    /// Reads cache key `k`.
    Cache,
    /// Calls `kv.get` with an empty payload.
    HostCall,
}

/// Runs the `call-capability` step. Outputs `result`: `ok` when the host served the
/// call (whatever its answer: a failing program or an absent key still count), else
/// `error`, with `error` the [`HostError`]'s text and `kind` its variant
/// (`denied`, `invalid-argument`, `timeout`, `too-large` or `failed`).
pub fn call_capability(_ctx: &Context, config: CallCapability) -> StepResult {
    let result = match config.capability {
        Capability::Process => process::Command::new("true").output().map(drop),
        Capability::Http => http::Request::get("http://127.0.0.1:1/").send().map(drop),
        Capability::Cache => cache::get("k").map(drop),
        Capability::HostCall => host_call::call("kv.get", b"").map(drop),
    };
    Ok(match result {
        Ok(()) => Outcome::new().output("result", "ok"),
        Err(e) => Outcome::new()
            .output("result", "error")
            .output("kind", kind(&e))
            .output("error", e.to_string()),
    })
}

/// The variant of `e`, for tests that tell a refusal from a failed call.
fn kind(e: &HostError) -> &'static str {
    match e {
        HostError::Denied(_) => "denied",
        HostError::InvalidArgument(_) => "invalid-argument",
        HostError::Timeout => "timeout",
        HostError::TooLarge(_) => "too-large",
        HostError::Failed(_) => "failed",
    }
}

/// Configuration of the `cache` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheOp {
    /// `get`, `put` or `remove`.
    pub op: CacheVerb,
    /// The key.
    pub key: String,
    /// The value to `put`.
    #[serde(default)]
    pub value: Option<String>,
}

/// A cache operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CacheVerb {
    /// Read a key.
    Get,
    /// Write a key.
    Put,
    /// Delete a key.
    Remove,
}

/// Runs the `cache` step: one operation on the engine's cache. Outputs `found`
/// (`true`/`false`) and `value` for `get`; a host error fails the step with its text.
pub fn cache_op(_ctx: &Context, config: CacheOp) -> StepResult {
    let failed = |e: HostError| StepError::failed(e.to_string());
    match config.op {
        CacheVerb::Get => match cache::get(&config.key).map_err(failed)? {
            Some(bytes) => Ok(Outcome::new()
                .output("found", "true")
                .output("value", String::from_utf8_lossy(&bytes).into_owned())),
            None => Ok(Outcome::new().output("found", "false")),
        },
        CacheVerb::Put => {
            let value = config.value.unwrap_or_default();
            cache::put(&config.key, value.as_bytes()).map_err(failed)?;
            Ok(Outcome::new())
        }
        CacheVerb::Remove => {
            cache::remove(&config.key).map_err(failed)?;
            Ok(Outcome::new())
        }
    }
}
