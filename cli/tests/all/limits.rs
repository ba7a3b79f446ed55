//! The connection limits of `arkline serve` against the real binary on
//! loopback, with short timeouts set by flags: clients that stall in their
//! headers or body, or sit idle, are disconnected; connections past the cap are
//! refused while a fresh client is served once others go. Bounds are generous
//! and only say "closed rather than held forever": no durations are asserted.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::support::server::{Server, eventually};

/// Far above every timeout the tests set: reaching it means the server held
/// the connection.
const HELD: Duration = Duration::from_secs(60);

fn short_timeouts(data: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec![
        "--insecure-no-auth",
        "--header-timeout",
        "1s",
        "--body-timeout",
        "1s",
        "--idle-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    Server::start(data, &args)
}

fn connect(server: &Server) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(HELD)).expect("read timeout");
    stream
}

/// Reads until the server closes the connection; answers what it sent. Fails
/// when the connection is still open after [`HELD`].
fn read_until_closed(stream: &mut TcpStream, what: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is a close too (the server dropped unread input).
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "{what}: the server still holds the connection after {HELD:?}; it sent {:?}",
                    String::from_utf8_lossy(&got)
                )
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn clients_stalling_in_their_headers_or_body_or_idle_are_disconnected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = short_timeouts(&dir.path().join("data"), &[]);

    // Connected, nothing sent.
    let mut silent = connect(&server);
    assert_eq!(read_until_closed(&mut silent, "a silent client"), "");

    // Half a request line and one header, then nothing.
    let mut partial = connect(&server);
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("writes");
    let answer = read_until_closed(&mut partial, "a client stalling in its headers");
    assert!(
        !answer.contains(" 200 "),
        "a partial head is never answered: {answer}"
    );

    // A whole head announcing 100 bytes of body, then 12 bytes and nothing.
    let mut slow_body = connect(&server);
    slow_body
        .write_all(
            b"POST /hooks/team-a/build HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\n\
              X-Hub-Signature-256: sha256=0000000000000000000000000000000000000000000000000000000000000000\r\n\
              Content-Length: 100\r\n\r\n{\"ref\": \"ref",
        )
        .expect("writes");
    let answer = read_until_closed(&mut slow_body, "a client stalling in its body");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
        "cut off with a 408 or closed: {answer}"
    );
    if !answer.is_empty() {
        assert!(answer.contains("request_timeout"), "{answer}");
        assert!(answer.contains("--body-timeout"), "{answer}");
    }

    // One whole request, answered; then the keep-alive connection sits idle.
    let mut idle = connect(&server);
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("writes");
    let answer = read_until_closed(&mut idle, "an idle keep-alive client");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "the server kept the connection for a next request: {answer}"
    );

    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_and_a_fresh_client_is_served_once_others_go() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Long header and idle timeouts: the held connections stay until dropped.
    let server = Server::start(
        &dir.path().join("data"),
        &[
            "--insecure-no-auth",
            "--max-connections",
            "2",
            "--header-timeout",
            "10min",
            "--idle-timeout",
            "10min",
        ],
    );
    let held: Vec<TcpStream> = (0..2).map(|_| connect(&server)).collect();
    // Every further connection is refused at once: a 503 and a close, or a
    // reset when the request raced the close.
    for _ in 0..3 {
        let mut over = connect(&server);
        let _ = over.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let answer = read_until_closed(&mut over, "a connection over the cap");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503 "),
            "{answer}"
        );
    }
    drop(held);

    let http = reqwest::Client::new();
    let health = eventually("/healthz to answer once the held connections went", || {
        let http = http.clone();
        let url = format!("{}/healthz", server.url);
        async move {
            let resp = http.get(url).send().await.ok()?;
            (resp.status() == 200).then_some(())?;
            resp.json::<Value>().await.ok()
        }
    })
    .await;
    assert_eq!(health["status"], "ok");

    // Shutdown stays graceful with a keep-alive connection open.
    let _open = connect(&server);
    let (exit, stderr) = server.terminate();
    assert!(exit.success(), "{stderr:#?}");
    assert_eq!(
        stderr.last().map(String::as_str),
        Some("stopped"),
        "{stderr:#?}"
    );
}
