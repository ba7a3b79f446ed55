//! `cargo ark package --component`: a component built by another toolchain
//! (here the `faults` plugin's component, taken out of its archive), packaged
//! from an `Ark.toml` beside it with the same checks as a cargo package, then
//! inspected and run by `cargo ark run`.

use std::path::Path;

use arkline::ark::Ark;
use assert_cmd::Command;
use predicates::prelude::*;

fn cargo_ark() -> Command {
    let mut cmd = Command::cargo_bin("cargo-ark").expect("cargo-ark is built");
    cmd.env("NO_COLOR", "1");
    cmd
}

/// `component.wasm`, `Ark.toml` and a schema file per step (the shipped
/// `faults` build's `describe()` carries no schemas: `cargo ark` takes them
/// from a second build, which a prebuilt component's project gives as files).
fn project(dir: &Path, skip_schema_of: Option<&str>) -> Ark {
    let faults = Ark::open(arkline_testkit::plugin("faults")).expect("faults");
    std::fs::write(dir.join("component.wasm"), &faults.component).expect("write");
    let mut schemas = String::from("[schemas]\n");
    std::fs::create_dir_all(dir.join("schemas")).expect("mkdir");
    for step in &faults.manifest.steps {
        if Some(step.id.as_str()) == skip_schema_of {
            continue;
        }
        let schema = faults.step_schema(&step.id).expect("a schema");
        std::fs::write(
            dir.join(format!("schemas/{}.json", step.id)),
            serde_json::to_vec(&schema).expect("json"),
        )
        .expect("write");
        schemas.push_str(&format!("{} = \"schemas/{}.json\"\n", step.id, step.id));
    }
    std::fs::write(
        dir.join("Ark.toml"),
        format!(
            "name = \"prebuilt\"\nversion = \"1.2.3\"\ndescription = \"faults, prebuilt\"\n\
             license = \"MIT\"\n\n[capabilities]\n\n{schemas}"
        ),
    )
    .expect("write");
    faults
}

/// A path in this repository.
fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Fails the test with the install command when `tool` is missing.
fn require(tool: &str, install: &str) {
    let have = std::process::Command::new(tool)
        .env("PATH", arkline_testkit::tool_path())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        have,
        "{tool} is not installed: `{install}` (`.ci/deps.sh --test` installs it)"
    );
}

/// Runs `argv` in `dir` with the network off (builds and tests must fetch
/// nothing) and requires it to succeed.
fn succeeds(argv: &[&str], dir: &Path) {
    let out = arkline_testkit::offline(argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A git repository in `dir/repo` with an empty commit per message.
fn git_repo(dir: &Path, messages: &[&str]) -> std::path::PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    let commits = messages
        .iter()
        .map(|m| vec!["commit", "-q", "--allow-empty", "-m", m]);
    for args in std::iter::once(vec!["init", "-q"]).chain(commits) {
        let ok = std::process::Command::new("git")
            .args(&args)
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &repo)
            .env("GIT_AUTHOR_NAME", "a")
            .env("GIT_AUTHOR_EMAIL", "a@example.com")
            .env("GIT_COMMITTER_NAME", "a")
            .env("GIT_COMMITTER_EMAIL", "a@example.com")
            .status()
            .expect("git");
        assert!(ok.success(), "git {args:?}");
    }
    repo
}

/// `cargo ark run STEP --with WITH` of `archive` in the repository `repo`
/// (its compiled cache beside it), with `process=git` granted or not.
fn run_in_repo(step: &str, with: &str, archive: &Path, repo: &Path, grant: bool) -> Command {
    let mut cmd = cargo_ark();
    cmd.args(["ark", "run", step, "--with", with, "--ark"])
        .arg(archive)
        .arg("--workspace")
        .arg(repo)
        .arg("--target-dir")
        .arg(repo.with_file_name("target"));
    if grant {
        cmd.args(["--grant", "process=git"]);
    }
    cmd
}

