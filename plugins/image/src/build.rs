//! The `build` step: a Dockerfile built by a granted `buildah` (the
//! `process` capability, grant `process=buildah`), then pushed with this
//! plugin's own registry client, as `publish` pushes.
//!
//! buildah keeps its storage in the workspace (`--root`, `--runroot` under
//! `.arkline/buildah`, the `vfs` driver: no overlay or FUSE privileges),
//! builds with `bud --layers --isolation chroot`, and writes the image to an
//! OCI layout in the workspace (`buildah push … oci:…`). The step reads that
//! layout through WASI, checks every digest, and uploads the blobs and the
//! manifest: one client, one credential path, and no credential ever on a
//! command line or in buildah's hands.
//!
//! The steps of a stage run at once in one workspace, so each build has a
//! directory of its own ([`BuildId`]: the step's name and attempt and a
//! random suffix) for its ignore file, image id (`--iidfile`) and OCI
//! layout, and its image has no name in buildah's storage (it is pushed by
//! its id). The directory, and the image unless it is kept as the `--layers`
//! cache, are removed when the step ends, passed or failed. The storage
//! itself is shared: containers/storage takes a file lock around
//! every change of its layers, images and containers, which is what lets
//! many buildah and podman processes use one store, and what lets `--layers`
//! reuse another build's layers.
//!
//! The workspace's `.arkline` (buildah's storage among it) is never part of
//! the build context: buildah gets `--ignorefile` with the context's own
//! `.containerignore` (or `.dockerignore`) lines and `.arkline`. Otherwise
//! `COPY . /app` would copy the storage into the image, and the layer cache
//! would never hit, the context changing with every build.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::time::Duration;

use arkline_sdk::prelude::*;
use arkline_sdk::workspace::{WORKSPACE, guest_path, relative_path};
use serde_json::Value;

use crate::layer::Hashing;
use crate::oci::{self, Descriptor};
use crate::provenance::ProvenanceMode;
use crate::registry::{Registry, RegistryError, Scope, short};
use crate::{
    Clients, CredentialConfig, check_chunk_size, check_request_timeout, check_tags, credential_of,
    target_repository,
};

/// The granted program.
const BUILDAH: &str = "buildah";

/// Where buildah's storage, the OCI layouts and the ignore files live,
/// relative to the workspace.
const STATE_DIR: &str = ".arkline/buildah";

/// What the build context never holds: arkline's own state in the workspace.
const ALWAYS_IGNORED: &str = ".arkline";

/// The name of one build's own directory in the shared workspace, unique to
/// the step's attempt: `<step>-<attempt>-<random>`, lower-case letters,
/// digits and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildId(String);

impl BuildId {
    /// The id of this attempt of the step `step_name`, with `suffix` making
    /// it unique among builds in the workspace.
    pub fn new(step_name: &str, attempt: u32, suffix: u64) -> BuildId {
        let mut step = String::new();
        for c in step_name.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                step.push(c);
            } else if !step.is_empty() && !step.ends_with('-') {
                step.push('-');
            }
        }
        let step = step.trim_end_matches('-');
        let step = step.get(..40).unwrap_or(step).trim_end_matches('-');
        let step = if step.is_empty() { "step" } else { step };
        BuildId(format!("{step}-{attempt}-{suffix:016x}"))
    }

    /// A random suffix (WASI's random source, through the hasher's keys).
    fn random_suffix() -> u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        );
        hasher.finish()
    }

    /// The build's own directory, relative to the workspace: its OCI layout
    /// (`oci`), ignore file (`ignore`) and image id file (`iid`).
    pub fn dir(&self) -> String {
        format!("{STATE_DIR}/builds/{}", self.0)
    }
}

