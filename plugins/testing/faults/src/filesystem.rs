//! Filesystem steps: plain reads and writes, and the `escape-*` steps that try to
//! reach files outside the workspace.
//!
//! The host preopens only `/workspace`. The guest's current directory need not be
//! `/workspace`, so every path here is an absolute guest path, except the relative
//! ones `escape-dotdot` tries on purpose.

use std::fs;
use std::io;

use arkline_sdk::prelude::*;

/// Configuration of the `read-file` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFile {
    /// Guest path of the file to read.
    pub path: String,
}

/// Runs the `read-file` step: outputs the file's text as `content`.
pub fn read_file(_ctx: &Context, config: ReadFile) -> StepResult {
    let content = fs::read_to_string(&config.path)
        .map_err(|e| StepError::failed(format!("cannot read {}: {e}", config.path)))?;
    Ok(Outcome::new().output("content", content))
}

/// Configuration of the `write-file` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// Guest path of the file to write (created or replaced).
    pub path: String,
    /// The text to write.
    pub content: String,
}

/// Runs the `write-file` step: writes `content` to `path`; no outputs.
pub fn write_file(_ctx: &Context, config: WriteFile) -> StepResult {
    fs::write(&config.path, config.content.as_bytes())
        .map_err(|e| StepError::failed(format!("cannot write {}: {e}", config.path)))?;
    Ok(Outcome::new())
}

/// Configuration of the `escape-dotdot` step (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscapeDotdot {}

/// Runs the `escape-dotdot` step: tries to climb out of the workspace with `..`.
/// Outputs `attempts`, `escaped` and `details` (see [`Attempts`]).
pub fn escape_dotdot(_ctx: &Context, _config: EscapeDotdot) -> StepResult {
    let mut attempts = Attempts::default();
    attempts.read("/workspace/../etc/passwd");
    attempts.read("/workspace/../../etc/hostname");
    attempts.read("../etc/passwd");
    attempts.read("../../../../etc/passwd");
    attempts.write("/workspace/../escaped.txt");
    attempts.create_dir("/workspace/../escaped-dir");
    Ok(attempts.outcome())
}

/// Configuration of the `escape-absolute` step (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscapeAbsolute {}

/// Runs the `escape-absolute` step: tries absolute paths outside the workspace.
/// Outputs `attempts`, `escaped` and `details` (see [`Attempts`]).
pub fn escape_absolute(_ctx: &Context, _config: EscapeAbsolute) -> StepResult {
    let mut attempts = Attempts::default();
    attempts.read("/etc/passwd");
    attempts.read("/proc/self/environ");
    attempts.write("/tmp/arkline-escaped.txt");
    attempts.read_dir("/");
    Ok(attempts.outcome())
}

/// Configuration of the `escape-symlink` step (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EscapeSymlink {}

/// Runs the `escape-symlink` step: follows `/workspace/outside`, a symlink the host
/// test plants pointing to a directory outside the workspace that holds
/// `secret.txt`; then makes its own symlinks `/workspace/made-link` → `/etc` and
/// `/workspace/made-rel-link` → `../../../../../../../../etc` and reads `passwd`
/// through each.
///
/// Outputs `attempts`, `escaped` and `details` (see [`Attempts`]), and `setup`: one
/// line per link made, `symlink <link> -> <target>: created` or `…: refused
/// (<error>)`. Making a link inside the workspace is not an escape by itself (only
/// following it out is), so it is not counted as an attempt.
pub fn escape_symlink(_ctx: &Context, _config: EscapeSymlink) -> StepResult {
    let mut attempts = Attempts::default();
    attempts.read("/workspace/outside/secret.txt");
    attempts.write("/workspace/outside/planted.txt");
    attempts.read_dir("/workspace/outside");

    // Both an absolute target and a relative one that climbs out: a sandbox may
    // treat the two differently when the link is made or followed.
    let mut setup = Vec::new();
    for (link, target) in [
        ("/workspace/made-link", "/etc"),
        ("/workspace/made-rel-link", "../../../../../../../../etc"),
    ] {
        setup.push(match make_link(target, link) {
            Ok(()) => format!("symlink {link} -> {target}: created"),
            Err(e) => format!("symlink {link} -> {target}: refused ({e})"),
        });
        // Tried even when the link was refused: the read must fail either way.
        attempts.read(&format!("{link}/passwd"));
    }
    Ok(attempts.outcome().output("setup", setup.join("\n")))
}

/// Creates the symlink `link` → `target`.
#[cfg(target_os = "wasi")]
fn make_link(target: &str, link: &str) -> io::Result<()> {
    // `std::os::wasi::fs::symlink_path` is unstable (`wasi_ext`), and `std::os::unix`
    // does not exist on WASI. `std::fs::soft_link` is stable and calls the same
    // WASI `symlink-at`; it is deprecated only in favour of those per-platform
    // functions.
    #[allow(deprecated)]
    fs::soft_link(target, link)
}

