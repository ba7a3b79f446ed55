//! Layers made from workspace paths: deterministic gzipped tars.
//!
//! The same files give the same bytes wherever and whenever the step runs:
//! entries sorted by name, every timestamp 0, owner `uid:gid` (default 0:0)
//! with no user or group names, gzip header without name or time and a fixed
//! compression level. WASI shows a guest no permission bits, so modes are
//! decided here: directories 0755, files 0644, except files that start with
//! `#!` or the ELF magic (executables) 0755, and what the layer's `modes`
//! patterns say (the last pattern that matches wins).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};

use arkline_sdk::prelude::*;
use arkline_sdk::workspace::{guest_path, relative_path};
use flate2::Compression;
use sha2::{Digest, Sha256};

/// One layer of the image: workspace paths put under a directory of the image.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    /// Files and directories to put in the layer, relative to `working_dir`;
    /// directories with everything under them. Each keeps its path relative
    /// to `working_dir` under `destination`.
    pub paths: Vec<String>,
    /// The directory of the image the paths go under (default `/`), e.g.
    /// `/usr/local/bin`. Its parent directories are in the layer too (0755).
    #[serde(default)]
    pub destination: Option<String>,
    /// The directory `paths` are relative to (default: the workspace root).
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Glob patterns of paths (relative to `working_dir`) to leave out, e.g.
    /// `**/*.log`; a directory matched is left out whole.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// File modes by glob pattern over paths relative to `working_dir`, as
    /// octal text, e.g. `{"bin/*": "0755"}`. The last matching pattern (in
    /// name order) wins over the default (0755 for directories and for files
    /// starting with `#!` or the ELF magic, 0644 for other files).
    #[serde(default)]
    pub modes: BTreeMap<String, String>,
    /// Owner of every entry (default 0).
    #[serde(default)]
    pub uid: u64,
    /// Group of every entry (default 0).
    #[serde(default)]
    pub gid: u64,
}

/// What one entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Dir,
    /// A file, by its guest path.
    File(String),
    Symlink(String),
}

/// The entries of one layer, by name in the image (no leading `/`), with modes.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    entries: BTreeMap<String, (Item, u32)>,
    uid: u64,
    gid: u64,
    level: u32,
}

/// What writing a layer gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:…` of the gzipped tar (the blob).
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// `sha256:…` of the uncompressed tar (the config's `diff_id`).
    pub diff_id: String,
}

impl LayerPlan {
    /// Reads the workspace for layer `index` of the config.
    pub fn collect(index: usize, layer: &LayerConfig, level: u32) -> Result<LayerPlan, StepError> {
        let field = |name: &str| format!("layers[{index}].{name}");
        if layer.paths.is_empty() {
            return Err(StepError::invalid_config(
                field("paths"),
                "give at least one file or directory for the layer",
            ));
        }
        let base_rel = match &layer.working_dir {
            Some(dir) => relative_path(dir).ok_or_else(|| {
                StepError::invalid_config(
                    field("working_dir"),
                    format!(
                        "`{dir}` leaves the workspace; give a path relative to the workspace root"
                    ),
                )
            })?,
            None => String::new(),
        };
        let destination = match &layer.destination {
            Some(d) => image_path(d).ok_or_else(|| {
                StepError::invalid_config(
                    field("destination"),
                    format!("`{d}` climbs above the image's root; give a directory such as `/app`"),
                )
            })?,
            None => String::new(),
        };
        let globs = |list: &mut dyn Iterator<Item = (String, &String)>| {
            let mut set = globset::GlobSetBuilder::new();
            for (at, pattern) in list {
                let glob = globset::GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| StepError::invalid_config(at, format!("`{pattern}`: {e}")))?;
                set.add(glob);
            }
            set.build()
                .map_err(|e| StepError::invalid_config(field("exclude"), e.to_string()))
        };
        let excludes = globs(
            &mut layer
                .exclude
                .iter()
                .enumerate()
                .map(|(i, p)| (field(&format!("exclude[{i}]")), p)),
        )?;
        let mut modes = Vec::new();
        for (pattern, mode) in &layer.modes {
            let at = field(&format!("modes.{pattern}"));
            let parsed = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    StepError::invalid_config(
                        at.clone(),
                        format!("`{mode}` is not an octal mode such as `0755`"),
                    )
                })?;
            modes.push(parsed);
        }
        let mode_globs = globs(
            &mut layer
                .modes
                .keys()
                .map(|p| (field(&format!("modes.{p}")), p)),
        )?;

        let base = guest_path(&base_rel);
        let mut found: BTreeMap<String, Item> = BTreeMap::new();
        for (i, path) in layer.paths.iter().enumerate() {
            let rel = relative_path(path).ok_or_else(|| {
                StepError::invalid_config(
                    field(&format!("paths[{i}]")),
                    format!("`{path}` leaves the workspace; give a path relative to `working_dir`"),
                )
            })?;
            let full = join(&base, &rel);
            if fs::symlink_metadata(&full).is_err() {
                return Err(StepError::invalid_config(
                    field(&format!("paths[{i}]")),
                    format!("`{path}` does not exist in {base}"),
                ));
            }
            collect(&base, &rel, &excludes, &mut found)?;
        }

        let mut entries = BTreeMap::new();
        // The destination's directories, so the layer does not depend on the
        // base having them.
        let mut parent = String::new();
        for component in destination.split('/').filter(|c| !c.is_empty()) {
            parent = join_name(&parent, component);
            entries.insert(parent.clone(), (Item::Dir, 0o755));
        }
        for (rel, item) in found {
            let default = match &item {
                Item::Dir => 0o755,
                Item::Symlink(_) => 0o777,
                Item::File(path) => {
                    if looks_executable(path) {
                        0o755
                    } else {
                        0o644
                    }
                }
            };
            let mode = match &item {
                Item::Symlink(_) => default,
                _ => mode_globs
                    .matches(&rel)
                    .last()
                    .map_or(default, |&i| modes[i]),
            };
            entries.insert(join_name(&destination, &rel), (item, mode));
        }
        if entries.is_empty() {
            return Err(StepError::invalid_config(
                field("paths"),
                "nothing to put in the layer: every path given is excluded",
            ));
        }
        Ok(LayerPlan {
            entries,
            uid: layer.uid,
            gid: layer.gid,
            level,
        })
    }

    /// How many entries the layer has.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Writes the gzipped tar to `out` and says what it was.
    pub fn write<W: Write>(&self, out: W) -> io::Result<(W, Written)> {
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .operating_system(255)
            .write(Hashing::new(out), Compression::new(self.level));
        let mut tar = tar::Builder::new(Hashing::new(gz));
        for (name, (item, mode)) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(*mode);
            header.set_mtime(0);
            header.set_uid(self.uid);
            header.set_gid(self.gid);
            header.set_size(0);
            match item {
                Item::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    tar.append_data(&mut header, format!("{name}/"), io::empty())?;
                }
                Item::File(path) => {
                    let file = fs::File::open(path)?;
                    let size = file.metadata()?.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    let mut reader = file.take(size);
                    tar.append_data(&mut header, name, &mut reader)?;
                    if reader.limit() != 0 {
                        return Err(io::Error::other(format!("{path} shrank while it was read")));
                    }
                }
                Item::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    tar.append_link(&mut header, name, target)?;
                }
            }
        }
        let uncompressed = tar.into_inner()?;
        let diff_id = uncompressed.digest();
        let compressed = uncompressed.inner.finish()?;
        let written = Written {
            digest: compressed.digest(),
            size: compressed.count,
            diff_id,
        };
        Ok((compressed.inner, written))
    }
}

