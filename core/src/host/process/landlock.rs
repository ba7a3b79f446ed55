//! Landlock, through its three system calls.
//!
//! The kernel ABI is stable and versioned; each feature is used only where the
//! running kernel's ABI has it (best effort, like the `landlock` crate's
//! "best-effort" compatibility mode):
//!
//! | ABI | what we use |
//! |---|---|
//! | 1 | file-system access rights (execute, read, write, make…) |
//! | 2 | `REFER` (renames and links across directories) |
//! | 3 | `TRUNCATE` |
//! | 5 | `IOCTL_DEV` |
//! | 6 | the scopes: no signal to, and no abstract unix socket of, a process outside the domain |
//!
//! The `landlock` crate is not used: inside the sandbox the ruleset is built
//! in the forked child after `pivot_root` (its rules name the sandbox's own
//! `/proc`, `/tmp` and `/dev`, which exist only there), where only
//! async-signal-safe system calls may be made, and the crate allocates. The
//! calls here are the same three system calls the crate makes.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SYS_LANDLOCK_CREATE_RULESET: libc::c_long = 444;
const SYS_LANDLOCK_ADD_RULE: libc::c_long = 445;
const SYS_LANDLOCK_RESTRICT_SELF: libc::c_long = 446;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

/// `LANDLOCK_ACCESS_FS_EXECUTE`.
pub const EXECUTE: u64 = 1 << 0;
/// `LANDLOCK_ACCESS_FS_WRITE_FILE`.
pub const WRITE_FILE: u64 = 1 << 1;
/// `LANDLOCK_ACCESS_FS_READ_FILE`.
pub const READ_FILE: u64 = 1 << 2;
/// `LANDLOCK_ACCESS_FS_READ_DIR`.
pub const READ_DIR: u64 = 1 << 3;
/// `LANDLOCK_ACCESS_FS_TRUNCATE` (ABI 3).
pub const TRUNCATE: u64 = 1 << 14;
/// `LANDLOCK_ACCESS_FS_IOCTL_DEV` (ABI 5).
pub const IOCTL_DEV: u64 = 1 << 15;
/// Reading and running what is below a directory.
pub const READ_EXEC: u64 = EXECUTE | READ_FILE | READ_DIR;
/// What a device directory needs.
pub const DEVICES: u64 = READ_FILE | WRITE_FILE | READ_DIR | TRUNCATE | IOCTL_DEV;

/// `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET` (ABI 6): no connecting to an abstract
/// unix socket created outside the domain.
pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
/// `LANDLOCK_SCOPE_SIGNAL` (ABI 6): no signal to a process outside the domain.
pub const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of the running kernel, or 0 without Landlock
/// (logged once, with what an older ABI lacks).
pub fn abi() -> i64 {
    static ABI: OnceLock<i64> = OnceLock::new();
    *ABI.get_or_init(|| {
        // SAFETY: querying the ABI version passes no pointers (NULL, size 0).
        let v = unsafe {
            libc::syscall(
                SYS_LANDLOCK_CREATE_RULESET,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if v <= 0 {
            tracing::warn!(
                "Landlock is not available on this kernel: programs run for guests are not confined by it (the namespace sandbox, where it can be built, still is)"
            );
        } else if v < 6 {
            tracing::warn!(
                abi = v,
                "this kernel's Landlock ABI lacks the signal and abstract-socket scopes (ABI 6, Linux 6.12): a program granted the host network can reach the host's abstract unix sockets, and one running without the namespace sandbox can signal host processes"
            );
        }
        v.max(0)
    })
}

/// The file-system rights the kernel of ABI `abi` can handle.
pub fn handled_fs(abi: i64) -> u64 {
    if abi <= 0 {
        return 0;
    }
    let mut handled: u64 = (1 << 13) - 1; // ABI 1: execute … make_sym
    if abi >= 2 {
        handled |= 1 << 13; // refer
    }
    if abi >= 3 {
        handled |= TRUNCATE;
    }
    if abi >= 5 {
        handled |= IOCTL_DEV;
    }
    handled
}

/// The scopes the kernel of ABI `abi` can enforce.
pub fn scopes(abi: i64) -> u64 {
    if abi >= 6 {
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    } else {
        0
    }
}

/// `landlock_create_ruleset`, with the attribute size the ABI knows.
///
/// # Safety
/// A raw system call (async-signal-safe); the result is a new fd or -1.
unsafe fn create(abi: i64, handled_fs: u64, scoped: u64) -> libc::c_long {
    let attr = RulesetAttr {
        handled_access_fs: handled_fs,
        handled_access_net: 0,
        scoped,
    };
    // The kernel refuses a larger struct than it knows unless the extra bytes
    // are zero, and an older one does not know the later fields.
    let size = if abi >= 6 {
        24
    } else if abi >= 4 {
        16
    } else {
        8
    };
    // SAFETY: `attr` is a valid `landlock_ruleset_attr` prefix of `size` bytes.
    unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            &attr as *const RulesetAttr,
            size as usize,
            0u32,
        )
    }
}