impl std::fmt::Display for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The ignore file of a build of `context` (a guest path): the context's own
/// `.containerignore`, else its `.dockerignore` (buildah's order), then
/// [`ALWAYS_IGNORED`], last so that no `!` line of the context's brings it
/// back.
fn ignore_lines(context: &str) -> Result<String, StepError> {
    let mut lines = String::new();
    for name in [".containerignore", ".dockerignore"] {
        let path = format!("{context}/{name}");
        match fs::read_to_string(&path) {
            Ok(text) => {
                lines.push_str(&text);
                if !text.is_empty() && !text.ends_with('\n') {
                    lines.push('\n');
                }
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StepError::failed(format!("cannot read {path}: {e}"))),
        }
    }
    lines.push_str(ALWAYS_IGNORED);
    lines.push('\n');
    Ok(lines)
}

/// Configuration of the `build` step.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// The build context, a directory relative to the workspace (default the
    /// workspace root).
    #[serde(default = "default_context")]
    pub context: String,
    /// The Dockerfile (or Containerfile), relative to the workspace (default
    /// `Dockerfile` in `context`).
    #[serde(default)]
    pub file: Option<String>,
    /// Build arguments (`ARG`), passed as `--build-arg NAME=VALUE`. They are
    /// on buildah's command line and in the image's history: never pass a
    /// secret here.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// The Dockerfile stage to build (buildah's `--target`); default the last.
    #[serde(default)]
    pub stage: Option<String>,
    /// The platform to build for (`os/arch[/variant]`, buildah's
    /// `--platform`); default the host's.
    #[serde(default)]
    pub platform: Option<String>,
    /// Labels added to the image config (`--label NAME=VALUE`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Reuse cached intermediate layers from earlier builds in this workspace
    /// (`--layers`; default true).
    #[serde(default = "default_true")]
    pub layers: bool,
    /// Time limit of the build, in seconds (default 3600; the step's own
    /// timeout also applies).
    #[serde(default = "default_build_timeout")]
    pub build_timeout: u64,
    /// The repository to push to, e.g. `registry.example.com/team/app` (no
    /// tag: tags go in `tags`).
    pub target: String,
    /// Tags to push the image under; without any, it is pushed by digest only.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The target registry's credential: `username` and `password` (pass a
    /// secret), or a bearer `token`.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Registries (`host[:port]`) reached over plain HTTP, for the push and
    /// for the bases the Dockerfile's `FROM` lines pull. Loopback registries
    /// always are.
    #[serde(default)]
    pub plain_http: Vec<String>,
    /// Credentials of the registries the `FROM` lines pull from, by registry
    /// (`host[:port]`): `username` and `password` (pass secrets). They reach
    /// buildah in an auth file in the build's own directory, removed with
    /// it, never on its command line.
    #[serde(default)]
    pub base_credentials: BTreeMap<String, CredentialConfig>,
    /// Blobs larger than this many bytes are uploaded in chunks of this size
    /// (default and most 8 MiB).
    #[serde(default = "crate::default_chunk")]
    pub chunk_size: u64,
    /// The largest blob the step uploads (default 8 GiB).
    #[serde(default = "crate::default_max_blob")]
    pub max_blob_bytes: u64,
    /// Attempts after the first on 5xx, 429 or a failed exchange (default 4).
    #[serde(default = "crate::default_retries")]
    pub retries: u32,
    /// Time limit of each request in seconds (default 120; the host allows 300).
    #[serde(default = "crate::default_timeout")]
    pub request_timeout: u64,
    /// Signed build provenance of the pushed image, pushed as its OCI
    /// referrer: `auto` (default: attached when the engine signs provenance
    /// for this biz, otherwise the step logs why not and goes on), `required`
    /// (the step fails without it) or `off`. The biz needs the
    /// `host-call=arkline.provenance` grant and the engine a
    /// `provenance.key_secret`.
    #[serde(default)]
    pub provenance: ProvenanceMode,
}

