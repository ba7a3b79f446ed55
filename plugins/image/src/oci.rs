//! The image formats: OCI image spec v1.1 media types and their Docker v2
//! schema 2 equivalents, and the parts of manifests, indexes and configs this
//! plugin reads. Documents are kept as JSON values so fields this plugin does
//! not know (a base's annotations, `urls`, `container_config`…) pass through;
//! what it writes is serialised with sorted keys, so the same inputs give the
//! same bytes.

use serde_json::{Map, Value, json};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzipped layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable gzipped layer (deprecated, still met in bases).
pub const OCI_FOREIGN_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzipped layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker foreign layer.
pub const DOCKER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The `Accept` header of a manifest fetch.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The manifest format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest and config.
    Oci,
    /// Docker v2 schema 2 manifest and config.
    Docker,
}

impl Format {
    /// The manifest media type.
    pub fn manifest(self) -> &'static str {
        match self {
            Format::Oci => OCI_MANIFEST,
            Format::Docker => DOCKER_MANIFEST,
        }
    }

    /// The config media type.
    pub fn config(self) -> &'static str {
        match self {
            Format::Oci => OCI_CONFIG,
            Format::Docker => DOCKER_CONFIG,
        }
    }

    /// The media type of a gzipped layer.
    pub fn layer(self) -> &'static str {
        match self {
            Format::Oci => OCI_LAYER_GZIP,
            Format::Docker => DOCKER_LAYER_GZIP,
        }
    }

    /// A base layer's media type in this format; `Err` names a layer type that
    /// has no equivalent (zstd or uncompressed layers in a Docker manifest).
    pub fn convert_layer(self, media_type: &str) -> Result<&'static str, String> {
        let gzip = matches!(media_type, OCI_LAYER_GZIP | DOCKER_LAYER_GZIP);
        let foreign = matches!(media_type, OCI_FOREIGN_GZIP | DOCKER_FOREIGN);
        match (self, media_type) {
            _ if gzip => Ok(self.layer()),
            (Format::Oci, _) if foreign => Ok(OCI_FOREIGN_GZIP),
            (Format::Docker, _) if foreign => Ok(DOCKER_FOREIGN),
            (Format::Oci, OCI_LAYER_TAR) => Ok(OCI_LAYER_TAR),
            (Format::Oci, OCI_LAYER_ZSTD) => Ok(OCI_LAYER_ZSTD),
            _ => Err(format!(
                "the base has a layer of type `{media_type}`, which a {} manifest cannot hold",
                match self {
                    Format::Oci => "OCI",
                    Format::Docker => "Docker v2 schema 2",
                }
            )),
        }
    }
}

/// A descriptor of a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Other fields of the base's descriptor (annotations, urls), kept.
    pub extra: Map<String, Value>,
}

impl Descriptor {
    /// Reads a descriptor from JSON.
    pub fn from_json(value: &Value) -> Result<Descriptor, String> {
        let media_type = value
            .get("mediaType")
            .and_then(Value::as_str)
            .ok_or("a descriptor has no `mediaType`")?;
        let digest = value
            .get("digest")
            .and_then(Value::as_str)
            .ok_or("a descriptor has no `digest`")?;
        crate::reference::check_digest(digest)?;
        let size = value
            .get("size")
            .and_then(Value::as_u64)
            .ok_or("a descriptor has no `size`")?;
        let mut extra = value.as_object().cloned().unwrap_or_default();
        for key in ["mediaType", "digest", "size"] {
            extra.remove(key);
        }
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size,
            extra,
        })
    }

    /// The descriptor as JSON.
    pub fn to_json(&self) -> Value {
        let mut map = self.extra.clone();
        map.insert("mediaType".into(), json!(self.media_type));
        map.insert("digest".into(), json!(self.digest));
        map.insert("size".into(), json!(self.size));
        Value::Object(map)
    }
}

/// `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8` for `arm64`.
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `linux/amd64` or `linux/arm64/v8`.
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: (*os).to_owned(),
                    architecture: (*arch).to_owned(),
                    variant: Some((*variant).to_owned()),
                })
            }
            _ => Err(format!(
                "`{text}` is not a platform; write `os/architecture[/variant]`, e.g. `linux/amd64`"
            )),
        }
    }

    /// Whether an index entry's `platform` object is this platform.
    pub fn matches(&self, platform: &Value) -> bool {
        let field = |k: &str| platform.get(k).and_then(Value::as_str);
        if field("os") != Some(self.os.as_str())
            || field("architecture") != Some(self.architecture.as_str())
        {
            return false;
        }
        match (&self.variant, field("variant")) {
            (Some(want), Some(have)) => want == have,
            // `arm64` is `arm64/v8` when no variant is written.
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
            (None, _) => true,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Whether a media type is an index (OCI index or Docker list).
pub fn is_index(media_type: &str) -> bool {
    matches!(media_type, OCI_INDEX | DOCKER_LIST)
}

/// Whether a media type is a single-image manifest.
pub fn is_manifest(media_type: &str) -> bool {
    matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST)
}

/// The media type of a manifest document: the header's when it is one this
/// plugin reads, else the document's own `mediaType`.
pub fn document_type(header: &str, document: &Value) -> String {
    if is_index(header) || is_manifest(header) {
        return header.to_owned();
    }
    match document.get("mediaType").and_then(Value::as_str) {
        Some(t) => t.to_owned(),
        // An OCI document may leave out `mediaType`: an index has `manifests`.
        None if document.get("manifests").is_some() => OCI_INDEX.to_owned(),
        None if document.get("layers").is_some() => OCI_MANIFEST.to_owned(),
        None => header.to_owned(),
    }
}
