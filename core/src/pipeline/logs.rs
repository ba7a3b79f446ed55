//! Durable per-step logs with live follow.
//!
//! Every step of a pipeline execution has one log, named by a [`LogKey`]
//! (`engine/execution/step`). A [`LogWriter`] appends the step's lines as the guest
//! produces them — masked, capped, and numbered with a `seq` that runs on across
//! attempts and process restarts. Lines can be read while the step runs
//! ([`LogStore::read`], [`LogStore::tail`]) and followed live ([`LogStore::follow`]).
//!
//! The durable backend ([`LogStore::open`]) keeps every line as a row of one redb
//! file, `dir/logs.redb`, written by one thread that group-commits (see the `db`
//! module): lines are handed to it as they are written, and one `fdatasync` covers
//! every line that arrived while the previous commit ran. A writer's
//! [`LogWriter::finish_durable`] resolves once its lines are on disk. Logs written
//! by arkline before 0.2 — one JSON-lines file per step,
//! `dir/<engine>/<execution>/<step>.jsonl` — are still read, and a step resumed
//! from such a file carries its lines over into the database. The memory backend
//! ([`LogStore::in_memory`]) behaves the same without a disk.
//!
//! (The module's tests begin with a worked example: `example::log_store`.)
//!
//! Invariants:
//! - Within one step log, `seq` starts at 0 and increases by one per stored line.
//!   Lines are queued for the database, put in the in-memory tail and announced
//!   under one lock; a line leaves the tail only once its commit has been
//!   confirmed, so every line older than the in-memory tail is in the database.
//! - A [`LogStore`] and its clones share the set of live logs; open one store per
//!   directory per process, or followers will not see another store's writers.
//! - This module knows nothing about secrets: it is handed a [`MaskFn`].

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::host::step_log::{LogLevel, LogLine, LogSource};

mod archive;
mod db;
pub use archive::LogArchive;
use db::{LogDb, Msg};

/// The database file inside a log directory.
const DB_FILE: &str = "logs.redb";

/// Replaces secret values in a piece of log text; applied to every message and
/// field value before it is stored or shown to a follower.
pub type MaskFn = Arc<dyn Fn(&str) -> Cow<'_, str> + Send + Sync>;

#[cfg(test)]
/// Wraps a closure as a [`MaskFn`]. Going through this function lets the compiler
/// see that the closure's output borrows from its input, which a bare
/// `Arc::new(|s| ..)` does not.
pub fn mask_fn<F>(f: F) -> MaskFn
where
    F: for<'a> Fn(&'a str) -> Cow<'a, str> + Send + Sync + 'static,
{
    Arc::new(f)
}

/// Lines kept in memory per live log for followers; a follower further behind
/// reads the database.
const RECENT_LINES: usize = 1024;
/// Message bytes kept in memory per live log for followers (same purpose).
const RECENT_BYTES: u64 = 1 << 20;
/// How the truncation marker begins; recognised when a log is resumed.
const TRUNCATION_PREFIX: &str = "[log truncated: the step's log passed its cap of ";

/// Why a step log could not be opened, read or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A part of a log key is not a single, safe path component.
    #[error(
        "invalid log key: the {part} {value:?} {reason}; engine, execution and step must each be \
         a single path component (non-empty, without '/', '\\' or NUL, and not '.' or '..')"
    )]
    InvalidKey {
        /// Which part: `engine`, `execution` or `step`.
        part: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Reading, writing or removing a log (its database or a legacy file) failed.
    #[error("step log I/O failed on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The shared log archive failed, or its URL is not one this build reads.
    #[error("step log archive {url}: {message}")]
    Archive {
        /// The archive's URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The log has no stored line and no writer in this process.
    #[error(
        "no log for step {0}: nothing has been written for it yet, or its execution was removed"
    )]
    NotFound(LogKey),
    /// A stored line is not a log line: a line before the last one of a legacy
    /// log file, or a row of the database.
    #[error(
        "step log {} is corrupt at line {line}: {source}; it was changed by something other than \
         arkline — move the file aside to read or extend this step's log",
        path.display()
    )]
    Corrupt {
        /// The legacy file or the database.
        path: PathBuf,
        /// The 1-based line number (for the database, `seq + 1`).
        line: u64,
        /// Why the line does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// Names one step's log: `engine/execution/step`. Each part is a path component
/// of the legacy file layout and the parts are joined with `/` in the database's
/// keys, so each must be a single safe component.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct LogKey {
    /// The engine's name.
    pub engine: String,
    /// The pipeline execution.
    pub execution: String,
    /// The step within the execution.
    pub step: String,
}

impl LogKey {
    /// A validated key.
    pub fn new(
        engine: impl Into<String>,
        execution: impl Into<String>,
        step: impl Into<String>,
    ) -> Result<Self, LogError> {
        let key = LogKey {
            engine: engine.into(),
            execution: execution.into(),
            step: step.into(),
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks that each part is a safe single path component
    /// ([`LogError::InvalidKey`] otherwise). Every [`LogStore`] operation checks
    /// this, since a key can also be built field by field or deserialized.
    pub fn validate(&self) -> Result<(), LogError> {
        check_component("engine", &self.engine)?;
        check_component("execution", &self.execution)?;
        check_component("step", &self.step)
    }
}

impl fmt::Display for LogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.engine, self.execution, self.step)
    }
}

fn check_component(part: &'static str, value: &str) -> Result<(), LogError> {
    let reason = if value.is_empty() {
        "is empty"
    } else if value == "." || value == ".." {
        "is '.' or '..'"
    } else if value.contains('/') {
        "contains '/'"
    } else if value.contains('\\') {
        "contains '\\'"
    } else if value.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(LogError::InvalidKey {
        part,
        value: value.to_owned(),
        reason,
    })
}

/// One stored line of a step log, stored as one JSON object.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct StoredLine {
    /// Position in the step's log, from 0, across attempts and restarts.
    pub seq: u64,
    /// When the host received the line.
    pub time: DateTime<Utc>,
    /// The attempt of the step that wrote it (from 1 by the engine's convention).
    pub attempt: u32,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `stdout`, `stderr`, `log` or `host`.
    pub source: String,
    /// The text, masked.
    pub message: String,
    /// Structured fields of a `log` call, values masked.
    #[serde(default)]
    pub fields: Vec<(String, String)>,
}

