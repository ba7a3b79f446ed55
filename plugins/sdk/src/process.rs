//! Running granted programs on the host (the `process` capability), with a builder
//! shaped like [`std::process::Command`].
//!
//! ```no_run
//! use arkline_sdk::process::Command;
//! # fn f() -> Result<(), arkline_sdk::HostError> {
//! let out = Command::new("git")
//!     .args(["rev-parse", "HEAD"])
//!     .current_dir("/workspace/src")
//!     .output()?;
//! assert!(out.status.success());
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use crate::HostError;
use crate::bindings::arkline::step::process as wit;

/// A program to run on the host. Only programs the engine granted by name run; the
/// working directory is a guest path inside `/workspace`.
#[derive(Debug, Clone)]
#[must_use]
pub struct Command {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    stream_to_log: bool,
}

impl Command {
    /// A command running `program` (a granted program name, not a path).
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout: None,
            stream_to_log: true,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets environment variables for the program.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Sets the working directory, a guest path inside `/workspace`.
    pub fn current_dir(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Bytes written to the program's standard input.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// A time limit; on expiry the program's whole process group is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether output is copied into the step log as it is produced (default: yes).
    pub fn stream_to_log(mut self, stream: bool) -> Self {
        self.stream_to_log = stream;
        self
    }

    /// Runs the program to completion and returns its status and captured output.
    pub fn output(&self) -> Result<Output, HostError> {
        let command = wit::Command {
            program: self.program.clone(),
            args: self.args.clone(),
            env: crate::context::key_values(self.env.iter().cloned()),
            cwd: self.cwd.clone(),
            stdin: self.stdin.clone(),
            timeout_ms: self
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            stream_to_log: self.stream_to_log,
        };
        let out = wit::run(&command)?;
        Ok(Output {
            status: match out.status {
                wit::ExitStatus::Exited(code) => ExitStatus::Exited(code),
                wit::ExitStatus::Signaled(sig) => ExitStatus::Signaled(sig),
                wit::ExitStatus::TimedOut => ExitStatus::TimedOut,
            },
            stdout: out.stdout,
            stderr: out.stderr,
            stdout_truncated: out.stdout_truncated,
            stderr_truncated: out.stderr_truncated,
        })
    }
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
    /// It was killed because its time limit passed.
    TimedOut,
}

impl ExitStatus {
    /// True when the program exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Exited(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exit code {code}"),
            ExitStatus::Signaled(sig) => write!(f, "signal {sig}"),
            ExitStatus::TimedOut => f.write_str("timeout"),
        }
    }
}

/// A finished program's status and output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Captured standard output (up to the host's cap).
    pub stdout: Vec<u8>,
    /// Captured standard error (up to the host's cap).
    pub stderr: Vec<u8>,
    /// Standard output passed the cap and was cut.
    pub stdout_truncated: bool,
    /// Standard error passed the cap and was cut.
    pub stderr_truncated: bool,
}
