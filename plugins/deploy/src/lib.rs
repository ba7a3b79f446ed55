//! The `deploy` biz: publishes a manifest bundle (a directory of YAML, or a
//! Helm chart directory) to an OCI registry as a template artifact, the way
//! ORAS pushes artifacts, and applies a template to a cluster with a granted
//! `kubectl` (server-side apply), waiting for its workloads to roll out.
//!
//! ```yaml
//! - name: template
//!   uses: deploy/publish-template@0.1
//!   with:
//!     path: deploy/manifests
//!     target: registry.example.com/team/app-template
//!     tags: ["${{ params.version }}"]
//! - name: apply
//!   uses: deploy/apply@0.1
//!   with:
//!     template: ${{ steps.template.outputs.image }}
//!     values: { image: "${{ steps.image.outputs.image }}", replicas: "3" }
//!     namespace: app
//!     applyset: app # prune through an ApplySet: a ConfigMap `app` in `app`
//! ```
//!
//! A template is an OCI image manifest with `artifactType`
//! [`ARTIFACT_TYPE`], the empty config ([`EMPTY_CONFIG`], `{}`) and one layer
//! ([`LAYER_TYPE`]): a deterministic gzipped tar of the directory, written by
//! the `image` biz's [`image::layer`] code and pushed with its distribution
//! client ([`image::registry`]); this crate links `image` as a library, without
//! its step exports.

use std::time::Duration;

use arkline_sdk::prelude::*;
use image::CredentialConfig;
use image::registry::{Credential, Registry};

pub mod apply;
pub mod publish;
pub mod render;

/// The `artifactType` of a template's manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.arkline.template.v1";
/// The media type of a template's one layer: a gzipped tar of the bundle.
pub const LAYER_TYPE: &str = "application/vnd.arkline.template.layer.v1.tar+gzip";
/// The OCI empty descriptor's media type, used as the config.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// The empty config's bytes.
pub const EMPTY_BYTES: &[u8] = b"{}";

/// Attempts after the first on 5xx, 429 or a failed exchange.
const RETRIES: u32 = 4;
/// Time limit of each registry request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A registry credential from the settings (`field` names the setting in errors).
fn credential(config: Option<&CredentialConfig>, field: &str) -> Result<Credential, StepError> {
    let Some(config) = config else {
        return Ok(Credential::Anonymous);
    };
    match (&config.username, &config.password, &config.token) {
        (None, None, None) => Ok(Credential::Anonymous),
        (Some(u), Some(p), None) => Ok(Credential::Basic {
            username: u.clone(),
            password: p.clone(),
        }),
        (None, None, Some(t)) => Ok(Credential::Bearer(t.clone())),
        (_, _, Some(_)) => Err(StepError::invalid_config(
            field,
            "give either `token` or `username` and `password`, not both",
        )),
        _ => Err(StepError::invalid_config(
            field,
            "give `username` and `password` together (pass the password as a secret)",
        )),
    }
}

/// A client of `host`: plain HTTP for loopback hosts and those listed.
fn client(host: &str, plain_http: &[String], credential: Credential) -> Registry {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    let plain = name == "localhost"
        || name.starts_with("127.")
        || name == "[::1]"
        || plain_http.iter().any(|h| h == host || h == name);
    Registry::new(host, plain, credential, RETRIES, REQUEST_TIMEOUT)
}

arkline_sdk::steps! {
    /// Pushes a directory of manifests (or a Helm chart) to a registry as an OCI template artifact.
    "publish-template" => publish::publish_template,
    /// Renders a template (from a registry or the workspace) with values and applies it with a granted kubectl, waiting for rollouts.
    "apply" => apply::apply,
}
