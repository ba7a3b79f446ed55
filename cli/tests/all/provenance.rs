//! `arkline ctl verify-provenance` against a real `docker-registry`
//! (distribution 2.8, which has no referrers API, so the `sha256-<hex>` tag
//! schema is what is found): an image and its signed DSSE referrer pushed as
//! a pipeline pushes them, then the real binary checks them — verified,
//! another key, an altered statement, a statement about another image, no
//! attestation at all, a missing image; and the same behind htpasswd basic
//! auth and behind a token service.

use arkline::ark::SecretKey;
use arkline::provenance::{self, Envelope, Facts, Signer, SourceFacts, StepFacts, Subject};
use arkline_testkit::registry::{Registry, TokenService};
use assert_cmd::Command;
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

const EMPTY: &[u8] = b"{}";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(bytes), "size": bytes.len()})
}

/// Pushes to one registry as a client would (monolithic blob uploads,
/// manifests by reference).
struct Pusher {
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

#[derive(Clone)]
enum Auth {
    None,
    Basic(String, String),
    Bearer(String),
}

impl Pusher {
    fn new(registry: &Registry, auth: Auth) -> Pusher {
        Pusher {
            http: reqwest::Client::new(),
            base: format!("http://{}", registry.host()),
            auth,
        }
    }

    fn with_auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Auth::None => req,
            Auth::Basic(user, password) => req.basic_auth(user, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        }
    }

    async fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = digest(bytes);
        let started = self
            .with_auth(
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.base)),
            )
            .send()
            .await
            .expect("the registry answers");
        assert_eq!(started.status(), 202, "start an upload to {repo}");
        let location = started.headers()["location"]
            .to_str()
            .expect("a location")
            .to_owned();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .with_auth(
                self.http
                    .put(format!("{location}{sep}digest={digest}"))
                    .header("content-type", "application/octet-stream")
                    .body(bytes.to_vec()),
            )
            .send()
            .await
            .expect("the registry answers");
        assert_eq!(put.status(), 201, "upload {digest} to {repo}");
        digest
    }

    async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &Value,
    ) -> String {
        let bytes = serde_json::to_vec(body).expect("json");
        let put = self
            .with_auth(
                self.http
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
                    .header("content-type", media_type)
                    .body(bytes.clone()),
            )
            .send()
            .await
            .expect("the registry answers");
        let status = put.status();
        assert_eq!(
            status,
            201,
            "put manifest {reference} in {repo}: {}",
            put.text().await.unwrap_or_default()
        );
        digest(&bytes)
    }

    /// Pushes a one-layer image as `repo:latest` and returns its manifest's
    /// digest and size.
    async fn image(&self, repo: &str) -> (String, usize) {
        let config = json!({"architecture": "wasm", "os": "wasip2", "rootfs": {"type": "layers", "diff_ids": []}});
        let config = serde_json::to_vec(&config).expect("json");
        let layer = format!("the app of {repo}").into_bytes();
        self.blob(repo, &config).await;
        self.blob(repo, &layer).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
        });
        let size = serde_json::to_vec(&manifest).expect("json").len();
        (
            self.manifest(repo, "latest", MANIFEST, &manifest).await,
            size,
        )
    }

    /// Pushes `envelope` as a referrer of `subject` (a manifest of
    /// `subject_size` bytes), by digest, and the referrers tag index listing
    /// it.
    async fn attest(&self, repo: &str, subject: &str, subject_size: usize, envelope: &Envelope) {
        let envelope = serde_json::to_vec(envelope).expect("json");
        self.blob(repo, EMPTY).await;
        self.blob(repo, &envelope).await;
        let referrer = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "artifactType": provenance::ARTIFACT_TYPE,
            "config": descriptor(EMPTY_TYPE, EMPTY),
            "layers": [descriptor(provenance::ARTIFACT_TYPE, &envelope)],
            "subject": {"mediaType": MANIFEST, "digest": subject, "size": subject_size},
            "annotations": {"in-toto.io/predicate-type": provenance::PREDICATE_TYPE},
        });
        let size = serde_json::to_vec(&referrer).expect("json").len();
        let referrer_digest = self
            .manifest(
                repo,
                &digest(&serde_json::to_vec(&referrer).expect("json")),
                MANIFEST,
                &referrer,
            )
            .await;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": [{
                "mediaType": MANIFEST,
                "digest": referrer_digest,
                "size": size,
                "artifactType": provenance::ARTIFACT_TYPE,
                "annotations": {"in-toto.io/predicate-type": provenance::PREDICATE_TYPE},
            }],
        });
        self.manifest(repo, &subject.replacen(':', "-", 1), INDEX, &index)
            .await;
    }
}

