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
//! - Resource limits (CPU seconds, file size, no core dumps) are set in the child;
//!   each run has its own cgroup (`process/cgroup.rs`) limiting its tasks and
//!   memory, or, where none is usable, a warning logged once.
//! - Each run is sandboxed in its own namespaces (`process/sandbox.rs`): an unprivileged
//!   uid without capabilities (an unprivileged host id too when the host runs as
//!   root), a Landlock domain (`process/landlock.rs`) where the kernel has one,
//!   its own PID namespace and `/proc` (no host process
//!   visible or signalable; everything left dies with the program, `setsid`
//!   included), no network unless the engine grants `process-net=host`, and a
//!   root of the system directories (read-only, secrets masked), the granted
//!   programs' directories, the workspace (read-write, `noexec` unless the engine
//!   grants `process-exec=workspace`), a small `/dev` and a tmpfs `/tmp`.
//! - Where the kernel cannot build the sandbox (user namespaces disabled, …) a
//!   warning naming what is missing is logged once and the program runs
//!   confined by Landlock where the kernel has it (the workspace read-write,
//!   system directories read-only, `/dev`), or else by process group,
//!   environment and rlimits only; [`ProcessLimits::require_sandbox`] makes such
//!   a run fail instead.
//! - Loader and shell start-up variables (`LD_*`, `PATH`, `GCONV_PATH`, …) from
//!   the guest are refused.
//! - Stdout and stderr are returned (capped) and, when asked, streamed line by line
//!   into the step log.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::step_log::{LogCapture, LogLevel, LogSource};

mod cgroup;
mod landlock;
mod sandbox;

use cgroup::{CgroupLimits, RunCgroup};
use sandbox::{SandboxPlan, SandboxSpec, Stage, StageCell};

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
    /// Confine programs with Landlock when the kernel supports it: inside the
    /// sandbox, its view again as rules plus the ABI 6 signal and
    /// abstract-socket scopes; in the fallback, the workspace read-write and
    /// the read-only paths.
    pub landlock: bool,
    /// Directories readable (and executable) besides the workspace: bound
    /// read-only into the sandbox (except `/proc` and `/dev`, which the sandbox
    /// has its own of, and `/sys`, which it does not have), and allowed under
    /// Landlock when it is the fallback.
    pub read_only_paths: Vec<PathBuf>,
    /// Run each program in its namespace sandbox when the kernel allows it.
    pub sandbox: bool,
    /// Fail a run whose sandbox cannot be built instead of falling back to
    /// Landlock and rlimits.
    pub require_sandbox: bool,
    /// Most tasks (processes and threads) one run may have alive at once,
    /// enforced through a cgroup per run (`None`: no limit).
    pub max_pids: Option<u64>,
    /// Most bytes of memory one run may use (all its processes together),
    /// enforced through a cgroup per run; the kernel kills a process of the run
    /// when it is exceeded (`None`: no limit).
    pub max_memory: Option<u64>,
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
            sandbox: true,
            require_sandbox: false,
            max_pids: Some(512),
            max_memory: Some(2 << 30),
        }
    }
}

/// The programs one biz may run in one engine, resolved at grant time.
#[derive(Debug, Clone, Default)]
pub struct ProcessPolicy {
    programs: BTreeMap<String, Result<PathBuf, String>>,
    limits: ProcessLimits,
    network: bool,
    exec_workspace: bool,
    builders: Vec<String>,
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
        ProcessPolicy {
            programs,
            limits,
            network: false,
            exec_workspace: false,
            builders: Vec::new(),
        }
    }

    /// These programs run in the sandbox's builder mode (grant
    /// `process-builder=PROG`): root of their own user namespace, with its
    /// capabilities and a range of ids, and no Landlock domain, so that an
    /// image builder can make its own namespaces and mounts.
    #[must_use]
    pub fn with_builders(mut self, builders: Vec<String>) -> Self {
        self.builders = builders;
        self
    }

    /// Programs share the host's network (grant `process-net=host`) instead of
    /// an empty network namespace.
    #[must_use]
    pub fn with_host_network(mut self, network: bool) -> Self {
        self.network = network;
        self
    }

    /// Programs may execute files from the workspace (grant
    /// `process-exec=workspace`); otherwise it is mounted `noexec`.
    #[must_use]
    pub fn with_workspace_exec(mut self, exec: bool) -> Self {
        self.exec_workspace = exec;
        self
    }

    /// The resolved path of a granted program.
    pub fn program(&self, name: &str) -> Option<&Result<PathBuf, String>> {
        self.programs.get(name)
    }

    /// The limits.
    pub fn limits(&self) -> &ProcessLimits {
        &self.limits
    }

    fn program_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for path in self.programs.values().flatten() {
            for p in [Some(path.clone()), path.canonicalize().ok()]
                .into_iter()
                .flatten()
            {
                if let Some(dir) = p.parent()
                    && !dirs.iter().any(|d: &PathBuf| d == dir)
                {
                    dirs.push(dir.to_path_buf());
                }
            }
        }
        dirs
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
    /// The engine requires the sandbox (besides `ProcessLimits::require_sandbox`).
    pub require_sandbox: bool,
}

