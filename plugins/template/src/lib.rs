//! The `template` biz: renders workspace files with [minijinja] (Jinja2 syntax)
//! compiled into the guest, and renders, checks and applies Kubernetes manifests.
//!
//! ```yaml
//! - name: config
//!   uses: template/render@0.1
//!   with:
//!     source: deploy/config.toml.j2
//!     destination: out/config.toml
//!     values:
//!       version: ${{ params.version }}
//!       image: ${{ steps.build.outputs.image }}
//! - name: deploy
//!   uses: template/deploy-yaml@0.1
//!   with:
//!     source: deploy/k8s
//!     values: { image: "${{ steps.build.outputs.image }}", replicas: 3 }
//!     namespace: staging
//! ```
//!
//! Templates see `values` as top-level variables and `arkline` (`engine`,
//! `pipeline`, `run`, `stage`, `step`). Undefined variables are errors unless
//! `strict: false`. Nothing is escaped (use `| tojson` to quote a value for JSON
//! or YAML). `{% include %}` and `{% extends %}` load templates from the
//! source directory (never from outside it).
//!
//! `render` outputs `files` (how many were rendered) and `destination`.
//! `deploy-yaml` outputs `bundle` (the rendered manifests, one file), `documents`,
//! `resources` (`Kind/name` list, comma-separated) and `applied` (`true` when
//! `kubectl apply` ran: only when the engine grants `process: kubectl`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use arkline_sdk::prelude::*;
use serde_json::Value;

mod manifests;

use arkline_sdk::workspace::{guest_path, relative_path};

/// Configuration of the `render` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Render {
    /// A template file, or a directory whose files are all rendered (keeping their
    /// relative paths), relative to the workspace root.
    pub source: String,
    /// The rendered file (for a file source) or directory (for a directory source),
    /// relative to the workspace root. Parent directories are created.
    pub destination: String,
    /// Variables the templates see, e.g. `version: ${{ params.version }}`.
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// A suffix removed from rendered file names (e.g. `.j2`).
    #[serde(default)]
    pub strip_suffix: Option<String>,
    /// Fail on an undefined variable (default: true). When false, an undefined
    /// variable renders as an empty string.
    #[serde(default = "default_true")]
    pub strict: bool,
}

/// Configuration of the `deploy-yaml` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployYaml {
    /// A manifest template, or a directory whose `.yaml`, `.yml` and `.j2` files are
    /// rendered in name order, relative to the workspace root.
    pub source: String,
    /// Variables the templates see, e.g. `image: ${{ steps.build.outputs.image }}`.
    #[serde(default)]
    pub values: BTreeMap<String, Value>,
    /// Where to write the rendered bundle, relative to the workspace root (default
    /// `rendered/<step name>.yaml`).
    #[serde(default)]
    pub output: Option<String>,
    /// Apply the bundle with `kubectl apply -f` when the engine grants `process:
    /// kubectl` (default: true). Without the grant the bundle is only written.
    #[serde(default = "default_true")]
    pub apply: bool,
    /// Namespace passed to `kubectl apply --namespace`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// A kubeconfig file in the workspace (`KUBECONFIG` for kubectl).
    #[serde(default)]
    pub kubeconfig: Option<String>,
    /// More arguments for `kubectl apply`, e.g. `["--server-side", "--prune"]`.
    #[serde(default)]
    pub kubectl_args: Vec<String>,
    /// Fail on an undefined variable (default: true).
    #[serde(default = "default_true")]
    pub strict: bool,
}

fn default_true() -> bool {
    true
}