fn default_context() -> String {
    ".".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_build_timeout() -> u64 {
    3600
}

/// Runs the `build` step.
pub fn build(ctx: &Context, config: Build) -> StepResult {
    let target = target_repository(&config.target)?;
    check_tags(&config.tags)?;
    check_chunk_size(config.chunk_size)?;
    check_request_timeout(config.request_timeout)?;
    let credential = credential_of(config.credential.as_ref(), "credential")?;
    let context = workspace_dir(&config.context, "context")?;
    let file = match &config.file {
        Some(file) => workspace_dir(file, "file")?,
        None => format!("{context}/Dockerfile"),
    };
    if fs::metadata(&file).map(|m| m.is_file()).ok() != Some(true) {
        return Err(StepError::invalid_config(
            if config.file.is_some() {
                "file"
            } else {
                "context"
            },
            format!("there is no Dockerfile at {file}; set `file` to its path in the workspace"),
        ));
    }
    if let Some(platform) = &config.platform {
        oci::Platform::parse(platform).map_err(|e| StepError::invalid_config("platform", e))?;
    }
    for (field, map) in [
        ("build_args", &config.build_args),
        ("labels", &config.labels),
    ] {
        if let Some(name) = map.keys().find(|k| k.is_empty() || k.contains('=')) {
            return Err(StepError::invalid_config(
                field,
                format!("`{name}` is not a name: it is empty or has a `=`"),
            ));
        }
    }
    if config.build_timeout == 0 {
        return Err(StepError::invalid_config(
            "build_timeout",
            "give a time limit of at least 1 second",
        ));
    }
    let auth_file = auth_file(&config.base_credentials)?;
    let dockerfile = fs::read_to_string(&file)
        .map_err(|e| StepError::failed(format!("cannot read {file}: {e}")))?;
    let mut insecure: Vec<String> = base_registries(&dockerfile)
        .into_iter()
        .filter(|host| crate::plain_http(host, &config.plain_http))
        .chain(config.plain_http.iter().cloned())
        .collect();
    insecure.sort();
    insecure.dedup();

    // A missing grant or program fails here, before the registry is asked.
    let version = process::Command::new(BUILDAH)
        .arg("--version")
        .current_dir(WORKSPACE)
        .stream_to_log(false)
        .timeout(Duration::from_secs(60))
        .output()
        .map_err(grant_error)?;
    arkline_sdk::info!("{}", String::from_utf8_lossy(&version.stdout).trim());

    let clients = Clients {
        plain_http: &config.plain_http,
        retries: config.retries,
        timeout: Duration::from_secs(config.request_timeout),
        user_agent: crate::step_user_agent(ctx),
    };
    let registry = clients.registry(&target.registry, credential);
    // A wrong credential fails here, before a long build.
    registry
        .ping(&target.repository, &Scope::push(&target.repository))
        .map_err(|e| StepError::failed(e.to_string()))?;

    let state = guest_path(STATE_DIR);
    let id = BuildId::new(&ctx.step_name, ctx.attempt, BuildId::random_suffix());
    let dir = guest_path(&id.dir());
    let layout = format!("{dir}/oci");
    let timeout = Duration::from_secs(config.build_timeout);
    fs::create_dir_all(&dir).map_err(|e| StepError::failed(format!("cannot create {dir}: {e}")))?;
    // Removes the build's directory and, without `layers`, its image, however
    // the step ends.
    let _cleanup = Cleanup {
        state: state.clone(),
        dir: dir.clone(),
        layers: config.layers,
    };
    let ignore = format!("{dir}/ignore");
    fs::write(&ignore, ignore_lines(&context)?)
        .map_err(|e| StepError::failed(format!("cannot write {ignore}: {e}")))?;
    let iid = format!("{dir}/iid");
    // Bases on plain-HTTP registries, and the bases' credentials: files of
    // this build's directory (removed with it).
    let mut env = Vec::new();
    if !insecure.is_empty() {
        let conf = format!("{dir}/registries.conf");
        fs::write(&conf, registries_conf(&insecure))
            .map_err(|e| StepError::failed(format!("cannot write {conf}: {e}")))?;
        env.push(("CONTAINERS_REGISTRIES_CONF".to_owned(), conf));
    }
    // The bases' credentials exist as a file only while `bud` runs: removed
    // when it returns, whatever it returns (and by `Cleanup` first, should
    // the step end another way).
    let authfile = match auth_file {
        Some(json) => {
            let path = format!("{dir}/auth.json");
            fs::write(&path, json)
                .map_err(|e| StepError::failed(format!("cannot write {path}: {e}")))?;
            Some(RemoveOnDrop(path))
        }
        None => None,
    };

    // No `--tag`: the image has no name in the shared storage for another
    // build to take; it is pushed by the id buildah writes to this build's
    // own `--iidfile`.
    let mut bud = vec![
        "bud".to_owned(),
        "--isolation".into(),
        "chroot".into(),
        format!("--layers={}", config.layers),
        "--file".into(),
        file.clone(),
        "--ignorefile".into(),
        ignore,
        "--iidfile".into(),
        iid.clone(),
    ];
    for (name, value) in &config.build_args {
        bud.extend(["--build-arg".to_owned(), format!("{name}={value}")]);
    }
    for (name, value) in &config.labels {
        bud.extend(["--label".to_owned(), format!("{name}={value}")]);
    }
    if let Some(stage) = &config.stage {
        bud.extend(["--target".to_owned(), stage.clone()]);
    }
    if let Some(platform) = &config.platform {
        bud.extend(["--platform".to_owned(), platform.clone()]);
    }
    if let Some(path) = &authfile {
        bud.extend(["--authfile".to_owned(), path.0.clone()]);
    }
    bud.push(context.clone());
    arkline_sdk::info!("buildah bud: {file} in {context} (build {id})");
    let built = buildah(&state, &bud, &env, timeout, "the build");
    drop(authfile);
    built?;
    let image_id = image_id(&iid)?;
    buildah(
        &state,
        &[
            "push".to_owned(),
            "--quiet".into(),
            image_id,
            // Relative to the working directory (the workspace): the host
            // translates only arguments that start with `/workspace`.
            format!("oci:{}/oci:build", id.dir()),
        ],
        &[],
        timeout,
        "writing the image to an OCI layout",
    )?;

    // The layout: index → manifest → config and layers, every digest checked.
    let manifest_descriptor = layout_manifest(&layout)?;
    let manifest_bytes = read_blob(&layout, &manifest_descriptor, 16 << 20)?;
    let manifest: Value = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        StepError::failed(format!("buildah's manifest in {layout} is not JSON: {e}"))
    })?;
    let media_type = manifest_descriptor.media_type.clone();
    if !oci::is_manifest(&media_type) {
        return Err(StepError::failed(format!(
            "buildah wrote a {media_type} to {layout}, not an image manifest"
        )));
    }
    let config_descriptor = manifest
        .get("config")
        .ok_or_else(|| "the manifest has no `config`".to_owned())
        .and_then(Descriptor::from_json)
        .map_err(|e| StepError::failed(format!("buildah's manifest in {layout}: {e}")))?;
    let mut blobs = vec![config_descriptor];
    for layer in manifest
        .get("layers")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        blobs.push(
            Descriptor::from_json(layer)
                .map_err(|e| StepError::failed(format!("buildah's manifest in {layout}: {e}")))?,
        );
    }

    let repo = target.repository.as_str();
    let mut uploaded = 0;
    for blob in &blobs {
        if blob.size > config.max_blob_bytes {
            return Err(StepError::failed(format!(
                "the image has a blob {} of {} bytes, over `max_blob_bytes` ({})",
                blob.digest, blob.size, config.max_blob_bytes
            )));
        }
        if registry
            .has_blob(repo, &blob.digest)
            .map_err(registry_error)?
        {
            arkline_sdk::info!("{} already in {repo}", short(&blob.digest));
            continue;
        }
        upload_blob(&registry, repo, &layout, blob, config.chunk_size)?;
        uploaded += 1;
        arkline_sdk::info!("uploaded {} ({} bytes)", short(&blob.digest), blob.size);
    }

    let digest = manifest_descriptor.digest.clone();
    super::push_tagged(
        &registry,
        &target,
        &config.tags,
        &media_type,
        &manifest_bytes,
        &digest,
    )?;
    let attached = crate::provenance::attach(
        &registry,
        &target,
        &crate::provenance::Subject {
            media_type: &media_type,
            digest: &digest,
            size: manifest_bytes.len() as u64,
        },
        config.provenance,
    )?;
    let image = format!("{}@{digest}", target.repository_name());
    Ok(super::with_provenance(Outcome::new(), attached)
        .output("digest", digest.clone())
        .output("image", image.clone())
        .output("tags", config.tags.join(","))
        .summary(format!(
            "{image} built by buildah ({} layers, {uploaded} blobs uploaded, {} requests)",
            blobs.len() - 1,
            registry.request_count()
        )))
}

