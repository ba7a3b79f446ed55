//! The `process` capability: run a granted program for a guest, confined.
//!
//! - Only programs the engine granted (and the manifest requested) run, by the
//!   absolute path each name resolved to when the biz was installed.
//! - Each run gets its own process group, killed as a group when it times out, when
//!   the step is cancelled or aborted (the call's future is dropped), and after the
//!   program exits (so background children do not outlive the step).
//! - The environment is scrubbed: `PATH` holds only the directories of the granted
//!   programs, `HOME` and `TMPDIR` point into the workspace, plus what the guest
//!   passes. Guest paths (`/workspace/…`) in `cwd`, arguments and environment values
//!   are translated to host paths; a `cwd` outside the workspace is refused.
//! - Resource limits (CPU seconds, file size, no core dumps) are set in the child.
//! - File-system access is confined with Landlock where the kernel has it: the
//!   workspace read-write, system directories read-only, `/dev` for its device
//!   files, nothing else. Where Landlock is missing a warning is logged once and
//!   the program runs with the host user's file access.
//! - Stdout and stderr are returned (capped) and, when asked, streamed line by line
//!   into the step log.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::step_log::{LogCapture, LogLevel, LogSource};

/// Where the workspace appears to guests.
const GUEST_WORKSPACE: &str = "/workspace";

/// Limits applied to every program run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessLimits {
    /// CPU seconds (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// Largest file the program may write (`RLIMIT_FSIZE`), bytes.
    pub file_size: u64,
    /// Bytes of stdout (and, separately, stderr) returned to the guest.
    pub output_cap: usize,
    /// Largest stdin the guest may pass.
    pub stdin_cap: usize,
    /// Confine file-system access with Landlock when the kernel supports it.
    pub landlock: bool,
    /// Directories readable (and executable) under Landlock besides the workspace.
    pub read_only_paths: Vec<PathBuf>,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        ProcessLimits {
            cpu_seconds: 3600,
            file_size: 4 << 30,
            output_cap: 4 << 20,
            stdin_cap: 16 << 20,
            landlock: true,
            read_only_paths: [
                "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", "/proc",
                "/sys",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
        }
    }
}

/// The programs one biz may run in one engine, resolved at grant time.
#[derive(Debug, Clone, Default)]
pub struct ProcessPolicy {
    programs: BTreeMap<String, Result<PathBuf, String>>,
    limits: ProcessLimits,
}

impl ProcessPolicy {
    /// Resolves each granted program name to an absolute path (a name with a `/`
    /// must be an absolute path to an executable; others are looked up in the
    /// host's `PATH`). Names that do not resolve are kept with the reason, so a
    /// call names it.
    pub fn resolve(programs: &[String], limits: ProcessLimits) -> Self {
        let path_var = std::env::var_os("PATH");
        let programs = programs
            .iter()
            .map(|name| (name.clone(), resolve_program(name, path_var.as_deref())))
            .collect();
        ProcessPolicy { programs, limits }
    }

    /// The resolved path of a granted program.
    pub fn program(&self, name: &str) -> Option<&Result<PathBuf, String>> {
        self.programs.get(name)
    }

    /// The limits.
    pub fn limits(&self) -> &ProcessLimits {
        &self.limits
    }

    fn path_dirs(&self) -> OsString {
        let mut dirs: Vec<&Path> = Vec::new();
        for path in self.programs.values().flatten() {
            if let Some(dir) = path.parent()
                && !dirs.contains(&dir)
            {
                dirs.push(dir);
            }
        }
        std::env::join_paths(dirs).unwrap_or_default()
    }
}

fn resolve_program(name: &str, path_var: Option<&std::ffi::OsStr>) -> Result<PathBuf, String> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        if !path.is_absolute() {
            return Err(format!(
                "`{name}` is a relative path; grant a program name or an absolute path"
            ));
        }
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!("`{name}` is not an executable file"))
        };
    }
    let found = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate));
    found.ok_or_else(|| {
        format!("`{name}` was not found on the host's PATH when the biz was installed")
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A program run as the guest asked for it.
#[derive(Debug, Clone, Default)]
pub struct ProcessRequest {
    /// Granted program name.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory as a guest path (default `/workspace`).
    pub cwd: Option<String>,
    /// Bytes for stdin.
    pub stdin: Option<Vec<u8>>,
    /// Time limit (also bounded by the step's deadline).
    pub timeout: Option<Duration>,
    /// Stream output lines into the step log.
    pub stream_to_log: bool,
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessStatus {
    /// It exited with a code.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
    /// Its time ran out and it was killed.
    TimedOut,
}

/// What a program produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutput {
    /// How it ended.
    pub status: ProcessStatus,
    /// Stdout, up to the cap.
    pub stdout: Vec<u8>,
    /// Stderr, up to the cap.
    pub stderr: Vec<u8>,
    /// Stdout went past the cap.
    pub stdout_truncated: bool,
    /// Stderr went past the cap.
    pub stderr_truncated: bool,
}

/// Why a program could not be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// A bad request (a path outside the workspace, no workspace).
    #[error("{0}")]
    InvalidArgument(String),
    /// Stdin over its cap.
    #[error("{0}")]
    TooLarge(String),
    /// Spawning or waiting failed.
    #[error("{0}")]
    Failed(String),
}

/// What a run needs from the step call.
pub struct ProcessContext<'a> {
    /// The policy of the calling biz.
    pub policy: &'a ProcessPolicy,
    /// The host workspace directory.
    pub workspace: Option<&'a Path>,
    /// The step log.
    pub log: &'a LogCapture,
    /// The step's deadline.
    pub deadline: Instant,
}

