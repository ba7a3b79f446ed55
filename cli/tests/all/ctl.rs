//! `arkline ctl` against a real `arkline serve`: the commands people type, their
//! tables and `--json`, and API errors printed with their code and a non-zero
//! exit.

use assert_cmd::Command;
use predicates::prelude::*;

use crate::support::server::{
    ADMIN, READER, Server, TEAM_A, arkc, faults, faults_as, faults_version, write_tokens,
};

const QUICK: &str = "name: quick\nparams:\n  - name: text\nstages:\n  - name: s\n    steps:\n      - name: up\n        uses: faults/upper\n        with: { text: \"${{ params.text }}\" }\n      - name: say\n        uses: faults/print\n        with: { stdout: \"said ${{ params.text }}\\n\", stderr: \"\" }\n";
const FAILS: &str = "name: fails\nstages:\n  - name: s\n    steps:\n      - name: boom\n        uses: faults/fail\n        with: { message: kaboom }\n";

pub(crate) fn ctl(server: &Server, token: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arkline"));
    cmd.arg("ctl")
        .env("ARKLINE_SERVER", &server.url)
        .env("ARKLINE_TOKEN", token)
        .env("ARKLINE_ENGINE", "team-a")
        .env_remove("RUST_BACKTRACE");
    cmd
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.assert().success().get_output().stdout.clone();
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn ctl_drives_a_server_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &["--tokens", tokens.to_str().expect("utf-8")],
    );
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("writes");
        path
    };
    let app = write("app.arkc", &arkc("team-a", faults(), &[], &[]));
    let other = write("other.arkc", &arkc("team-b", faults(), &[], &[]));
    let v9 = write("faults-9.ark", &faults_as("9.0.0"));
    let quick = write("quick.yaml", QUICK.as_bytes());
    let fails = write("fails.yaml", FAILS.as_bytes());
    let broken = write("broken.yaml", b"name: broken\nstages: 12\n");
    let version = faults_version().to_string();

    // Engines.
    let out = stdout(ctl(&server, ADMIN).args(["engine", "add"]).arg(&app));
    assert!(
        out.contains("deployed team-a-app@1.0.0: engines team-a"),
        "{out}"
    );
    stdout(ctl(&server, ADMIN).args(["engine", "add"]).arg(&other));
    let out = stdout(ctl(&server, READER).args(["engine", "list"]));
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "BIZES", "PIPELINES"],
            vec!["team-a", "1", "0"],
            vec!["team-b", "1", "0"]
        ]
    );
    let out = stdout(ctl(&server, ADMIN).args(["engine", "remove", "team-b"]));
    assert!(out.contains("removed engine team-b"));
    let json = stdout(ctl(&server, READER).args(["--json", "engine", "list"]));
    let engines: serde_json::Value = serde_json::from_str(&json).expect("--json is JSON");
    assert_eq!(
        engines,
        serde_json::json!([{"name": "team-a", "bizes": 1, "pipelines": 0}])
    );

    // Bizes: install without activating, switch, uninstall.
    let out = stdout(
        ctl(&server, TEAM_A)
            .args(["biz", "install", "--no-activate", "--grant", "cache"])
            .arg(&v9),
    );
    assert!(out.contains("installed faults@9.0.0 (resolved)"), "{out}");
    let out = stdout(ctl(&server, TEAM_A).args(["biz", "switch", "faults", "9.0.0"]));
    assert!(out.contains("faults@9.0.0 is activated"), "{out}");
    let out = stdout(ctl(&server, READER).args(["biz", "list"]));
    assert!(
        out.lines().any(|l| l.starts_with("faults")
            && l.contains("9.0.0")
            && l.contains("activated")
            && l.ends_with("cache")),
        "{out}"
    );
    let out = stdout(ctl(&server, TEAM_A).args(["biz", "uninstall", "faults", &version]));
    assert!(
        out.contains(&format!("uninstalled faults@{version}")),
        "{out}"
    );

    // Pipelines and executions.
    let out = stdout(
        ctl(&server, TEAM_A)
            .args(["pipeline", "apply"])
            .arg(&quick)
            .arg(&fails),
    );
    assert!(
        out.contains("applied pipeline quick") && out.contains("applied pipeline fails"),
        "{out}"
    );
    ctl(&server, TEAM_A)
        .args(["pipeline", "apply"])
        .arg(&broken)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[invalid_pipeline]"));
    let out = stdout(ctl(&server, READER).args(["pipeline", "list"]));
    assert!(out.contains("fails") && out.contains("quick"), "{out}");
    let out = stdout(ctl(&server, TEAM_A).args([
        "exec",
        "start",
        "quick",
        "--param",
        "text=hello",
        "--wait",
    ]));
    assert!(out.contains("quick-1  Succeeded"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("s") && l.contains("up") && l.contains("Succeeded")),
        "{out}"
    );
    let out = stdout(ctl(&server, READER).args(["exec", "logs", "quick-1", "say"]));
    assert_eq!(
        out.lines().filter(|l| *l == "said hello").count(),
        1,
        "{out}"
    );
    let out = stdout(ctl(&server, READER).args(["exec", "logs", "quick-1", "say", "-f"]));
    assert!(
        out.lines().any(|l| l == "said hello"),
        "a finished step's stream ends: {out}"
    );
    ctl(&server, TEAM_A)
        .args(["exec", "start", "fails", "--wait"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("fails-1  Failed"));
    ctl(&server, TEAM_A)
        .args(["exec", "start", "quick"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("error[bad_request]").and(predicate::str::contains("text")),
        );
    let out = stdout(ctl(&server, READER).args(["exec", "list"]));
    assert!(out.contains("quick-1") && out.contains("fails-1"), "{out}");
    let out = stdout(ctl(&server, READER).args(["exec", "get", "fails-1"]));
    assert!(out.contains("Failed") && out.contains("boom"), "{out}");

    // Secrets: from stdin, names listed, values never shown.
    let out = stdout(
        ctl(&server, TEAM_A)
            .args(["secret", "set", "token"])
            .write_stdin("s3cr3t-value\n"),
    );
    assert!(out.contains("set secret token"));
    let out = stdout(ctl(&server, READER).args(["--json", "secret", "list"]));
    assert!(
        out.contains("\"token\"") && !out.contains("s3cr3t"),
        "{out}"
    );

    // Errors: the code and the message, exit 1.
    ctl(&server, "wrong-token-0123456789")
        .args(["engine", "list"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[unauthorized]"));
    ctl(&server, READER)
        .args(["biz", "install"])
        .arg(&v9)
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("error[forbidden]")
                .and(predicate::str::contains("`read` access")),
        );
    ctl(&server, TEAM_A)
        .args(["--engine", "team-b", "exec", "list"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[forbidden]"));
    ctl(&server, ADMIN)
        .args(["exec", "get", "nope-1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[not_found]"));
    ctl(&server, ADMIN)
        .env_remove("ARKLINE_ENGINE")
        .args(["biz", "list"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--engine NAME"));
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn ctl_reruns_an_execution_and_waits_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path());
    let app = dir.path().join("app.arkc");
    std::fs::write(
        &app,
        arkc(
            "team-a",
            faults(),
            &[],
            &[("quick.yaml", QUICK), ("fails.yaml", FAILS)],
        ),
    )
    .expect("writes");
    let server = Server::start(
        &dir.path().join("data"),
        &[
            app.to_str().expect("utf-8"),
            "--tokens",
            tokens.to_str().expect("utf-8"),
        ],
    );
    stdout(ctl(&server, TEAM_A).args(["exec", "start", "quick", "-p", "text=once", "--wait"]));

    let out = stdout(ctl(&server, TEAM_A).args(["--json", "exec", "rerun", "quick-1", "--wait"]));
    let done: serde_json::Value = serde_json::from_str(&out).expect("--json is JSON");
    assert_eq!(done["metadata"]["name"], "quick-2", "{done}");
    assert_eq!(
        done["metadata"]["labels"]["arkline.dev/rerun-of"],
        "quick-1"
    );
    assert_eq!(done["spec"]["params"], serde_json::json!({"text": "once"}));
    assert_eq!(done["status"]["phase"], "Succeeded", "{done}");
    let out = stdout(ctl(&server, READER).args(["exec", "logs", "quick-2", "say"]));
    assert!(out.lines().any(|l| l == "said once"), "{out}");

    // Without --wait it says what it started; with it, a failure is exit 1.
    let out = stdout(ctl(&server, TEAM_A).args(["exec", "rerun", "quick-1"]));
    assert!(out.starts_with("started quick-3 ("), "{out}");
    assert!(out.contains("a rerun of quick-1"), "{out}");
    ctl(&server, TEAM_A)
        .args(["exec", "start", "fails", "--wait"])
        .assert()
        .code(1);
    ctl(&server, TEAM_A)
        .args(["exec", "rerun", "fails-1", "--wait"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("fails-2  Failed"));

    ctl(&server, TEAM_A)
        .args(["exec", "rerun", "nope-1"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("error[not_found]").and(predicate::str::contains("nope-1")),
        );
    ctl(&server, READER)
        .args(["exec", "rerun", "quick-1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("error[forbidden]"));
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn ctl_says_when_no_server_answers() {
    Command::new(env!("CARGO_BIN_EXE_arkline"))
        .args([
            "ctl",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            READER,
            "engine",
            "list",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot reach the arkline server at http://127.0.0.1:9",
        ));
}

#[test]
fn ctl_reads_and_replaces_an_engines_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path());
    let server = Server::start(
        &dir.path().join("data"),
        &["--tokens", tokens.to_str().expect("utf-8")],
    );
    let app = dir.path().join("app.arkc");
    std::fs::write(&app, arkc("team-a", faults(), &[], &[])).expect("writes");
    ctl(&server, ADMIN)
        .args(["engine", "add"])
        .arg(&app)
        .assert()
        .success();
    let settings = |out: String| -> serde_json::Value {
        serde_json::from_str(&out).expect("the settings are JSON")
    };
    let before = settings(stdout(ctl(&server, READER).args(["engine", "settings"])));
    assert_eq!(before["executor_quota"], 0, "{before}");
    assert!(before.get("forge").is_none(), "{before}");

    let file = dir.path().join("settings.json");
    let wanted = serde_json::json!({
        "executor_quota": 3,
        "forge": {"kind": "gitea", "api_url": "https://gitea.example.com/api/v1", "token_secret": "gitea-token"},
    });
    std::fs::write(&file, wanted.to_string()).expect("writes");
    let after = settings(stdout(
        ctl(&server, ADMIN)
            .args(["engine", "settings", "--set"])
            .arg(&file),
    ));
    assert_eq!(after["executor_quota"], 3, "{after}");
    assert_eq!(after["forge"]["kind"], "gitea", "{after}");
    let read = settings(stdout(ctl(&server, READER).args(["engine", "settings"])));
    assert_eq!(read, after);

    // A read token may not write; a field out of range is named; neither changes anything.
    ctl(&server, READER)
        .args(["engine", "settings", "--set"])
        .arg(&file)
        .assert()
        .failure()
        .stderr(predicate::str::contains("error[forbidden]"));
    std::fs::write(
        &file,
        serde_json::json!({"forge": {"kind": "github", "api_url": "ftp://x", "token_secret": "t"}})
            .to_string(),
    )
    .expect("writes");
    ctl(&server, ADMIN)
        .args(["engine", "settings", "--set"])
        .arg(&file)
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("error[bad_request]")
                .and(predicate::str::contains("`forge.api_url` is `ftp://x`")),
        );
    assert_eq!(
        settings(stdout(ctl(&server, READER).args(["engine", "settings"]))),
        after
    );
}
