//! `cargo ark keygen`, `cargo ark sign` and `cargo ark verify`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use arkline::ark::{Ark, PublicKey, SecretKey, SignaturePolicy, SignatureStatus};
use arkline::container::archive::ContainerArchive;
use arkline::container::archive::biz_path;
use clap::Args;

use crate::cmd::print_json;
use crate::shell::Shell;

/// Create an ed25519 key pair for signing archives: `NAME.key` (secret, mode 0600)
/// and `NAME.pub`.
#[derive(Debug, Clone, Args)]
pub struct KeygenCmd {
    /// Path of the key pair without extension; writes `<PATH>.key` and `<PATH>.pub`.
    #[arg(default_value = "ark-signing")]
    pub path: PathBuf,
}

impl KeygenCmd {
    /// Writes the key pair, refusing to overwrite an existing one.
    pub fn exec(&self, shell: &Shell) -> anyhow::Result<()> {
        let with_suffix = |suffix: &str| {
            let mut path = self.path.clone().into_os_string();
            path.push(suffix);
            PathBuf::from(path)
        };
        let secret_path = with_suffix(".key");
        let public_path = with_suffix(".pub");
        for p in [&secret_path, &public_path] {
            if p.exists() {
                bail!("{} already exists; choose another path", p.display());
            }
        }
        let key = SecretKey::generate()?;
        write_secret(&secret_path, &format!("{}\n", key.to_hex()))?;
        std::fs::write(&public_path, format!("{}\n", key.public_key()))
            .with_context(|| format!("cannot write {}", public_path.display()))?;
        shell.status(
            "Created",
            format!(
                "key {} ({} and {})",
                key.public_key().id(),
                secret_path.display(),
                public_path.display()
            ),
        );
        Ok(())
    }
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Sign an .ark: add `ark.sig`, an ed25519 signature over `ark.toml`.
#[derive(Debug, Clone, Args)]
pub struct SignCmd {
    /// The archive, rewritten in place.
    pub file: PathBuf,
    /// The secret key file (from `cargo ark keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

impl SignCmd {
    /// Verifies the archive, then rewrites it with the signature.
    pub fn exec(&self, shell: &Shell) -> anyhow::Result<()> {
        if super::container::is_container(&self.file) {
            bail!(
                "{} is a container; a signature covers one biz, so sign each .ark before `cargo ark container` bundles it",
                self.file.display()
            );
        }
        let key: SecretKey = std::fs::read_to_string(&self.key)
            .with_context(|| format!("cannot read {}", self.key.display()))?
            .parse()
            .with_context(|| format!("{} is not a secret key", self.key.display()))?;
        let ark = Ark::open(&self.file)
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        let bytes = ark.signed(&key)?;
        let tmp = self.file.with_extension("ark.tmp");
        std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.file)
            .with_context(|| format!("cannot write {}", self.file.display()))?;
        shell.status(
            "Signed",
            format!("{} with key {}", self.file.display(), key.public_key().id()),
        );
        Ok(())
    }
}

/// Verify an .ark: every check of the reader, the signature, and the component
/// (a component exporting a supported step world whose step types match ark.toml).
/// An .arkc: every check of its reader (each engine's signature policy, pipelines
/// against their engine's bizes), and the checks of an .ark for each nested biz.
/// Prints one line per problem; exits 1 when there is any.
#[derive(Debug, Clone, Args)]
pub struct VerifyCmd {
    /// The archive.
    pub file: PathBuf,
    /// A trusted public key file (repeatable). With keys given, the archive (for an
    /// .arkc, every biz in it) must be signed by one of them.
    #[arg(long = "key", value_name = "PUB")]
    pub keys: Vec<PathBuf>,
    /// Refuse unsigned archives even when no key is given.
    #[arg(long)]
    pub require_signature: bool,
    /// Print one JSON object on stdout instead of the problem lines: `archive`,
    /// `kind`, `size`, `sha256`, `verified`, `problems`, and the signature
    /// (`status`, `key`) of the .ark or of each biz of the .arkc. Exits 1 when
    /// verification fails, as without it.
    #[arg(long)]
    pub json: bool,
}

/// What one verification found: the problems, and the JSON fields describing
/// the archive (name, signatures, …) for `--json`.
struct Verification {
    problems: Vec<String>,
    fields: serde_json::Map<String, serde_json::Value>,
}

impl VerifyCmd {
    /// Runs every check.
    pub fn exec(&self, shell: &Shell) -> anyhow::Result<()> {
        let mut trusted = Vec::new();
        for path in &self.keys {
            let key: PublicKey = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .parse()
                .with_context(|| format!("{} is not a public key", path.display()))?;
            trusted.push(key);
        }
        let policy = SignaturePolicy {
            require_signature: self.require_signature || !trusted.is_empty(),
            trusted,
        };
        let container = super::container::is_container(&self.file);
        let Verification { problems, fields } = if container {
            verify_container(&self.file, &policy, shell)
        } else {
            verify(&self.file, &policy, shell)
        };
        if self.json {
            // Digest and size of the file as it is, even when it does not read.
            let bytes = std::fs::read(&self.file).ok();
            let mut value = serde_json::json!({
                "archive": self.file,
                "kind": if container { "arkc" } else { "ark" },
                "size": bytes.as_ref().map(Vec::len),
                "sha256": bytes.as_deref().map(arkline::ark::sha256_hex),
                "verified": problems.is_empty(),
                "problems": problems,
            });
            if let Some(object) = value.as_object_mut() {
                object.extend(fields);
            }
            print_json(&value)?;
        }
        if problems.is_empty() {
            return Ok(());
        }
        if !self.json {
            let mut out = std::io::stdout().lock();
            for p in &problems {
                writeln!(out, "{}: {p}", self.file.display())?;
            }
        }
        bail!(
            "{} failed verification ({} problem{})",
            self.file.display(),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" }
        )
    }
}

/// `{"status": "unsigned" | "trusted" | "unverified" | "invalid", "key": hex or
/// null, "key_id": the short id or null, "message": what a person is told}`.
fn signature_json<E: std::fmt::Display>(result: &Result<SignatureStatus, E>) -> serde_json::Value {
    let (status, key) = match result {
        Ok(SignatureStatus::Unsigned) => ("unsigned", None),
        Ok(SignatureStatus::Trusted(key)) => ("trusted", Some(key)),
        Ok(SignatureStatus::Unverified(key)) => ("unverified", Some(key)),
        Err(_) => ("invalid", None),
    };
    let message = match result {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    };
    serde_json::json!({
        "status": status,
        "key": key.map(ToString::to_string),
        "key_id": key.map(PublicKey::id),
        "message": message,
    })
}

fn verify(file: &Path, policy: &SignaturePolicy, shell: &Shell) -> Verification {
    let mut fields = serde_json::Map::new();
    let ark = match Ark::open(file) {
        Ok(ark) => ark,
        Err(e) => {
            return Verification {
                problems: vec![e.to_string()],
                fields,
            };
        }
    };
    fields.insert("name".into(), ark.manifest.name.clone().into());
    fields.insert("version".into(), ark.manifest.version.to_string().into());
    let mut problems = Vec::new();
    let signature = ark.verify_signature(policy);
    fields.insert("signature".into(), signature_json(&signature));
    match signature {
        Ok(status) => shell.status("Signature", status.to_string()),
        Err(e) => problems.push(e.to_string()),
    }
    problems.extend(verify_component(&ark));
    if problems.is_empty() {
        shell.status(
            "Verified",
            format!(
                "{} {} ({})",
                ark.manifest.name,
                ark.manifest.version,
                file.display()
            ),
        );
    }
    Verification { problems, fields }
}

/// An `.arkc`: every check of the reader (which applies each engine's signature
/// policy), then, for each nested biz, the policy given on the command line and
/// the component checks of a single `.ark`.
fn verify_container(file: &Path, policy: &SignaturePolicy, shell: &Shell) -> Verification {
    let mut fields = serde_json::Map::new();
    let arkc = match ContainerArchive::open(file) {
        Ok(arkc) => arkc,
        Err(e) => {
            return Verification {
                problems: vec![e.to_string()],
                fields,
            };
        }
    };
    fields.insert("name".into(), arkc.manifest.name.clone().into());
    fields.insert("version".into(), arkc.manifest.version.to_string().into());
    let mut engines = Vec::new();
    for engine in &arkc.manifest.engines {
        let mut bizes = Vec::new();
        for biz in arkc.engine_bizes(&engine.name) {
            shell.status(
                "Signature",
                format!(
                    "engine {}: {} v{} {}",
                    engine.name, biz.name, biz.version, biz.signature
                ),
            );
            bizes.push(serde_json::json!({
                "name": biz.name,
                "version": biz.version.to_string(),
                "signature": signature_json::<String>(&Ok(biz.signature.clone())),
            }));
        }
        engines.push(serde_json::json!({ "name": engine.name, "bizes": bizes }));
    }
    fields.insert("engines".into(), engines.into());
    let cli_policy = policy.require_signature || !policy.trusted.is_empty();
    let mut problems = Vec::new();
    for ((name, version), ark) in &arkc.bizes {
        let entry = biz_path(name, version);
        if cli_policy && let Err(e) = ark.verify_signature(policy) {
            problems.push(format!("{entry}: {e}"));
        }
        problems.extend(
            verify_component(ark)
                .into_iter()
                .map(|p| format!("{entry}: {p}")),
        );
    }
    if problems.is_empty() {
        let m = &arkc.manifest;
        shell.status(
            "Verified",
            format!(
                "container {} {} ({} engine{}, {} biz{}, {} pipeline{}; {})",
                m.name,
                m.version,
                m.engines.len(),
                plural(m.engines.len(), "s"),
                arkc.bizes.len(),
                plural(arkc.bizes.len(), "es"),
                arkc.pipelines.len(),
                plural(arkc.pipelines.len(), "s"),
                file.display()
            ),
        );
    }
    Verification { problems, fields }
}

fn plural(n: usize, suffix: &str) -> &str {
    if n == 1 { "" } else { suffix }
}

/// The component exports a supported step world whose step types and schemas are
/// what `ark.toml` says.
fn verify_component(ark: &Ark) -> Vec<String> {
    let mut problems = Vec::new();
    match arkline::runtime::inspect_component(&ark.component) {
        Ok(info) => {
            let described: Vec<&str> = info.steps.iter().map(|s| s.id.as_str()).collect();
            let listed: Vec<&str> = ark.manifest.steps.iter().map(|s| s.id.as_str()).collect();
            if described != listed {
                problems.push(format!(
                    "ark.toml lists step types [{}] but the component describes [{}]",
                    listed.join(", "),
                    described.join(", ")
                ));
            }
            for step in &info.steps {
                // A component built without its schemas (the SDK's default):
                // the archive's schema file is the only copy.
                if step.config_schema.is_null() {
                    if ark.step_schema(&step.id).is_none() {
                        problems.push(format!(
                            "step type `{}` has no schema file, and the component does not carry one",
                            step.id
                        ));
                    }
                } else if ark.step_schema(&step.id).as_ref() != Some(&step.config_schema) {
                    problems.push(format!(
                        "the schema file of step type `{}` differs from what the component describes",
                        step.id
                    ));
                }
            }
            if !ark.manifest.host_api.matches(&info.api_version) {
                problems.push(format!(
                    "ark.toml requires arkline:step {} but the component targets {}",
                    ark.manifest.host_api, info.api_version
                ));
            }
        }
        Err(e) => problems.push(format!("component: {e}")),
    }
    problems
}
