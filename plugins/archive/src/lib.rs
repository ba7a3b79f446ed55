//! The `archive` biz: packs workspace paths into a deterministic `.tar.gz` and
//! unpacks archives into the workspace. Pure guest code: it needs no capability.
//!
//! ```yaml
//! - name: package
//!   uses: archive/pack@0.1
//!   with:
//!     paths: [target/release/app, README.md]
//!     output: dist/app.tar.gz
//! - name: publish
//!   uses: shell
//!   with:
//!     script: echo "sha256 ${{ steps.package.outputs.sha256 }}"
//! ```
//!
//! `pack` writes the same bytes for the same files wherever and whenever it runs:
//! entries sorted by name, every timestamp set to `mtime` (default 0), owner 0:0
//! with no names, mode 0644 for files and 0755 for directories (WASI shows no
//! permission bits, so executable bits are not kept), gzip header without name or
//! time. Outputs: `path`, `sha256`, `size`, `entries`.
//!
//! `unpack` takes `.tar.gz` or plain `.tar`, writes only inside its destination
//! (names with `..` or absolute names are refused, never rewritten; nothing is
//! written through a symbolic link; a link may only point inside the destination),
//! and caps the bytes it writes. Outputs: `files`, `bytes`, `sha256` of the archive.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use arkline_sdk::prelude::*;
use flate2::Compression;
use sha2::{Digest, Sha256};

use arkline_sdk::workspace::{guest_path, relative_path};

/// Configuration of the `pack` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    /// Files and directories to pack, relative to `working_dir`; directories are
    /// packed with everything under them. Entries are named by these paths.
    pub paths: Vec<String>,
    /// Where to write the archive, relative to the workspace root (e.g.
    /// `dist/app.tar.gz`). Parent directories are created.
    pub output: String,
    /// The directory `paths` and entry names are relative to (default: the
    /// workspace root).
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Glob patterns of paths (relative to `working_dir`) to leave out, e.g.
    /// `**/target` (a directory matched is left out whole) or `**/*.log`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A directory name put in front of every entry (e.g. `app-1.2`), so the
    /// archive unpacks into one directory.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The modification time of every entry, in seconds since the Unix epoch
    /// (default 0; set it to the commit time for `SOURCE_DATE_EPOCH`-style archives).
    #[serde(default)]
    pub mtime: u64,
    /// gzip compression level, 0 (none) to 9 (best). Default 6.
    #[serde(default = "default_level")]
    pub level: u32,
}

fn default_level() -> u32 {
    6
}

/// Configuration of the `unpack` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Unpack {
    /// The archive (`.tar.gz` or `.tar`), relative to the workspace root.
    pub archive: String,
    /// The directory to unpack into, relative to the workspace root (created when
    /// missing; default: the workspace root).
    #[serde(default)]
    pub destination: Option<String>,
    /// Leading path components removed from every entry name (as `tar
    /// --strip-components`); entries left with no name are skipped.
    #[serde(default)]
    pub strip_components: u32,
    /// The most bytes of file content written; past it the step fails. Default
    /// 4 GiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_max_bytes() -> u64 {
    4 << 30
}

/// What one archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Dir,
    File(String),
    Symlink(String),
}

