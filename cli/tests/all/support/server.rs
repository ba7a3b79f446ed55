//! A real `arkline serve` child process on 127.0.0.1 with an ephemeral port, and
//! the fixtures the serve and ctl tests share (the faults biz, .arkc files,
//! tokens).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arkline::ark::{Ark, write_ark};
use arkline::container::archive::pipeline_path;
use arkline::container::archive::{
    BizRef, CONTAINER_FORMAT_VERSION, ContainerManifest, EngineSpec, write_container,
};
use arkline::model::PipelineSettingSpec;

/// Generous: the first start compiles components.
pub const LIMIT: Duration = Duration::from_secs(180);

pub const ADMIN: &str = "admin-token-0123456789abcdef";
pub const READER: &str = "reader-token-0123456789abcdef";
pub const TEAM_A: &str = "team-a-token-0123456789abcdef";

/// Tokens: `admin` (write, every engine), `reader` (read, every engine),
/// `team-a` (write, team-a only; given by its SHA-256).
pub fn write_tokens(dir: &Path) -> PathBuf {
    use sha2::Digest;
    let team_a = hex::encode(sha2::Sha256::digest(TEAM_A.as_bytes()));
    let text = format!(
        "[[tokens]]\nname = \"admin\"\ntoken = \"{ADMIN}\"\nengines = [\"*\"]\naccess = \"write\"\n\n\
         [[tokens]]\nname = \"reader\"\ntoken = \"{READER}\"\nengines = [\"*\"]\naccess = \"read\"\n\n\
         [[tokens]]\nname = \"team-a\"\nsha256 = \"{team_a}\"\nengines = [\"team-a\"]\naccess = \"write\"\n"
    );
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).expect("writes the tokens file");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("the tokens file is private");
    path
}

/// The faults biz, built once per test binary.
pub fn faults() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        std::fs::read(arkline_testkit::plugin("faults")).expect("the faults archive reads")
    })
}

/// The version the faults biz was built with.
pub fn faults_version() -> semver::Version {
    Ark::from_bytes(faults())
        .expect("faults reads")
        .manifest
        .version
}

/// The faults component repackaged as `version`.
pub fn faults_as(version: &str) -> Vec<u8> {
    let ark = Ark::from_bytes(faults()).expect("faults reads");
    let mut manifest = ark.manifest.clone();
    manifest.version = semver::Version::parse(version).expect("version");
    write_ark(manifest, &ark.component, &ark.files)
        .expect("rewrites")
        .0
}

/// The faults component with a custom section appended: the same
/// `name@version` as [`faults`], other component bytes.
pub fn faults_other_component() -> Vec<u8> {
    let ark = Ark::from_bytes(faults()).expect("faults reads");
    let mut component = ark.component.to_vec();
    // Custom section: id 0, size 3, name "x" (length 1), payload "y".
    component.extend_from_slice(&[0x00, 0x03, 0x01, b'x', b'y']);
    write_ark(ark.manifest.clone(), &component, &ark.files)
        .expect("rewrites")
        .0
}

/// An `.arkc` with one engine holding `biz` (its bytes) with `grants`, and `pipelines`
/// (file name → YAML).
pub fn arkc(engine: &str, biz: &[u8], grants: &[&str], pipelines: &[(&str, &str)]) -> Vec<u8> {
    let ark = Ark::from_bytes(biz).expect("the biz reads");
    let (name, version) = (ark.manifest.name.clone(), ark.manifest.version.clone());
    let manifest = ContainerManifest {
        format_version: CONTAINER_FORMAT_VERSION,
        name: format!("{engine}-app"),
        version: semver::Version::new(1, 0, 0),
        engines: vec![EngineSpec {
            name: engine.into(),
            trusted_keys: vec![],
            require_signed: false,
            bizes: vec![BizRef {
                name: name.clone(),
                version: version.clone(),
                grants: grants.iter().map(|g| (*g).to_owned()).collect(),
                active: true,
            }],
            pipelines: vec![],
            settings: PipelineSettingSpec::default(),
        }],
        shared_bizes: vec![],
        files: vec![],
    };
    let bizes = BTreeMap::from([((name, version), biz.to_vec())]);
    let pipelines = pipelines
        .iter()
        .map(|(file, yaml)| {
            (
                (engine.to_owned(), pipeline_path(engine, file)),
                (*yaml).to_owned(),
            )
        })
        .collect();
    write_container(manifest, &bizes, &pipelines)
        .expect("the container archive writes")
        .0
}

/// A running `arkline serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Everything it wrote on stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `arkline serve --data-dir <data> --listen 127.0.0.1:0 <args>` and
    /// waits until it is ready.
    pub fn start(data: &Path, args: &[&str]) -> Server {
        Self::start_with_env(data, args, &[])
    }

    /// [`Server::start`] with these environment variables set.
    pub fn start_with_env(data: &Path, args: &[&str], env: &[(String, String)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_arkline"))
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("arkline serve starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + LIMIT;
        let mut server = Server {
            child,
            url: String::new(),
            stderr: log,
            lines,
        };
        server.url = server
            .wait_line(deadline, |l| {
                l.strip_prefix("listening on ").map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no listening line; stderr: {:#?}", server.stderr()));
        server
            .wait_line(deadline, |l| (l == "ready").then_some(()))
            .unwrap_or_else(|| panic!("not ready; stderr: {:#?}", server.stderr()));
        server
    }

    fn wait_line<T>(&mut self, deadline: Instant, want: impl Fn(&str) -> Option<T>) -> Option<T> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(v) = want(&line) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits, at most `limit`, for the server to exit on its own.
    pub fn wait_exit(mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The reader thread ends with the pipe; wait for the last lines.
                while self.lines.recv_timeout(Duration::from_secs(5)).is_ok() {}
                return (status, self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "arkline serve did not exit within {limit:?}; stderr: {:#?}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(self) -> (ExitStatus, Vec<String>) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        self.wait_exit(LIMIT)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` until it returns `Some`, failing with `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
