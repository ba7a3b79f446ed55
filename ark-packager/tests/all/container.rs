//! `cargo ark container`, and `inspect`/`verify` on `.arkc`, with the real binary:
//! the example container built in two directories gives the same bytes, signed
//! bizes and engine policies, and broken sources refused with clear messages.

use std::path::{Path, PathBuf};

use arkline::ark::{Ark, write_deterministic_zip};
use arkline::container::archive::ContainerArchive;
use assert_cmd::Command;
use predicates::prelude::*;

fn cargo_ark() -> Command {
    Command::cargo_bin("cargo-ark").expect("cargo-ark is built")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            if entry.file_name() != "target" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// examples/container copied to `dir`, its plugin path pointed back at the
/// workspace's `plugins/shell`.
fn example_at(dir: &Path) -> PathBuf {
    copy_dir(&workspace().join("examples/container"), dir);
    let manifest = dir.join("container.toml");
    let text = std::fs::read_to_string(&manifest).expect("read");
    let shell = workspace().join("plugins/shell");
    let text = text.replace(
        "\"../../plugins/shell\"",
        &format!("{:?}", shell.display().to_string()),
    );
    std::fs::write(&manifest, text).expect("write");
    manifest
}

fn build(manifest: &Path) -> PathBuf {
    cargo_ark()
        .args(["ark", "container", "--manifest-path"])
        .arg(manifest)
        .assert()
        .success()
        .stderr(predicate::str::contains("Adding shell v0.1.0"))
        .stderr(predicate::str::contains(
            "Checked engine team-a: 2 pipelines, bizes shell v0.1.0 [process=sh]",
        ))
        .stderr(predicate::str::contains(
            "Checked engine team-b: 1 pipeline, bizes shell v0.1.0 [nothing granted]",
        ))
        .stderr(predicate::str::contains("Packaged example v0.1.0"));
    manifest
        .parent()
        .expect("dir")
        .join("target/ark/example-0.1.0.arkc")
}

#[test]
fn the_example_builds_reproducibly_and_inspects_and_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let first = build(&example_at(&tmp.path().join("one/container")));
    let second = build(&example_at(&tmp.path().join("elsewhere/deeper/ct")));
    let bytes = std::fs::read(&first).expect("arkc");
    assert_eq!(
        bytes,
        std::fs::read(&second).expect("arkc"),
        "the .arkc depends on where the sources are"
    );

    let arkc = ContainerArchive::from_bytes(&bytes).expect("valid");
    assert_eq!(arkc.bizes.len(), 1, "shell is stored once for both engines");
    let a = arkc.engine_bizes("team-a");
    assert_eq!(a[0].capabilities.process, ["sh"]);
    let b = arkc.engine_bizes("team-b");
    assert!(b[0].capabilities.is_empty(), "team-b grants nothing");
    let team_b = arkc.manifest.engine("team-b").expect("team-b");
    assert_eq!(team_b.settings.executor_quota, 1);
    assert_eq!(arkc.engine_pipelines("team-a").count(), 2);

    cargo_ark()
        .args(["ark", "inspect"])
        .arg(&first)
        .assert()
        .success()
        .stdout(predicate::str::contains("engine team-a"))
        .stdout(predicate::str::contains("grants process=sh"))
        .stdout(predicate::str::contains("requests process=sh,bash"))
        .stdout(predicate::str::contains("nothing granted"))
        .stdout(predicate::str::contains("executor_quota=1"))
        .stdout(predicate::str::contains(
            "nightly                  engines/team-a/pipelines/nightly.yaml (1 stage, 1 step)",
        ))
        .stdout(predicate::str::contains("bizes/shell-0.1.0.ark"));
    let out = cargo_ark()
        .args(["ark", "inspect", "--json"])
        .arg(&first)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["name"], "example");
    assert_eq!(json["engines"][1]["name"], "team-b");
    assert_eq!(
        json["engines"][1]["bizes"][0]["grants"],
        serde_json::json!([])
    );
    assert_eq!(json["engines"][1]["bizes"][0]["signature"], "unsigned");
    assert_eq!(json["engines"][1]["pipelines"][0]["name"], "probe");

    cargo_ark()
        .args(["ark", "verify"])
        .arg(&first)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "Signature engine team-b: shell v0.1.0 unsigned",
        ))
        .stderr(predicate::str::contains(
            "Verified container example 0.1.0 (2 engines, 1 biz, 3 pipelines",
        ));

    // A key on the command line: every biz must be signed by it.
    cargo_ark()
        .args(["ark", "keygen"])
        .arg(tmp.path().join("ops"))
        .assert()
        .success();
    cargo_ark()
        .args(["ark", "verify"])
        .arg(&first)
        .arg("--key")
        .arg(tmp.path().join("ops.pub"))
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "bizes/shell-0.1.0.ark: the archive is not signed",
        ));

    // A pipeline changed inside the archive: its digest no longer matches.
    let tampered = tmp.path().join("tampered.arkc");
    let mut entries = std::collections::BTreeMap::new();
    let shell = arkc
        .biz("shell", &"0.1.0".parse().expect("v"))
        .expect("shell");
    entries.insert(
        "bizes/shell-0.1.0.ark".to_owned(),
        write_deterministic_zip(&shell.entries(), |_| false).expect("zip"),
    );
    for ((_, path), text) in &arkc.pipelines {
        entries.insert(path.clone(), text.replace("df -h", "rm -rf").into_bytes());
    }
    entries.insert("container.toml".to_owned(), arkc.manifest_bytes.clone());
    std::fs::write(
        &tampered,
        write_deterministic_zip(&entries, |n| n.ends_with(".ark")).expect("zip"),
    )
    .expect("write");
    cargo_ark()
        .args(["ark", "verify"])
        .arg(&tampered)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "entry `engines/team-a/pipelines/nightly.yaml` does not match container.toml",
        ));
    cargo_ark()
        .args(["ark", "inspect"])
        .arg(&tampered)
        .assert()
        .failure()
        .stderr(predicate::str::contains("does not match container.toml"));
}

