//! The `image` biz: builds container images without a daemon and pushes them to
//! an OCI registry over the `http` capability, the way `ko` and `crane append`
//! do.
//!
//! ```yaml
//! - name: image
//!   uses: image/publish@0.1
//!   with:
//!     base: registry.example.com/base/runtime:1.4
//!     layers:
//!       - paths: [app]
//!         working_dir: target/release
//!         destination: /usr/local/bin
//!       - paths: [static]
//!         destination: /srv
//!     entrypoint: [/usr/local/bin/app]
//!     env: { RUST_LOG: info }
//!     labels: { org.opencontainers.image.source: "https://git.example.com/team/app" }
//!     target: registry.example.com/team/app
//!     tags: ["${{ params.version }}", latest]
//!     credential:
//!       username: robot
//!       password: ${{ secrets.registry_password }}
//! ```
//!
//! `publish` pulls the base (index → the `platform`'s manifest → config; its
//! layers are mounted from the base's repository when it is in the target
//! registry, otherwise copied, digests verified), adds one deterministic layer
//! per `layers` entry, sets the config and pushes the manifest under each tag.
//! Outputs: `digest`, `image` (`registry/repository@digest`), `tags`
//! (comma-separated), `config_digest`, and `provenance` when signed build
//! provenance was attached ([`provenance`]). The same inputs give the same
//! digest.
//!
//! `copy` ([`copy`]) copies an image by digest (an index whole, or one
//! platform's manifest), mounting blobs within a registry and copying them
//! across registries, manifests byte for byte; `inspect` ([`inspect`]) reports
//! a reference's digest, size, platforms and config summary. The steps share
//! [`manifest`] (reading images), [`transfer`] (a blob into a repository) and
//! [`registry`] (the distribution client).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use arkline_sdk::prelude::*;
use serde_json::{Map, Value, json};

pub mod build;
pub mod copy;
pub mod inspect;
pub mod layer;
pub mod manifest;
pub mod oci;
pub mod provenance;
pub mod reference;
pub mod registry;
pub mod transfer;

use layer::{LayerConfig, LayerPlan, Written};
use manifest::Fetched;
use oci::{Descriptor, Format, Platform};
use provenance::ProvenanceMode;
use reference::Reference;
use registry::{Credential, Registry, RegistryError, short};
use transfer::{BlobSource, place_blob};

/// The host's cap on a request or response body (16 MiB).
const HOST_BODY_CAP: u64 = 16 << 20;

/// A new layer up to this size (compressed) is kept in memory after it is
/// written once; a larger one is written again, streamed in chunks, when it
/// must be uploaded (the default step memory limit is 256 MiB).
const KEEP_IN_MEMORY: u64 = 64 << 20;

/// Configuration of the `publish` step.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// The base image (`registry/repository:tag` or `…@sha256:…`), or
    /// `scratch` for none.
    pub base: String,
    /// The layers to add on top of the base, in order.
    #[serde(default)]
    pub layers: Vec<LayerConfig>,
    /// The repository to push to, e.g. `registry.example.com/team/app` (no tag:
    /// tags go in `tags`).
    pub target: String,
    /// Tags to push the image under; without any, it is pushed by digest only.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The entrypoint (replaces the base's; a base's `cmd` is then dropped
    /// unless `cmd` is given, as a Dockerfile's `ENTRYPOINT` does).
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The command (replaces the base's).
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Environment variables, added to the base's (a name the base has is replaced).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// The user (`name`, `uid` or `uid:gid`).
    #[serde(default)]
    pub user: Option<String>,
    /// Config labels, added to the base's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Ports the image listens on: `8080`, `8080/tcp` or `53/udp`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// Manifest annotations (OCI), e.g. `org.opencontainers.image.source` and
    /// `org.opencontainers.image.revision`. The base's name and digest are
    /// added as `org.opencontainers.image.base.name`/`.digest`.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The target registry's credential: `username` and `password` (pass a
    /// secret, `${{ secrets.name }}`), or a bearer `token`. Also used for the
    /// base when it is in the same registry.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// The base registry's credential, when the base is in another registry.
    #[serde(default)]
    pub base_credential: Option<CredentialConfig>,
    /// The platform to take from a multi-platform base, and the platform of a
    /// `scratch` image (default `linux/amd64`).
    #[serde(default = "default_platform")]
    pub platform: String,
    /// The manifest format: `oci` (default) or `docker` (Docker v2 schema 2).
    #[serde(default)]
    pub format: FormatConfig,
    /// The image's creation time in the config, RFC 3339 (default
    /// `1970-01-01T00:00:00Z`, so the digest depends only on the inputs).
    #[serde(default = "default_created")]
    pub created: String,
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries
    /// (`localhost`, `127.0.0.1`, `[::1]`) always are.
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// Layers larger than this many bytes (compressed) are uploaded in chunks
    /// of this size (default and most 8 MiB; the host caps a request body at
    /// 16 MiB).
    #[serde(default = "default_chunk")]
    pub chunk_size: u64,
    /// gzip level of the layers, 0 to 9 (default 6). It changes the digest.
    #[serde(default = "default_level")]
    pub compression_level: u32,
    /// The largest blob (a layer, compressed) the step reads or writes
    /// (default 8 GiB).
    #[serde(default = "default_max_blob")]
    pub max_blob_bytes: u64,
    /// Attempts after the first on 5xx, 429 or a failed exchange (default 4).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Time limit of each request in seconds (default 120; the host allows 300).
    #[serde(default = "default_timeout")]
    pub request_timeout: u64,
    /// Signed build provenance of the pushed image, pushed as its OCI
    /// referrer: `auto` (default: attached when the engine signs provenance
    /// for this biz, otherwise the step logs why not and goes on), `required`
    /// (the step fails without it) or `off`. The biz needs the
    /// `host-call=arkline.provenance` grant and the engine a
    /// `provenance.key_secret`.
    #[serde(default)]
    pub provenance: ProvenanceMode,
}

