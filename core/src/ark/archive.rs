//! Writing and reading `.ark` archives.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use super::manifest::{
    FileEntry, MANIFEST_PATH, Manifest, ManifestError, SIGNATURE_PATH, sha256_hex,
};

/// Why an archive could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The file could not be read or written.
    #[error("cannot read or write {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a zip archive, or a corrupt one.
    #[error("not a valid zip archive: {0}")]
    Zip(String),
    /// The archive has no `ark.toml`.
    #[error(
        "the archive has no ark.toml at its root; is this an .ark built by `cargo ark package`?"
    )]
    MissingManifest,
    /// `ark.toml` is not acceptable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An entry name that is not a plain relative path.
    #[error("entry `{name}` has an unsafe name: {reason}")]
    UnsafeName {
        /// The entry name as stored.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A symbolic link entry.
    #[error("entry `{0}` is a symbolic link; archives may hold only regular files")]
    Symlink(String),
    /// A directory, device or other non-regular entry.
    #[error(
        "entry `{0}` is not a regular file (a directory or special file); archives may hold only regular files"
    )]
    NotRegularFile(String),
    /// A compression method other than stored or deflate.
    #[error(
        "entry `{name}` uses compression method {method}; only stored and deflate are accepted"
    )]
    UnsupportedCompression {
        /// The entry.
        name: String,
        /// The method found.
        method: String,
    },
    /// The local file header names the entry differently from the central directory.
    #[error(
        "entry `{central}` is named `{local}` in its local header; the archive was crafted to confuse readers"
    )]
    LocalHeaderMismatch {
        /// Name in the central directory.
        central: String,
        /// Name in the local header.
        local: String,
    },
    /// The archive needs an `arkline:step` API version this host does not serve.
    #[error(
        "the archive needs arkline:step {required}, but this host serves {served}; upgrade arkline or rebuild the plugin against a served API"
    )]
    UnsupportedHostApi {
        /// The manifest's requirement.
        required: String,
        /// Versions served.
        served: String,
    },
    /// The policy requires a signature and there is none.
    #[error(
        "the archive is not signed, and this engine requires signed bizes; sign it with `cargo ark sign`"
    )]
    Unsigned,
    /// `ark.sig` is malformed or does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// A valid signature by a key that is not trusted.
    #[error("the archive is signed by key {0}, which is not among the trusted keys")]
    UntrustedKey(String),
    /// Two entries with the same name.
    #[error("entry `{0}` appears more than once")]
    DuplicateEntry(String),
    /// An entry larger than the reader accepts.
    #[error("entry `{name}` is larger than the {limit}-byte limit for one entry")]
    EntryTooLarge {
        /// The entry.
        name: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The archive holds more than the reader accepts.
    #[error("the archive is larger than the {limit}-byte limit once decompressed")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// More entries than the reader accepts.
    #[error("the archive has {count} entries; at most {limit} are accepted")]
    TooManyEntries {
        /// Entries found.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A listed entry is missing.
    #[error("ark.toml lists `{0}`, but the archive has no such entry")]
    MissingEntry(String),
    /// An entry the manifest does not list.
    #[error("entry `{0}` is not listed in ark.toml; every entry must be pinned by digest")]
    UnlistedEntry(String),
    /// An entry whose digest or size differs from the manifest.
    #[error("entry `{name}` does not match ark.toml: {detail}")]
    DigestMismatch {
        /// The entry.
        name: String,
        /// Expected and actual digest or size.
        detail: String,
    },
    /// Bytes before the zip's first local header or after its end-of-central-
    /// directory record (a zip wrapped in another envelope, such as a multipart
    /// request body, or a self-extracting stub).
    #[error(
        "the archive has {leading} stray bytes before its zip data and {trailing} after it; \
         an archive must be exactly the zip file `cargo ark package` wrote (was it wrapped, \
         e.g. sent as a multipart form instead of the raw file?)"
    )]
    StrayBytes {
        /// Bytes before the first local file header.
        leading: u64,
        /// Bytes after the end-of-central-directory record and its comment.
        trailing: u64,
    },
}