impl StoredLine {
    fn is_truncation_marker(&self) -> bool {
        self.source == LogSource::Host.as_str() && self.message.starts_with(TRUNCATION_PREFIX)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update leaves the state consistent, so a panic elsewhere while holding
    // the lock does not make it unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where step logs are kept, and the logs being written in this process.
///
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
enum Backend {
    /// The database, and the directory of logs written before it if there are
    /// any (read, and carried over when their step is resumed).
    Db {
        db: LogDb,
        legacy: Option<PathBuf>,
    },
    Memory,
}

struct StoreInner {
    backend: Backend,
    /// Where finished logs are shipped, when the nodes share one.
    archive: std::sync::OnceLock<LogArchive>,
    /// Logs with a writer in this process, and logs held only in memory (all logs
    /// of the memory backend, and file logs whose file failed).
    live: Mutex<HashMap<LogKey, Arc<LiveLog>>>,
}

impl StoreInner {
    fn db(&self) -> Option<&LogDb> {
        match &self.backend {
            Backend::Db { db, .. } => Some(db),
            Backend::Memory => None,
        }
    }

    /// Where a log written before the database would be.
    fn legacy_path_of(&self, key: &LogKey) -> Option<PathBuf> {
        match &self.backend {
            Backend::Db {
                legacy: Some(root), ..
            } => Some(
                root.join(&key.engine)
                    .join(&key.execution)
                    .join(format!("{}.jsonl", key.step)),
            ),
            _ => None,
        }
    }

    /// Every stored line of a log from `seq` `from` on, from the database or a
    /// legacy file; `None` when there is neither. Blocking.
    fn stored(&self, key: &LogKey, from: u64) -> Result<Option<Vec<StoredLine>>, LogError> {
        let Some(db) = self.db() else {
            return Ok(None);
        };
        let lines = db.read(&db_key(key), from)?;
        if !lines.is_empty() {
            return Ok(Some(lines));
        }
        let Some(path) = self.legacy_path_of(key) else {
            return Ok(None);
        };
        Ok(read_legacy(&path)?.map(|mut lines| {
            lines.retain(|line| line.seq >= from);
            lines
        }))
    }

    fn live(&self, key: &LogKey) -> Option<Arc<LiveLog>> {
        lock(&self.live).get(key).cloned()
    }
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("backend", &self.inner.backend)
            .field("live_logs", &lock(&self.inner.live).len())
            .finish()
    }
}

impl LogStore {
    /// A store keeping logs durably in `dir/logs.redb` (the directory is created
    /// if missing). Step logs that an older arkline left as files under `dir`
    /// stay readable.
    ///
    /// Fails with [`LogError::Io`] when the directory cannot be created or the
    /// database cannot be opened (for instance because another process has it
    /// open).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, LogError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| LogError::Io {
            path: dir.clone(),
            source,
        })?;
        let legacy = has_legacy_logs(&dir).then(|| dir.clone());
        let db = LogDb::open(dir.join(DB_FILE))?;
        Ok(Self::with_backend(Backend::Db { db, legacy }))
    }

    /// A store keeping logs in a table of `store`'s file, committed with the
    /// store's own writes (one `fdatasync` covers both). Step logs that an
    /// older arkline left as files under `legacy_dir` stay readable.
    pub fn in_store(store: Arc<crate::store::RedbStore>, legacy_dir: &Path) -> Self {
        let legacy = has_legacy_logs(legacy_dir).then(|| legacy_dir.to_owned());
        Self::with_backend(Backend::Db {
            db: LogDb::in_store(store),
            legacy,
        })
    }

    /// A store keeping logs in memory only, for embedders without a disk. Logs live
    /// until [`LogStore::remove_execution`] or until the last clone is dropped.
    pub fn in_memory() -> Self {
        Self::with_backend(Backend::Memory)
    }

    fn with_backend(backend: Backend) -> Self {
        LogStore {
            inner: Arc::new(StoreInner {
                backend,
                archive: std::sync::OnceLock::new(),
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Opens `key`'s log for appending by one attempt of the step.
    ///
    /// If the log already exists (an earlier attempt, or a step resumed after a
    /// restart), `seq` continues after its last line and `cap_bytes` counts the
    /// message bytes of the whole log. `mask` is applied to every message and
    /// field value before it is counted or stored.
    ///
    /// Fails with [`LogError::InvalidKey`], [`LogError::Io`] when the stored log
    /// cannot be read, or [`LogError::Corrupt`] when a stored line is damaged.
    pub fn writer(
        &self,
        key: &LogKey,
        attempt: u32,
        cap_bytes: u64,
        mask: Option<MaskFn>,
    ) -> Result<LogWriter, LogError> {
        key.validate()?;
        let live = {
            // The registry lock is held while the stored log is read, so that two
            // writers cannot both resume the same log.
            let mut registry = lock(&self.inner.live);
            let live = match registry.get(key) {
                Some(live) => Arc::clone(live),
                None => {
                    let live = Arc::new(self.resume(key)?);
                    self.carry_over(&live, key)?;
                    registry.insert(key.clone(), Arc::clone(&live));
                    live
                }
            };
            lock(&live.state).writers += 1;
            live
        };
        Ok(LogWriter {
            handle: Arc::new(WriterHandle {
                store: Arc::clone(&self.inner),
                live,
                attempt,
                cap: cap_bytes,
                mask,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// A live log for `key`, continuing where its stored lines end.
    fn resume(&self, key: &LogKey) -> Result<LiveLog, LogError> {
        let Some(db) = self.inner.db() else {
            return Ok(LiveLog::new(key, true, &[]));
        };
        let lines = db.read(&db_key(key), 0)?;
        Ok(LiveLog::new(key, false, &lines))
    }

    /// For a log written before the database (a legacy file, and nothing in the
    /// database yet), copies the file's lines into the database through `live`,
    /// and removes the file once they are committed.
    fn carry_over(&self, live: &Arc<LiveLog>, key: &LogKey) -> Result<(), LogError> {
        let (Some(db), Some(path)) = (self.inner.db(), self.inner.legacy_path_of(key)) else {
            return Ok(());
        };
        if lock(&live.state).next_seq > 0 {
            return Ok(());
        }
        let Some(lines) = read_legacy(&path)? else {
            return Ok(());
        };
        let resume = Resume::of(&lines);
        {
            let mut state = lock(&live.state);
            state.bytes = resume.bytes;
            state.truncated = resume.truncated;
            for line in lines {
                live.push(Some(db), &mut state, line);
            }
        }
        tracing::info!(log = %key, path = %path.display(), "carrying a step log written by an older arkline over into the log database");
        db.barrier(
            Box::new(move |committed| {
                if committed && let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a step log file carried over into the log database");
                }
            }),
            false,
        );
        Ok(())
    }

    /// Ships finished logs to `archive` as well ([`LogStore::ship`]), and
    /// reads a log this node does not have from it. Set once; `false` when
    /// an archive was set before.
    pub fn set_archive(&self, archive: LogArchive) -> bool {
        self.inner.archive.set(archive).is_ok()
    }

    /// Whether finished logs are shipped to an archive.
    pub fn ships(&self) -> bool {
        self.inner.archive.get().is_some()
    }

    /// Ships `key`'s log, as stored here, to the archive (nothing without
    /// one): call it once the step's attempt has ended, before its outcome is
    /// recorded, so a recorded outcome's log outlives this node.
    pub async fn ship(&self, key: &LogKey) -> Result<(), LogError> {
        let Some(archive) = self.inner.archive.get() else {
            return Ok(());
        };
        match self.read_here(key).await {
            Ok(lines) => archive.put(key, &lines).await,
            Err(LogError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every line of `key`'s log written so far, in `seq` order: this node's
    /// copy, or else the one shipped to the archive by the node that ran
    /// the step.
    ///
    /// [`LogError::NotFound`] when the log has no stored line, no writer in
    /// this process, and no shipped copy.
    pub async fn read(&self, key: &LogKey) -> Result<Vec<StoredLine>, LogError> {
        match self.read_here(key).await {
            Err(LogError::NotFound(_)) if self.inner.archive.get().is_some() => {
                let Some(archive) = self.inner.archive.get() else {
                    return Err(LogError::NotFound(key.clone()));
                };
                archive
                    .get(key)
                    .await?
                    .ok_or_else(|| LogError::NotFound(key.clone()))
            }
            other => other,
        }
    }

    /// [`LogStore::read`] of this node's copy only.
    async fn read_here(&self, key: &LogKey) -> Result<Vec<StoredLine>, LogError> {
        key.validate()?;
        let Some(live) = self.inner.live(key) else {
            let inner = Arc::clone(&self.inner);
            let owned = key.clone();
            return blocking(self.db_path(), move || inner.stored(&owned, 0))
                .await?
                .ok_or_else(|| LogError::NotFound(key.clone()));
        };
        let mut cursor = Cursor::new(live, Arc::clone(&self.inner));
        let mut out = Vec::new();
        loop {
            let batch = cursor.next_batch().await?;
            if let Batch::Lines { lines, .. } = &batch {
                out.extend_from_slice(lines);
            }
            if batch.reached_end() {
                return Ok(out);
            }
        }
    }

    fn db_path(&self) -> PathBuf {
        self.inner
            .db()
            .map_or_else(PathBuf::new, |db| db.path().to_owned())
    }

    #[cfg(test)]
    /// The last `n` lines of `key`'s log (errors as [`LogStore::read`]).
    pub async fn tail(&self, key: &LogKey, n: usize) -> Result<Vec<StoredLine>, LogError> {
        let mut lines = self.read(key).await?;
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
        Ok(lines)
    }

    /// Every line of `key`'s log: those written so far, then each new one as it is
    /// written, in `seq` order without gaps or repeats. The stream ends once no
    /// writer of the log is open in this process (finished, closed or dropped); a
    /// log with no writer here ends after its existing lines.
    ///
    /// A follower that falls far behind reads the database rather than lose
    /// lines. Errors are yielded as the stream's last item:
    /// [`LogError::InvalidKey`], [`LogError::NotFound`] (nothing stored and no
    /// writer when `follow` is called), [`LogError::Io`] or [`LogError::Corrupt`].
    pub fn follow(&self, key: &LogKey) -> BoxStream<'static, Result<StoredLine, LogError>> {
        if let Err(e) = key.validate() {
            return stream::once(async move { Err(e) }).boxed();
        }
        // Taking the live log here, before anything is read, is what guarantees
        // that no line written from now on can be missed.
        let Some(live) = self.inner.live(key) else {
            let store = self.clone();
            let key = key.clone();
            return stream::once(async move { store.read(&key).await })
                .flat_map(|read| match read {
                    Ok(lines) => stream::iter(lines.into_iter().map(Ok)).left_stream(),
                    Err(e) => stream::once(async move { Err(e) }).right_stream(),
                })
                .boxed();
        };
        let follower = Follower {
            changed: live.changed.subscribe(),
            cursor: Cursor::new(live, Arc::clone(&self.inner)),
            pending: VecDeque::new(),
            done: false,
        };
        stream::unfold(follower, |mut follower| async move {
            let item = follower.next().await?;
            Some((item, follower))
        })
        .boxed()
    }

    /// Removes every step log of one execution (retention), durably: it returns
    /// once the removal is committed. Removing an execution that has no logs is
    /// not an error. Remove executions whose steps have finished: a writer still
    /// open keeps its lines in memory, and its followers keep following it.
    pub async fn remove_execution(&self, engine: &str, execution: &str) -> Result<(), LogError> {
        check_component("engine", engine)?;
        check_component("execution", execution)?;
        lock(&self.inner.live).retain(|key, _| key.engine != engine || key.execution != execution);
        self.remove(format!("{engine}/{execution}/"), &[engine, execution])
            .await?;
        match self.inner.archive.get() {
            Some(archive) => archive.remove(engine, Some(execution)).await,
            None => Ok(()),
        }
    }

    /// Removes every step log of one engine (the engine was removed), durably.
    pub async fn remove_engine(&self, engine: &str) -> Result<(), LogError> {
        check_component("engine", engine)?;
        lock(&self.inner.live).retain(|key, _| key.engine != engine);
        self.remove(format!("{engine}/"), &[engine]).await?;
        match self.inner.archive.get() {
            Some(archive) => archive.remove(engine, None).await,
            None => Ok(()),
        }
    }

    async fn remove(&self, prefix: String, legacy_dir: &[&str]) -> Result<(), LogError> {
        let Backend::Db { db, legacy } = &self.inner.backend else {
            return Ok(());
        };
        if let Some(root) = legacy {
            let dir = legacy_dir
                .iter()
                .fold(root.clone(), |dir, part| dir.join(part));
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(LogError::Io { path: dir, source }),
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        db.remove_prefix(
            prefix,
            Box::new(move |committed| {
                let _ = tx.send(committed);
            }),
        );
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(LogError::Io {
                path: db.path().to_owned(),
                source: io::Error::other("the removal of step logs was not committed"),
            }),
        }
    }

    /// Commits every line written so far, stops the database's writer and
    /// closes its file (releasing its lock), even while clones of this store
    /// are alive: from then on their lines are kept in memory only. The memory
    /// backend has nothing to close. Closing twice is closing once.
    pub async fn close(&self) {
        let inner = Arc::clone(&self.inner);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(db) = inner.db() {
                db.close();
            }
        })
        .await;
    }

    #[cfg(test)]
    /// How many bytes `key`'s log takes in its JSON-lines form; `None` when
    /// there is no such log or the key is invalid.
    pub fn size(&self, key: &LogKey) -> Option<u64> {
        key.validate().ok()?;
        if let Some(live) = self.inner.live(key) {
            return Some(lock(&live.state).stored_bytes);
        }
        let lines = self.inner.stored(key, 0).ok()??;
        Some(lines.iter().map(|line| json_line(line).len() as u64).sum())
    }
}

/// The database key of a log: its parts joined with `/`.
fn db_key(key: &LogKey) -> String {
    format!("{}/{}/{}", key.engine, key.execution, key.step)
}

/// A line as stored: its JSON, ending in a newline (the newline is counted in
/// a log's size, and kept in legacy files, but not stored in the database).
fn json_line(line: &StoredLine) -> Vec<u8> {
    match serde_json::to_vec(line) {
        Ok(mut json) => {
            json.push(b'\n');
            json
        }
        Err(e) => {
            // Cannot happen for this type.
            tracing::warn!(error = %e, "cannot encode a step log line");
            Vec::new()
        }
    }
}

/// Whether `dir` holds anything besides the log database: step logs written
/// by an arkline from before the database (one directory per engine).
fn has_legacy_logs(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
    })
}

/// Where a resumed log stands.
#[derive(Default)]
struct Resume {
    next_seq: u64,
    bytes: u64,
    truncated: bool,
    stored_bytes: u64,
}

impl Resume {
    fn of(lines: &[StoredLine]) -> Self {
        let mut resume = Resume::default();
        for line in lines {
            resume.next_seq = resume.next_seq.max(line.seq + 1);
            resume.stored_bytes += json_line(line).len() as u64;
            if line.is_truncation_marker() {
                resume.truncated = true;
            } else {
                resume.bytes += line.message.len() as u64;
            }
        }
        resume
    }
}

/// Reads a legacy step log file: every complete line, leaving out a torn last
/// line left by a crash; `None` when there is no such file.
fn read_legacy(path: &Path) -> Result<Option<Vec<StoredLine>>, LogError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LogError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|source| LogError::Io {
            path: path.to_owned(),
            source,
        })?;
    let mut lines = Vec::new();
    parse_lines(path, &bytes, |line| lines.push(line))?;
    Ok(Some(lines))
}

/// Parses the complete lines of `bytes`. A last line without a newline, or a
/// newline-terminated last line that is not JSON, is a torn write and is left
/// out; a bad line before it is [`LogError::Corrupt`].
fn parse_lines(
    path: &Path,
    bytes: &[u8],
    mut each: impl FnMut(StoredLine),
) -> Result<(), LogError> {
    let mut pos = 0;
    let mut line_no = 0;
    while let Some(len) = bytes[pos..].iter().position(|&b| b == b'\n') {
        let next = pos + len + 1;
        match serde_json::from_slice::<StoredLine>(&bytes[pos..pos + len]) {
            Ok(line) => each(line),
            Err(_) if next == bytes.len() => break,
            Err(source) => {
                return Err(LogError::Corrupt {
                    path: path.to_owned(),
                    line: line_no + 1,
                    source,
                });
            }
        }
        pos = next;
        line_no += 1;
    }
    Ok(())
}

/// Runs blocking store work off the async worker threads.
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(LogError::Io {
            path,
            source: io::Error::other(e),
        }),
    }
}

/// One step log as seen by this process's writers and followers.
struct LiveLog {
    key: LogKey,
    /// `key` as the database names it.
    db_key: String,
    state: Mutex<LiveState>,
    /// Bumped after each stored line and each closed writer.
    changed: watch::Sender<u64>,
}

struct LiveState {
    /// Whether lines are kept in memory only (memory backend, or the database
    /// failed or was closed). The in-memory tail is then never trimmed.
    memory_only: bool,
    /// The most recent lines, contiguous in `seq`, ending at `next_seq - 1`.
    recent: VecDeque<Arc<StoredLine>>,
    recent_bytes: u64,
    next_seq: u64,
    /// Lines below this `seq` are committed to the database.
    committed: u64,
    /// Message bytes kept, across the whole step (what the cap counts).
    bytes: u64,
    /// Message bytes dropped at the cap by this process.
    dropped_bytes: u64,
    /// Whether the truncation marker has been written.
    truncated: bool,
    /// Bytes of the log in JSON-lines form.
    stored_bytes: u64,
    /// Open writers; 0 means the log is complete for followers.
    writers: usize,
}

impl LiveState {
    /// The `seq` of the oldest line in memory; older lines are in the database.
    fn base_seq(&self) -> u64 {
        self.recent.front().map_or(self.next_seq, |line| line.seq)
    }
}

/// A snapshot of a live log from some `seq` on.
enum Snapshot {
    /// Every line from that `seq` to the end, and whether the log is complete.
    Covered {
        lines: Vec<Arc<StoredLine>>,
        complete: bool,
    },
    /// The lines from that `seq` are no longer in memory: read the database.
    Behind { base: u64 },
}

impl LiveLog {
    /// A live log continuing after `stored`, its lines already stored.
    fn new(key: &LogKey, memory_only: bool, stored: &[StoredLine]) -> Self {
        let resume = Resume::of(stored);
        LiveLog {
            key: key.clone(),
            db_key: db_key(key),
            state: Mutex::new(LiveState {
                memory_only,
                recent: VecDeque::new(),
                recent_bytes: 0,
                next_seq: resume.next_seq,
                committed: resume.next_seq,
                bytes: resume.bytes,
                dropped_bytes: 0,
                truncated: resume.truncated,
                stored_bytes: resume.stored_bytes,
                writers: 0,
            }),
            changed: watch::Sender::new(0),
        }
    }

    fn snapshot(&self, from: u64) -> Snapshot {
        let state = lock(&self.state);
        let base = state.base_seq();
        if from < base {
            return Snapshot::Behind { base };
        }
        let skip = usize::try_from(from - base).unwrap_or(usize::MAX);
        Snapshot::Covered {
            lines: state.recent.iter().skip(skip).cloned().collect(),
            complete: state.writers == 0,
        }
    }

    /// Stores one line: queues it for the database, keeps it in memory, then
    /// tells followers.
    fn push(self: &Arc<Self>, db: Option<&LogDb>, state: &mut LiveState, mut line: StoredLine) {
        line.seq = state.next_seq;
        state.next_seq += 1;
        let mut json = json_line(&line);
        state.stored_bytes += json.len() as u64;
        if !state.memory_only
            && let Some(db) = db
        {
            json.pop(); // the newline
            let put = Msg::Put {
                live: Arc::clone(self),
                seq: line.seq,
                json,
            };
            if db.send(put, false).is_err() {
                tracing::warn!(log = %self.key, "the step log database is closed; this step's later lines are kept in memory only");
                state.memory_only = true;
            }
        }
        state.recent_bytes += line.message.len() as u64;
        state.recent.push_back(Arc::new(line));
        self.trim(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Drops committed lines from the in-memory tail beyond its limits.
    fn trim(&self, state: &mut LiveState) {
        if state.memory_only {
            return;
        }
        while state.recent.len() > 1
            && (state.recent.len() > RECENT_LINES || state.recent_bytes > RECENT_BYTES)
            && state
                .recent
                .front()
                .is_some_and(|l| l.seq < state.committed)
        {
            if let Some(old) = state.recent.pop_front() {
                state.recent_bytes -= old.message.len() as u64;
            }
        }
    }

    /// The writer thread's word on line `seq`: committed, or not (then this log
    /// keeps its lines in memory from now on).
    fn committed(&self, seq: u64, ok: bool) {
        let mut state = lock(&self.state);
        if ok {
            state.committed = state.committed.max(seq + 1);
        } else if !state.memory_only {
            tracing::warn!(log = %self.key, "cannot store a step log line; this step's later lines are kept in memory only");
            state.memory_only = true;
        }
    }
}

/// Appends one attempt's lines to a step log. Cheap to clone; clones share one
/// writer, which closes when [`LogWriter::finish`] or
/// [`LogWriter::finish_durable`] is called or the last clone is dropped.
///
/// Writing never fails: a storage error is reported once with `tracing::warn!` and
/// the log's later lines are kept in memory only (still readable and followable
/// through this store). Lines written after close are ignored.
#[derive(Clone)]
pub struct LogWriter {
    handle: Arc<WriterHandle>,
}

struct WriterHandle {
    store: Arc<StoreInner>,
    live: Arc<LiveLog>,
    attempt: u32,
    cap: u64,
    mask: Option<MaskFn>,
    closed: AtomicBool,
}

impl fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.handle;
        f.debug_struct("LogWriter")
            .field("key", &h.live.key)
            .field("attempt", &h.attempt)
            .field("cap", &h.cap)
            .field("closed", &h.closed.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Appends a line from the guest (or the host's own capture), masked and
    /// counted against the cap.
    pub fn write(&self, line: &LogLine) {
        let h = &self.handle;
        if h.closed.load(Ordering::Acquire) {
            return;
        }
        let fields = line
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), h.mask(v)))
            .collect();
        h.append(
            DateTime::<Utc>::from(line.time),
            line.level,
            line.source,
            h.mask(&line.message),
            fields,
            true,
        );
    }

    /// Appends a host note about the step (level `info`, source `host`), such as
    /// "attempt 2 of 3 started". Notes are masked and count towards the cap, but
    /// are kept even after the cap was passed: they are few, written by the engine,
    /// and say what happened to the step when its own output was cut.
    pub fn note(&self, message: &str) {
        let h = &self.handle;
        if h.closed.load(Ordering::Acquire) {
            return;
        }
        h.append(
            Utc::now(),
            LogLevel::Info,
            LogSource::Host,
            h.mask(message),
            Vec::new(),
            false,
        );
    }

    /// Appends long host-side text about the step (a guest's failure message)
    /// at level `error`, source `host`: masked, in lines of at most 16 KiB (cut
    /// at character boundaries), counted against the cap like the guest's own
    /// lines, so a huge message fills the log up to its cap and no further.
    pub fn text(&self, message: &str) {
        const LINE: usize = 16 << 10;
        let h = &self.handle;
        let masked = h.mask(message);
        let mut rest = masked.as_str();
        while !rest.is_empty() && !h.closed.load(Ordering::Acquire) {
            let mut end = rest.len().min(LINE);
            while !rest.is_char_boundary(end) {
                end -= 1;
            }
            let (line, tail) = rest.split_at(end);
            h.append(
                Utc::now(),
                LogLevel::Error,
                LogSource::Host,
                line.to_owned(),
                Vec::new(),
                true,
            );
            rest = tail;
        }
    }

    /// Closes the writer: later lines are ignored, and once no writer of the
    /// log is open its followers end. The log's lines become durable shortly
    /// after (with the next group commit); [`LogWriter::finish_durable`] waits
    /// for that.
    pub fn finish(self) {
        self.handle.close(false);
    }

    /// Closes the writer as [`LogWriter::finish`] does, and resolves once the
    /// log's lines will be durable no later than any store write sent after
    /// this resolves: at once when the lines ride on the store's commits
    /// ([`LogStore::in_store`]: they are committed with that write or before
    /// it), after their own commit otherwise ([`LogWriter::finish_durable`]).
    /// A step's log is made durable before its outcome this way.
    pub async fn finish_before_store_writes(self) {
        if self.handle.store.db().is_some_and(LogDb::rides_on_store) {
            self.handle.close(false);
        } else {
            self.finish_durable().await;
        }
    }

    /// Closes the writer as [`LogWriter::finish`] does, and resolves once every
    /// line of the log written so far is on disk: `true` then, `false` when that
    /// is not so (the memory backend, or the database failed or was closed; the
    /// lines are then kept in memory). Clones of this writer are closed too.
    pub async fn finish_durable(self) -> bool {
        match self.handle.close(true) {
            Some(rx) => rx.await.unwrap_or(false),
            // Already closed by a clone: wait for everything queued so far.
            None => match self.handle.store.db() {
                Some(db) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    db.barrier(
                        Box::new(move |ok| {
                            let _ = tx.send(ok);
                        }),
                        true,
                    );
                    rx.await.unwrap_or(false)
                }
                None => false,
            },
        }
    }

    #[cfg(test)]
    /// Message bytes dropped at the cap since this process opened the log.
    pub fn dropped_bytes(&self) -> u64 {
        lock(&self.handle.live.state).dropped_bytes
    }
}