/// Builds `plugins/<plugin>` with its `build.sh` and packages it with
/// `--component` and its `Ark.toml` (`cargo ark` names the `language`);
/// the archive, in `dir`.
fn build_and_package(plugin: &str, language: &str, dir: &Path) -> std::path::PathBuf {
    let source = repo(&format!("plugins/{plugin}"));
    let wasm = dir.join(format!("{plugin}.wasm"));
    succeeds(
        &[
            "sh",
            source.join("build.sh").to_str().expect("utf-8"),
            wasm.to_str().expect("utf-8"),
        ],
        dir,
    );
    let archive = dir.join(format!("{plugin}.ark"));
    cargo_ark()
        .args(["ark", "package", "--component"])
        .arg(&wasm)
        .arg("--ark-toml")
        .arg(source.join("Ark.toml"))
        .arg("--output")
        .arg(&archive)
        .assert()
        .success()
        .stderr(predicate::str::contains(language));
    archive
}

#[test]
fn a_prebuilt_component_is_packaged_from_its_ark_toml_inspected_and_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let faults = project(tmp.path(), None);
    let out = cargo_ark()
        .args(["ark", "package", "--json", "--component"])
        .arg(tmp.path().join("component.wasm"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["name"], "prebuilt");
    assert_eq!(json["language"], "Rust");
    let archive = tmp.path().join("target/ark/prebuilt-1.2.3.ark");
    assert_eq!(json["archive"], archive.to_str().expect("utf-8"));
    let ark = Ark::open(&archive).expect("reads back");
    assert_eq!(ark.component, faults.component);
    assert_eq!(ark.manifest.build.profile, "prebuilt");
    assert_eq!(ark.manifest.build.language.as_deref(), Some("Rust"));
    assert_eq!(ark.manifest.license.as_deref(), Some("MIT"));
    let ids = |a: &Ark| {
        a.manifest
            .steps
            .iter()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&ark), ids(&faults));
    for id in ids(&faults) {
        assert_eq!(ark.step_schema(&id), faults.step_schema(&id), "{id}");
    }

    // The same inputs, the same archive.
    let first = std::fs::read(&archive).expect("read");
    cargo_ark()
        .args(["ark", "package", "--component"])
        .arg(tmp.path().join("component.wasm"))
        .assert()
        .success();
    assert_eq!(std::fs::read(&archive).expect("read"), first);

    cargo_ark()
        .args(["ark", "inspect"])
        .arg(&archive)
        .assert()
        .success()
        .stdout(predicate::str::contains("language:    Rust"))
        .stdout(predicate::str::contains("prebuilt profile"));

    cargo_ark()
        .args([
            "ark",
            "run",
            "upper",
            "--with",
            r#"{"text":"prebuilt"}"#,
            "--ark",
        ])
        .arg(&archive)
        .arg("--workspace")
        .arg(tmp.path().join("ws"))
        .assert()
        .success()
        .stdout(predicate::str::contains("PREBUILT"));
}

#[test]
fn a_prebuilt_component_without_what_cargo_would_give_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    project(tmp.path(), Some("upper"));
    cargo_ark()
        .args(["ark", "package", "--component"])
        .arg(tmp.path().join("component.wasm"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "step type `upper` has no config schema",
        ))
        .stderr(predicate::str::contains("upper = \"schemas/upper.json\""));

    let other = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        tmp.path().join("component.wasm"),
        other.path().join("c.wasm"),
    )
    .expect("copy");
    cargo_ark()
        .args(["ark", "package", "--component"])
        .arg(other.path().join("c.wasm"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("needs an Ark.toml"));

    std::fs::write(
        other.path().join("Ark.toml"),
        "name = \"x\"\nversion = \"0.1.0\"\n[schemas]\nnope = \"n.json\"\n",
    )
    .expect("write");
    cargo_ark()
        .args(["ark", "package", "--component"])
        .arg(other.path().join("c.wasm"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "gives a schema for step type `nope`, which the component does not describe",
        ));

    std::fs::write(other.path().join("not.wasm"), b"\0asm\x01\0\0\0").expect("write");
    std::fs::write(
        other.path().join("Ark.toml"),
        "name = \"x\"\nversion = \"0.1.0\"\n",
    )
    .expect("write");
    cargo_ark()
        .args(["ark", "package", "--component"])
        .arg(other.path().join("not.wasm"))
        .assert()
        .failure()
        .stderr(predicate::str::contains("is not a usable step plugin"));
}