/// Limits a reader applies while decompressing, whatever the archive declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most entries accepted.
    pub max_entries: usize,
    /// Largest decompressed entry, in bytes.
    pub max_entry_bytes: u64,
    /// Largest decompressed total, in bytes.
    pub max_total_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_entries: 1024,
            max_entry_bytes: 256 << 20,
            max_total_bytes: 512 << 20,
        }
    }
}

/// A read and verified `.ark` archive.
#[derive(Debug, Clone)]
pub struct Ark {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The exact bytes of `ark.toml` (what a signature covers).
    pub manifest_bytes: Vec<u8>,
    /// The component bytes.
    pub component: Vec<u8>,
    /// Every other listed entry, by path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The bytes of `ark.sig`, when present.
    pub signature: Option<Vec<u8>>,
    /// SHA-256 of the whole archive file.
    pub sha256: String,
}

impl Ark {
    /// Reads and verifies the archive at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Ark, ArchiveError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ArchiveError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ark::from_bytes(&bytes)
    }

    /// Reads and verifies an archive held in memory, with the default limits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Ark, ArchiveError> {
        Ark::from_bytes_with_limits(bytes, ReadLimits::default())
    }

    /// Reads and verifies an archive with explicit limits: the format version, that
    /// every entry is listed with a matching digest and size, and that every listed
    /// entry is present.
    pub fn from_bytes_with_limits(bytes: &[u8], limits: ReadLimits) -> Result<Ark, ArchiveError> {
        let mut entries = read_entries(bytes, limits)?;
        let manifest_bytes = entries
            .remove(MANIFEST_PATH)
            .ok_or(ArchiveError::MissingManifest)?;
        let text = std::str::from_utf8(&manifest_bytes)
            .map_err(|_| ManifestError::Syntax("ark.toml is not UTF-8".into()))?;
        let manifest = Manifest::from_toml(text)?;
        let served = crate::host::supported_api_versions();
        if !served.iter().any(|v| manifest.host_api.matches(v)) {
            return Err(ArchiveError::UnsupportedHostApi {
                required: manifest.host_api.to_string(),
                served: served
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let signature = entries.remove(SIGNATURE_PATH);

        let component_entry = FileEntry {
            path: manifest.component.path.clone(),
            sha256: manifest.component.sha256.clone(),
            size: manifest.component.size,
        };
        let component = take_verified(&mut entries, &component_entry)?;
        let mut files = BTreeMap::new();
        for entry in &manifest.files {
            let data = take_verified(&mut entries, entry)?;
            files.insert(entry.path.clone(), data);
        }
        for step in &manifest.steps {
            if !files.contains_key(&step.schema) {
                return Err(ArchiveError::MissingEntry(step.schema.clone()));
            }
        }
        if let Some(extra) = entries.into_keys().next() {
            return Err(ArchiveError::UnlistedEntry(extra));
        }
        Ok(Ark {
            manifest,
            manifest_bytes,
            component,
            files,
            signature,
            sha256: sha256_hex(bytes),
        })
    }

    /// Every entry of the archive, by path, as stored.
    pub fn entries(&self) -> BTreeMap<String, Vec<u8>> {
        let mut entries = self.files.clone();
        entries.insert(MANIFEST_PATH.to_owned(), self.manifest_bytes.clone());
        entries.insert(self.manifest.component.path.clone(), self.component.clone());
        if let Some(sig) = &self.signature {
            entries.insert(SIGNATURE_PATH.to_owned(), sig.clone());
        }
        entries
    }

    /// The JSON Schema of a step type's config, parsed.
    pub fn step_schema(&self, step: &str) -> Option<serde_json::Value> {
        let entry = self.manifest.steps.iter().find(|s| s.id == step)?;
        serde_json::from_slice(self.files.get(&entry.schema)?).ok()
    }
}

fn take_verified(
    entries: &mut BTreeMap<String, Vec<u8>>,
    entry: &FileEntry,
) -> Result<Vec<u8>, ArchiveError> {
    let data = entries
        .remove(&entry.path)
        .ok_or_else(|| ArchiveError::MissingEntry(entry.path.clone()))?;
    if data.len() as u64 != entry.size {
        return Err(ArchiveError::DigestMismatch {
            name: entry.path.clone(),
            detail: format!("size is {} bytes, ark.toml says {}", data.len(), entry.size),
        });
    }
    let actual = sha256_hex(&data);
    if actual != entry.sha256 {
        return Err(ArchiveError::DigestMismatch {
            name: entry.path.clone(),
            detail: format!("sha256 is {actual}, ark.toml says {}", entry.sha256),
        });
    }
    Ok(data)
}

/// Reads every entry, refusing unsafe names, duplicates and anything past the
/// limits. Sizes are enforced on the decompressed stream, never trusted from headers.
/// Shared by the `.ark` and `.arkc` readers.
pub(crate) fn read_entries(
    bytes: &[u8],
    limits: ReadLimits,
) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
    read_entries_with(bytes, limits, |_, _| Ok(Some(limits.max_entry_bytes)))
}

/// Like [`read_entries`], with a say per entry before it is decompressed:
/// `cap(name, declared uncompressed size)` returns `None` to leave the entry out,
/// `Some(bytes)` for the most it may decompress to (never more than
/// `limits.max_entry_bytes`; past it the read stops and gives
/// [`ArchiveError::EntryTooLarge`] with that cap), or an error to refuse it. The
/// declared size comes from the central directory and may lie; the cap holds on
/// the decompressed stream whatever it says.
pub(crate) fn read_entries_with<E: From<ArchiveError>>(
    bytes: &[u8],
    limits: ReadLimits,
    mut cap: impl FnMut(&str, u64) -> Result<Option<u64>, E>,
) -> Result<BTreeMap<String, Vec<u8>>, E> {
    let mut zip =
        ZipArchive::new(Cursor::new(bytes)).map_err(|e| ArchiveError::Zip(e.to_string()))?;
    if zip.len() > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            count: zip.len(),
            limit: limits.max_entries,
        }
        .into());
    }
    // The zip layer indexes entries by name, so a repeated name would silently
    // shadow another: look for repeats in the central directory itself.
    if zip.has_duplicate_names() {
        let name = repeated_central_name(bytes).unwrap_or_else(|| "<a repeated name>".to_owned());
        return Err(ArchiveError::DuplicateEntry(name).into());
    }
    if let Some(name) = repeated_central_name(bytes) {
        return Err(ArchiveError::DuplicateEntry(name).into());
    }
    check_no_stray_bytes(bytes, &mut zip)?;
    let mut entries = BTreeMap::new();
    let mut total = 0u64;
    for index in 0..zip.len() {
        // Metadata first, from the raw entry: no decompressor is set up for an
        // entry that is refused.
        let (name, declared) = {
            let file = zip
                .by_index_raw(index)
                .map_err(|e| ArchiveError::Zip(e.to_string()))?;
            (check_entry_metadata(bytes, &file)?, file.size())
        };
        if entries.contains_key(&name) {
            return Err(ArchiveError::DuplicateEntry(name).into());
        }
        let Some(entry_cap) = cap(&name, declared)? else {
            continue;
        };
        let entry_cap = entry_cap.min(limits.max_entry_bytes);
        let file = zip
            .by_index(index)
            .map_err(|e| ArchiveError::Zip(e.to_string()))?;
        let mut data = Vec::new();
        file.take(entry_cap.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| ArchiveError::Zip(format!("entry `{name}`: {e}")))?;
        if data.len() as u64 > entry_cap {
            return Err(ArchiveError::EntryTooLarge {
                name,
                limit: entry_cap,
            }
            .into());
        }
        total += data.len() as u64;
        if total > limits.max_total_bytes {
            return Err(ArchiveError::TooLarge {
                limit: limits.max_total_bytes,
            }
            .into());
        }
        entries.insert(name, data);
    }
    Ok(entries)
}

