//! `cargo ark new`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::shell::Shell;

/// Create a new step plugin crate that packages out of the box.
#[derive(Debug, Clone, Default, Args)]
pub struct NewCmd {
    /// Directory to create; its last component is the default name.
    pub path: PathBuf,
    /// Plugin (package and biz) name.
    #[arg(long)]
    pub name: Option<String>,
    /// A local `arkline-sdk` crate to depend on (with its version, so the plugin
    /// can also be built from the registry). Default: the SDK in the arkline source
    /// tree this cargo-ark was built from, when there is one; otherwise the plugin
    /// depends on `arkline-sdk` from the registry.
    #[arg(long, value_name = "DIR")]
    pub sdk_path: Option<PathBuf>,
    /// Depend on `arkline-sdk` from the registry only, even when a local SDK is known.
    #[arg(long, conflicts_with = "sdk_path")]
    pub no_sdk_path: bool,
    /// The plugin's language: `rust` (a crate), `python` (componentize-py) or
    /// `js` (componentize-js); the last two get the WIT world, the SDK, a
    /// build script, an example step and its tests.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
}

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate built by `cargo ark`.
    #[default]
    Rust,
    /// Python, built by componentize-py.
    Python,
    /// JavaScript, built by componentize-js.
    Js,
}

/// The WIT world a Python or JavaScript plugin builds against.
const WIT: [(&str, &str); 3] = [
    (
        "wit/world.wit",
        include_str!("../../wit/since_v0.1.0/world.wit"),
    ),
    (
        "wit/types.wit",
        include_str!("../../wit/since_v0.1.0/types.wit"),
    ),
    (
        "wit/capabilities.wit",
        include_str!("../../wit/since_v0.1.0/capabilities.wit"),
    ),
];

/// The Python SDK (`plugins/sdk-python`), vendored into a new project.
const PYTHON_SDK: [(&str, &str); 9] = [
    (
        "arkline_sdk/__init__.py",
        include_str!("../../sdks/python/__init__.py"),
    ),
    (
        "arkline_sdk/config.py",
        include_str!("../../sdks/python/config.py"),
    ),
    (
        "arkline_sdk/errors.py",
        include_str!("../../sdks/python/errors.py"),
    ),
    (
        "arkline_sdk/plugin.py",
        include_str!("../../sdks/python/plugin.py"),
    ),
    (
        "arkline_sdk/log.py",
        include_str!("../../sdks/python/log.py"),
    ),
    (
        "arkline_sdk/process.py",
        include_str!("../../sdks/python/process.py"),
    ),
    (
        "arkline_sdk/http.py",
        include_str!("../../sdks/python/http.py"),
    ),
    (
        "arkline_sdk/cache.py",
        include_str!("../../sdks/python/cache.py"),
    ),
    (
        "arkline_sdk/host_call.py",
        include_str!("../../sdks/python/host_call.py"),
    ),
];

/// The JavaScript SDK (`plugins/sdk-js`), vendored into a new project.
const JS_SDK: [(&str, &str); 2] = [
    ("sdk/index.js", include_str!("../../sdks/js/index.js")),
    ("sdk/config.js", include_str!("../../sdks/js/config.js")),
];

/// Where the scaffold's `arkline-sdk` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkDependency {
    /// The registry: `arkline-sdk = "0.1"`.
    Registry,
    /// A local checkout, with the version too: `{ version = "0.1", path = … }`.
    Local(PathBuf),
}

impl SdkDependency {
    /// Decides as `cargo ark new` does: no local SDK when `registry_only`; the
    /// `explicit` one (which must be an `arkline-sdk` crate); else `default` when
    /// it is an `arkline-sdk` crate; else the registry.
    pub fn choose(
        explicit: Option<&Path>,
        registry_only: bool,
        default: &Path,
    ) -> anyhow::Result<SdkDependency> {
        if registry_only {
            return Ok(SdkDependency::Registry);
        }
        if let Some(dir) = explicit {
            let dir = dir.canonicalize().with_context(|| {
                format!(
                    "cannot find arkline-sdk at {}; pass --sdk-path <arkline checkout>/plugins/sdk, or leave it out to use the registry",
                    dir.display()
                )
            })?;
            if !is_sdk_crate(&dir) {
                bail!(
                    "{} is not the arkline-sdk crate (its Cargo.toml does not name package `arkline-sdk`); pass --sdk-path <arkline checkout>/plugins/sdk",
                    dir.display()
                );
            }
            return Ok(SdkDependency::Local(dir));
        }
        Ok(match default.canonicalize() {
            Ok(dir) if is_sdk_crate(&dir) => SdkDependency::Local(dir),
            _ => SdkDependency::Registry,
        })
    }