#[test]
fn a_python_step_is_built_with_componentize_py_packaged_and_run() {
    require("componentize-py", "pip install componentize-py==0.25.1");
    // The SDK's own tests, in plain CPython.
    succeeds(
        &["python3", "-m", "unittest", "discover", "-s", "tests"],
        &repo("plugins/sdk-python"),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = build_and_package("changelog-py", "Python", tmp.path());
    let ark = Ark::open(&archive).expect("reads back");
    assert_eq!(ark.manifest.build.language.as_deref(), Some("Python"));
    assert_eq!(ark.manifest.steps.len(), 1);
    let schema = ark
        .step_schema("changelog")
        .expect("schema from describe()");
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["commits"]["items"]["type"], "string");
    assert_eq!(schema["properties"]["title"]["type"], "string");

    let run = |with: &str| {
        let mut cmd = cargo_ark();
        cmd.args(["ark", "run", "changelog", "--with", with, "--ark"])
            .arg(&archive)
            .arg("--workspace")
            .arg(tmp.path().join("ws"))
            // The compiled cache under it: one compilation of the big
            // component for the three runs.
            .arg("--target-dir")
            .arg(tmp.path().join("target"));
        cmd
    };
    run(r#"{"commits": ["feat: matrix builds", "fix(api): 409 on conflict", "docs: typo"], "title": "v2.0.0"}"#)
        .assert()
        .success()
        .stdout(predicate::str::contains("# v2.0.0"))
        .stdout(predicate::str::contains("## Features"))
        .stdout(predicate::str::contains("- matrix builds"))
        .stdout(predicate::str::contains("- 409 on conflict"));
    // Config errors from the Python SDK name the field, as a Rust step's do.
    run(r#"{"commits": ["feat: a", 3]}"#)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "invalid configuration at `commits[1]`: expected a string, found a number",
        ));
    run(r#"{"commits": ["feat: a"], "titel": "x"}"#)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "invalid configuration at `titel`: unknown setting `titel`; expected one of commits, range, title",
        ));
    run(r#"{"commits": []}"#)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "no commits: nothing to put in a changelog",
        ));

    // Commits from `git log` through the SDK's `process` wrapper: refused
    // without the grant (the SDK's `Denied`, caught by the step), read with it.
    let repo = git_repo(tmp.path(), &["feat: from git", "fix: also from git"]);
    let from_git = |grant| run_in_repo("changelog", r#"{"range": "HEAD"}"#, &archive, &repo, grant);
    from_git(false)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "`range` reads commits with git, which this biz may not run: capability `process` denied",
        ));
    from_git(true)
        .assert()
        .success()
        .stdout(predicate::str::contains("- from git"))
        .stdout(predicate::str::contains("- also from git"))
        .stdout(predicate::str::contains("count = 2"));
}

#[test]
fn a_javascript_step_is_built_with_componentize_js_packaged_and_run() {
    require(
        "componentize-js",
        "npm install -g @bytecodealliance/componentize-js@0.23.0",
    );
    // The SDK's own tests, under plain Node.
    succeeds(&["node", "--test", "test/"], &repo("plugins/sdk-js"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = build_and_package("semver-js", "JavaScript", tmp.path());
    let ark = Ark::open(&archive).expect("reads back");
    assert_eq!(ark.manifest.build.language.as_deref(), Some("JavaScript"));
    let schema = ark.step_schema("bump").expect("schema from describe()");
    assert_eq!(schema["required"], serde_json::json!(["current"]));

    let run = |with: &str| {
        let mut cmd = cargo_ark();
        cmd.args(["ark", "run", "bump", "--with", with, "--ark"])
            .arg(&archive)
            .arg("--workspace")
            .arg(tmp.path().join("ws"))
            // The compiled cache under it: one compilation of the big
            // component for the three runs.
            .arg("--target-dir")
            .arg(tmp.path().join("target"));
        cmd
    };
    run(r#"{"current": "1.4.2", "commits": ["fix: a", "feat(api): b"]}"#)
        .assert()
        .success()
        .stdout(predicate::str::contains("version = 1.5.0"))
        .stdout(predicate::str::contains("level = minor"));
    run(r#"{"current": "1.4.2", "commits": ["refactor!: drop the v1 API"]}"#)
        .assert()
        .success()
        .stdout(predicate::str::contains("version = 2.0.0"));
    // Config errors, the SDK's and the step's own, name their field.
    run(r#"{"current": "x", "commits": []}"#)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "invalid configuration at `current`: `x` is not MAJOR.MINOR.PATCH",
        ));
    run(r#"{"current": "1.0.0", "commits": [3]}"#)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "invalid configuration at `commits[0]`: expected a string, found a number",
        ));

    // Messages from `git log` through the SDK's `runProcess`: without the
    // grant the host's refusal reaches the step as a `HostError` of kind
    // `denied`, the same error a Rust step gets; with it, the bump.
    let repo = git_repo(
        tmp.path(),
        &["fix: a", "feat: from git\n\nBREAKING CHANGE: all of it"],
    );
    let from_git = |grant| {
        run_in_repo(
            "bump",
            r#"{"current": "1.4.2", "range": "HEAD"}"#,
            &archive,
            &repo,
            grant,
        )
    };
    from_git(false)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "`range` reads commits with git, which this biz may not run (denied): capability `process` denied",
        ));
    from_git(true)
        .assert()
        .success()
        .stdout(predicate::str::contains("version = 2.0.0"))
        .stdout(predicate::str::contains("level = major"));
}