/// Checks an entry's name, type, compression and local header; returns its name.
fn check_entry_metadata<R: Read>(
    bytes: &[u8],
    file: &zip::read::ZipFile<'_, R>,
) -> Result<String, ArchiveError> {
    let name = file
        .name()
        .map_err(|e| ArchiveError::Zip(e.to_string()))?
        .into_owned();
    if file.is_symlink() {
        return Err(ArchiveError::Symlink(name));
    }
    // Unix file-type bits, when present, must say "regular file".
    let regular = file
        .unix_mode()
        .is_none_or(|mode| mode & 0o170000 == 0 || mode & 0o170000 == 0o100000);
    if file.is_dir() || !regular {
        return Err(ArchiveError::NotRegularFile(name));
    }
    check_entry_name(&name)?;
    match file.compression() {
        CompressionMethod::Stored | CompressionMethod::Deflated => {}
        other => {
            return Err(ArchiveError::UnsupportedCompression {
                name,
                method: format!("{other:?}"),
            });
        }
    }
    let local = local_header_name(bytes, file.header_start());
    if local.as_deref() != Some(file.name_raw()) {
        return Err(ArchiveError::LocalHeaderMismatch {
            central: name,
            local: local
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_else(|| "<no readable local header>".to_owned()),
        });
    }
    Ok(name)
}