fn facts() -> Facts {
    Facts {
        engine: "team-a".into(),
        pipeline: "release".into(),
        execution: "release-7".into(),
        run: 7,
        step: "publish".into(),
        params: json!({"version": "1.2.0"}),
        event: Some("push".into()),
        source: Some(SourceFacts {
            repository: "https://git.example.com/team/app".into(),
            commit: COMMIT.into(),
            branch: Some("main".into()),
        }),
        steps: vec![StepFacts {
            name: "publish".into(),
            biz: "image@0.3.1".into(),
            sha256: "cd".repeat(32),
        }],
        started: None,
    }
}

fn subject(name: String, digest: &str) -> Subject {
    Subject {
        name,
        digest: [(
            "sha256".to_owned(),
            digest.trim_start_matches("sha256:").to_owned(),
        )]
        .into(),
    }
}

fn verify(image: &str, key: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arkline"));
    cmd.args([
        "ctl",
        "verify-provenance",
        image,
        "--key",
        key,
        "--plain-http",
    ])
    // No arkline server is involved, not even a valid URL of one.
    .env("ARKLINE_SERVER", "not a server")
    .env_remove("ARKLINE_REGISTRY_USERNAME")
    .env_remove("ARKLINE_REGISTRY_PASSWORD")
    .env_remove("RUST_BACKTRACE");
    cmd
}

fn outcome(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("arkline runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn verifies_a_signed_referrer_and_refuses_what_does_not_verify() {
    let registry = Registry::start();
    let host = registry.host();
    let pusher = Pusher::new(&registry, Auth::None);
    let key = SecretKey::generate().expect("a key");
    let public = key.public_key();
    let signer = Signer::new(key, facts());
    let rt = runtime();

    // A good attestation.
    let (app, app_size) = rt.block_on(pusher.image("team/app"));
    let good = signer.sign(&provenance::statement(
        &[subject(format!("{host}/team/app"), &app)],
        &facts(),
    ));
    rt.block_on(pusher.attest("team/app", &app, app_size, &good));

    let (code, stdout, stderr) = outcome(&mut verify(
        &format!("{host}/team/app"),
        &public.to_string(),
    ));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    for want in [
        "release",
        "release-7",
        "team-a",
        COMMIT,
        "main",
        &"cd".repeat(32),
        &app,
        &public.id(),
        &format!("{host}/team/app@{app}"),
    ] {
        assert!(stdout.contains(want), "{want} in {stdout}");
    }

    // By digest, with --json, and the key in a file as `cargo ark keygen` writes it.
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("engine.pub");
    std::fs::write(&key_file, format!("{public}\n")).expect("writes");
    let (code, stdout, stderr) = outcome(
        verify(
            &format!("{host}/team/app@{app}"),
            key_file.to_str().expect("utf-8"),
        )
        .arg("--json"),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let statements: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(
        statements[0]["subject"][0]["digest"]["sha256"],
        app.trim_start_matches("sha256:")
    );
    assert_eq!(
        statements[0]["predicate"]["buildDefinition"]["externalParameters"]["pipeline"],
        "release"
    );

    // Another key.
    let other = SecretKey::generate().expect("a key").public_key();
    let (code, _, stderr) = outcome(&mut verify(&format!("{host}/team/app"), &other.to_string()));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("does not verify with key {}", other.id())),
        "{stderr}"
    );

    // An altered statement under the old signature, the only referrer of its image.
    let (tampered_app, tampered_size) = rt.block_on(pusher.image("team/tampered"));
    let mut statement = provenance::statement(
        &[subject(format!("{host}/team/tampered"), &tampered_app)],
        &facts(),
    );
    let signed = signer.sign(&statement);
    statement["predicate"]["buildDefinition"]["externalParameters"]["pipeline"] = json!("evil");
    let tampered = Envelope {
        payload: base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&statement).expect("json")),
        ..signed
    };
    rt.block_on(pusher.attest("team/tampered", &tampered_app, tampered_size, &tampered));
    let (code, stdout, stderr) = outcome(&mut verify(
        &format!("{host}/team/tampered"),
        &public.to_string(),
    ));
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the statement was altered, or signed by another key"),
        "{stderr}"
    );
    assert!(!stdout.contains("evil"), "{stdout}");

    // A good signature of a statement about another image (the app's).
    let (copied_app, copied_size) = rt.block_on(pusher.image("team/copied"));
    rt.block_on(pusher.attest("team/copied", &copied_app, copied_size, &good));
    let (code, _, stderr) = outcome(&mut verify(
        &format!("{host}/team/copied"),
        &public.to_string(),
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{host}/team/app@{app}, not {copied_app}")),
        "{stderr}"
    );

    // No attestation at all.
    let (bare, _) = rt.block_on(pusher.image("team/bare"));
    let (code, _, stderr) = outcome(&mut verify(
        &format!("{host}/team/bare"),
        &public.to_string(),
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no provenance referrer of {bare} in {host}/team/bare: was it published by a pipeline whose engine has `provenance` set?"
        )),
        "{stderr}"
    );

    // No such image: the registry's error, named.
    let (code, _, stderr) = outcome(&mut verify(
        &format!("{host}/team/app:nope"),
        &public.to_string(),
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("registry {host}, repository team/app"))
            && stderr.contains("HTTP 404")
            && stderr.contains("MANIFEST_UNKNOWN"),
        "{stderr}"
    );
}