/// A workspace path setting as a guest path.
fn workspace_dir(path: &str, field: &str) -> Result<String, StepError> {
    relative_path(path).map(|r| guest_path(&r)).ok_or_else(|| {
        StepError::invalid_config(
            field,
            format!("`{path}` leaves the workspace; give a path relative to the workspace root"),
        )
    })
}

/// The image id buildah wrote to `--iidfile` (`sha256:<hex>`, or the hex).
fn image_id(path: &str) -> Result<String, StepError> {
    let text = fs::read_to_string(path)
        .map_err(|e| StepError::failed(format!("cannot read buildah's image id in {path}: {e}")))?;
    let hex = text.trim().trim_start_matches("sha256:");
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StepError::failed(format!(
            "buildah wrote `{}` to {path}, not an image id",
            text.trim()
        )));
    }
    Ok(hex.to_owned())
}

/// Removes what one build leaves in the workspace when the step ends: its
/// directory (layout, ignore file, image id) and, when the build kept no
/// layer cache, its image. A failure is a warning: the push is done or has
/// failed on its own account.
struct Cleanup {
    state: String,
    dir: String,
    layers: bool,
}

/// A file removed when this is dropped.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            arkline_sdk::warn!("cannot remove {}: {e}", self.0);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The credentials first, before anything slow.
        drop(RemoveOnDrop(format!("{}/auth.json", self.dir)));
        if !self.layers
            && let Ok(id) = image_id(&format!("{}/iid", self.dir))
            && let Err(e) = buildah(
                &self.state,
                &["rmi".to_owned(), id],
                &[],
                Duration::from_secs(120),
                "removing the built image",
            )
        {
            arkline_sdk::warn!("{e}");
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            arkline_sdk::warn!("cannot remove {}: {e}", self.dir);
        }
    }
}

