//! The `inspect` step: what a reference is — its digest, media type, size and
//! platforms, and for an image its config in short (entrypoint, cmd, env
//! names, labels, created, layer count) — read from the registry, digests
//! checked, nothing pushed.

use std::time::Duration;

use arkline_sdk::prelude::*;
use serde_json::Value;

use crate::manifest::{self, Fetched};
use crate::oci::Platform;
use crate::reference::Reference;
use crate::{Clients, CredentialConfig, check_request_timeout, credential_of};

/// Configuration of the `inspect` step.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Inspect {
    /// The image: `registry/repository:tag` or `…@sha256:…`.
    pub reference: String,
    /// The registry's credential (`username` and `password`, or `token`).
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Of a multi-platform image, inspect this platform's manifest
    /// (`os/architecture[/variant]`); by default the index itself.
    #[serde(default)]
    pub platform: Option<String>,
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries
    /// always are.
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// Attempts after the first on 5xx, 429 or a failed exchange (default 4).
    #[serde(default = "crate::default_retries")]
    pub retries: u32,
    /// Time limit of each request in seconds (default 120; the host allows 300).
    #[serde(default = "crate::default_timeout")]
    pub request_timeout: u64,
}

/// The outputs read from an image config; empty for an index.
const CONFIG_OUTPUTS: [&str; 9] = [
    "config_digest",
    "created",
    "entrypoint",
    "cmd",
    "env",
    "labels",
    "workdir",
    "user",
    "layers",
];

/// Runs the `inspect` step.
pub fn inspect(ctx: &Context, config: Inspect) -> StepResult {
    let reference = Reference::parse(&config.reference)
        .map_err(|e| StepError::invalid_config("reference", e))?;
    let platform = config
        .platform
        .as_deref()
        .map(Platform::parse)
        .transpose()
        .map_err(|e| StepError::invalid_config("platform", e))?;
    check_request_timeout(config.request_timeout)?;
    let registry = Clients {
        plain_http: &config.plain_http,
        retries: config.retries,
        timeout: Duration::from_secs(config.request_timeout),
        user_agent: crate::step_user_agent(ctx),
    }
    .registry(
        &reference.registry,
        credential_of(config.credential.as_ref(), "credential")?,
    );
    let what = format!("the image {reference}");
    let top = Fetched::get(&registry, &reference, reference.manifest_reference(), &what)?;
    let (fetched, index_digest) = match &platform {
        Some(platform) if top.is_index() => {
            let chosen = top.choose(platform, &what)?;
            let fetched = Fetched::get(&registry, &reference, &chosen.digest, &what)?;
            (fetched, top.digest)
        }
        _ => (top, String::new()),
    };
    let mut outcome = Outcome::new()
        .output("digest", fetched.digest.clone())
        .output("media_type", fetched.media_type.clone())
        .output("index_digest", index_digest);
    if fetched.is_index() {
        let platforms = fetched.platforms();
        let size = fetched.bytes.len();
        outcome = outcome
            .output("size", size.to_string())
            .output("platforms", platforms.join(","));
        for name in CONFIG_OUTPUTS {
            outcome = outcome.output(name, "");
        }
        return Ok(outcome.summary(format!(
            "{reference}: index {} of {} manifests ({}), {size} bytes",
            fetched.digest,
            fetched.entries(&what)?.len(),
            platforms.join(", ")
        )));
    }
    let (config_descriptor, layers) = fetched.image(&what)?;
    let image = manifest::config(&registry, &reference, &config_descriptor, &what)?;
    let platform_text = manifest::platform_text(&image);
    if let Some(platform) = &platform
        && !platform.matches(&image)
    {
        return Err(StepError::failed(format!(
            "{what} is for {platform_text}, not {platform}"
        )));
    }
    let size = config_descriptor.size + layers.iter().map(|l| l.size).sum::<u64>();
    let run = image.get("config").cloned().unwrap_or(Value::Null);
    let json_of = |key: &str| match run.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(value) => value.to_string(),
    };
    let text_of = |key: &str| {
        run.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    // Names only: values can hold what should not be in a step's outputs.
    let env: Vec<&str> = run
        .get("Env")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .map(|line| line.split_once('=').map_or(line, |(name, _)| name))
        .collect();
    let labels = match run.get("Labels") {
        Some(labels @ Value::Object(_)) => labels.to_string(),
        _ => "{}".to_owned(),
    };
    Ok(outcome
        .output("size", size.to_string())
        .output("platforms", platform_text.clone())
        .output("config_digest", config_descriptor.digest.clone())
        .output(
            "created",
            image.get("created").and_then(Value::as_str).unwrap_or(""),
        )
        .output("entrypoint", json_of("Entrypoint"))
        .output("cmd", json_of("Cmd"))
        .output("env", env.join(","))
        .output("labels", labels)
        .output("workdir", text_of("WorkingDir"))
        .output("user", text_of("User"))
        .output("layers", layers.len().to_string())
        .summary(format!(
            "{reference}: {} {platform_text}, {} layers, {size} bytes",
            fetched.digest,
            layers.len()
        )))
}
