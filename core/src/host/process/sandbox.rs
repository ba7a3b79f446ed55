//! The namespace sandbox around one program run (in the manner of bubblewrap).
//!
//! Everything is prepared before the fork ([`SandboxPlan::new`]): paths as C
//! strings, the list of mount operations, the uid/gid map lines. The forked child
//! ([`SandboxPlan::enter`], from `pre_exec`) then only makes system calls:
//!
//! 1. the first child `clone`s the second into a new user, PID, network (unless
//!    granted), mount, IPC, UTS and cgroup namespace. The second is PID 1 of the
//!    new PID namespace, so when it ends the kernel kills every process left in
//!    it (`setsid` included);
//! 2. the first child, still in the host's namespaces, writes the second's
//!    uid/gid maps (`setgroups` denied): [`SANDBOX_ID`] inside is the host's uid
//!    when the host runs unprivileged, and an unprivileged host id (root's
//!    `/etc/subuid` range, or [`DEFAULT_ROOT_SANDBOX_HOST_ID`]) when it runs as
//!    root, so that a program is never host root towards files; it then only
//!    waits for the second and passes its status on;
//! 3. the second becomes [`SANDBOX_ID`], builds a new root on a tmpfs (the
//!    system directories and the granted programs' directories read-only,
//!    secrets masked, the workspace read-write and `noexec` unless granted, a
//!    fresh `/proc`, a `/dev` of null/zero/full/random/urandom/tty, a tmpfs
//!    `/tmp`, `noexec` as the workspace is), `pivot_root`s into it, brings `lo`
//!    up in its empty network namespace, drops its capability bounding set,
//!    enters a Landlock domain (the same file-system view as rules, plus the
//!    ABI 6 signal and abstract-socket scopes where the kernel has them) and
//!    returns to `exec` the program, which starts without capabilities (it is
//!    not uid 0 in its namespace).
//!
//! When the host runs as root, the workspace is handed to the sandbox's host id
//! before each run ([`hand_over`]), so the program can write it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::landlock::{self, SandboxRuleset};

/// The uid and gid programs run as inside the sandbox.
pub const SANDBOX_ID: u32 = 1000;

/// The host uid and gid [`SANDBOX_ID`] maps to when the host runs as root and
/// `/etc/subuid` (`/etc/subgid`) gives root no range.
pub const DEFAULT_ROOT_SANDBOX_HOST_ID: u32 = 100_000;

/// Where the new root is assembled before `pivot_root` (a tmpfs mounted over it
/// in the sandbox's own mount namespace; the host's stays untouched). Nothing the
/// sandbox binds lives under it.
const BUILD_BASE: &str = "/sys";

/// Files under the visible system directories that hold secrets: masked with an
/// empty file (the sandbox's uid owns what the host uid owns, so when the host
/// runs as root, root-only files would otherwise be readable).
const SECRET_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/security/opasswd",
];

/// Directories of secrets, masked with an empty read-only tmpfs.
const SECRET_DIRS: &[&str] = &["/etc/ssl/private", "/etc/sudoers.d"];

/// Device files bound into the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// A step of the setup, recorded in shared memory so a failure names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    /// Not started.
    None = 0,
    /// `clone` into the new namespaces.
    Unshare,
    /// Writing the uid/gid maps, becoming [`SANDBOX_ID`].
    IdMap,
    /// Preparing the `clone` (the pipe the two children talk over).
    Fork,
    /// Making the mount tree private and mounting the new root's tmpfs.
    Root,
    /// A bind mount of a directory or file.
    Bind,
    /// Mounting `/proc`.
    Proc,
    /// Mounting a tmpfs (`/dev`, `/tmp`, a masked directory).
    Tmpfs,
    /// `pivot_root` into the new root.
    Pivot,
    /// Everything after the pivot (chdir, read-only root, capabilities).
    Finish,
    /// Entering the Landlock domain.
    Landlock,
    /// The sandbox is set up; what fails now is the `exec` of the program.
    Exec,
    /// A builder's nested user and mount namespace (which locks every mount
    /// of the sandbox), and its id maps.
    Nest,
}

impl Stage {
    fn from_u32(v: u32) -> Stage {
        match v {
            1 => Stage::Unshare,
            2 => Stage::IdMap,
            3 => Stage::Fork,
            4 => Stage::Root,
            5 => Stage::Bind,
            6 => Stage::Proc,
            7 => Stage::Tmpfs,
            8 => Stage::Pivot,
            9 => Stage::Finish,
            10 => Stage::Landlock,
            11 => Stage::Exec,
            12 => Stage::Nest,
            _ => Stage::None,
        }
    }

