//! The `faults` biz: a test plugin for the host's isolation runtime, with one step
//! type per behaviour the runtime must run, limit or contain.
//!
//! - Plain steps that benchmarks and output tests use: `upper`, `echo`, `print`,
//!   `huge-output`, `log-flood`, `context`, `fail`, `fail-with`, `flaky`,
//!   `sleep-first`, `seed`.
//! - Faults a host limit must stop ([`limits`]): `spin` (CPU; `burn` is a bounded
//!   one), `sleep` (wall clock in
//!   a host call), `memory-bomb` (memory), `recurse` (stack), `panic` (a guest trap).
//! - Filesystem access ([`filesystem`]): `read-file`, `write-file`, and the
//!   `escape-*` steps, which try to leave `/workspace` and report what happened.
//! - Capabilities ([`capability`]): `call-capability` makes one call through the SDK
//!   and reports whether the host allowed it.
//!
//! ```yaml
//! - name: payload
//!   uses: faults/echo
//!   with:
//!     data: "hello"
//! ```
//!
//! It is not meant for real pipelines: several steps never return on purpose.

use std::io::Write as _;

use arkline_sdk::prelude::*;

pub mod capability;
pub mod filesystem;
pub mod limits;

/// Configuration of the `upper` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upper {
    /// The text to upper-case.
    pub text: String,
}

/// Runs the `upper` step: output `text` is the input upper-cased. Kept minimal (no
/// logging) because benchmarks time the call overhead with it.
pub fn upper(_ctx: &Context, config: Upper) -> StepResult {
    Ok(Outcome::new().output("text", config.text.to_uppercase()))
}

/// The constant the `seed` step returns, as it appears in the component's code:
/// the density benchmark makes distinct components (distinct code, so distinct
/// compiled artifacts) by replacing its encoding (`i64.const`, a 10-byte LEB128
/// whatever the low 32 bits are) with another value.
pub const SEED: u64 = 0x5EED_C0DE_0000_0000;

/// Configuration of the `seed` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Seed {}

/// Runs the `seed` step: outputs `seed`, the [`SEED`] constant in this
/// component's code, in hex.
pub fn seed(_ctx: &Context, _config: Seed) -> StepResult {
    // `black_box` keeps the constant an immediate in this function's code.
    let seed = std::hint::black_box(SEED);
    Ok(Outcome::new().output("seed", format!("{seed:016x}")))
}

/// Configuration of the `echo` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Echo {
    /// The payload to return unchanged.
    pub data: String,
}

/// Runs the `echo` step: outputs `len` (the payload's length in bytes) and `data`.
pub fn echo(_ctx: &Context, config: Echo) -> StepResult {
    Ok(Outcome::new()
        .output("len", config.data.len().to_string())
        .output("data", config.data))
}

/// Configuration of the `fail` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fail {
    /// The failure message the step returns.
    pub message: String,
}

/// Runs the `fail` step: fails with the configured message.
pub fn fail(_ctx: &Context, config: Fail) -> StepResult {
    Err(StepError::failed(config.message))
}

/// Configuration of the `fail-with` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailWith {
    /// Size in bytes of the failure message.
    pub bytes: u64,
}

/// Runs the `fail-with` step: fails with a message of `bytes` bytes (`é`s, two
/// bytes each, then an `x` when `bytes` is odd), so a host that cuts it must
/// find a character boundary.
pub fn fail_with(_ctx: &Context, config: FailWith) -> StepResult {
    let size = usize::try_from(config.bytes)
        .map_err(|_| StepError::invalid_config("bytes", "too large for a 32-bit guest"))?;
    let mut message = String::new();
    message
        .try_reserve_exact(size)
        .map_err(|e| StepError::failed(format!("cannot allocate {size} bytes: {e}")))?;
    message.push_str(&"é".repeat(size / 2));
    if size % 2 == 1 {
        message.push('x');
    }
    Err(StepError::failed(message))
}

/// Configuration of the `flaky` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Flaky {
    /// How many attempts fail before one succeeds.
    pub failures: u32,
}

/// Runs the `flaky` step: attempts up to `failures` fail, later ones succeed with
/// output `attempt`.
pub fn flaky(ctx: &Context, config: Flaky) -> StepResult {
    if ctx.attempt <= config.failures {
        return Err(StepError::failed(format!(
            "attempt {} fails on purpose ({} of {})",
            ctx.attempt, ctx.attempt, config.failures
        )));
    }
    Ok(Outcome::new().output("attempt", ctx.attempt.to_string()))
}

/// Configuration of the `log-flood` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogFlood {
    /// How many lines to write.
    pub lines: u32,
    /// Bytes in each line, not counting the newline that stdout and stderr add.
    pub bytes_per_line: u32,
    /// Where the lines go (default: `log`).
    #[serde(default)]
    pub via: Via,
}

/// Where `log-flood` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The `log` capability, one info record per line.
    #[default]
    Log,
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
}

