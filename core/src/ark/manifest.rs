//! `ark.toml`: what a biz is, what it needs, and the digest of every entry.

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::host::Capabilities;

/// The archive format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Path of the manifest inside an `.ark`.
pub const MANIFEST_PATH: &str = "ark.toml";

/// Path of the optional signature inside an `.ark`.
pub const SIGNATURE_PATH: &str = "ark.sig";

/// The manifest of an `.ark` archive (`ark.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format of the archive; readers refuse versions they do not know.
    pub format_version: u32,
    /// Biz name: lower-case letters, digits, `-` and `_`, starting with a letter.
    pub name: String,
    /// Biz version.
    pub version: Version,
    /// One-line description.
    #[serde(default)]
    pub description: String,
    /// Authors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    /// SPDX license expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The `arkline:step` API versions the component works with.
    pub host_api: VersionReq,
    /// The component.
    pub component: ComponentEntry,
    /// Step types the component implements, as its `describe()` reported them.
    #[serde(default)]
    pub steps: Vec<StepEntry>,
    /// Capabilities the biz requests; an engine grants some or all of them.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// How the component was built.
    pub build: BuildInfo,
    /// Every other entry of the archive (schema files), sorted by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
}

/// The component entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentEntry {
    /// Path inside the archive.
    pub path: String,
    /// Lower-case hex SHA-256 of the component bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// A step type implemented by the biz.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepEntry {
    /// Step type id (`uses: <biz>/<id>`).
    pub id: String,
    /// One-line description.
    #[serde(default)]
    pub description: String,
    /// Path of the JSON Schema of its config inside the archive.
    pub schema: String,
}

/// Provenance of the component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// The packager and its version, e.g. `cargo-ark 0.1.0`.
    pub packager: String,
    /// `rustc --version` of the guest build.
    pub rustc: String,
    /// Target triple, `wasm32-wasip2`.
    pub target: String,
    /// Cargo profile, normally `ark`; `prebuilt` for a component packaged
    /// with `cargo ark package --component`.
    pub profile: String,
    /// The component's source language when it is not Rust (`Python`,
    /// `JavaScript`, …), from its `producers` sections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// Digest and size of an archive entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path inside the archive.
    pub path: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why a manifest is not acceptable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not TOML, or fields of the wrong shape.
    #[error("ark.toml is not a valid manifest: {0}")]
    Syntax(String),
    /// No `format_version`.
    #[error("ark.toml has no `format_version`; is this an arkline archive?")]
    MissingFormatVersion,
    /// A format version this build does not know.
    #[error(
        "ark.toml has format_version {found}, but this arkline reads only format_version {supported}; upgrade arkline to read it"
    )]
    UnknownFormatVersion {
        /// The version in the file.
        found: i64,
        /// The version this build reads.
        supported: u32,
    },
    /// A field holds a value the format does not allow.
    #[error("ark.toml: `{field}` {problem}")]
    Invalid {
        /// The field.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl Manifest {
    /// Parses and checks `ark.toml`. The format version is checked before anything
    /// else, so a newer archive is refused with that reason, not a field error.
    pub fn from_toml(text: &str) -> Result<Manifest, ManifestError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_owned()))?;
        match table.get("format_version") {
            None => return Err(ManifestError::MissingFormatVersion),
            Some(toml::Value::Integer(v)) if *v == i64::from(FORMAT_VERSION) => {}
            Some(toml::Value::Integer(v)) => {
                return Err(ManifestError::UnknownFormatVersion {
                    found: *v,
                    supported: FORMAT_VERSION,
                });
            }
            Some(_) => {
                return Err(ManifestError::Invalid {
                    field: "format_version".into(),
                    problem: "must be an integer".into(),
                });
            }
        }
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Serialises the manifest as `ark.toml` text.
    pub fn to_toml(&self) -> Result<String, ManifestError> {
        toml::to_string(self).map_err(|e| ManifestError::Syntax(e.to_string()))
    }

    /// Checks the values the format constrains beyond their types.
    pub fn check(&self) -> Result<(), ManifestError> {
        check_name("name", &self.name)?;
        let mut ids = std::collections::BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            check_name(&format!("steps[{i}].id"), &step.id)?;
            if !ids.insert(step.id.as_str()) {
                return Err(ManifestError::Invalid {
                    field: format!("steps[{i}].id"),
                    problem: format!("repeats step type `{}`", step.id),
                });
            }
        }
        let mut paths = std::collections::BTreeSet::from([self.component.path.as_str()]);
        for (i, file) in self.files.iter().enumerate() {
            if !paths.insert(file.path.as_str()) {
                return Err(ManifestError::Invalid {
                    field: format!("files[{i}].path"),
                    problem: format!("repeats `{}`", file.path),
                });
            }
        }
        for (field, digest) in
            std::iter::once(("component.sha256".to_owned(), &self.component.sha256)).chain(
                self.files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("files[{i}].sha256"), &f.sha256)),
            )
        {
            let valid = digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !valid {
                return Err(ManifestError::Invalid {
                    field,
                    problem: "must be 64 lower-case hex digits (a SHA-256)".into(),
                });
            }
        }
        Ok(())
    }
}