/// A registry credential.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// User name (with `password`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password or access token (with `username`); pass a secret. Never logged.
    #[serde(default)]
    pub password: Option<String>,
    /// A registry bearer token, sent as it is; pass a secret. Never logged.
    #[serde(default)]
    pub token: Option<String>,
}

/// The manifest format.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatConfig {
    /// OCI image manifest and config.
    #[default]
    Oci,
    /// Docker v2 schema 2 manifest and config.
    Docker,
}

fn default_platform() -> String {
    "linux/amd64".to_owned()
}
fn default_created() -> String {
    "1970-01-01T00:00:00Z".to_owned()
}
fn default_chunk() -> u64 {
    8 << 20
}
fn default_level() -> u32 {
    6
}
fn default_max_blob() -> u64 {
    8 << 30
}
fn default_retries() -> u32 {
    4
}
fn default_timeout() -> u64 {
    120
}

impl CredentialConfig {
    fn credential(&self, field: &str) -> Result<Credential, StepError> {
        match (&self.username, &self.password, &self.token) {
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
            (Some(_), None, None) => Err(StepError::invalid_config(
                field,
                "`username` is given without `password`; pass the password or token (a secret)",
            )),
            (None, Some(_), None) => Err(StepError::invalid_config(
                field,
                "`password` is given without `username`",
            )),
        }
    }
}

/// The base image as pulled.
struct Base {
    /// `None` for `scratch`.
    reference: Option<Reference>,
    /// The platform manifest's digest.
    digest: Option<String>,
    layers: Vec<Descriptor>,
    config: Value,
}

/// A layer made from the workspace.
struct NewLayer {
    plan: LayerPlan,
    written: Written,
    /// The bytes, when they are at most [`KEEP_IN_MEMORY`].
    bytes: Option<Vec<u8>>,
}

