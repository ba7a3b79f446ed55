//! The `copy` step: an image from one repository (or registry) to another by
//! digest, the way `crane copy` and `skopeo copy --all` do. Every blob is
//! checked on the target first (`HEAD`), mounted when the source is in the
//! same registry, otherwise read in ranges (digest verified) and uploaded, in
//! chunks when large; manifests are pushed byte for byte, so the copy has the
//! source's digest. An index is copied whole (each platform's manifest, then
//! the index), or only the manifest of `platform`.

use std::time::Duration;

use arkline_sdk::prelude::*;

use crate::manifest::{self, Fetched};
use crate::oci::{self, Platform};
use crate::provenance::ProvenanceMode;
use crate::reference::Reference;
use crate::registry::{Registry, Scope, short};
use crate::transfer::{BlobSource, Placed, place_blob};
use crate::{
    Clients, CredentialConfig, check_chunk_size, check_request_timeout, check_tags, credential_of,
    target_repository,
};

/// How deep indexes may nest (an index of indexes is allowed, a loop is not).
const MAX_DEPTH: usize = 4;

/// Configuration of the `copy` step.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyImage {
    /// The image to copy: `registry/repository:tag` or `…@sha256:…`.
    pub source: String,
    /// The repository to copy to, e.g. `registry.example.com/team/app` (no
    /// tag: tags go in `tags`).
    pub target: String,
    /// Tags to push the copy under; without any, it is pushed by digest only.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The source registry's credential, when it is another registry than
    /// the target's (`username` and `password`, or `token`).
    #[serde(default)]
    pub source_credential: Option<CredentialConfig>,
    /// The target registry's credential; also the source's when both are in
    /// the same registry.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Copy only this platform's manifest of a multi-platform source
    /// (`os/architecture[/variant]`); by default an index is copied whole.
    #[serde(default)]
    pub platform: Option<String>,
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries
    /// always are.
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// Blobs larger than this many bytes are read in ranges and uploaded in
    /// chunks of this size (default and most 8 MiB).
    #[serde(default = "crate::default_chunk")]
    pub chunk_size: u64,
    /// The largest blob the step copies (default 8 GiB).
    #[serde(default = "crate::default_max_blob")]
    pub max_blob_bytes: u64,
    /// Attempts after the first on 5xx, 429 or a failed exchange (default 4).
    #[serde(default = "crate::default_retries")]
    pub retries: u32,
    /// Time limit of each request in seconds (default 120; the host allows 300).
    #[serde(default = "crate::default_timeout")]
    pub request_timeout: u64,
    /// Signed provenance of the copy, pushed as its OCI referrer: `off`
    /// (default: a copy builds nothing, and a statement naming this
    /// pipeline's commit would pass an upstream image off as built here),
    /// `auto` (attached when the engine signs provenance for this biz,
    /// otherwise the step logs why not and goes on) or `required` (the step
    /// fails without it). The biz needs the `host-call=arkline.provenance`
    /// grant and the engine a `provenance.key_secret`.
    #[serde(default = "copy_provenance")]
    pub provenance: ProvenanceMode,
}

/// How many blobs took which way.
#[derive(Default)]
struct Tally {
    manifests: usize,
    present: usize,
    mounted: usize,
    copied: usize,
}

/// One copy in progress: where from, where to.
struct Copier<'a> {
    target: &'a Registry,
    repository: &'a str,
    /// The source's registry (the target's when they are the same).
    from: &'a Registry,
    source: &'a Reference,
    blobs: BlobSource<'a>,
    what: String,
    chunk: u64,
    max_blob: u64,
    tally: Tally,
}