/// Whether a file starts like an executable: `#!` or the ELF magic.
fn looks_executable(path: &str) -> bool {
    let mut head = [0u8; 4];
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    head[..filled].starts_with(b"#!") || head[..filled] == *b"\x7fELF"
}

/// Adds `rel` (relative to `base`) and, for a directory, everything under it.
fn collect(
    base: &str,
    rel: &str,
    excludes: &globset::GlobSet,
    items: &mut BTreeMap<String, Item>,
) -> Result<(), StepError> {
    // The host's own directory is never part of an image.
    if rel == ".arkline"
        || rel.starts_with(".arkline/")
        || (!rel.is_empty() && excludes.is_match(rel))
    {
        return Ok(());
    }
    let full = join(base, rel);
    let meta = fs::symlink_metadata(&full)
        .map_err(|e| StepError::failed(format!("cannot read {full}: {e}")))?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(&full)
            .map_err(|e| StepError::failed(format!("cannot read the link {full}: {e}")))?;
        let target = target.to_str().ok_or_else(|| {
            StepError::failed(format!("the link {full} has a target that is not UTF-8"))
        })?;
        items.insert(rel.to_owned(), Item::Symlink(target.to_owned()));
    } else if kind.is_dir() {
        if !rel.is_empty() {
            items.insert(rel.to_owned(), Item::Dir);
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(&full)
            .map_err(|e| StepError::failed(format!("cannot list {full}: {e}")))?
        {
            let entry = entry.map_err(|e| StepError::failed(format!("cannot list {full}: {e}")))?;
            let name = entry.file_name().into_string().map_err(|name| {
                StepError::failed(format!(
                    "{full} holds a name that is not UTF-8: {}",
                    name.to_string_lossy()
                ))
            })?;
            names.push(name);
        }
        names.sort();
        for name in names {
            collect(base, &join_name(rel, &name), excludes, items)?;
        }
    } else if kind.is_file() {
        items.insert(rel.to_owned(), Item::File(full));
    }
    Ok(())
}

/// A path inside the image, normalised, without leading `/` (empty: the root);
/// `None` when `..` climbs above the root.
pub fn image_path(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

fn join(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{rel}")
    }
}

fn join_name(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else if name.is_empty() {
        parent.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// Counts and hashes what passes through.
pub struct Hashing<W> {
    /// Where the bytes go.
    pub inner: W,
    hasher: Sha256,
    /// Bytes written so far.
    pub count: u64,
}

impl<W> Hashing<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// `sha256:…` of what passed so far.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `sha256:…` of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
