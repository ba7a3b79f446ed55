//! Execution workspaces and step-cache archives.
//!
//! Each pipeline execution has a directory shared by its steps, which guests see
//! as `/workspace`. [`Workspaces`] lays these out as `root/<engine>/<execution>`.
//!
//! A step may declare `cache: { key, paths }`: workspace-relative files or
//! directories saved after the step succeeds ([`pack`]) and restored before it runs
//! ([`unpack`]) through a blob store this module does not know about.
//!
//! (The module's tests begin with a worked example: `example::pack_and_unpack`.)
//!
//! # Invariants
//!
//! A workspace is written by untrusted guests (and by host programs a `process`
//! step runs), so it may hold symlinks pointing anywhere, sockets and FIFOs. Code
//! here never follows a symlink found in a workspace, never reads anything but
//! regular files, and never writes outside the workspace. Each path component is
//! checked with `symlink_metadata` and files are opened with `O_NOFOLLOW`. The
//! checks and the writes are separate system calls, so [`pack`] and [`unpack`]
//! must not run while a step of the same execution is running; the executor only
//! calls them between steps.
//!
//! Symlinks are kept when their target, read lexically from the link's directory,
//! stays inside the workspace. The target may only go up (`..`) before it names
//! anything: `../lib/x` is checked exactly, while `lib/../../x` depends on whether
//! `lib` is itself a link, which cannot be known without following it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What went wrong with a workspace or a cache archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkspaceError {
    /// An engine or execution name cannot be used as a directory name.
    #[error(
        "`{name}` is not a valid workspace name: {reason} (use a single path component: \
         not empty, no `/`, `\\` or NUL, not `.` or `..`)"
    )]
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A cache path is not a usable workspace-relative path.
    #[error("cache path `{path}` is not usable: {reason}")]
    InvalidPath {
        /// The path as written in the pipeline.
        path: String,
        /// Why it was refused and what to write instead.
        reason: String,
    },
    /// The cached content is larger than allowed.
    #[error(
        "cache content is larger than the limit of {limit} bytes; cache fewer or smaller \
         paths, or raise the limit"
    )]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// An archive entry was refused while restoring a cache: the archive is damaged
    /// or was tampered with, or the workspace holds something the restore will not
    /// write through. Entries before it have been restored.
    #[error("cache archive entry `{entry}` refused: {reason}")]
    Corrupt {
        /// The entry's path in the archive (or where in the archive reading failed).
        entry: String,
        /// Why it was refused and what to do.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The execution workspaces of a host: `root/<engine>/<execution>`.
///
/// A removed workspace is emptied and kept as a spare, in `<root>.spare/`, up to
/// [`MAX_SPARE_WORKSPACES`]; the next [`Workspaces::create`] renames a spare into
/// place instead of making a directory. On ext4 a `mkdir` looks for an inode not
/// recently freed, and under a burst of executions (a directory made and removed
/// for each) that search took 15 % of the host's CPU. A rename allocates nothing.
/// Spares left by an earlier process are removed the first time one is needed.
#[derive(Clone, Debug)]
pub struct Workspaces {
    root: PathBuf,
    spares: Arc<Spares>,
}

/// How many emptied workspace directories are kept for reuse.
pub const MAX_SPARE_WORKSPACES: usize = 1024;

#[derive(Debug)]
struct Spares {
    dir: PathBuf,
    state: Mutex<SpareState>,
}

#[derive(Debug, Default)]
struct SpareState {
    /// Whether the spare directory has been cleared of an earlier process's
    /// spares and made.
    ready: bool,
    /// The owner and mode a workspace is made with (from the first `mkdir`):
    /// only a workspace still so is kept, so a reused one is what a new one is.
    fresh: Option<(u32, u32)>,
    /// Spares ready to use, by number.
    free: Vec<u64>,
    /// Numbers reserved by a removal under way (they count toward the limit).
    pending: usize,
    next: u64,
}

impl Spares {
    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn take(&self) -> Option<u64> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free
            .pop()
    }

    /// A number for a workspace about to become a spare, when there is room and
    /// the owner and mode of a fresh workspace are known.
    fn reserve(&self) -> Option<(u64, (u32, u32))> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = st.fresh?;
        if st.free.len() + st.pending >= MAX_SPARE_WORKSPACES {
            return None;
        }
        if !st.ready {
            // Anything there was left by an earlier process: it goes.
            if remove_tree(&self.dir).is_err() || fs::create_dir_all(&self.dir).is_err() {
                return None;
            }
            st.ready = true;
        }
        st.pending += 1;
        st.next += 1;
        Some((st.next, fresh))
    }

    fn settle(&self, id: u64, kept: bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pending -= 1;
        if kept {
            st.free.push(id);
        }
    }

    fn note_fresh(&self, path: &Path) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.fresh.is_none()
            && let Ok(meta) = fs::symlink_metadata(path)
        {
            st.fresh = Some((meta.uid(), meta.mode() & 0o7777));
        }
    }
}

