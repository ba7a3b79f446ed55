//! The durable home of step logs: a redb table, group-committed.
//!
//! Every stored line is one row, keyed by the log's `engine/execution/step` and
//! its `seq`, holding the line's JSON. Writers queue lines as they are written;
//! a writer takes everything waiting in the queue, inserts it in one write
//! transaction and commits it with one `fdatasync`, then tells each line's live
//! log that it is on disk. So many steps' lines share one sync, no file is
//! created per step (creating and syncing a file and two directories per step
//! cost a quarter of a burst's CPU), and a barrier ([`LogDb::barrier`])
//! resolves once everything queued before it is durable.
//!
//! The table lives in one of two homes. In the store's own file
//! ([`LogDb::in_store`], what a container with a redb store uses) the lines
//! ride on the store's commits ([`Rider`]): the store's writer takes the queue
//! inside each of its transactions, so lines queued before a status write are
//! committed with it or before it, under the same sync — a step's log is
//! durable before its `Succeeded` without a sync of its own. In a file of its
//! own ([`LogDb::open`], `logs.redb`, for stores that are not redb) a writer
//! thread of its own commits, and a step waits for a barrier before its
//! outcome is written.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{JoinHandle, ThreadId};

use redb::{Database, ReadableDatabase, TableDefinition, WriteTransaction};

use super::{LiveLog, LogError, StoredLine, lock};
use crate::store::RedbStore;
use crate::store::{Rider, Settle};

/// `("engine/execution/step", seq)` → the line's JSON. The same table in a
/// file of its own (`logs.redb`) or in the store's file.
const LINES: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("log_lines");

/// Most queued operations committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Lines riding on the store's commits wait at most this long for a store
/// write before they ask for a commit of their own: a step's lines usually
/// ride on its next status write, and a quiet store is not made to sync for
/// every line.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// ... or until this many are waiting (which also bounds the in-memory tails
/// that wait for their commit).
const FLUSH_LINES: usize = 512;

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
    /// Runs `f` on the open database; an error naming `what` once it is closed.
    fn with_db<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Database) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = guard
            .as_ref()
            .ok_or_else(|| io_error(&self.path, what, "closed"))?;
        f(db)
    }
}

fn io_error(path: &Path, what: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(format!("{what}: {e}")),
    }
}

/// Where the lines are kept.
enum Home {
    /// A file of its own, with its own writer thread.
    File {
        shared: Arc<Shared>,
        writer: Mutex<Option<JoinHandle<()>>>,
        writer_id: ThreadId,
    },
    /// A table of the store's file, riding on the store's commits: one
    /// `fdatasync` covers a batch's log lines and its status writes.
    Store {
        store: Arc<RedbStore>,
        rider: Arc<LogRider>,
        /// Asks for a commit of lines that waited [`FLUSH_EVERY`] for a
        /// store write to ride on.
        flusher: Mutex<Option<JoinHandle<()>>>,
    },
}

/// The log database and the queue to its writer.
pub(super) struct LogDb {
    queue: Mutex<Option<Sender<Msg>>>,
    home: Home,
}

