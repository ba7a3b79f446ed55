//! The `deploy` biz: `publish-template` against a real registry on loopback
//! (`docker-registry`, looked at with `skopeo`), and `apply` of the published
//! template with a stand-in `kubectl`.
//!
//! No cluster is available here. The stand-in is a shell script named
//! `kubectl` that records each call's arguments, its `KUBECTL_APPLYSET`
//! variable and the manifests given on stdin (each call's after a `# call`
//! line) in its working directory (the step's workspace), answers `rollout
//! status` as a successful rollout, and never answers it for a workload named
//! `stuck` (it sleeps past the rollout timeout). The process capability
//! resolves a granted program name on the engine's `PATH` when the biz is
//! installed; so that no test changes this process's environment, a test that
//! needs the stand-in runs itself again as a child process of this binary
//! whose `PATH` starts with the stand-in's directory.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use arkline_testkit::registry::{Registry, skopeo};
use arkline_testkit::{Capabilities, Harness, StepCall, StepFailure, StepReport};
use serde_json::{Value, json};

/// Set in the child process a stand-in test runs in.
const CHILD: &str = "ARKLINE_TEST_DEPLOY_STAND_IN";

const STAND_IN: &str = r#"#!/bin/sh
# A stand-in kubectl: records its arguments, its KUBECTL_APPLYSET and its
# stdin in its working directory.
PATH=/usr/bin:/bin
printf '%s\n' "$*" >> kubectl-calls.log
printf '%s %s\n' "$1" "$(env | grep '^KUBECTL_APPLYSET=')" >> kubectl-env.log
case "$1" in
  apply)
    printf '# call\n' >> kubectl-apply-stdin.yaml
    cat >> kubectl-apply-stdin.yaml
    echo "applied (stand-in)"
    ;;
  rollout)
    case "$3" in
      */stuck) sleep 300 ;;
      *) echo "$3 successfully rolled out" ;;
    esac
    ;;
esac
"#;

