//! Watch streams shared by the backends. A watcher does not get its own queue of
//! events: it reads the backend's event log from its position and, at the end of
//! the log, waits for the head revision to move. A slow watcher therefore costs no
//! memory, never misses an event, and learns it fell behind compaction as `Gone`.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use futures::StreamExt as _;

use super::{EncodedWatchEvent, EncodedWatchStream, Revision, StoreError, WatchStream};

/// Events read per page.
const PAGE: usize = 512;

/// A page of events read from a log.
#[derive(Debug, Default)]
pub(crate) struct EventPage {
    /// Matching events, in revision order, their objects as the log keeps them.
    pub events: Vec<EncodedWatchEvent>,
    /// Every event at or before this revision was examined.
    pub scanned_to: Revision,
    /// The page reached the end of the log.
    pub exhausted: bool,
}

/// A backend's event log.
pub(crate) trait EventLog: Send + Sync + 'static {
    /// Events of `kind` (and `engine`) with revision greater than `after`, at most
    /// `limit` examined. Fails with `Gone` when `after` is before the compacted revision.
    fn read(
        &self,
        after: Revision,
        kind: &str,
        engine: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError>;

    /// Whether `read` blocks on I/O (then it runs on the blocking pool).
    fn blocking(&self) -> bool;

    /// As [`EventLog::read`], from what the log keeps in memory, without
    /// blocking; `None` when `after` is older than that (then `read` answers).
    fn read_recent(
        &self,
        _after: Revision,
        _kind: &str,
        _engine: Option<&str>,
        _limit: usize,
    ) -> Option<Result<EventPage, StoreError>> {
        None
    }
}

struct Cursor {
    log: Arc<dyn EventLog>,
    head: watch::Receiver<Revision>,
    kind: Arc<str>,
    engine: Option<Arc<str>>,
    pos: Revision,
    buffer: VecDeque<EncodedWatchEvent>,
    done: bool,
}

impl Cursor {
    async fn read_page(&self) -> Result<EventPage, StoreError> {
        if let Some(page) = self
            .log
            .read_recent(self.pos, &self.kind, self.engine.as_deref(), PAGE)
        {
            return page;
        }
        if self.log.blocking() {
            let (log, kind, engine, pos) = (
                self.log.clone(),
                self.kind.clone(),
                self.engine.clone(),
                self.pos,
            );
            tokio::task::spawn_blocking(move || log.read(pos, &kind, engine.as_deref(), PAGE))
                .await
                .unwrap_or_else(|join| {
                    Err(StoreError::Backend {
                        operation: "read the event log",
                        path: Default::default(),
                        source: Box::new(join),
                    })
                })
        } else {
            self.log
                .read(self.pos, &self.kind, self.engine.as_deref(), PAGE)
        }
    }
}

/// The events of `encoded` with their objects decoded untyped.
pub(crate) fn decoded(encoded: EncodedWatchStream) -> WatchStream {
    Box::pin(encoded.map(|item| item.and_then(EncodedWatchEvent::into_dynamic)))
}

/// A stream of the events of `kind` (and `engine`) after `from`.
pub(crate) fn stream(
    log: Arc<dyn EventLog>,
    head: watch::Receiver<Revision>,
    kind: &str,
    engine: Option<&str>,
    from: Revision,
) -> EncodedWatchStream {
    let cursor = Cursor {
        log,
        head,
        kind: kind.into(),
        engine: engine.map(Into::into),
        pos: from,
        buffer: VecDeque::new(),
        done: false,
    };
    Box::pin(futures::stream::unfold(cursor, |mut c| async move {
        loop {
            if c.done {
                return None;
            }
            if let Some(event) = c.buffer.pop_front() {
                return Some((Ok(event), c));
            }
            // Mark the head seen before reading, so a commit after the read wakes us.
            c.head.borrow_and_update();
            match c.read_page().await {
                Err(e) => {
                    c.done = true;
                    return Some((Err(e), c));
                }
                Ok(page) => {
                    c.pos = c.pos.max(page.scanned_to);
                    c.buffer.extend(page.events);
                    if c.buffer.is_empty() && page.exhausted && c.head.changed().await.is_err() {
                        // The store was dropped: no more events will come.
                        return None;
                    }
                }
            }
        }
    }))
}