/// Runs `request`; the capability check has already passed.
pub async fn run(
    ctx: ProcessContext<'_>,
    request: ProcessRequest,
) -> Result<ProcessOutput, ProcessError> {
    let limits = ctx.policy.limits();
    let program = match ctx.policy.program(&request.program) {
        Some(Ok(path)) => path.clone(),
        Some(Err(why)) => return Err(ProcessError::Failed(why.clone())),
        None => {
            return Err(ProcessError::Failed(format!(
                "program `{}` has no resolved path",
                request.program
            )));
        }
    };
    let workspace = ctx.workspace.ok_or_else(|| {
        ProcessError::InvalidArgument(
            "this step call has no workspace, and programs run only inside one".into(),
        )
    })?;
    let workspace = workspace.canonicalize().map_err(|e| {
        ProcessError::Failed(format!(
            "cannot open the workspace {}: {e}",
            workspace.display()
        ))
    })?;
    let cwd = guest_dir(
        &workspace,
        request.cwd.as_deref().unwrap_or(GUEST_WORKSPACE),
    )?;
    if let Some(stdin) = &request.stdin
        && stdin.len() > limits.stdin_cap
    {
        return Err(ProcessError::TooLarge(format!(
            "stdin is {} bytes, over the cap of {} bytes",
            stdin.len(),
            limits.stdin_cap
        )));
    }
    let tmp = workspace.join(".arkline").join("tmp");
    std::fs::create_dir_all(&tmp)
        .map_err(|e| ProcessError::Failed(format!("cannot create {}: {e}", tmp.display())))?;

    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(request.args.iter().map(|a| translate(&workspace, a)))
        .env_clear()
        .env("PATH", ctx.policy.path_dirs())
        .env("HOME", &workspace)
        .env("TMPDIR", &tmp)
        .env("LANG", "C.UTF-8")
        .envs(
            request
                .env
                .iter()
                .map(|(k, v)| (k.clone(), translate(&workspace, v))),
        )
        .current_dir(&cwd)
        .stdin(if request.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);

    let ruleset = if limits.landlock {
        landlock_ruleset(&workspace, &program, &limits.read_only_paths)
    } else {
        None
    };
    let rlimits = [
        (libc::RLIMIT_CPU, limits.cpu_seconds),
        (libc::RLIMIT_FSIZE, limits.file_size),
        (libc::RLIMIT_CORE, 0),
    ];
    let ruleset_fd = ruleset.as_ref().map(AsRawFd::as_raw_fd);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (setrlimit, prctl, landlock_restrict_self)
    // on values prepared before the fork; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            for (resource, value) in rlimits {
                let limit = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = ruleset_fd {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| ProcessError::Failed(format!("cannot start `{}`: {e}", program.display())))?;
    drop(ruleset);
    let group = ProcessGroup(child.id().map(|id| id as i32));

    if let (Some(bytes), Some(mut stdin)) = (request.stdin, child.stdin.take()) {
        // A program that does not read its stdin must not wedge the step.
        tokio::spawn(async move {
            let _ = stdin.write_all(&bytes).await;
        });
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stream = request
        .stream_to_log
        .then(|| (ctx.log.clone(), request.program.clone()));
    let out_reader = collect(stdout, limits.output_cap, LogSource::Stdout, stream.clone());
    let err_reader = collect(stderr, limits.output_cap, LogSource::Stderr, stream);

    let timeout = request
        .timeout
        .unwrap_or(Duration::MAX)
        .min(ctx.deadline.saturating_duration_since(started));
    let wait = async {
        let (status, out, err) = tokio::join!(child.wait(), out_reader, err_reader);
        (status, out, err)
    };
    let (status, (stdout, stdout_truncated), (stderr, stderr_truncated)) =
        match tokio::time::timeout(timeout, wait).await {
            Ok((status, out, err)) => {
                let status = status.map_err(|e| {
                    ProcessError::Failed(format!("waiting for `{}` failed: {e}", program.display()))
                })?;
                use std::os::unix::process::ExitStatusExt;
                let status = match (status.code(), status.signal()) {
                    (Some(code), _) => ProcessStatus::Exited(code),
                    (None, Some(signal)) => ProcessStatus::Signaled(signal),
                    (None, None) => ProcessStatus::Signaled(0),
                };
                (status, out, err)
            }
            Err(_) => {
                group.kill();
                ctx.log.push(
                    LogLevel::Warn,
                    LogSource::Host,
                    format!(
                        "[arkline] `{}` timed out after {}; its process group was killed",
                        request.program,
                        humantime::format_duration(timeout)
                    ),
                    Vec::new(),
                );
                (
                    ProcessStatus::TimedOut,
                    (Vec::new(), false),
                    (Vec::new(), false),
                )
            }
        };
    drop(group);
    Ok(ProcessOutput {
        status,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
    })
}

/// Kills the whole group when dropped: after a normal exit (stray background
/// children), a timeout, or when the step's future is dropped (cancel, abort).
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals the process group we
            // created for this child (`process_group(0)` makes its pgid its pid).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn collect(
    reader: Option<impl AsyncRead + Unpin>,
    cap: usize,
    source: LogSource,
    stream: Option<(LogCapture, String)>,
) -> (Vec<u8>, bool) {
    let Some(mut reader) = reader else {
        return (Vec::new(), false);
    };
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut line = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let level = if source == LogSource::Stderr {
        LogLevel::Warn
    } else {
        LogLevel::Info
    };
    let emit = |line: &mut Vec<u8>| {
        if let Some((log, program)) = &stream {
            log.push(
                level,
                source,
                String::from_utf8_lossy(line).into_owned(),
                vec![("program".to_owned(), program.clone())],
            );
        }
        line.clear();
    };
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        truncated |= n > room;
        if stream.is_some() {
            for &b in &buf[..n] {
                if b == b'\n' || line.len() >= 16 << 10 {
                    emit(&mut line);
                    if b == b'\n' {
                        continue;
                    }
                }
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
    (kept, truncated)
}

/// Translates a guest path inside `/workspace` to the host path; other strings
/// pass through unchanged.
fn translate(workspace: &Path, value: &str) -> OsString {
    match value.strip_prefix(GUEST_WORKSPACE) {
        Some("") => workspace.as_os_str().to_owned(),
        Some(rest) if rest.starts_with('/') => workspace.join(&rest[1..]).into_os_string(),
        _ => OsString::from(value),
    }
}

/// The host directory for a guest directory path, refused when it leaves the
/// workspace (lexically or through a symlink).
fn guest_dir(workspace: &Path, guest: &str) -> Result<PathBuf, ProcessError> {
    let outside = || {
        ProcessError::InvalidArgument(format!(
            "working directory `{guest}` is outside the workspace; use a path under /workspace"
        ))
    };
    let relative = if guest == GUEST_WORKSPACE {
        ""
    } else if let Some(rest) = guest.strip_prefix("/workspace/") {
        rest
    } else if guest.starts_with('/') {
        return Err(outside());
    } else {
        guest
    };
    let mut host = workspace.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => host.push(part),
            Component::CurDir => {}
            _ => return Err(outside()),
        }
    }
    let real = host
        .canonicalize()
        .map_err(|e| ProcessError::InvalidArgument(format!("working directory `{guest}`: {e}")))?;
    if !real.starts_with(workspace) {
        return Err(outside());
    }
    if !real.is_dir() {
        return Err(ProcessError::InvalidArgument(format!(
            "working directory `{guest}` is not a directory"
        )));
    }
    Ok(real)
}

