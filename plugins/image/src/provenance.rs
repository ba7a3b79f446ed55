//! Signed build provenance of what a step pushes: the host signs an in-toto
//! statement (SLSA provenance v1) about the pushed manifest in a DSSE
//! envelope (the built-in host call [`HOST_CALL`]), and the step pushes the
//! envelope to the registry as an OCI referrer of the manifest (OCI image and
//! distribution spec 1.1):
//!
//! - blobs: the OCI empty config `{}` and the envelope's JSON;
//! - an OCI image manifest of artifact type [`ARTIFACT_TYPE`] whose one layer
//!   is the envelope and whose `subject` is the image manifest, put by digest;
//! - when the registry does not answer `OCI-Subject` (it has no referrers
//!   API, e.g. distribution 2.8), the referrers tag schema: the OCI index
//!   tagged `sha256-<hex of the subject's digest>` lists the referrer.

use arkline_sdk::HostError;
use arkline_sdk::prelude::*;
use serde_json::{Value, json};

use crate::layer;
use crate::oci::{OCI_INDEX, OCI_MANIFEST};
use crate::reference::Reference;
use crate::registry::{Registry, RegistryError, short};

/// The host call that signs provenance.
pub const HOST_CALL: &str = "arkline.provenance";
/// The artifact type of a DSSE envelope, and its layer's media type.
pub const ARTIFACT_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The predicate type of the statements (SLSA provenance v1).
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The annotation naming a referrer's predicate type.
pub const PREDICATE_ANNOTATION: &str = "in-toto.io/predicate-type";
/// The media type of the OCI empty config.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The OCI empty config's bytes.
pub const EMPTY_CONFIG: &[u8] = b"{}";
/// Their digest.
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// The largest referrers index read (4 MiB).
const MAX_INDEX: u64 = 4 << 20;

/// The `provenance` setting: whether a step attaches signed provenance to
/// what it pushes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProvenanceMode {
    /// Attach it when the engine signs provenance for the biz; otherwise log
    /// why not and go on.
    #[default]
    Auto,
    /// Attach it, or fail the step.
    Required,
    /// Do not attach it.
    Off,
}

/// The manifest provenance is about: its media type, digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject<'a> {
    /// Its media type.
    pub media_type: &'a str,
    /// `sha256:…`.
    pub digest: &'a str,
    /// Its size in bytes.
    pub size: u64,
}