/// Runs `request`; the capability check has already passed.
pub async fn run(
    ctx: ProcessContext<'_>,
    request: ProcessRequest,
) -> Result<ProcessOutput, ProcessError> {
    let limits = ctx.policy.limits();
    // Either the runtime (the operator) or the engine may require the sandbox.
    let require_sandbox = limits.require_sandbox || ctx.require_sandbox;
    let required_by = if limits.require_sandbox {
        "this host requires it (`ProcessLimits::require_sandbox`, `--require-sandbox`)"
    } else {
        "this engine requires it (the `require_sandbox` setting)"
    };
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

    if let Some((name, _)) = request
        .env
        .iter()
        .find(|(k, v)| refused_env(k, v, &workspace))
    {
        return Err(ProcessError::InvalidArgument(format!(
            "environment variable `{name}` is refused: loader and start-up variables (`LD_*`, `GCONV_PATH`, `BASH_ENV`, …) and a `PATH` with a relative, empty or workspace directory would let a step run other code than the granted program; `PATH` may only name absolute directories outside the workspace"
        )));
    }

    let command = || {
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
        cmd
    };
    let rlimits = [
        (libc::RLIMIT_CPU, limits.cpu_seconds),
        (libc::RLIMIT_FSIZE, limits.file_size),
        (libc::RLIMIT_CORE, 0),
    ];
    let set_rlimits = move || -> std::io::Result<()> {
        for (resource, value) in rlimits {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit with a valid struct, async-signal-safe.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };

    let cgroup = match (limits.max_pids, limits.max_memory) {
        (None, None) => None,
        (pids, memory) => match RunCgroup::create(CgroupLimits { pids, memory }) {
            Ok(cgroup) => Some(std::sync::Arc::new(cgroup)),
            Err(why) => {
                if require_sandbox {
                    return Err(ProcessError::Failed(format!(
                        "cannot run `{}`: the per-run pids and memory limits cannot be enforced ({why}), and {required_by}",
                        request.program
                    )));
                }
                if !CGROUP_UNAVAILABLE.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{why}: programs run for guests have no per-run pids and memory limits (a fork or memory bomb is bounded only by the host's own limits)"
                    );
                }
                None
            }
        },
    };
    let join_cgroup = move |cgroup: &Option<std::sync::Arc<RunCgroup>>| -> std::io::Result<()> {
        match cgroup {
            // SAFETY: only called from the `pre_exec` closures below, in the
            // forked child.
            Some(cgroup) => unsafe { cgroup.join() },
            None => Ok(()),
        }
    };

    let started = Instant::now();
    let mut spawned = None;
    if limits.sandbox && !SANDBOX_UNAVAILABLE.load(Ordering::Relaxed) {
        let spec = SandboxSpec {
            system_dirs: &limits.read_only_paths,
            program_dirs: ctx.policy.program_dirs(),
            workspace: &workspace,
            cwd: &cwd,
            network: ctx.policy.network,
            exec_workspace: ctx.policy.exec_workspace,
            landlock: limits.landlock,
            builder: ctx.policy.builders.contains(&request.program),
        };
        let builder = spec.builder;
        // As root, the sandbox's uid is an unprivileged host id: give it the
        // workspace (what steps wrote since the last run included).
        sandbox::hand_over(&workspace).map_err(|e| {
            ProcessError::Failed(format!(
                "cannot hand the workspace {} to the sandbox's uid: {e}",
                workspace.display()
            ))
        })?;
        let stage = StageCell::new()
            .map_err(|e| ProcessError::Failed(format!("cannot prepare the sandbox: {e}")))?;
        let plan = SandboxPlan::new(&spec, &stage)
            .map_err(|e| ProcessError::Failed(format!("cannot prepare the sandbox: {e}")))?;
        let plan = std::sync::Arc::new(plan);
        let mut cmd = command();
        let in_child = plan.clone();
        let cgroup_in_child = cgroup.clone();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (open/write on cgroup.procs, setrlimit,
        // unshare, mount, clone, …) on values prepared before the fork; it
        // allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                join_cgroup(&cgroup_in_child)?;
                set_rlimits()?;
                in_child.enter()
            });
        }
        match cmd.spawn() {
            Ok(child) => spawned = Some(child),
            Err(e) => {
                let failed = stage.get();
                if failed == Stage::Exec || failed == Stage::None {
                    return Err(ProcessError::Failed(format!(
                        "cannot start `{}`: {e}",
                        program.display()
                    )));
                }
                let what = format!(
                    "the process sandbox could not be built ({} failed: {e})",
                    failed.describe()
                );
                if require_sandbox {
                    return Err(ProcessError::Failed(format!(
                        "cannot run `{}`: {what}, and {required_by}",
                        request.program
                    )));
                }
                // A builder never runs without its sandbox (it would run as
                // the host's root), and its failure says nothing of the
                // sandbox other programs get.
                if builder || !failed.is_missing_mechanism() {
                    return Err(ProcessError::Failed(format!(
                        "cannot run `{}`: {what}",
                        request.program
                    )));
                }
                if !SANDBOX_UNAVAILABLE.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{what}: programs run for guests are no longer isolated from host processes, the network and the host's file system (Landlock, where the kernel has it, process groups, environment scrubbing and rlimits remain)"
                    );
                }
            }
        }
    } else if require_sandbox {
        return Err(ProcessError::Failed(format!(
            "cannot run `{}`: the process sandbox is {} and {required_by}",
            request.program,
            if limits.sandbox {
                "unavailable on this kernel"
            } else {
                "turned off"
            }
        )));
    }
    let mut child = match spawned {
        Some(child) => child,
        None => {
            let ruleset = if limits.landlock {
                landlock::host_ruleset(&workspace, &program, &limits.read_only_paths)
            } else {
                None
            };
            let ruleset_fd = ruleset.as_ref().map(AsRawFd::as_raw_fd);
            let mut cmd = command();
            let cgroup_in_child = cgroup.clone();
            // SAFETY: the closure runs in the forked child before exec and only
            // makes async-signal-safe system calls (open/write on cgroup.procs,
            // setrlimit, prctl, landlock_restrict_self) on values prepared
            // before the fork; it allocates nothing and takes no lock.
            unsafe {
                cmd.pre_exec(move || {
                    join_cgroup(&cgroup_in_child)?;
                    set_rlimits()?;
                    if let Some(fd) = ruleset_fd {
                        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        landlock::restrict_self(fd)?;
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(|e| {
                ProcessError::Failed(format!("cannot start `{}`: {e}", program.display()))
            })?;
            drop(ruleset);
            child
        }
    };
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
    // Kills what is left in the run's cgroup (children of an unsandboxed run)
    // and removes it.
    drop(cgroup);
    Ok(ProcessOutput {
        status,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
    })
}

/// Set once a run found that the kernel cannot build the sandbox (logged then),
/// so later runs go straight to the fallback.
static SANDBOX_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Set once a run found no usable cgroup (logged then).
static CGROUP_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Environment variables a guest may not set: they make the dynamic loader, libc
/// or a shell load code the grant did not name.
fn refused_env(name: &str, value: &str, workspace: &Path) -> bool {
    if name == "PATH" {
        return value.split(':').any(|dir| {
            dir.is_empty()
                || !dir.starts_with('/')
                || dir.split('/').any(|c| c == "..")
                || Path::new(dir).starts_with(GUEST_WORKSPACE)
                || Path::new(dir).starts_with(workspace)
        });
    }
    name.starts_with("LD_")
        || matches!(
            name,
            "GCONV_PATH"
                | "GETCONF_DIR"
                | "HOSTALIASES"
                | "LOCPATH"
                | "NLSPATH"
                | "MALLOC_TRACE"
                | "GLIBC_TUNABLES"
                | "BASH_ENV"
                | "ENV"
        )
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

/// Whether programs are confined with Landlock on this host.
pub fn landlock_available() -> bool {
    landlock::abi() > 0
}

/// The running kernel's Landlock ABI version (0: none). From 6 on, programs
/// are also scoped: no signal to, and no abstract unix socket of, a process
/// outside their domain.
pub fn landlock_abi() -> i64 {
    landlock::abi()
}

/// The host uid and gid a program's uid inside the sandbox maps to: the
/// host's own when it runs unprivileged, an unprivileged id (root's
/// `/etc/subuid` range, or 100000) when it runs as root.
pub fn sandbox_host_ids() -> (u32, u32) {
    sandbox::host_ids()
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
    fn loader_variables_and_a_workspace_path_are_refused() {
        let ws = Path::new("/srv/ws");
        for (name, value) in [
            ("LD_PRELOAD", "/workspace/lib.so"),
            ("LD_AUDIT", "x"),
            ("GCONV_PATH", "/workspace"),
            ("BASH_ENV", "/workspace/rc"),
            ("PATH", "/workspace/bin:/usr/bin"),
            ("PATH", "/srv/ws/bin"),
            ("PATH", "bin:/usr/bin"),
            ("PATH", "/usr/bin::/bin"),
            ("PATH", "/usr/../workspace"),
        ] {
            assert!(refused_env(name, value, ws), "{name}={value}");
        }
        for (name, value) in [
            ("PATH", "/usr/lib/git-core:/usr/local/bin:/usr/bin:/bin"),
            ("HOME", "/workspace"),
            ("GIT_DIR", "/workspace/.git"),
            ("TMPDIR", "/workspace/tmp"),
        ] {
            assert!(!refused_env(name, value, ws), "{name}={value}");
        }
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
