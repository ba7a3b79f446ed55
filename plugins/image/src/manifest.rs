//! Reading images from a registry, shared by the steps: a manifest fetched
//! with its digest checked, an index's entry chosen by platform, an image
//! manifest's config and layers. `publish` reads its base this way, `copy`
//! its source and `inspect` its reference.

use arkline_sdk::prelude::*;
use serde_json::Value;

use crate::HOST_BODY_CAP;
use crate::oci::{self, Descriptor, Platform};
use crate::reference::Reference;
use crate::registry::Registry;

/// A manifest or index as the registry sent it.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its media type (the `Content-Type`, else the document's own).
    pub media_type: String,
    /// The bytes, exactly as sent (pushed again as they are, the digest kept).
    pub bytes: Vec<u8>,
    /// `sha256:…` of `bytes`, checked.
    pub digest: String,
    /// The bytes parsed.
    pub document: Value,
}

impl Fetched {
    /// Fetches `reference` (a tag or a digest) of `reference`'s repository;
    /// errors name the image (`what`, e.g. `the base r/app:1`).
    pub fn get(
        registry: &Registry,
        image: &Reference,
        reference: &str,
        what: &str,
    ) -> Result<Fetched, StepError> {
        let (header, bytes, digest) = registry
            .manifest(&image.repository, reference, HOST_BODY_CAP)
            .map_err(|e| StepError::failed(format!("cannot read {what}: {e}")))?;
        let document: Value = serde_json::from_slice(&bytes).map_err(|e| {
            StepError::failed(format!("{what}: the manifest {reference} is not JSON: {e}"))
        })?;
        Ok(Fetched {
            media_type: oci::document_type(&header, &document),
            bytes,
            digest,
            document,
        })
    }

    /// Whether it is an index (OCI index or Docker manifest list).
    pub fn is_index(&self) -> bool {
        oci::is_index(&self.media_type)
    }

    /// An index's entries.
    pub fn entries(&self, what: &str) -> Result<Vec<Descriptor>, StepError> {
        self.document
            .get("manifests")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(Descriptor::from_json)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StepError::failed(format!("{what}'s index: {e}")))
    }

    /// The platforms an index lists, `os/architecture[/variant]`, in order
    /// (entries with no platform, or `unknown/unknown` such as build
    /// attestations, left out).
    pub fn platforms(&self) -> Vec<String> {
        self.document
            .get("manifests")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m.get("platform"))
            .map(platform_text)
            .filter(|p| p != "unknown/unknown")
            .collect()
    }

    /// The index entry for `platform`; the error lists those it has.
    pub fn choose(&self, platform: &Platform, what: &str) -> Result<Descriptor, StepError> {
        let chosen = self
            .document
            .get("manifests")
            .and_then(Value::as_array)
            .and_then(|entries| {
                entries
                    .iter()
                    .find(|m| m.get("platform").is_some_and(|p| platform.matches(p)))
            })
            .ok_or_else(|| {
                StepError::failed(format!(
                    "{what} has no image for {platform} (it has: {}); set `platform`",
                    self.platforms().join(", ")
                ))
            })?;
        Descriptor::from_json(chosen).map_err(|e| StepError::failed(format!("{what}'s index: {e}")))
    }

    /// An image manifest's config and layers.
    pub fn image(&self, what: &str) -> Result<(Descriptor, Vec<Descriptor>), StepError> {
        if !oci::is_manifest(&self.media_type) {
            return Err(StepError::failed(format!(
                "{what} is a `{}`, not an image manifest this step reads (OCI or Docker v2 schema 2)",
                self.media_type
            )));
        }
        let config = self
            .document
            .get("config")
            .ok_or_else(|| StepError::failed(format!("{what}'s manifest has no config")))
            .and_then(|c| {
                Descriptor::from_json(c)
                    .map_err(|e| StepError::failed(format!("{what}'s config: {e}")))
            })?;
        let layers = self
            .document
            .get("layers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(Descriptor::from_json)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StepError::failed(format!("{what}'s layers: {e}")))?;
        Ok((config, layers))
    }
}

/// Fetches an image config (small, digest checked) as JSON.
pub fn config(
    registry: &Registry,
    image: &Reference,
    config: &Descriptor,
    what: &str,
) -> Result<Value, StepError> {
    let bytes = registry
        .blob(&image.repository, &config.digest, HOST_BODY_CAP)
        .map_err(|e| StepError::failed(format!("cannot read {what}'s config: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| StepError::failed(format!("{what}'s config is not JSON: {e}")))
}

/// `os/architecture[/variant]` of a `platform` object or an image config.
pub fn platform_text(platform: &Value) -> String {
    let field = |k: &str| {
        platform
            .get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let mut text = format!(
        "{}/{}",
        field("os").unwrap_or("?"),
        field("architecture").unwrap_or("?")
    );
    if let Some(variant) = field("variant") {
        text.push('/');
        text.push_str(variant);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn platforms_of_an_index() {
        let index = Fetched {
            media_type: oci::OCI_INDEX.into(),
            bytes: Vec::new(),
            digest: String::new(),
            document: json!({ "manifests": [
                { "platform": { "os": "linux", "architecture": "amd64" } },
                { "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } },
                { "platform": { "os": "unknown", "architecture": "unknown" } },
                {},
            ]}),
        };
        assert_eq!(index.platforms(), ["linux/amd64", "linux/arm64/v8"]);
        let err = index
            .choose(&Platform::parse("linux/s390x").unwrap(), "the image x")
            .err()
            .map(|e| format!("{e:?}"))
            .unwrap_or_default();
        assert!(err.contains("no image for linux/s390x"), "{err}");
        assert!(err.contains("linux/amd64, linux/arm64/v8"), "{err}");
    }
}