/// Runs the `render` step.
pub fn render(ctx: &Context, config: Render) -> StepResult {
    let source_rel = workspace_field("source", &config.source)?;
    let dest_rel = workspace_field("destination", &config.destination)?;
    let source = guest_path(&source_rel);
    let meta = fs::metadata(&source)
        .map_err(|e| StepError::invalid_config("source", format!("cannot read {source}: {e}")))?;
    let (root, files) = if meta.is_dir() {
        (source.clone(), list_files(&source, &|_| true)?)
    } else {
        let name = file_name(&source);
        (parent(&source), vec![name])
    };
    let env = environment(&root, config.strict);
    let context = template_context(ctx, &config.values);
    let mut rendered = 0;
    for name in &files {
        let text = render_file(&env, name, &context)?;
        let out_name = match &config.strip_suffix {
            Some(suffix) => name.strip_suffix(suffix.as_str()).unwrap_or(name),
            None => name,
        };
        let target = if meta.is_dir() {
            guest_path(&join(&dest_rel, out_name))
        } else {
            guest_path(&dest_rel)
        };
        write_file(&target, &text)?;
        rendered += 1;
    }
    Ok(Outcome::new()
        .output("files", rendered.to_string())
        .output("destination", dest_rel.clone())
        .summary(format!("rendered {rendered} file(s) into {dest_rel}")))
}

/// Runs the `deploy-yaml` step.
pub fn deploy_yaml(ctx: &Context, config: DeployYaml) -> StepResult {
    let source_rel = workspace_field("source", &config.source)?;
    let output_rel = match &config.output {
        Some(o) => workspace_field("output", o)?,
        None => format!("rendered/{}.yaml", sanitize(&ctx.step_name)),
    };
    let kubeconfig = config
        .kubeconfig
        .as_deref()
        .map(|k| workspace_field("kubeconfig", k).map(|rel| guest_path(&rel)))
        .transpose()?;
    let source = guest_path(&source_rel);
    let meta = fs::metadata(&source)
        .map_err(|e| StepError::invalid_config("source", format!("cannot read {source}: {e}")))?;
    let (root, files) = if meta.is_dir() {
        let manifests = |name: &str| {
            [".yaml", ".yml", ".j2"]
                .iter()
                .any(|suffix| name.ends_with(suffix))
        };
        (source.clone(), list_files(&source, &manifests)?)
    } else {
        (parent(&source), vec![file_name(&source)])
    };
    if files.is_empty() {
        return Err(StepError::invalid_config(
            "source",
            format!("{source} holds no .yaml, .yml or .j2 files"),
        ));
    }
    let env = environment(&root, config.strict);
    let context = template_context(ctx, &config.values);
    let mut bundle = String::new();
    let mut resources = Vec::new();
    for name in &files {
        let text = render_file(&env, name, &context)?;
        let found = manifests::check(&text)
            .map_err(|e| StepError::failed(format!("{source_rel}/{name}: {e}")))?;
        if found.is_empty() {
            continue;
        }
        resources.extend(found);
        if !bundle.is_empty() {
            bundle.push_str("---\n");
        }
        bundle.push_str(&text);
        if !bundle.ends_with('\n') {
            bundle.push('\n');
        }
    }
    if resources.is_empty() {
        return Err(StepError::failed(format!(
            "{source_rel} renders to no Kubernetes objects"
        )));
    }
    let output = guest_path(&output_rel);
    write_file(&output, &bundle)?;
    let listed = resources.join(",");
    let mut outcome = Outcome::new()
        .output("bundle", output_rel.clone())
        .output("documents", resources.len().to_string())
        .output("resources", listed.clone());

    if !config.apply {
        return Ok(outcome.output("applied", "false").summary(format!(
            "rendered {} objects into {output_rel}",
            resources.len()
        )));
    }
    let mut args = vec!["apply".to_owned(), "-f".to_owned(), output.clone()];
    if let Some(ns) = &config.namespace {
        args.extend(["--namespace".to_owned(), ns.clone()]);
    }
    args.extend(config.kubectl_args.iter().cloned());
    let mut command = process::Command::new("kubectl").args(args);
    if let Some(kubeconfig) = kubeconfig {
        command = command.env("KUBECONFIG", kubeconfig);
    }
    match command.output() {
        Ok(out) if out.status.success() => {
            outcome = outcome
                .output("applied", "true")
                .summary(format!("applied {} objects: {listed}", resources.len()));
            Ok(outcome)
        }
        Ok(out) => Err(StepError::failed(format!(
            "kubectl apply ended with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(HostError::Denied(why)) => {
            arkline_sdk::info!(
                "not applying: {why}. The rendered bundle is in {output_rel}; grant `process: kubectl` to apply it"
            );
            Ok(outcome.output("applied", "false").summary(format!(
                "rendered {} objects into {output_rel} (kubectl not granted)",
                resources.len()
            )))
        }
        Err(e) => Err(StepError::failed(format!("cannot run kubectl: {e}"))),
    }
}

fn environment(root: &str, strict: bool) -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_keep_trailing_newline(true);
    // minijinja escapes by file extension (JSON-quoting in `.yaml`, HTML entities in
    // `.html`); config files want the text as written: `| tojson` quotes on demand.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_undefined_behavior(if strict {
        minijinja::UndefinedBehavior::Strict
    } else {
        minijinja::UndefinedBehavior::Lenient
    });
    env.set_loader(minijinja::path_loader(root));
    env
}