#[test]
fn verifies_behind_basic_auth_and_a_token_service() {
    let key = SecretKey::generate().expect("a key");
    let public = key.public_key().to_string();
    let signer = Signer::new(key, facts());
    let rt = runtime();
    let publish = |registry: &Registry, auth: Auth| {
        let pusher = Pusher::new(registry, auth);
        let (image, size) = rt.block_on(pusher.image("team/app"));
        let envelope = signer.sign(&provenance::statement(
            &[subject(format!("{}/team/app", registry.host()), &image)],
            &facts(),
        ));
        rt.block_on(pusher.attest("team/app", &image, size, &envelope));
    };

    // htpasswd.
    let registry = Registry::builder().basic_auth("ci", "s3cret").start();
    publish(&registry, Auth::Basic("ci".into(), "s3cret".into()));
    let image = format!("{}/team/app", registry.host());
    let (code, _, stderr) = outcome(&mut verify(&image, &public));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("HTTP 401") && stderr.contains("--username"),
        "{stderr}"
    );
    let (code, stdout, stderr) = outcome(
        verify(&image, &public)
            .args(["--username", "ci", "--password-stdin"])
            .write_stdin("s3cret\n"),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(COMMIT), "{stdout}");

    // A token service (credentials from the environment).
    let tokens = TokenService::start("ci", "t0ken-pass");
    let registry = Registry::builder().token_auth(&tokens).start();
    let token = rt.block_on(async {
        let body: Value = reqwest::Client::new()
            .get(format!(
                "{}?service=arkline-test-registry&scope=repository:team/app:pull,push",
                tokens.realm()
            ))
            .basic_auth("ci", Some("t0ken-pass"))
            .send()
            .await
            .expect("the token service answers")
            .json()
            .await
            .expect("JSON");
        body["token"].as_str().expect("a token").to_owned()
    });
    publish(&registry, Auth::Bearer(token));
    let (code, stdout, stderr) = outcome(
        verify(&format!("{}/team/app", registry.host()), &public)
            .env("ARKLINE_REGISTRY_USERNAME", "ci")
            .env("ARKLINE_REGISTRY_PASSWORD", "t0ken-pass"),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("release-7"), "{stdout}");
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.username.as_deref() == Some("ci")
                && r.scopes.iter().any(|s| s == "repository:team/app:pull")),
        "{:?}",
        tokens.requests()
    );
}