// Landlock, through its three system calls (the kernel ABI is stable; the calls
// are made directly so the child needs nothing but `landlock_restrict_self`).
const SYS_LANDLOCK_CREATE_RULESET: libc::c_long = 444;
const SYS_LANDLOCK_ADD_RULE: libc::c_long = 445;
const SYS_LANDLOCK_RESTRICT_SELF: libc::c_long = 446;
const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

const ACCESS_EXECUTE: u64 = 1 << 0;
const ACCESS_WRITE_FILE: u64 = 1 << 1;
const ACCESS_READ_FILE: u64 = 1 << 2;
const ACCESS_READ_DIR: u64 = 1 << 3;
const ACCESS_TRUNCATE: u64 = 1 << 14;
const ACCESS_IOCTL_DEV: u64 = 1 << 15;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The Landlock ABI version of the running kernel, or 0 without Landlock.
fn landlock_abi() -> i64 {
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
                "Landlock is not available on this kernel: programs run for guests are confined by process group, environment and rlimits only, not in their file-system access"
            );
        }
        v.max(0)
    })
}

/// Whether programs are confined with Landlock on this host.
pub fn landlock_available() -> bool {
    landlock_abi() > 0
}

/// Builds a ruleset: everything under the workspace, read/execute under the
/// system directories and the program's own directory, device files under `/dev`.
/// `None` when the kernel has no Landlock or the ruleset cannot be built (logged).
fn landlock_ruleset(workspace: &Path, program: &Path, read_only: &[PathBuf]) -> Option<OwnedFd> {
    let abi = landlock_abi();
    if abi == 0 {
        return None;
    }
    let mut handled: u64 = (1 << 13) - 1; // ABI 1: execute … make_sym
    if abi >= 2 {
        handled |= 1 << 13; // refer
    }
    if abi >= 3 {
        handled |= ACCESS_TRUNCATE;
    }
    if abi >= 5 {
        handled |= ACCESS_IOCTL_DEV;
    }
    let attr = RulesetAttr {
        handled_access_fs: handled,
    };
    // SAFETY: `attr` is a valid `landlock_ruleset_attr` of the size passed.
    let fd = unsafe {
        libc::syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot create a Landlock ruleset; running the program unconfined");
        return None;
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    let ruleset = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let read_exec = ACCESS_EXECUTE | ACCESS_READ_FILE | ACCESS_READ_DIR;
    let devices = (ACCESS_READ_FILE
        | ACCESS_WRITE_FILE
        | ACCESS_READ_DIR
        | ACCESS_TRUNCATE
        | ACCESS_IOCTL_DEV)
        & handled;
    let mut rules: Vec<(&Path, u64)> = vec![(workspace, handled), (Path::new("/dev"), devices)];
    for path in read_only {
        rules.push((path, read_exec));
    }
    if let Some(dir) = program.parent() {
        rules.push((dir, read_exec));
    }
    for (path, access) in rules {
        let Ok(dir) = std::fs::File::open(path) else {
            continue; // a missing system directory needs no rule
        };
        let rule = PathBeneathAttr {
            allowed_access: access & handled,
            parent_fd: dir.as_raw_fd(),
        };
        // SAFETY: `rule` is a valid `landlock_path_beneath_attr` and both file
        // descriptors are open for the duration of the call.
        let rc = unsafe {
            libc::syscall(
                SYS_LANDLOCK_ADD_RULE,
                ruleset.as_raw_fd(),
                LANDLOCK_RULE_PATH_BENEATH,
                &rule as *const PathBeneathAttr,
                0u32,
            )
        };
        if rc != 0 {
            tracing::warn!(path = %path.display(), error = %std::io::Error::last_os_error(), "cannot add a Landlock rule; running the program unconfined");
            return None;
        }
    }
    Some(ruleset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_translate_and_cwd_stays_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ws = dir.path().canonicalize().expect("canonical");
        std::fs::create_dir(ws.join("src")).expect("mkdir");
        assert_eq!(translate(&ws, "/workspace"), ws.as_os_str());
        assert_eq!(translate(&ws, "/workspace/a/b"), ws.join("a/b").as_os_str());
        assert_eq!(translate(&ws, "/workspaces"), OsString::from("/workspaces"));
        assert_eq!(translate(&ws, "--flag"), OsString::from("--flag"));
        assert_eq!(guest_dir(&ws, "/workspace").expect("ok"), ws);
        assert_eq!(
            guest_dir(&ws, "/workspace/src").expect("ok"),
            ws.join("src")
        );
        assert_eq!(guest_dir(&ws, "src").expect("ok"), ws.join("src"));
        for bad in ["/etc", "/workspace/../", "../x", "/workspace/src/../../etc"] {
            assert!(
                matches!(guest_dir(&ws, bad), Err(ProcessError::InvalidArgument(_))),
                "{bad}"
            );
        }
        std::os::unix::fs::symlink("/etc", ws.join("out")).expect("symlink");
        let err = guest_dir(&ws, "/workspace/out").expect_err("symlink out");
        assert!(err.to_string().contains("outside the workspace"), "{err}");
    }

    #[test]
    fn programs_resolve_on_path_at_grant_time() {
        let policy = ProcessPolicy::resolve(
            &["sh".into(), "no-such-program-xyz".into(), "rel/x".into()],
            ProcessLimits::default(),
        );
        assert!(matches!(policy.program("sh"), Some(Ok(p)) if p.is_absolute()));
        let err = policy
            .program("no-such-program-xyz")
            .expect("listed")
            .clone()
            .unwrap_err();
        assert!(err.contains("not found on the host's PATH"), "{err}");
        assert!(policy.program("rel/x").expect("listed").is_err());
    }
}