impl Workspaces {
    /// Workspaces under `root` (created on demand by [`Workspaces::create`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root: PathBuf = root.into();
        let mut dir = root.clone().into_os_string();
        dir.push(".spare");
        Workspaces {
            root,
            spares: Arc::new(Spares {
                dir: dir.into(),
                state: Mutex::new(SpareState::default()),
            }),
        }
    }

    /// Where the workspace of `execution` in `engine` lives: `root/<engine>/<execution>`.
    ///
    /// This only joins paths and does not check the names; [`Workspaces::create`]
    /// checks them and returns the same path.
    pub fn path(&self, engine: &str, execution: &str) -> PathBuf {
        self.root.join(engine).join(execution)
    }

    /// The host's copy of the git objects of `repository` for `engine`, kept
    /// between executions so a checkout fetches only new objects:
    /// `<root>.git/<engine>/<first 16 hex digits of the URL's SHA-256>`. Each
    /// engine has its own, since each has its own credentials. Not created here.
    pub fn git_mirror(&self, engine: &str, repository: &str) -> Result<PathBuf, WorkspaceError> {
        use sha2::{Digest, Sha256};
        check_name(engine)?;
        let digest = Sha256::digest(repository.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let mut dir = self.root.clone().into_os_string();
        dir.push(".git");
        Ok(PathBuf::from(dir).join(engine).join(hex))
    }

    /// Creates the workspace of `execution` (and its parents) and returns its path.
    ///
    /// An existing workspace, left from before a restart, is kept as it is: crash
    /// recovery resumes executions in their workspaces.
    pub fn create(&self, engine: &str, execution: &str) -> Result<PathBuf, WorkspaceError> {
        check_name(engine)?;
        check_name(execution)?;
        let path = self.path(engine, execution);
        if fs::symlink_metadata(&path).is_err()
            && let Some(id) = self.spares.take()
        {
            let spare = self.spares.path(id);
            let mut renamed = fs::rename(&spare, &path);
            if matches!(&renamed, Err(e) if e.kind() == io::ErrorKind::NotFound)
                && let Some(parent) = path.parent()
                && fs::create_dir_all(parent).is_ok()
            {
                renamed = fs::rename(&spare, &path);
            }
            if renamed.is_ok() {
                return Ok(path);
            }
            let _ = fs::remove_dir(&spare);
        }
        fs::create_dir_all(&path).map_err(io_error(&path))?;
        self.spares.note_fresh(&path);
        Ok(path)
    }

    /// Removes the workspace of `execution` and everything in it. Symlinks inside
    /// are removed, never followed. A workspace that does not exist is not an error.
    ///
    /// The emptied directory itself is kept as a spare for the next
    /// [`Workspaces::create`] when there is room and it still has the owner and
    /// mode a new workspace gets.
    pub fn remove(&self, engine: &str, execution: &str) -> Result<(), WorkspaceError> {
        check_name(engine)?;
        check_name(execution)?;
        let path = self.path(engine, execution);
        if let Some((id, (uid, mode))) = self.spares.reserve() {
            let kept = match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.spares.settle(id, false);
                    return Ok(());
                }
                Ok(meta)
                    if meta.is_dir()
                        && meta.uid() == uid
                        && meta.mode() & 0o7777 == mode
                        && !has_xattrs(&path) =>
                {
                    empty_dir(&path).is_ok() && fs::rename(&path, self.spares.path(id)).is_ok()
                }
                _ => false,
            };
            self.spares.settle(id, kept);
            if kept {
                return Ok(());
            }
        }
        remove_tree(&path)
    }

    #[cfg(test)]
    /// Removes the workspaces of every execution of `engine`, as [`Workspaces::remove`]
    /// does for one.
    pub fn remove_engine(&self, engine: &str) -> Result<(), WorkspaceError> {
        check_name(engine)?;
        let mut mirrors = self.root.clone().into_os_string();
        mirrors.push(".git");
        remove_tree(&PathBuf::from(mirrors).join(engine))?;
        remove_tree(&self.root.join(engine))
    }
}

fn check_name(name: &str) -> Result<(), WorkspaceError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "it names a directory, not a child of one"
    } else if name.contains(['/', '\\']) {
        "it contains a path separator"
    } else if name.contains('\0') {
        "it contains NUL"
    } else {
        return Ok(());
    };
    Err(WorkspaceError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Whether `path` itself carries extended attributes (ACLs are some): a step
/// could leave data or grants there for whoever gets the directory next, so
/// such a workspace is removed, not kept. `true` when it cannot be told.
fn has_xattrs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: a NUL-terminated path and no buffer (size 0): the call only
    // returns the size the list would need.
    let size = unsafe { libc::llistxattr(c_path.as_ptr(), std::ptr::null_mut(), 0) };
    size != 0
}

/// Removes everything in the directory `path`, not following symlinks.
fn empty_dir(path: &Path) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn remove_tree(path: &Path) -> Result<(), WorkspaceError> {
    // `remove_dir_all` removes symlinks without following them (and does so
    // without a race since Rust 1.58.1).
    match fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        result => result.map_err(io_error(path)),
    }
}

/// Checks a cache path as written in a pipeline and returns it normalised
/// (`./target/` → `target`).
///
/// Cache paths are relative to the workspace, have no `..` components and do not
/// name the workspace itself. [`pack`] checks every path with this; pipeline
/// validation can call it to report a bad path before anything runs.
pub fn parse_cache_path(path: &str) -> Result<PathBuf, WorkspaceError> {
    let invalid = |reason: &str| WorkspaceError::InvalidPath {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    const ABSOLUTE: &str = "it is absolute; cache paths are relative to the workspace \
                            (write `target`, not `/workspace/target`)";
    if path.is_empty() {
        return Err(invalid(
            "it is empty; name a file or directory relative to the workspace, e.g. `target`",
        ));
    }
    if path.contains('\0') {
        return Err(invalid("it contains NUL"));
    }
    let mut normalised = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => normalised.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(invalid(
                    "it contains `..`; cache paths must stay inside the workspace",
                ));
            }
            Component::RootDir | Component::Prefix(_) => return Err(invalid(ABSOLUTE)),
        }
    }
    if normalised.as_os_str().is_empty() {
        return Err(invalid(
            "it names the workspace itself; name the directories to cache, e.g. `target`",
        ));
    }
    Ok(normalised)
}

/// Checks that a symlink at workspace-relative `link` pointing at `target` stays
/// inside the workspace; the reason it does not otherwise.
fn check_symlink_target(link: &Path, target: &Path) -> Result<(), &'static str> {
    if target.as_os_str().is_empty() {
        return Err("its target is empty");
    }
    // `link` is normalised (only names), so its parent's depth is its component
    // count less one.
    let mut depth = link.components().count().saturating_sub(1);
    let mut named = false;
    for component in target.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(_) => named = true,
            Component::ParentDir if named => {
                return Err("its target has `..` after a name, which could only be \
                            checked by following links");
            }
            Component::ParentDir => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("its target leaves the workspace")?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("its target is absolute (only relative links are kept)");
            }
        }
    }
    Ok(())
}

/// A cache archive made by [`pack`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    /// The tar archive.
    pub bytes: Vec<u8>,
    /// Regular files stored (directories and symlinks are not counted).
    pub files: u64,
    /// Bytes of file content stored.
    pub content_bytes: u64,
    /// What was left out and why, one line each (`target: does not exist …`).
    pub skipped: Vec<String>,
}

/// What [`unpack`] restored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Regular files written (directories and symlinks are not counted).
    pub files: u64,
    /// Bytes of file content written.
    pub content_bytes: u64,
}

/// One thing found under a cache path.
enum Node {
    Dir,
    File { size: u64, executable: bool },
    Symlink(PathBuf),
}