/// Creates the symlink `link` → `target` (host builds, where only unit tests run).
#[cfg(unix)]
fn make_link(target: &str, link: &str) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// Creates the symlink `link` → `target` (not supported on this platform).
#[cfg(not(any(target_os = "wasi", unix)))]
fn make_link(_target: &str, _link: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks are not supported on this platform",
    ))
}

/// Escape attempts and their results. Any attempt that succeeds is an escape: every
/// path tried names something outside the workspace.
///
/// The outcome has `attempts` (how many were tried), `escaped` (how many succeeded)
/// and `details`, one line per attempt: `<op> <path>: denied (<error>)` or
/// `<op> <path>: ESCAPED`.
#[derive(Debug, Default)]
pub struct Attempts {
    lines: Vec<String>,
    escaped: usize,
}

/// What an escape attempt writes, so a leaked file can be recognised on the host.
const PLANTED: &[u8] = b"written by the arkline faults plugin: a workspace escape\n";

impl Attempts {
    /// Tries to read the file at `path`.
    pub fn read(&mut self, path: &str) {
        // Bytes, not text: a file that is not UTF-8 was still read.
        self.record("read", path, fs::read(path));
    }

    /// Tries to create or replace the file at `path`.
    pub fn write(&mut self, path: &str) {
        self.record("write", path, fs::write(path, PLANTED));
    }

    /// Tries to create the directory `path`.
    pub fn create_dir(&mut self, path: &str) {
        self.record("create_dir", path, fs::create_dir(path));
    }

    /// Tries to list the directory `path`, entries included.
    pub fn read_dir(&mut self, path: &str) {
        let listed = fs::read_dir(path).and_then(|entries| entries.collect::<io::Result<Vec<_>>>());
        self.record("read_dir", path, listed);
    }

    /// Records the result of one attempt.
    pub fn record<T>(&mut self, op: &str, path: &str, result: io::Result<T>) {
        match result {
            Ok(_) => {
                self.escaped += 1;
                self.lines.push(format!("{op} {path}: ESCAPED"));
            }
            Err(e) => self.lines.push(format!("{op} {path}: denied ({e})")),
        }
    }

    /// The step's outcome: `attempts`, `escaped` and `details`.
    pub fn outcome(self) -> Outcome {
        Outcome::new()
            .output("attempts", self.lines.len().to_string())
            .output("escaped", self.escaped.to_string())
            .output("details", self.lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_and_describe_each_result() {
        let mut attempts = Attempts::default();
        attempts.record::<()>(
            "read",
            "/etc/passwd",
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "not allowed",
            )),
        );
        attempts.record("write", "/tmp/x", Ok(()));
        let out = attempts.outcome();
        assert_eq!(out.outputs["attempts"], "2");
        assert_eq!(out.outputs["escaped"], "1");
        assert_eq!(
            out.outputs["details"],
            "read /etc/passwd: denied (not allowed)\nwrite /tmp/x: ESCAPED"
        );
    }

    #[test]
    fn missing_file_is_reported_as_denied() {
        let mut attempts = Attempts::default();
        attempts.read("/nonexistent/arkline-faults-test/file");
        let out = attempts.outcome();
        assert_eq!(out.outputs["escaped"], "0");
        assert!(
            out.outputs["details"]
                .starts_with("read /nonexistent/arkline-faults-test/file: denied ("),
            "{}",
            out.outputs["details"]
        );
    }

    #[test]
    fn read_file_error_names_the_path() {
        let ctx = crate::tests::test_context();
        let err = read_file(
            &ctx,
            ReadFile {
                path: "/nonexistent/arkline-faults-test".into(),
            },
        )
        .expect_err("missing");
        assert!(
            err.to_string()
                .starts_with("cannot read /nonexistent/arkline-faults-test: "),
            "{err}"
        );
    }
}

/// Configuration of the `append` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Append {
    /// Guest path of the file to append to (created when missing).
    pub path: String,
    /// The line appended (a newline is added).
    pub line: String,
}

/// Runs the `append` step: appends `line` to `path` and outputs `lines`, the
/// file's line count afterwards (crash tests count step runs with it).
pub fn append(_ctx: &Context, config: Append) -> StepResult {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.path)
        .map_err(|e| StepError::failed(format!("cannot open {}: {e}", config.path)))?;
    writeln!(file, "{}", config.line)
        .and_then(|()| file.sync_all())
        .map_err(|e| StepError::failed(format!("cannot append to {}: {e}", config.path)))?;
    let text = fs::read_to_string(&config.path)
        .map_err(|e| StepError::failed(format!("cannot read {}: {e}", config.path)))?;
    Ok(Outcome::new().output("lines", text.lines().count().to_string()))
}
