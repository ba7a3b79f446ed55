//! The durable home of step logs: one redb file (`logs.redb`) with one writer
//! thread that group-commits.
//!
//! Every stored line is one row, keyed by the log's `engine/execution/step` and
//! its `seq`, holding the line's JSON. Writers hand lines to the thread as they
//! are written; the thread takes everything waiting in its queue, inserts it in
//! one write transaction and commits it with one `fdatasync`, then tells each
//! line's live log that it is on disk. So many steps' lines share one sync, no
//! file is created per step (creating and syncing a file and two directories
//! per step cost a quarter of a burst's CPU), and a barrier
//! ([`LogDb::barrier`]) resolves once everything queued before it is durable —
//! which is how a step's log is made durable before its `Succeeded` is recorded.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{JoinHandle, ThreadId};

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{LiveLog, LogError, StoredLine, lock};

/// `("engine/execution/step", seq)` → the line's JSON.
const LINES: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("lines");

/// Most queued operations committed in one transaction.
const MAX_BATCH: usize = 4096;

/// What the writer thread runs after the commit that covers everything queued
/// before it; the argument says whether that commit succeeded.
pub(super) type AfterCommit = Box<dyn FnOnce(bool) + Send>;

/// Work for the writer thread.
pub(super) enum Msg {
    /// Store one line of a live log.
    Put {
        live: Arc<LiveLog>,
        seq: u64,
        json: Vec<u8>,
    },
    /// Run a closure once everything before it is committed.
    Barrier(AfterCommit),
    /// Delete every line whose log key starts with `prefix`, then answer.
    RemovePrefix { prefix: String, done: AfterCommit },
}

struct Shared {
    /// `None` once [`LogDb::close`] has closed the file.
    db: RwLock<Option<Database>>,
    path: PathBuf,
}

impl Shared {
    fn io(&self, what: &str, e: impl std::fmt::Display) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(format!("{what}: {e}")),
        }
    }
}

/// The log database and its writer thread.
pub(super) struct LogDb {
    shared: Arc<Shared>,
    queue: Mutex<Option<Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_id: ThreadId,
}