/// What a biz or step type name may be: 1-64 lower-case letters, digits, `-` or
/// `_`, starting with a letter, so a `uses:` line spells it unambiguously.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn check_name(field: &str, name: &str) -> Result<(), ManifestError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ManifestError::Invalid {
            field: field.to_owned(),
            problem: format!(
                "is `{name}`; names are 1-64 lower-case letters, digits, `-` or `_`, starting with a letter"
            ),
        })
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            name: "shell".into(),
            version: Version::new(0, 1, 0),
            description: "Runs shell scripts".into(),
            authors: vec!["A <a@example.com>".into()],
            license: Some("MIT".into()),
            host_api: VersionReq::parse("^0.1").expect("req"),
            component: ComponentEntry {
                path: "component.wasm".into(),
                sha256: sha256_hex(b"x"),
                size: 1,
            },
            steps: vec![StepEntry {
                id: "run".into(),
                description: "Runs a script".into(),
                schema: "schemas/run.schema.json".into(),
            }],
            capabilities: Capabilities {
                process: vec!["sh".into()],
                ..Capabilities::default()
            },
            build: BuildInfo {
                packager: "cargo-ark 0.1.0".into(),
                rustc: "rustc 1.95.0".into(),
                target: "wasm32-wasip2".into(),
                profile: "ark".into(),
                language: None,
            },
            files: vec![],
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let m = sample();
        let text = m.to_toml().expect("serialises");
        assert_eq!(Manifest::from_toml(&text).expect("parses"), m);
    }

    #[test]
    fn future_format_version_is_refused_before_fields() {
        let text = "format_version = 7\nsomething_new = true\n";
        let err = Manifest::from_toml(text).expect_err("refused");
        assert!(matches!(
            err,
            ManifestError::UnknownFormatVersion { found: 7, .. }
        ));
        assert!(err.to_string().contains("upgrade arkline"), "{err}");
    }

    #[test]
    fn missing_format_version() {
        let err = Manifest::from_toml("name = \"x\"").expect_err("refused");
        assert!(matches!(err, ManifestError::MissingFormatVersion));
    }

    #[test]
    fn bad_names_and_digests() {
        let mut m = sample();
        m.name = "Shell".into();
        assert!(matches!(m.check(), Err(ManifestError::Invalid { field, .. }) if field == "name"));
        let mut m = sample();
        m.steps.push(m.steps[0].clone());
        assert!(
            matches!(m.check(), Err(ManifestError::Invalid { field, .. }) if field == "steps[1].id")
        );
        let mut m = sample();
        m.component.sha256 = "ABC".into();
        assert!(
            matches!(m.check(), Err(ManifestError::Invalid { field, .. }) if field == "component.sha256")
        );
    }
}