/// A project using packaged bizes (`ark = …`), a shared biz and a signing policy.
struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Project {
    fn new() -> Project {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("project");
        std::fs::create_dir_all(dir.join("dist")).expect("mkdir");
        std::fs::create_dir_all(dir.join("pipelines")).expect("mkdir");
        std::fs::copy(
            arkline_testkit::plugin("shell"),
            dir.join("dist/shell-0.1.0.ark"),
        )
        .expect("copy the shell plugin");
        std::fs::write(
            dir.join("pipelines/hello.yaml"),
            "name: hello\nstages:\n  - name: s\n    steps:\n      - name: say\n        uses: shell\n        with: { script: echo hi }\n",
        )
        .expect("write");
        Project { _tmp: tmp, dir }
    }

    fn write(&self, container_toml: &str) -> PathBuf {
        let path = self.dir.join("container.toml");
        std::fs::write(&path, container_toml).expect("write");
        path
    }

    fn container(&self, container_toml: &str) -> assert_cmd::assert::Assert {
        let manifest = self.write(container_toml);
        cargo_ark()
            .args(["ark", "container", "--manifest-path"])
            .arg(manifest)
            .arg("--out")
            .arg(self.dir.join("out.arkc"))
            .assert()
    }
}

const ONE_ENGINE: &str = r#"
name = "proj"
version = "1.0.0"

[[engines]]
name = "team-a"
pipelines = ["pipelines/*.yaml"]
bizes = [{ ark = "dist/shell-0.1.0.ark", grants = ["process=sh"] }]
"#;

#[test]
fn shared_bizes_and_signature_policies() {
    let p = Project::new();
    cargo_ark()
        .args(["ark", "keygen"])
        .arg(p.dir.join("team-a"))
        .assert()
        .success();

    // The engine requires signatures; the packaged shell is unsigned.
    let signed_policy = ONE_ENGINE.replace(
        "[[engines]]\nname = \"team-a\"\n",
        "[[engines]]\nname = \"team-a\"\nrequire_signed = true\ntrusted_keys = [\"team-a.pub\"]\n",
    );
    p.container(&signed_policy)
        .failure()
        .stderr(predicate::str::contains(
            "engine `team-a` refuses biz shell@0.1.0: the archive is not signed",
        ));

    cargo_ark()
        .args(["ark", "sign"])
        .arg(p.dir.join("dist/shell-0.1.0.ark"))
        .arg("--key")
        .arg(p.dir.join("team-a.key"))
        .assert()
        .success();
    p.container(&signed_policy).success();
    let out = p.dir.join("out.arkc");
    cargo_ark()
        .args(["ark", "inspect"])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "signatures:  required, trusted keys",
        ))
        .stdout(predicate::str::contains("signed by trusted key"));
    cargo_ark()
        .args(["ark", "verify"])
        .arg(&out)
        .arg("--key")
        .arg(p.dir.join("team-a.pub"))
        .assert()
        .success();

    // A shared biz: team-b has it with nothing granted, team-c names it to grant more.
    let shared = r#"
name = "proj"
version = "1.0.0"

[[shared_bizes]]
ark = "dist/shell-0.1.0.ark"