    /// What failed, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Stage::None => "before the sandbox started",
            Stage::Unshare => {
                "creating user/PID/network/mount namespaces (clone; are unprivileged user namespaces disabled?)"
            }
            Stage::IdMap => {
                "writing the user namespace's uid/gid maps (or becoming the sandbox's uid; for \
                 `process-builder`, 65,536 ids from the sandbox's host id, which the host's user \
                 namespace must map)"
            }
            Stage::Fork => "starting the PID namespace's first process",
            Stage::Root => "mounting the sandbox's root file system",
            Stage::Bind => "bind-mounting a directory into the sandbox",
            Stage::Proc => "mounting a fresh /proc",
            Stage::Tmpfs => "mounting a tmpfs",
            Stage::Pivot => "pivot_root into the sandbox's root",
            Stage::Finish => "finishing the sandbox (read-only root, capabilities)",
            Stage::Landlock => "entering the sandbox's Landlock domain",
            Stage::Exec => "starting the program",
            Stage::Nest => {
                "making the builder's nested user namespace and its maps (65,536 ids of the sandbox's own)"
            }
        }
    }

    /// Whether a failure here means the kernel (or its configuration) lacks a
    /// mechanism, rather than something about this one run.
    pub fn is_missing_mechanism(self) -> bool {
        matches!(
            self,
            Stage::Unshare | Stage::IdMap | Stage::Fork | Stage::Root | Stage::Proc | Stage::Pivot
        )
    }
}

/// A one-word page shared with the forked children, where they record the stage
/// they are in (so the parent can say what failed).
pub struct StageCell(*mut u32);

// SAFETY: the pointer is to a private anonymous mapping owned by this value; the
// parent only reads it after the child has reported, through a volatile read.
unsafe impl Send for StageCell {}
// SAFETY: as above; the value is a plain u32 written by another process.
unsafe impl Sync for StageCell {}

impl StageCell {
    /// Maps the shared word.
    pub fn new() -> io::Result<StageCell> {
        // SAFETY: an anonymous shared mapping of one page, no file involved.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(StageCell(ptr.cast()))
    }

    /// The stage last recorded.
    pub fn get(&self) -> Stage {
        // SAFETY: the mapping is live for as long as `self`.
        Stage::from_u32(unsafe { std::ptr::read_volatile(self.0) })
    }

    fn set(ptr: *mut u32, stage: Stage) {
        // SAFETY: called in the forked children on the live shared mapping.
        unsafe { std::ptr::write_volatile(ptr, stage as u32) }
    }
}