/// Runs the `publish` step.
pub fn publish(ctx: &Context, config: Publish) -> StepResult {
    let target = target_repository(&config.target)?;
    check_tags(&config.tags)?;
    let platform =
        Platform::parse(&config.platform).map_err(|e| StepError::invalid_config("platform", e))?;
    check_chunk_size(config.chunk_size)?;
    if config.compression_level > 9 {
        return Err(StepError::invalid_config(
            "compression_level",
            "give a gzip level from 0 (none) to 9 (best)",
        ));
    }
    check_request_timeout(config.request_timeout)?;
    if !is_rfc3339(&config.created) {
        return Err(StepError::invalid_config(
            "created",
            format!(
                "`{}` is not an RFC 3339 time such as `2024-05-01T12:00:00Z`",
                config.created
            ),
        ));
    }
    let format = match config.format {
        FormatConfig::Oci => Format::Oci,
        FormatConfig::Docker => Format::Docker,
    };
    if format == Format::Docker && !config.annotations.is_empty() {
        return Err(StepError::invalid_config(
            "annotations",
            "a Docker v2 schema 2 manifest has no annotations; use `format: oci` or labels",
        ));
    }
    let mut exposed = BTreeMap::new();
    for (i, port) in config.exposed_ports.iter().enumerate() {
        exposed.insert(
            exposed_port(port)
                .map_err(|e| StepError::invalid_config(format!("exposed_ports[{i}]"), e))?,
            json!({}),
        );
    }
    let credential = credential_of(config.credential.as_ref(), "credential")?;
    // The new layers: written once to learn their digests (and kept when
    // they are not too big).
    let mut new_layers = Vec::new();
    for (i, layer) in config.layers.iter().enumerate() {
        let plan = LayerPlan::collect(i, layer, config.compression_level)?;
        let (sink, written) = plan
            .write(Capped::new(KEEP_IN_MEMORY))
            .map_err(|e| StepError::failed(format!("cannot write layer {i}: {e}")))?;
        if written.size > config.max_blob_bytes {
            return Err(StepError::failed(format!(
                "layer {i} is {} bytes compressed, over `max_blob_bytes` ({})",
                written.size, config.max_blob_bytes
            )));
        }
        arkline_sdk::info!(
            "layer {i}: {} entries, {} bytes, {}",
            plan.entry_count(),
            written.size,
            short(&written.digest)
        );
        new_layers.push(NewLayer {
            bytes: sink.bytes,
            plan,
            written,
        });
    }

    let clients = Clients {
        plain_http: &config.plain_http,
        retries: config.retries,
        timeout: Duration::from_secs(config.request_timeout),
        user_agent: crate::step_user_agent(ctx),
    };
    let target_registry = clients.registry(&target.registry, credential.clone());

    // The base.
    let base_ref = if config.base.trim() == "scratch" {
        None
    } else {
        Some(Reference::parse(&config.base).map_err(|e| StepError::invalid_config("base", e))?)
    };
    let base_registry = match &base_ref {
        Some(r) if r.registry != target.registry => {
            let credential = credential_of(config.base_credential.as_ref(), "base_credential")?;
            Some(clients.registry(&r.registry, credential))
        }
        _ => None,
    };
    target_registry
        .ping(
            &target.repository,
            &registry::Scope::push(&target.repository),
        )
        .map_err(|e| StepError::failed(e.to_string()))?;
    let base = match &base_ref {
        None => Base {
            reference: None,
            digest: None,
            layers: Vec::new(),
            config: scratch_config(&platform),
        },
        Some(reference) => {
            let registry = base_registry.as_ref().unwrap_or(&target_registry);
            pull_base(registry, reference, &platform, config.max_blob_bytes)?
        }
    };

    // The config.
    let image_config = build_config(&config, &base, &new_layers, exposed)?;
    let config_bytes = serde_json::to_vec(&image_config)
        .map_err(|e| StepError::failed(format!("cannot write the image config: {e}")))?;
    let config_digest = layer::sha256(&config_bytes);

    // Blobs: the base's layers, the new layers, the config.
    let repo = target.repository.as_str();
    let fail = |e: RegistryError| StepError::failed(e.to_string());
    let mut layer_descriptors = Vec::new();
    for descriptor in &base.layers {
        let media_type = format
            .convert_layer(&descriptor.media_type)
            .map_err(StepError::failed)?;
        if let Some(reference) = &base.reference
            && !matches!(media_type, oci::OCI_FOREIGN_GZIP | oci::DOCKER_FOREIGN)
        {
            let source = BlobSource {
                registry: base_registry.as_ref(),
                name: reference.repository_name(),
                repository: &reference.repository,
            };
            place_blob(
                &target_registry,
                repo,
                &source,
                descriptor,
                config.chunk_size,
            )
            .map_err(fail)?;
        }
        layer_descriptors.push(Descriptor {
            media_type: media_type.to_owned(),
            ..descriptor.clone()
        });
    }
    for (i, layer) in new_layers.iter().enumerate() {
        let digest = &layer.written.digest;
        if target_registry.has_blob(repo, digest).map_err(fail)? {
            arkline_sdk::info!("layer {i}: {} already in {repo}", short(digest));
        } else {
            match &layer.bytes {
                Some(bytes) if bytes.len() as u64 <= config.chunk_size => {
                    target_registry.upload(repo, digest, bytes).map_err(fail)?;
                }
                Some(bytes) => {
                    let mut upload = target_registry.chunked(repo, digest).map_err(fail)?;
                    for chunk in
                        bytes.chunks(usize::try_from(config.chunk_size).unwrap_or(usize::MAX))
                    {
                        upload.patch(chunk).map_err(fail)?;
                    }
                    upload.finish(digest).map_err(fail)?;
                }
                None => upload_chunked(&target_registry, repo, layer, config.chunk_size)?,
            }
            arkline_sdk::info!("layer {i}: uploaded {}", short(digest));
        }
        layer_descriptors.push(Descriptor {
            media_type: format.layer().to_owned(),
            digest: digest.clone(),
            size: layer.written.size,
            extra: Map::new(),
        });
    }
    if !target_registry
        .has_blob(repo, &config_digest)
        .map_err(fail)?
    {
        target_registry
            .upload(repo, &config_digest, &config_bytes)
            .map_err(fail)?;
    }

    // The manifest, under each tag (or its digest).
    let mut manifest = Map::new();
    manifest.insert("schemaVersion".into(), json!(2));
    manifest.insert("mediaType".into(), json!(format.manifest()));
    manifest.insert(
        "config".into(),
        json!({ "mediaType": format.config(), "digest": config_digest, "size": config_bytes.len() }),
    );
    manifest.insert(
        "layers".into(),
        Value::Array(layer_descriptors.iter().map(Descriptor::to_json).collect()),
    );
    if format == Format::Oci {
        let mut annotations: Map<String, Value> = Map::new();
        if let (Some(reference), Some(digest)) = (&base.reference, &base.digest) {
            annotations.insert(
                "org.opencontainers.image.base.name".into(),
                json!(reference.to_string()),
            );
            annotations.insert("org.opencontainers.image.base.digest".into(), json!(digest));
        }
        for (k, v) in &config.annotations {
            annotations.insert(k.clone(), json!(v));
        }
        if !annotations.is_empty() {
            manifest.insert("annotations".into(), Value::Object(annotations));
        }
    }
    let manifest_bytes = serde_json::to_vec(&Value::Object(manifest))
        .map_err(|e| StepError::failed(format!("cannot write the manifest: {e}")))?;
    let digest = layer::sha256(&manifest_bytes);
    push_tagged(
        &target_registry,
        &target,
        &config.tags,
        format.manifest(),
        &manifest_bytes,
        &digest,
    )?;
    let attached = provenance::attach(
        &target_registry,
        &target,
        &provenance::Subject {
            media_type: format.manifest(),
            digest: &digest,
            size: manifest_bytes.len() as u64,
        },
        config.provenance,
    )?;
    let image = format!("{}@{digest}", target.repository_name());
    Ok(with_provenance(Outcome::new(), attached)
        .output("digest", digest.clone())
        .output("image", image.clone())
        .output("tags", config.tags.join(","))
        .output("config_digest", config_digest)
        .summary(format!(
            "{image} ({} base layers + {} new, {} requests)",
            base.layers.len(),
            new_layers.len(),
            target_registry.request_count()
                + base_registry.as_ref().map_or(0, Registry::request_count)
        )))
}

