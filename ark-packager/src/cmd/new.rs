//! `cargo ark new`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::shell::Shell;

/// Create a new step plugin crate that packages out of the box.
#[derive(Debug, Clone, Args)]
pub struct NewCmd {
    /// Directory to create; its last component is the default name.
    pub path: PathBuf,
    /// Plugin (package and biz) name.
    #[arg(long)]
    pub name: Option<String>,
    /// Path to the `arkline-sdk` crate (it is not on a registry); defaults to the SDK
    /// in the arkline source tree this cargo-ark was built from.
    #[arg(long, value_name = "DIR")]
    pub sdk_path: Option<PathBuf>,
}

impl NewCmd {
    /// Writes the scaffold.
    pub fn exec(&self, shell: &Shell) -> anyhow::Result<()> {
        let name = match &self.name {
            Some(name) => name.clone(),
            None => self
                .path
                .file_name()
                .and_then(|n| n.to_str())
                .context("cannot take a plugin name from the path; pass --name")?
                .to_owned(),
        };
        check_name(&name)?;
        if self.path.exists() {
            bail!(
                "destination `{}` already exists; choose another path",
                self.path.display()
            );
        }
        let sdk = match &self.sdk_path {
            Some(p) => p.clone(),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk"),
        };
        let sdk = sdk.canonicalize().with_context(|| {
            format!(
                "cannot find arkline-sdk at {}; pass --sdk-path <arkline checkout>/plugins/sdk",
                sdk.display()
            )
        })?;

        std::fs::create_dir_all(self.path.join("src"))
            .with_context(|| format!("cannot create {}", self.path.display()))?;
        let files = [
            ("Cargo.toml", cargo_toml(&name, &sdk)),
            ("src/lib.rs", LIB_RS.to_owned()),
            ("README.md", readme(&name)),
            (".gitignore", "/target\n".to_owned()),
        ];
        for (file, contents) in files {
            let path = self.path.join(file);
            std::fs::write(&path, contents)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        shell.status(
            "Created",
            format!("step plugin `{name}` at {}", self.path.display()),
        );
        Ok(())
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if !arkline::ark::is_valid_name(name) {
        bail!(
            "`{name}` is not a valid plugin name: use 1-64 lower-case letters, digits, `-` or `_`, starting with a letter (or pass --name)"
        );
    }
    Ok(())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = {name}
version = "0.1.0"
edition = "2024"
rust-version = "1.95"
description = "An arkline step plugin"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
arkline-sdk = {{ path = {sdk} }}
schemars = "1"
serde = {{ version = "1", features = ["derive"] }}

# What arkline needs to know to package this crate as a biz (`cargo ark package`).
[package.metadata.ark]
# Capabilities the biz requests; an engine grants some or all of them.
# e.g. {{ process = ["sh", "git"], http = ["api.example.com"], cache = true }}
capabilities = {{}}

# The guest build profile: small, keeping function names for guest backtraces.
[profile.ark]
inherits = "release"
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
debug = false
strip = "debuginfo"

# A plugin is its own workspace, so a scaffold inside another workspace is not
# captured by it.
[workspace]
"#,
        name = toml_string(name),
        sdk = toml_string(&sdk.display().to_string()),
    )
}

const LIB_RS: &str = r#"//! An arkline step plugin.

use arkline_sdk::prelude::*;

/// Configuration of the `hello` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Who to greet.
    pub name: String,
}

/// Greets `name` and returns the greeting as the `greeting` output.
pub fn hello(ctx: &Context, config: Hello) -> StepResult {
    let greeting = format!("hello, {}!", config.name);
    arkline_sdk::info!("{greeting} (pipeline {}, run {})", ctx.pipeline, ctx.run);
    Ok(Outcome::new().output("greeting", greeting))
}

arkline_sdk::steps! {
    /// Greets someone.
    "hello" => hello,
}
"#;

fn readme(name: &str) -> String {
    format!(
        r#"# {name}

An [arkline](https://example.invalid/arkline) step plugin.

```sh
cargo ark package          # writes target/ark/{name}-0.1.0.ark
cargo ark inspect target/ark/{name}-0.1.0.ark
```

Use it in a pipeline:

```yaml
stages:
  - name: greet
    steps:
      - name: hello
        uses: {name}/hello@^0.1
        with:
          name: world
```

Outputs: `greeting`.
"#
    )
}