/// Runs the `log-flood` step: writes `lines` lines of `bytes_per_line` bytes each and
/// outputs `lines`.
pub fn log_flood(_ctx: &Context, config: LogFlood) -> StepResult {
    let width = usize::try_from(config.bytes_per_line)
        .map_err(|_| StepError::invalid_config("bytes_per_line", "too large for a 32-bit guest"))?;
    let filler = "x".repeat(width);
    let write_error = |e: std::io::Error| StepError::failed(format!("cannot write line: {e}"));
    match config.via {
        Via::Log => {
            for i in 0..config.lines {
                arkline_sdk::info!("{}", flood_line(i, &filler));
            }
        }
        Via::Stdout => {
            let mut out = std::io::stdout().lock();
            for i in 0..config.lines {
                writeln!(out, "{}", flood_line(i, &filler)).map_err(write_error)?;
            }
            out.flush().map_err(write_error)?;
        }
        Via::Stderr => {
            let mut err = std::io::stderr().lock();
            for i in 0..config.lines {
                writeln!(err, "{}", flood_line(i, &filler)).map_err(write_error)?;
            }
        }
    }
    Ok(Outcome::new().output("lines", config.lines.to_string()))
}

/// Line `i` of a flood: its number, a space, then `x`s, cut to the filler's length,
/// so every line has the requested size and lines can still be told apart.
fn flood_line(i: u32, filler: &str) -> String {
    let mut line = format!("{i} ");
    line.truncate(filler.len());
    line.push_str(&filler[line.len()..]);
    line
}

/// Configuration of the `print` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Print {
    /// Written to standard output as is (no newline added).
    pub stdout: String,
    /// Written to standard error as is (no newline added).
    pub stderr: String,
}

/// Runs the `print` step: writes the two strings to stdout and stderr and returns no
/// outputs.
pub fn print(_ctx: &Context, config: Print) -> StepResult {
    // `print!` would panic on a failed write, and stdout is line-buffered: text
    // without a newline must be flushed, or it would be lost when the call ends.
    let mut out = std::io::stdout().lock();
    out.write_all(config.stdout.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| StepError::failed(format!("cannot write to stdout: {e}")))?;
    std::io::stderr()
        .write_all(config.stderr.as_bytes())
        .map_err(|e| StepError::failed(format!("cannot write to stderr: {e}")))?;
    Ok(Outcome::new())
}

/// Configuration of the `huge-output` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HugeOutput {
    /// Size in bytes of the `blob` output.
    pub bytes: u64,
}

/// Runs the `huge-output` step: one output `blob` of `bytes` `x` characters.
pub fn huge_output(_ctx: &Context, config: HugeOutput) -> StepResult {
    let size = usize::try_from(config.bytes)
        .map_err(|_| StepError::invalid_config("bytes", "too large for a 32-bit guest"))?;
    Ok(Outcome::new().output("blob", blob(size)?))
}

/// `size` `x` characters. The allocation is fallible so that a size the guest's
/// memory cannot hold ends in an error the test can read, not an abort.
fn blob(size: usize) -> Result<String, StepError> {
    const CHUNK: usize = 64 * 1024;
    let mut blob = String::new();
    blob.try_reserve_exact(size)
        .map_err(|e| StepError::failed(format!("cannot allocate {size} bytes: {e}")))?;
    let chunk = "x".repeat(size.min(CHUNK));
    while blob.len() < size {
        let take = chunk.len().min(size - blob.len());
        blob.push_str(&chunk[..take]);
    }
    Ok(blob)
}

/// Configuration of the `context` step (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextConfig {}

/// Runs the `context` step: outputs every field of the [`Context`] the host passed,
/// `env` as sorted `key=value` lines, and `cwd`, the guest's current directory (or
/// `error: …` when it has none).
pub fn context(ctx: &Context, _config: ContextConfig) -> StepResult {
    let env = ctx
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let cwd = match std::env::current_dir() {
        Ok(dir) => dir.display().to_string(),
        Err(e) => format!("error: {e}"),
    };
    Ok(Outcome::new()
        .output("engine", ctx.engine.clone())
        .output("pipeline", ctx.pipeline.clone())
        .output("run", ctx.run.to_string())
        .output("stage", ctx.stage.clone())
        .output("step_name", ctx.step_name.clone())
        .output("step_type", ctx.step_type.clone())
        .output("attempt", ctx.attempt.to_string())
        .output("workspace", ctx.workspace.clone())
        .output("env", env)
        .output("cwd", cwd))
}