/// Runs `buildah` with its storage under `state`; `what` names the run in
/// errors.
fn buildah(
    state: &str,
    args: &[String],
    env: &[(String, String)],
    timeout: Duration,
    what: &str,
) -> Result<(), StepError> {
    let mut all = vec![
        "--root".to_owned(),
        format!("{state}/root"),
        "--runroot".into(),
        format!("{state}/runroot"),
        "--storage-driver".into(),
        "vfs".into(),
    ];
    all.extend(args.iter().cloned());
    // Temporary files that follow TMPDIR go under the storage, on disk
    // rather than in memory; those that do not (a base's config while it is
    // converted) go to /var/tmp, a tmpfs in the builder sandbox.
    let tmp = format!("{state}/tmp");
    fs::create_dir_all(&tmp).map_err(|e| StepError::failed(format!("cannot create {tmp}: {e}")))?;
    let mut command = process::Command::new(BUILDAH);
    for (name, value) in env {
        command = command.env(name, value);
    }
    let out = command
        .args(all)
        .env("BUILDAH_ISOLATION", "chroot")
        .env("TMPDIR", &tmp)
        .current_dir(WORKSPACE)
        .timeout(timeout)
        .output()
        .map_err(grant_error)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n");
    Err(StepError::failed(format!(
        "buildah failed in {what} ({}):\n{tail}{}",
        out.status,
        if is_sandbox_refusal(&stderr) {
            SANDBOX_HINT
        } else {
            ""
        }
    )))
}

