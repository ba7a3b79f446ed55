//! The `http` capability's engine against a real HTTP server on 127.0.0.1: what a
//! grant lets through, what it refuses (hosts, addresses, redirect hops), caps and
//! time limits, and what the guest's request may not control.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use arkline::host::http::{HttpClient, HttpError, HttpPolicy, HttpRequest, USER_AGENT};

/// A request as the server received it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with a request.
pub(crate) enum Reply {
    /// Writes these bytes, then closes the connection.
    Raw(Vec<u8>),
    /// Writes these bytes, then neither answers more nor closes until the client does.
    Hang(Vec<u8>),
}

/// A response with `Content-Length` and `Connection: close`.
pub(crate) fn reply(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut raw = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(body);
    Reply::Raw(raw)
}

fn redirect(status: &str, location: &str) -> Reply {
    reply(status, &[("Location", location)], b"")
}

/// A hand-rolled HTTP/1.1 server on 127.0.0.1, one thread per connection, recording
/// every request it reads.
pub(crate) struct TestServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    /// `handler` gets each request and the server's own port.
    pub(crate) fn start(handler: impl Fn(&Seen, u16) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let port = listener.local_addr().expect("local address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let record = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let handler = Arc::clone(&handler);
                let record = Arc::clone(&record);
                thread::spawn(move || serve_connection(stream, port, &*handler, &record));
            }
        });
        TestServer { port, seen }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn seen_targets(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.target).collect()
    }
}

fn serve_connection(
    stream: TcpStream,
    port: u16,
    handler: &(dyn Fn(&Seen, u16) -> Reply + Send + Sync),
    record: &Mutex<Vec<Seen>>,
) {
    let mut reader = BufReader::new(stream);
    let Some(request) = read_request(&mut reader) else {
        return;
    };
    record
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(request.clone());
    let mut stream = reader.into_inner();
    // Write errors mean the client gave up (e.g. over its cap): nothing to do.
    match handler(&request, port) {
        Reply::Raw(bytes) => {
            let _ = stream.write_all(&bytes);
        }
        Reply::Hang(bytes) => {
            let _ = stream.write_all(&bytes);
            let mut sink = [0; 1024];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        target,
        headers,
        body,
    })
}

fn policy(allowed: &[&str]) -> HttpPolicy {
    HttpPolicy::new(allowed.iter().map(|a| a.to_string()).collect())
}

fn client() -> HttpClient {
    HttpClient::new().expect("client builds")
}

/// The message of a `Denied`, or a panic saying what came instead.
fn denied<T: std::fmt::Debug>(result: Result<T, HttpError>) -> String {
    match result {
        Err(HttpError::Denied(message)) => message,
        other => panic!("expected Denied, got {other:?}"),
    }
}