/// How a step reaches registries: the settings every step shares.
struct Clients<'a> {
    plain_http: &'a [String],
    retries: u32,
    timeout: Duration,
    /// The `User-Agent` naming the step ([`registry::user_agent`]).
    user_agent: String,
}

impl Clients<'_> {
    /// A client of `host` with `credential`.
    fn registry(&self, host: &str, credential: Credential) -> Registry {
        Registry::new(
            host,
            plain_http(host, self.plain_http),
            credential,
            self.retries,
            self.timeout,
        )
        .user_agent(self.user_agent.clone())
    }
}

/// Puts a manifest's bytes under `reference` (a tag or its digest) in
/// `repo`, and checks the registry stored them under `digest`: a registry
/// that rewrote them would break the digest the step reports.
fn push_manifest(
    registry: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
    digest: &str,
) -> Result<(), StepError> {
    let stored = registry
        .put_manifest(repo, reference, media_type, bytes)
        .map_err(|e| StepError::failed(e.to_string()))?;
    match stored {
        Some(stored) if stored != digest => Err(StepError::failed(format!(
            "registry {}, repository {repo}: the manifest pushed as {reference} was stored as {stored}, not {digest}",
            registry.host()
        ))),
        _ => Ok(()),
    }
}

/// Puts a manifest under each of `tags` of the `target` repository, or under
/// its digest when there are none ([`push_manifest`]).
fn push_tagged(
    registry: &Registry,
    target: &Reference,
    tags: &[String],
    media_type: &str,
    bytes: &[u8],
    digest: &str,
) -> Result<(), StepError> {
    let repo = target.repository.as_str();
    let references: Vec<&str> = if tags.is_empty() {
        vec![digest]
    } else {
        tags.iter().map(String::as_str).collect()
    };
    for reference in references {
        push_manifest(registry, repo, reference, media_type, bytes, digest)?;
        arkline_sdk::info!("pushed {}:{reference}", target.repository_name());
    }
    Ok(())
}