    /// The dependency line of the scaffold's `Cargo.toml`.
    pub fn toml_line(&self) -> String {
        let version = toml_string(&sdk_requirement());
        match self {
            SdkDependency::Registry => format!("arkline-sdk = {version}"),
            SdkDependency::Local(dir) => format!(
                "arkline-sdk = {{ version = {version}, path = {} }}",
                toml_string(&dir.display().to_string())
            ),
        }
    }
}

/// The SDK released with this cargo-ark: `major.minor` of its version (a caret
/// requirement, so `0.1` is any 0.1.x).
pub fn sdk_requirement() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => format!("{major}.{minor}"),
        _ => version.to_owned(),
    }
}

/// Whether `dir` holds the `arkline-sdk` package.
fn is_sdk_crate(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("package")?.get("name")?.as_str().map(str::to_owned))
        .is_some_and(|name| name == "arkline-sdk")
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
        if self.lang != Lang::Rust {
            return self.scaffold_component(&name, shell);
        }
        let sdk = SdkDependency::choose(
            self.sdk_path.as_deref(),
            self.no_sdk_path,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk"),
        )?;

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
        let from = match &sdk {
            SdkDependency::Registry => "the registry".to_owned(),
            SdkDependency::Local(dir) => dir.display().to_string(),
        };
        shell.status(
            "Created",
            format!(
                "step plugin `{name}` at {} (arkline-sdk {} from {from})",
                self.path.display(),
                sdk_requirement()
            ),
        );
        Ok(())
    }
}

