//! `deploy-yaml` applying through a granted `kubectl` (a stand-in script that
//! records what it was given). One test in its own binary: it puts the stand-in
//! first on this process's `PATH`, where the grant is resolved.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use arkline_testkit::{Capabilities, Harness, StepCall};
use serde_json::json;

#[test]
fn deploy_yaml_applies_the_bundle_when_kubectl_is_granted() {
    let bin = tempfile::tempdir().expect("tempdir");
    let kubectl = bin.path().join("kubectl");
    // Only shell built-ins: the child's PATH holds just the granted programs.
    fs::write(
        &kubectl,
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$HOME/kubectl-args\"\nwhile IFS= read -r line; do printf '%s\\n' \"$line\"; done < \"$3\" > \"$HOME/kubectl-saw.yaml\"\nprintf 'KUBECONFIG=%s\\n' \"$KUBECONFIG\" >> \"$HOME/kubectl-args\"\necho 'deployment.apps/web configured'\n",
    )
    .expect("write kubectl");
    fs::set_permissions(&kubectl, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.path().to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    // SAFETY: this binary's only test sets PATH before anything else reads it or
    // starts a thread that could.
    unsafe { std::env::set_var("PATH", std::env::join_paths(dirs).expect("PATH")) };

    let ws = tempfile::tempdir().expect("tempdir");
    fs::write(
        ws.path().join("app.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ name }}\n",
    )
    .expect("write manifest");
    fs::write(ws.path().join("kube.conf"), "apiVersion: v1\n").expect("kubeconfig");
    let h = Harness::current_crate(env!("CARGO_MANIFEST_DIR")).grant(Capabilities {
        process: vec!["kubectl".into()],
        ..Capabilities::default()
    });
    let report = h.call(
        StepCall::new(
            "deploy-yaml",
            json!({
                "source": "app.yaml",
                "values": { "name": "settings" },
                "output": "out/bundle.yaml",
                "namespace": "staging",
                "kubeconfig": "kube.conf",
                "kubectl_args": ["--server-side"],
            }),
        )
        .workspace(ws.path()),
    );
    let out = report.outputs().expect("deploy-yaml succeeds");
    assert_eq!(out["applied"], "true", "{out:?}");
    assert_eq!(out["resources"], "ConfigMap/settings");
    let host = |rel: &str| ws.path().canonicalize().expect("canonical").join(rel);
    let args = fs::read_to_string(ws.path().join("kubectl-args")).expect("kubectl ran");
    assert_eq!(
        args,
        format!(
            "apply\n-f\n{}\n--namespace\nstaging\n--server-side\nKUBECONFIG={}\n",
            host("out/bundle.yaml").display(),
            host("kube.conf").display()
        )
    );
    assert_eq!(
        fs::read_to_string(ws.path().join("kubectl-saw.yaml")).expect("bundle read"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n"
    );
    assert!(Path::new(&ws.path().join("out/bundle.yaml")).exists());
}