/// Packs the cache `paths` of a step (workspace-relative files or directories)
/// into a deterministic tar archive.
///
/// Every path is checked with [`parse_cache_path`] first; a bad one fails the whole
/// call. A path that does not exist, or that lies under a symlink, is skipped and
/// listed in [`Packed::skipped`]. Directories are walked without following
/// symlinks; regular files (mode 0644, or 0755 if executable), directories and
/// symlinks whose target stays inside the workspace are stored, while escaping
/// symlinks, sockets, FIFOs and devices are skipped and listed.
///
/// The archive depends only on the content: entries are sorted by path, with
/// mtime 0, uid and gid 0 and no user or group names (GNU headers). Fails with
/// [`WorkspaceError::TooLarge`] as soon as the walk counts more than `max_bytes`
/// of file content, before reading any file.
pub fn pack(workspace: &Path, paths: &[String], max_bytes: u64) -> Result<Packed, WorkspaceError> {
    let mut roots = paths
        .iter()
        .map(|path| parse_cache_path(path))
        .collect::<Result<Vec<_>, _>>()?;
    roots.sort();
    roots.dedup();
    // `a` covers `a/b`; in component order a path's descendants follow it.
    let mut covering: Vec<PathBuf> = Vec::with_capacity(roots.len());
    for root in roots {
        if !covering.iter().any(|kept| root.starts_with(kept)) {
            covering.push(root);
        }
    }

    let mut walk = Walk {
        workspace,
        max_bytes,
        nodes: BTreeMap::new(),
        skipped: Vec::new(),
        content_bytes: 0,
    };
    for root in &covering {
        walk.root(root)?;
    }
    let Walk { nodes, skipped, .. } = walk;

    let mut builder = tar::Builder::new(Vec::new());
    let mut files = 0;
    let mut content_bytes = 0;
    for (rel, node) in &nodes {
        let abs = workspace.join(rel);
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        let appended = match node {
            Node::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, rel, io::empty())
            }
            Node::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, rel, target)
            }
            Node::File { size, executable } => {
                let content = read_file(&abs, *size)?;
                files += 1;
                content_bytes += content.len() as u64;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                header.set_size(content.len() as u64);
                builder.append_data(&mut header, rel, content.as_slice())
            }
        };
        appended.map_err(io_error(&abs))?;
    }
    let bytes = builder.into_inner().map_err(io_error(workspace))?;
    tracing::debug!(
        workspace = %workspace.display(),
        entries = nodes.len(),
        files,
        content_bytes,
        skipped = skipped.len(),
        "packed step cache"
    );
    Ok(Packed {
        bytes,
        files,
        content_bytes,
        skipped,
    })
}

/// Reads at most `size` bytes (the size seen while walking, already counted
/// against the cap) of the regular file at `path`, without following a symlink
/// or blocking on a FIFO put there since.
fn read_file(path: &Path, size: u64) -> Result<Vec<u8>, WorkspaceError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_error(path))?;
    let metadata = file.metadata().map_err(io_error(path))?;
    if !metadata.is_file() {
        return Err(WorkspaceError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("changed into a non-regular file while packing"),
        });
    }
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(size)
        .read_to_end(&mut content)
        .map_err(io_error(path))?;
    Ok(content)
}

struct Walk<'a> {
    workspace: &'a Path,
    max_bytes: u64,
    nodes: BTreeMap<PathBuf, Node>,
    skipped: Vec<String>,
    content_bytes: u64,
}