impl std::fmt::Debug for LogDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogDb")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl LogDb {
    /// Opens (or creates) a database of its own at `path` and starts its writer.
    pub(super) fn open(path: PathBuf) -> Result<Self, LogError> {
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => LogError::Io {
                path: path.clone(),
                source: std::io::Error::other(
                    "the step log database is open in another process (or another container of \
                     this one) using the same data dir; stop it or use another data dir",
                ),
            },
            e => io_error(&path, "cannot open the step log database", e),
        })?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            path,
        });
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
            queue: Mutex::new(Some(tx)),
            home: Home::File {
                writer_id: writer.thread().id(),
                shared,
                writer: Mutex::new(Some(writer)),
            },
        })
    }

    /// Keeps the lines in a table of `store`'s file, committed with the store's
    /// own writes.
    pub(super) fn in_store(store: Arc<RedbStore>) -> Self {
        let (tx, rx) = mpsc::channel();
        let rider = Arc::new(LogRider {
            queue: Mutex::new(rx),
            nudged: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        store.attach_rider(rider.clone());
        let flusher = {
            let (store, rider) = (store.clone(), rider.clone());
            std::thread::Builder::new()
                .name("arkline-log-flush".into())
                .spawn(move || {
                    while !rider.stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(FLUSH_EVERY);
                        if rider.waiting.load(Ordering::Acquire) > 0 {
                            rider.nudge(&store);
                        }
                    }
                })
                .map_err(|e| tracing::warn!(error = %e, "cannot start the step log flusher; lines wait for the store's next write"))
                .ok()
        };
        LogDb {
            queue: Mutex::new(Some(tx)),
            home: Home::Store {
                store,
                rider,
                flusher: Mutex::new(flusher),
            },
        }
    }

    /// Whether the lines ride on the store's commits.
    pub(super) fn rides_on_store(&self) -> bool {
        matches!(self.home, Home::Store { .. })
    }

    /// The database file.
    pub(super) fn path(&self) -> &Path {
        match &self.home {
            Home::File { shared, .. } => &shared.path,
            Home::Store { store, .. } => store.path(),
        }
    }

    /// Queues work; gives the message back once the database is closed.
    /// `urgent`: someone waits for it, so the store commits now; otherwise it
    /// waits for a store write to ride on (see [`FLUSH_EVERY`]). A file of its
    /// own commits everything at once either way.
    pub(super) fn send(&self, msg: Msg, urgent: bool) -> Result<(), Msg> {
        match &*lock(&self.queue) {
            Some(queue) => queue.send(msg).map_err(|e| e.0)?,
            None => return Err(msg),
        }
        if let Home::Store { store, rider, .. } = &self.home
            && (urgent || rider.waiting.fetch_add(1, Ordering::AcqRel) + 1 >= FLUSH_LINES)
        {
            rider.nudge(store);
        }
        Ok(())
    }

    /// Runs `then(committed)` once everything queued before it is durable; runs
    /// it at once with `false` when the database is closed. `urgent` as for
    /// [`LogDb::send`].
    pub(super) fn barrier(&self, then: AfterCommit, urgent: bool) {
        if let Err(Msg::Barrier(then)) = self.send(Msg::Barrier(then), urgent) {
            then(false);
        }
    }

    /// Deletes every line of the logs whose key starts with `prefix` (which
    /// ends in `/`), then runs `done(committed)`.
    pub(super) fn remove_prefix(&self, prefix: String, done: AfterCommit) {
        if let Err(Msg::RemovePrefix { done, .. }) =
            self.send(Msg::RemovePrefix { prefix, done }, true)
        {
            done(false);
        }
    }

    /// Every stored line of `key` with `seq >= from`, in `seq` order.
    pub(super) fn read(&self, key: &str, from: u64) -> Result<Vec<StoredLine>, LogError> {
        let path = self.path();
        match &self.home {
            Home::File { shared, .. } => shared.with_db("read", |db| {
                let txn = db
                    .begin_read()
                    .map_err(|e| io_error(path, "begin a read", e))?;
                read_lines(&txn, key, from, path)
            }),
            Home::Store { store, .. } => store
                .read_raw(|txn| read_lines(txn, key, from, path))
                .map_err(|e| io_error(path, "read", e))?,
        }
    }

    /// Stops the writer after it has committed everything queued, and closes
    /// the file (releasing its lock) once reads in progress end; for lines kept
    /// in the store, what is queued is committed with the store's next (or
    /// last) batch. Later sends are refused and later reads fail. Closing twice
    /// is closing once.
    pub(super) fn close(&self) {
        drop(lock(&self.queue).take());
        match &self.home {
            Home::File {
                shared,
                writer,
                writer_id,
            } => {
                let handle = lock(writer).take();
                if let Some(handle) = handle
                    && std::thread::current().id() != *writer_id
                {
                    let _ = handle.join();
                }
                drop(
                    shared
                        .db
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take(),
                );
            }
            Home::Store {
                store,
                rider,
                flusher,
            } => {
                rider.nudge(store);
                rider.stop.store(true, Ordering::Release);
                if let Some(flusher) = lock(flusher).take() {
                    flusher.thread().unpark();
                    let _ = flusher.join();
                }
            }
        }
    }
}