/// Has the host sign provenance of `subject` (pushed to `target`'s
/// repository) and pushes it as a referrer ([module docs](self)). Returns the
/// referrer manifest's digest, or `None` when `mode` is off or (in `auto`)
/// the engine does not sign provenance for this biz.
pub fn attach(
    registry: &Registry,
    target: &Reference,
    subject: &Subject<'_>,
    mode: ProvenanceMode,
) -> Result<Option<String>, StepError> {
    if mode == ProvenanceMode::Off {
        return Ok(None);
    }
    let name = target.repository_name();
    let hex = subject
        .digest
        .strip_prefix("sha256:")
        .ok_or_else(|| StepError::failed(format!("{} is not a sha256 digest", subject.digest)))?;
    let request = json!({ "subjects": [{ "name": name, "digest": { "sha256": hex } }] });
    let envelope = match arkline_sdk::host_call::call(HOST_CALL, request.to_string().as_bytes()) {
        Ok(envelope) => envelope,
        Err(e) => {
            let why = match &e {
                HostError::Denied(m) => Some(format!("the biz is not granted it ({m})")),
                HostError::Failed(m) | HostError::InvalidArgument(m)
                    if m.contains("not configured") =>
                {
                    Some(m.clone())
                }
                _ => None,
            };
            let Some(why) = why else {
                return Err(StepError::failed(format!(
                    "cannot sign the provenance of {name}@{}: {e}",
                    subject.digest
                )));
            };
            let message = not_attached(&name, subject.digest, &why);
            if mode == ProvenanceMode::Required {
                return Err(StepError::failed(format!(
                    "{message} (`provenance: required`)"
                )));
            }
            arkline_sdk::info!("{message}");
            return Ok(None);
        }
    };
    let fail = |e: RegistryError| StepError::failed(format!("cannot push the provenance: {e}"));
    let repo = target.repository.as_str();
    let envelope_digest = layer::sha256(&envelope);
    for (digest, bytes) in [
        (EMPTY_DIGEST, EMPTY_CONFIG),
        (envelope_digest.as_str(), envelope.as_slice()),
    ] {
        if !registry.has_blob(repo, digest).map_err(fail)? {
            registry.upload(repo, digest, bytes).map_err(fail)?;
        }
    }
    let manifest = referrer_manifest(subject, &envelope_digest, envelope.len() as u64);
    let digest = layer::sha256(&manifest);
    let stored = registry
        .put_manifest_stored(repo, &digest, OCI_MANIFEST, &manifest)
        .map_err(fail)?;
    if let Some(stored) = stored.digest.filter(|d| *d != digest) {
        return Err(StepError::failed(format!(
            "registry {}, repository {repo}: the provenance manifest was stored as {stored}, not {digest}",
            registry.host()
        )));
    }
    if stored.subject.is_none() {
        // No referrers API: keep the referrers tag schema.
        let tag = referrers_tag(subject.digest);
        let existing = match registry.manifest(repo, &tag, MAX_INDEX) {
            Ok((_, bytes, _)) => Some(bytes),
            Err(e) if e.status == Some(404) => None,
            Err(e) => return Err(fail(e)),
        };
        let descriptor = referrer_descriptor(&digest, manifest.len() as u64);
        let merged = merge_referrers(existing.as_deref(), &descriptor).map_err(|e| {
            StepError::failed(format!(
                "registry {}, repository {repo}: the referrers index {tag}: {e}",
                registry.host()
            ))
        })?;
        if let Some(index) = merged {
            let bytes = serde_json::to_vec(&index).map_err(|e| StepError::failed(e.to_string()))?;
            registry
                .put_manifest(repo, &tag, OCI_INDEX, &bytes)
                .map_err(fail)?;
        }
    }
    arkline_sdk::info!(
        "attached signed provenance to {name}@{}: {}",
        short(subject.digest),
        short(&digest)
    );
    Ok(Some(digest))
}

/// Why provenance was not attached, and how to have it.
fn not_attached(name: &str, digest: &str, why: &str) -> String {
    format!(
        "provenance was not attached to {name}@{}: {why}; to attach it, grant the biz \
         `host-call={HOST_CALL}` and set the engine's `provenance.key_secret`",
        short(digest)
    )
}

/// The tag of the referrers index of `digest` (`sha256:<hex>` →
/// `sha256-<hex>`).
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The referrer manifest's bytes: an OCI image manifest of the envelope
/// (`envelope_digest`, `envelope_size`) about `subject`.
pub fn referrer_manifest(
    subject: &Subject<'_>,
    envelope_digest: &str,
    envelope_size: u64,
) -> Vec<u8> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": EMPTY_DIGEST,
            "size": EMPTY_CONFIG.len(),
        },
        "layers": [{
            "mediaType": ARTIFACT_TYPE,
            "digest": envelope_digest,
            "size": envelope_size,
        }],
        "subject": {
            "mediaType": subject.media_type,
            "digest": subject.digest,
            "size": subject.size,
        },
        "annotations": { PREDICATE_ANNOTATION: PREDICATE_TYPE },
    });
    serde_json::to_vec(&manifest).expect("a JSON value serialises")
}

/// The descriptor of a referrer manifest in a referrers index.
pub fn referrer_descriptor(digest: &str, size: u64) -> Value {
    json!({
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": size,
        "artifactType": ARTIFACT_TYPE,
        "annotations": { PREDICATE_ANNOTATION: PREDICATE_TYPE },
    })
}