/// Runs the `pack` step.
pub fn pack(_ctx: &Context, config: Pack) -> StepResult {
    if config.paths.is_empty() {
        return Err(StepError::invalid_config(
            "paths",
            "give at least one file or directory to pack",
        ));
    }
    if config.level > 9 {
        return Err(StepError::invalid_config(
            "level",
            format!(
                "{} is not a gzip level; use 0 (none) to 9 (best)",
                config.level
            ),
        ));
    }
    let output_rel = relative_path(&config.output).ok_or_else(|| {
        StepError::invalid_config(
            "output",
            format!(
                "`{}` leaves the workspace; give a path relative to the workspace root",
                config.output
            ),
        )
    })?;
    if output_rel.is_empty() {
        return Err(StepError::invalid_config(
            "output",
            "name a file, e.g. `dist/app.tar.gz`",
        ));
    }
    let base_rel = match &config.working_dir {
        Some(dir) => relative_path(dir).ok_or_else(|| {
            StepError::invalid_config(
                "working_dir",
                format!("`{dir}` leaves the workspace; give a path relative to the workspace root"),
            )
        })?,
        None => String::new(),
    };
    let prefix = match &config.prefix {
        Some(p) => {
            let rel = relative_path(p)
                .filter(|r| !r.is_empty() && !p.starts_with('/'))
                .ok_or_else(|| {
                    StepError::invalid_config(
                        "prefix",
                        format!("`{p}` is not a relative directory name such as `app-1.2`"),
                    )
                })?;
            format!("{rel}/")
        }
        None => String::new(),
    };
    let mut excludes = globset::GlobSetBuilder::new();
    for (i, pattern) in config.exclude.iter().enumerate() {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                StepError::invalid_config(format!("exclude[{i}]"), format!("`{pattern}`: {e}"))
            })?;
        excludes.add(glob);
    }
    let excludes = excludes
        .build()
        .map_err(|e| StepError::invalid_config("exclude", e.to_string()))?;

    let base = guest_path(&base_rel);
    let tmp_rel = format!("{output_rel}.partial");
    // Paths relative to the workspace root that are never packed: the archive being
    // written, and the host's own directory.
    let skip = |ws_rel: &str| ws_rel == output_rel || ws_rel == tmp_rel || ws_rel == ".arkline";
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    for (i, path) in config.paths.iter().enumerate() {
        let rel = relative_path(path).ok_or_else(|| {
            StepError::invalid_config(
                format!("paths[{i}]"),
                format!("`{path}` leaves the workspace; give a path relative to `working_dir`"),
            )
        })?;
        let full = join(&base, &rel);
        if fs::symlink_metadata(&full).is_err() {
            return Err(StepError::invalid_config(
                format!("paths[{i}]"),
                format!("`{path}` does not exist in {base}"),
            ));
        }
        collect(&base, &base_rel, &rel, &excludes, &skip, &mut items)?;
    }
    if items.is_empty() {
        return Err(StepError::failed(
            "nothing to pack: every path given is excluded",
        ));
    }

    let output = guest_path(&output_rel);
    let tmp = guest_path(&tmp_rel);
    if let Some(parent) = Path::new(&output).parent() {
        fs::create_dir_all(parent)
            .map_err(|e| StepError::failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    let file = fs::File::create(&tmp)
        .map_err(|e| StepError::failed(format!("cannot create {tmp}: {e}")))?;
    let hashing = HashingWriter::new(io::BufWriter::new(file));
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(hashing, Compression::new(config.level));
    let written = write_tar(gz, &prefix, &items, config.mtime)
        .and_then(|gz| gz.finish())
        .and_then(|mut hashing| {
            hashing.inner.flush()?;
            Ok(hashing)
        });
    let hashing = match written {
        Ok(h) => h,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(StepError::failed(format!("cannot write {output}: {e}")));
        }
    };
    fs::rename(&tmp, &output)
        .map_err(|e| StepError::failed(format!("cannot move {tmp} to {output}: {e}")))?;
    let sha256 = hex::encode(hashing.hasher.finalize());
    let entries = items.len();
    Ok(Outcome::new()
        .output("path", output_rel.clone())
        .output("sha256", sha256.clone())
        .output("size", hashing.count.to_string())
        .output("entries", entries.to_string())
        .summary(format!(
            "{output_rel}: {entries} entries, {} bytes, sha256 {}",
            hashing.count,
            &sha256[..12]
        )))
}

/// Adds `rel` (relative to `base`) and, for a directory, everything under it.
fn collect(
    base: &str,
    base_rel: &str,
    rel: &str,
    excludes: &globset::GlobSet,
    skip: &dyn Fn(&str) -> bool,
    items: &mut BTreeMap<String, Item>,
) -> Result<(), StepError> {
    let ws_rel = if base_rel.is_empty() {
        rel.to_owned()
    } else if rel.is_empty() {
        base_rel.to_owned()
    } else {
        format!("{base_rel}/{rel}")
    };
    if skip(&ws_rel) || (!rel.is_empty() && excludes.is_match(rel)) {
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
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            collect(base, base_rel, &child, excludes, skip, items)?;
        }
    } else if kind.is_file() {
        items.insert(rel.to_owned(), Item::File(full));
    }
    // Anything else (sockets, devices) cannot appear in a WASI view of the workspace.
    Ok(())
}