impl std::fmt::Debug for LogDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogDb")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl LogDb {
    /// Opens (or creates) the database at `path` and starts its writer.
    pub(super) fn open(path: PathBuf) -> Result<Self, LogError> {
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => LogError::Io {
                path: path.clone(),
                source: std::io::Error::other(
                    "the step log database is open in another process (or another container of \
                     this one) using the same data dir; stop it or use another data dir",
                ),
            },
            e => LogError::Io {
                path: path.clone(),
                source: std::io::Error::other(format!("cannot open the step log database: {e}")),
            },
        })?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            path,
        });
        {
            // Create the table, so that reads never meet a missing one.
            let guard = shared.db.read().unwrap_or_else(PoisonError::into_inner);
            let db = guard.as_ref().expect("just opened");
            let txn = db
                .begin_write()
                .map_err(|e| shared.io("begin a write", e))?;
            txn.open_table(LINES)
                .map_err(|e| shared.io("create the lines table", e))?;
            txn.commit().map_err(|e| shared.io("commit", e))?;
        }
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("arkline-log-writer".into())
            .spawn(move || write_loop(&thread_shared, &rx))
            .map_err(|source| LogError::Io {
                path: shared.path.clone(),
                source,
            })?;
        Ok(LogDb {
            writer_id: writer.thread().id(),
            shared,
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The database file.
    pub(super) fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Queues work; gives the message back once the database is closed.
    pub(super) fn send(&self, msg: Msg) -> Result<(), Msg> {
        match &*lock(&self.queue) {
            Some(queue) => queue.send(msg).map_err(|e| e.0),
            None => Err(msg),
        }
    }

    /// Runs `then(committed)` once everything queued before it is durable; runs
    /// it at once with `false` when the database is closed.
    pub(super) fn barrier(&self, then: AfterCommit) {
        if let Err(Msg::Barrier(then)) = self.send(Msg::Barrier(then)) {
            then(false);
        }
    }

    /// Deletes every line of the logs whose key starts with `prefix` (which
    /// ends in `/`), then runs `done(committed)`.
    pub(super) fn remove_prefix(&self, prefix: String, done: AfterCommit) {
        if let Err(Msg::RemovePrefix { done, .. }) = self.send(Msg::RemovePrefix { prefix, done }) {
            done(false);
        }
    }

    /// Every stored line of `key` with `seq >= from`, in `seq` order.
    pub(super) fn read(&self, key: &str, from: u64) -> Result<Vec<StoredLine>, LogError> {
        let guard = self
            .shared
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let db = guard
            .as_ref()
            .ok_or_else(|| self.shared.io("read", "closed"))?;
        let txn = db
            .begin_read()
            .map_err(|e| self.shared.io("begin a read", e))?;
        let table = txn
            .open_table(LINES)
            .map_err(|e| self.shared.io("open the lines table", e))?;
        let range = table
            .range((key, from)..=(key, u64::MAX))
            .map_err(|e| self.shared.io("read lines", e))?;
        let mut lines = Vec::new();
        for row in range {
            let (k, v) = row.map_err(|e| self.shared.io("read a line", e))?;
            let seq = k.value().1;
            let line: StoredLine =
                serde_json::from_slice(v.value()).map_err(|source| LogError::Corrupt {
                    path: self.shared.path.clone(),
                    line: seq + 1,
                    source,
                })?;
            lines.push(line);
        }
        Ok(lines)
    }

    /// Stops the writer after it has committed everything queued, and closes
    /// the file (releasing its lock) once reads in progress end. Later sends
    /// are refused and later reads fail. Closing twice is closing once.
    pub(super) fn close(&self) {
        drop(lock(&self.queue).take());
        let handle = lock(&self.writer).take();
        if let Some(handle) = handle
            && std::thread::current().id() != self.writer_id
        {
            let _ = handle.join();
        }
        drop(
            self.shared
                .db
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

impl Drop for LogDb {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: batches, commits, then tells each line's log and runs
/// each barrier.
fn write_loop(shared: &Shared, queue: &Receiver<Msg>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let committed = match commit(shared, &batch) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    path = %shared.path.display(),
                    error = %e,
                    lines = batch.iter().filter(|m| matches!(m, Msg::Put { .. })).count(),
                    "cannot commit step log lines; those logs keep their later lines in memory only"
                );
                false
            }
        };
        for msg in batch {
            match msg {
                Msg::Put { live, seq, .. } => live.committed(seq, committed),
                Msg::Barrier(then) | Msg::RemovePrefix { done: then, .. } => then(committed),
            }
        }
    }
}

fn commit(shared: &Shared, batch: &[Msg]) -> Result<(), LogError> {
    let guard = shared.db.read().unwrap_or_else(PoisonError::into_inner);
    let db = guard.as_ref().ok_or_else(|| shared.io("write", "closed"))?;
    let mut writes = false;
    let txn = db
        .begin_write()
        .map_err(|e| shared.io("begin a write", e))?;
    {
        let mut table = txn
            .open_table(LINES)
            .map_err(|e| shared.io("open the lines table", e))?;
        for msg in batch {
            match msg {
                Msg::Put { live, seq, json } => {
                    table
                        .insert((live.db_key.as_str(), *seq), json.as_slice())
                        .map_err(|e| shared.io("insert a line", e))?;
                    writes = true;
                }
                Msg::RemovePrefix { prefix, .. } => {
                    let end = prefix_end(prefix);
                    table
                        .retain_in::<(&str, u64), _>(
                            (
                                Bound::Included((prefix.as_str(), 0)),
                                Bound::Excluded((end.as_str(), 0)),
                            ),
                            |_, _| false,
                        )
                        .map_err(|e| shared.io("remove lines", e))?;
                    writes = true;
                }
                Msg::Barrier(_) => {}
            }
        }
    }
    if writes {
        txn.commit().map_err(|e| shared.io("commit", e))
    } else {
        txn.abort()
            .map_err(|e| shared.io("abort an empty write", e))
    }
}

/// The least string above every key that starts with `prefix`, which ends in
/// `/`: the same prefix ending in `0`, the next character.
fn prefix_end(prefix: &str) -> String {
    let stem = prefix.strip_suffix('/').unwrap_or(prefix);
    format!("{stem}0")
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn the_end_of_a_prefix_is_above_every_key_with_it_and_below_the_next() {
        assert_eq!(prefix_end("eng/exec-1/"), "eng/exec-10");
        assert!("eng/exec-1/zzz\u{10ffff}" < "eng/exec-10");
        assert!("eng/exec-10/a" >= "eng/exec-10");
        assert!("eng/exec-1.x/a" < "eng/exec-1/");
    }
}