impl Walk<'_> {
    fn skip(&mut self, rel: &Path, reason: impl std::fmt::Display) {
        let line = format!("{}: {reason}", rel.display());
        tracing::debug!(skipped = %line, "cache path skipped");
        self.skipped.push(line);
    }

    /// Adds a cache path given by the step.
    fn root(&mut self, rel: &Path) -> Result<(), WorkspaceError> {
        // Refuse to go through a symlinked parent (`target -> /etc` with a cache
        // path `target/debug`).
        let mut prefix = PathBuf::new();
        if let Some(parent) = rel.parent() {
            for component in parent.components() {
                prefix.push(component);
                let abs = self.workspace.join(&prefix);
                match fs::symlink_metadata(&abs) {
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        self.skip(rel, "does not exist (nothing to cache yet)");
                        return Ok(());
                    }
                    Err(error) => return Err(io_error(&abs)(error)),
                    Ok(metadata) if metadata.file_type().is_symlink() => {
                        self.skip(
                            rel,
                            format_args!(
                                "`{}` is a symlink, and cache paths are never followed \
                                 through symlinks",
                                prefix.display()
                            ),
                        );
                        return Ok(());
                    }
                    Ok(metadata) if !metadata.is_dir() => {
                        self.skip(
                            rel,
                            format_args!("`{}` is not a directory", prefix.display()),
                        );
                        return Ok(());
                    }
                    Ok(_) => {}
                }
            }
        }
        let abs = self.workspace.join(rel);
        match fs::symlink_metadata(&abs) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.skip(rel, "does not exist (nothing to cache yet)");
                Ok(())
            }
            Err(error) => Err(io_error(&abs)(error)),
            Ok(metadata) => self.walk(rel.to_path_buf(), &metadata),
        }
    }

    /// Adds `rel` and, for a directory, everything under it. Iterative, so a deep
    /// tree cannot overflow the stack.
    fn walk(&mut self, rel: PathBuf, metadata: &fs::Metadata) -> Result<(), WorkspaceError> {
        let mut dirs = Vec::new();
        if self.add(&rel, metadata)? {
            dirs.push(rel);
        }
        while let Some(dir) = dirs.pop() {
            let abs = self.workspace.join(&dir);
            for entry in fs::read_dir(&abs).map_err(io_error(&abs))? {
                let entry = entry.map_err(io_error(&abs))?;
                let child = dir.join(entry.file_name());
                // `DirEntry::metadata` does not follow symlinks on Unix.
                let metadata = entry
                    .metadata()
                    .map_err(io_error(&self.workspace.join(&child)))?;
                if self.add(&child, &metadata)? {
                    dirs.push(child);
                }
            }
        }
        Ok(())
    }

    /// Records one node; true when it is a directory to descend into.
    fn add(&mut self, rel: &Path, metadata: &fs::Metadata) -> Result<bool, WorkspaceError> {
        if self.nodes.contains_key(rel) {
            return Ok(false);
        }
        let file_type = metadata.file_type();
        let node = if file_type.is_dir() {
            Node::Dir
        } else if file_type.is_file() {
            let size = metadata.len();
            self.content_bytes = self.content_bytes.saturating_add(size);
            if self.content_bytes > self.max_bytes {
                return Err(WorkspaceError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            Node::File {
                size,
                executable: metadata.permissions().mode() & 0o111 != 0,
            }
        } else if file_type.is_symlink() {
            let abs = self.workspace.join(rel);
            let target = fs::read_link(&abs).map_err(io_error(&abs))?;
            if let Err(reason) = check_symlink_target(rel, &target) {
                self.skip(
                    rel,
                    format_args!("symlink to `{}` not kept: {reason}", target.display()),
                );
                return Ok(false);
            }
            Node::Symlink(target)
        } else {
            let kind = if file_type.is_socket() {
                "a socket"
            } else if file_type.is_fifo() {
                "a FIFO"
            } else if file_type.is_block_device() || file_type.is_char_device() {
                "a device"
            } else {
                "not a regular file"
            };
            self.skip(
                rel,
                format_args!("is {kind}; only files, directories and symlinks are cached"),
            );
            return Ok(false);
        };
        let descend = matches!(node, Node::Dir);
        self.nodes.insert(rel.to_path_buf(), node);
        Ok(descend)
    }
}

/// Restores a cache archive made by [`pack`] into `workspace`.
///
/// The archive is read from storage, so it is checked as untrusted input, entry
/// by entry: absolute paths, `..`, hard links, devices, FIFOs and symlinks whose
/// target leaves the workspace are refused, and nothing is written through a
/// symlink already in the workspace (a step may have planted `target -> /etc`).
/// Existing files, symlinks and directories in the way of an entry are removed and
/// replaced (a directory entry keeps an existing directory); other workspace
/// content is left alone. More than `max_bytes` of file content fails with
/// [`WorkspaceError::TooLarge`].
///
/// On error the entries before the failing one stay restored; nothing is ever
/// written outside the workspace.
pub fn unpack(workspace: &Path, bytes: &[u8], max_bytes: u64) -> Result<Unpacked, WorkspaceError> {
    let mut archive = tar::Archive::new(bytes);
    let entries = archive.entries().map_err(|error| WorkspaceError::Corrupt {
        entry: "(start of archive)".to_owned(),
        reason: format!("the archive cannot be read: {error}"),
    })?;
    let mut restored = Unpacked::default();
    let mut last = None::<String>;
    for entry in entries {
        let entry = entry.map_err(|error| WorkspaceError::Corrupt {
            entry: match &last {
                Some(last) => format!("(after {last})"),
                None => "(start of archive)".to_owned(),
            },
            reason: format!("the archive cannot be read: {error}"),
        })?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        restore_entry(workspace, entry, &name, max_bytes, &mut restored)?;
        last = Some(name);
    }
    tracing::debug!(
        workspace = %workspace.display(),
        files = restored.files,
        content_bytes = restored.content_bytes,
        "restored step cache"
    );
    Ok(restored)
}

fn restore_entry(
    workspace: &Path,
    mut entry: tar::Entry<'_, &[u8]>,
    name: &str,
    max_bytes: u64,
    restored: &mut Unpacked,
) -> Result<(), WorkspaceError> {
    let corrupt = |reason: String| WorkspaceError::Corrupt {
        entry: name.to_owned(),
        reason,
    };
    let rel = archive_path(&entry.path_bytes()).map_err(|reason| corrupt(reason.to_owned()))?;
    let kind = entry.header().entry_type();
    let abs = workspace.join(&rel);
    if kind.is_file() {
        let size = entry.size();
        let total = restored.content_bytes.saturating_add(size);
        if total > max_bytes {
            return Err(WorkspaceError::TooLarge { limit: max_bytes });
        }
        let mode = entry
            .header()
            .mode()
            .map_err(|error| corrupt(format!("its mode cannot be read: {error}")))?;
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        make_parents(workspace, &rel, name)?;
        clear(&abs, false)?;
        // `create_new` (O_EXCL) and O_NOFOLLOW: a symlink appearing here since
        // `clear` makes the open fail rather than be followed.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&abs)
            .map_err(io_error(&abs))?;
        let written = io::copy(&mut (&mut entry).take(size), &mut file).map_err(io_error(&abs))?;
        if written != size {
            return Err(corrupt(format!(
                "the archive ends inside it ({written} of {size} bytes)"
            )));
        }
        // Exact mode regardless of the umask; through the open file, not the path.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error(&abs))?;
        restored.files += 1;
        restored.content_bytes = total;
    } else if kind.is_dir() {
        make_parents(workspace, &rel, name)?;
        if !clear(&abs, true)? {
            fs::create_dir(&abs).map_err(io_error(&abs))?;
        }
    } else if kind.is_symlink() {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| corrupt("the symlink has no target".to_owned()))?;
        let target = Path::new(OsStr::from_bytes(&target)).to_path_buf();
        check_symlink_target(&rel, &target).map_err(|reason| {
            corrupt(format!(
                "symlink to `{}` not created: {reason}",
                target.display()
            ))
        })?;
        make_parents(workspace, &rel, name)?;
        clear(&abs, false)?;
        std::os::unix::fs::symlink(&target, &abs).map_err(io_error(&abs))?;
    } else {
        let what = if kind.is_hard_link() {
            "a hard link"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_block_special() || kind.is_character_special() {
            "a device"
        } else {
            "an entry type cache archives do not use"
        };
        return Err(corrupt(format!(
            "it is {what}; cache archives hold only files, directories and symlinks, so \
             this one was not made by arkline: delete this cache entry"
        )));
    }
    Ok(())
}

/// An archive entry's path as a normalised workspace-relative path.
fn archive_path(bytes: &[u8]) -> Result<PathBuf, &'static str> {
    if bytes.contains(&0) {
        return Err("its path contains NUL");
    }
    let mut rel = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(bytes)).components() {
        match component {
            Component::Normal(name) => rel.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(
                    "its path contains `..`; cache archives never hold such paths, \
                            so this one is damaged or was not made by arkline: delete this \
                            cache entry",
                );
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(
                    "its path is absolute; cache archives never hold such paths, \
                            so this one is damaged or was not made by arkline: delete this \
                            cache entry",
                );
            }
        }
    }
    if rel.as_os_str().is_empty() {
        return Err("its path names no file");
    }
    Ok(rel)
}