impl NewCmd {
    /// A Python or JavaScript project: the WIT, the SDK, an example step with
    /// its tests, `Ark.toml` and `build.sh`.
    fn scaffold_component(&self, name: &str, shell: &Shell) -> anyhow::Result<()> {
        let ark_toml = format!(
            "# What `cargo ark package --component {name}.wasm` needs that a cargo\n\
             # package's Cargo.toml would give.\n\
             name = {}\nversion = \"0.1.0\"\ndescription = \"An arkline step plugin\"\n\n\
             # Capabilities the biz requests; an engine grants some or all of them.\n\
             # e.g. process = [\"git\"], http = [\"api.example.com\"], cache = true\n\
             [capabilities]\n",
            toml_string(name)
        );
        let mut files: Vec<(String, String)> = vec![("Ark.toml".into(), ark_toml)];
        files.extend(WIT.iter().map(|(p, c)| ((*p).to_owned(), (*c).to_owned())));
        let (lang, tool, run_tests) = match self.lang {
            Lang::Python => {
                files.extend(
                    PYTHON_SDK
                        .iter()
                        .map(|(p, c)| ((*p).to_owned(), (*c).to_owned())),
                );
                files.push((
                    "app.py".into(),
                    include_str!("new/python_app.py").to_owned(),
                ));
                files.push((
                    "tests/test_app.py".into(),
                    include_str!("new/python_test.py").to_owned(),
                ));
                files.push((
                    "build.sh".into(),
                    include_str!("new/python_build.sh").replace("@NAME@", name),
                ));
                files.push((
                    ".gitignore".into(),
                    "*.wasm\n/target\n__pycache__/\n".into(),
                ));
                (
                    "Python",
                    "pip install componentize-py==0.25.1",
                    "python3 -m unittest discover -s tests",
                )
            }
            Lang::Js => {
                files.extend(
                    JS_SDK
                        .iter()
                        .map(|(p, c)| ((*p).to_owned(), (*c).to_owned())),
                );
                files.push(("app.js".into(), include_str!("new/js_app.js").to_owned()));
                files.push((
                    "greeting.js".into(),
                    include_str!("new/js_greeting.js").to_owned(),
                ));
                files.push((
                    "test/greeting.test.js".into(),
                    include_str!("new/js_test.js").to_owned(),
                ));
                files.push((
                    "build.sh".into(),
                    include_str!("new/js_build.sh").replace("@NAME@", name),
                ));
                files.push((
                    "package.json".into(),
                    format!(
                        "{{\n  \"name\": {},\n  \"version\": \"0.1.0\",\n  \"private\": true,\n  \
                         \"type\": \"module\",\n  \"scripts\": {{ \"test\": \"node --test test/\" }}\n}}\n",
                        serde_json::to_string(name)?
                    ),
                ));
                files.push((
                    ".gitignore".into(),
                    "*.wasm\n/target\nnode_modules/\n".into(),
                ));
                (
                    "JavaScript",
                    "npm install -g @bytecodealliance/componentize-js@0.23.0",
                    "node --test test/",
                )
            }
            Lang::Rust => unreachable!("a crate is scaffolded by exec"),
        };
        files.push((
            "README.md".into(),
            format!(
                "# {name}\n\nAn arkline step plugin in {lang}: the step `hello` greets someone.\n\n\
                 ```sh\n{tool}\n{run_tests}                       # the step's tests, no component needed\n\
                 sh build.sh                            # → {name}.wasm\n\
                 cargo ark package --component {name}.wasm   # → target/ark/{name}-0.1.0.ark\n\
                 cargo ark run hello --ark target/ark/{name}-0.1.0.ark --with '{{\"name\": \"world\"}}'\n```\n\n\
                 `wit/` is arkline's WIT world (`arkline:step@0.1.0`); the SDK is vendored beside the \
                 step. Request capabilities in `Ark.toml`. The guide for step authors in all three \
                 languages is `docs/step-authors.md` in arkline's repository.\n"
            ),
        ));
        for (file, contents) in &files {
            let path = self.path.join(file);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&path, contents)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        shell.status(
            "Created",
            format!("step plugin `{name}` in {lang} at {}", self.path.display()),
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

fn cargo_toml(name: &str, sdk: &SdkDependency) -> String {
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
{sdk}
schemars = "1"
serde = {{ version = "1", features = ["derive"] }}

# What arkline needs to know to package this crate as a biz (`cargo ark package`).
[package.metadata.ark]
# Capabilities the biz requests; an engine grants some or all of them.
# e.g. {{ process = ["sh", "git"], http = ["api.example.com"], cache = true }}
capabilities = {{}}

# The guest build profile: small. A panic still reports its message and
# source line; `strip = "debuginfo"` instead keeps function names for guest
# backtraces, at about a third more component size.
[profile.ark]
inherits = "release"
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
debug = false
strip = "symbols"

# A plugin is its own workspace, so a scaffold inside another workspace is not
# captured by it.
[workspace]
"#,
        name = toml_string(name),
        sdk = sdk.toml_line(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_dependency_names_a_version_with_or_without_a_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("no-sdk-here");
        assert_eq!(
            SdkDependency::choose(None, false, &missing).expect("chooses"),
            SdkDependency::Registry
        );
        assert_eq!(SdkDependency::Registry.toml_line(), "arkline-sdk = \"0.1\"");

        let sdk = tmp.path().join("sdk");
        std::fs::create_dir_all(&sdk).expect("mkdir");
        std::fs::write(
            sdk.join("Cargo.toml"),
            "[package]\nname = \"arkline-sdk\"\nversion = \"0.1.0\"\n",
        )
        .expect("write");
        let local = SdkDependency::choose(None, false, &sdk).expect("chooses");
        let dir = sdk.canonicalize().expect("canonical");
        assert_eq!(local, SdkDependency::Local(dir.clone()));
        assert_eq!(
            local.toml_line(),
            format!(
                "arkline-sdk = {{ version = \"0.1\", path = {} }}",
                toml_string(&dir.display().to_string())
            )
        );
        assert_eq!(
            SdkDependency::choose(None, true, &sdk).expect("chooses"),
            SdkDependency::Registry
        );

        // An explicit path must exist and be the SDK.
        let err = SdkDependency::choose(Some(&missing), false, &sdk).expect_err("missing");
        assert!(err.to_string().contains("cannot find arkline-sdk"), "{err}");
        let err = SdkDependency::choose(Some(tmp.path()), false, &sdk).expect_err("not the sdk");
        assert!(
            err.to_string().contains("is not the arkline-sdk crate"),
            "{err}"
        );
    }
}