impl WriterHandle {
    fn mask(&self, text: &str) -> String {
        match &self.mask {
            Some(mask) => mask(text).into_owned(),
            None => text.to_owned(),
        }
    }

    fn append(
        &self,
        time: DateTime<Utc>,
        level: LogLevel,
        source: LogSource,
        message: String,
        fields: Vec<(String, String)>,
        capped: bool,
    ) {
        let live = &self.live;
        let mut state = lock(&live.state);
        // Checked under the lock: `close` sets the flag before it takes the lock,
        // so no line can slip in after the close has told followers the log ended.
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let len = message.len() as u64;
        if capped && (state.truncated || state.bytes.saturating_add(len) > self.cap) {
            if !state.truncated {
                state.truncated = true;
                let marker = self.line(
                    Utc::now(),
                    LogLevel::Warn,
                    LogSource::Host,
                    format!(
                        "{TRUNCATION_PREFIX}{} bytes; later lines are dropped]",
                        self.cap
                    ),
                    Vec::new(),
                );
                live.push(self.store.db(), &mut state, marker);
            }
            state.dropped_bytes += len;
            return;
        }
        state.bytes += len;
        let line = self.line(time, level, source, message, fields);
        live.push(self.store.db(), &mut state, line);
    }

    fn line(
        &self,
        time: DateTime<Utc>,
        level: LogLevel,
        source: LogSource,
        message: String,
        fields: Vec<(String, String)>,
    ) -> StoredLine {
        StoredLine {
            seq: 0, // set by `LiveLog::push`
            time,
            attempt: self.attempt,
            level: level.as_str().to_owned(),
            source: source.as_str().to_owned(),
            message,
            fields,
        }
    }

