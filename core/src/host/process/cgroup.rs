//! A cgroup per program run, holding its pids and memory limits.
//!
//! cgroup v2 is used where a v2 hierarchy has the `pids` and `memory`
//! controllers available; otherwise the v1 `pids` and `memory` hierarchies. The
//! run's cgroup is created under this process's own cgroup (so the limits of
//! whatever holds arkline still apply) as `arkline/<pid>-<n>`, before the fork.
//! The forked child joins it itself, before `exec` and before the sandbox forks
//! again, by writing `0` to each `cgroup.procs` (the kernel reads `0` as "the
//! writer"): everything the program starts is charged to the cgroup from its
//! first instruction, and no handshake with the parent is needed. When the run
//! ends, what is left in the cgroup is killed and the cgroup removed.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which hierarchy holds the controllers, found once per process.
#[derive(Debug)]
enum Hierarchy {
    /// One directory (the v2 cgroup this process is in, with `pids` and `memory`
    /// enabled for its children).
    V2(PathBuf),
    /// This process's cgroup in the v1 `pids` and `memory` hierarchies.
    V1 { pids: PathBuf, memory: PathBuf },
}

/// Why no cgroup can be used (logged once by the caller).
pub type Unavailable = String;

static HIERARCHY: OnceLock<Result<Hierarchy, Unavailable>> = OnceLock::new();
static NEXT: AtomicU64 = AtomicU64::new(0);

const ROOT: &str = "/sys/fs/cgroup";

/// The limits one run's cgroup enforces.
#[derive(Debug, Clone, Copy)]
pub struct CgroupLimits {
    /// Most tasks (processes and threads) alive at once.
    pub pids: Option<u64>,
    /// Most bytes of memory charged to the run.
    pub memory: Option<u64>,
}

/// One run's cgroup; removed (its processes killed first) when dropped.
pub struct RunCgroup {
    dirs: Vec<PathBuf>,
    /// The `cgroup.procs` files the child writes itself into.
    procs: Vec<CString>,
}

impl RunCgroup {
    /// Creates the run's cgroup with `limits`, or says why no cgroup is usable.
    pub fn create(limits: CgroupLimits) -> Result<RunCgroup, Unavailable> {
        let hierarchy = HIERARCHY
            .get_or_init(detect)
            .as_ref()
            .map_err(Clone::clone)?;
        let name = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut cgroup = RunCgroup {
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        let failed = |what: &Path, e: io::Error| format!("cannot set up {}: {e}", what.display());
        match hierarchy {
            Hierarchy::V2(base) => {
                let dir = cgroup.make(&base.join("arkline"), &name, true)?;
                if let Some(pids) = limits.pids {
                    write(&dir.join("pids.max"), &pids.to_string()).map_err(|e| failed(&dir, e))?;
                }
                if let Some(memory) = limits.memory {
                    write(&dir.join("memory.max"), &memory.to_string())
                        .map_err(|e| failed(&dir, e))?;
                    // Not swapped out instead of limited (absent without swap accounting).
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
            }
            Hierarchy::V1 { pids, memory } => {
                let pdir = cgroup.make(&pids.join("arkline"), &name, false)?;
                if let Some(limit) = limits.pids {
                    write(&pdir.join("pids.max"), &limit.to_string())
                        .map_err(|e| failed(&pdir, e))?;
                }
                let mdir = cgroup.make(&memory.join("arkline"), &name, false)?;
                if let Some(limit) = limits.memory {
                    write(&mdir.join("memory.limit_in_bytes"), &limit.to_string())
                        .map_err(|e| failed(&mdir, e))?;
                    // Memory plus swap, where swap is accounted.
                    let _ = write(
                        &mdir.join("memory.memsw.limit_in_bytes"),
                        &limit.to_string(),
                    );
                }
            }
        }
        Ok(cgroup)
    }

    /// Makes `parent/name` (and `parent`), recording it for removal.
    fn make(&mut self, parent: &Path, name: &str, v2: bool) -> Result<PathBuf, Unavailable> {
        if v2 && let Some(base) = parent.parent() {
            // Best effort: already enabled, or refused because `base` holds
            // processes (then the write below says so).
            let _ = write(&base.join("cgroup.subtree_control"), "+pids +memory");
        }
        if let Err(e) = std::fs::create_dir(parent)
            && e.kind() != io::ErrorKind::AlreadyExists
        {
            return Err(format!("cannot create {}: {e}", parent.display()));
        }
        if v2 {
            write(&parent.join("cgroup.subtree_control"), "+pids +memory").map_err(|e| {
                format!(
                    "cannot enable the pids and memory controllers in {}: {e}",
                    parent.display()
                )
            })?;
        }
        let dir = parent.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        self.dirs.push(dir.clone());
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|_| format!("{} contains a NUL byte", dir.display()))?;
        self.procs.push(procs);
        Ok(dir)
    }

    /// Moves the calling process into the cgroup. For the forked child before
    /// `exec`: async-signal-safe, no allocation.
    ///
    /// # Safety
    /// Call only in a freshly forked child.
    pub unsafe fn join(&self) -> io::Result<()> {
        for procs in &self.procs {
            // SAFETY: open/write/close on a NUL-terminated path owned by `self`.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Kills what is left in the cgroup; true when it is empty.
    fn kill_all(&self) -> bool {
        let mut empty = true;
        for dir in &self.dirs {
            // v2 kills the whole cgroup at once where the kernel has cgroup.kill.
            let _ = write(&dir.join("cgroup.kill"), "1");
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                empty = false;
                // SAFETY: kill(2) on a pid listed in the run's own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        empty
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        // Killed processes leave the cgroup once they are reaped; after the
        // sandbox's init has been waited for that is already the case, so this
        // loop only turns when the run had no sandbox and left children behind.
        for _ in 0..200 {
            if self.kill_all() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for dir in &self.dirs {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!("cannot remove the run's cgroup {}: {e}", dir.display());
            }
        }
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
}

/// This process's cgroup path in the hierarchy whose `/proc/self/cgroup` line
/// matches `want` (`""` for v2, else a controller name).
fn own_path(want: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if want.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == want)
        };
        matches.then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

fn detect() -> Result<Hierarchy, Unavailable> {
    // v2: mounted at the root (unified) or at `unified` (hybrid).
    for mount in [PathBuf::from(ROOT), Path::new(ROOT).join("unified")] {
        let Ok(controllers) = std::fs::read_to_string(mount.join("cgroup.controllers")) else {
            continue;
        };
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("pids")
            && has("memory")
            && let Some(own) = own_path("")
        {
            return Ok(Hierarchy::V2(mount.join(own)));
        }
    }
    let v1 = |controller: &str| -> Option<PathBuf> {
        let mount = Path::new(ROOT).join(controller);
        mount
            .join("cgroup.procs")
            .exists()
            .then(|| mount.join(own_path(controller).unwrap_or_default()))
    };
    match (v1("pids"), v1("memory")) {
        (Some(pids), Some(memory)) => Ok(Hierarchy::V1 { pids, memory }),
        (pids, _) => Err(format!(
            "no cgroup v2 hierarchy with the pids and memory controllers and no cgroup v1 {} controller is mounted under {ROOT}",
            if pids.is_none() { "pids" } else { "memory" }
        )),
    }
}