impl Drop for LogDb {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_lines(
    txn: &redb::ReadTransaction,
    key: &str,
    from: u64,
    path: &Path,
) -> Result<Vec<StoredLine>, LogError> {
    let table = match txn.open_table(LINES) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(io_error(path, "open the log lines table", e)),
    };
    let range = table
        .range((key, from)..=(key, u64::MAX))
        .map_err(|e| io_error(path, "read lines", e))?;
    let mut lines = Vec::new();
    for row in range {
        let (k, v) = row.map_err(|e| io_error(path, "read a line", e))?;
        let seq = k.value().1;
        let line: StoredLine =
            serde_json::from_slice(v.value()).map_err(|source| LogError::Corrupt {
                path: path.to_owned(),
                line: seq + 1,
                source,
            })?;
        lines.push(line);
    }
    Ok(lines)
}

/// The log lines' side of the store's commits.
pub(super) struct LogRider {
    queue: Mutex<Receiver<Msg>>,
    /// Whether the store has been asked for a commit that has not yet taken
    /// the queue.
    nudged: AtomicBool,
    /// Lines queued since the store last took the queue.
    waiting: AtomicUsize,
    /// Tells the flusher thread to end.
    stop: AtomicBool,
}

impl LogRider {
    /// Asks the store for a commit, unless one has been asked for already.
    fn nudge(&self, store: &RedbStore) {
        if !self.nudged.swap(true, Ordering::AcqRel) {
            store.nudge();
        }
    }
}

impl Rider for LogRider {
    fn write(&self, txn: &WriteTransaction) -> Result<(bool, Settle), redb::Error> {
        // Cleared before the queue is taken: a line queued after this asks for
        // the next commit itself.
        self.nudged.store(false, Ordering::Release);
        self.waiting.store(0, Ordering::Release);
        let batch: Vec<Msg> = {
            let queue = lock(&self.queue);
            std::iter::from_fn(|| queue.try_recv().ok()).collect()
        };
        if batch.is_empty() {
            return Ok((false, Box::new(|_| {})));
        }
        match apply(txn, &batch) {
            Ok(wrote) => Ok((wrote, Box::new(move |ok| settle(batch, ok)))),
            Err(e) => {
                settle(batch, false);
                Err(e)
            }
        }
    }
}

/// The writer thread of a file of its own: batches, commits, then settles.
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
                    "cannot commit step log lines; those logs keep their later lines in memory only"
                );
                false
            }
        };
        settle(batch, committed);
    }
}

/// Tells each line's log whether it was committed, and runs each barrier.
fn settle(batch: Vec<Msg>, committed: bool) {
    for msg in batch {
        match msg {
            Msg::Put { live, seq, .. } => live.committed(seq, committed),
            Msg::Barrier(then) | Msg::RemovePrefix { done: then, .. } => then(committed),
        }
    }
}

fn commit(shared: &Shared, batch: &[Msg]) -> Result<(), LogError> {
    let path = &shared.path;
    shared.with_db("write", |db| {
        let txn = db
            .begin_write()
            .map_err(|e| io_error(path, "begin a write", e))?;
        let wrote = apply(&txn, batch).map_err(|e| io_error(path, "write lines", e))?;
        if wrote {
            txn.commit().map_err(|e| io_error(path, "commit", e))
        } else {
            txn.abort()
                .map_err(|e| io_error(path, "abort an empty write", e))
        }
    })
}

/// Applies a batch's puts and removals to `txn`; whether anything was written.
fn apply(txn: &WriteTransaction, batch: &[Msg]) -> Result<bool, redb::Error> {
    let mut wrote = false;
    let mut table = txn.open_table(LINES)?;
    for msg in batch {
        match msg {
            Msg::Put { live, seq, json } => {
                table.insert((live.db_key.as_str(), *seq), json.as_slice())?;
                wrote = true;
            }
            Msg::RemovePrefix { prefix, .. } => {
                let end = prefix_end(prefix);
                table.retain_in::<(&str, u64), _>(
                    (
                        Bound::Included((prefix.as_str(), 0)),
                        Bound::Excluded((end.as_str(), 0)),
                    ),
                    |_, _| false,
                )?;
                wrote = true;
            }
            Msg::Barrier(_) => {}
        }
    }
    Ok(wrote)
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