/// What to do when buildah cannot set itself up in the process sandbox.
const SANDBOX_HINT: &str = "\nbuildah could not make its user namespace or its mounts: arkline's process sandbox runs a program as an unprivileged uid with no capabilities, `setgroups` denied and a Landlock domain (which refuses every mount(2) and pivot_root(2)). buildah must be root in a user namespace of its own and mount, even for a build of COPY instructions only. Grant the engine's `image` biz the sandbox's builder mode for buildah, `process-builder=buildah` (beside `process=buildah`; the host must run as root), or run `image/build` on a runtime whose process sandbox is off, or use `image/publish`, which needs no program.";

/// Whether buildah's error is the sandbox refusing its user namespace or
/// mounts.
fn is_sandbox_refusal(stderr: &str) -> bool {
    ["/setgroups", "/uid_map", "/gid_map"]
        .iter()
        .any(|p| stderr.contains(p))
        || (stderr.contains("operation not permitted")
            && ["mount", "pivot_root", "unshare"]
                .iter()
                .any(|w| stderr.contains(w)))
}

/// A refused or failed `process` call, with what to do.
fn grant_error(e: HostError) -> StepError {
    match e {
        HostError::Denied(why) => StepError::failed(format!(
            "image/build runs `buildah` through the `process` capability, which the engine has not granted to the `image` biz ({why}); grant it `process=buildah` (e.g. `--grant process=buildah`) on a host with buildah installed"
        )),
        HostError::Failed(why) if why.contains(BUILDAH) => StepError::failed(format!(
            "cannot run buildah: {why}; install buildah on the host (Debian: apt-get install buildah) and install the biz again"
        )),
        other => StepError::failed(format!("cannot run buildah: {other}")),
    }
}

fn registry_error(e: RegistryError) -> StepError {
    StepError::failed(e.to_string())
}

/// The manifest of the `build` image in the OCI layout at `layout`.
fn layout_manifest(layout: &str) -> Result<Descriptor, StepError> {
    let path = format!("{layout}/index.json");
    let index: Value = fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| StepError::failed(format!("cannot read buildah's {path}: {e}")))?;
    let entries = index
        .get("manifests")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let entry = entries
        .iter()
        .find(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name") == Some(&"build".into())
        })
        .or_else(|| entries.first())
        .ok_or_else(|| StepError::failed(format!("buildah's {path} lists no manifest")))?;
    Descriptor::from_json(entry).map_err(|e| StepError::failed(format!("buildah's {path}: {e}")))
}

/// The path of a blob in the layout.
fn blob_path(layout: &str, digest: &str) -> Result<String, StepError> {
    let (algorithm, hex) = digest
        .split_once(':')
        .filter(|(a, h)| *a == "sha256" && !h.contains('/'))
        .ok_or_else(|| StepError::failed(format!("unexpected digest `{digest}` in {layout}")))?;
    Ok(format!("{layout}/blobs/{algorithm}/{hex}"))
}

/// A small blob's bytes, size and digest checked.
fn read_blob(layout: &str, blob: &Descriptor, max: u64) -> Result<Vec<u8>, StepError> {
    if blob.size > max {
        return Err(StepError::failed(format!(
            "{} in {layout} is {} bytes, over {max}",
            blob.digest, blob.size
        )));
    }
    let path = blob_path(layout, &blob.digest)?;
    let bytes =
        fs::read(&path).map_err(|e| StepError::failed(format!("cannot read {path}: {e}")))?;
    let digest = crate::layer::sha256(&bytes);
    if digest != blob.digest || bytes.len() as u64 != blob.size {
        return Err(StepError::failed(format!(
            "{path} is {} bytes with digest {digest}, not the {} bytes of {} its descriptor says",
            bytes.len(),
            blob.size,
            blob.digest
        )));
    }
    Ok(bytes)
}