/// `landlock_add_rule` for everything beneath the open directory `dir`.
///
/// # Safety
/// A raw system call (async-signal-safe) on two open descriptors.
unsafe fn add_rule(ruleset: libc::c_int, dir: libc::c_int, access: u64) -> libc::c_long {
    let rule = PathBeneathAttr {
        allowed_access: access,
        parent_fd: dir,
    };
    // SAFETY: `rule` is a valid `landlock_path_beneath_attr`.
    unsafe {
        libc::syscall(
            SYS_LANDLOCK_ADD_RULE,
            ruleset,
            LANDLOCK_RULE_PATH_BENEATH,
            &rule as *const PathBeneathAttr,
            0u32,
        )
    }
}

/// `landlock_restrict_self`: the calling thread (and what it `exec`s and
/// forks) enters the ruleset's domain. Needs `no_new_privs`.
///
/// # Safety
/// A raw system call (async-signal-safe).
pub unsafe fn restrict_self(ruleset: libc::c_int) -> io::Result<()> {
    // SAFETY: a raw system call on an fd.
    if unsafe { libc::syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0u32) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The fallback's ruleset, built before the fork (host paths): everything under
/// the workspace, read/execute under the system directories and the program's
/// own directory, device files under `/dev`, and the scopes. `None` when the
/// kernel has no Landlock or the ruleset cannot be built (logged).
pub fn host_ruleset(workspace: &Path, program: &Path, read_only: &[PathBuf]) -> Option<OwnedFd> {
    let abi = abi();
    if abi == 0 {
        return None;
    }
    let handled = handled_fs(abi);
    // SAFETY: a system call on a valid attribute.
    let fd = unsafe { create(abi, handled, scopes(abi)) };
    if fd < 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot create a Landlock ruleset; running the program unconfined");
        return None;
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut rules: Vec<(&Path, u64)> = vec![(workspace, handled), (Path::new("/dev"), DEVICES)];
    for path in read_only {
        rules.push((path, READ_EXEC));
    }
    if let Some(dir) = program.parent() {
        rules.push((dir, READ_EXEC));
    }
    for (path, access) in rules {
        let Ok(dir) = std::fs::File::open(path) else {
            continue; // a missing system directory needs no rule
        };
        // SAFETY: both descriptors are open for the duration of the call.
        if unsafe { add_rule(ruleset.as_raw_fd(), dir.as_raw_fd(), access & handled) } != 0 {
            tracing::warn!(path = %path.display(), error = %io::Error::last_os_error(), "cannot add a Landlock rule; running the program unconfined");
            return None;
        }
    }
    Some(ruleset)
}

/// A ruleset to build inside the sandbox after `pivot_root`, prepared before
/// the fork: paths are the sandbox's own.
pub struct SandboxRuleset {
    abi: i64,
    handled: u64,
    scoped: u64,
    rules: Vec<(CString, u64)>,
}

impl SandboxRuleset {
    /// An empty ruleset for this kernel, or `None` without Landlock.
    pub fn new() -> Option<SandboxRuleset> {
        let abi = abi();
        (abi > 0).then(|| SandboxRuleset {
            abi,
            handled: handled_fs(abi),
            scoped: scopes(abi),
            rules: Vec::new(),
        })
    }

    /// A ruleset of the scopes alone (no signal to, no abstract unix socket
    /// of, a process outside the domain), handling no file-system access, so
    /// that the domain allows `mount(2)`; `None` where the kernel has no
    /// scopes (ABI < 6).
    pub fn scopes_only() -> Option<SandboxRuleset> {
        let abi = abi();
        let scoped = scopes(abi);
        (scoped != 0).then_some(SandboxRuleset {
            abi,
            handled: 0,
            scoped,
            rules: Vec::new(),
        })
    }

    /// Everything the kernel handles.
    pub fn all(&self) -> u64 {
        self.handled
    }

    /// Allows `access` beneath `path` (a path inside the sandbox).
    pub fn allow(&mut self, path: &Path, access: u64) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL"))?;
        self.rules.push((path, access & self.handled));
        Ok(())
    }

    /// Builds the ruleset and enters it. Only system calls, on data prepared
    /// before the fork; a rule whose path does not exist is skipped.
    ///
    /// # Safety
    /// For the forked child, after `no_new_privs` is set.
    pub unsafe fn enter(&self) -> io::Result<()> {
        // SAFETY (whole body): raw system calls on NUL-terminated strings owned
        // by `self` and descriptors opened and closed here.
        unsafe {
            let ruleset = create(self.abi, self.handled, self.scoped);
            if ruleset < 0 {
                return Err(io::Error::last_os_error());
            }
            let ruleset = ruleset as libc::c_int;
            for (path, access) in &self.rules {
                let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                if fd < 0 {
                    continue;
                }
                let rc = add_rule(ruleset, fd, *access);
                libc::close(fd);
                if rc != 0 {
                    let e = io::Error::last_os_error();
                    libc::close(ruleset);
                    return Err(e);
                }
            }
            let r = restrict_self(ruleset);
            libc::close(ruleset);
            r
        }
    }
}