    /// Closes this writer; once no writer of the log is open, its followers end.
    /// Returns what resolves once every line of the log written so far is
    /// durable (`true`), or is known not to be (`false`). `urgent`: the caller
    /// waits for that, so lines kept in the store ask for a commit now rather
    /// than ride on the next store write.
    fn close(&self, urgent: bool) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return None;
        }
        let live = &self.live;
        {
            let mut state = lock(&live.state);
            state.writers = state.writers.saturating_sub(1);
            live.changed.send_modify(|n| *n += 1);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let Some(db) = self.store.db() else {
            let _ = tx.send(false);
            return Some(rx);
        };
        // Once the lines are committed, the log leaves the registry (unless a
        // writer opened it again meanwhile): the next writer resumes it from the
        // database. The closure holds the store weakly: the writer thread must
        // not keep it alive.
        let store = Arc::downgrade(&self.store);
        let live = Arc::clone(live);
        db.barrier(
            Box::new(move |committed| {
                if let Some(store) = store.upgrade() {
                    let mut registry = lock(&store.live);
                    let state = lock(&live.state);
                    if state.writers == 0
                        && !state.memory_only
                        && registry
                            .get(&live.key)
                            .is_some_and(|entry| Arc::ptr_eq(entry, &live))
                    {
                        registry.remove(&live.key);
                    }
                }
                let _ = tx.send(committed);
            }),
            urgent,
        );
        Some(rx)
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.close(false);
    }
}

