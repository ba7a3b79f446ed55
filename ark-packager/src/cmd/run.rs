//! `cargo ark run`: one step of a plugin in the real isolation runtime.
//!
//! Package (or open) → start a [`Runtime`] with the compiled cache in
//! `<target dir>/ark/compiled` → install with the `--grant`ed capabilities →
//! invoke one step with its log streamed to stderr → print outputs or the failure.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use anyhow::Context as _;
use arkline::ark::Ark;
use arkline::host::terminal::{escape_line, escape_text};
use arkline::host::{Capabilities, merge_grants, parse_grant};
use arkline::host::{LogLevel, LogLine, LogSink};
use arkline::model::ByteSize;
use arkline::runtime::{
    Activation, BizRegistry, CacheOutcome, Runtime, RuntimeConfig, StepCall, StepFailure,
    StepFault, StepOutcome, StepReport,
};
use clap::Args;
use serde_json::json;

use crate::cmd::{GlobalOpts, PackageSelection};
use crate::project::{CargoOptions, cargo_path};
use crate::shell::Shell;

/// The engine name the step runs under (it appears in capability refusals).
const ENGINE: &str = "local";

/// Run one step of the plugin in the isolation runtime, as an engine would: build and
/// package the crate (or take `--ark`), install it with the granted capabilities,
/// and invoke STEP with its log printed live.
#[derive(Debug, Clone, Args)]
pub struct RunCmd {
    /// The step type to run (one the plugin's `steps!` declares).
    pub step: String,
    /// The step's configuration (its `with:`) as a JSON object.
    #[arg(long, value_name = "JSON", value_parser = parse_with, conflicts_with = "with_file")]
    pub with: Option<serde_json::Map<String, serde_json::Value>>,
    /// Read the step's configuration from a JSON file (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub with_file: Option<PathBuf>,
    /// Host directory preopened at /workspace (created if missing; default: a fresh
    /// temporary directory, kept and printed, so its files can be looked at).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Grant a capability (repeatable, additive; default: none beyond `log`):
    /// `process=PROG[,PROG…]`, `http=HOST[,HOST…]`, `cache`, `host-call=NAME[,NAME…]`;
    /// with `process`, `process-net=host` (programs get the host's network instead
    /// of none), `process-exec=workspace` (files in the workspace may run) and
    /// `process-builder=PROG[,PROG…]` (those programs run as root of their own
    /// user namespace with no Landlock domain: image builders such as buildah).
    ///
    /// A biz may use what its manifest requests *and* the engine grants; `*` grants
    /// whatever the manifest requests of that kind. Examples: `--grant process=sh,git`,
    /// `--grant http=api.example.com,*.internal`, `--grant cache`,
    /// `--grant host-call=kv.get`. Engine configuration uses the same syntax.
    #[arg(long = "grant", value_name = "SPEC", value_parser = parse_grant)]
    pub grants: Vec<Capabilities>,
    /// Wall-clock limit of the call.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Linear-memory limit of the call (B, K/KiB, M/MiB, G/GiB, or KB, MB, GB).
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_memory)]
    pub memory: ByteSize,
    /// Fuel for the call (default: unlimited); the fuel consumed is reported.
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Run this archive instead of building the current crate.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["package", "manifest_path"])]
    pub ark: Option<PathBuf>,
    /// Which package to build (without `--ark`).
    #[command(flatten)]
    pub selection: PackageSelection,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Flags passed to cargo.
    #[command(flatten)]
    pub cargo: CargoOptions,
}

impl RunCmd {
    /// Packages (or opens) the plugin, runs the step and prints its result. A step
    /// failure is returned as an error, so the process exits with status 1.
    pub fn exec(&self, _global: &GlobalOpts, shell: &Shell) -> anyhow::Result<()> {
        let config = self.config()?;
        let grants = merge_grants(&self.grants);
        let (archive, cache) = match &self.ark {
            Some(path) => (path.clone(), compiled_cache_of_cwd(&self.cargo, shell)?),
            None => {
                let packaged = crate::package_crate(&self.selection, &self.cargo, shell)?;
                (packaged.archive, Some(packaged.compiled_cache))
            }
        };
        let ark =
            Ark::open(&archive).with_context(|| format!("cannot read {}", archive.display()))?;
        let workspace = self.workspace(shell)?;

        // One call at a time; the pooling slots must fit the memory asked for.
        // `parse_memory` checked that it fits.
        let memory = usize::try_from(self.memory.bytes()).unwrap_or(usize::MAX);
        let mut runtime_config = RuntimeConfig::default().max_instances(4);
        runtime_config.max_memory = runtime_config.max_memory.max(memory);
        if let Some(dir) = &cache {
            runtime_config = runtime_config.cache_dir(dir);
        }
        let runtime = Runtime::new(runtime_config).context("cannot start the runtime")?;
        let lease = install(&runtime, &ark, &grants, shell)?;

        let step = format!("{}/{}", ark.manifest.name, self.step);
        shell.status(
            "Running",
            format!("{step} (workspace {})", workspace.display()),
        );
        let call = StepCall::new(&self.step, serde_json::Value::Object(config))
            .workspace(&workspace)
            .timeout(self.timeout)
            .memory_limit(memory)
            .log_sink(log_printer(shell));
        let call = match self.fuel {
            Some(fuel) => call.fuel(fuel),
            None => call,
        };
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let report = tokio.block_on(lease.invoke(call));
        self.print_report(&step, report, shell)
    }