arkline_sdk::steps! {
    /// Upper-cases `text` (a minimal step for benchmarks).
    "upper" => upper,
    /// Returns `data` unchanged and its length `len` (payload-size benchmarks).
    "echo" => echo,
    /// Fails with `message`.
    "fail" => fail,
    /// Fails with a message of `bytes` bytes (failure-text caps).
    "fail-with" => fail_with,
    /// Fails its first `failures` attempts, then succeeds (retry tests).
    "flaky" => flaky,
    /// Appends `line` to the file `path`; outputs the line count `lines`.
    "append" => filesystem::append,
    /// Loops on the CPU forever; only a host limit stops it.
    "spin" => limits::spin,
    /// Sleeps `ms` milliseconds through the WASI clock, then outputs `slept_ms`.
    "sleep" => limits::sleep,
    /// Sleeps `ms` milliseconds in its first attempt only (crash-recovery tests).
    "sleep-first" => limits::sleep_first,
    /// Allocates and touches 1 MiB chunks forever; only the memory limit stops it.
    "memory-bomb" => limits::memory_bomb,
    /// Recurses without bound until the guest's stack overflows.
    "recurse" => limits::recurse,
    /// Panics with `message` (a trap, as guests abort on panic).
    "panic" => limits::panic,
    /// Writes `lines` lines of `bytes_per_line` bytes to the log, stdout or stderr.
    "log-flood" => log_flood,
    /// Writes `stdout` to standard output and `stderr` to standard error.
    "print" => print,
    /// Returns one output `blob` of `bytes` bytes.
    "huge-output" => huge_output,
    /// Reads `path` and returns it as `content`.
    "read-file" => filesystem::read_file,
    /// Writes `content` to `path`.
    "write-file" => filesystem::write_file,
    /// Tries to leave the workspace through `..`; reports each attempt.
    "escape-dotdot" => filesystem::escape_dotdot,
    /// Tries absolute paths outside the workspace; reports each attempt.
    "escape-absolute" => filesystem::escape_absolute,
    /// Tries to leave the workspace through symlinks; reports each attempt.
    "escape-symlink" => filesystem::escape_symlink,
    /// Makes one call of a capability and reports whether the host allowed it.
    "call-capability" => capability::call_capability,
    /// One operation on the engine's blob cache (`get`, `put`, `remove`).
    "cache" => capability::cache_op,
    /// Returns the step's context, environment and current directory as outputs.
    "context" => context,
    /// Returns the constant in its code (distinct-component density benchmarks).
    "seed" => seed,
    /// Runs `iterations` turns of a CPU loop, then returns (CPU-share tests).
    "burn" => limits::burn,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flood_lines_have_the_requested_size() {
        let filler = "x".repeat(10);
        assert_eq!(flood_line(7, &filler), "7 xxxxxxxx");
        assert_eq!(flood_line(123_456_789, &filler), "123456789 ");
        assert_eq!(flood_line(4_000_000_000, &filler), "4000000000");
        assert_eq!(flood_line(3, ""), "");
        assert_eq!(flood_line(3, "x"), "3");
    }

    #[test]
    fn blob_has_the_requested_size() {
        for size in [0, 1, 64 * 1024, 64 * 1024 + 1, 200_000] {
            let b = blob(size).expect("allocates");
            assert_eq!(b.len(), size);
            assert!(b.bytes().all(|c| c == b'x'));
        }
    }

    #[test]
    fn too_large_blob_is_an_error_not_an_abort() {
        let err = blob(usize::MAX).expect_err("cannot allocate");
        assert!(err.to_string().contains("cannot allocate"), "{err}");
    }

    #[test]
    fn echo_reports_byte_length() {
        let ctx = test_context();
        let out = echo(&ctx, Echo { data: "é".into() }).expect("ok");
        assert_eq!(out.outputs["len"], "2");
        assert_eq!(out.outputs["data"], "é");
    }

    #[test]
    fn context_lists_env_sorted() {
        let mut ctx = test_context();
        ctx.env.insert("B".into(), "2".into());
        ctx.env.insert("A".into(), "1".into());
        let out = context(&ctx, ContextConfig {}).expect("ok");
        assert_eq!(out.outputs["env"], "A=1\nB=2");
        assert_eq!(out.outputs["run"], "42");
        assert_eq!(out.outputs["step_type"], "context");
    }

    #[test]
    fn via_defaults_to_log_and_refuses_unknown_fields() {
        let config: LogFlood =
            arkline_sdk::decode_config(r#"{"lines":1,"bytes_per_line":2}"#).expect("valid");
        assert_eq!(config.via, Via::Log);
        let err = arkline_sdk::decode_config::<LogFlood>(
            r#"{"lines":1,"bytes_per_line":2,"via":"file"}"#,
        )
        .expect_err("unknown variant");
        assert!(err.to_string().contains("unknown variant `file`"), "{err}");
    }

    pub(crate) fn test_context() -> Context {
        Context {
            engine: "e".into(),
            pipeline: "p".into(),
            run: 42,
            stage: "s".into(),
            step_name: "n".into(),
            step_type: "context".into(),
            attempt: 1,
            workspace: "/workspace".into(),
            env: Default::default(),
        }
    }
}