/// `outcome` with the `provenance` output (the referrer manifest's digest)
/// when provenance was attached.
fn with_provenance(outcome: Outcome, attached: Option<String>) -> Outcome {
    match attached {
        Some(digest) => outcome.output("provenance", digest),
        None => outcome,
    }
}

/// The `User-Agent` of a step's requests, naming its engine, pipeline, run
/// and step, so the registry (its log, its notifications) knows who pushed.
fn step_user_agent(ctx: &Context) -> String {
    registry::user_agent(&ctx.engine, &ctx.pipeline, ctx.run, &ctx.step_name)
}

/// The `target` setting: a repository with no tag or digest.
fn target_repository(text: &str) -> Result<Reference, StepError> {
    let target = Reference::parse(text).map_err(|e| StepError::invalid_config("target", e))?;
    if target.tag.is_some() || target.digest.is_some() {
        return Err(StepError::invalid_config(
            "target",
            format!(
                "`{text}` has a tag or digest; give the repository only and put tags in `tags`"
            ),
        ));
    }
    Ok(target)
}

/// The `tags` setting.
fn check_tags(tags: &[String]) -> Result<(), StepError> {
    for (i, tag) in tags.iter().enumerate() {
        reference::check_tag(tag)
            .map_err(|e| StepError::invalid_config(format!("tags[{i}]"), e))?;
    }
    Ok(())
}

/// The credential of a `credential`-shaped setting named `field`.
fn credential_of(config: Option<&CredentialConfig>, field: &str) -> Result<Credential, StepError> {
    config.map_or(Ok(Credential::Anonymous), |c| c.credential(field))
}

fn check_chunk_size(chunk_size: u64) -> Result<(), StepError> {
    if chunk_size == 0 || chunk_size > 8 << 20 {
        return Err(StepError::invalid_config(
            "chunk_size",
            "give a chunk size from 1 byte to 8 MiB (8388608)",
        ));
    }
    Ok(())
}

fn check_request_timeout(seconds: u64) -> Result<(), StepError> {
    if seconds == 0 {
        return Err(StepError::invalid_config(
            "request_timeout",
            "give a time limit of at least 1 second",
        ));
    }
    Ok(())
}

/// Whether `host` is reached over plain HTTP.
fn plain_http(host: &str, listed: &[String]) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    name == "localhost"
        || name.starts_with("127.")
        || name == "[::1]"
        || listed.iter().any(|h| h == host || h == name)
}

/// Whether `text` is an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS`, optional
/// fraction, `Z` or `±HH:MM`.
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let head = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !head {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return false;
        }
        rest = &fraction[end..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

/// `8080` → `8080/tcp`; checks the number and protocol.
fn exposed_port(text: &str) -> Result<String, String> {
    let (port, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let ok = port.parse::<u16>().is_ok_and(|p| p > 0) && matches!(proto, "tcp" | "udp" | "sctp");
    if ok {
        Ok(format!("{port}/{proto}"))
    } else {
        Err(format!(
            "`{text}` is not a port; write `8080`, `8080/tcp` or `53/udp`"
        ))
    }
}

fn scratch_config(platform: &Platform) -> Value {
    let mut config = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [] },
        "history": [],
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = json!(variant);
    }
    config
}

