//! `deploy/publish-template`: a directory of manifests (or a Helm chart) pushed
//! as an OCI artifact: empty config, one deterministic tar.gz layer, the
//! manifest under each tag. The same directory and settings give the same
//! digest.

use std::collections::BTreeMap;

use arkline_sdk::prelude::*;
use arkline_sdk::workspace::{guest_path, relative_path};
use image::CredentialConfig;
use image::layer::{self, LayerConfig, LayerPlan};
use image::oci::OCI_MANIFEST;
use image::provenance::{self, ProvenanceMode};
use image::reference::{Reference, check_tag};
use image::registry::{RegistryError, Scope, short};
use serde_json::{Map, Value, json};

use crate::{ARTIFACT_TYPE, EMPTY_BYTES, EMPTY_CONFIG, LAYER_TYPE, client, credential};

/// A layer up to this size is uploaded in one request; a larger one in chunks
/// of this size (the host caps a request body at 16 MiB).
const CHUNK: usize = 8 << 20;

/// Configuration of the `publish-template` step.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishTemplate {
    /// The workspace directory holding the bundle: YAML manifests (with
    /// `{{ name }}` placeholders that `apply` fills from its `values`), or a
    /// Helm chart (a `Chart.yaml` at its top).
    pub path: String,
    /// The repository to push to, e.g. `registry.example.com/team/app-template`
    /// (no tag: tags go in `tags`).
    pub target: String,
    /// Tags to push the template under; without any, it is pushed by digest only.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The registry's credential: `username` and `password` (pass a secret,
    /// `${{ secrets.name }}`), or a bearer `token`.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Manifest annotations, e.g. `org.opencontainers.image.source` and
    /// `org.opencontainers.image.revision`. `org.opencontainers.image.title`
    /// defaults to the directory's name and `org.opencontainers.image.version`
    /// to the first tag.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries
    /// (`localhost`, `127.0.0.1`, `[::1]`) always are.
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// Signed build provenance of the pushed template, pushed as its OCI
    /// referrer: `auto` (default: attached when the engine signs provenance
    /// for this biz, otherwise the step logs why not and goes on), `required`
    /// (the step fails without it) or `off`. The biz needs the
    /// `host-call=arkline.provenance` grant and the engine a
    /// `provenance.key_secret`.
    #[serde(default)]
    pub provenance: ProvenanceMode,
}

/// Runs the `publish-template` step.
pub fn publish_template(_ctx: &Context, config: PublishTemplate) -> StepResult {
    let target =
        Reference::parse(&config.target).map_err(|e| StepError::invalid_config("target", e))?;
    if target.tag.is_some() || target.digest.is_some() {
        return Err(StepError::invalid_config(
            "target",
            format!(
                "`{}` has a tag or digest; give the repository only and put tags in `tags`",
                config.target
            ),
        ));
    }
    for (i, tag) in config.tags.iter().enumerate() {
        check_tag(tag).map_err(|e| StepError::invalid_config(format!("tags[{i}]"), e))?;
    }
    let rel = relative_path(&config.path).ok_or_else(|| {
        StepError::invalid_config(
            "path",
            format!(
                "`{}` leaves the workspace; give a directory relative to the workspace root",
                config.path
            ),
        )
    })?;
    let dir = guest_path(&rel);
    if !std::fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Err(StepError::invalid_config(
            "path",
            format!(
                "`{}` is not a directory of the workspace; give the directory of the manifests or the chart",
                config.path
            ),
        ));
    }
    let credential = credential(config.credential.as_ref(), "credential")?;

    // The layer: every file under the directory, names relative to it.
    let plan = LayerPlan::collect(
        0,
        &LayerConfig {
            paths: vec![".".to_owned()],
            destination: None,
            working_dir: Some(rel.clone()),
            exclude: Vec::new(),
            modes: BTreeMap::new(),
            uid: 0,
            gid: 0,
        },
        6,
    )?;
    let (bytes, written) = plan.write(Vec::new()).map_err(|e| {
        StepError::failed(format!("cannot write the bundle of {}: {e}", config.path))
    })?;
    let title = rel
        .rsplit('/')
        .next()
        .filter(|t| !t.is_empty())
        .unwrap_or("template");
    arkline_sdk::info!(
        "bundle {}: {} entries, {} bytes, {}",
        config.path,
        plan.entry_count(),
        written.size,
        short(&written.digest)
    );

    let mut annotations: Map<String, Value> = Map::new();
    annotations.insert("org.opencontainers.image.title".into(), json!(title));
    if let Some(tag) = config.tags.first() {
        annotations.insert("org.opencontainers.image.version".into(), json!(tag));
    }
    for (k, v) in &config.annotations {
        annotations.insert(k.clone(), json!(v));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": EMPTY_CONFIG,
            "digest": layer::sha256(EMPTY_BYTES),
            "size": EMPTY_BYTES.len(),
            "data": "e30=",
        },
        "layers": [{
            "mediaType": LAYER_TYPE,
            "digest": written.digest,
            "size": written.size,
            "annotations": { "org.opencontainers.image.title": format!("{title}.tar.gz") },
        }],
        "annotations": annotations,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| StepError::failed(format!("cannot write the manifest: {e}")))?;
    let digest = layer::sha256(&manifest_bytes);

    let registry = client(&target.registry, &config.plain_http, credential);
    let repo = target.repository.as_str();
    let fail = |e: RegistryError| StepError::failed(e.to_string());
    registry.ping(repo, &Scope::push(repo)).map_err(fail)?;
    for (blob_digest, blob) in [
        (layer::sha256(EMPTY_BYTES), EMPTY_BYTES),
        (written.digest.clone(), bytes.as_slice()),
    ] {
        if registry.has_blob(repo, &blob_digest).map_err(fail)? {
            arkline_sdk::info!("{}: already in {repo}", short(&blob_digest));
        } else if blob.len() <= CHUNK {
            registry.upload(repo, &blob_digest, blob).map_err(fail)?;
        } else {
            let mut upload = registry.chunked(repo, &blob_digest).map_err(fail)?;
            for chunk in blob.chunks(CHUNK) {
                upload.patch(chunk).map_err(fail)?;
            }
            upload.finish(&blob_digest).map_err(fail)?;
        }
    }
    let references: Vec<&str> = if config.tags.is_empty() {
        vec![digest.as_str()]
    } else {
        config.tags.iter().map(String::as_str).collect()
    };
    for reference in references {
        let stored = registry
            .put_manifest(repo, reference, OCI_MANIFEST, &manifest_bytes)
            .map_err(fail)?;
        if let Some(stored) = stored
            && stored != digest
        {
            return Err(StepError::failed(format!(
                "registry {}, repository {repo}: stored the template as {stored}, not {digest}",
                target.registry
            )));
        }
    }
    let image = format!("{}@{digest}", target.repository_name());
    arkline_sdk::info!("published {image}");
    let attached = provenance::attach(
        &registry,
        &target,
        &provenance::Subject {
            media_type: OCI_MANIFEST,
            digest: &digest,
            size: manifest_bytes.len() as u64,
        },
        config.provenance,
    )?;
    let mut outcome = Outcome::new()
        .output("digest", digest)
        .output("image", image)
        .output("tags", config.tags.join(","))
        .output("layer_digest", written.digest);
    if let Some(attached) = attached {
        outcome = outcome.output("provenance", attached);
    }
    Ok(outcome)
}
