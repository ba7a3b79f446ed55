//! The HTTP/1.1 accept loop of `arkline serve`, with the limits a reverse proxy
//! would put in front of it: a connection cap, a header-read timeout, a
//! whole-body deadline and a keep-alive idle timeout.
//!
//! `axum::serve` has no knobs for these, so connections are served by hyper's
//! HTTP/1 connection builder directly (as `axum::serve` does inside):
//! - **connection cap**: a semaphore permit per connection; past the cap a new
//!   connection gets a short `503` and is closed at once, without a task;
//! - **header and idle timeouts**: hyper's header-read timer, driven by a timer
//!   of our own per connection (`HeadTimer`) which knows whether the client has
//!   sent anything since the last response: the first request's head must arrive
//!   within the header timeout of the accept; between requests the connection
//!   may sit idle for the idle timeout, and once the next request's first byte
//!   arrives its head must complete within the header timeout;
//! - **body deadline**: each request body is wrapped in a [`DeadlineBody`] that
//!   fails with [`BodyTimeout`] once the whole body has not arrived within the
//!   body timeout of the head; the handlers that read bodies answer `408`.
//!
//! Graceful shutdown: when the shutdown future resolves, no connection is
//! accepted any more, each connection finishes its request in flight and
//! closes, and [`serve`] returns once all are closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower_service::Service as _;

/// Limits on the connections of `arkline serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's whole head (request line and
    /// headers), from the accept or from the first byte of a later request.
    pub header_timeout: Duration,
    /// Time a client has to send a request's whole body, from the end of its head.
    pub body_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections served at once; more are refused with `503`.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    /// nginx-like defaults: header 10 s, body 60 s, idle 60 s, 1,024 connections.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

/// What a connection over the cap reads before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 104\r\n\r\n{\"code\":\"not_ready\",\"message\":\"this server has as many connections as it serves at once; retry shortly\"}";

/// Serves `app` on `listener` under `limits` until `shutdown` resolves, then
/// lets every open connection finish its request and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // `signal_tx.closed()` resolves once shutdown began (its receiver dropped);
    // `close_tx.closed()` once every connection task ended.
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = signal_tx.closed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather
                // than spin (as axum::serve and hyper's examples do).
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = signal_tx.closed() => break,
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the cap: say so if the socket takes it right away, and close.
            let _ = stream.try_write(REFUSAL);
            tracing::debug!(
                limit = limits.max_connections,
                "connection refused: at the connection cap"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let signal_tx = signal_tx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, limits, &signal_tx).await;
            drop(permit);
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
}

async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    signal_tx: &watch::Sender<()>,
) {
    let reads = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(CountingIo {
        inner: stream,
        reads: reads.clone(),
    });
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut app = app.clone();
        let req = req.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
        async move { app.call(req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(HeadTimer {
            reads,
            header: limits.header_timeout,
            idle: limits.idle_timeout,
            heads: AtomicU64::new(0),
        })
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut conn = std::pin::pin!(builder.serve_connection(io, service));
    let mut shutting_down = std::pin::pin!(signal_tx.closed());
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended");
                }
                break;
            }
            () = &mut shutting_down, if !asked_to_close => {
                // Finish the request in flight, then close.
                conn.as_mut().graceful_shutdown();
                asked_to_close = true;
            }
        }
    }
}

/// Errors of one connection, not of the listener: keep accepting.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// A TCP stream that counts the reads which brought bytes, so the connection's
/// [`HeadTimer`] can tell an idle connection from one sending a request.
struct CountingIo {
    inner: TcpStream,
    reads: Arc<AtomicU64>,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The timer of one connection. hyper uses its timer only for the header-read
/// timeout, which it starts whenever it waits for a request head, including
/// while a keep-alive connection is idle; this timer turns that wait into the
/// idle timeout until the client sends a byte, then into the header timeout.
struct HeadTimer {
    reads: Arc<AtomicU64>,
    header: Duration,
    idle: Duration,
    /// Heads waited for so far: the first one gets no idle allowance.
    heads: AtomicU64,
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadWait::fixed(Instant::now() + duration))
    }

    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        let now = Instant::now();
        if self.heads.fetch_add(1, Ordering::Relaxed) == 0 {
            return Box::pin(HeadWait::fixed(now + self.header));
        }
        Box::pin(HeadWait {
            sleep: Box::pin(tokio::time::sleep_until(now + self.idle)),
            idle: Some(Idle {
                reads: self.reads.clone(),
                reads_at_start: self.reads.load(Ordering::Relaxed),
                header: self.header,
            }),
        })
    }
}

/// Waiting for a head: a fixed deadline, or the idle deadline until the first
/// byte of the head arrives and the header deadline after it.
struct HeadWait {
    sleep: Pin<Box<tokio::time::Sleep>>,
    idle: Option<Idle>,
}

struct Idle {
    reads: Arc<AtomicU64>,
    reads_at_start: u64,
    header: Duration,
}

impl HeadWait {
    fn fixed(deadline: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            idle: None,
        }
    }
}

impl Future for HeadWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // hyper polls this right after each read that left the head incomplete.
        if let Some(idle) = &self.idle
            && idle.reads.load(Ordering::Relaxed) != idle.reads_at_start
        {
            let deadline = Instant::now() + idle.header;
            self.idle = None;
            self.sleep.as_mut().reset(deadline);
        }
        self.sleep.as_mut().poll(cx)
    }
}

impl Sleep for HeadWait {}

/// A request body that fails with [`BodyTimeout`] when it has not ended within
/// its time limit of the request's head.
pub struct DeadlineBody {
    body: Incoming,
    started: Instant,
    limit: Duration,
    /// Created on the first wait, so bodies read at once cost no timer.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl DeadlineBody {
    fn new(body: Incoming, limit: Duration) -> Self {
        Self {
            body,
            started: Instant::now(),
            limit,
            sleep: None,
        }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.started + this.limit;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimeout { limit: this.limit }))))
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

/// A request body did not arrive whole within the body timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the request body did not arrive within {}; send it faster, or start `arkline serve` with a longer `--body-timeout`",
    humantime::format_duration(*.limit)
)]
pub struct BodyTimeout {
    /// The body timeout.
    pub limit: Duration,
}

/// The [`BodyTimeout`] behind a body read error, if that is what it is.
pub fn body_timeout(error: &(dyn std::error::Error + 'static)) -> Option<BodyTimeout> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(t) = e.downcast_ref::<BodyTimeout>() {
            return Some(*t);
        }
        cause = e.source();
    }
    None
}