fn write_tar<W: Write>(
    writer: W,
    prefix: &str,
    items: &BTreeMap<String, Item>,
    mtime: u64,
) -> io::Result<W> {
    let mut tar = tar::Builder::new(writer);
    if !prefix.is_empty() {
        let mut header = header(tar::EntryType::Directory, 0o755, mtime);
        tar.append_data(&mut header, prefix, io::empty())?;
    }
    for (name, item) in items {
        let name = format!("{prefix}{name}");
        match item {
            Item::Dir => {
                let mut header = header(tar::EntryType::Directory, 0o755, mtime);
                tar.append_data(&mut header, format!("{name}/"), io::empty())?;
            }
            Item::File(path) => {
                let file = fs::File::open(path)?;
                let size = file.metadata()?.len();
                let mut header = header(tar::EntryType::Regular, 0o644, mtime);
                header.set_size(size);
                // A file that changes size while packed fails the step rather than
                // writing a corrupt archive.
                let mut reader = file.take(size);
                tar.append_data(&mut header, &name, &mut reader)?;
                if reader.limit() != 0 {
                    return Err(io::Error::other(format!(
                        "{path} shrank while it was packed"
                    )));
                }
            }
            Item::Symlink(target) => {
                let mut header = header(tar::EntryType::Symlink, 0o777, mtime);
                tar.append_link(&mut header, &name, target)?;
            }
        }
    }
    tar.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(0);
    header
}

/// Counts and hashes what passes through to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
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

fn join(base: &str, rel: &str) -> String {
    if rel.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{rel}")
    }
}

/// Runs the `unpack` step.
pub fn unpack(_ctx: &Context, config: Unpack) -> StepResult {
    let archive_rel = relative_path(&config.archive)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            StepError::invalid_config(
                "archive",
                format!(
                    "`{}` is not a file in the workspace; give a path relative to the workspace root",
                    config.archive
                ),
            )
        })?;
    let dest_rel = match &config.destination {
        Some(d) => relative_path(d).ok_or_else(|| {
            StepError::invalid_config(
                "destination",
                format!("`{d}` leaves the workspace; give a path relative to the workspace root"),
            )
        })?,
        None => String::new(),
    };
    let archive = guest_path(&archive_rel);
    let bytes = fs::read(&archive)
        .map_err(|e| StepError::invalid_config("archive", format!("cannot read {archive}: {e}")))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let dest = guest_path(&dest_rel);
    fs::create_dir_all(&dest)
        .map_err(|e| StepError::failed(format!("cannot create {dest}: {e}")))?;
    let reader: Box<dyn Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(&bytes[..]))
    } else {
        Box::new(&bytes[..])
    };
    let stats = extract(reader, &dest, config.strip_components, config.max_bytes)
        .map_err(|e| StepError::failed(format!("cannot unpack {archive_rel}: {e}")))?;
    Ok(Outcome::new()
        .output("files", stats.files.to_string())
        .output("bytes", stats.bytes.to_string())
        .output("sha256", sha256)
        .summary(format!(
            "{archive_rel}: {} files, {} bytes into {}",
            stats.files,
            stats.bytes,
            if dest_rel.is_empty() { "." } else { &dest_rel }
        )))
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    files: u64,
    bytes: u64,
}