[[engines]]
name = "team-b"
pipelines = ["pipelines/hello.yaml"]

[[engines]]
name = "team-c"
bizes = [{ shared = "shell@0.1.0", grants = ["process=sh"] }]
"#;
    p.container(shared).success();
    let arkc = ContainerArchive::open(&out).expect("reads");
    assert!(arkc.engine_bizes("team-b")[0].shared);
    assert!(arkc.engine_bizes("team-b")[0].capabilities.is_empty());
    assert!(!arkc.engine_bizes("team-c")[0].shared);
    assert_eq!(arkc.engine_bizes("team-c")[0].capabilities.process, ["sh"]);
    assert_eq!(arkc.bizes.len(), 1);
    let ark = arkc
        .biz("shell", &"0.1.0".parse().expect("v"))
        .expect("shell");
    assert_eq!(
        ark.manifest_bytes,
        Ark::open(p.dir.join("dist/shell-0.1.0.ark"))
            .expect("reads")
            .manifest_bytes
    );
}

#[test]
fn broken_sources_are_refused_with_clear_messages() {
    let p = Project::new();
    p.container(ONE_ENGINE).success();

    for (what, source, message) in [
        (
            "missing plugin path",
            ONE_ENGINE.replace(
                "ark = \"dist/shell-0.1.0.ark\"",
                "path = \"../plugins/nowhere\"",
            ),
            "biz path `../plugins/nowhere` does not exist",
        ),
        (
            "missing ark file",
            ONE_ENGINE.replace("dist/shell-0.1.0.ark", "dist/gone.ark"),
            "biz ark `dist/gone.ark` does not exist",
        ),
        (
            "bad grant",
            ONE_ENGINE.replace("process=sh", "network=everything"),
            "grant `network=everything` is not valid",
        ),
        (
            "two sources for one biz",
            ONE_ENGINE.replace(
                "ark = \"dist/shell-0.1.0.ark\",",
                "ark = \"dist/shell-0.1.0.ark\", path = \"x\",",
            ),
            "a biz takes exactly one of",
        ),
        (
            "a pattern matching nothing",
            ONE_ENGINE.replace("pipelines/*.yaml", "pipelines/*.yml"),
            "pipelines pattern `pipelines/*.yml` matches no file",
        ),
        (
            "an archive manifest given as source",
            format!("format_version = 1\n{ONE_ENGINE}"),
            "manifest of a built .arkc, not a source description",
        ),
        (
            "bad engine name",
            ONE_ENGINE.replace("team-a", "Team_A"),
            "`Team_A` is not a valid engine name",
        ),
        (
            "unknown shared biz",
            ONE_ENGINE.replace("ark = \"dist/shell-0.1.0.ark\"", "shared = \"shell\""),
            "`shared = \"shell\"` names no biz of [[shared_bizes]]",
        ),
    ] {
        let out = p.container(&source).failure().get_output().clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{what}: {stderr}");
    }

    // Grants are checked before anything is built.
    let out = p
        .container(
            &ONE_ENGINE
                .replace(
                    "ark = \"dist/shell-0.1.0.ark\"",
                    "path = \"../plugins/nowhere\"",
                )
                .replace("process=sh", "cache=yes"),
        )
        .failure()
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`cache` takes no value"), "{stderr}");

    // A pipeline that uses a biz its engine lacks, shown with its position.
    std::fs::write(
        p.dir.join("pipelines/deploy.yaml"),
        "name: deploy\nstages:\n  - name: s\n    steps:\n      - name: ship\n        uses: deploy/push@^2\n",
    )
    .expect("write");
    p.container(ONE_ENGINE)
        .failure()
        .stderr(predicate::str::contains("container proj v1.0.0 is not valid"))
        .stderr(predicate::str::contains(
            "pipeline `engines/team-a/pipelines/deploy.yaml` of engine `team-a` uses bizes the engine does not have",
        ))
        .stderr(predicate::str::contains(
            "engine `team-a` has no biz `deploy` (it has: shell@0.1.0)",
        ))
        .stderr(predicate::str::contains("deploy.yaml:6:15"));

    // And one whose step config does not match the step's schema.
    std::fs::write(
        p.dir.join("pipelines/deploy.yaml"),
        "name: deploy\nstages:\n  - name: s\n    steps:\n      - name: ship\n        uses: shell\n        with: { scrpit: ls }\n",
    )
    .expect("write");
    p.container(ONE_ENGINE)
        .failure()
        .stderr(predicate::str::contains("unknown setting `scrpit`"))
        .stderr(predicate::str::contains("did you mean `script`?"));
}