/// The zip must start at byte 0 with a local file header and end with its
/// end-of-central-directory record (and comment): the zip layer tolerates data
/// before (`offset()`) and after the archive, which would let a wrapped file or a
/// polyglot through.
fn check_no_stray_bytes<R: Read + std::io::Seek>(
    bytes: &[u8],
    zip: &mut ZipArchive<R>,
) -> Result<(), ArchiveError> {
    const LOCAL: &[u8] = &[0x50, 0x4b, 0x03, 0x04];
    const EOCD: &[u8] = &[0x50, 0x4b, 0x05, 0x06];
    let len = bytes.len() as u64;
    let leading = if zip.offset() > 0 {
        zip.offset()
    } else if !zip.is_empty() && !bytes.starts_with(LOCAL) {
        // The first entry's local header: wherever the directory says it is.
        (0..zip.len())
            .filter_map(|i| zip.by_index_raw(i).ok().map(|f| f.header_start()))
            .min()
            .unwrap_or(0)
            .max(1)
    } else {
        0
    };
    // The end-of-central-directory record that the zip layer read: the last one
    // whose comment length matches the archive's comment.
    let comment = zip.comment().len();
    let floor = bytes.len().saturating_sub(22 + 0xffff);
    let end = bytes.len().checked_sub(22).and_then(|top| {
        (floor..=top).rev().find_map(|i| {
            let record = bytes.get(i..i + 22)?;
            let stated = usize::from(u16::from_le_bytes([record[20], record[21]]));
            (record[..4] == *EOCD && stated == comment).then_some((i + 22 + comment) as u64)
        })
    });
    let trailing = end.map_or(0, |end| len.saturating_sub(end));
    if leading > 0 || trailing > 0 {
        return Err(ArchiveError::StrayBytes { leading, trailing });
    }
    Ok(())
}

/// The first name that appears twice in the central directory, if any. Walks the
/// directory from the end-of-central-directory record; archives whose directory
/// cannot be walked this way (zip64 offsets) are left to the zip layer.
fn repeated_central_name(bytes: &[u8]) -> Option<String> {
    const EOCD: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const CENTRAL: [u8; 4] = [0x50, 0x4b, 0x01, 0x02];
    let floor = bytes.len().saturating_sub(22 + 0xffff);
    let eocd = (floor..=bytes.len().checked_sub(22)?)
        .rev()
        .find(|&i| bytes[i..i + 4] == EOCD)?;
    let u16_at = |i: usize| -> Option<usize> {
        Some(usize::from(u16::from_le_bytes(
            bytes.get(i..i + 2)?.try_into().ok()?,
        )))
    };
    let u32_at = |i: usize| -> Option<usize> {
        usize::try_from(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?)).ok()
    };
    let count = u16_at(eocd + 10)?;
    let mut at = u32_at(eocd + 16)?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..count {
        if bytes.get(at..at + 4)? != CENTRAL {
            return None;
        }
        let (n, e, c) = (u16_at(at + 28)?, u16_at(at + 30)?, u16_at(at + 32)?);
        let name = bytes.get(at + 46..at + 46 + n)?;
        if !seen.insert(name) {
            return Some(String::from_utf8_lossy(name).into_owned());
        }
        at += 46 + n + e + c;
    }
    None
}