    /// The step configuration from `--with`, `--with-file` or `{}`.
    fn config(&self) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        if let Some(with) = &self.with {
            return Ok(with.clone());
        }
        let Some(path) = &self.with_file else {
            return Ok(serde_json::Map::new());
        };
        let text = if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the step configuration from stdin")?;
            text
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        };
        parse_with(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The directory to preopen: `--workspace` (created if missing) or a fresh,
    /// kept temporary directory.
    fn workspace(&self, shell: &Shell) -> anyhow::Result<PathBuf> {
        match &self.workspace {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the workspace {}", dir.display()))?;
                Ok(dir.clone())
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("ark-run-")
                    .tempdir()
                    .context("cannot create a temporary workspace")?
                    .keep();
                shell.status(
                    "Workspace",
                    format!("{} (fresh; kept after the run)", dir.display()),
                );
                Ok(dir)
            }
        }
    }

    fn print_report(&self, step: &str, report: StepReport, shell: &Shell) -> anyhow::Result<()> {
        let fuel = report.fuel_consumed;
        let elapsed = report.elapsed;
        match report.result {
            Ok(outcome) => {
                shell.status(
                    "Finished",
                    format!(
                        "{step} in {} (fuel consumed: {fuel})",
                        humantime::format_duration(round_to_micros(elapsed))
                    ),
                );
                let mut out = std::io::stdout().lock();
                if self.json {
                    let value = json!({
                        "outputs": outcome.outputs,
                        "summary": outcome.summary,
                        "fuel_consumed": fuel,
                    });
                    writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
                } else {
                    write_outcome(&mut out, &outcome)?;
                }
                Ok(())
            }
            Err(failure) => {
                if self.json {
                    let value = json!({ "error": failure_json(&failure) });
                    writeln!(
                        std::io::stdout().lock(),
                        "{}",
                        serde_json::to_string_pretty(&value)?
                    )?;
                }
                Err(StepFailed {
                    step: step.to_owned(),
                    failure,
                }
                .into())
            }
        }
    }
}

/// Compiles (or loads from the cache) and installs the archive; returns a lease on it.
fn install(
    runtime: &Runtime,
    ark: &Ark,
    grants: &Capabilities,
    shell: &Shell,
) -> anyhow::Result<arkline::runtime::BizLease> {
    let manifest = &ark.manifest;
    let id = format!("{} v{}", manifest.name, manifest.version);
    let prepared = runtime
        .prepare(ark)
        .with_context(|| format!("cannot compile {id}"))?;
    let source = match &prepared.cache {
        CacheOutcome::Hit => "compiled cache".to_owned(),
        CacheOutcome::Compiled => "compiled, now cached".to_owned(),
        CacheOutcome::Recovered(reason) => format!("recompiled: {reason}"),
        CacheOutcome::Uncached => "compiled, not cached".to_owned(),
    };
    shell.status("Installing", format!("{id} ({source})"));
    for unused in unrequested_grants(&manifest.capabilities, grants) {
        shell.warn(format!(
            "`{}` does not request {unused}, so that grant has no effect",
            manifest.name
        ));
    }
    let registry = BizRegistry::new(runtime.clone(), ENGINE);
    let info = registry.register(prepared, manifest.clone(), grants, Activation::Always)?;
    shell.verbose(
        "Capabilities",
        format!(
            "log{}",
            describe_capabilities(&info.capabilities)
                .map(|c| format!(", {c}"))
                .collect::<String>()
        ),
    );
    Ok(registry.lease(&manifest.name, &manifest.version)?)
}

/// A step failure, as the error `cargo ark run` exits with.
#[derive(Debug, thiserror::Error)]
struct StepFailed {
    step: String,
    failure: StepFailure,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.failure {
            // Its message already names the biz, the step type and the types it has.
            // The guest wrote the message and named the functions of the
            // backtrace: escaped, so it cannot drive the terminal.
            StepFailure::UnknownStepType { .. } => {
                write!(f, "{}", escape_text(&self.failure.to_string()))?
            }
            failure => write!(
                f,
                "step `{}` failed: {}",
                self.step,
                escape_text(&failure.to_string())
            )?,
        }
        if let Some(backtrace) = fault_backtrace(&self.failure) {
            write!(f, "\n\nguest backtrace:\n{}", escape_text(backtrace))?;
        }
        Ok(())
    }
}

