//! A real S3-compatible server for tests: `moto_server` (PyPI:
//! `moto[server]`) on a free loopback port, one per test, killed on drop.
//!
//! A test that needs it and finds no `moto_server` fails with a message that
//! says how to get one; it never skips silently.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running S3-compatible server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts `moto_server` (or `$ARKLINE_MOTO_BIN`) on a free loopback
    /// port and waits until it answers. Panics, saying what to install,
    /// without it.
    pub fn start() -> Self {
        let binary = std::env::var("ARKLINE_MOTO_BIN").unwrap_or_else(|_| "moto_server".into());
        let mut last = String::new();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("cannot bind a loopback port");
            let args = ["-H", "127.0.0.1", "-p", &port.to_string()];
            let spawn = |program: &str, prefix: &[&str]| {
                Command::new(program)
                    .args(prefix)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            };
            // The script, or the module where the script's directory is not
            // on PATH (a `pip install --user`).
            let child = spawn(&binary, &[])
                .or_else(|_| spawn("python3", &["-m", "moto.server"]))
                .unwrap_or_else(|e| {
                    panic!(
                        "this test needs an S3-compatible server, `{binary}` (PyPI: \
                         pip install 'moto[server]'; `bash .ci/deps.sh --test` installs it), \
                         which cannot start: {e}"
                    )
                });
            let mut server = S3Server { child, port };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if server.answers() {
                    return server;
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    last = format!("exited with {status}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!(
            "the S3-compatible server `{binary}` did not answer on loopback ({last}); \
             is it installed? (PyPI: pip install 'moto[server]'; `bash .ci/deps.sh --test` \
             installs it)"
        );
    }

    /// Whether it answers an HTTP request.
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.")
    }

    /// The endpoint, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` (path-style `PUT /bucket`).
    pub fn create_bucket(&self, bucket: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connects");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        write!(
            stream,
            "PUT /{bucket} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\r\n",
            self.port
        )
        .expect("sends");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "cannot create bucket {bucket}: {answer}"
        );
    }

    /// The settings an S3 client needs to reach it (`object_store`'s
    /// `aws_*` option names), with dummy credentials.
    pub fn client_options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".into()),
            ("aws_access_key_id", "test".into()),
            ("aws_secret_access_key", "test".into()),
            ("aws_region", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