fn template_context(ctx: &Context, values: &BTreeMap<String, Value>) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(
        "arkline".to_owned(),
        serde_json::json!({
            "engine": ctx.engine,
            "pipeline": ctx.pipeline,
            "run": ctx.run,
            "stage": ctx.stage,
            "step": ctx.step_name,
        }),
    );
    for (k, v) in values {
        map.insert(k.clone(), v.clone());
    }
    Value::Object(map)
}

fn render_file(
    env: &minijinja::Environment<'static>,
    name: &str,
    context: &Value,
) -> Result<String, StepError> {
    let template = env
        .get_template(name)
        .map_err(|e| StepError::failed(format!("template {name}: {}", describe(&e))))?;
    template
        .render(context)
        .map_err(|e| StepError::failed(format!("rendering {name}: {}", describe(&e))))
}

/// The error with its causes (an include's failure is a source of the outer one).
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Files under `dir` (relative names, sorted), skipping hidden ones.
fn list_files(dir: &str, keep: &dyn Fn(&str) -> bool) -> Result<Vec<String>, StepError> {
    fn walk(
        dir: &str,
        prefix: &str,
        keep: &dyn Fn(&str) -> bool,
        out: &mut Vec<String>,
    ) -> Result<(), StepError> {
        let entries =
            fs::read_dir(dir).map_err(|e| StepError::failed(format!("cannot list {dir}: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| StepError::failed(format!("cannot list {dir}: {e}")))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let rel = join(prefix, &name);
            let kind = entry
                .file_type()
                .map_err(|e| StepError::failed(format!("cannot read {dir}/{name}: {e}")))?;
            if kind.is_dir() {
                walk(&format!("{dir}/{name}"), &rel, keep, out)?;
            } else if kind.is_file() && keep(&name) {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", keep, &mut out)?;
    out.sort();
    Ok(out)
}

fn write_file(path: &str, text: &str) -> Result<(), StepError> {
    if let Some(parent) = Path::new(path).parent() {
        fs::create_dir_all(parent)
            .map_err(|e| StepError::failed(format!("cannot create {}: {e}", parent.display())))?;
    }
    fs::write(path, text).map_err(|e| StepError::failed(format!("cannot write {path}: {e}")))
}

fn workspace_field(field: &str, path: &str) -> Result<String, StepError> {
    relative_path(path)
        .filter(|rel| !rel.is_empty())
        .ok_or_else(|| {
            StepError::invalid_config(
                field,
                format!("`{path}` is not a path inside the workspace; give one relative to the workspace root"),
            )
        })
}

fn parent(path: &str) -> String {
    Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| arkline_sdk::workspace::WORKSPACE.to_owned())
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}/{b}")
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

arkline_sdk::steps! {
    /// Renders workspace template files (Jinja2 syntax, minijinja) with the given values.
    "render" => render,
    /// Renders Kubernetes manifests, checks apiVersion, kind and metadata.name, and applies them with kubectl when granted.
    "deploy-yaml" => deploy_yaml,
}
