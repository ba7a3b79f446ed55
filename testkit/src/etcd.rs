//! Real etcd for tests: a private single-member server per test
//! ([`EtcdServer::start`]), or the 3-member cluster `.ci/etcd.sh` starts on
//! loopback ([`cluster_endpoints`]).
//!
//! A test that needs etcd and finds no `etcd` binary (or no cluster) fails
//! with a message that says how to get one; it never skips silently.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the test cluster's client URLs
/// (comma-separated), set by `.ci/etcd.sh`.
pub const CLUSTER_ENV: &str = "ARKLINE_TEST_ETCD";

/// A private etcd server on loopback, with its data in a temporary directory;
/// killed and removed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a loopback port")
}

fn etcd_binary() -> PathBuf {
    let path = std::env::var_os("ARKLINE_ETCD_BIN").map_or_else(|| "etcd".into(), PathBuf::from);
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => path,
        _ => panic!(
            "this test needs the `etcd` server binary ({}), which is missing: install it \
             (Debian: apt-get install etcd-server etcd-client) or set ARKLINE_ETCD_BIN; \
             `bash .ci/run` installs it",
            path.display()
        ),
    }
}

/// Whether `GET /health` on `port` answers healthy.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

impl EtcdServer {
    /// Starts a fresh single-member etcd on free loopback ports and waits
    /// until it is healthy. Panics, saying what to install, without `etcd`.
    pub fn start() -> Self {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        Self::start_in(&base)
    }

    /// As [`EtcdServer::start`], with the data in a new directory under
    /// `base` (on disk, for a benchmark that compares it with redb).
    pub fn start_in(base: &std::path::Path) -> Self {
        let binary = etcd_binary();
        let mut last_error = String::new();
        for attempt in 0..5 {
            let dir = base.join(format!(
                "arkline-etcd-{}-{}-{attempt}",
                std::process::id(),
                unique()
            ));
            let (client_port, peer_port) = (free_port(), free_port());
            let mut server = Self {
                child: None,
                dir: dir.clone(),
                client_port,
                peer_port,
            };
            let log = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::File::create(dir.join("etcd.log")))
                .expect("cannot create the etcd data dir");
            let child = Command::new(&binary)
                .args(server.args(&dir))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            server.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if healthy(client_port) {
                    return server;
                }
                if let Some(Ok(Some(_))) = server.child.as_mut().map(Child::try_wait) {
                    break; // exited: a port was taken; try others
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            last_error = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
        }
        panic!("etcd did not become healthy after 5 attempts; its last log:\n{last_error}");
    }

    fn args(&self, dir: &std::path::Path) -> Vec<String> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        self.member_args(dir, "test", &format!("test={peer}"))
    }

    fn member_args(&self, dir: &std::path::Path, name: &str, cluster: &str) -> Vec<String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        vec![
            "--name".into(),
            name.into(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--listen-client-urls".into(),
            client.clone(),
            "--advertise-client-urls".into(),
            client,
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            cluster.into(),
            "--initial-cluster-state".into(),
            "new".into(),
            "--log-level".into(),
            "warn".into(),
        ]
    }

    /// The client URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The store URL arkline takes (`etcd://127.0.0.1:41234`).
    pub fn store_url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// Kills the server with SIGKILL and waits for it (its data stays until drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private etcd cluster of several members on loopback (to kill one of
/// them in a test); every member is killed and removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in order.
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy (a quorum
    /// elected a leader).
    pub fn start(n: usize) -> Self {
        let binary = etcd_binary();
        let mut last_error = String::new();
        for attempt in 0..3 {
            let token = format!("arkline-test-{}-{}-{attempt}", std::process::id(), unique());
            let mut members: Vec<EtcdServer> = (0..n)
                .map(|i| EtcdServer {
                    child: None,
                    dir: std::env::temp_dir().join(format!("{token}-m{i}")),
                    client_port: free_port(),
                    peer_port: free_port(),
                })
                .collect();
            let cluster = members
                .iter()
                .enumerate()
                .map(|(i, m)| format!("m{i}=http://127.0.0.1:{}", m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            for (i, m) in members.iter_mut().enumerate() {
                std::fs::create_dir_all(&m.dir).expect("cannot create an etcd data dir");
                let log = std::fs::File::create(m.dir.join("etcd.log")).expect("etcd log");
                let mut args = m.member_args(&m.dir, &format!("m{i}"), &cluster);
                args.extend(["--initial-cluster-token".into(), token.clone()]);
                m.child = Some(
                    Command::new(&binary)
                        .args(args)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(log)
                        .spawn()
                        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display())),
                );
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if members.iter().all(|m| healthy(m.client_port)) {
                    return Self { members };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_error =
                std::fs::read_to_string(members[0].dir.join("etcd.log")).unwrap_or_default();
        }
        panic!("the etcd test cluster did not become healthy; a member's log:\n{last_error}");
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdServer::endpoint).collect()
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The client URLs of the shared 3-member test cluster, from
/// [`CLUSTER_ENV`]. Panics, saying how to start it, when unset.
pub fn cluster_endpoints() -> Vec<String> {
    match std::env::var(CLUSTER_ENV) {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_owned()).collect(),
        _ => panic!(
            "this test needs the 3-member etcd test cluster: start it with \
             `eval \"$(bash .ci/etcd.sh start)\"` (it sets {CLUSTER_ENV}), or run `bash .ci/run`"
        ),
    }
}
