//! The step log: everything a guest says during one call, from `log` calls and its
//! stdout/stderr, kept in order with a byte cap, and mirrored to `tracing`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// A `log` capability call.
    Log,
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// The host, about the step (truncation notices and the like).
    Host,
}

impl LogSource {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Log => "log",
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Host => "host",
        }
    }
}

impl std::fmt::Display for LogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Severity of a log line. Stdout lines are `Info`, stderr lines `Warn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Very fine detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Progress.
    Info,
    /// Something to look at.
    Warn,
    /// A failure.
    Error,
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LogLevel {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One line of a step log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// When the host received it.
    pub time: SystemTime,
    /// Severity.
    pub level: LogLevel,
    /// Origin.
    pub source: LogSource,
    /// The text, without a trailing newline.
    pub message: String,
    /// Structured fields of a `log` call.
    pub fields: Vec<(String, String)>,
}

/// A callback that sees every line as it is logged (for live follow).
pub type LogSink = Arc<dyn Fn(&LogLine) + Send + Sync>;

/// Rewrites each line before it is kept, streamed or traced (the engine
/// passes one replacing the step's secret values with `***`, so no copy of a
/// line, the host's own `tracing` output included, carries a secret).
pub type LogMask = Arc<dyn Fn(&str) -> std::borrow::Cow<'_, str> + Send + Sync>;

/// The captured log of one step call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepLog {
    /// Lines in the order they were written.
    pub lines: Vec<LogLine>,
    /// Bytes of message text kept.
    pub bytes: usize,
    /// Bytes of message text dropped after the cap was reached.
    pub dropped_bytes: usize,
}

impl StepLog {
    /// Whether lines were dropped at the cap.
    pub fn truncated(&self) -> bool {
        self.dropped_bytes > 0
    }

    /// Every line's message joined with newlines (for tests and tails).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            out.push_str(&line.message);
            out.push('\n');
        }
        out
    }

    /// Lines from one source.
    pub fn from_source(&self, source: LogSource) -> impl Iterator<Item = &LogLine> {
        self.lines.iter().filter(move |l| l.source == source)
    }
}

/// Labels attached to every traced log line.
#[derive(Debug, Clone, Default)]
pub struct LogLabels {
    /// Engine name.
    pub engine: String,
    /// Biz `name@version`.
    pub biz: String,
    /// Step name (or the step type when there is none).
    pub step: String,
}

struct Inner {
    log: StepLog,
    cap: usize,
    stdout_partial: Vec<u8>,
    stderr_partial: Vec<u8>,
}

/// A shared, capped log writer for one step call. Cheap to clone.
#[derive(Clone)]
pub struct LogCapture {
    inner: Arc<Mutex<Inner>>,
    labels: Arc<LogLabels>,
    sink: Option<LogSink>,
    mask: Option<LogMask>,
}

/// The longest line kept whole; longer stdout/stderr lines are split.
const MAX_LINE: usize = 16 << 10;

impl LogCapture {
    /// A capture keeping at most `cap` bytes of text.
    pub fn new(cap: usize, labels: LogLabels, sink: Option<LogSink>) -> Self {
        LogCapture {
            inner: Arc::new(Mutex::new(Inner {
                log: StepLog::default(),
                cap,
                stdout_partial: Vec::new(),
                stderr_partial: Vec::new(),
            })),
            labels: Arc::new(labels),
            sink,
            mask: None,
        }
    }

    /// Masks every line (message and field values) before anything sees it.
    pub fn with_mask(mut self, mask: Option<LogMask>) -> Self {
        self.mask = mask;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a log that is still well-formed.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one line.
    pub fn push(
        &self,
        level: LogLevel,
        source: LogSource,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        let mut inner = self.lock();
        self.push_locked(&mut inner, level, source, message, fields);
    }

    fn push_locked(
        &self,
        inner: &mut Inner,
        level: LogLevel,
        source: LogSource,
        message: String,
        fields: Vec<(String, String)>,
    ) {
        let (message, fields) = match &self.mask {
            None => (message, fields),
            Some(mask) => {
                let masked = |s: String| match mask(&s) {
                    std::borrow::Cow::Borrowed(_) => s,
                    std::borrow::Cow::Owned(m) => m,
                };
                (
                    masked(message),
                    fields.into_iter().map(|(k, v)| (k, masked(v))).collect(),
                )
            }
        };
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if inner.log.bytes + size > inner.cap {
            if inner.log.dropped_bytes == 0 {
                let notice = LogLine {
                    time: SystemTime::now(),
                    level: LogLevel::Warn,
                    source: LogSource::Host,
                    message: format!(
                        "[arkline] log truncated: the step wrote more than {} bytes; later output is dropped",
                        inner.cap
                    ),
                    fields: Vec::new(),
                };
                self.emit(&notice);
                inner.log.lines.push(notice);
            }
            inner.log.dropped_bytes += size;
            return;
        }
        inner.log.bytes += size;
        let line = LogLine {
            time: SystemTime::now(),
            level,
            source,
            message,
            fields,
        };
        self.emit(&line);
        inner.log.lines.push(line);
    }

    fn emit(&self, line: &LogLine) {
        if let Some(sink) = &self.sink {
            sink(line);
        }
        let l = &*self.labels;
        let source = line.source.as_str();
        match line.level {
            LogLevel::Trace => {
                tracing::trace!(target: "arkline::step", engine = %l.engine, biz = %l.biz, step = %l.step, source, "{}", line.message)
            }
            LogLevel::Debug => {
                tracing::debug!(target: "arkline::step", engine = %l.engine, biz = %l.biz, step = %l.step, source, "{}", line.message)
            }
            LogLevel::Info => {
                tracing::info!(target: "arkline::step", engine = %l.engine, biz = %l.biz, step = %l.step, source, "{}", line.message)
            }
            LogLevel::Warn => {
                tracing::warn!(target: "arkline::step", engine = %l.engine, biz = %l.biz, step = %l.step, source, "{}", line.message)
            }
            LogLevel::Error => {
                tracing::error!(target: "arkline::step", engine = %l.engine, biz = %l.biz, step = %l.step, source, "{}", line.message)
            }
        }
    }

    /// Appends raw stdout/stderr bytes, splitting them into lines.
    fn write_stream(&self, source: LogSource, bytes: &[u8]) {
        let mut inner = self.lock();
        let level = if source == LogSource::Stderr {
            LogLevel::Warn
        } else {
            LogLevel::Info
        };
        let mut partial = std::mem::take(match source {
            LogSource::Stderr => &mut inner.stderr_partial,
            _ => &mut inner.stdout_partial,
        });
        for &b in bytes {
            if b == b'\n' || partial.len() >= MAX_LINE {
                let text = String::from_utf8_lossy(&partial).into_owned();
                partial.clear();
                self.push_locked(&mut inner, level, source, text, Vec::new());
                if b == b'\n' {
                    continue;
                }
            }
            partial.push(b);
        }
        match source {
            LogSource::Stderr => inner.stderr_partial = partial,
            _ => inner.stdout_partial = partial,
        }
    }

    /// Flushes unterminated stdout/stderr lines and returns the log so far.
    pub fn finish(&self) -> StepLog {
        let mut inner = self.lock();
        for source in [LogSource::Stdout, LogSource::Stderr] {
            let partial = std::mem::take(match source {
                LogSource::Stderr => &mut inner.stderr_partial,
                _ => &mut inner.stdout_partial,
            });
            if !partial.is_empty() {
                let level = if source == LogSource::Stderr {
                    LogLevel::Warn
                } else {
                    LogLevel::Info
                };
                let text = String::from_utf8_lossy(&partial).into_owned();
                self.push_locked(&mut inner, level, source, text, Vec::new());
            }
        }
        inner.log.clone()
    }

    /// A WASI output stream writing into this log as `source`.
    pub fn stream(&self, source: LogSource) -> LogStream {
        LogStream {
            capture: self.clone(),
            source,
        }
    }
}

/// The guest's stdout or stderr, feeding a [`LogCapture`]. Writes never fail or
/// block: past the cap the bytes are counted and dropped, so a guest that floods
/// its output runs on (until its deadline) instead of trapping in the middle of a
/// `println!`.
#[derive(Clone)]
pub struct LogStream {
    capture: LogCapture,
    source: LogSource,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write_stream(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.capture.write_stream(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_bytes_become_lines_and_the_cap_drops_the_rest() {
        let capture = LogCapture::new(14, LogLabels::default(), None);
        capture.write_stream(LogSource::Stdout, b"hello\nwor");
        capture.write_stream(LogSource::Stderr, b"oops\n");
        capture.write_stream(LogSource::Stdout, b"ld\nand much more\n");
        let log = capture.finish();
        let text: Vec<_> = log.lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(text[..3], ["hello", "oops", "world"]);
        assert!(text[3].contains("log truncated"), "{text:?}");
        assert_eq!(log.lines.len(), 4);
        assert!(log.truncated());
        assert_eq!(log.bytes, 14);
        assert_eq!(log.dropped_bytes, "and much more".len());
    }

    #[test]
    fn unterminated_output_is_flushed_at_the_end() {
        let capture = LogCapture::new(1 << 20, LogLabels::default(), None);
        capture.write_stream(LogSource::Stderr, b"no newline");
        let log = capture.finish();
        assert_eq!(log.lines.len(), 1);
        assert_eq!(log.lines[0].source, LogSource::Stderr);
        assert_eq!(log.lines[0].message, "no newline");
    }
}