/// Extracts a tar stream under `dest` (a directory that exists).
fn extract(reader: impl Read, dest: &str, strip: u32, max_bytes: u64) -> Result<Stats, String> {
    let mut tar = tar::Archive::new(reader);
    let mut stats = Stats::default();
    let entries = tar
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("corrupt archive: {e}"))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8(raw)
            .map_err(|e| format!("entry name {:?} is not UTF-8", e.as_bytes()))?;
        let parts = entry_parts(&name)?;
        let Some(parts) = parts.get(strip as usize..).filter(|p| !p.is_empty()) else {
            continue;
        };
        let rel = parts.join("/");
        check_parents(dest, parts)?;
        let target = format!("{dest}/{rel}");
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&target).map_err(|e| format!("cannot create {target}: {e}"))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                create_parent(&target)?;
                remove_link(&target)?;
                let size = entry.header().size().map_err(|e| format!("{name}: {e}"))?;
                if stats.bytes.saturating_add(size) > max_bytes {
                    return Err(format!(
                        "`{name}` would take the unpacked size past max_bytes ({max_bytes} bytes); raise `max_bytes` if the archive is trusted"
                    ));
                }
                let mut file = fs::File::create(&target)
                    .map_err(|e| format!("cannot create {target}: {e}"))?;
                // Written bytes are counted, not the declared size: headers can lie.
                let copied = io::copy(
                    &mut (&mut entry).take(max_bytes - stats.bytes + 1),
                    &mut file,
                )
                .map_err(|e| format!("cannot write {target}: {e}"))?;
                stats.bytes += copied;
                if stats.bytes > max_bytes {
                    return Err(format!(
                        "unpacked content passed max_bytes ({max_bytes} bytes) at `{name}`"
                    ));
                }
                stats.files += 1;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| format!("symbolic link `{name}` has no target"))?;
                check_link(parts, &link).map_err(|why| {
                    format!("symbolic link `{name}` -> `{link}` is refused: {why}")
                })?;
                create_parent(&target)?;
                remove_link(&target)?;
                symlink(&link, &target)?;
                stats.files += 1;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            other => {
                return Err(format!(
                    "entry `{name}` is a {other:?}; only files, directories and symbolic links are unpacked"
                ));
            }
        }
    }
    Ok(stats)
}

/// The components of an entry name, refusing names that could leave the
/// destination.
fn entry_parts(name: &str) -> Result<Vec<&str>, String> {
    if name.starts_with('/') {
        return Err(format!("entry `{name}` has an absolute name"));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("entry `{name}` climbs out with `..`")),
            p => parts.push(p),
        }
    }
    Ok(parts)
}

/// Refuses to write under a directory component that is a symbolic link: an earlier
/// entry (or the workspace) must not redirect later writes.
fn check_parents(dest: &str, parts: &[&str]) -> Result<(), String> {
    let mut path = dest.to_owned();
    for part in &parts[..parts.len() - 1] {
        path.push('/');
        path.push_str(part);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "`{}` would be written through the symbolic link {path}",
                parts.join("/")
            ));
        }
    }
    Ok(())
}

/// A link target must stay inside the destination, judged lexically from the
/// link's own directory.
fn check_link(parts: &[&str], link: &str) -> Result<(), &'static str> {
    if link.starts_with('/') {
        return Err("its target is absolute");
    }
    let mut depth = parts.len() as i64 - 1;
    for part in link.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err("its target leaves the destination");
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

fn create_parent(target: &str) -> Result<(), String> {
    match Path::new(target).parent() {
        Some(parent) => fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display())),
        None => Ok(()),
    }
}

/// An existing link at the target is replaced, not followed.
fn remove_link(target: &str) -> Result<(), String> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::remove_file(target).map_err(|e| format!("cannot replace the link {target}: {e}"))
        }
        _ => Ok(()),
    }
}

/// Creates the symbolic link `target` pointing at `link`.
fn symlink(link: &str, target: &str) -> Result<(), String> {
    // `std::os::wasi::fs::symlink_path` is unstable (`wasi_ext`) and `std::os::unix`
    // does not exist on WASI; `soft_link` is stable and makes the same WASI call.
    #[allow(deprecated)]
    fs::soft_link(link, target).map_err(|e| format!("cannot create the link {target}: {e}"))
}

arkline_sdk::steps! {
    /// Packs workspace files and directories into a deterministic .tar.gz; outputs its sha256.
    "pack" => pack,
    /// Unpacks a .tar.gz or .tar into the workspace, refusing entries that would leave the destination.
    "unpack" => unpack,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_may_not_leave_the_destination() {
        assert_eq!(entry_parts("a/./b/").expect("plain"), ["a", "b"]);
        assert!(entry_parts("/etc/passwd").is_err());
        assert!(entry_parts("a/../../b").is_err());
    }

    #[test]
    fn links_must_point_inside() {
        assert!(check_link(&["a", "link"], "../b").is_ok());
        assert!(check_link(&["a", "link"], "c/d").is_ok());
        assert!(check_link(&["link"], "../x").is_err());
        assert!(check_link(&["a", "link"], "../../x").is_err());
        assert!(check_link(&["a", "link"], "/etc").is_err());
    }
}