/// Uploads a blob of the layout: whole when it fits a chunk, else in
/// chunks; its digest is checked before the upload is finished.
fn upload_blob(
    registry: &Registry,
    repo: &str,
    layout: &str,
    blob: &Descriptor,
    chunk: u64,
) -> Result<(), StepError> {
    if blob.size <= chunk {
        let bytes = read_blob(layout, blob, chunk)?;
        return registry
            .upload(repo, &blob.digest, &bytes)
            .map_err(registry_error);
    }
    let path = blob_path(layout, &blob.digest)?;
    let file =
        fs::File::open(&path).map_err(|e| StepError::failed(format!("cannot open {path}: {e}")))?;
    let mut upload = registry
        .chunked(repo, &blob.digest)
        .map_err(registry_error)?;
    let mut hashing = Hashing::new(std::io::sink());
    let mut reader = file.take(blob.size + 1);
    let mut buffer = vec![0; usize::try_from(chunk).unwrap_or(8 << 20)];
    loop {
        let mut filled = 0;
        while filled < buffer.len() {
            let n = reader
                .read(&mut buffer[filled..])
                .map_err(|e| StepError::failed(format!("cannot read {path}: {e}")))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        std::io::Write::write_all(&mut hashing, &buffer[..filled])
            .map_err(|e| StepError::failed(e.to_string()))?;
        upload.patch(&buffer[..filled]).map_err(registry_error)?;
    }
    if hashing.count != blob.size || hashing.digest() != blob.digest {
        return Err(StepError::failed(format!(
            "{path} is {} bytes with digest {}, not the {} bytes of {} its descriptor says; nothing was pushed",
            hashing.count,
            hashing.digest(),
            blob.size,
            blob.digest
        )));
    }
    upload.finish(&blob.digest).map_err(registry_error)
}

/// The registries (`host[:port]`) the `FROM` lines of `dockerfile` name:
/// the first component of an image reference when it looks like a host (a
/// `.` or `:`, or `localhost`). Stages (`FROM build`), `scratch` and
/// transports (`oci:…`) name none.
fn base_registries(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let Some(image) = words.find(|w| !w.starts_with("--")) else {
            continue;
        };
        let Some((first, _)) = image.split_once('/') else {
            continue;
        };
        if first.contains('.') || first.contains(':') || first == "localhost" {
            out.push(first.to_owned());
        }
    }
    out
}

/// A `registries.conf` (v2) marking `hosts` insecure: plain HTTP.
fn registries_conf(hosts: &[String]) -> String {
    let mut out = String::from("unqualified-search-registries = []\n");
    for host in hosts {
        let host: String = host.chars().filter(|c| !matches!(c, '"' | '\\')).collect();
        out.push_str(&format!(
            "\n[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
        ));
    }
    out
}