/// The raw name in the local file header at `offset`, if one is there.
fn local_header_name(bytes: &[u8], offset: u64) -> Option<Vec<u8>> {
    let start = usize::try_from(offset).ok()?;
    let header = bytes.get(start..start.checked_add(30)?)?;
    if header[..4] != [0x50, 0x4b, 0x03, 0x04] {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([header[26], header[27]]));
    Some(bytes.get(start + 30..start + 30 + len)?.to_vec())
}

/// Entry names are plain relative paths of `/`-separated, ordinary components.
fn check_entry_name(name: &str) -> Result<(), ArchiveError> {
    let reason = if name.is_empty() {
        Some("empty name")
    } else if name.starts_with('/') {
        Some("absolute path")
    } else if name.contains('\\') {
        Some("backslash in name")
    } else if name.as_bytes().get(1) == Some(&b':') {
        Some("drive-letter path")
    } else if name.contains('\0') {
        Some("NUL in name")
    } else if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        Some("empty, `.` or `..` path component")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ArchiveError::UnsafeName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Writes a zip whose bytes depend only on `entries`: sorted names, fixed timestamps
/// (1980-01-01) and permissions (0644), no extra fields. Entries for which `stored`
/// returns true are stored uncompressed (nested archives); others are deflated.
pub fn write_deterministic_zip(
    entries: &BTreeMap<String, Vec<u8>>,
    stored: impl Fn(&str) -> bool,
) -> Result<Vec<u8>, ArchiveError> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        check_entry_name(name)?;
        let method = if stored(name) {
            CompressionMethod::Stored
        } else {
            CompressionMethod::Deflated
        };
        let options = SimpleFileOptions::default()
            .compression_method(method)
            .last_modified_time(DateTime::default())
            .system(zip::System::Unix)
            .unix_permissions(0o644)
            .large_file(data.len() as u64 >= u64::from(u32::MAX));
        zip.start_file(name.as_str(), options)
            .map_err(|e| ArchiveError::Zip(e.to_string()))?;
        zip.write_all(data)
            .map_err(|e| ArchiveError::Zip(e.to_string()))?;
    }
    let cursor = zip.finish().map_err(|e| ArchiveError::Zip(e.to_string()))?;
    Ok(cursor.into_inner())
}

