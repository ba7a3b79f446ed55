//! `deploy/apply`: a template pulled from a registry (digests verified) or
//! workspace files, rendered with `values` (or by a granted `helm template`
//! for a chart), applied with a granted `kubectl` (server-side apply, one
//! call per namespace, or one call pruning an ApplySet), then `kubectl
//! rollout status` of each Deployment, StatefulSet and DaemonSet it declared.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::time::Duration;

use arkline_sdk::prelude::*;
use arkline_sdk::process::{Command, ExitStatus, Output};
use arkline_sdk::workspace::{WORKSPACE, guest_path, relative_path};
use image::CredentialConfig;
use image::oci::Descriptor;
use image::reference::Reference;
use image::registry::{RegistryError, short};
use serde_json::{Map, Value, json};

use crate::render::{self, Resource};
use crate::{ARTIFACT_TYPE, LAYER_TYPE, client, credential};

/// The most a template's layer may be (compressed) and hold (uncompressed).
const MAX_TEMPLATE: u64 = 64 << 20;
/// The host's cap on a response body.
const HOST_BODY_CAP: u64 = 16 << 20;
/// Ranged reads of a layer larger than this.
const CHUNK: u64 = 8 << 20;
/// How much longer than `--timeout` a `kubectl rollout status` may run before
/// the host kills it.
const ROLLOUT_GRACE: Duration = Duration::from_secs(5);

/// Configuration of the `apply` step.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Apply {
    /// A template published by `publish-template`:
    /// `registry/repository:tag` or `…@sha256:…` (the `image` output). Give
    /// this or `path`.
    #[serde(default)]
    pub template: Option<String>,
    /// A workspace file or directory of manifests, or a Helm chart directory,
    /// instead of `template`.
    #[serde(default)]
    pub path: Option<String>,
    /// Values for `{{ name }}` placeholders in the manifests; for a Helm chart,
    /// a values document given to `helm template --values -` on stdin (a
    /// dotted name, `image.tag`, sets a nested value).
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// The namespace to apply to (`kubectl -n`) and to wait in, unless a
    /// resource names its own.
    #[serde(default)]
    pub namespace: Option<String>,
    /// The ApplySet parent that records what was applied, so that resources
    /// the manifests no longer declare are pruned (`kubectl apply --prune
    /// --applyset=PARENT`, with `KUBECTL_APPLYSET=true`): `RESOURCE/NAME`
    /// (`configmaps/shop`, `secrets/shop`, or a custom parent type
    /// `kind.group/name`), or a bare name meaning a ConfigMap. A ConfigMap or
    /// Secret parent lives in `namespace`, which is then required, and every
    /// namespaced resource must be in it.
    #[serde(default)]
    pub applyset: Option<String>,
    /// Not supported: `kubectl apply --server-side --prune -l` is refused by
    /// kubectl 1.27 and later and pruned nothing before. Use `applyset`.
    #[serde(default)]
    pub prune_label: Option<Value>,
    /// Wait for each Deployment, StatefulSet and DaemonSet to roll out
    /// (default true).
    #[serde(default = "yes")]
    pub wait: bool,
    /// Seconds each rollout may take (`kubectl rollout status --timeout`,
    /// default 300).
    #[serde(default = "default_rollout_timeout")]
    pub rollout_timeout: u64,
    /// A kubeconfig file in the workspace (`KUBECONFIG`); default: kubectl's
    /// own (the workspace's `.kube/config`, as `HOME` is the workspace).
    #[serde(default)]
    pub kubeconfig: Option<String>,
    /// The kubeconfig context (`kubectl --context`).
    #[serde(default)]
    pub context: Option<String>,
    /// The Helm release name, for a chart (default: the chart's directory name).
    #[serde(default)]
    pub release: Option<String>,
    /// The registry's credential, for `template`.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries
    /// (`localhost`, `127.0.0.1`, `[::1]`) always are.
    #[serde(default)]
    pub plain_http: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_rollout_timeout() -> u64 {
    300
}

/// Where the bundle came from and what it holds.
struct Bundle {
    /// Files by name relative to the bundle's root.
    files: BTreeMap<String, Vec<u8>>,
    /// A guest directory holding the files (for `helm template`).
    dir: Option<String>,
    /// What to call it in messages.
    name: String,
}