fn invalid<T: std::fmt::Debug>(result: Result<T, HttpError>) -> String {
    match result {
        Err(HttpError::InvalidArgument(message)) => message,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn too_large<T: std::fmt::Debug>(result: Result<T, HttpError>) -> String {
    match result {
        Err(HttpError::TooLarge(message)) => message,
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

fn echo_server() -> TestServer {
    TestServer::start(|request, _| {
        let mut body = format!("{} {}\n", request.method, request.target).into_bytes();
        body.extend_from_slice(&request.body);
        reply(
            "200 OK",
            &[("X-Reply", "yes"), ("Set-Cookie", "session=abc; Path=/")],
            &body,
        )
    })
}

#[tokio::test]
async fn get_round_trip_carries_headers_and_no_state() {
    let server = echo_server();
    let client = client();
    let grant = policy(&["127.0.0.1"]);

    let response = client
        .send(
            &grant,
            HttpRequest::new("GET", server.url("/hello?x=1")).header("X-Test", "yes"),
        )
        .await
        .expect("GET succeeds");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-reply"), Some("yes"));
    assert_eq!(response.body, b"GET /hello?x=1\n");

    // A second request: the cookie the server set is not sent back.
    client
        .send(&grant, HttpRequest::new("GET", server.url("/again")))
        .await
        .expect("second GET succeeds");

    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("x-test"), Some("yes"));
    assert_eq!(
        seen[0].header("host"),
        Some(&*format!("127.0.0.1:{}", server.port))
    );
    assert_eq!(seen[0].header("user-agent"), Some(USER_AGENT));
    assert!(USER_AGENT.starts_with("arkline/"), "{USER_AGENT}");
    assert_eq!(
        seen[0].header("accept-encoding"),
        None,
        "no decompression negotiated"
    );
    assert_eq!(seen[1].header("cookie"), None, "no cookie store");
}

#[tokio::test]
async fn post_round_trip_sends_the_body_and_the_guests_user_agent() {
    let server = TestServer::start(|request, _| {
        let mut body = request.body.clone();
        body.reverse();
        reply(
            "201 Created",
            &[("Content-Type", "application/octet-stream")],
            &body,
        )
    });
    let response = client()
        .send(
            &policy(&["127.0.0.1"]),
            HttpRequest::new("POST", server.url("/upload"))
                .header("Content-Type", "text/plain")
                .header("User-Agent", "my-biz/2.0")
                .body(b"hello arkline".to_vec()),
        )
        .await
        .expect("POST succeeds");
    assert_eq!(response.status, 201);
    assert_eq!(response.body, b"enilkra olleh");
    assert_eq!(
        response.header("content-type"),
        Some("application/octet-stream")
    );

    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body, b"hello arkline");
    assert_eq!(seen[0].header("content-length"), Some("13"));
    assert_eq!(seen[0].header("content-type"), Some("text/plain"));
    assert_eq!(seen[0].header("user-agent"), Some("my-biz/2.0"));
}

#[tokio::test]
async fn a_host_outside_the_grant_is_denied_by_name() {
    let server = echo_server();
    let message = denied(
        client()
            .send(
                &policy(&["api.example.com", "*.example.org"]),
                HttpRequest::new("GET", server.url("/")),
            )
            .await,
    );
    assert!(
        message.contains("host `127.0.0.1` is not in the http grant"),
        "{message}"
    );
    assert!(
        message.contains("`api.example.com`, `*.example.org`"),
        "{message}"
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn loopback_is_reached_only_through_a_grant_that_names_it() {
    let server = echo_server();
    let client = client();
    let port = server.port;

    // `*` means any *public* host: an IP literal is refused before any connection.
    let message = denied(
        client
            .send(&policy(&["*"]), HttpRequest::new("GET", server.url("/")))
            .await,
    );
    assert!(message.contains("`127.0.0.1` is loopback"), "{message}");

    // A name is refused on the address it resolves to, by the client's resolver.
    let message = denied(
        client
            .send(
                &policy(&["*"]),
                HttpRequest::new("GET", format!("http://localhost:{port}/")),
            )
            .await,
    );
    // 127.0.0.1 or ::1, whichever the system resolver lists first.
    assert!(message.contains("`localhost` resolves to"), "{message}");
    assert!(message.contains("loopback"), "{message}");

    let message = denied(
        client
            .send(
                &policy(&["example.com"]),
                HttpRequest::new("GET", server.url("/")),
            )
            .await,
    );
    assert!(message.contains("not in the http grant"), "{message}");
    assert!(server.seen().is_empty());

    let by_address = client
        .send(
            &policy(&["127.0.0.1"]),
            HttpRequest::new("GET", server.url("/ip")),
        )
        .await
        .expect("granted by address");
    assert_eq!(by_address.status, 200);
    let by_name = client
        .send(
            &policy(&["localhost"]),
            HttpRequest::new("GET", format!("http://localhost:{port}/name")),
        )
        .await
        .expect("granted by name");
    assert_eq!(by_name.status, 200);
    assert_eq!(server.seen_targets(), ["/ip", "/name"]);
}

#[tokio::test]
async fn a_private_ip_literal_is_refused_without_connecting() {
    let client = client();
    // Nothing listens at these addresses: a connection attempt would end in a
    // timeout or a connection error, never in `Denied`.
    for (url, reason) in [
        ("http://10.0.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fd00:ec2::254]/", "unique local"),
        ("http://100.100.100.200/", "carrier-grade NAT"),
        ("http://0.0.0.0:8080/", "unspecified"),
    ] {
        let message = denied(
            client
                .send(
                    &policy(&["*"]),
                    HttpRequest::new("GET", url).timeout(Duration::from_secs(30)),
                )
                .await,
        );
        assert!(message.contains(reason), "{url}: {message}");
    }
}

#[tokio::test]
async fn an_ipv4_mapped_loopback_literal_needs_its_own_grant() {
    let server = echo_server();
    let client = client();
    let url = format!("http://[::ffff:127.0.0.1]:{}/mapped", server.port);

    let message = denied(
        client
            .send(&policy(&["*"]), HttpRequest::new("GET", &url))
            .await,
    );
    assert!(message.contains("IPv4-mapped"), "{message}");
    // Granting 127.0.0.1 does not grant another spelling of it.
    let message = denied(
        client
            .send(&policy(&["127.0.0.1"]), HttpRequest::new("GET", &url))
            .await,
    );
    assert!(message.contains("not in the http grant"), "{message}");
    assert!(server.seen().is_empty());

    let response = client
        .send(
            &policy(&["[::ffff:127.0.0.1]"]),
            HttpRequest::new("GET", &url),
        )
        .await
        .expect("granted literally");
    assert_eq!(response.body, b"GET /mapped\n");
}

fn redirecting_server() -> TestServer {
    TestServer::start(|request, port| match request.target.as_str() {
        "/to-localhost" => redirect("302 Found", &format!("http://localhost:{port}/secret")),
        "/to-metadata" => redirect("302 Found", "http://169.254.169.254/latest/meta-data/"),
        "/to-file" => redirect("302 Found", "file:///etc/passwd"),
        "/see-other" => redirect("303 See Other", "/landing"),
        "/temporary" => redirect("307 Temporary Redirect", "/landing"),
        "/cross-origin" => redirect("302 Found", &format!("http://localhost:{port}/landing")),
        "/loop" => redirect("302 Found", "/loop"),
        _ => {
            let mut body = format!("{} {}\n", request.method, request.target).into_bytes();
            body.extend_from_slice(&request.body);
            reply("200 OK", &[], &body)
        }
    })
}

#[tokio::test]
async fn a_redirect_outside_the_grant_is_denied_naming_the_host() {
    let server = redirecting_server();
    let client = client();
    let grant = policy(&["127.0.0.1"]);

    let message = denied(
        client
            .send(&grant, HttpRequest::new("GET", server.url("/to-localhost")))
            .await,
    );
    assert!(message.contains("redirect from"), "{message}");
    assert!(
        message.contains("host `localhost` is not in the http grant"),
        "{message}"
    );

    let message = denied(
        client
            .send(&grant, HttpRequest::new("GET", server.url("/to-metadata")))
            .await,
    );
    assert!(message.contains("`169.254.169.254`"), "{message}");

    // With `*` as well, the hop matches a pattern but its address is still vetted.
    let message = denied(
        client
            .send(
                &policy(&["127.0.0.1", "*"]),
                HttpRequest::new("GET", server.url("/to-localhost")),
            )
            .await,
    );
    assert!(message.contains("`localhost` resolves to"), "{message}");
    assert!(message.contains("loopback"), "{message}");

    let refused = client
        .send(&grant, HttpRequest::new("GET", server.url("/to-file")))
        .await;
    assert!(
        matches!(&refused, Err(HttpError::Failed(m)) if m.contains("`file`")),
        "{refused:?}"
    );
    assert_eq!(
        server.seen_targets(),
        ["/to-localhost", "/to-metadata", "/to-localhost", "/to-file"],
        "no denied hop reached the server"
    );
}

#[tokio::test]
async fn redirects_inside_the_grant_are_followed_hop_by_hop() {
    let server = redirecting_server();
    let client = client();
    let grant = policy(&["127.0.0.1", "localhost"]);

    // 303: the next hop is a body-less GET.
    let response = client
        .send(
            &grant,
            HttpRequest::new("POST", server.url("/see-other")).body(b"form".to_vec()),
        )
        .await
        .expect("303 followed");
    assert_eq!(response.body, b"GET /landing\n");

    // 307: method and body are sent again.
    let response = client
        .send(
            &grant,
            HttpRequest::new("POST", server.url("/temporary")).body(b"again".to_vec()),
        )
        .await
        .expect("307 followed");
    assert_eq!(response.body, b"POST /landing\nagain");

    // Credentials do not follow a redirect to another origin.
    let response = client
        .send(
            &grant,
            HttpRequest::new("GET", server.url("/cross-origin"))
                .header("Authorization", "Bearer s3cret")
                .header("X-Kept", "1"),
        )
        .await
        .expect("cross-origin redirect followed");
    assert_eq!(response.status, 200);
    let landing = server.seen().pop().expect("the landing request");
    assert_eq!(landing.target, "/landing");
    assert_eq!(
        landing.header("host"),
        Some(&*format!("localhost:{}", server.port))
    );
    assert_eq!(landing.header("authorization"), None);
    assert_eq!(landing.header("x-kept"), Some("1"));

    // Not following: the guest gets the redirect itself.
    let response = client
        .send(
            &grant,
            HttpRequest::new("GET", server.url("/to-metadata")).follow_redirects(false),
        )
        .await
        .expect("redirect returned as is");
    assert_eq!(response.status, 302);
    assert_eq!(
        response.header("location"),
        Some("http://169.254.169.254/latest/meta-data/")
    );

    let looping = client
        .send(
            &grant.clone().max_redirects(3),
            HttpRequest::new("GET", server.url("/loop")),
        )
        .await;
    assert!(
        matches!(&looping, Err(HttpError::Failed(m)) if m.contains("stopped after 3 redirects")),
        "{looping:?}"
    );
}

/// 64 KiB of body in the given framing, for a client capped at 1 KiB.
fn big_body_server() -> TestServer {
    TestServer::start(|request, _| {
        let body = vec![b'x'; 64 << 10];
        match request.target.as_str() {
            "/close-delimited" => {
                let mut raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
                raw.extend_from_slice(&body);
                Reply::Raw(raw)
            }
            "/chunked" => {
                let mut raw =
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                        .to_vec();
                for chunk in body.chunks(4096) {
                    raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    raw.extend_from_slice(chunk);
                    raw.extend_from_slice(b"\r\n");
                }
                raw.extend_from_slice(b"0\r\n\r\n");
                Reply::Raw(raw)
            }
            // Declares 10 MB and then sends nothing: only the declaration can fail it.
            "/declared" => {
                Reply::Hang(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n".to_vec())
            }
            // Declares 10 bytes and sends more: the extra bytes are not the body.
            "/understated" => {
                let mut raw =
                    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n".to_vec();
                raw.extend_from_slice(&body);
                Reply::Raw(raw)
            }
            "/exactly-the-cap" => {
                let mut raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
                raw.extend_from_slice(&body[..1024]);
                Reply::Raw(raw)
            }
            _ => reply("404 Not Found", &[], b""),
        }
    })
}

#[tokio::test]
async fn a_response_over_the_cap_is_too_large_whatever_its_framing() {
    let server = big_body_server();
    let client = client();
    let grant = policy(&["127.0.0.1"]).max_response_body(1024);
    let get =
        |path: &str| HttpRequest::new("GET", server.url(path)).timeout(Duration::from_secs(60));

    for path in ["/close-delimited", "/chunked"] {
        let message = too_large(client.send(&grant, get(path)).await);
        assert!(
            message.contains("exceeds the cap of 1024 bytes"),
            "{path}: {message}"
        );
    }
    let message = too_large(client.send(&grant, get("/declared")).await);
    assert!(
        message.contains("10000000 bytes (Content-Length)"),
        "{message}"
    );

    let response = client
        .send(&grant, get("/understated"))
        .await
        .expect("the declared 10 bytes");
    assert_eq!(response.body, vec![b'x'; 10]);
    let response = client
        .send(&grant, get("/exactly-the-cap"))
        .await
        .expect("a body at the cap");
    assert_eq!(response.body.len(), 1024);
}

#[tokio::test]
async fn a_request_body_over_the_cap_is_too_large_before_sending() {
    let server = echo_server();
    let client = client();
    let grant = policy(&["127.0.0.1"]).max_request_body(16);

    let message = too_large(
        client
            .send(
                &grant,
                HttpRequest::new("POST", server.url("/big")).body(vec![0; 17]),
            )
            .await,
    );
    assert!(
        message.contains("17 bytes, over the cap of 16 bytes"),
        "{message}"
    );

    client
        .send(
            &grant,
            HttpRequest::new("POST", server.url("/fits")).body(vec![0; 16]),
        )
        .await
        .expect("a body at the cap");
    assert_eq!(server.seen_targets(), ["/fits"]);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = TestServer::start(|_, _| Reply::Hang(Vec::new()));
    let client = client();
    let grant = policy(&["127.0.0.1"]);

    let result = client
        .send(
            &grant,
            HttpRequest::new("GET", server.url("/own-limit")).timeout(Duration::from_millis(200)),
        )
        .await;
    assert_eq!(result, Err(HttpError::Timeout));

    // The policy's default applies when the request sets none.
    let result = client
        .send(
            &grant.clone().default_timeout(Duration::from_millis(200)),
            HttpRequest::new("GET", server.url("/default-limit")),
        )
        .await;
    assert_eq!(result, Err(HttpError::Timeout));

    // A request cannot ask for more than the policy's maximum.
    let result = client
        .send(
            &grant.clone().max_timeout(Duration::from_millis(200)),
            HttpRequest::new("GET", server.url("/clamped")).timeout(Duration::from_secs(3600)),
        )
        .await;
    assert_eq!(result, Err(HttpError::Timeout));
}

#[tokio::test]
async fn a_refused_connection_fails_with_its_cause() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let result = client()
        .send(
            &policy(&["127.0.0.1"]),
            HttpRequest::new("GET", format!("http://127.0.0.1:{port}/")),
        )
        .await;
    match result {
        Err(HttpError::Failed(message)) => {
            assert!(
                message.contains(&format!("GET http://127.0.0.1:{port}/")),
                "{message}"
            );
            assert!(message.to_lowercase().contains("refused"), "{message}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let server = echo_server();
    let client = client();
    let grant = policy(&["*", "127.0.0.1"]);
    let url = server.url("/");

    for bad_url in [
        "ftp://127.0.0.1/file",
        "file:///etc/passwd",
        "data:text/plain,hi",
    ] {
        let message = invalid(client.send(&grant, HttpRequest::new("GET", bad_url)).await);
        assert!(
            message.contains("use `http` or `https`"),
            "{bad_url}: {message}"
        );
    }
    let message = invalid(
        client
            .send(&grant, HttpRequest::new("GET", "/relative"))
            .await,
    );
    assert!(message.contains("not an absolute URL"), "{message}");

    let with_credentials = format!("http://user:pw@127.0.0.1:{}/", server.port);
    let message = invalid(
        client
            .send(&grant, HttpRequest::new("GET", with_credentials))
            .await,
    );
    assert!(message.contains("carries credentials"), "{message}");
    assert!(
        !message.contains("pw"),
        "the password is not repeated: {message}"
    );

    // The connection target decides the Host, not a header.
    let message = invalid(
        client
            .send(
                &grant,
                HttpRequest::new("GET", &url).header("Host", "internal.example"),
            )
            .await,
    );
    assert!(
        message.contains("`Host` header is set from the URL"),
        "{message}"
    );

    let message = invalid(
        client
            .send(
                &grant,
                HttpRequest::new("GET", &url).header("X-Evil", "a\r\nHost: internal"),
            )
            .await,
    );
    assert!(
        message.contains("header `x-evil` is not valid"),
        "{message}"
    );

    let message = invalid(
        client
            .send(
                &grant,
                HttpRequest::new("GET", &url).header("Transfer-Encoding", "chunked"),
            )
            .await,
    );
    assert!(
        message.contains("`transfer-encoding` header is managed"),
        "{message}"
    );

    let message = invalid(client.send(&grant, HttpRequest::new("GE T", &url)).await);
    assert!(message.contains("not a valid HTTP method"), "{message}");

    let message = invalid(
        client
            .send(
                &grant,
                HttpRequest::new("GET", &url).timeout(Duration::ZERO),
            )
            .await,
    );
    assert!(message.contains("time limit"), "{message}");
    assert!(server.seen().is_empty());

    // A Host equal to the URL's authority is harmless and dropped.
    client
        .send(
            &grant,
            HttpRequest::new("GET", &url).header("Host", format!("127.0.0.1:{}", server.port)),
        )
        .await
        .expect("matching Host accepted");
    assert_eq!(server.seen().len(), 1);
}