/// Writes an `.ark`: fills in the component's and every file's digest and size in
/// `manifest`, then writes `ark.toml`, the component and `files` deterministically.
/// Returns the archive bytes and the completed manifest.
pub fn write_ark(
    mut manifest: Manifest,
    component: &[u8],
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<(Vec<u8>, Manifest), ArchiveError> {
    manifest.component.sha256 = sha256_hex(component);
    manifest.component.size = component.len() as u64;
    manifest.files = files
        .iter()
        .map(|(path, data)| FileEntry {
            path: path.clone(),
            sha256: sha256_hex(data),
            size: data.len() as u64,
        })
        .collect();
    manifest.check()?;
    if [MANIFEST_PATH, SIGNATURE_PATH].contains(&manifest.component.path.as_str()) {
        return Err(ArchiveError::DuplicateEntry(
            manifest.component.path.clone(),
        ));
    }
    let mut entries = files.clone();
    for reserved in [
        MANIFEST_PATH,
        SIGNATURE_PATH,
        manifest.component.path.as_str(),
    ] {
        if entries.contains_key(reserved) {
            return Err(ArchiveError::DuplicateEntry(reserved.to_owned()));
        }
    }
    entries.insert(MANIFEST_PATH.to_owned(), manifest.to_toml()?.into_bytes());
    entries.insert(manifest.component.path.clone(), component.to_vec());
    Ok((write_deterministic_zip(&entries, |_| false)?, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ark::manifest::tests::sample;

    fn sample_ark() -> Vec<u8> {
        let mut files = BTreeMap::new();
        files.insert(
            "schemas/run.schema.json".to_owned(),
            br#"{"type":"object"}"#.to_vec(),
        );
        write_ark(sample(), b"\0asm component bytes", &files)
            .expect("writes")
            .0
    }

    #[test]
    fn writes_identical_bytes_and_reads_back() {
        let a = sample_ark();
        assert_eq!(a, sample_ark());
        let ark = Ark::from_bytes(&a).expect("reads");
        assert_eq!(ark.component, b"\0asm component bytes");
        assert_eq!(ark.manifest.files.len(), 1);
        assert_eq!(
            ark.step_schema("run"),
            Some(serde_json::json!({"type": "object"}))
        );
        assert!(ark.signature.is_none());
    }

    fn rezip(mutate: impl FnOnce(&mut BTreeMap<String, Vec<u8>>)) -> Vec<u8> {
        let mut entries = read_entries(&sample_ark(), ReadLimits::default()).expect("reads");
        mutate(&mut entries);
        write_deterministic_zip(&entries, |_| false).expect("writes")
    }

    #[test]
    fn a_per_entry_cap_skips_or_stops_entries_whatever_they_declare() {
        let bytes = sample_ark();
        // Left out: nothing of the entry is read.
        let only_manifest = read_entries_with(&bytes, ReadLimits::default(), |name, _| {
            Ok::<_, ArchiveError>((name == "ark.toml").then_some(u64::MAX))
        })
        .expect("reads");
        assert_eq!(only_manifest.keys().collect::<Vec<_>>(), ["ark.toml"]);
        // A cap below what the entry decompresses to stops the read at the cap.
        let mut declared = None;
        let err = read_entries_with(&bytes, ReadLimits::default(), |name, size| {
            if name == "component.wasm" {
                declared = Some(size);
                return Ok::<_, ArchiveError>(Some(4));
            }
            Ok(Some(u64::MAX))
        })
        .expect_err("over the cap");
        assert_eq!(declared, Some(b"\0asm component bytes".len() as u64));
        assert!(
            matches!(err, ArchiveError::EntryTooLarge { ref name, limit: 4 } if name == "component.wasm"),
            "{err}"
        );
    }

    #[test]
    fn tampered_component_is_refused() {
        let bytes = rezip(|e| {
            let c = e.get_mut("component.wasm").expect("component");
            c[0] ^= 1;
        });
        let err = Ark::from_bytes(&bytes).expect_err("refused");
        assert!(
            matches!(err, ArchiveError::DigestMismatch { ref name, .. } if name == "component.wasm"),
            "{err}"
        );
    }

    #[test]
    fn unlisted_and_missing_entries_are_refused() {
        let bytes = rezip(|e| {
            e.insert("extra.txt".into(), b"x".to_vec());
        });
        assert!(
            matches!(Ark::from_bytes(&bytes), Err(ArchiveError::UnlistedEntry(n)) if n == "extra.txt")
        );
        let bytes = rezip(|e| {
            e.remove("schemas/run.schema.json");
        });
        assert!(
            matches!(Ark::from_bytes(&bytes), Err(ArchiveError::MissingEntry(n)) if n == "schemas/run.schema.json")
        );
    }

    #[test]
    fn missing_manifest_and_garbage() {
        let bytes = rezip(|e| {
            e.remove(MANIFEST_PATH);
        });
        assert!(matches!(
            Ark::from_bytes(&bytes),
            Err(ArchiveError::MissingManifest)
        ));
        assert!(matches!(
            Ark::from_bytes(b"not a zip"),
            Err(ArchiveError::Zip(_))
        ));
    }

    #[test]
    fn entry_size_is_capped_while_streaming() {
        let limits = ReadLimits {
            max_entry_bytes: 8,
            ..ReadLimits::default()
        };
        let err = Ark::from_bytes_with_limits(&sample_ark(), limits).expect_err("refused");
        assert!(matches!(err, ArchiveError::EntryTooLarge { .. }), "{err}");
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in ["../x", "/etc/passwd", "a\\b", "C:/x", "a//b", "./a"] {
            assert!(
                matches!(check_entry_name(name), Err(ArchiveError::UnsafeName { .. })),
                "{name} accepted"
            );
        }
        assert!(check_entry_name("schemas/run.schema.json").is_ok());
    }
}