/// Runs the `apply` step.
pub fn apply(ctx: &Context, config: Apply) -> StepResult {
    if config.rollout_timeout == 0 {
        return Err(StepError::invalid_config(
            "rollout_timeout",
            "give at least 1 second",
        ));
    }
    let (bundle, digest) = match (&config.template, &config.path) {
        (Some(template), None) => {
            let (bundle, digest) = pull(ctx, &config, template)?;
            (bundle, Some(digest))
        }
        (None, Some(path)) => (workspace_bundle(path)?, None),
        _ => {
            return Err(StepError::invalid_config(
                "template",
                "give either `template` (a published template) or `path` (workspace files), not both or neither",
            ));
        }
    };
    if config.prune_label.is_some() {
        return Err(StepError::invalid_config(
            "prune_label",
            "is not supported: kubectl refuses `--prune -l` with server-side apply (1.27 and later) and pruned nothing before; name an ApplySet parent instead, e.g. `applyset: shop` (a ConfigMap in `namespace`), and remove `prune_label`",
        ));
    }
    let applyset = config
        .applyset
        .as_deref()
        .map(applyset_parent)
        .transpose()?;
    if let Some(parent) = &applyset
        && config.namespace.is_none()
        && !parent.split('/').next().unwrap_or("").contains('.')
    {
        return Err(StepError::invalid_config(
            "applyset",
            format!(
                "the ApplySet parent `{parent}` is namespaced: give `namespace` (kubectl takes the parent's namespace from `-n` only)"
            ),
        ));
    }
    let stream = if bundle.files.contains_key("Chart.yaml") {
        helm_template(&config, &bundle)?
    } else {
        let mut rendered = BTreeMap::new();
        for (name, bytes) in &bundle.files {
            if !render::is_manifest(name) {
                continue;
            }
            let text = std::str::from_utf8(bytes).map_err(|_| {
                StepError::failed(format!("{}: {name} is not UTF-8 text", bundle.name))
            })?;
            let text = render::substitute(name, text, &config.values).map_err(|e| {
                StepError::invalid_config("values", format!("{}: {e}", bundle.name))
            })?;
            rendered.insert(name.clone(), text);
        }
        render::join(&rendered).map_err(|e| StepError::failed(format!("{}: {e}", bundle.name)))?
    };
    let documents = render::documents(&stream);
    let resources: Vec<Resource> = documents
        .iter()
        .filter_map(|d| d.resource.clone())
        .collect();
    if resources.is_empty() {
        return Err(StepError::failed(format!(
            "{} declares no resources (no YAML document with `kind` and `metadata.name`)",
            bundle.name
        )));
    }

    // Apply: one call per namespace (see `apply_groups`).
    let groups = match (&applyset, &config.namespace) {
        // A cluster-scoped (custom) parent, no `-n`: one call, whatever the
        // namespaces, as pruning needs the whole set in one call.
        (Some(_), None) => vec![(None, documents.iter().collect())],
        _ => apply_groups(&documents, config.namespace.as_deref()),
    };
    if let Some(parent) = &applyset
        && let Some((ns, group)) = groups.iter().find(|(ns, _)| *ns != config.namespace)
    {
        let names: Vec<String> = group
            .iter()
            .filter_map(|d| d.resource.as_ref().map(Resource::id))
            .collect();
        return Err(StepError::invalid_config(
            "applyset",
            format!(
                "{} declares {} in namespace `{}`, but the ApplySet `{parent}` is applied with `-n {}` and kubectl rejects resources of other namespaces; apply them in a step of their own (with an ApplySet of their own), or drop their `metadata.namespace`",
                bundle.name,
                names.join(", "),
                ns.as_deref().unwrap_or(""),
                config.namespace.as_deref().unwrap_or("")
            ),
        ));
    }
    for (ns, group) in &groups {
        let mut args = vec![
            "apply".to_owned(),
            "--server-side".to_owned(),
            "--field-manager=arkline".to_owned(),
            "-f".to_owned(),
            "-".to_owned(),
        ];
        if let Some(ns) = ns {
            args.extend(["-n".to_owned(), ns.clone()]);
        }
        let mut env = Vec::new();
        if let Some(parent) = &applyset {
            args.extend(["--prune".to_owned(), format!("--applyset={parent}")]);
            env.push(("KUBECTL_APPLYSET", "true"));
        }
        let text: String = group.iter().map(|d| format!("---\n{}", d.text)).collect();
        let out = kubectl(&config, args, &env, Some(text.into_bytes()), None)?;
        if !out.status.success() {
            return Err(StepError::failed(format!(
                "`kubectl apply` of {}{} ended with {}{}",
                bundle.name,
                ns.as_ref()
                    .map(|ns| format!(" (namespace {ns})"))
                    .unwrap_or_default(),
                out.status,
                tail(&out.stderr)
            )));
        }
    }
    let applied: Vec<String> = resources.iter().map(Resource::id).collect();
    arkline_sdk::info!("applied {}", applied.join(", "));

    // Wait.
    let mut rollout = Map::new();
    if config.wait {
        for resource in resources.iter().filter(|r| r.rolls_out()) {
            let id = resource.id();
            let mut args = vec![
                "rollout".to_owned(),
                "status".to_owned(),
                format!("{}/{}", resource.kind.to_ascii_lowercase(), resource.name),
                format!("--timeout={}s", config.rollout_timeout),
            ];
            if let Some(ns) = resource.namespace.as_ref().or(config.namespace.as_ref()) {
                args.extend(["-n".to_owned(), ns.clone()]);
            }
            let limit = Duration::from_secs(config.rollout_timeout) + ROLLOUT_GRACE;
            let out = kubectl(&config, args, &[], None, Some(limit))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let timed_out = out.status == ExitStatus::TimedOut
                || stderr.contains("timed out")
                || stderr.contains("exceeded its progress deadline");
            if timed_out {
                return Err(StepError::failed(format!(
                    "the rollout of {id} did not finish within {}s (`kubectl rollout status` {}); applied: {}. Check the workload's pods (`kubectl describe {}/{}`) or raise `rollout_timeout`",
                    config.rollout_timeout,
                    if out.status == ExitStatus::TimedOut {
                        "was stopped".to_owned()
                    } else {
                        format!("ended with {}", out.status)
                    },
                    applied.join(", "),
                    resource.kind.to_ascii_lowercase(),
                    resource.name
                )));
            }
            if !out.status.success() {
                return Err(StepError::failed(format!(
                    "`kubectl rollout status` of {id} ended with {}{}",
                    out.status,
                    tail(&out.stderr)
                )));
            }
            arkline_sdk::info!("{id} rolled out");
            rollout.insert(id, json!("ready"));
        }
    }

    let mut outcome = Outcome::new()
        .output("applied", json!(applied).to_string())
        .output("rollout", Value::Object(rollout).to_string());
    if let Some(digest) = digest {
        outcome = outcome.output("template_digest", digest);
    }
    Ok(outcome)
}