/// The referrers index with `descriptor` added to `existing` (its bytes, or
/// `None` when there is none yet), or `None` when it already lists the
/// descriptor's digest. Other fields of an existing index are kept.
pub fn merge_referrers(
    existing: Option<&[u8]>,
    descriptor: &Value,
) -> Result<Option<Value>, String> {
    let mut index = match existing {
        None => json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] }),
        Some(bytes) => {
            serde_json::from_slice::<Value>(bytes).map_err(|e| format!("it is not JSON: {e}"))?
        }
    };
    let Some(root) = index.as_object_mut() else {
        return Err("it is not a JSON object".into());
    };
    if root.get("mediaType").is_some_and(|m| m != OCI_INDEX) {
        return Err(format!(
            "it is a {}, not an OCI image index",
            root["mediaType"]
        ));
    }
    let manifests = root
        .entry("manifests")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(manifests) = manifests else {
        return Err("its `manifests` is not a list".into());
    };
    let digest = descriptor.get("digest");
    if manifests.iter().any(|m| m.get("digest") == digest) {
        return Ok(None);
    }
    manifests.push(descriptor.clone());
    root.entry("mediaType").or_insert_with(|| json!(OCI_INDEX));
    Ok(Some(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject<'static> {
        Subject {
            media_type: OCI_MANIFEST,
            digest: "sha256:abababababababababababababababababababababababababababababababab",
            size: 512,
        }
    }

    #[test]
    fn the_empty_config_digest_is_its_sha256() {
        assert_eq!(layer::sha256(EMPTY_CONFIG), EMPTY_DIGEST);
        assert_eq!(
            referrers_tag(subject().digest),
            format!("sha256-{}", "ab".repeat(32))
        );
    }

    #[test]
    fn a_referrer_manifest_is_about_its_subject() {
        let bytes = referrer_manifest(&subject(), "sha256:cd", 99);
        let manifest: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(manifest["artifactType"], ARTIFACT_TYPE);
        assert_eq!(manifest["subject"]["digest"], subject().digest);
        assert_eq!(manifest["subject"]["size"], 512);
        assert_eq!(manifest["layers"][0]["mediaType"], ARTIFACT_TYPE);
        assert_eq!(manifest["layers"][0]["size"], 99);
        assert_eq!(manifest["config"]["digest"], EMPTY_DIGEST);
        assert_eq!(
            manifest["annotations"][PREDICATE_ANNOTATION],
            PREDICATE_TYPE
        );
        assert_eq!(bytes, referrer_manifest(&subject(), "sha256:cd", 99));
    }

    #[test]
    fn merging_adds_a_referrer_once_and_keeps_the_others() {
        let first = referrer_descriptor("sha256:01", 10);
        let index = merge_referrers(None, &first).expect("merges").expect("new");
        assert_eq!(index["mediaType"], OCI_INDEX);
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["manifests"], json!([first]));
        let bytes = serde_json::to_vec(&index).expect("json");
        assert_eq!(merge_referrers(Some(&bytes), &first), Ok(None));

        let second = referrer_descriptor("sha256:02", 20);
        let index = merge_referrers(Some(&bytes), &second)
            .expect("merges")
            .expect("changed");
        assert_eq!(index["manifests"], json!([first, second]));

        let other = json!({"schemaVersion": 2, "manifests": [{"digest": "sha256:00", "mediaType": "x", "size": 1}], "annotations": {"a": "b"}});
        let index = merge_referrers(Some(other.to_string().as_bytes()), &first)
            .expect("merges")
            .expect("changed");
        assert_eq!(index["manifests"].as_array().map(Vec::len), Some(2));
        assert_eq!(index["annotations"]["a"], "b");

        assert!(merge_referrers(Some(b"[]"), &first).is_err());
        assert!(
            merge_referrers(
                Some(b"{\"mediaType\": \"application/vnd.oci.image.manifest.v1+json\"}"),
                &first
            )
            .is_err()
        );
    }
}