/// The whole path an operator takes: an engine whose `provenance.key_secret`
/// names a secret set with a `cargo ark keygen` seed; a pipeline that
/// publishes an image with the real `image` biz to a real registry; `ctl
/// engine provenance-key` (over the admin API) gives the public key, and
/// `ctl verify-provenance` checks the image's attestation with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelines_image_verifies_with_the_key_its_server_gives() {
    use arkline::ark::Ark;
    use arkline::model::{ExecutionPhase, PipelineSettingSpec, ProvenanceSettings};
    use arkline::{Container, TriggerRequest};
    use arkline_cli::serve::{AppState, router};

    let registry = Registry::start();
    let data = tempfile::tempdir().expect("tempdir");
    let container = Container::builder()
        .data_dir(data.path())
        .build()
        .expect("container builds");
    let engine = container.engine("rel").await.expect("engine starts");
    let image = Ark::open(arkline_testkit::plugin("image")).expect("image archive");
    let grants = arkline::host::parse_grants(&["http=127.0.0.1", "host-call=arkline.provenance"])
        .expect("grants parse");
    let info = engine.install(image, &grants).await.expect("installs");
    assert_eq!(grants.host_call, [provenance::HOST_CALL]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds loopback");
    let server = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router(
        AppState::new(container.clone()).with_auth(arkline_cli::serve::auth::Auth::Disabled),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let ctl = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_arkline"));
        cmd.args(["ctl", "--server", &server, "--engine", "rel"])
            .args(args)
            .env_remove("ARKLINE_TOKEN")
            .env_remove("RUST_BACKTRACE");
        cmd
    };
    let blocking = |mut cmd: Command| tokio::task::spawn_blocking(move || outcome(&mut cmd));

    // Before the setting: the engine signs nothing, and says how to start.
    let (code, _, stderr) = blocking(ctl(&["engine", "provenance-key"]))
        .await
        .expect("runs");
    assert_ne!(code, Some(0));
    assert!(stderr.contains("signs no provenance"), "{stderr}");

    let key = SecretKey::generate().expect("a key");
    engine
        .set_secret("provenance-key", &key.to_hex())
        .await
        .expect("secret");
    engine
        .apply_settings(PipelineSettingSpec {
            provenance: Some(ProvenanceSettings {
                key_secret: "provenance-key".into(),
            }),
            ..PipelineSettingSpec::default()
        })
        .await
        .expect("settings apply");
    let (code, stdout, stderr) = blocking(ctl(&["engine", "provenance-key"]))
        .await
        .expect("runs");
    assert_eq!(code, Some(0), "{stderr}");
    let public = stdout.trim().to_owned();
    assert_eq!(public, key.public_key().to_string());

    let host = registry.host();
    let yaml = format!(
        r#"
name: release
stages:
  - name: publish
    steps:
      - name: image
        uses: image/publish
        with:
          base: scratch
          labels: {{ org.example.release: "1" }}
          target: "{host}/team/app"
          tags: [v1]
          provenance: required
"#
    );
    let pipeline = engine
        .apply_pipeline_yaml("release.yaml", &yaml)
        .await
        .unwrap_or_else(|e| panic!("pipeline applies: {e}"));
    let exec = engine
        .trigger(&pipeline.metadata.name, TriggerRequest::manual())
        .await
        .expect("trigger");
    let exec = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        engine.wait(&exec.metadata.name),
    )
    .await
    .expect("finishes in time")
    .expect("wait");
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );

    let (code, stdout, stderr) = blocking(verify(&format!("{host}/team/app:v1"), &public))
        .await
        .expect("runs");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("release"), "{stdout}");
    assert!(stdout.contains(&info.sha256), "the biz digest: {stdout}");
    assert!(stdout.contains(&exec.metadata.name), "{stdout}");
    // Another engine's key does not verify it.
    let other = SecretKey::generate()
        .expect("a key")
        .public_key()
        .to_string();
    let (code, _, stderr) = blocking(verify(&format!("{host}/team/app:v1"), &other))
        .await
        .expect("runs");
    assert_eq!(code, Some(1), "{stderr}");
}