/// The guest's call stack of a fault.
fn fault_backtrace(failure: &StepFailure) -> Option<&str> {
    let backtrace = match failure {
        StepFailure::Fault(
            StepFault::Trap { backtrace, .. } | StepFault::StackOverflow { backtrace },
        ) => backtrace.as_deref()?,
        _ => return None,
    };
    Some(backtrace.trim_matches('\n').trim_end())
}

/// `{"kind": …, "message": …}`, with `field` and `backtrace` when there are some.
fn failure_json(failure: &StepFailure) -> serde_json::Value {
    let mut value = json!({ "kind": failure.kind(), "message": failure.to_string() });
    if let StepFailure::InvalidConfig {
        field: Some(field), ..
    } = failure
    {
        value["field"] = json!(field);
    }
    if let Some(backtrace) = fault_backtrace(failure) {
        value["backtrace"] = json!(backtrace);
    }
    value
}

/// `summary: …` (when there is one), then `outputs:` and one `key = value` line per
/// output; continuation lines of a multi-line value are indented under it. The
/// guest wrote all of it, so control characters are shown escaped.
fn write_outcome(out: &mut impl std::io::Write, outcome: &StepOutcome) -> std::io::Result<()> {
    if let Some(summary) = &outcome.summary {
        writeln!(out, "summary: {}", escape_line(summary))?;
    }
    if outcome.outputs.is_empty() {
        return writeln!(out, "outputs: (none)");
    }
    writeln!(out, "outputs:")?;
    for (key, value) in &outcome.outputs {
        let key = escape_line(key);
        let value = escape_text(value);
        let indent = " ".repeat(key.chars().count() + 5);
        let mut lines = value.split('\n');
        writeln!(out, "  {key} = {}", lines.next().unwrap_or_default())?;
        for line in lines {
            writeln!(out, "{indent}{line}")?;
        }
    }
    Ok(())
}

/// A sink printing each log line to stderr as `level source | message key=value`.
fn log_printer(shell: &Shell) -> LogSink {
    let choice = shell.color_choice();
    Arc::new(move |line: &LogLine| {
        let style = match line.level {
            LogLevel::Trace | LogLevel::Debug => Style::new().dimmed(),
            LogLevel::Info => AnsiColor::Green.on_default(),
            LogLevel::Warn => AnsiColor::Yellow.on_default(),
            LogLevel::Error => AnsiColor::Red.on_default().bold(),
        };
        let source = line.source.as_str();
        let fields: String = line
            .fields
            .iter()
            .map(|(k, v)| format!(" {}={}", escape_line(k), escape_line(v)))
            .collect();
        let mut err = anstream::AutoStream::new(std::io::stderr(), choice).lock();
        // A closed stderr must not disturb the step.
        let _ = writeln!(
            err,
            "{style}{:>5}{style:#} {source:<6} | {}{fields}",
            line.level.as_str(),
            escape_line(&line.message)
        );
    })
}

/// The compiled cache of `--target-dir`, or of the cargo project around the
/// current directory, if any: an archive from elsewhere still runs, compiled in
/// memory.
fn compiled_cache_of_cwd(cargo: &CargoOptions, shell: &Shell) -> anyhow::Result<Option<PathBuf>> {
    if let Some(dir) = cargo.absolute_target_dir()? {
        return Ok(Some(dir.join("ark").join("compiled")));
    }
    Ok(match cargo.metadata_command(&cargo_path()).exec() {
        Ok(metadata) => Some(
            metadata
                .target_directory
                .into_std_path_buf()
                .join("ark")
                .join("compiled"),
        ),
        Err(_) => {
            shell.verbose(
                "Compiling",
                "in memory: not in a cargo project, so there is no target/ark/compiled cache",
            );
            None
        }
    })
}