/// Runs the `copy` step.
pub fn copy(ctx: &Context, config: CopyImage) -> StepResult {
    let source =
        Reference::parse(&config.source).map_err(|e| StepError::invalid_config("source", e))?;
    let target = target_repository(&config.target)?;
    check_tags(&config.tags)?;
    let platform = config
        .platform
        .as_deref()
        .map(Platform::parse)
        .transpose()
        .map_err(|e| StepError::invalid_config("platform", e))?;
    check_chunk_size(config.chunk_size)?;
    check_request_timeout(config.request_timeout)?;
    let target_credential = credential_of(config.credential.as_ref(), "credential")?;
    let source_credential = credential_of(config.source_credential.as_ref(), "source_credential")?;

    let clients = Clients {
        plain_http: &config.plain_http,
        retries: config.retries,
        timeout: Duration::from_secs(config.request_timeout),
        user_agent: crate::step_user_agent(ctx),
    };
    let same_registry = source.registry == target.registry;
    // In one registry one client serves both (a token then covers the mount's
    // source too); `source_credential` stands in when `credential` is absent.
    let target_registry = if same_registry && config.credential.is_none() {
        clients.registry(&target.registry, source_credential.clone())
    } else {
        clients.registry(&target.registry, target_credential)
    };
    let source_registry =
        (!same_registry).then(|| clients.registry(&source.registry, source_credential));
    // A wrong target credential fails here, before anything is read or pushed.
    target_registry
        .ping(&target.repository, &Scope::push(&target.repository))
        .map_err(|e| StepError::failed(e.to_string()))?;

    let from = source_registry.as_ref().unwrap_or(&target_registry);
    let what = format!("the source {source}");
    let mut root = Fetched::get(from, &source, source.manifest_reference(), &what)?;
    if let Some(platform) = &platform {
        if root.is_index() {
            let chosen = root.choose(platform, &what)?;
            root = Fetched::get(from, &source, &chosen.digest, &what)?;
        }
        let (config_descriptor, _) = root.image(&what)?;
        let image_config = manifest::config(from, &source, &config_descriptor, &what)?;
        if !platform.matches(&image_config) {
            return Err(StepError::failed(format!(
                "{what} is for {}, not {platform}; leave `platform` out to copy it as it is",
                manifest::platform_text(&image_config)
            )));
        }
    }
    arkline_sdk::info!("{what}: {} ({})", short(&root.digest), root.media_type);

    let mut copier = Copier {
        target: &target_registry,
        repository: &target.repository,
        from,
        source: &source,
        blobs: BlobSource {
            registry: source_registry.as_ref(),
            name: source.repository_name(),
            repository: &source.repository,
        },
        what,
        chunk: config.chunk_size,
        max_blob: config.max_blob_bytes,
        tally: Tally::default(),
    };
    copier.contents(&root, 0)?;
    let references: Vec<&str> = if config.tags.is_empty() {
        vec![root.digest.as_str()]
    } else {
        config.tags.iter().map(String::as_str).collect()
    };
    for reference in references {
        copier.push(&root, reference)?;
        arkline_sdk::info!("pushed {}:{reference}", target.repository_name());
    }
    let attached = crate::provenance::attach(
        &target_registry,
        &target,
        &crate::provenance::Subject {
            media_type: &root.media_type,
            digest: &root.digest,
            size: root.bytes.len() as u64,
        },
        config.provenance,
    )?;
    let image = format!("{}@{}", target.repository_name(), root.digest);
    let tally = &copier.tally;
    Ok(super::with_provenance(Outcome::new(), attached)
        .output("digest", root.digest.clone())
        .output("image", image.clone())
        .output("tags", config.tags.join(","))
        .summary(format!(
            "{image} from {source}: {} manifests; blobs: {} mounted, {} copied, {} already there ({} requests)",
            tally.manifests + 1,
            tally.mounted,
            tally.copied,
            tally.present,
            target_registry.request_count()
                + source_registry.as_ref().map_or(0, Registry::request_count)
        )))
}

impl Copier<'_> {
    /// Puts what `manifest` refers to in the target: an image's config and
    /// layers, an index's manifests (each with its contents, by digest).
    fn contents(&mut self, manifest: &Fetched, depth: usize) -> Result<(), StepError> {
        if manifest.is_index() {
            if depth >= MAX_DEPTH {
                return Err(StepError::failed(format!(
                    "{} nests indexes more than {MAX_DEPTH} deep",
                    self.what
                )));
            }
            for entry in manifest.entries(&self.what)? {
                let child = Fetched::get(self.from, self.source, &entry.digest, &self.what)?;
                self.contents(&child, depth + 1)?;
                self.push(&child, &child.digest)?;
                self.tally.manifests += 1;
            }
            return Ok(());
        }
        let (config, layers) = manifest.image(&self.what)?;
        for blob in std::iter::once(&config).chain(&layers) {
            // Non-distributable layers live elsewhere (their `urls`).
            if matches!(
                blob.media_type.as_str(),
                oci::OCI_FOREIGN_GZIP | oci::DOCKER_FOREIGN
            ) {
                continue;
            }
            if blob.size > self.max_blob {
                return Err(StepError::failed(format!(
                    "{} has a blob {} of {} bytes, over `max_blob_bytes` ({})",
                    self.what, blob.digest, blob.size, self.max_blob
                )));
            }
            let placed = place_blob(self.target, self.repository, &self.blobs, blob, self.chunk)
                .map_err(|e| StepError::failed(e.to_string()))?;
            match placed {
                Placed::Present => self.tally.present += 1,
                Placed::Mounted => self.tally.mounted += 1,
                Placed::Copied => self.tally.copied += 1,
            }
        }
        Ok(())
    }

    /// Pushes a manifest's bytes as they are under `reference`, and checks
    /// the registry stored them under the same digest.
    fn push(&self, manifest: &Fetched, reference: &str) -> Result<(), StepError> {
        super::push_manifest(
            self.target,
            self.repository,
            reference,
            &manifest.media_type,
            &manifest.bytes,
            &manifest.digest,
        )
    }
}

/// A copy attaches no provenance unless asked.
fn copy_provenance() -> ProvenanceMode {
    ProvenanceMode::Off
}