/// The containers auth file (`auth.json`) of the bases' credentials, or
/// `None` without any. A token cannot be given: buildah sends it only as a
/// password.
fn auth_file(
    credentials: &BTreeMap<String, CredentialConfig>,
) -> Result<Option<String>, StepError> {
    use base64::Engine as _;
    if credentials.is_empty() {
        return Ok(None);
    }
    let mut auths = serde_json::Map::new();
    for (host, credential) in credentials {
        if host.is_empty() || host.contains('/') {
            return Err(StepError::invalid_config(
                "base_credentials",
                format!("`{host}` is not a registry: write `host[:port]`"),
            ));
        }
        let (Some(user), Some(password)) = (&credential.username, &credential.password) else {
            return Err(StepError::invalid_config(
                "base_credentials",
                format!(
                    "the credential of `{host}` needs `username` and `password` (buildah takes no bearer token for a base)"
                ),
            ));
        };
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        auths.insert(host.clone(), serde_json::json!({ "auth": auth }));
    }
    Ok(Some(serde_json::json!({ "auths": auths }).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_refusals_are_recognised() {
        assert!(is_sandbox_refusal(
            "level=error msg=\"opening /proc/10/setgroups: permission denied\""
        ));
        assert!(is_sandbox_refusal(
            "error writing \"allow\" to setgroups: write /proc/10/setgroups: operation not permitted"
        ));
        assert!(is_sandbox_refusal("pivot_root /x: operation not permitted"));
        assert!(!is_sandbox_refusal(
            "error building at STEP \"COPY a /a\": no such file or directory"
        ));
    }

    #[test]
    fn build_ids_are_the_steps_attempt_and_differ_by_suffix() {
        let a = BuildId::new("Build image (api)", 2, 0xab);
        assert_eq!(a.to_string(), "build-image-api-2-00000000000000ab");
        assert_eq!(
            a.dir(),
            ".arkline/buildah/builds/build-image-api-2-00000000000000ab"
        );
        assert_ne!(a, BuildId::new("Build image (api)", 2, 0xac));
        assert_ne!(a, BuildId::new("build-image-web", 2, 0xab));
        assert_eq!(
            BuildId::new("../..", 1, 1).to_string(),
            "step-1-0000000000000001"
        );
        assert_ne!(BuildId::random_suffix(), BuildId::random_suffix());
    }

    #[test]
    fn the_ignore_file_keeps_the_contexts_lines_and_adds_arkline_last() {
        let dir = std::env::temp_dir().join(format!("image-ignore-{}", BuildId::random_suffix()));
        fs::create_dir_all(&dir).expect("mkdir");
        let context = dir.to_string_lossy().into_owned();
        assert_eq!(ignore_lines(&context).ok().as_deref(), Some(".arkline\n"));
        fs::write(dir.join(".dockerignore"), "target\n!.arkline").expect("write");
        assert_eq!(
            ignore_lines(&context).ok().as_deref(),
            Some("target\n!.arkline\n.arkline\n")
        );
        // buildah reads `.containerignore` before `.dockerignore`.
        fs::write(dir.join(".containerignore"), "*.log\n").expect("write");
        assert_eq!(
            ignore_lines(&context).ok().as_deref(),
            Some("*.log\n.arkline\n")
        );
        fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn blob_paths_stay_in_the_layout() {
        assert_eq!(
            blob_path("/workspace/o", "sha256:ab").ok().as_deref(),
            Some("/workspace/o/blobs/sha256/ab")
        );
        assert!(blob_path("/workspace/o", "sha256:../../x").is_err());
        assert!(blob_path("/workspace/o", "md5:ab").is_err());
    }

    #[test]
    fn bases_on_registries_are_found_and_written_for_buildah() {
        let dockerfile = "FROM --platform=linux/amd64 127.0.0.1:5000/team/base:v1 AS build\n\
                          RUN make\n\
                          from registry.example.com/lib/run@sha256:00\n\
                          FROM build\nFROM scratch\nFROM oci:base:v1\nFROM localhost/x\n";
        assert_eq!(
            base_registries(dockerfile),
            ["127.0.0.1:5000", "registry.example.com", "localhost"]
        );
        let conf = registries_conf(&["127.0.0.1:5000".into()]);
        assert!(
            conf.contains("location = \"127.0.0.1:5000\"\ninsecure = true"),
            "{conf}"
        );
        let creds: BTreeMap<String, CredentialConfig> = serde_json::from_value(serde_json::json!({
            "127.0.0.1:5000": { "username": "u", "password": "p" }
        }))
        .expect("credentials");
        let json = auth_file(&creds).expect("written").expect("some");
        assert_eq!(json, r#"{"auths":{"127.0.0.1:5000":{"auth":"dTpw"}}}"#);
        let token: BTreeMap<String, CredentialConfig> =
            serde_json::from_value(serde_json::json!({ "r.example": { "token": "t" } }))
                .expect("credentials");
        assert!(auth_file(&token).is_err());
    }
}