fn round_to_micros(d: Duration) -> Duration {
    Duration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Parses a `--with` value: a JSON object.
fn parse_with(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    match value {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(format!(
            "the step configuration must be a JSON object (the step's `with:` mapping), not {}",
            json_kind(&other)
        )),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Granted items the manifest does not request (the grant is then pointless).
fn unrequested_grants(requested: &Capabilities, granted: &Capabilities) -> Vec<String> {
    let mut unused = Vec::new();
    let mut check = |kind: &str, req: &[String], grant: &[String]| {
        for item in grant {
            // A request for `*` takes whatever is granted (see `EffectiveCapabilities`).
            if item != "*"
                && !req.contains(item)
                && !(kind == "http" && req.iter().any(|r| r == "*"))
            {
                unused.push(format!("`{kind}: {item}`"));
            }
        }
    };
    check("process", &requested.process, &granted.process);
    check("http", &requested.http, &granted.http);
    check("host-call", &requested.host_call, &granted.host_call);
    if granted.cache && !requested.cache {
        unused.push("`cache`".to_owned());
    }
    unused
}

/// `process: a, b`, `http: …`, `cache`, `host-call: …` for what is non-empty.
fn describe_capabilities(caps: &Capabilities) -> impl Iterator<Item = String> + '_ {
    let list = |kind: &'static str, items: &[String]| {
        (!items.is_empty()).then(|| format!("{kind}: {}", items.join(", ")))
    };
    [
        list("process", &caps.process),
        list("http", &caps.http),
        caps.cache.then(|| "cache".to_owned()),
        list("host-call", &caps.host_call),
    ]
    .into_iter()
    .flatten()
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. `30s`, `2m`)"))?;
    if d.is_zero() {
        return Err("the timeout must be above zero".to_owned());
    }
    Ok(d)
}

/// Parses `--memory`: a [`ByteSize`] above zero that fits this machine's `usize`.
fn parse_memory(text: &str) -> Result<ByteSize, String> {
    let size: ByteSize = text.parse().map_err(|e| format!("{e}"))?;
    if size.is_zero() {
        return Err("the memory limit must be above zero, like `256MiB`".to_owned());
    }
    if usize::try_from(size.bytes()).is_err() {
        return Err(format!("{size} does not fit in this machine's memory"));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grants_the_manifest_does_not_request_are_found() {
        let requested = Capabilities {
            process: strings(&["sh"]),
            ..Capabilities::default()
        };
        let granted = merge_grants(&[
            parse_grant("process=sh,curl").expect("ok"),
            parse_grant("http=*").expect("ok"),
            parse_grant("cache").expect("ok"),
        ]);
        assert_eq!(
            unrequested_grants(&requested, &granted),
            strings(&["`process: curl`", "`cache`"])
        );
        // A biz requesting any host takes the hosts granted: none is pointless.
        let any_host = Capabilities {
            http: strings(&["*"]),
            ..Capabilities::default()
        };
        let granted = merge_grants(&[parse_grant("http=127.0.0.1").expect("ok")]);
        assert!(unrequested_grants(&any_host, &granted).is_empty());
    }

    #[test]
    fn memory_limits_parse_as_byte_sizes_above_zero() {
        let bytes = |text: &str| parse_memory(text).map(ByteSize::bytes);
        assert_eq!(bytes("256MiB"), Ok(256 << 20));
        assert_eq!(bytes("1 GiB"), Ok(1 << 30));
        assert_eq!(bytes("64k"), Ok(64 << 10));
        assert_eq!(bytes("2MB"), Ok(2_000_000));
        assert_eq!(bytes("4096"), Ok(4096));
        assert!(bytes("lots").unwrap_err().contains("`lots` is not a size"));
        assert!(
            bytes("3 parsecs")
                .unwrap_err()
                .contains("unknown unit `parsecs`")
        );
        assert!(bytes("0").unwrap_err().contains("above zero"));
        assert!(bytes("0 MiB").unwrap_err().contains("above zero"));
    }

    #[test]
    fn with_must_be_a_json_object() {
        assert_eq!(parse_with(r#"{"a":1}"#).expect("object")["a"], 1);
        assert!(parse_with("{a:1}").unwrap_err().contains("not valid JSON"));
        assert!(parse_with("[1]").unwrap_err().contains("not an array"));
    }

    #[test]
    fn outcome_text_indents_multi_line_values() {
        let outcome = StepOutcome {
            outputs: [("a".to_owned(), "x\ny".to_owned())].into(),
            summary: Some("done".to_owned()),
        };
        let mut out = Vec::new();
        write_outcome(&mut out, &outcome).expect("writes");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "summary: done\noutputs:\n  a = x\n      y\n"
        );
    }

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        let outcome = StepOutcome {
            outputs: [("k\x1b[2J".to_owned(), "red\x1b[31m\rok\nnext".to_owned())].into(),
            summary: Some("\x1b]0;title\x07".to_owned()),
        };
        let mut out = Vec::new();
        write_outcome(&mut out, &outcome).expect("writes");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "summary: \\u{1b}]0;title\\u{7}\noutputs:\n  k\\u{1b}[2J = red\\u{1b}[31m\\rok\n               next\n"
        );
        let failed = StepFailed {
            step: "s".to_owned(),
            failure: StepFailure::Failed("bad\x1b[1A\x1b[2Kall good".to_owned()),
        };
        assert_eq!(
            failed.to_string(),
            "step `s` failed: bad\\u{1b}[1A\\u{1b}[2Kall good"
        );
    }
}