/// Runs a granted `kubectl` with the kubeconfig settings.
fn kubectl(
    config: &Apply,
    mut args: Vec<String>,
    env: &[(&str, &str)],
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
) -> Result<Output, StepError> {
    if let Some(context) = &config.context {
        args.insert(0, format!("--context={context}"));
    }
    let mut command = Command::new("kubectl")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(WORKSPACE);
    if let Some(path) = &config.kubeconfig {
        let rel = relative_path(path).ok_or_else(|| {
            StepError::invalid_config(
                "kubeconfig",
                format!("`{path}` leaves the workspace; give a file of the workspace"),
            )
        })?;
        command = command.env("KUBECONFIG", guest_path(&rel));
    }
    if let Some(stdin) = stdin {
        command = command.stdin(stdin);
    }
    if let Some(timeout) = timeout {
        command = command.timeout(timeout);
    }
    command.output().map_err(|e| match e {
        HostError::Denied(m) => StepError::failed(format!(
            "`kubectl` is not granted to the deploy biz ({m}); grant it to the engine: `process=kubectl` (and `process-net=host` so it reaches the cluster)"
        )),
        other => StepError::failed(format!(
            "cannot run `kubectl`: {other} (kubectl must be on the PATH of the engine's host)"
        )),
    })
}

/// Renders a chart with a granted `helm template`.
fn helm_template(config: &Apply, bundle: &Bundle) -> Result<String, StepError> {
    let Some(dir) = &bundle.dir else {
        return Err(StepError::failed(format!(
            "{} is a Helm chart but no directory holds it",
            bundle.name
        )));
    };
    let release = config.release.clone().unwrap_or_else(|| {
        dir.rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("release")
            .to_owned()
    });
    let mut args = vec!["template".to_owned(), release, dir.clone()];
    if let Some(ns) = &config.namespace {
        args.extend(["--namespace".to_owned(), ns.clone()]);
    }
    // Values on stdin, not `--set`: Helm splits `--set` at `,` and reads `[`
    // and `\` in it, and a value (perhaps a secret) would be on the host's
    // command line. Nothing is written to disk either.
    let values = helm_values(&config.values)?;
    args.extend(["--values".to_owned(), "-".to_owned()]);
    let out = Command::new("helm")
        .args(args)
        .stdin(values.into_bytes())
        .current_dir(WORKSPACE)
        .stream_to_log(false)
        .output()
        .map_err(|e| match e {
            HostError::Denied(m) => StepError::failed(format!(
                "{} is a Helm chart (it has a Chart.yaml) and rendering it needs `helm`, which is not granted to the deploy biz ({m}); grant it to the engine: `process=helm`, or publish rendered manifests instead",
                bundle.name
            )),
            other => StepError::failed(format!("cannot run `helm`: {other}")),
        })?;
    if !out.status.success() || out.stdout_truncated {
        return Err(StepError::failed(format!(
            "`helm template` of {} ended with {}{}",
            bundle.name,
            out.status,
            tail(&out.stderr)
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| StepError::failed("`helm template` wrote text that is not UTF-8"))
}

/// The documents to apply, grouped by the namespace given to `kubectl -n`:
/// `namespace` (or none) for documents that name no namespace or that one,
/// first, as it holds cluster-scoped resources such as `Namespace`s; then
/// each other namespace a document names, applied with its own `-n` (kubectl
/// rejects an object of another namespace than `-n`'s). kubectl, which knows
/// which kinds are namespaced, decides where each object goes; nothing is
/// written into the documents.
fn apply_groups<'a>(
    documents: &'a [render::Document],
    namespace: Option<&str>,
) -> Vec<(Option<String>, Vec<&'a render::Document>)> {
    let mut default = Vec::new();
    let mut others: BTreeMap<String, Vec<&render::Document>> = BTreeMap::new();
    for document in documents {
        match document
            .resource
            .as_ref()
            .and_then(|r| r.namespace.as_deref())
        {
            Some(own) if Some(own) != namespace => {
                others.entry(own.to_owned()).or_default().push(document)
            }
            _ => default.push(document),
        }
    }
    let mut groups = Vec::new();
    if !default.is_empty() {
        groups.push((namespace.map(str::to_owned), default));
    }
    groups.extend(others.into_iter().map(|(ns, docs)| (Some(ns), docs)));
    groups
}

/// The `--applyset` argument for the `applyset` setting: `RESOURCE/NAME` as
/// given, a bare name as `configmaps/NAME` (kubectl's own default would be a
/// Secret; the parent holds no secret, only labels and annotations).
fn applyset_parent(text: &str) -> Result<String, StepError> {
    let bad = || {
        StepError::invalid_config(
            "applyset",
            format!(
                "`{text}` is not an ApplySet parent; give a name (a ConfigMap, `shop`) or `RESOURCE/NAME` (`configmaps/shop`, `secrets/shop`)"
            ),
        )
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    };
    match text.split_once('/') {
        Some((resource, name)) if valid(resource) && valid(name) => Ok(text.to_owned()),
        None if valid(text) => Ok(format!("configmaps/{text}")),
        _ => Err(bad()),
    }
}

/// The values document given to `helm template --values -`: a JSON object
/// (JSON is YAML) of strings, a dotted name nesting (`image.tag: v1` is
/// `{"image": {"tag": "v1"}}`), each value exactly as given.
fn helm_values(values: &BTreeMap<String, String>) -> Result<String, StepError> {
    let mut root = Map::new();
    for (name, value) in values {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(StepError::invalid_config(
                "values",
                format!("`{name}` has an empty part between its dots"),
            ));
        }
        let (last, parents) = parts.split_last().unwrap_or((&"", &[]));
        let mut map = &mut root;
        for part in parents {
            let entry = map
                .entry((*part).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            map = match entry {
                Value::Object(m) => m,
                _ => {
                    return Err(StepError::invalid_config(
                        "values",
                        format!("`{name}` nests under `{part}`, which is also given a value"),
                    ));
                }
            };
        }
        if map.contains_key(*last) {
            return Err(StepError::invalid_config(
                "values",
                format!("`{name}` is given a value and also has values nested under it"),
            ));
        }
        map.insert((*last).to_owned(), Value::String(value.clone()));
    }
    Ok(Value::Object(root).to_string())
}

/// The files of a workspace file or directory.
fn workspace_bundle(path: &str) -> Result<Bundle, StepError> {
    let rel = relative_path(path).ok_or_else(|| {
        StepError::invalid_config(
            "path",
            format!("`{path}` leaves the workspace; give a path relative to the workspace root"),
        )
    })?;
    let full = guest_path(&rel);
    let meta = fs::metadata(&full).map_err(|_| {
        StepError::invalid_config("path", format!("`{path}` does not exist in the workspace"))
    })?;
    let mut files = BTreeMap::new();
    if meta.is_file() {
        let name = rel.rsplit('/').next().unwrap_or(&rel).to_owned();
        let bytes =
            fs::read(&full).map_err(|e| StepError::failed(format!("cannot read {full}: {e}")))?;
        files.insert(name, bytes);
        return Ok(Bundle {
            files,
            dir: None,
            name: path.to_owned(),
        });
    }
    read_tree(&full, "", &mut files)?;
    Ok(Bundle {
        files,
        dir: Some(full),
        name: path.to_owned(),
    })
}

fn read_tree(
    base: &str,
    rel: &str,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), StepError> {
    let dir = if rel.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{rel}")
    };
    let entries =
        fs::read_dir(&dir).map_err(|e| StepError::failed(format!("cannot list {dir}: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| StepError::failed(format!("cannot list {dir}: {e}")))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if child == ".arkline" {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| StepError::failed(format!("cannot read {dir}/{name}: {e}")))?;
        if kind.is_dir() {
            read_tree(base, &child, files)?;
        } else if kind.is_file() {
            let bytes = fs::read(entry.path())
                .map_err(|e| StepError::failed(format!("cannot read {dir}/{name}: {e}")))?;
            files.insert(child, bytes);
        }
    }
    Ok(())
}

/// Pulls a template: its manifest (digest checked against the reference or the
/// registry's `Docker-Content-Digest`), then its layer (digest and size
/// checked), unpacked in memory. A chart is also written under
/// `.arkline/deploy/` for `helm template`.
fn pull(ctx: &Context, config: &Apply, text: &str) -> Result<(Bundle, String), StepError> {
    let reference = Reference::parse(text).map_err(|e| StepError::invalid_config("template", e))?;
    let credential = credential(config.credential.as_ref(), "credential")?;
    let registry = client(&reference.registry, &config.plain_http, credential);
    let repo = reference.repository.as_str();
    let fail =
        |e: RegistryError| StepError::failed(format!("cannot pull the template {text}: {e}"));
    let (_, bytes, digest) = registry
        .manifest(repo, reference.manifest_reference(), HOST_BODY_CAP)
        .map_err(fail)?;
    let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| {
        StepError::failed(format!(
            "the template {text}: its manifest is not JSON: {e}"
        ))
    })?;
    let artifact_type = manifest
        .get("artifactType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if artifact_type != ARTIFACT_TYPE {
        return Err(StepError::failed(format!(
            "{text} is not an arkline template: its artifactType is `{artifact_type}`, not `{ARTIFACT_TYPE}`; publish it with deploy/publish-template"
        )));
    }
    let layers: Vec<Descriptor> = manifest
        .get("layers")
        .and_then(Value::as_array)
        .map(|l| l.iter().map(Descriptor::from_json).collect())
        .transpose()
        .map_err(|e| StepError::failed(format!("the template {text}: {e}")))?
        .unwrap_or_default();
    let [layer] = layers.as_slice() else {
        return Err(StepError::failed(format!(
            "the template {text} has {} layers, not one",
            layers.len()
        )));
    };
    if layer.media_type != LAYER_TYPE {
        return Err(StepError::failed(format!(
            "the template {text}'s layer is `{}`, not `{LAYER_TYPE}`",
            layer.media_type
        )));
    }
    if layer.size > MAX_TEMPLATE {
        return Err(StepError::failed(format!(
            "the template {text}'s layer is {} bytes, over the cap of {MAX_TEMPLATE}",
            layer.size
        )));
    }
    let mut gz = Vec::new();
    registry
        .read_blob(repo, &layer.digest, layer.size, CHUNK, &mut |chunk| {
            gz.extend_from_slice(chunk);
            Ok(())
        })
        .map_err(fail)?;
    arkline_sdk::info!("pulled {text}: {} ({} bytes)", short(&digest), layer.size);

    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
    let bad = |e: std::io::Error| {
        StepError::failed(format!("the template {text}: cannot unpack its layer: {e}"))
    };
    let mut total = 0u64;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(name) = relative_path(&name).filter(|n| !n.is_empty()) else {
            return Err(StepError::failed(format!(
                "the template {text} holds `{name}`, a path that leaves the bundle"
            )));
        };
        total += entry.size();
        if total > MAX_TEMPLATE {
            return Err(StepError::failed(format!(
                "the template {text} unpacks to more than {MAX_TEMPLATE} bytes"
            )));
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(bad)?;
        files.insert(name, bytes);
    }

    let dir = if files.contains_key("Chart.yaml") {
        let dir = format!(
            "{WORKSPACE}/.arkline/deploy/{}-{}",
            ctx.step_name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>(),
            digest
                .trim_start_matches("sha256:")
                .get(..12)
                .unwrap_or("template")
        );
        for (name, bytes) in &files {
            let path = format!("{dir}/{name}");
            if let Some((parent, _)) = path.rsplit_once('/') {
                fs::create_dir_all(parent)
                    .map_err(|e| StepError::failed(format!("cannot create {parent}: {e}")))?;
            }
            fs::write(&path, bytes)
                .map_err(|e| StepError::failed(format!("cannot write {path}: {e}")))?;
        }
        Some(dir)
    } else {
        None
    };
    Ok((
        Bundle {
            files,
            dir,
            name: format!("the template {text}"),
        },
        digest,
    ))
}

/// The last lines of a program's stderr, for a failure message.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines[lines.len().saturating_sub(5)..].join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_values_are_a_json_document_of_exact_strings() {
        let values = BTreeMap::from([
            ("image.repository".to_owned(), "r.example/app".to_owned()),
            ("image.tag".to_owned(), "v1,b=c".to_owned()),
            ("password".to_owned(), "p\"a's\\s[0]\n".to_owned()),
            ("replicas".to_owned(), "3".to_owned()),
        ]);
        let text = helm_values(&values).expect("values");
        let parsed: Value = serde_json::from_str(&text).expect("JSON, which is YAML");
        assert_eq!(
            parsed,
            json!({
                "image": { "repository": "r.example/app", "tag": "v1,b=c" },
                "password": "p\"a's\\s[0]\n",
                "replicas": "3",
            })
        );
        // One line: no value can start a YAML construct of its own.
        assert!(!text.contains('\n'), "{text}");

        let clash = BTreeMap::from([
            ("image".to_owned(), "x".to_owned()),
            ("image.tag".to_owned(), "v1".to_owned()),
        ]);
        assert!(helm_values(&clash).is_err());
        let empty = BTreeMap::from([("a..b".to_owned(), "x".to_owned())]);
        assert!(helm_values(&empty).is_err());
    }

    #[test]
    fn applyset_parents_default_to_a_configmap() {
        assert_eq!(
            applyset_parent("shop").ok().as_deref(),
            Some("configmaps/shop")
        );
        assert_eq!(
            applyset_parent("secrets/shop").ok().as_deref(),
            Some("secrets/shop")
        );
        assert_eq!(
            applyset_parent("applysets.example.com/shop")
                .ok()
                .as_deref(),
            Some("applysets.example.com/shop")
        );
        for bad in ["", "a/b/c", "Shop", "/x", "x/"] {
            assert!(applyset_parent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents_are_grouped_by_the_namespace_kubectl_is_given() {
        let stream = "kind: Namespace\nmetadata:\n  name: data\n---\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: data\n---\nkind: Deployment\nmetadata:\n  name: web\n---\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n";
        let documents = render::documents(stream);
        let ids = |groups: Vec<(Option<String>, Vec<&render::Document>)>| {
            groups
                .into_iter()
                .map(|(ns, docs)| {
                    let ids: Vec<String> = docs
                        .iter()
                        .filter_map(|d| d.resource.as_ref().map(Resource::id))
                        .collect();
                    (ns, ids)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(apply_groups(&documents, Some("shop"))),
            [
                (
                    Some("shop".to_owned()),
                    vec![
                        "Namespace/data".to_owned(),
                        "Deployment/web".to_owned(),
                        "Service/web".to_owned()
                    ]
                ),
                (Some("data".to_owned()), vec!["StatefulSet/db".to_owned()]),
            ]
        );
        assert_eq!(
            ids(apply_groups(&documents, None)),
            [
                (
                    None,
                    vec!["Namespace/data".to_owned(), "Deployment/web".to_owned()]
                ),
                (Some("data".to_owned()), vec!["StatefulSet/db".to_owned()]),
                (Some("shop".to_owned()), vec!["Service/web".to_owned()]),
            ]
        );
    }
}