impl Drop for StageCell {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`, no longer used.
        unsafe {
            libc::munmap(self.0.cast(), 4096);
        }
    }
}

/// One mount-tree operation in the child, all paths absolute in the build root.
enum Op {
    Mkdir(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    Touch(CString),
    /// Bind `src` on `dst`; then, when `remount` is set, remount the bind with
    /// those flags (read-only, nosuid, …; the host mount's locked flags kept).
    Bind {
        src: CString,
        dst: CString,
        remount: Option<libc::c_ulong>,
        optional: bool,
    },
    Tmpfs {
        dst: CString,
        flags: libc::c_ulong,
    },
    Proc(CString),
}

/// What to build for one run, prepared before the fork.
pub struct SandboxPlan {
    flags: libc::c_int,
    uid_map: CString,
    gid_map: CString,
    ops: Vec<Op>,
    base: CString,
    cwd: CString,
    network: bool,
    landlock: Option<SandboxRuleset>,
    /// Builder mode: see [`SandboxSpec::builder`].
    builder: bool,
    /// A builder's nested user namespace's maps: its ids as they are.
    nest_map: CString,
    stage: *mut u32,
    /// The workspace, opened here (by the host's user): the first child
    /// changes into it before it clones the second, which binds it from ".".
    workspace_dir: OwnedFd,
}

// SAFETY: `stage` points into a `StageCell` that outlives the spawn using the plan.
unsafe impl Send for SandboxPlan {}
// SAFETY: as above; the plan is only read.
unsafe impl Sync for SandboxPlan {}

/// What the sandbox exposes for one run.
pub struct SandboxSpec<'a> {
    /// System directories bound read-only (symlinks reproduced as symlinks).
    pub system_dirs: &'a [PathBuf],
    /// Directories of the granted programs (bound read-only when not already
    /// under a system directory).
    pub program_dirs: Vec<PathBuf>,
    /// The workspace, bound read-write at its host path.
    pub workspace: &'a Path,
    /// The working directory (inside the workspace).
    pub cwd: &'a Path,
    /// Share the host's network namespace.
    pub network: bool,
    /// Allow executing files from the workspace (and the sandbox's `/tmp`).
    pub exec_workspace: bool,
    /// Enter a Landlock domain where the kernel has Landlock.
    pub landlock: bool,
    /// Builder mode (grant `process-builder`): the program is root of its
    /// user namespace, with that namespace's capabilities, [`BUILDER_IDS`]
    /// ids mapped from the sandbox's host id up, `setgroups` allowed, no
    /// Landlock domain, the workspace executable (an image's root file
    /// system is unpacked there), a tmpfs `/var/tmp` and an empty `/sys`, so
    /// that it can make namespaces, id maps and mounts of its own (an image
    /// builder such as buildah). Everything else is as in the normal
    /// sandbox. Needs the host to run as root.
    pub builder: bool,
}

/// How many ids a builder's user namespace maps (0–65,535 inside), from the
/// sandbox's host id up: what an image's files may be owned by.
pub const BUILDER_IDS: u32 = 65_536;

/// The host uid and gid the sandbox's [`SANDBOX_ID`] maps to: the host's own
/// when it runs unprivileged (an unprivileged user may map only itself), and
/// an unprivileged id when it runs as root: the first of root's range in
/// `/etc/subuid` and `/etc/subgid`, or [`DEFAULT_ROOT_SANDBOX_HOST_ID`].
pub fn host_ids() -> (u32, u32) {
    // SAFETY: geteuid/getuid/getgid cannot fail.
    let (euid, uid, gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
    if euid != 0 {
        return (uid, gid);
    }
    static ROOT: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        (
            subordinate_start("/etc/subuid").unwrap_or(DEFAULT_ROOT_SANDBOX_HOST_ID),
            subordinate_start("/etc/subgid").unwrap_or(DEFAULT_ROOT_SANDBOX_HOST_ID),
        )
    })
}

/// The first id of root's range in a `/etc/subuid`-style file.
fn subordinate_start(file: &str) -> Option<u32> {
    subordinate_range(file).map(|(start, _)| start)
}

/// Root's range (first id, count) in a `/etc/subuid`-style file.
fn subordinate_range(file: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.trim().split(':');
        let (who, start, count) = (parts.next()?, parts.next()?, parts.next()?);
        let start: u32 = start.parse().ok()?;
        let count: u32 = count.parse().ok()?;
        (matches!(who, "root" | "0") && start > 0 && count > 0).then_some((start, count))
    })
}

/// Refuses builder mode where root's subordinate range is too small for
/// [`BUILDER_IDS`]: the ids past it may be another user's.
fn check_builder_range() -> io::Result<()> {
    for file in ["/etc/subuid", "/etc/subgid"] {
        if let Some((start, count)) = subordinate_range(file)
            && count < BUILDER_IDS
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "builder mode (grant `process-builder`) maps {BUILDER_IDS} ids from {start}, \
                     but root's range in {file} has only {count}: give root a range of at least \
                     {BUILDER_IDS} ids there (e.g. `root:{start}:{BUILDER_IDS}`)"
                ),
            ));
        }
    }
    Ok(())
}

/// Hands the workspace over to the sandbox's host ids (when the host runs as
/// root and they differ from its own): every file and directory in it not
/// already theirs is `lchown`ed, walking through directory descriptors opened
/// with `O_NOFOLLOW`, so a symbolic link a program left (or swaps in while the
/// walk runs) is changed itself, never what it points at.
///
/// Files owned by any of the [`BUILDER_IDS`] ids from the sandbox's first
/// one keep their owner: a builder (grant `process-builder`) gave them those
/// ids (an image builder's storage holds files of many ids, and its cached
/// layers must keep them), and no other run can.
pub fn hand_over(workspace: &Path) -> io::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let (uid, gid) = host_ids();
    let root = cstr(workspace)?;
    // SAFETY: open on a NUL-terminated path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            root.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let dir = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    chown_fd(&dir, uid, gid)?;
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        use std::os::fd::AsRawFd;
        // Names through the descriptor itself, not the path.
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
        for entry in listing {
            let entry = entry?;
            let name = cstr(entry.file_name())?;
            // SAFETY: plain data, valid all zero; fstatat fills it.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstatat relative to an open directory, not following links.
            if unsafe {
                libc::fstatat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    &mut st,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            } != 0
            {
                continue; // gone meanwhile
            }
            let mapped = |id: u32, first: u32| id >= first && id - first < BUILDER_IDS;
            if !(mapped(st.st_uid, uid) && mapped(st.st_gid, gid)) {
                // SAFETY: fchownat relative to an open directory, on the entry itself.
                unsafe {
                    libc::fchownat(
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        uid,
                        gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    );
                }
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                // SAFETY: openat relative to an open directory, refusing a link.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if fd >= 0 {
                    // SAFETY: a new descriptor nothing else owns.
                    stack.push(unsafe {
                        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                    });
                }
            }
        }
    }
    Ok(())
}

fn chown_fd(fd: &std::os::fd::OwnedFd, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fchown on an open descriptor.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens the directory `path` (`O_PATH`, close-on-exec) for the child to
/// change into.
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: a NUL-terminated path; the descriptor is owned right away.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cstr(path: impl AsRef<std::ffi::OsStr>) -> io::Result<CString> {
    CString::new(path.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))
}

/// The mount flags of the host mount holding `path` that a bind remount must keep
/// (a user namespace may not clear them), as `MS_*` flags.
fn locked_flags(path: &Path) -> libc::c_ulong {
    let Ok(c) = cstr(path) else { return 0 };
    // SAFETY: `statvfs` is plain data, valid all zero.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer and `c` a NUL-terminated path.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let f = st.f_flag;
    let mut out = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            out |= ms_flag;
        }
    }
    out
}

impl SandboxPlan {
    /// Prepares the plan; `stage` must outlive the spawn.
    pub fn new(spec: &SandboxSpec<'_>, stage: &StageCell) -> io::Result<SandboxPlan> {
        let mut flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP;
        if !spec.network {
            flags |= libc::CLONE_NEWNET;
        }
        let (uid, gid) = host_ids();
        if spec.builder {
            check_builder_range()?;
        }
        // SAFETY: geteuid cannot fail.
        if spec.builder && unsafe { libc::geteuid() } != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "builder mode (grant `process-builder`) maps a range of ids into the sandbox, which \
                 only a host running as root may do: run arkline as root, or without the process \
                 sandbox",
            ));
        }
        let mut ops = Vec::new();
        let mut dirs_made: Vec<PathBuf> = Vec::new();
        let inner = |p: &Path| -> io::Result<CString> {
            let rel = p.strip_prefix("/").unwrap_or(p);
            cstr(Path::new(BUILD_BASE).join(rel))
        };
        let mut mkdir_all = |ops: &mut Vec<Op>, p: &Path| -> io::Result<()> {
            let mut acc = PathBuf::from("/");
            for comp in p.components().skip(1) {
                acc.push(comp);
                if !dirs_made.contains(&acc) {
                    dirs_made.push(acc.clone());
                    ops.push(Op::Mkdir(inner(&acc)?));
                }
            }
            Ok(())
        };
        let ro = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        let mut bound: Vec<PathBuf> = Vec::new();

        // A private /tmp first: a granted program's directory or the workspace
        // may live under the host's /tmp and is bound on top of it.
        // A builder runs an image's programs from the root file system it
        // unpacked into its storage, in the workspace.
        let exec_workspace = spec.exec_workspace || spec.builder;
        let noexec = if exec_workspace { 0 } else { libc::MS_NOEXEC };
        mkdir_all(&mut ops, Path::new("/tmp"))?;
        ops.push(Op::Tmpfs {
            dst: inner(Path::new("/tmp"))?,
            flags: libc::MS_NOSUID | libc::MS_NODEV | noexec,
        });
        for dir in spec.system_dirs {
            if dir == Path::new("/proc") || dir == Path::new("/sys") || dir == Path::new("/dev") {
                continue; // fresh ones, or none
            }
            let Ok(meta) = std::fs::symlink_metadata(dir) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(dir)?;
                if let Some(parent) = dir.parent() {
                    mkdir_all(&mut ops, parent)?;
                }
                ops.push(Op::Symlink {
                    target: cstr(&target)?,
                    link: inner(dir)?,
                });
            } else if meta.is_dir() {
                mkdir_all(&mut ops, dir)?;
                ops.push(Op::Bind {
                    src: cstr(dir)?,
                    dst: inner(dir)?,
                    remount: Some(ro | locked_flags(dir)),
                    optional: false,
                });
                bound.push(dir.clone());
            }
        }
        for dir in &spec.program_dirs {
            let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            if bound
                .iter()
                .any(|b| dir.starts_with(b.canonicalize().unwrap_or_else(|_| b.clone())))
            {
                continue;
            }
            mkdir_all(&mut ops, &dir)?;
            ops.push(Op::Bind {
                src: cstr(&dir)?,
                dst: inner(&dir)?,
                remount: Some(ro | locked_flags(&dir)),
                optional: false,
            });
            bound.push(dir);
        }
        // With the host network, name resolution: a `/etc/resolv.conf` that
        // links outside what is bound (systemd-resolved's `/run/…`) gets the
        // directory it points into, read-only.
        if spec.network
            && std::fs::symlink_metadata("/etc/resolv.conf").is_ok_and(|m| m.is_symlink())
            && let Ok(target) = std::fs::canonicalize("/etc/resolv.conf")
            && let Some(dir) = target.parent()
            && !bound.iter().any(|b| dir.starts_with(b))
        {
            mkdir_all(&mut ops, dir)?;
            ops.push(Op::Bind {
                src: cstr(dir)?,
                dst: inner(dir)?,
                remount: Some(ro | libc::MS_NOEXEC | locked_flags(dir)),
                optional: true,
            });
            bound.push(dir.to_path_buf());
        }
        // Secrets under what is visible.
        let etc_visible = bound.iter().any(|b| Path::new("/etc").starts_with(b));
        if etc_visible {
            let empty = Path::new("/.arkline-empty");
            ops.push(Op::Touch(inner(empty)?));
            let mut secrets: Vec<PathBuf> = SECRET_FILES.iter().map(PathBuf::from).collect();
            if let Ok(entries) = std::fs::read_dir("/etc/ssh") {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name.as_bytes().ends_with(b"_key") {
                        secrets.push(entry.path());
                    }
                }
            }
            for secret in secrets {
                if std::fs::symlink_metadata(&secret).is_ok_and(|m| m.is_file()) {
                    ops.push(Op::Bind {
                        src: inner(empty)?,
                        dst: inner(&secret)?,
                        remount: Some(ro),
                        optional: false,
                    });
                }
            }
            for dir in SECRET_DIRS {
                if std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
                    ops.push(Op::Tmpfs {
                        dst: inner(Path::new(dir))?,
                        flags: ro | libc::MS_NOEXEC,
                    });
                }
            }
        }
        // The workspace (under /tmp, if it lives there, on the private one).
        mkdir_all(&mut ops, spec.workspace)?;
        let mut ws_flags = libc::MS_NOSUID | libc::MS_NODEV | locked_flags(spec.workspace);
        if !exec_workspace {
            ws_flags |= libc::MS_NOEXEC;
        }
        // Bound from "." : the first child changes into the workspace through a
        // descriptor opened here (`workspace_dir`) before it clones the second,
        // whose working directory is then the workspace in its own mount
        // namespace. So the sandbox's uid needs no search permission on the
        // workspace's parents (a `0700` directory such as `/root`, or what
        // `mktemp -d` makes), which a bind by path would.
        ops.push(Op::Bind {
            src: cstr(".")?,
            dst: inner(spec.workspace)?,
            remount: Some(ws_flags),
            optional: false,
        });
        // /dev: a tmpfs with the harmless devices bound in.
        mkdir_all(&mut ops, Path::new("/dev"))?;
        ops.push(Op::Tmpfs {
            dst: inner(Path::new("/dev"))?,
            flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        });
        for dev in DEVICES {
            let host = Path::new("/dev").join(dev);
            if !host.exists() {
                continue;
            }
            ops.push(Op::Touch(inner(&host)?));
            ops.push(Op::Bind {
                src: cstr(&host)?,
                dst: inner(&host)?,
                remount: None,
                optional: true,
            });
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            ops.push(Op::Symlink {
                target: cstr(target)?,
                link: inner(&Path::new("/dev").join(name))?,
            });
        }
        mkdir_all(&mut ops, Path::new("/proc"))?;
        ops.push(Op::Proc(inner(Path::new("/proc"))?));
        if spec.builder {
            // An empty /sys: buildah binds it into a `RUN`'s root (the
            // host's is not shown).
            mkdir_all(&mut ops, Path::new("/sys"))?;
            // Image tools keep big temporary files in /var/tmp whatever
            // TMPDIR says (buildah converting a base's config).
            mkdir_all(&mut ops, Path::new("/var/tmp"))?;
            ops.push(Op::Tmpfs {
                dst: inner(Path::new("/var/tmp"))?,
                flags: libc::MS_NOSUID | libc::MS_NODEV,
            });
        }

        // The Landlock domain: the same view again, as rules on the sandbox's
        // own paths, and the scopes.
        // A builder mounts and maps ids itself, which a Landlock domain that
        // handles file-system access forbids whatever its rules: it gets a
        // domain of the scopes alone (no signal to, no abstract socket of, a
        // process outside the run), where the kernel has them.
        let landlock = match (spec.landlock && !spec.builder)
            .then(SandboxRuleset::new)
            .flatten()
        {
            None if spec.builder => spec.landlock.then(SandboxRuleset::scopes_only).flatten(),
            Some(mut rules) => {
                let all = rules.all();
                let no_exec = if exec_workspace {
                    all
                } else {
                    all & !landlock::EXECUTE
                };
                rules.allow(Path::new("/"), landlock::READ_DIR)?;
                for dir in &bound {
                    rules.allow(dir, landlock::READ_EXEC)?;
                }
                rules.allow(spec.workspace, no_exec)?;
                rules.allow(Path::new("/tmp"), no_exec)?;
                rules.allow(Path::new("/dev"), landlock::DEVICES)?;
                rules.allow(Path::new("/proc"), landlock::READ_FILE | landlock::READ_DIR)?;
                Some(rules)
            }
            None => None,
        };

        Ok(SandboxPlan {
            flags,
            uid_map: cstr(if spec.builder {
                format!("0 {uid} {BUILDER_IDS}\n")
            } else {
                format!("{SANDBOX_ID} {uid} 1\n")
            })?,
            gid_map: cstr(if spec.builder {
                format!("0 {gid} {BUILDER_IDS}\n")
            } else {
                format!("{SANDBOX_ID} {gid} 1\n")
            })?,
            ops,
            base: cstr(BUILD_BASE)?,
            cwd: cstr(spec.cwd)?,
            network: spec.network,
            landlock,
            builder: spec.builder,
            nest_map: cstr(format!("0 0 {BUILDER_IDS}\n"))?,
            stage: stage.0,
            workspace_dir: open_dir(spec.workspace)?,
        })
    }

    /// Enters the sandbox. Runs in the forked child before `exec`: only system
    /// calls on data prepared in [`SandboxPlan::new`], no allocation, no lock.
    /// Returns (in the PID namespace's init) to let the caller `exec`; the first
    /// child never returns (it exits with the init's status).
    ///
    /// # Safety
    /// Call only in a freshly forked child of a (possibly multi-threaded) process.
    pub unsafe fn enter(&self) -> io::Result<()> {
        let fail = || Err(io::Error::last_os_error());
        let stage = |s: Stage| StageCell::set(self.stage, s);
        // SAFETY (whole body): raw system calls on NUL-terminated strings and
        // buffers owned by `self`, which the fork copied into this process.
        unsafe {
            // Drop the host's supplementary groups while we still may (root).
            libc::setgroups(0, std::ptr::null());
            stage(Stage::Fork);
            // The second child waits on this pipe until its maps are written.
            let mut pipe = [0 as libc::c_int; 2];
            if libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return fail();
            }
            // The second child starts in the workspace (see `workspace_dir`).
            if libc::fchdir(self.workspace_dir.as_raw_fd()) != 0 {
                return fail();
            }
            stage(Stage::Unshare);
            // A raw clone: no atfork handlers run in this child of a threaded
            // process; the new child is PID 1 of its own namespaces.
            let pid = libc::syscall(
                libc::SYS_clone,
                (libc::SIGCHLD | self.flags) as libc::c_ulong,
                0,
                0,
                0,
                0,
            );
            if pid < 0 {
                return fail();
            }
            if pid > 0 {
                // The first child: still in the host's user namespace, so (as
                // root) it may map an id other than its own.
                libc::close(pipe[0]);
                stage(Stage::IdMap);
                let pid = pid as libc::pid_t;
                // A builder may set its groups (as root of its namespace);
                // otherwise `setgroups` is denied before the maps are written.
                let setgroups: &[u8] = if self.builder { b"allow" } else { b"deny" };
                if let Err(e) = write_id_maps(pid, setgroups, &self.uid_map, &self.gid_map) {
                    // Never return with the second child alive: returning
                    // makes the caller `exec` the program here, unsandboxed,
                    // but an error return fails the spawn.
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                    return Err(e);
                }
                libc::write(pipe[1], b"m".as_ptr().cast(), 1);
                libc::close(pipe[1]);
                wait_and_exit(pid);
            }
            // PID 1 of the new namespace: wait for the maps, then become the
            // sandbox's uid (keeping, in this namespace only, the capabilities
            // the mounts below need; `exec` drops them).
            libc::close(pipe[1]);
            await_maps(pipe[0]);
            let id = if self.builder {
                0
            } else {
                SANDBOX_ID as libc::uid_t
            };
            if self.builder && libc::setgroups(0, std::ptr::null()) != 0 {
                return fail();
            }
            if libc::setresgid(id, id, id) != 0 || libc::setresuid(id, id, id) != 0 {
                return fail();
            }
            // After the uid change, which clears it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            stage(Stage::Root);
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            if libc::mount(
                c"tmpfs".as_ptr(),
                self.base.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=0755".as_ptr().cast(),
            ) != 0
            {
                return fail();
            }
            for op in &self.ops {
                self.apply(op)?;
            }
            stage(Stage::Pivot);
            if libc::chdir(self.base.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                return fail();
            }
            stage(Stage::Finish);
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            if libc::chdir(self.cwd.as_ptr()) != 0 {
                return fail();
            }
            if !self.network {
                loopback_up();
            }
            libc::sethostname(c"arkline".as_ptr(), 7);
            // The program is not uid 0 here, so exec clears its capabilities;
            // an empty bounding set keeps it so. A builder is uid 0 of this
            // namespace and keeps its capabilities, which reach only what
            // the namespace owns (its mounts, its ids), never the host's.
            if !self.builder {
                for cap in 0..64 {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail();
            }
            if let Some(rules) = &self.landlock {
                stage(Stage::Landlock);
                rules.enter()?;
            }
            if self.builder {
                stage(Stage::Nest);
                self.nest()?;
            }
            stage(Stage::Exec);
        }
        Ok(())
    }

    /// A builder runs in a user and mount namespace nested in the sandbox's:
    /// the mount namespace is copied into a less privileged user namespace,
    /// so the kernel locks every mount of the sandbox (and its read-only,
    /// `nosuid`, `nodev`, `noexec` flags) against the builder, which is root
    /// of the nested namespace: it may make mounts of its own but not undo
    /// the sandbox's binds, masks or read-only root. The sandbox's init (this
    /// process, root of the outer namespace) writes the nested maps, then
    /// waits and exits as the builder does.
    ///
    /// # Safety
    /// As [`SandboxPlan::enter`].
    unsafe fn nest(&self) -> io::Result<()> {
        let fail = || Err(io::Error::last_os_error());
        // SAFETY (whole body): raw system calls on buffers owned by `self`.
        unsafe {
            // The uid change made this process (and so the clone) not
            // dumpable, which gives its /proc files to the host's root, whom
            // this namespace does not map: the maps could not be written.
            libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
            let mut pipe = [0 as libc::c_int; 2];
            if libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return fail();
            }
            let pid = libc::syscall(
                libc::SYS_clone,
                (libc::SIGCHLD | libc::CLONE_NEWUSER | libc::CLONE_NEWNS) as libc::c_ulong,
                0,
                0,
                0,
                0,
            );
            if pid < 0 {
                return fail();
            }
            if pid > 0 {
                libc::close(pipe[0]);
                let pid = pid as libc::pid_t;
                let mapped = write_id_maps(pid, b"allow", &self.nest_map, &self.nest_map);
                // Not dumpable again before the builder runs (defence in
                // depth: the builder has this process's host uid, though
                // not the outer namespace's capabilities a ptrace of it
                // needs); its /proc files go back to the host's root.
                libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
                if let Err(e) = mapped {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                    return Err(e);
                }
                libc::write(pipe[1], b"m".as_ptr().cast(), 1);
                libc::close(pipe[1]);
                wait_and_exit(pid);
            }
            libc::close(pipe[1]);
            await_maps(pipe[0]);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(0, 0, 0) != 0
                || libc::setresuid(0, 0, 0) != 0
            {
                return fail();
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        }
        Ok(())
    }

    /// # Safety
    /// As [`SandboxPlan::enter`].
    unsafe fn apply(&self, op: &Op) -> io::Result<()> {
        let fail = || Err(io::Error::last_os_error());
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: system calls on NUL-terminated strings owned by `self`.
        unsafe {
            match op {
                Op::Mkdir(path) => {
                    if libc::mkdir(path.as_ptr(), 0o755) != 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        // A directory under a read-only bind exists already.
                        let e = *libc::__errno_location();
                        if e != libc::EROFS {
                            return fail();
                        }
                    }
                }
                Op::Symlink { target, link } => {
                    if libc::symlink(target.as_ptr(), link.as_ptr()) != 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        return fail();
                    }
                }
                Op::Touch(path) => {
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o444,
                    );
                    if fd < 0 {
                        return fail();
                    }
                    libc::close(fd);
                }
                Op::Bind {
                    src,
                    dst,
                    remount,
                    optional,
                } => {
                    StageCell::set(self.stage, Stage::Bind);
                    if libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                    {
                        return if *optional { Ok(()) } else { fail() };
                    }
                    if let Some(flags) = remount
                        && libc::mount(
                            null,
                            dst.as_ptr(),
                            null,
                            libc::MS_BIND | libc::MS_REMOUNT | flags,
                            std::ptr::null(),
                        ) != 0
                    {
                        return fail();
                    }
                }
                Op::Tmpfs { dst, flags } => {
                    StageCell::set(self.stage, Stage::Tmpfs);
                    if libc::mount(
                        c"tmpfs".as_ptr(),
                        dst.as_ptr(),
                        c"tmpfs".as_ptr(),
                        *flags,
                        c"mode=0755".as_ptr().cast(),
                    ) != 0
                    {
                        return fail();
                    }
                }
                Op::Proc(dst) => {
                    StageCell::set(self.stage, Stage::Proc);
                    if libc::mount(
                        c"proc".as_ptr(),
                        dst.as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    ) != 0
                    {
                        return fail();
                    }
                }
            }
        }
        Ok(())
    }
}

/// `/proc/<pid>/<leaf>` as a C string in `buf`, without allocating.
fn proc_path<'a>(buf: &'a mut [u8; 64], pid: libc::pid_t, leaf: &[u8]) -> &'a std::ffi::CStr {
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut at = 0;
    for &b in b"/proc/" {
        buf[at] = b;
        at += 1;
    }
    for i in (0..len).rev() {
        buf[at] = digits[i];
        at += 1;
    }
    buf[at] = b'/';
    at += 1;
    for &b in leaf {
        buf[at] = b;
        at += 1;
    }
    buf[at] = 0;
    std::ffi::CStr::from_bytes_until_nul(&buf[..=at]).unwrap_or(c"/proc/self/invalid")
}

/// Writes the `setgroups` answer and the uid and gid maps of process `pid`
/// (a child in a new user namespace), from its parent namespace.
///
/// # Safety
/// Async-signal-safe; for the forked child.
unsafe fn write_id_maps(
    pid: libc::pid_t,
    setgroups: &[u8],
    uid_map: &std::ffi::CStr,
    gid_map: &std::ffi::CStr,
) -> io::Result<()> {
    let mut path = [0u8; 64];
    // SAFETY: raw writes of buffers the caller owns.
    unsafe {
        write_file(proc_path(&mut path, pid, b"setgroups"), setgroups)?;
        write_file(proc_path(&mut path, pid, b"uid_map"), uid_map.to_bytes())?;
        write_file(proc_path(&mut path, pid, b"gid_map"), gid_map.to_bytes())
    }
}

/// In a child whose maps its parent writes: waits for the parent's byte on
/// `fd` (then closes it), and exits if the parent went away without it.
///
/// # Safety
/// Async-signal-safe; for the forked child.
unsafe fn await_maps(fd: libc::c_int) {
    // SAFETY: a read into a stack byte, a close and an exit.
    unsafe {
        let mut byte = 0u8;
        let got = loop {
            let n = libc::read(fd, (&mut byte as *mut u8).cast(), 1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break n;
        };
        libc::close(fd);
        if got != 1 {
            libc::_exit(127);
        }
    }
}

/// Writes `bytes` to `path` with raw calls.
///
/// # Safety
/// Async-signal-safe; for the forked child.
unsafe fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and a live buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// In the first child: closes everything (so the parent's pipes see their end
/// when the program's do), waits for the namespace's init and exits the way it
/// did.
///
/// # Safety
/// Async-signal-safe; for the forked child.
unsafe fn wait_and_exit(pid: libc::pid_t) -> ! {
    // SAFETY: raw system calls on this process only.
    unsafe {
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(127)
    }
}

/// Brings `lo` up in the new network namespace (best effort: programs that talk
/// to themselves over loopback work; nothing reaches the host).
///
/// # Safety
/// Async-signal-safe; for the forked child.
unsafe fn loopback_up() {
    // SAFETY: a socket and two ioctls on a zeroed, correctly sized `ifreq`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        libc::close(fd);
    }
}