/// Reads a live log from `seq` 0 on: from the in-memory tail when it reaches back
/// far enough, from the database otherwise.
struct Cursor {
    live: Arc<LiveLog>,
    store: Arc<StoreInner>,
    /// The next `seq` to return.
    next: u64,
}

enum Batch {
    /// New lines; `to_end` when they reach the end of the log at the time.
    Lines {
        lines: Vec<StoredLine>,
        to_end: bool,
    },
    /// No new lines; `complete` when no writer is open.
    UpToDate { complete: bool },
}

impl Batch {
    fn reached_end(&self) -> bool {
        matches!(
            self,
            Batch::Lines { to_end: true, .. } | Batch::UpToDate { .. }
        )
    }
}

impl Cursor {
    fn new(live: Arc<LiveLog>, store: Arc<StoreInner>) -> Self {
        Cursor {
            live,
            store,
            next: 0,
        }
    }

    async fn next_batch(&mut self) -> Result<Batch, LogError> {
        match self.live.snapshot(self.next) {
            Snapshot::Covered { lines, complete } => match lines.last() {
                Some(last) => {
                    self.next = last.seq + 1;
                    Ok(Batch::Lines {
                        lines: lines.iter().map(|line| StoredLine::clone(line)).collect(),
                        to_end: true,
                    })
                }
                None => Ok(Batch::UpToDate { complete }),
            },
            Snapshot::Behind { base } => {
                let lines = self.read_stored().await?;
                if lines.is_empty() {
                    // Every line older than the in-memory tail was committed
                    // before it left the tail, so only a removal gets here; go
                    // on from what is still known.
                    tracing::warn!(
                        log = %self.live.key,
                        from = self.next,
                        to = base,
                        "step log lines are missing from the log database; skipping them"
                    );
                    self.next = base;
                }
                Ok(Batch::Lines {
                    lines,
                    to_end: false,
                })
            }
        }
    }

    async fn read_stored(&mut self) -> Result<Vec<StoredLine>, LogError> {
        let Some(db) = self.store.db() else {
            return Ok(Vec::new());
        };
        let path = db.path().to_owned();
        let store = Arc::clone(&self.store);
        let (key, from) = (self.live.db_key.clone(), self.next);
        let lines = blocking(path, move || match store.db() {
            Some(db) => db.read(&key, from),
            None => Ok(Vec::new()),
        })
        .await?;
        if let Some(last) = lines.last() {
            self.next = last.seq + 1;
        }
        Ok(lines)
    }
}