#[test]
fn new_python_and_js_projects_test_build_package_and_run_as_scaffolded() {
    for (lang, tool, install, unit) in [
        (
            "python",
            "componentize-py",
            "pip install componentize-py==0.25.1",
            &["python3", "-m", "unittest", "discover", "-s", "tests"][..],
        ),
        (
            "js",
            "componentize-js",
            "npm install -g @bytecodealliance/componentize-js@0.23.0",
            &["node", "--test", "test/"][..],
        ),
    ] {
        require(tool, install);
        let tmp = tempfile::tempdir().expect("tempdir");
        let name = format!("hello-{lang}");
        let dir = tmp.path().join(&name);
        cargo_ark()
            .args(["ark", "new", "--lang", lang])
            .arg(&dir)
            .assert()
            .success()
            .stderr(predicate::str::contains("Created step plugin"));
        for file in [
            "Ark.toml",
            "build.sh",
            "README.md",
            "wit/world.wit",
            "wit/capabilities.wit",
        ] {
            assert!(dir.join(file).is_file(), "{lang}: {file}");
        }
        // The scaffold's tests, then its build, as its README says.
        succeeds(unit, &dir);
        succeeds(&["sh", "build.sh"], &dir);
        cargo_ark()
            .args(["ark", "package", "--component"])
            .arg(dir.join(format!("{name}.wasm")))
            .assert()
            .success();
        cargo_ark()
            .args([
                "ark",
                "run",
                "hello",
                "--with",
                r#"{"name": "world", "shout": true}"#,
                "--ark",
            ])
            .arg(dir.join(format!("target/ark/{name}-0.1.0.ark")))
            .arg("--workspace")
            .arg(tmp.path().join("ws"))
            .assert()
            .success()
            .stdout(predicate::str::contains("greeting = HELLO, WORLD!"));
    }
}

#[test]
fn a_component_of_another_world_is_refused_naming_what_it_exports() {
    require(
        "componentize-js",
        "npm install -g @bytecodealliance/componentize-js@0.23.0",
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("wit")).expect("mkdir");
    std::fs::write(
        dir.join("wit/other.wit"),
        "package test:other@0.1.0;\n\nworld other {\n  export greet: func() -> string;\n}\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("app.js"),
        "export function greet() { return \"hello\"; }\n",
    )
    .expect("write");
    let built = arkline_testkit::offline("componentize-js")
        .args([
            "app.js",
            "--wit",
            "wit",
            "-n",
            "other",
            "-d",
            "http",
            "fetch-event",
            "-o",
            "other.wasm",
        ])
        .current_dir(dir)
        .output()
        .expect("runs componentize-js");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::write(
        dir.join("Ark.toml"),
        "name = \"other\"\nversion = \"0.1.0\"\n",
    )
    .expect("write");
    cargo_ark()
        .args(["ark", "package", "--component"])
        .arg(dir.join("other.wasm"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "does not export the step world: it has no `arkline:step/plugin@<version>` export (its exports: greet)",
        ))
        .stderr(predicate::str::contains("the `step` world of arkline's WIT"));
}