/// Creates the missing parent directories of workspace-relative `rel`, refusing
/// to go through a symlink or a non-directory in the workspace.
fn make_parents(workspace: &Path, rel: &Path, name: &str) -> Result<(), WorkspaceError> {
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    let mut prefix = PathBuf::new();
    for component in parent.components() {
        prefix.push(component);
        let abs = workspace.join(&prefix);
        match fs::symlink_metadata(&abs) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&abs).map_err(io_error(&abs))?;
            }
            Err(error) => return Err(io_error(&abs)(error)),
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(WorkspaceError::Corrupt {
                    entry: name.to_owned(),
                    reason: format!(
                        "`{}` in the workspace is a symlink and the restore never writes \
                         through symlinks; a step may have planted it: remove it before \
                         restoring",
                        prefix.display()
                    ),
                });
            }
            Ok(metadata) if !metadata.is_dir() => {
                return Err(WorkspaceError::Corrupt {
                    entry: name.to_owned(),
                    reason: format!(
                        "`{}` in the workspace is not a directory; remove it before restoring",
                        prefix.display()
                    ),
                });
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Removes whatever is at `abs` (not following a symlink there), except a real
/// directory when `keep_dir`. True when a kept directory is there.
fn clear(abs: &Path, keep_dir: bool) -> Result<bool, WorkspaceError> {
    match fs::symlink_metadata(abs) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error(abs)(error)),
        Ok(metadata) if metadata.is_dir() => {
            if keep_dir {
                Ok(true)
            } else {
                fs::remove_dir_all(abs).map_err(io_error(abs))?;
                Ok(false)
            }
        }
        Ok(_) => {
            fs::remove_file(abs).map_err(io_error(abs))?;
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const LIMIT: u64 = 1 << 20;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// (path, entry type, link target) of every entry, in archive order.
    fn entries(bytes: &[u8]) -> Vec<(String, tar::EntryType, Option<String>)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let link = entry
                    .link_name()
                    .unwrap()
                    .map(|link| link.display().to_string());
                (
                    entry.path().unwrap().display().to_string(),
                    entry.header().entry_type(),
                    link,
                )
            })
            .collect()
    }

    fn names(bytes: &[u8]) -> Vec<String> {
        entries(bytes).into_iter().map(|(name, ..)| name).collect()
    }

    fn paths(list: &[&str]) -> Vec<String> {
        list.iter().map(|path| path.to_string()).collect()
    }

    /// A one-entry archive whose name (and link name) bytes are written straight
    /// into the header, bypassing the tar crate's own checks.
    fn raw_archive(name: &[u8], kind: tar::EntryType, content: &[u8], link: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_entry_type(kind);
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, content).unwrap();
        builder.into_inner().unwrap()
    }

    /// A workspace under a temporary root, with room beside it for "outside".
    fn workspace() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let ws = root.path().join("ws");
        fs::create_dir(&ws).unwrap();
        (root, ws)
    }

    fn write(path: &Path, content: &[u8], mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn workspaces_are_created_idempotently_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let workspaces = Workspaces::new(root.path().join("workspaces"));
        let path = workspaces.path("eng", "run-1");
        assert_eq!(path, root.path().join("workspaces/eng/run-1"));

        assert_eq!(workspaces.create("eng", "run-1").unwrap(), path);
        assert!(path.is_dir());
        fs::write(path.join("state"), b"before restart").unwrap();
        assert_eq!(workspaces.create("eng", "run-1").unwrap(), path);
        assert_eq!(fs::read(path.join("state")).unwrap(), b"before restart");

        let other = workspaces.create("eng", "run-2").unwrap();
        workspaces.remove("eng", "run-1").unwrap();
        assert!(!path.exists());
        assert!(other.is_dir());
        workspaces.remove("eng", "run-1").unwrap();

        workspaces.remove_engine("eng").unwrap();
        assert!(!root.path().join("workspaces/eng").exists());
        assert!(root.path().join("workspaces").is_dir());
        workspaces.remove_engine("eng").unwrap();
    }

    /// A directory made as a new workspace is (same umask), to compare modes.
    fn first_mode_probe(root: &tempfile::TempDir) -> PathBuf {
        let probe = root.path().join("probe");
        let _ = fs::create_dir(&probe);
        probe
    }

    #[test]
    fn removed_workspaces_are_emptied_and_reused() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        // Left by an earlier process: cleared before the first spare is kept.
        write(&root.path().join("workspaces.spare/1/old"), b"stale", 0o644);
        let workspaces = Workspaces::new(root.path().join("workspaces"));

        let first = workspaces.create("eng", "run-1").unwrap();
        let inode = fs::metadata(&first).unwrap().ino();
        write(&first.join("dir/file"), b"content", 0o644);
        let outside = root.path().join("outside");
        write(&outside.join("precious"), b"keep me", 0o644);
        symlink(&outside, first.join("link")).unwrap();
        workspaces.remove("eng", "run-1").unwrap();
        assert!(!first.exists());
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
        let spares: Vec<_> = fs::read_dir(root.path().join("workspaces.spare"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(spares.len(), 1, "{spares:?}");

        // The next workspace is the same directory, empty, in another engine too.
        let second = workspaces.create("other", "run-2").unwrap();
        assert_eq!(fs::metadata(&second).unwrap().ino(), inode);
        assert_eq!(fs::read_dir(&second).unwrap().count(), 0);
        assert_eq!(
            fs::read_dir(root.path().join("workspaces.spare"))
                .unwrap()
                .count(),
            0
        );

        // A workspace whose mode a step changed is removed, not kept.
        fs::set_permissions(&second, fs::Permissions::from_mode(0o700)).unwrap();
        workspaces.remove("other", "run-2").unwrap();
        assert!(!second.exists());
        let third = workspaces.create("eng", "run-3").unwrap();
        // (Inode numbers are reused: the mode tells the two apart.)
        assert_eq!(
            fs::metadata(&third).unwrap().mode() & 0o7777,
            fs::metadata(first_mode_probe(&root)).unwrap().mode() & 0o7777
        );
        // One carrying an extended attribute (data or an ACL a step left for
        // the next user) is removed, not kept.
        let attr = std::ffi::CString::new(third.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path and name; a 1-byte value.
        let set = unsafe {
            libc::setxattr(
                attr.as_ptr(),
                c"user.left-behind".as_ptr(),
                b"x".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(set, 0, "setxattr: {}", io::Error::last_os_error());
        workspaces.remove("eng", "run-3").unwrap();
        assert!(!third.exists());
        assert_eq!(
            fs::read_dir(root.path().join("workspaces.spare"))
                .unwrap()
                .count(),
            0
        );
        // Removing what is not there is still no error, and keeps nothing.
        workspaces.remove("eng", "run-9").unwrap();
        assert_eq!(
            fs::read_dir(root.path().join("workspaces.spare"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn bad_workspace_names_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let workspaces = Workspaces::new(root.path().join("workspaces"));
        for bad in ["", ".", "..", "a/b", "/abs", "a\\b", "a\0b"] {
            for result in [
                workspaces.create(bad, "run").map(drop),
                workspaces.create("eng", bad).map(drop),
                workspaces.remove("eng", bad),
                workspaces.remove_engine(bad),
            ] {
                match result {
                    Err(error @ WorkspaceError::InvalidName { .. }) => {
                        let message = error.to_string();
                        assert!(message.contains("not a valid workspace name"), "{message}");
                    }
                    other => panic!("{bad:?}: expected InvalidName, got {other:?}"),
                }
            }
        }
        assert!(!root.path().join("workspaces").exists());
    }

    #[test]
    fn remove_does_not_follow_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        write(&outside.join("precious"), b"keep me", 0o644);
        let workspaces = Workspaces::new(root.path().join("workspaces"));
        let ws = workspaces.create("eng", "run").unwrap();
        symlink(&outside, ws.join("absolute")).unwrap();
        fs::create_dir(ws.join("dir")).unwrap();
        symlink("../../../../outside", ws.join("dir/relative")).unwrap();

        workspaces.remove("eng", "run").unwrap();
        assert!(!ws.exists());
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
    }

    #[test]
    fn pack_and_unpack_round_trip() {
        let (_root, ws) = workspace();
        write(&ws.join("target/debug/app"), b"binary", 0o755);
        write(&ws.join("target/debug/libx.rlib"), b"rlib", 0o600);
        write(&ws.join("target/.rustc_info.json"), b"{}", 0o644);
        fs::create_dir_all(ws.join("target/empty")).unwrap();
        symlink("debug/app", ws.join("target/latest")).unwrap();
        symlink("../.rustc_info.json", ws.join("target/debug/info")).unwrap();
        let deep = format!("target/{}/file", "d".repeat(120));
        write(&ws.join(&deep), b"deep", 0o644);
        write(&ws.join(".cargo/registry/index/config"), b"cfg", 0o644);
        write(&ws.join("src/main.rs"), b"not cached", 0o644);

        let packed = pack(&ws, &paths(&["target", ".cargo/registry"]), LIMIT).unwrap();
        assert_eq!(packed.files, 5);
        assert_eq!(packed.content_bytes, 6 + 4 + 2 + 4 + 3);
        assert!(packed.skipped.is_empty(), "{:?}", packed.skipped);
        let listed = names(&packed.bytes);
        assert!(listed.contains(&deep), "{listed:?}");
        assert!(!listed.iter().any(|name| name.starts_with("src")));

        let (_root2, fresh) = workspace();
        let unpacked = unpack(&fresh, &packed.bytes, LIMIT).unwrap();
        assert_eq!(
            unpacked,
            Unpacked {
                files: packed.files,
                content_bytes: packed.content_bytes
            }
        );
        assert_eq!(fs::read(fresh.join("target/debug/app")).unwrap(), b"binary");
        assert_eq!(mode(&fresh.join("target/debug/app")), 0o755);
        assert_eq!(
            fs::read(fresh.join("target/debug/libx.rlib")).unwrap(),
            b"rlib"
        );
        assert_eq!(mode(&fresh.join("target/debug/libx.rlib")), 0o644);
        assert_eq!(fs::read(fresh.join(&deep)).unwrap(), b"deep");
        assert!(fresh.join("target/empty").is_dir());
        assert_eq!(
            fs::read_link(fresh.join("target/latest")).unwrap(),
            Path::new("debug/app")
        );
        assert_eq!(fs::read(fresh.join("target/latest")).unwrap(), b"binary");
        assert_eq!(fs::read(fresh.join("target/debug/info")).unwrap(), b"{}");
        assert_eq!(
            fs::read(fresh.join(".cargo/registry/index/config")).unwrap(),
            b"cfg"
        );
        assert!(!fresh.join("src").exists());
    }

    #[test]
    fn packing_is_deterministic() {
        let (_root, ws) = workspace();
        write(&ws.join("target/b"), b"bee", 0o644);
        write(&ws.join("target/a/x"), b"ex", 0o755);
        write(&ws.join("target/a-z"), b"dash", 0o644);
        symlink("a/x", ws.join("target/link")).unwrap();
        let first = pack(&ws, &paths(&["target"]), LIMIT).unwrap();

        // Other mtimes, a permission change that keeps the executable bit, and
        // the path spelt differently: same bytes.
        let then = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for file in ["target/b", "target/a/x", "target/a-z"] {
            let file = fs::File::options().write(true).open(ws.join(file)).unwrap();
            file.set_modified(then).unwrap();
        }
        fs::set_permissions(ws.join("target/b"), fs::Permissions::from_mode(0o600)).unwrap();
        let second = pack(&ws, &paths(&["./target/", "target/a"]), LIMIT).unwrap();
        assert_eq!(first.bytes, second.bytes);

        let mut archive = tar::Archive::new(first.bytes.as_slice());
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 0);
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            assert_eq!(header.username_bytes(), Some(&[][..]));
            assert_eq!(header.groupname_bytes(), Some(&[][..]));
        }
        let listed = names(&first.bytes);
        let mut sorted = listed.clone();
        sorted.sort_by(|a, b| Path::new(a).cmp(Path::new(b)));
        assert_eq!(listed, sorted);
    }

    #[test]
    fn missing_paths_are_skipped() {
        let (_root, ws) = workspace();
        write(&ws.join("target/x"), b"x", 0o644);
        let packed = pack(&ws, &paths(&["target", "node_modules", "a/b"]), LIMIT).unwrap();
        assert_eq!(names(&packed.bytes), ["target", "target/x"]);
        assert_eq!(
            packed.skipped,
            [
                "a/b: does not exist (nothing to cache yet)",
                "node_modules: does not exist (nothing to cache yet)",
            ]
        );

        let (_root2, empty) = workspace();
        let packed = pack(&empty, &paths(&["target"]), LIMIT).unwrap();
        assert_eq!(packed.files, 0);
        assert_eq!(
            unpack(&empty, &packed.bytes, LIMIT).unwrap(),
            Unpacked::default()
        );
    }

    #[test]
    fn escaping_symlinks_are_skipped_not_followed() {
        let (root, ws) = workspace();
        let outside = root.path().join("outside");
        write(&outside.join("secret.txt"), b"TOP-SECRET-CONTENT", 0o644);
        write(&ws.join("target/ok"), b"ok", 0o644);
        fs::create_dir(ws.join("target/sub")).unwrap();
        symlink(&outside, ws.join("target/absolute")).unwrap();
        symlink("../../outside", ws.join("target/relative")).unwrap();
        symlink("sub/../../../outside", ws.join("target/sneaky")).unwrap();
        symlink("../target", ws.join("target/inside")).unwrap();
        symlink("../outside", ws.join("escape")).unwrap();

        let packed = pack(&ws, &paths(&["target", "escape"]), LIMIT).unwrap();
        assert_eq!(
            names(&packed.bytes),
            ["target", "target/inside", "target/ok", "target/sub"]
        );
        assert!(
            !packed
                .bytes
                .windows(b"TOP-SECRET".len())
                .any(|window| window == b"TOP-SECRET")
        );
        assert_eq!(packed.skipped.len(), 4, "{:?}", packed.skipped);
        let skipped = packed.skipped.join("\n");
        assert!(
            skipped.contains(
                "escape: symlink to `../outside` not kept: its target leaves the workspace"
            ),
            "{skipped}"
        );
        assert!(skipped.contains("target/absolute: symlink to"), "{skipped}");
        assert!(skipped.contains("its target is absolute"), "{skipped}");
        assert!(
            skipped.contains("target/relative: symlink to `../../outside`"),
            "{skipped}"
        );
        assert!(
            skipped.contains(
                "target/sneaky: symlink to `sub/../../../outside` not kept: \
                 its target has `..` after a name"
            ),
            "{skipped}"
        );
    }

    #[test]
    fn paths_under_a_symlinked_parent_are_skipped() {
        let (root, ws) = workspace();
        let outside = root.path().join("outside");
        write(&outside.join("debug/secret"), b"TOP-SECRET-CONTENT", 0o644);
        symlink(&outside, ws.join("target")).unwrap();

        let packed = pack(&ws, &paths(&["target/debug"]), LIMIT).unwrap();
        assert!(names(&packed.bytes).is_empty());
        assert_eq!(
            packed.skipped,
            [
                "target/debug: `target` is a symlink, and cache paths are never followed \
              through symlinks"
            ]
        );
    }

    #[test]
    fn special_files_are_skipped() {
        let (_root, ws) = workspace();
        write(&ws.join("target/x"), b"x", 0o644);
        let _listener = std::os::unix::net::UnixListener::bind(ws.join("target/sock")).unwrap();
        let packed = pack(&ws, &paths(&["target"]), LIMIT).unwrap();
        assert_eq!(names(&packed.bytes), ["target", "target/x"]);
        assert_eq!(
            packed.skipped,
            ["target/sock: is a socket; only files, directories and symlinks are cached"]
        );
    }

    #[test]
    fn bad_cache_paths_are_refused() {
        let (_root, ws) = workspace();
        assert_eq!(parse_cache_path("./target/").unwrap(), Path::new("target"));
        assert_eq!(
            parse_cache_path(".cargo//registry").unwrap(),
            Path::new(".cargo/registry")
        );
        for (bad, expected) in [
            ("/workspace/target", "relative to the workspace"),
            ("../target", "contains `..`"),
            ("a/../../b", "contains `..`"),
            ("", "it is empty"),
            (".", "names the workspace itself"),
            ("./", "names the workspace itself"),
        ] {
            match pack(&ws, &paths(&["target", bad]), LIMIT) {
                Err(error @ WorkspaceError::InvalidPath { .. }) => {
                    let message = error.to_string();
                    assert!(message.contains(&format!("`{bad}`")), "{message}");
                    assert!(message.contains(expected), "{message}");
                }
                other => panic!("{bad:?}: expected InvalidPath, got {other:?}"),
            }
        }
    }

    #[test]
    fn content_over_the_cap_is_too_large() {
        let (_root, ws) = workspace();
        write(&ws.join("target/a"), &[1; 100], 0o644);
        write(&ws.join("target/b"), &[2; 100], 0o644);
        match pack(&ws, &paths(&["target"]), 150) {
            Err(error @ WorkspaceError::TooLarge { limit: 150 }) => {
                assert!(error.to_string().contains("limit of 150 bytes"), "{error}");
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let packed = pack(&ws, &paths(&["target"]), 200).unwrap();
        assert_eq!(packed.content_bytes, 200);

        let (_root2, fresh) = workspace();
        assert!(matches!(
            unpack(&fresh, &packed.bytes, 150),
            Err(WorkspaceError::TooLarge { limit: 150 })
        ));
        assert_eq!(fs::read(fresh.join("target/a")).unwrap(), [1; 100]);
        assert!(!fresh.join("target/b").exists());
        assert_eq!(
            unpack(&fresh, &packed.bytes, 200).unwrap().content_bytes,
            200
        );
    }

    #[test]
    fn overlapping_paths_are_stored_once() {
        let (_root, ws) = workspace();
        write(&ws.join("a/b/c.txt"), b"c", 0o644);
        write(&ws.join("a/d"), b"d", 0o644);
        let packed = pack(&ws, &paths(&["a/b", "a", "a/b/c.txt", "a"]), LIMIT).unwrap();
        assert_eq!(names(&packed.bytes), ["a", "a/b", "a/b/c.txt", "a/d"]);
        assert_eq!((packed.files, packed.content_bytes), (2, 2));
        assert_eq!(
            packed.bytes,
            pack(&ws, &paths(&["a"]), LIMIT).unwrap().bytes
        );
    }

    fn assert_refused(result: Result<Unpacked, WorkspaceError>, entry: &str, reason: &str) {
        match result {
            Err(WorkspaceError::Corrupt {
                entry: refused,
                reason: why,
            }) => {
                assert_eq!(refused, entry);
                assert!(why.contains(reason), "{why}");
            }
            other => panic!("expected {entry} refused, got {other:?}"),
        }
    }

    #[test]
    fn unpack_refuses_paths_out_of_the_workspace() {
        let (root, ws) = workspace();
        let archive = raw_archive(b"../evil", tar::EntryType::Regular, b"pwned", b"");
        assert_refused(unpack(&ws, &archive, LIMIT), "../evil", "contains `..`");
        let archive = raw_archive(b"ok/../../evil", tar::EntryType::Regular, b"pwned", b"");
        assert_refused(
            unpack(&ws, &archive, LIMIT),
            "ok/../../evil",
            "contains `..`",
        );
        assert!(!root.path().join("evil").exists());
        assert!(!ws.join("ok").exists());

        let absolute = root.path().join("absolute-evil");
        let name = absolute.as_os_str().as_bytes();
        let archive = raw_archive(name, tar::EntryType::Regular, b"pwned", b"");
        assert_refused(
            unpack(&ws, &archive, LIMIT),
            &absolute.display().to_string(),
            "is absolute",
        );
        assert!(!absolute.exists());
        assert_eq!(fs::read_dir(&ws).unwrap().count(), 0);
    }

    #[test]
    fn unpack_refuses_links_and_special_entries() {
        let (_root, ws) = workspace();
        for (kind, link, reason) in [
            (tar::EntryType::Link, &b"/etc/passwd"[..], "a hard link"),
            (tar::EntryType::Fifo, b"", "a FIFO"),
            (tar::EntryType::Char, b"", "a device"),
            (tar::EntryType::Block, b"", "a device"),
            (
                tar::EntryType::Symlink,
                b"../../etc",
                "leaves the workspace",
            ),
            (tar::EntryType::Symlink, b"/etc", "is absolute"),
        ] {
            let archive = raw_archive(b"thing", kind, b"", link);
            assert_refused(unpack(&ws, &archive, LIMIT), "thing", reason);
            assert!(fs::symlink_metadata(ws.join("thing")).is_err());
        }
        assert_refused(
            unpack(&ws, &[b'A'; 1024], LIMIT),
            "(start of archive)",
            "cannot be read",
        );
    }

    #[test]
    fn unpack_reports_a_truncated_archive() {
        let (_root, ws) = workspace();
        write(&ws.join("target/big"), &[7; 4000], 0o644);
        let packed = pack(&ws, &paths(&["target"]), LIMIT).unwrap();
        let (_root2, fresh) = workspace();
        let result = unpack(&fresh, &packed.bytes[..2048], LIMIT);
        assert_refused(result, "target/big", "the archive ends inside it");
    }

    #[test]
    fn unpack_does_not_write_through_a_planted_parent_symlink() {
        let (_root, source) = workspace();
        write(&source.join("target/x"), b"cached", 0o644);
        let packed = pack(&source, &paths(&["target/x"]), LIMIT).unwrap();
        assert_eq!(names(&packed.bytes), ["target/x"]);

        let (root, ws) = workspace();
        let outside = root.path().join("outside");
        fs::create_dir(&outside).unwrap();
        symlink(&outside, ws.join("target")).unwrap();
        assert_refused(
            unpack(&ws, &packed.bytes, LIMIT),
            "target/x",
            "`target` in the workspace is a symlink",
        );
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn unpack_replaces_what_is_in_the_way() {
        let (_root, source) = workspace();
        write(&source.join("target/x"), b"cached", 0o644);
        write(&source.join("target/dir-now-file"), b"file", 0o644);
        fs::create_dir_all(source.join("target/file-now-dir")).unwrap();
        symlink("x", source.join("target/link")).unwrap();
        let packed = pack(&source, &paths(&["target"]), LIMIT).unwrap();

        let (root, ws) = workspace();
        let victim = root.path().join("victim");
        write(&victim, b"original", 0o644);
        fs::create_dir(ws.join("target")).unwrap();
        symlink(&victim, ws.join("target/x")).unwrap();
        write(&ws.join("target/dir-now-file/inner"), b"old", 0o644);
        write(&ws.join("target/file-now-dir"), b"old", 0o644);
        symlink(&victim, ws.join("target/link")).unwrap();
        write(&ws.join("target/untouched"), b"kept", 0o644);

        unpack(&ws, &packed.bytes, LIMIT).unwrap();
        assert!(fs::symlink_metadata(ws.join("target/x")).unwrap().is_file());
        assert_eq!(fs::read(ws.join("target/x")).unwrap(), b"cached");
        assert_eq!(fs::read(&victim).unwrap(), b"original");
        assert_eq!(fs::read(ws.join("target/dir-now-file")).unwrap(), b"file");
        assert!(ws.join("target/file-now-dir").is_dir());
        assert_eq!(
            fs::read_link(ws.join("target/link")).unwrap(),
            Path::new("x")
        );
        assert_eq!(fs::read(ws.join("target/untouched")).unwrap(), b"kept");
    }
}

/// The module's example, kept as a test (the module is private to the crate).
#[cfg(test)]
mod example {
    #[test]
    fn pack_and_unpack() {
        use crate::pipeline::workspace::{Workspaces, pack, unpack};
        fn main() -> Result<(), Box<dyn std::error::Error>> {
            let root = tempfile::tempdir()?;
            let workspaces = Workspaces::new(root.path());
            let first = workspaces.create("default", "build-1")?;
            std::fs::create_dir_all(first.join("target/debug"))?;
            std::fs::write(first.join("target/debug/app"), b"binary")?;

            let paths = ["target".to_string(), "node_modules".to_string()];
            let packed = pack(&first, &paths, 1 << 30)?;
            assert_eq!(packed.files, 1);
            assert_eq!(
                packed.skipped.len(),
                1,
                "no node_modules yet: skipped, not an error"
            );

            let second = workspaces.create("default", "build-2")?;
            let restored = unpack(&second, &packed.bytes, 1 << 30)?;
            assert_eq!(restored.content_bytes, 6);
            assert_eq!(std::fs::read(second.join("target/debug/app"))?, b"binary");
            Ok(())
        }
        main().expect("example runs");
    }
}