/// In the parent: runs `test` (this module's test of that name) again in a
/// child process whose `PATH` finds the stand-in `kubectl` first, and checks it
/// passed; returns false. In the child: returns true (run the test's body).
fn in_stand_in_child(test: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let bin = tempfile::tempdir().expect("temp dir");
    let kubectl = bin.path().join("kubectl");
    fs::write(&kubectl, STAND_IN).expect("write the stand-in");
    let mut perms = fs::metadata(&kubectl).expect("stand-in").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&kubectl, perms).expect("chmod the stand-in");
    let path = std::env::join_paths(std::iter::once(bin.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let out = Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            &format!("deploy::{test}"),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PATH", path)
        .env(CHILD, "1")
        .output()
        .expect("runs this test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child running deploy::{test} with the stand-in kubectl failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

fn harness(process: &[&str]) -> Harness {
    Harness::from_ark(arkline_testkit::plugin("deploy")).grant(Capabilities {
        http: vec!["127.0.0.1".into()],
        process: process.iter().map(|p| (*p).to_owned()).collect(),
        ..Capabilities::default()
    })
}

fn call(harness: &Harness, step: &str, workspace: &Path, config: Value) -> StepReport {
    harness.call(
        StepCall::new(step, config)
            .workspace(workspace)
            .timeout(Duration::from_secs(120)),
    )
}

fn outputs(report: &StepReport) -> &std::collections::BTreeMap<String, String> {
    report.outputs().unwrap_or_else(|| {
        panic!(
            "the step failed: {:?}\n{}",
            report.result,
            report.log.text()
        )
    })
}

fn failure(report: &StepReport) -> String {
    match &report.result {
        Err(StepFailure::Failed(message)) => message.clone(),
        other => panic!("expected a failure, got {other:?}\n{}", report.log.text()),
    }
}

/// A workspace with a bundle in `manifests/`: a Deployment with placeholders,
/// a Service, a StatefulSet in its own namespace, and a README that is not a
/// manifest.
fn bundle_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("manifests");
    fs::create_dir_all(root.join("data")).expect("mkdir");
    fs::write(
        root.join("web.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels:\n    app.kubernetes.io/part-of: shop\nspec:\n  replicas: {{ replicas }}\n  template:\n    spec:\n      containers:\n        - name: web\n          image: {{image}}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: [{ port: 80 }]\n",
    )
    .expect("write");
    fs::write(
        root.join("data/db.yaml"),
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: data\nspec:\n  replicas: 1\n",
    )
    .expect("write");
    fs::write(
        root.join("README.md"),
        "the shop's manifests {{ not a value }}\n",
    )
    .expect("write");
    dir
}

fn publish_config(registry: &Registry) -> Value {
    json!({
        "path": "manifests",
        "target": format!("{}/team/shop-template", registry.host()),
        "tags": ["1.2.0", "latest"],
        "annotations": {
            "org.opencontainers.image.source": "https://git.example.com/team/shop",
            "org.opencontainers.image.revision": "0123abc",
        },
    })
}

#[test]
fn publish_template_pushes_an_oci_artifact_with_the_same_digest_twice() {
    let registry = Registry::start();
    let harness = harness(&[]);
    let workspace = bundle_workspace();
    let report = call(
        &harness,
        "publish-template",
        workspace.path(),
        publish_config(&registry),
    );
    let out = outputs(&report).clone();
    let digest = out["digest"].clone();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        out["image"],
        format!("{}/team/shop-template@{digest}", registry.host())
    );
    assert_eq!(out["tags"], "1.2.0,latest");

    for tag in ["1.2.0", "latest"] {
        let reference = format!("docker://{}/team/shop-template:{tag}", registry.host());
        let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &reference]);
        assert!(
            raw.status.success(),
            "{}",
            String::from_utf8_lossy(&raw.stderr)
        );
        let manifest: Value = serde_json::from_slice(&raw.stdout).expect("a JSON manifest");
        assert_eq!(
            manifest["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            manifest["artifactType"],
            "application/vnd.arkline.template.v1"
        );
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.empty.v1+json"
        );
        assert_eq!(manifest["config"]["size"], 2);
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "{manifest}");
        assert_eq!(
            layers[0]["mediaType"],
            "application/vnd.arkline.template.layer.v1.tar+gzip"
        );
        assert_eq!(layers[0]["digest"], out["layer_digest"].as_str());
        let annotations = &manifest["annotations"];
        assert_eq!(annotations["org.opencontainers.image.title"], "manifests");
        assert_eq!(annotations["org.opencontainers.image.version"], "1.2.0");
        assert_eq!(annotations["org.opencontainers.image.revision"], "0123abc");
        assert_eq!(
            annotations["org.opencontainers.image.source"],
            "https://git.example.com/team/shop"
        );
        // The tag names the manifest the step reported: the same bytes by digest.
        let by_digest = format!("docker://{}/team/shop-template@{digest}", registry.host());
        let same = skopeo(&["inspect", "--raw", "--tls-verify=false", &by_digest]);
        assert!(
            same.status.success(),
            "{}",
            String::from_utf8_lossy(&same.stderr)
        );
        assert_eq!(same.stdout, raw.stdout);
    }

    // The same files and settings: the same digest, in another workspace too.
    let again = bundle_workspace();
    let report = call(
        &harness,
        "publish-template",
        again.path(),
        publish_config(&registry),
    );
    assert_eq!(outputs(&report)["digest"], digest);

    // A changed file changes it.
    fs::write(
        again.path().join("manifests/extra.yaml"),
        "kind: ConfigMap\nmetadata:\n  name: extra\n",
    )
    .expect("write");
    let report = call(
        &harness,
        "publish-template",
        again.path(),
        publish_config(&registry),
    );
    assert_ne!(outputs(&report)["digest"], digest);

    // A path that is not a directory is refused with the field named.
    let mut config = publish_config(&registry);
    config["path"] = json!("nowhere");
    let report = call(&harness, "publish-template", again.path(), config);
    match &report.result {
        Err(StepFailure::InvalidConfig { field, message }) => {
            assert_eq!(field.as_deref(), Some("path"));
            assert!(message.contains("nowhere"), "{message}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn apply_of_a_published_template_renders_applies_server_side_and_waits_for_rollouts() {
    if !in_stand_in_child(
        "apply_of_a_published_template_renders_applies_server_side_and_waits_for_rollouts",
    ) {
        return;
    }
    let registry = Registry::start();
    let harness = harness(&["kubectl"]);
    let source = bundle_workspace();
    let published = call(
        &harness,
        "publish-template",
        source.path(),
        publish_config(&registry),
    );
    let image = outputs(&published)["image"].clone();
    let digest = outputs(&published)["digest"].clone();

    let workspace = tempfile::tempdir().expect("temp dir");
    let report = call(
        &harness,
        "apply",
        workspace.path(),
        json!({
            "template": format!("{}/team/shop-template:1.2.0", registry.host()),
            "values": { "replicas": "3", "image": "registry.example.com/shop/web@sha256:feed" },
            "namespace": "shop",
            "rollout_timeout": 30,
        }),
    );
    let out = outputs(&report);
    assert_eq!(out["template_digest"], digest);
    let applied: Vec<String> = serde_json::from_str(&out["applied"]).expect("applied is JSON");
    // In file name order (`data/db.yaml` before `web.yaml`), then document order.
    assert_eq!(applied, ["StatefulSet/db", "Deployment/web", "Service/web"]);
    let rollout: Value = serde_json::from_str(&out["rollout"]).expect("rollout is JSON");
    assert_eq!(
        rollout,
        json!({ "Deployment/web": "ready", "StatefulSet/db": "ready" })
    );

    let calls =
        fs::read_to_string(workspace.path().join("kubectl-calls.log")).expect("kubectl ran");
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(
        calls,
        [
            // The setting's namespace first, then the StatefulSet's own
            // (`-n shop` would make kubectl reject it).
            "apply --server-side --field-manager=arkline -f - -n shop",
            "apply --server-side --field-manager=arkline -f - -n data",
            "rollout status statefulset/db --timeout=30s -n data",
            "rollout status deployment/web --timeout=30s -n shop",
        ]
    );
    let applied_yaml = fs::read_to_string(workspace.path().join("kubectl-apply-stdin.yaml"))
        .expect("stdin recorded");
    let per_call: Vec<&str> = applied_yaml.split("# call\n").skip(1).collect();
    assert_eq!(per_call.len(), 2, "{applied_yaml}");
    assert!(
        per_call[0].contains("kind: Deployment")
            && per_call[0].contains("kind: Service")
            && !per_call[0].contains("kind: StatefulSet"),
        "{}",
        per_call[0]
    );
    assert!(
        per_call[1].contains("kind: StatefulSet") && !per_call[1].contains("kind: Deployment"),
        "{}",
        per_call[1]
    );
    let env = fs::read_to_string(workspace.path().join("kubectl-env.log")).expect("env recorded");
    assert!(!env.contains("KUBECTL_APPLYSET"), "{env}");
    assert!(applied_yaml.contains("  replicas: 3\n"), "{applied_yaml}");
    assert!(
        applied_yaml.contains("image: registry.example.com/shop/web@sha256:feed\n"),
        "{applied_yaml}"
    );
    assert!(applied_yaml.contains("kind: StatefulSet"), "{applied_yaml}");
    assert!(
        !applied_yaml.contains("{{"),
        "placeholders left: {applied_yaml}"
    );
    assert!(!applied_yaml.contains("README"), "{applied_yaml}");

    // By digest (the `image` output) too.
    let again = tempfile::tempdir().expect("temp dir");
    let report = call(
        &harness,
        "apply",
        again.path(),
        json!({
            "template": image,
            "values": { "replicas": "1", "image": "x" },
            "wait": false,
        }),
    );
    assert_eq!(outputs(&report)["rollout"], "{}");
    let calls = fs::read_to_string(again.path().join("kubectl-calls.log")).expect("kubectl ran");
    assert_eq!(
        calls,
        "apply --server-side --field-manager=arkline -f -\napply --server-side --field-manager=arkline -f - -n data\n"
    );

    // Pruning with an ApplySet: one call, its parent a ConfigMap in the
    // namespace, kubectl's ApplySet support switched on.
    let pruned = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(pruned.path().join("k8s")).expect("mkdir");
    fs::write(
        pruned.path().join("k8s/app.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: app\n  namespace: shop\n",
    )
    .expect("write");
    let report = call(
        &harness,
        "apply",
        pruned.path(),
        json!({ "path": "k8s", "namespace": "shop", "applyset": "shop" }),
    );
    outputs(&report);
    let calls = fs::read_to_string(pruned.path().join("kubectl-calls.log")).expect("kubectl ran");
    assert_eq!(
        calls,
        "apply --server-side --field-manager=arkline -f - -n shop --prune --applyset=configmaps/shop\n"
    );
    let env = fs::read_to_string(pruned.path().join("kubectl-env.log")).expect("env recorded");
    assert_eq!(env, "apply KUBECTL_APPLYSET=true\n");
}

#[test]
fn apply_refuses_prune_label_and_an_applyset_across_namespaces() {
    let harness = harness(&["kubectl"]);
    let workspace = bundle_workspace();
    let values = json!({ "replicas": "1", "image": "x" });
    let config_error =
        |config: Value| match call(&harness, "apply", workspace.path(), config).result {
            Err(StepFailure::InvalidConfig { field, message }) => (field, message),
            other => panic!("expected a config error, got {other:?}"),
        };

    let (field, message) = config_error(json!({
        "path": "manifests", "values": values, "namespace": "shop",
        "prune_label": "app.kubernetes.io/part-of=shop",
    }));
    assert_eq!(field.as_deref(), Some("prune_label"));
    assert!(message.contains("applyset"), "{message}");

    // The StatefulSet is in `data`: kubectl would reject it under `-n shop`.
    let (field, message) = config_error(json!({
        "path": "manifests", "values": values, "namespace": "shop", "applyset": "shop",
    }));
    assert_eq!(field.as_deref(), Some("applyset"));
    assert!(
        message.contains("StatefulSet/db") && message.contains("`data`"),
        "{message}"
    );

    // A ConfigMap parent needs the namespace it lives in.
    let (field, message) = config_error(json!({
        "path": "manifests", "values": values, "applyset": "configmaps/shop",
    }));
    assert_eq!(field.as_deref(), Some("applyset"));
    assert!(message.contains("namespace"), "{message}");
    assert!(
        !workspace.path().join("kubectl-calls.log").exists(),
        "kubectl ran"
    );
}

#[test]
fn a_rollout_that_does_not_finish_fails_the_step_naming_the_workload() {
    if !in_stand_in_child("a_rollout_that_does_not_finish_fails_the_step_naming_the_workload") {
        return;
    }
    let harness = harness(&["kubectl"]);
    let workspace = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(workspace.path().join("k8s")).expect("mkdir");
    fs::write(
        workspace.path().join("k8s/stuck.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: stuck\nspec:\n  replicas: 1\n",
    )
    .expect("write");
    let report = call(
        &harness,
        "apply",
        workspace.path(),
        json!({ "path": "k8s", "namespace": "shop", "rollout_timeout": 1 }),
    );
    let message = failure(&report);
    assert!(
        message.contains("Deployment/stuck") && message.contains("did not finish within 1s"),
        "{message}"
    );
    assert!(message.contains("rollout_timeout"), "{message}");
    let calls =
        fs::read_to_string(workspace.path().join("kubectl-calls.log")).expect("kubectl ran");
    assert!(
        calls.contains("rollout status deployment/stuck --timeout=1s -n shop"),
        "{calls}"
    );
}

#[test]
fn apply_without_a_kubectl_grant_names_the_grant_to_add() {
    let harness = harness(&[]);
    let workspace = tempfile::tempdir().expect("temp dir");
    fs::write(
        workspace.path().join("app.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n",
    )
    .expect("write");
    let report = call(
        &harness,
        "apply",
        workspace.path(),
        json!({ "path": "app.yaml" }),
    );
    let message = failure(&report);
    assert!(message.contains("`kubectl` is not granted"), "{message}");
    assert!(message.contains("process=kubectl"), "{message}");
}

#[test]
fn apply_refuses_a_missing_value_and_a_chart_without_a_helm_grant() {
    let harness = harness(&[]);
    let workspace = bundle_workspace();
    let report = call(
        &harness,
        "apply",
        workspace.path(),
        json!({ "path": "manifests", "values": { "replicas": "2" } }),
    );
    match &report.result {
        Err(StepFailure::InvalidConfig { field, message }) => {
            assert_eq!(field.as_deref(), Some("values"));
            assert!(
                message.contains("web.yaml") && message.contains("`{{ image }}`"),
                "{message}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }

    fs::create_dir_all(workspace.path().join("chart/templates")).expect("mkdir");
    fs::write(
        workspace.path().join("chart/Chart.yaml"),
        "apiVersion: v2\nname: shop\nversion: 0.1.0\n",
    )
    .expect("write");
    fs::write(
        workspace.path().join("chart/templates/cm.yaml"),
        "kind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n",
    )
    .expect("write");
    let report = call(
        &harness,
        "apply",
        workspace.path(),
        json!({ "path": "chart" }),
    );
    let message = failure(&report);
    assert!(
        message.contains("Helm chart") && message.contains("process=helm"),
        "{message}"
    );
}

/// The release half end to end, as the issue lists it: a pipeline on the
/// embedded store clones a repository (`git` over `git daemon`), tests it
/// (`shell`), publishes its image (`image/publish`) and its manifests
/// (`deploy/publish-template`) to a registry with basic auth, and applies
/// the template with the image's digest (`deploy/apply`, stand-in
/// `kubectl`). The registry password, a secret, is in no step's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_clones_tests_publishes_and_applies_with_its_secret_masked() {
    use arkline::ark::Ark;
    use arkline::model::ExecutionPhase;
    use arkline::{Container, TriggerRequest};
    use arkline_testkit::git::{Repo, git_daemon};

    if !in_stand_in_child("a_pipeline_clones_tests_publishes_and_applies_with_its_secret_masked") {
        return;
    }
    const PASSWORD: &str = "e2e-regi5try-pa55";
    let registry = Registry::builder().basic_auth("ci-robot", PASSWORD).start();
    let root = tempfile::tempdir().expect("temp dir");
    let repo = Repo::new(root.path(), "shop");
    repo.commit(
        "the shop",
        &[
            ("app/web", "#!/bin/sh\necho web\n"),
            ("test.sh", "grep -q 'echo web' app/web && echo 'tests passed'\n"),
            (
                "manifests/web.yaml",
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {{ replicas }}\n  template:\n    spec:\n      containers:\n        - name: web\n          image: {{ image }}\n",
            ),
        ],
    );
    let port = git_daemon(&root.path().join("srv"));

    let data = tempfile::tempdir().expect("temp dir");
    let container = Container::builder()
        .data_dir(data.path())
        .build()
        .expect("container builds");
    let engine = container.engine("shop").await.expect("engine starts");
    let grants = [
        (
            "git",
            Capabilities {
                process: vec!["git".into()],
                process_net: true,
                ..Capabilities::default()
            },
        ),
        (
            "shell",
            Capabilities {
                process: vec!["sh".into()],
                ..Capabilities::default()
            },
        ),
        (
            "image",
            Capabilities {
                http: vec!["127.0.0.1".into()],
                ..Capabilities::default()
            },
        ),
        (
            "deploy",
            Capabilities {
                http: vec!["127.0.0.1".into()],
                process: vec!["kubectl".into()],
                ..Capabilities::default()
            },
        ),
    ];
    for (name, grant) in grants {
        let ark = Ark::open(arkline_testkit::plugin(name)).expect("the archive reads back");
        engine.install(ark, &grant).await.expect("installs");
    }
    engine
        .set_secret("registry_password", PASSWORD)
        .await
        .expect("secret");
    let host = registry.host();
    let yaml = format!(
        r#"
name: release
secrets: [registry_password]
stages:
  - name: source
    steps:
      - name: clone
        uses: git/clone
        with: {{ url: "git://127.0.0.1:{port}/shop.git", path: src }}
  - name: test
    steps:
      - name: test
        uses: shell
        with: {{ working_dir: src, script: "sh test.sh" }}
  - name: publish
    steps:
      - name: image
        uses: image/publish
        with:
          base: scratch
          layers: [{{ paths: [web], working_dir: src/app, destination: /usr/local/bin }}]
          entrypoint: [/usr/local/bin/web]
          target: "{host}/shop/web"
          tags: [v1]
          credential: {{ username: ci-robot, password: "${{{{ secrets.registry_password }}}}" }}
      - name: template
        uses: deploy/publish-template
        with:
          path: src/manifests
          target: "{host}/shop/manifests"
          tags: [v1]
          credential: {{ username: ci-robot, password: "${{{{ secrets.registry_password }}}}" }}
  - name: deploy
    steps:
      - name: apply
        uses: deploy/apply
        with:
          template: "${{{{ steps.template.outputs.image }}}}"
          values: {{ image: "${{{{ steps.image.outputs.image }}}}", replicas: "2" }}
          namespace: shop
          credential: {{ username: ci-robot, password: "${{{{ secrets.registry_password }}}}" }}
  - name: report
    steps:
      - name: show
        uses: shell
        with: {{ script: "cat kubectl-apply-stdin.yaml; echo ---; cat kubectl-calls.log" }}
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
    let exec = tokio::time::timeout(Duration::from_secs(240), engine.wait(&exec.metadata.name))
        .await
        .expect("the execution finishes in time")
        .expect("wait");
    let name = exec.metadata.name.clone();
    let mut logs = String::new();
    for step in ["clone", "test", "image", "template", "apply", "show"] {
        for line in engine.logs(&name, step).await.expect("log") {
            logs.push_str(&format!("{step}: {}\n", line.message));
        }
    }
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}\n{logs}",
        exec.status
    );
    assert!(logs.contains("test: tests passed"), "{logs}");
    assert!(!logs.contains(PASSWORD), "the password is masked:\n{logs}");
    let image = &exec.status.outputs["image"]["image"];
    assert!(
        image.starts_with(&format!("{host}/shop/web@sha256:")),
        "{image}"
    );
    assert_eq!(
        exec.status.outputs["apply"]["rollout"],
        r#"{"Deployment/web":"ready"}"#
    );
    // What the stand-in kubectl was given (it wrote it into the workspace,
    // which the last step prints): the manifest with the image's digest,
    // applied server-side in the namespace.
    let shown: Vec<String> = engine
        .logs(&name, "show")
        .await
        .expect("log")
        .into_iter()
        .map(|l| l.message.trim_end().to_owned())
        .collect();
    assert!(
        shown.contains(&format!("          image: {image}")),
        "{shown:#?}"
    );
    assert!(shown.contains(&"  replicas: 2".to_owned()), "{shown:#?}");
    let apply_call = shown
        .iter()
        .find(|l| l.starts_with("apply "))
        .unwrap_or_else(|| panic!("no apply call: {shown:#?}"));
    assert!(
        apply_call.contains("--server-side") && apply_call.contains("-n shop"),
        "{apply_call}"
    );
    container.shutdown().await;
}
