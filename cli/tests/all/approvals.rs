//! Approval gates through `arkline serve` and `arkline ctl`: the wait survives
//! a SIGKILL of the server, a token that is not an approver is refused (403)
//! and one of the gate's group approves after the restart; a rejection fails
//! the execution and runs `finally`.

use std::path::Path;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use crate::ctl::ctl;
use crate::support::server::{LIMIT, Server, arkc, faults};

const ADMIN: &str = "admin-token-0123456789abcdef";
const ALICE: &str = "alice-token-0123456789abcdef";

const GATED: &str = r#"name: release
stages:
  - name: gate
    steps:
      - name: sign-off
        approval:
          message: ship it?
          approvers: ["group:release"]
  - name: ship
    steps:
      - name: up
        uses: faults/upper
        with: { text: "${{ steps.sign-off.outputs.approved_by }}" }
finally:
  - name: tidy
    uses: faults/upper
    with: { text: tidy }
"#;

fn tokens(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        "[[tokens]]\nname = \"admin\"\ntoken = \"{ADMIN}\"\nengines = [\"*\"]\naccess = \"write\"\n\n\
         [[tokens]]\nname = \"alice\"\ntoken = \"{ALICE}\"\nengines = [\"team-a\"]\naccess = \"write\"\ngroups = [\"release\"]\n"
    );
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).expect("writes the tokens file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("private");
    path
}

fn execution(server: &Server, name: &str) -> serde_json::Value {
    let out = ctl(server, ADMIN)
        .args(["--json", "exec", "get", name])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).expect("--json is JSON")
}

fn step<'a>(exec: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    exec["status"]["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["steps"].as_array().into_iter().flatten())
        .chain(exec["status"]["finally"].as_array().into_iter().flatten())
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {exec:#}"))
}

fn until(
    server: &Server,
    name: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let exec = execution(server, name);
        if done(&exec) {
            return exec;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {what} never happened: {exec:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start(server: &Server) -> String {
    let out = ctl(server, ADMIN)
        .args(["--json", "exec", "start", "release"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let exec: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    exec["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_owned()
}

fn waiting(exec: &serde_json::Value) -> bool {
    step(exec, "sign-off")["phase"] == "Running"
}

#[test]
fn an_approval_survives_a_sigkill_and_is_approved_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens(dir.path());
    let tokens = tokens.to_str().expect("utf-8");
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--tokens", tokens]);
    let app = dir.path().join("app.arkc");
    std::fs::write(
        &app,
        arkc("team-a", faults(), &[], &[("release.yaml", GATED)]),
    )
    .expect("writes");
    ctl(&server, ADMIN)
        .args(["engine", "add"])
        .arg(&app)
        .assert()
        .success();

    let name = start(&server);
    let exec = until(&server, &name, "the gate waits", waiting);
    assert!(
        step(&exec, "sign-off")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ship it?")),
        "{exec:#}"
    );
    let killed = Process::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    drop(server);

    let server = Server::start(&data, &["--tokens", tokens]);
    let exec = until(&server, &name, "the gate waits again", waiting);
    assert_eq!(exec["status"]["phase"], "Running", "{exec:#}");
    // The admin token may write to the engine but is no approver of this
    // gate: forbidden (403).
    let refused = ctl(&server, ADMIN)
        .args(["exec", "approve", &name, "sign-off"])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let refused = String::from_utf8_lossy(&refused);
    assert!(
        refused.contains("error[forbidden]")
            && refused.contains("`admin` is not one of its approvers"),
        "{refused}"
    );
    let out = ctl(&server, ALICE)
        .args(["exec", "approve", &name, "sign-off", "--comment", "go"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert!(String::from_utf8_lossy(&out).contains("approved `sign-off`"));
    let done = until(&server, &name, "it finishes", |e| {
        e["status"]["phase"] != "Running"
            && e["status"]["phase"] != "Pending"
            && e["status"]["phase"] != "Queued"
    });
    assert_eq!(done["status"]["phase"], "Succeeded", "{done:#}");
    let gate = step(&done, "sign-off");
    assert_eq!(gate["approval"]["by"], "alice");
    assert_eq!(gate["approval"]["comment"], "go");
    assert_eq!(done["status"]["outputs"]["up"]["text"], "ALICE");

    // A rejection fails the execution; `finally` still runs.
    let name = start(&server);
    until(&server, &name, "the gate waits", waiting);
    ctl(&server, ALICE)
        .args([
            "exec",
            "reject",
            &name,
            "sign-off",
            "--comment",
            "not today",
        ])
        .assert()
        .success();
    let done = until(&server, &name, "it finishes", |e| {
        e["status"]["phase"] == "Failed" || e["status"]["phase"] == "Succeeded"
    });
    assert_eq!(done["status"]["phase"], "Failed", "{done:#}");
    assert!(
        step(&done, "sign-off")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("rejected by `alice`: not today")),
        "{done:#}"
    );
    assert_eq!(step(&done, "up")["phase"], "Skipped");
    assert_eq!(step(&done, "tidy")["phase"], "Succeeded");
    // Decided already: a conflict (409).
    let late = ctl(&server, ALICE)
        .args(["exec", "approve", &name, "sign-off"])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    assert!(
        String::from_utf8_lossy(&late).contains("error[conflict]"),
        "{}",
        String::from_utf8_lossy(&late)
    );
}