/// The state of one [`LogStore::follow`] stream.
struct Follower {
    cursor: Cursor,
    changed: watch::Receiver<u64>,
    pending: VecDeque<StoredLine>,
    done: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<StoredLine, LogError>> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some(Ok(line));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill().await {
                self.done = true;
                return Some(Err(e));
            }
        }
    }

    async fn fill(&mut self) -> Result<(), LogError> {
        loop {
            // Marking the current version seen before looking at the log means a
            // line stored after the look wakes `changed()` below.
            self.changed.borrow_and_update();
            match self.cursor.next_batch().await? {
                Batch::Lines { lines, .. } => {
                    if !lines.is_empty() {
                        self.pending.extend(lines);
                        return Ok(());
                    }
                }
                Batch::UpToDate { complete: true } => {
                    self.done = true;
                    return Ok(());
                }
                Batch::UpToDate { complete: false } => {
                    if self.changed.changed().await.is_err() {
                        // The sender lives in the `LiveLog` this follower holds.
                        self.done = true;
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn key(step: &str) -> LogKey {
        LogKey::new("eng", "exec-1", step).expect("valid key")
    }

    fn line(message: &str) -> LogLine {
        LogLine {
            time: SystemTime::now(),
            level: LogLevel::Info,
            source: LogSource::Stdout,
            message: message.to_owned(),
            fields: Vec::new(),
        }
    }

    fn messages(lines: &[StoredLine]) -> Vec<&str> {
        lines.iter().map(|l| l.message.as_str()).collect()
    }

    fn seqs(lines: &[StoredLine]) -> Vec<u64> {
        lines.iter().map(|l| l.seq).collect()
    }

    fn file_of(dir: &Path, key: &LogKey) -> PathBuf {
        dir.join(&key.engine)
            .join(&key.execution)
            .join(format!("{}.jsonl", key.step))
    }

    async fn collect(stream: BoxStream<'static, Result<StoredLine, LogError>>) -> Vec<StoredLine> {
        stream
            .map(|line| line.expect("follow yields lines"))
            .collect()
            .await
    }

    const BIG: u64 = 1 << 30;

    #[tokio::test]
    async fn written_lines_are_read_back_from_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let key = key("build");
        let writer = store.writer(&key, 1, BIG, None).unwrap();
        writer.note("attempt 1 of 3 started");
        writer.write(&LogLine {
            level: LogLevel::Warn,
            source: LogSource::Log,
            fields: vec![("file".into(), "main.rs".into())],
            ..line("compiling")
        });
        writer.write(&line("done"));

        // Readable while the writer is open...
        let lines = store.read(&key).await.unwrap();
        assert_eq!(
            messages(&lines),
            ["attempt 1 of 3 started", "compiling", "done"]
        );
        assert!(writer.finish_durable().await, "committed");

        // ...and afterwards from the database alone, in this process and the next.
        assert!(
            store.inner.live(&key).is_none(),
            "the log left the registry"
        );
        let lines = store.read(&key).await.unwrap();
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(store.read(&key).await.unwrap(), lines);
        assert_eq!(seqs(&lines), [0, 1, 2]);
        assert_eq!(
            (lines[0].source.as_str(), lines[0].level.as_str()),
            ("host", "info")
        );
        assert_eq!(
            (lines[1].source.as_str(), lines[1].level.as_str()),
            ("log", "warn")
        );
        assert_eq!(lines[1].fields, [("file".to_owned(), "main.rs".to_owned())]);
        assert!(lines.iter().all(|l| l.attempt == 1));

        assert!(!file_of(dir.path(), &key).exists(), "no file per step");
        let size: usize = lines.iter().map(|l| json_line(l).len()).sum();
        assert_eq!(store.size(&key), Some(size as u64));
        assert_eq!(
            messages(&store.tail(&key, 2).await.unwrap()),
            ["compiling", "done"]
        );
        assert_eq!(store.tail(&key, 10).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_log_that_was_never_written_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let err = store.read(&key("nope")).await.unwrap_err();
        assert!(
            matches!(&err, LogError::NotFound(k) if *k == key("nope")),
            "{err}"
        );
        assert!(
            err.to_string().contains("no log for step eng/exec-1/nope"),
            "{err}"
        );
        assert_eq!(store.size(&key("nope")), None);
        let followed: Vec<_> = store.follow(&key("nope")).collect().await;
        assert!(matches!(followed[..], [Err(LogError::NotFound(_))]));
    }

    #[tokio::test]
    async fn seq_continues_across_attempts_and_a_restart_and_the_cap_counts_the_whole_step() {
        let dir = tempfile::tempdir().unwrap();
        let key = key("test");
        {
            let store = LogStore::open(dir.path()).unwrap();
            let first = store.writer(&key, 1, 10, None).unwrap();
            first.write(&line("one"));
            first.write(&line("two"));
            first.finish();
            let second = store.writer(&key, 2, 10, None).unwrap();
            second.write(&line("six"));
            second.finish();
        }
        // A new store over the same directory: the process restarted.
        let store = LogStore::open(dir.path()).unwrap();
        let third = store.writer(&key, 3, 10, None).unwrap();
        third.write(&line("ten")); // 9 + 3 bytes passes the cap of 10
        assert_eq!(third.dropped_bytes(), 3);
        third.finish();

        let lines = store.read(&key).await.unwrap();
        assert_eq!(seqs(&lines), [0, 1, 2, 3]);
        assert_eq!(
            lines.iter().map(|l| l.attempt).collect::<Vec<_>>(),
            [1, 1, 2, 3]
        );
        assert!(lines[3].is_truncation_marker(), "{:?}", lines[3]);

        // Another restart: the marker is recognised, so nothing more is kept and no
        // second marker is written.
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        let fourth = store.writer(&key, 4, 10, None).unwrap();
        fourth.write(&line("x"));
        assert_eq!(fourth.dropped_bytes(), 1);
        fourth.finish();
        assert_eq!(store.read(&key).await.unwrap().len(), 4);
    }

    /// Writes a log file the way arkline 0.1 did.
    fn write_legacy(dir: &Path, key: &LogKey, lines: &[&str], tail: &[u8]) -> PathBuf {
        let path = file_of(dir, key);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = Vec::new();
        for (seq, message) in lines.iter().enumerate() {
            let line = StoredLine {
                seq: seq as u64,
                time: Utc::now(),
                attempt: 1,
                level: "info".into(),
                source: "stdout".into(),
                message: (*message).to_owned(),
                fields: Vec::new(),
            };
            bytes.extend(json_line(&line));
        }
        bytes.extend_from_slice(tail);
        fs::write(&path, &bytes).unwrap();
        path
    }

    #[tokio::test]
    async fn a_legacy_log_file_is_read_and_carried_over_when_its_step_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let key = key("torn");
        // A crash in the middle of writing the third line.
        let path = write_legacy(
            dir.path(),
            &key,
            &["a", "b"],
            br#"{"seq":2,"time":"2026-01-0"#,
        );
        let other = write_legacy(
            dir.path(),
            &LogKey::new("eng", "exec-1", "done").unwrap(),
            &["x"],
            b"",
        );

        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(messages(&store.read(&key).await.unwrap()), ["a", "b"]);
        let writer = store.writer(&key, 2, BIG, None).unwrap();
        writer.write(&line("c"));
        assert!(writer.finish_durable().await);
        assert!(!path.exists(), "the carried-over file is removed");
        assert!(other.exists(), "a log that was not resumed stays a file");

        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        let lines = store.read(&key).await.unwrap();
        assert_eq!(messages(&lines), ["a", "b", "c"]);
        assert_eq!(seqs(&lines), [0, 1, 2]);
        assert_eq!(
            lines.iter().map(|l| l.attempt).collect::<Vec<_>>(),
            [1, 1, 2]
        );
        let done = LogKey::new("eng", "exec-1", "done").unwrap();
        assert_eq!(messages(&store.read(&done).await.unwrap()), ["x"]);
        assert_eq!(messages(&collect(store.follow(&done)).await), ["x"]);
        // Retention removes both kinds.
        store.remove_execution("eng", "exec-1").await.unwrap();
        assert!(!dir.path().join("eng/exec-1").exists());
        assert!(matches!(store.read(&key).await, Err(LogError::NotFound(_))));
        assert!(matches!(
            store.read(&done).await,
            Err(LogError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn a_bad_last_line_with_a_newline_is_torn_but_a_bad_earlier_line_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let key = key("bad");
        let path = write_legacy(dir.path(), &key, &["a"], b"{not json\n");
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(messages(&store.read(&key).await.unwrap()), ["a"]);

        let mut bad_middle = fs::read(&path).unwrap();
        bad_middle.extend(json_line(&store.read(&key).await.unwrap()[0]));
        fs::write(&path, &bad_middle).unwrap();
        let err = store.read(&key).await.unwrap_err();
        assert!(matches!(err, LogError::Corrupt { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("corrupt at line 2"), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let err = store.writer(&key, 2, BIG, None).unwrap_err();
        assert!(matches!(err, LogError::Corrupt { line: 2, .. }), "{err}");
    }

    #[tokio::test]
    async fn the_cap_keeps_one_marker_and_counts_what_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let key = key("flood");
        let writer = store.writer(&key, 1, 10, None).unwrap();
        writer.write(&line("12345"));
        writer.write(&line("678"));
        writer.write(&line("abcd")); // 8 + 4 > 10: replaced by the marker
        writer.write(&line("x")); // would fit, but the log is truncated
        writer.write(&line("yz"));
        writer.note("attempt 1 failed");
        assert_eq!(writer.dropped_bytes(), 4 + 1 + 2);
        writer.finish();

        let lines = store.read(&key).await.unwrap();
        assert_eq!(
            messages(&lines),
            [
                "12345",
                "678",
                "[log truncated: the step's log passed its cap of 10 bytes; later lines are dropped]",
                "attempt 1 failed",
            ]
        );
        assert_eq!(
            (lines[2].source.as_str(), lines[2].level.as_str()),
            ("host", "warn")
        );
        assert_eq!(lines.iter().filter(|l| l.is_truncation_marker()).count(), 1);
        assert_eq!(seqs(&lines), [0, 1, 2, 3]);
    }

    fn hide_hunter2() -> MaskFn {
        mask_fn(|s| {
            if s.contains("hunter2") {
                Cow::Owned(s.replace("hunter2", "***"))
            } else {
                Cow::Borrowed(s)
            }
        })
    }

    #[tokio::test]
    async fn secrets_are_masked_before_the_cap_and_never_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let key = key("deploy");
        let masked = "password is ***";
        // The cap fits the masked message exactly, not the plaintext one.
        let cap = masked.len() as u64 + "restored cache key ***".len() as u64;
        let writer = store.writer(&key, 1, cap, Some(hide_hunter2())).unwrap();
        let follow = store.follow(&key);
        writer.write(&LogLine {
            source: LogSource::Log,
            fields: vec![
                ("token".into(), "hunter2".into()),
                ("user".into(), "bob".into()),
            ],
            ..line("password is hunter2")
        });
        writer.note("restored cache key hunter2");
        assert_eq!(writer.dropped_bytes(), 0);
        assert!(writer.finish_durable().await);
        store.close().await;

        let raw = fs::read(dir.path().join(DB_FILE)).unwrap();
        assert!(
            raw.windows(3).any(|w| w == b"bob"),
            "the lines are in the database"
        );
        assert!(
            !raw.windows(7).any(|w| w == b"hunter2"),
            "plaintext in the database"
        );
        let store = LogStore::open(dir.path()).unwrap();
        let lines = store.read(&key).await.unwrap();
        assert_eq!(messages(&lines), [masked, "restored cache key ***"]);
        assert_eq!(
            lines[0].fields,
            [
                ("token".to_owned(), "***".to_owned()),
                ("user".to_owned(), "bob".to_owned())
            ]
        );
        assert_eq!(
            collect(follow).await,
            lines,
            "followers see masked lines only"
        );
    }

    #[tokio::test]
    async fn follow_gets_the_backlog_then_live_lines_and_ends_on_finish() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let key = key("live");
        let writer = store.writer(&key, 1, BIG, None).unwrap();
        writer.write(&line("a"));
        writer.write(&line("b"));

        let mut follow = store.follow(&key);
        assert_eq!(follow.next().await.unwrap().unwrap().message, "a");
        assert_eq!(follow.next().await.unwrap().unwrap().message, "b");
        let waiting = tokio::spawn(async move {
            let next = follow.next().await.unwrap().unwrap();
            (next, follow)
        });
        writer.write(&line("c"));
        let (next, mut follow) = waiting.await.unwrap();
        assert_eq!((next.seq, next.message.as_str()), (2, "c"));
        writer.write(&line("d"));
        writer.finish();
        assert_eq!(follow.next().await.unwrap().unwrap().message, "d");
        assert!(follow.next().await.is_none(), "the stream ends on finish");
    }

    #[tokio::test]
    async fn follow_ends_when_the_writer_is_dropped_without_finish() {
        let store = LogStore::in_memory();
        let key = key("dropped");
        let writer = store.writer(&key, 1, BIG, None).unwrap();
        let clone = writer.clone();
        let follow = store.follow(&key);
        writer.write(&line("a"));
        drop(writer);
        clone.write(&line("b"));
        drop(clone);
        assert_eq!(messages(&collect(follow).await), ["a", "b"]);
    }

    #[tokio::test]
    async fn follow_of_a_completed_log_ends_after_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let key = key("done");
        {
            let store = LogStore::open(dir.path()).unwrap();
            let writer = store.writer(&key, 1, BIG, None).unwrap();
            writer.write(&line("a"));
            writer.write(&line("b"));
            writer.finish();
            assert_eq!(messages(&collect(store.follow(&key)).await), ["a", "b"]);
        }
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(messages(&collect(store.follow(&key)).await), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_follower_behind_the_in_memory_tail_reads_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let key = key("lag");
        let writer = store.writer(&key, 1, BIG, None).unwrap();
        let total = RECENT_LINES as u64 * 5;
        let mut fresh = store.follow(&key);
        let mut partway = store.follow(&key);
        writer.write(&line("0"));
        writer.write(&line("1"));
        // `partway` takes two lines from memory, then both fall far behind.
        assert_eq!(partway.next().await.unwrap().unwrap().seq, 0);
        assert_eq!(partway.next().await.unwrap().unwrap().seq, 1);
        for i in 2..total - 1 {
            writer.write(&line(&i.to_string()));
        }
        // Once the lines are committed, the next one trims the in-memory tail.
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.inner.db().unwrap().barrier(
            Box::new(move |ok| {
                let _ = tx.send(ok);
            }),
            true,
        );
        assert!(rx.await.unwrap());
        writer.write(&line(&(total - 1).to_string()));
        assert!(lock(&writer.handle.live.state).recent.len() <= RECENT_LINES);
        assert_eq!(fresh.next().await.unwrap().unwrap().seq, 0);
        writer.finish();

        let rest = collect(fresh).await;
        assert_eq!(seqs(&rest), (1..total).collect::<Vec<_>>());
        let rest = collect(partway).await;
        assert_eq!(seqs(&rest), (2..total).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_started_mid_stream_gets_every_line_once_in_order() {
        const TOTAL: u64 = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let key = key("busy");
        let writer = store.writer(&key, 1, BIG, None).unwrap();
        let (started, mid_stream) = tokio::sync::oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            let mut started = Some(started);
            for i in 0..TOTAL {
                writer.write(&line(&i.to_string()));
                if i == 2_500
                    && let Some(started) = started.take()
                {
                    let _ = started.send(());
                }
            }
            writer.finish();
        });
        mid_stream.await.unwrap();
        let lines = collect(store.follow(&key)).await;
        task.await.unwrap();
        assert_eq!(seqs(&lines), (0..TOTAL).collect::<Vec<_>>());
        assert!(
            lines
                .iter()
                .enumerate()
                .all(|(i, l)| l.message == i.to_string())
        );
    }

    #[tokio::test]
    async fn once_the_database_is_closed_later_lines_are_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let key = key("failing");
        let writer = store.writer(&key, 1, BIG, None).unwrap();
        writer.write(&line("before"));
        store.close().await;
        writer.write(&line("after 1"));
        writer.write(&line("after 2"));
        assert!(!writer.finish_durable().await, "not durable");

        let lines = store.read(&key).await.unwrap();
        assert_eq!(messages(&lines), ["before", "after 1", "after 2"]);
        assert_eq!(seqs(&lines), [0, 1, 2]);
        assert_eq!(collect(store.follow(&key)).await, lines);
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            messages(&store.read(&key).await.unwrap()),
            ["before"],
            "what was committed before the close"
        );
    }

    #[tokio::test]
    async fn in_memory_store_behaves_like_the_file_store() {
        let store = LogStore::in_memory();
        let key = key("mem");
        assert!(matches!(store.read(&key).await, Err(LogError::NotFound(_))));

        let first = store.writer(&key, 1, 8, Some(hide_hunter2())).unwrap();
        let follow = store.follow(&key);
        first.write(&line("hunter2")); // masked to 3 bytes
        first.finish();
        let second = store.writer(&key, 2, 8, None).unwrap();
        second.write(&line("four"));
        second.write(&line("more")); // 7 + 4 > 8
        assert_eq!(second.dropped_bytes(), 4);
        second.finish();

        let lines = store.read(&key).await.unwrap();
        assert_eq!(messages(&lines[..2]), ["***", "four"]);
        assert!(lines[2].is_truncation_marker());
        assert_eq!(seqs(&lines), [0, 1, 2]);
        assert_eq!(
            lines.iter().map(|l| l.attempt).collect::<Vec<_>>(),
            [1, 2, 2]
        );
        // A follower started during attempt 1 but polled only now sees the whole
        // log: it ends once no writer is open.
        assert_eq!(collect(follow).await, lines);
        assert_eq!(collect(store.follow(&key)).await, lines);
        assert_eq!(store.tail(&key, 1).await.unwrap(), lines[2..]);
        assert!(store.size(&key).is_some_and(|n| n > 0));

        store.remove_execution("eng", "exec-1").await.unwrap();
        assert!(matches!(store.read(&key).await, Err(LogError::NotFound(_))));
        assert_eq!(store.size(&key), None);
    }

    #[tokio::test]
    async fn lines_kept_in_the_store_ride_on_its_commits() {
        use crate::store::{RedbStore, Store};
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("logs");
        let redb = Arc::new(RedbStore::open(dir.path()).unwrap());
        let store = LogStore::in_store(redb.clone(), &legacy);
        let key = key("build");

        // With nothing else to write, the store commits the lines on their own.
        let first = store.writer(&key, 1, BIG, None).unwrap();
        first.write(&line("alone"));
        assert!(first.finish_durable().await);
        assert!(redb.commit_latency().snapshot().count >= 1);

        // Lines queued before a store write are committed with it or before it.
        let second = store.writer(&key, 2, BIG, None).unwrap();
        second.write(&line("before the write"));
        second.finish_before_store_writes().await;
        let object = crate::model::DynamicObject {
            api_version: crate::model::API_VERSION.into(),
            kind: "Pipeline".into(),
            metadata: crate::model::ObjectMeta::new("eng", "p"),
            spec: serde_json::json!({}),
            status: serde_json::Value::Null,
        };
        redb.create(object).await.unwrap();
        // Closed as a crash would leave it: the log store is not closed first.
        redb.close().await.unwrap();
        drop(store);
        drop(redb);

        let redb = Arc::new(RedbStore::open(dir.path()).unwrap());
        let store = LogStore::in_store(redb.clone(), &legacy);
        let lines = store.read(&key).await.unwrap();
        assert_eq!(messages(&lines), ["alone", "before the write"]);
        assert_eq!(seqs(&lines), [0, 1]);
        // A resumed step goes on from there; retention removes it.
        let third = store.writer(&key, 3, BIG, None).unwrap();
        third.write(&line("resumed"));
        assert!(third.finish_durable().await);
        assert_eq!(seqs(&store.read(&key).await.unwrap()), [0, 1, 2]);
        store.remove_execution("eng", "exec-1").await.unwrap();
        assert!(matches!(store.read(&key).await, Err(LogError::NotFound(_))));
        assert!(!dir.path().join(DB_FILE).exists(), "no log file of its own");
        store.close().await;
        redb.close().await.unwrap();
    }

    #[tokio::test]
    async fn remove_execution_deletes_only_that_executions_logs() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let gone = key("a");
        let kept = LogKey::new("eng", "exec-2", "a").unwrap();
        for k in [&gone, &kept] {
            store.writer(k, 1, BIG, None).unwrap().write(&line("hi"));
        }
        store.remove_execution("eng", "exec-1").await.unwrap();
        assert!(matches!(
            store.read(&gone).await,
            Err(LogError::NotFound(_))
        ));
        assert_eq!(messages(&store.read(&kept).await.unwrap()), ["hi"]);
        store.remove_execution("eng", "never-ran").await.unwrap();
        // The removal is durable; and an engine's removal takes all of it.
        drop(store);
        let store = LogStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.read(&gone).await,
            Err(LogError::NotFound(_))
        ));
        assert_eq!(messages(&store.read(&kept).await.unwrap()), ["hi"]);
        store.remove_engine("eng").await.unwrap();
        assert!(matches!(
            store.read(&kept).await,
            Err(LogError::NotFound(_))
        ));
        assert!(matches!(
            store.remove_execution("eng", "..").await,
            Err(LogError::InvalidKey {
                part: "execution",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn keys_that_are_not_single_path_components_are_refused() {
        for (engine, execution, step, part) in [
            ("eng", "..", "s", "execution"),
            ("eng", "exec", "a/b", "step"),
            ("", "exec", "s", "engine"),
            ("eng", "exec", ".", "step"),
            ("eng", "a\\b", "s", "execution"),
            ("eng", "exec", "nul\0", "step"),
        ] {
            let err = LogKey::new(engine, execution, step).unwrap_err();
            assert!(
                matches!(&err, LogError::InvalidKey { part: p, .. } if *p == part),
                "{err}"
            );
        }
        let err = LogKey::new("eng", "exec", "a/b").unwrap_err();
        assert!(
            err.to_string().contains(r#"the step "a/b" contains '/'"#),
            "{err}"
        );

        // Keys built field by field are checked by every operation.
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let bad = LogKey {
            engine: "eng".into(),
            execution: "..".into(),
            step: "s".into(),
        };
        assert!(matches!(
            store.writer(&bad, 1, BIG, None),
            Err(LogError::InvalidKey { .. })
        ));
        assert!(matches!(
            store.read(&bad).await,
            Err(LogError::InvalidKey { .. })
        ));
        let followed: Vec<_> = store.follow(&bad).collect().await;
        assert!(matches!(followed[..], [Err(LogError::InvalidKey { .. })]));
        assert_eq!(store.size(&bad), None);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [DB_FILE], "nothing created beside the database");
    }

    #[test]
    fn a_key_displays_as_a_path() {
        assert_eq!(key("build").to_string(), "eng/exec-1/build");
    }
}

/// The module's example, kept as a test (the module is private to the crate).
#[cfg(test)]
mod example {
    #[test]
    fn log_store() {
        use crate::host::step_log::{LogLevel, LogLine, LogSource};
        use crate::pipeline::logs::{LogKey, LogStore};
        use futures::StreamExt;

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = LogStore::in_memory();
            let key = LogKey::new("main", "build-42", "compile")?;
            let writer = store.writer(&key, 1, 1 << 20, None)?;
            let follow = store.follow(&key);

            writer.note("attempt 1 of 3 started");
            writer.write(&LogLine {
                time: std::time::SystemTime::now(),
                level: LogLevel::Info,
                source: LogSource::Stdout,
                message: "compiling".into(),
                fields: vec![],
            });
            writer.finish();

            let lines: Vec<String> = follow.map(|line| line.unwrap().message).collect().await;
            assert_eq!(lines, ["attempt 1 of 3 started", "compiling"]);
            Ok::<(), crate::pipeline::logs::LogError>(())
        })
        .unwrap();
    }
}