/// Pulls the base's manifest (through an index when it is one) and config.
fn pull_base(
    registry: &Registry,
    reference: &Reference,
    platform: &Platform,
    max_blob: u64,
) -> Result<Base, StepError> {
    let what = format!("the base {reference}");
    let mut fetched = Fetched::get(registry, reference, reference.manifest_reference(), &what)?;
    if fetched.is_index() {
        let chosen = fetched.choose(platform, &what)?;
        fetched = Fetched::get(registry, reference, &chosen.digest, &what)?;
    }
    let (config, layers) = fetched.image(&what)?;
    for layer in &layers {
        if layer.size > max_blob {
            return Err(StepError::failed(format!(
                "{what} has a layer of {} bytes, over `max_blob_bytes` ({max_blob})",
                layer.size
            )));
        }
    }
    let config_json = manifest::config(registry, reference, &config, &what)?;
    let field = |k: &str| config_json.get(k).and_then(Value::as_str).unwrap_or("");
    if field("os") != platform.os || field("architecture") != platform.architecture {
        return Err(StepError::failed(format!(
            "{what} is for {}/{}, not {platform}; set `platform` or choose another base",
            field("os"),
            field("architecture")
        )));
    }
    let diff_ids = config_json
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if diff_ids != layers.len() {
        return Err(StepError::failed(format!(
            "{what} has {} layers but its config lists {diff_ids} diff_ids",
            layers.len()
        )));
    }
    arkline_sdk::info!(
        "{what}: {} ({} layers)",
        short(&fetched.digest),
        layers.len()
    );
    Ok(Base {
        reference: Some(reference.clone()),
        digest: Some(fetched.digest),
        layers,
        config: config_json,
    })
}

/// Uploads a layer too big to keep in memory: written again, in chunks.
fn upload_chunked(
    registry: &Registry,
    repo: &str,
    layer: &NewLayer,
    chunk: u64,
) -> Result<(), StepError> {
    let upload = registry
        .chunked(repo, &layer.written.digest)
        .map_err(|e| StepError::failed(e.to_string()))?;
    let sink = ChunkSink {
        upload,
        buffer: Vec::new(),
        chunk: usize::try_from(chunk).unwrap_or(usize::MAX),
        error: None,
    };
    let (mut sink, written) = match layer.plan.write(sink) {
        Ok(done) => done,
        Err(e) => {
            return Err(StepError::failed(format!(
                "cannot upload layer {}: {e}",
                short(&layer.written.digest)
            )));
        }
    };
    if written != layer.written {
        return Err(StepError::failed(format!(
            "the files of layer {} changed while it was uploaded ({} then {}); nothing was pushed",
            short(&layer.written.digest),
            layer.written.digest,
            written.digest
        )));
    }
    let rest = std::mem::take(&mut sink.buffer);
    sink.upload
        .patch(&rest)
        .and_then(|()| sink.upload.finish(&written.digest))
        .map_err(|e| StepError::failed(e.to_string()))
}

/// A layer's bytes, kept up to a cap; dropped past it.
struct Capped {
    bytes: Option<Vec<u8>>,
    cap: u64,
}

