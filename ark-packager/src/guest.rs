//! Building a plugin crate into a WebAssembly component.

use std::ffi::OsString;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use cargo_metadata::Message;

use crate::project::PluginProject;
use crate::shell::Shell;

/// The target guests are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// The cargo profile guests are built with.
pub const PROFILE: &str = "ark";

/// `[profile.ark]` settings used when the workspace does not define the profile:
/// small, without the `name` section (a quarter of a small step's component;
/// a workspace that wants function names in guest backtraces defines the
/// profile with `strip = "debuginfo"`).
const DEFAULT_PROFILE: &[&str] = &[
    "profile.ark.inherits=\"release\"",
    "profile.ark.opt-level=\"s\"",
    "profile.ark.lto=true",
    "profile.ark.codegen-units=1",
    "profile.ark.panic=\"abort\"",
    "profile.ark.debug=false",
    "profile.ark.strip=\"symbols\"",
];

/// A built component.
#[derive(Debug, Clone)]
pub struct BuiltComponent {
    /// Path of the `.wasm` file.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// `rustc --version` of the toolchain that built it.
    pub rustc: String,
}

/// The cargo profile of the build `cargo ark` takes config schemas from: the
/// dev profile (fast to build; only its `describe()` is called).
pub const SCHEMA_PROFILE: &str = "ark-schema";

/// The SDK feature that builds config schemas into a component.
pub const SCHEMA_FEATURE: &str = "arkline-sdk/schema";

/// Which build of the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The component that ships: [`PROFILE`], the SDK without its `schema`
    /// feature (no `schemars` code).
    Ship,
    /// A component whose `describe()` reports the config schemas:
    /// [`SCHEMA_PROFILE`] with [`SCHEMA_FEATURE`].
    Schemas,
}

/// Builds `project` for [`TARGET`] with the [`PROFILE`] profile and returns the
/// component. Installs the target with rustup when it is missing. The cargo flags
/// the project was located with (`--locked`, `--frozen`, `--offline`,
/// `--target-dir`) are passed to `cargo build`.
pub fn build(
    cargo: &Path,
    project: &PluginProject,
    shell: &Shell,
) -> anyhow::Result<BuiltComponent> {
    build_flavor(cargo, project, shell, Flavor::Ship)
}

/// Builds `project` as `flavor` says (see [`build`]).
pub fn build_flavor(
    cargo: &Path,
    project: &PluginProject,
    shell: &Shell,
    flavor: Flavor,
) -> anyhow::Result<BuiltComponent> {
    ensure_target(shell)?;
    let package = &project.package;
    let profile = match flavor {
        Flavor::Ship => PROFILE,
        Flavor::Schemas => SCHEMA_PROFILE,
    };
    shell.status(
        match flavor {
            Flavor::Ship => "Compiling",
            Flavor::Schemas => "Schemas",
        },
        format!(
            "{} v{} ({TARGET}, profile {profile}{})",
            package.name,
            package.version,
            match flavor {
                Flavor::Ship => String::new(),
                Flavor::Schemas => format!(", feature {SCHEMA_FEATURE}"),
            }
        ),
    );

    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(package.manifest_path.as_std_path())
        .args(["--target", TARGET, "--profile", profile])
        .args(["--message-format", "json-render-diagnostics"])
        .arg("-p")
        .arg(format!("{}@{}", package.name, package.version))
        .env("CARGO_ENCODED_RUSTFLAGS", encoded_rustflags(project))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    project.cargo.apply_to_build(&mut cmd)?;
    if let Some(when) = shell.cargo_color() {
        cmd.args(["--color", when]);
    }
    match flavor {
        Flavor::Ship => {
            if !project.defines_ark_profile() {
                for setting in DEFAULT_PROFILE {
                    cmd.args(["--config", setting]);
                }
            }
        }
        Flavor::Schemas => {
            cmd.args(["--features", SCHEMA_FEATURE]).args([
                "--config",
                "profile.ark-schema.inherits=\"dev\"",
                "--config",
                "profile.ark-schema.debug=false",
            ]);
        }
    }
    if shell.verbosity() == crate::shell::Verbosity::Quiet {
        cmd.arg("--quiet");
    }
    shell.verbose("Running", format!("{cmd:?}"));

    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", cargo.display()))?;
    let stdout = child
        .stdout
        .take()
        .context("cargo's stdout is not captured")?;
    let mut wasm = None;
    for message in Message::parse_stream(BufReader::new(stdout)) {
        if let Message::CompilerArtifact(artifact) =
            message.context("cannot read cargo's JSON messages")?
            && artifact.package_id == package.id
            && artifact
                .target
                .kind
                .iter()
                .any(|k| k.to_string() == "cdylib")
            && let Some(file) = artifact
                .filenames
                .iter()
                .find(|f| f.extension() == Some("wasm"))
        {
            wasm = Some(file.clone().into_std_path_buf());
        }
    }
    let status = child.wait().context("cargo build did not finish")?;
    if !status.success() {
        match flavor {
            Flavor::Ship => bail!("cargo build of `{}` for {TARGET} failed", package.name),
            Flavor::Schemas => bail!(
                "cargo build of `{}` for {TARGET} with `--features {SCHEMA_FEATURE}` failed; the package must depend on arkline-sdk directly so that cargo ark can build its config schemas",
                package.name
            ),
        }
    }
    let Some(path) = wasm else {
        bail!(
            "cargo build of `{}` produced no .wasm file; is its crate-type `cdylib`?",
            package.name
        );
    };
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(BuiltComponent {
        path,
        bytes,
        rustc: rustc_version()?,
    })
}

/// Flags that remap machine-specific path prefixes, so the component is the same on
/// every machine; added to any flags the user set.
fn encoded_rustflags(project: &PluginProject) -> OsString {
    let mut flags: Vec<String> = match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(s) if !s.is_empty() => s.split('\x1f').map(str::to_owned).collect(),
        _ => std::env::var("RUSTFLAGS")
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    };
    let mut remaps: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(home) = cargo_home() {
        remaps.push((home, "/cargo"));
    }
    remaps.push((project.workspace_root(), "/ark/src"));
    // Later remaps win in rustc, so the target dir (often inside the workspace) last.
    remaps.push((project.target_dir(), "/ark/target"));
    for (from, to) in remaps {
        flags.push(format!("--remap-path-prefix={}={to}", from.display()));
    }
    OsString::from(flags.join("\x1f"))
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

fn rustc() -> PathBuf {
    std::env::var_os("RUSTC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("rustc"))
}

fn rustc_version() -> anyhow::Result<String> {
    let out = Command::new(rustc())
        .arg("--version")
        .output()
        .context("cannot run rustc --version")?;
    if !out.status.success() {
        bail!("`rustc --version` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Makes sure the standard library for [`TARGET`] is installed, installing it with
/// rustup when it is missing and rustup is available.
fn ensure_target(shell: &Shell) -> anyhow::Result<()> {
    let out = Command::new(rustc())
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc --print sysroot; is Rust installed?")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir()
    {
        return Ok(());
    }
    let rustup_works = Command::new("rustup")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !rustup_works {
        bail!(
            "the Rust standard library for {TARGET} is not installed and rustup is not available; install it with:\n\n    rustup target add {TARGET}\n\nor use a toolchain that ships it"
        );
    }
    shell.status(
        "Installing",
        format!("{TARGET} target (rustup target add {TARGET})"),
    );
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .stdout(Stdio::null())
        .status()
        .context("cannot run rustup")?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed; run it by hand and try again");
    }
    Ok(())
}