impl Capped {
    fn new(cap: u64) -> Self {
        Capped {
            bytes: Some(Vec::new()),
            cap,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(bytes) = &mut self.bytes {
            if bytes.len() as u64 + buf.len() as u64 > self.cap {
                self.bytes = None;
            } else {
                bytes.extend_from_slice(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends what is written to a chunked upload, a chunk at a time.
struct ChunkSink<'a> {
    upload: registry::Chunked<'a>,
    buffer: Vec<u8>,
    chunk: usize,
    error: Option<RegistryError>,
}

impl Write for ChunkSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.error {
            return Err(io::Error::other(e.to_string()));
        }
        self.buffer.extend_from_slice(buf);
        while self.buffer.len() >= self.chunk {
            let rest = self.buffer.split_off(self.chunk);
            let chunk = std::mem::replace(&mut self.buffer, rest);
            if let Err(e) = self.upload.patch(&chunk) {
                self.error = Some(e.clone());
                return Err(io::Error::other(e.to_string()));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The image config: the base's with the new layers and the settings.
fn build_config(
    config: &Publish,
    base: &Base,
    layers: &[NewLayer],
    exposed: BTreeMap<String, Value>,
) -> Result<Value, StepError> {
    let mut image = base.config.clone();
    let Some(root) = image.as_object_mut() else {
        return Err(StepError::failed("the base's config is not a JSON object"));
    };
    root.insert("created".into(), json!(config.created));
    let run = root.entry("config").or_insert_with(|| json!({}));
    if run.is_null() {
        *run = json!({});
    }
    let Some(run) = run.as_object_mut() else {
        return Err(StepError::failed(
            "the base's config has a `config` that is not an object",
        ));
    };
    if let Some(entrypoint) = &config.entrypoint {
        run.insert("Entrypoint".into(), json!(entrypoint));
        if config.cmd.is_none() {
            run.remove("Cmd");
        }
    }
    if let Some(cmd) = &config.cmd {
        run.insert("Cmd".into(), json!(cmd));
    }
    if !config.env.is_empty() {
        let mut env: Vec<String> = run
            .get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        for (name, value) in &config.env {
            let line = format!("{name}={value}");
            match env
                .iter_mut()
                .find(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) == name)
            {
                Some(existing) => *existing = line,
                None => env.push(line),
            }
        }
        run.insert("Env".into(), json!(env));
    }
    if let Some(workdir) = &config.workdir {
        run.insert("WorkingDir".into(), json!(workdir));
    }
    if let Some(user) = &config.user {
        run.insert("User".into(), json!(user));
    }
    if !config.labels.is_empty() {
        let labels = run.entry("Labels").or_insert_with(|| json!({}));
        if !labels.is_object() {
            *labels = json!({});
        }
        if let Some(labels) = labels.as_object_mut() {
            for (k, v) in &config.labels {
                labels.insert(k.clone(), json!(v));
            }
        }
    }
    if !exposed.is_empty() {
        let ports = run.entry("ExposedPorts").or_insert_with(|| json!({}));
        if !ports.is_object() {
            *ports = json!({});
        }
        if let Some(ports) = ports.as_object_mut() {
            ports.extend(exposed);
        }
    }
    let rootfs = root
        .entry("rootfs")
        .or_insert_with(|| json!({ "type": "layers", "diff_ids": [] }));
    let diff_ids = rootfs
        .as_object_mut()
        .map(|r| r.entry("diff_ids").or_insert_with(|| json!([])));
    let Some(Value::Array(diff_ids)) = diff_ids else {
        return Err(StepError::failed(
            "the base's config has no `rootfs.diff_ids` list",
        ));
    };
    for layer in layers {
        diff_ids.push(json!(layer.written.diff_id));
    }
    // History entries that are not `empty_layer` pair with layers in order;
    // when the base's do not (some builders leave history out), entries of
    // ours would pair with the wrong layers, so none are added.
    let history = root.entry("history").or_insert_with(|| json!([]));
    let paired = match &*history {
        Value::Array(entries) => {
            entries
                .iter()
                .filter(|e| e.get("empty_layer").and_then(Value::as_bool) != Some(true))
                .count()
                == base.layers.len()
        }
        _ => false,
    };
    if let (true, Value::Array(history)) = (paired, history) {
        for (i, layer) in config.layers.iter().enumerate() {
            history.push(json!({
                "created": config.created,
                "created_by": format!(
                    "arkline image/publish: layer {i} ({} → {})",
                    layer.paths.join(", "),
                    layer.destination.as_deref().unwrap_or("/")
                ),
            }));
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        for ok in [
            "1970-01-01T00:00:00Z",
            "2024-05-01T12:00:00.123Z",
            "2024-05-01T12:00:00+02:00",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "2024-05-01",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn ports_and_plain_http() {
        assert_eq!(exposed_port("8080").as_deref(), Ok("8080/tcp"));
        assert_eq!(exposed_port("53/udp").as_deref(), Ok("53/udp"));
        assert!(exposed_port("0").is_err());
        assert!(exposed_port("80/icmp").is_err());
        assert!(plain_http("127.0.0.1:5000", &[]));
        assert!(plain_http("localhost", &[]));
        assert!(plain_http("[::1]:5000", &[]));
        assert!(!plain_http("registry.example.com", &[]));
        assert!(plain_http(
            "registry.lan:5000",
            &["registry.lan:5000".into()]
        ));
    }
}

#[cfg(feature = "steps")]
arkline_sdk::steps! {
    /// Builds an image from a base and workspace layers and pushes it to a registry.
    "publish" => publish,
    /// Copies an image (every platform of an index, or one) between repositories or registries, by digest.
    "copy" => copy::copy,
    /// Reads an image's digest, size, platforms and config summary.
    "inspect" => inspect::inspect,
    /// Builds a Dockerfile with a granted `buildah` and pushes the image to a registry.
    "build" => build::build,
}
