//! The embedded default backend: one redb file in a data dir.
//!
//! All writes go through one writer thread. It takes every operation waiting in
//! its queue (up to [`RedbOptions::max_batch`]), applies them in order inside one
//! write transaction — each operation's compare-and-swap sees the effects of the
//! ones before it — commits once with immediate durability (one fsync for the
//! whole batch: group commit), and only then answers each caller with its own
//! result. An answer is therefore an acknowledgement that the write is on disk;
//! redb's copy-on-write commit makes a crash at any point leave the last committed
//! state.
//!
//! Reads use redb read transactions on the blocking pool and never wait for the writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use super::mutation::{self, Op, OpOutput, Persist};
use super::watch::{EventLog, EventPage};
use super::{
    DeleteOptions, DeleteOutcome, EncodedList, EncodedObject, EncodedWatchEvent,
    EncodedWatchStream, EventType, ListQuery, ObjectList, ObjectRef, Retention, Revision, Store,
    StoreError, WatchEvent, WatchStream,
};
use crate::metrics::{COMMIT_DURATION_BUCKETS, Histogram};
use crate::model::{DynamicObject, ObjectMeta};

/// The schema version this build writes. Files with an older version are
/// migrated on open; files with a newer one are refused.
pub const SCHEMA_VERSION: u32 = 1;

/// The store file inside the data dir.
const FILE_NAME: &str = "store.redb";

/// `kind/engine/name` → JSON of the object.
const OBJECTS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("objects");
/// revision → encoded event (see [`encode_event`]).
const EVENTS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("events");
/// Store bookkeeping: `schema_version`, `revision`, `compacted`.
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");

const SCHEMA_KEY: &str = "schema_version";
const REVISION_KEY: &str = "revision";
const COMPACTED_KEY: &str = "compacted";

/// A step that upgrades a file from schema version `from` to `from + 1`.
struct Migration {
    from: u32,
    run: fn(&WriteTransaction) -> Result<(), redb::Error>,
}

/// Every migration, in order. Empty while there is one schema version; add one
/// here (and bump [`SCHEMA_VERSION`]) when the layout changes. Before the first
/// migration runs, the file is copied beside itself
/// (`store.redb.schema<N>.bak`, once); the migrations then run in the same
/// transaction as the version bump, so a crash leaves the old version whole.
#[cfg(not(test))]
const MIGRATIONS: &[Migration] = &[];

/// In unit tests, a no-op migration from a made-up version 0 exercises the
/// backup and the version bump.
#[cfg(test)]
const MIGRATIONS: &[Migration] = &[Migration {
    from: 0,
    run: |_| Ok(()),
}];

/// Copies the store file to `store.redb.schema<version>.bak` beside it, unless
/// that backup exists (a migration interrupted before its commit left the
/// file at `version`, and the first copy is the one to keep).
fn back_up_before_migrating(shared: &Shared, version: u32) -> Result<(), StoreError> {
    let backup = shared
        .path
        .with_file_name(format!("{FILE_NAME}.schema{version}.bak"));
    if backup.exists() {
        return Ok(());
    }
    let tmp = backup.with_extension("bak.tmp");
    let copied = std::fs::copy(&shared.path, &tmp)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &backup));
    copied.map_err(|source| StoreError::Backend {
        operation: "back up the store before migrating it",
        path: backup.clone(),
        source: Box::new(source),
    })?;
    tracing::warn!(
        path = %shared.path.display(),
        backup = %backup.display(),
        from = version,
        to = SCHEMA_VERSION,
        "migrating the store to this build's schema; the old file is kept as the backup"
    );
    Ok(())
}

/// Options of a [`RedbStore`].
#[derive(Debug, Clone)]
pub struct RedbOptions {
    /// How many watch events to keep.
    pub retention: Retention,
    /// Most operations committed in one transaction.
    pub max_batch: usize,
    /// Operations that may wait for the writer before callers wait to enqueue.
    pub queue_depth: usize,
    /// Save redb's allocator state with every commit, so that opening after a
    /// crash is almost instant instead of walking the whole file; commits cost a
    /// little more. Off by default.
    pub quick_repair: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            max_batch: 1024,
            queue_depth: 8192,
            quick_repair: false,
        }
    }
}

impl RedbOptions {
    /// Sets the event retention.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Turns quick repair on or off (see [`RedbOptions::quick_repair`]).
    pub fn quick_repair(mut self, enabled: bool) -> Self {
        self.quick_repair = enabled;
        self
    }

    /// Sets the largest batch per transaction (at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }
}

/// Work for the writer.
enum Job {
    Write(Box<Op>),
    Compact(Revision),
    /// Nothing of the store's own: the rider has rows waiting.
    Nudge,
}

/// Where the writer answers.
enum Reply {
    Write(oneshot::Sender<Result<OpOutput, StoreError>>),
    Compact(oneshot::Sender<Result<(), StoreError>>),
    Nothing,
}

/// What runs after a commit that carried a rider's rows; its argument says
/// whether the commit succeeded.
pub(crate) type Settle = Box<dyn FnOnce(bool) + Send>;

/// Rows of another part of arkline that ride on the store's group commit, so
/// that one `fdatasync` covers both: step log lines. The writer calls
/// [`Rider::write`] inside every write transaction, after the batch's own
/// operations, and runs the returned [`Settle`] once the transaction is
/// committed (or has failed). Rows the rider queued before an operation was
/// sent to the store are therefore committed no later than that operation.
pub(crate) trait Rider: Send + Sync {
    /// Writes what is waiting into `txn`: whether anything was written, and
    /// what to run after the commit.
    fn write(&self, txn: &WriteTransaction) -> Result<(bool, Settle), redb::Error>;
}

struct Command {
    job: Job,
    reply: Reply,
}

struct Shared {
    /// `None` once [`RedbStore::close`] has closed the file (and released its
    /// lock), whoever still holds a handle.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// Rows that ride on this store's commits (see [`Rider`]).
    rider: RwLock<Option<Arc<dyn Rider>>>,
    /// Events handed to watches, by the watch's kind and engine filter.
    delivered: Mutex<HashMap<(String, Option<String>), u64>>,
    /// The newest events, as committed, for watches that keep up: read from
    /// memory, without a read transaction or a hop to the blocking pool.
    recent: Mutex<Recent>,
}

/// The newest events of the log, in memory (see [`Shared::read_recent`]).
#[derive(Debug, Default)]
struct Recent {
    /// The revision just before the first event kept (events are consecutive).
    start: Revision,
    events: std::collections::VecDeque<Arc<[u8]>>,
    bytes: usize,
    /// The log's compacted revision.
    compacted: Revision,
}

/// How many events, and bytes of them, [`Recent`] keeps at most.
const RECENT_EVENTS: usize = 4096;
const RECENT_BYTES: usize = 16 << 20;

impl Recent {
    /// Appends the events of a commit (revisions `start + len + 1`…).
    fn extend(&mut self, first: Revision, events: Vec<Vec<u8>>, compacted: Revision) {
        self.compacted = compacted;
        if first != self.start + self.events.len() as u64 + 1 {
            // Not consecutive (cannot happen: one writer appends every
            // commit): start again from here rather than serve a gap.
            self.events.clear();
            self.bytes = 0;
            self.start = first - 1;
        }
        for event in events {
            self.bytes += event.len();
            self.events.push_back(event.into());
        }
        while self.events.len() > RECENT_EVENTS || self.bytes > RECENT_BYTES {
            let Some(old) = self.events.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            self.start += 1;
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The database, held open for as long as the guard lives.
    fn lock_db(&self) -> RwLockReadGuard<'_, Option<Database>> {
        self.db.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn database<'g>(&self, guard: &'g Option<Database>) -> Result<&'g Database, StoreError> {
        guard.as_ref().ok_or_else(|| StoreError::Closed {
            path: self.path.clone(),
        })
    }

    fn begin_read(&self, guard: &Option<Database>) -> Result<redb::ReadTransaction, StoreError> {
        self.database(guard)?
            .begin_read()
            .map_err(self.backend("begin a read"))
    }

    fn backend<E>(&self, operation: &'static str) -> impl FnOnce(E) -> StoreError + '_
    where
        E: Into<redb::Error>,
    {
        move |e| StoreError::Backend {
            operation,
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn corrupt(&self, record: impl Into<String>, reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            record: record.into(),
            reason: reason.to_string(),
        }
    }

    fn decode_object(&self, key: &str, bytes: &[u8]) -> Result<DynamicObject, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| self.corrupt(format!("object {key}"), e))
    }

    fn get(&self, key: &ObjectRef) -> Result<Option<DynamicObject>, StoreError> {
        match self.get_encoded(key)? {
            Some(EncodedObject::Json { json, .. }) => self
                .decode_object(&mutation::storage_key(key), &json)
                .map(Some),
            Some(EncodedObject::Decoded(obj)) => Ok(Some(*obj)),
            None => Ok(None),
        }
    }

    /// As [`Shared::get`], the stored JSON as it is.
    fn get_encoded(&self, key: &ObjectRef) -> Result<Option<EncodedObject>, StoreError> {
        let db = self.lock_db();
        let txn = self.begin_read(&db)?;
        let table = txn
            .open_table(OBJECTS)
            .map_err(self.backend("open the objects table"))?;
        let storage_key = mutation::storage_key(key);
        let found = table
            .get(storage_key.as_str())
            .map_err(self.backend("read an object"))?;
        Ok(found.map(|g| EncodedObject::Json {
            kind: key.kind.clone(),
            json: g.value().to_vec(),
        }))
    }

    /// As [`Shared::list`], the stored JSON as it is: only the metadata is read,
    /// to match the name and selector and to order the items.
    fn list_encoded(&self, query: &ListQuery) -> Result<EncodedList, StoreError> {
        /// What a list matches and orders by.
        #[derive(serde::Deserialize)]
        struct Listed {
            metadata: ListedMeta,
        }
        #[derive(serde::Deserialize)]
        struct ListedMeta {
            name: String,
            #[serde(default)]
            engine: String,
            #[serde(default)]
            labels: std::collections::BTreeMap<String, String>,
        }
        let db = self.lock_db();
        let txn = self.begin_read(&db)?;
        let meta = txn
            .open_table(META)
            .map_err(self.backend("open the meta table"))?;
        let revision =
            meta_value(&meta, REVISION_KEY).map_err(self.backend("read the revision"))?;
        let table = txn
            .open_table(OBJECTS)
            .map_err(self.backend("open the objects table"))?;
        let (from, to) = mutation::storage_range(query);
        let mut items = Vec::new();
        for entry in table
            .range(from.as_str()..to.as_str())
            .map_err(self.backend("list objects"))?
        {
            let (k, v) = entry.map_err(self.backend("list objects"))?;
            let listed: Listed = serde_json::from_slice(v.value())
                .map_err(|e| self.corrupt(format!("object {}", k.value()), e))?;
            let m = listed.metadata;
            if query.name.as_ref().is_none_or(|n| *n == m.name) && query.selector.matches(&m.labels)
            {
                items.push((
                    (m.engine, m.name),
                    EncodedObject::Json {
                        kind: query.kind.clone(),
                        json: v.value().to_vec(),
                    },
                ));
            }
        }
        if query.engine.is_none() {
            items.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(EncodedList {
            items: items.into_iter().map(|(_, obj)| obj).collect(),
            revision,
        })
    }

    fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError> {
        let listed = self.list_encoded(query)?;
        let items = listed
            .items
            .into_iter()
            .map(|obj| match obj {
                EncodedObject::Json { json, .. } => serde_json::from_slice(&json)
                    .map_err(|e| self.corrupt(format!("object of kind {}", query.kind), e)),
                EncodedObject::Decoded(obj) => Ok(*obj),
            })
            .collect::<Result<_, _>>()?;
        Ok(ObjectList {
            items,
            revision: listed.revision,
        })
    }

    fn compacted(&self) -> Result<Revision, StoreError> {
        let db = self.lock_db();
        let txn = self.begin_read(&db)?;
        let meta = txn
            .open_table(META)
            .map_err(self.backend("open the meta table"))?;
        meta_value(&meta, COMPACTED_KEY).map_err(self.backend("read the compacted revision"))
    }
}

fn meta_value(
    meta: &impl ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<u64, redb::StorageError> {
    Ok(meta.get(key)?.map_or(0, |g| g.value()))
}

/// Event encoding: `at` (i64 ms, big endian), then `u16` length + kind, `u16`
/// length + engine (so watchers filter without decoding JSON), then the JSON of
/// the [`WatchEvent`], built around `object_json` (the object's JSON, encoded
/// once for both the stored object and its event) rather than encoding the
/// object again.
fn encode_event(
    at: DateTime<Utc>,
    (kind, engine): (&str, &str),
    event_type: EventType,
    revision: Revision,
    object_json: &[u8],
) -> Vec<u8> {
    let (kind, engine) = (kind.as_bytes(), engine.as_bytes());
    let event_type = match event_type {
        EventType::Added => "Added",
        EventType::Modified => "Modified",
        EventType::Deleted => "Deleted",
    };
    let mut out = Vec::with_capacity(80 + kind.len() + engine.len() + object_json.len());
    out.extend_from_slice(&at.timestamp_millis().to_be_bytes());
    // Kinds and engines are at most 253 bytes (checked by `mutation::validate_key`).
    out.extend_from_slice(&(kind.len() as u16).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(&(engine.len() as u16).to_be_bytes());
    out.extend_from_slice(engine);
    // Exactly what `serde_json::to_vec(&WatchEvent { .. })` writes (field order,
    // no spaces); the encoding test holds the two together.
    out.extend_from_slice(b"{\"event_type\":\"");
    out.extend_from_slice(event_type.as_bytes());
    out.extend_from_slice(b"\",\"revision\":");
    out.extend_from_slice(revision.to_string().as_bytes());
    out.extend_from_slice(b",\"object\":");
    out.extend_from_slice(object_json);
    out.push(b'}');
    out
}

/// A status write against the stored JSON of `key`: the compare-and-swap on
/// `expected`, the metadata's `resource_version` set to `next`, the status
/// replaced; the spec is copied as bytes, never decoded. The result is what
/// `serde_json::to_vec(&DynamicObject)` would write for the same object (the
/// same fields in the same order), and the new metadata.
fn splice_status(
    shared: &Shared,
    key: &ObjectRef,
    stored: &[u8],
    expected: Revision,
    next: Revision,
    status: &serde_json::value::RawValue,
) -> Result<(Vec<u8>, ObjectMeta), StoreError> {
    #[derive(serde::Deserialize)]
    struct Stored<'a> {
        #[serde(rename = "apiVersion")]
        api_version: String,
        kind: String,
        metadata: ObjectMeta,
        #[serde(borrow, default)]
        spec: Option<&'a serde_json::value::RawValue>,
    }
    let Stored {
        api_version,
        kind,
        mut metadata,
        spec,
    } = serde_json::from_slice(stored)
        .map_err(|e| shared.corrupt(format!("object {}", mutation::storage_key(key)), e))?;
    if metadata.resource_version != expected {
        return Err(StoreError::Conflict {
            key: key.clone(),
            expected,
            actual: metadata.resource_version,
        });
    }
    metadata.resource_version = next;
    let spec = spec.map_or("null", |s| s.get());
    let mut json = Vec::with_capacity(stored.len() + status.get().len());
    json.extend_from_slice(b"{\"apiVersion\":");
    put_json(&mut json, &api_version, key)?;
    json.extend_from_slice(b",\"kind\":");
    put_json(&mut json, &kind, key)?;
    json.extend_from_slice(b",\"metadata\":");
    put_json(&mut json, &metadata, key)?;
    json.extend_from_slice(b",\"spec\":");
    json.extend_from_slice(spec.as_bytes());
    json.extend_from_slice(b",\"status\":");
    json.extend_from_slice(status.get().as_bytes());
    json.push(b'}');
    Ok((json, metadata))
}

/// Appends `value`'s JSON to `out`.
fn put_json<T: serde::Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
    key: &ObjectRef,
) -> Result<(), StoreError> {
    serde_json::to_writer(out, value).map_err(|e| StoreError::Invalid {
        kind: key.kind.clone(),
        name: key.name.clone(),
        reason: format!("cannot encode as JSON: {e}"),
    })
}

/// The parts of an encoded event.
struct EventParts<'a> {
    /// Time of the write, ms since the epoch.
    at: i64,
    kind: &'a [u8],
    engine: &'a [u8],
    json: &'a [u8],
}

fn split_event(bytes: &[u8]) -> Option<EventParts<'_>> {
    let at = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let (kind, rest) = take_field(bytes.get(8..)?)?;
    let (engine, json) = take_field(rest)?;
    Some(EventParts {
        at,
        kind,
        engine,
        json,
    })
}

/// The type, revision and object JSON of an event's JSON as [`encode_event`]
/// writes it (`{"event_type":"…","revision":N,"object":{…}}`), without
/// decoding the object; `None` for any other shape (then decode it whole).
fn split_event_json(json: &[u8]) -> Option<(EventType, Revision, &[u8])> {
    let rest = json.strip_prefix(b"{\"event_type\":\"")?;
    let (event_type, rest) = if let Some(rest) = rest.strip_prefix(b"Added") {
        (EventType::Added, rest)
    } else if let Some(rest) = rest.strip_prefix(b"Modified") {
        (EventType::Modified, rest)
    } else {
        (EventType::Deleted, rest.strip_prefix(b"Deleted")?)
    };
    let rest = rest.strip_prefix(b"\",\"revision\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let revision = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let object = rest[digits..]
        .strip_prefix(b",\"object\":")?
        .strip_suffix(b"}")?;
    // An object, outer braces and all (the rest is checked when it is decoded).
    (object.len() >= 2 && object.starts_with(b"{") && object.ends_with(b"}"))
        .then_some((event_type, revision, object))
}

fn take_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u16::from_be_bytes(bytes.get(..2)?.try_into().ok()?) as usize;
    let field = bytes.get(2..2 + len)?;
    Some((field, &bytes[2 + len..]))
}

impl Shared {
    /// The event encoded as `bytes` (revision `rev`) for a watch of `kind` and
    /// `engine`, if it is one; its object's JSON is handed over undecoded.
    fn matching_event(
        &self,
        rev: Revision,
        bytes: &[u8],
        kind: &str,
        engine: Option<&str>,
    ) -> Result<Option<EncodedWatchEvent>, StoreError> {
        let parts =
            split_event(bytes).ok_or_else(|| self.corrupt(format!("event {rev}"), "truncated"))?;
        if parts.kind != kind.as_bytes() || engine.is_some_and(|en| en.as_bytes() != parts.engine) {
            return Ok(None);
        }
        // Each watcher decodes the object once, into the form it needs.
        Ok(Some(match split_event_json(parts.json) {
            Some((event_type, revision, object)) => EncodedWatchEvent {
                event_type,
                revision,
                object: EncodedObject::Json {
                    kind: kind.to_owned(),
                    json: object.to_vec(),
                },
            },
            None => {
                let event: WatchEvent = serde_json::from_slice(parts.json)
                    .map_err(|err| self.corrupt(format!("event {rev}"), err))?;
                EncodedWatchEvent {
                    event_type: event.event_type,
                    revision: event.revision,
                    object: EncodedObject::Decoded(Box::new(event.object)),
                }
            }
        }))
    }

    fn count_delivered(&self, kind: &str, engine: Option<&str>, n: usize) {
        if n > 0 {
            *self
                .delivered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((kind.to_owned(), engine.map(str::to_owned)))
                .or_default() += n as u64;
        }
    }
}

impl EventLog for Shared {
    fn read_recent(
        &self,
        after: Revision,
        kind: &str,
        engine: Option<&str>,
        limit: usize,
    ) -> Option<Result<EventPage, StoreError>> {
        if self.lock_db().is_none() {
            // Closed: `read` says so.
            return None;
        }
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if after < recent.compacted {
            return Some(Err(StoreError::Gone {
                requested: after,
                compacted: recent.compacted,
            }));
        }
        if after < recent.start {
            return None;
        }
        let mut page = EventPage {
            scanned_to: after,
            exhausted: true,
            ..EventPage::default()
        };
        let skip = usize::try_from(after - recent.start).unwrap_or(usize::MAX);
        for (i, bytes) in recent.events.iter().skip(skip).enumerate() {
            if i == limit {
                page.exhausted = false;
                break;
            }
            let rev = after + 1 + i as u64;
            page.scanned_to = rev;
            match self.matching_event(rev, bytes, kind, engine) {
                Ok(Some(event)) => page.events.push(event),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        drop(recent);
        self.count_delivered(kind, engine, page.events.len());
        Some(Ok(page))
    }

    fn read(
        &self,
        after: Revision,
        kind: &str,
        engine: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let db = self.lock_db();
        let txn = self.begin_read(&db)?;
        let meta = txn
            .open_table(META)
            .map_err(self.backend("open the meta table"))?;
        let compacted = meta_value(&meta, COMPACTED_KEY)
            .map_err(self.backend("read the compacted revision"))?;
        if after < compacted {
            return Err(StoreError::Gone {
                requested: after,
                compacted,
            });
        }
        let events = txn
            .open_table(EVENTS)
            .map_err(self.backend("open the events table"))?;
        let mut page = EventPage {
            scanned_to: after,
            exhausted: true,
            ..EventPage::default()
        };
        let start = after.saturating_add(1);
        for (i, entry) in events
            .range(start..)
            .map_err(self.backend("read events"))?
            .enumerate()
        {
            if i == limit {
                page.exhausted = false;
                break;
            }
            let (rev, bytes) = entry.map_err(self.backend("read events"))?;
            let rev = rev.value();
            page.scanned_to = rev;
            if let Some(event) = self.matching_event(rev, bytes.value(), kind, engine)? {
                page.events.push(event);
            }
        }
        self.count_delivered(kind, engine, page.events.len());
        Ok(page)
    }

    fn blocking(&self) -> bool {
        true
    }
}

impl Drop for RedbStore {
    /// Stops the writer and waits for it (it answers what is queued first), so the
    /// file can be opened again as soon as the last handle is gone — unless watch
    /// streams still hold it.
    fn drop(&mut self) {
        drop(
            self.commands
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// The redb store. Open with [`RedbStore::open`]; share as `Arc<dyn Store>`.
#[derive(Debug)]
pub struct RedbStore {
    shared: Arc<Shared>,
    /// `None` once closed: the writer ends when the last sender is gone.
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    head: watch::Receiver<Revision>,
    writer: Mutex<Option<JoinHandle<()>>>,
    commit_latency: Arc<Histogram>,
}

impl RedbStore {
    /// Opens (or creates) the store in `data_dir` with default options.
    /// Blocks while the file is opened (and repaired after a crash).
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(data_dir, RedbOptions::default())
    }

    /// Opens (or creates) the store in `data_dir` (a file `store.redb` in it).
    /// Fails with [`StoreError::NewerSchema`] when a newer arkline wrote the file;
    /// migrates older files.
    pub fn open_with(data_dir: impl AsRef<Path>, options: RedbOptions) -> Result<Self, StoreError> {
        let dir = data_dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            e => StoreError::Backend {
                operation: "open the store file",
                path: path.clone(),
                source: Box::new(redb::Error::from(e)),
            },
        })?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            path,
            rider: RwLock::default(),
            delivered: Mutex::default(),
            recent: Mutex::default(),
        });
        let revision = prepare(&shared)?;
        {
            let compacted = shared.compacted()?;
            let mut recent = shared.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.start = revision;
            recent.compacted = compacted;
        }
        let (commands, queue) = mpsc::channel(options.queue_depth.max(1));
        let (head_tx, head) = watch::channel(revision);
        let writer_shared = shared.clone();
        let commit_latency = Arc::new(Histogram::new(&COMMIT_DURATION_BUCKETS));
        let writer_latency = commit_latency.clone();
        let writer = std::thread::Builder::new()
            .name("arkline-store-writer".into())
            .spawn(move || {
                Writer::new(writer_shared, options, head_tx, writer_latency).run(queue);
            })
            .map_err(|source| StoreError::Io {
                path: shared.path.clone(),
                source,
            })?;
        Ok(Self {
            shared,
            commands: Mutex::new(Some(commands)),
            head,
            writer: Mutex::new(Some(writer)),
            commit_latency,
        })
    }

    /// The latency of each group commit (one write transaction: the batch's
    /// operations applied and made durable), observed by the writer. Empty
    /// batches, which skip the fsync, are not counted.
    pub fn commit_latency(&self) -> Arc<Histogram> {
        self.commit_latency.clone()
    }

    /// How many events this store has handed to watches of `kind` filtered on
    /// `engine` (`None`: watches of every engine). Events are filtered on their
    /// header before they are handed over, so a watch of one engine is never
    /// given, let alone decodes, another engine's events; this counts what
    /// was given.
    pub fn delivered_events(&self, kind: &str, engine: Option<&str>) -> u64 {
        self.shared
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(kind.to_owned(), engine.map(str::to_owned)))
            .copied()
            .unwrap_or(0)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Lets `rider`'s rows ride on this store's commits (replacing any rider
    /// before it).
    pub(crate) fn attach_rider(&self, rider: Arc<dyn Rider>) {
        *self
            .shared
            .rider
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(rider);
    }

    /// Asks the writer for a commit soon, for the rider's rows. Never waits:
    /// when the queue is full, a commit is coming anyway.
    pub(crate) fn nudge(&self) -> bool {
        let Ok(commands) = self.sender() else {
            return false;
        };
        match commands.try_send(Command {
            job: Job::Nudge,
            reply: Reply::Nothing,
        }) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Runs `f` over a read transaction of the store file (for the rider's
    /// tables), on the calling thread.
    pub(crate) fn read_raw<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> T,
    ) -> Result<T, StoreError> {
        let guard = self.shared.lock_db();
        let txn = self.shared.begin_read(&guard)?;
        Ok(f(&txn))
    }

    /// Closes the store: stops the writer after it has answered every queued
    /// operation, waits for it and for reads in progress, then closes the file
    /// (releasing its lock), even while other handles to this store or watch
    /// streams are alive: from then on they answer [`StoreError::Closed`] (and
    /// watch streams end). The data dir can be opened again when this returns.
    /// Closing twice is closing once.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] when the writer thread panicked.
    pub async fn close(&self) -> Result<(), StoreError> {
        drop(
            self.commands
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let shared = self.shared.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let joined = handle.map_or(Ok(()), JoinHandle::join);
            // Waits for reads in progress (they hold the read lock).
            drop(
                shared
                    .db
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            );
            joined
        })
        .await;
        if matches!(joined, Ok(Ok(()))) {
            Ok(())
        } else {
            Err(self.closed())
        }
    }

    async fn write(&self, op: Op) -> Result<OpOutput, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.sender()?
            .send(Command {
                job: Job::Write(Box::new(op)),
                reply: Reply::Write(tx),
            })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    fn sender(&self) -> Result<mpsc::Sender<Command>, StoreError> {
        self.commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| self.closed())
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.shared.path.clone(),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|join| StoreError::Backend {
                operation: "run a read",
                path: self.shared.path.clone(),
                source: Box::new(join),
            })?
    }
}

/// Creates the tables, checks and migrates the schema; answers the head revision.
fn prepare(shared: &Shared) -> Result<Revision, StoreError> {
    let db = shared.lock_db();
    let txn = shared
        .database(&db)?
        .begin_write()
        .map_err(shared.backend("begin the schema check"))?;
    let revision;
    {
        let mut meta = txn
            .open_table(META)
            .map_err(shared.backend("open the meta table"))?;
        txn.open_table(OBJECTS)
            .map_err(shared.backend("open the objects table"))?;
        txn.open_table(EVENTS)
            .map_err(shared.backend("open the events table"))?;
        let stored = meta
            .get(SCHEMA_KEY)
            .map_err(shared.backend("read the schema version"))?
            .map(|g| g.value());
        let mut version = match stored {
            None => SCHEMA_VERSION,
            Some(v) => u32::try_from(v).unwrap_or(u32::MAX),
        };
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: shared.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            back_up_before_migrating(shared, version)?;
        }
        while version < SCHEMA_VERSION {
            let step = MIGRATIONS
                .iter()
                .find(|m| m.from == version)
                .ok_or_else(|| {
                    shared.corrupt(
                        SCHEMA_KEY,
                        format!("no migration from schema version {version}"),
                    )
                })?;
            (step.run)(&txn).map_err(shared.backend("migrate the schema"))?;
            version += 1;
        }
        meta.insert(SCHEMA_KEY, u64::from(SCHEMA_VERSION))
            .map_err(shared.backend("write the schema version"))?;
        revision = meta_value(&meta, REVISION_KEY).map_err(shared.backend("read the revision"))?;
    }
    txn.commit()
        .map_err(shared.backend("commit the schema check"))?;
    Ok(revision)
}

struct Writer {
    shared: Arc<Shared>,
    options: RedbOptions,
    head: watch::Sender<Revision>,
    commit_latency: Arc<Histogram>,
}

/// The result of one job: `Ok(None)` for a compaction.
type Outcome = Result<Option<OpOutput>, StoreError>;

impl Writer {
    fn new(
        shared: Arc<Shared>,
        options: RedbOptions,
        head: watch::Sender<Revision>,
        commit_latency: Arc<Histogram>,
    ) -> Self {
        Self {
            shared,
            options,
            head,
            commit_latency,
        }
    }

    fn run(self, mut queue: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.options.max_batch);
        while let Some(first) = queue.blocking_recv() {
            batch.push(first);
            while batch.len() < self.options.max_batch {
                match queue.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let (jobs, replies): (Vec<Job>, Vec<Reply>) =
                batch.drain(..).map(|c| (c.job, c.reply)).unzip();
            let _span = tracing::debug_span!("store_commit", batch = jobs.len()).entered();
            match self.commit(jobs) {
                Ok((outcomes, revision)) => {
                    self.head.send_if_modified(|head| {
                        let moved = *head != revision;
                        *head = revision;
                        moved
                    });
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        match reply {
                            Reply::Write(tx) => {
                                let answer = outcome.and_then(|o| {
                                    o.ok_or_else(|| self.failed("batch bookkeeping mismatch"))
                                });
                                let _ = tx.send(answer);
                            }
                            Reply::Compact(tx) => {
                                let _ = tx.send(outcome.map(|_| ()));
                            }
                            Reply::Nothing => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "store write batch failed; every write in it was rejected");
                    let message = e.to_string();
                    for reply in replies {
                        match reply {
                            Reply::Write(tx) => {
                                let _ = tx.send(Err(self.failed(&message)));
                            }
                            Reply::Compact(tx) => {
                                let _ = tx.send(Err(self.failed(&message)));
                            }
                            Reply::Nothing => {}
                        }
                    }
                }
            }
        }
    }

    fn failed(&self, message: &str) -> StoreError {
        StoreError::Backend {
            operation: "commit a write batch",
            path: self.shared.path.clone(),
            source: message.to_string().into(),
        }
    }

    /// Applies a batch in one transaction. Per-operation failures (conflicts,
    /// validation) are answers; storage failures abort the whole batch.
    fn commit(&self, jobs: Vec<Job>) -> Result<(Vec<Outcome>, Revision), StoreError> {
        let started = std::time::Instant::now();
        let shared = &*self.shared;
        let db = shared.lock_db();
        let mut txn = shared
            .database(&db)?
            .begin_write()
            .map_err(shared.backend("begin a write"))?;
        txn.set_quick_repair(self.options.quick_repair);
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(jobs.len());
        // The batch's events, for `Shared::recent` once committed.
        let mut logged: Vec<Vec<u8>> = Vec::new();
        let first_event;
        let compacted_after;
        let revision;
        let wrote;
        {
            let mut objects = txn
                .open_table(OBJECTS)
                .map_err(shared.backend("open the objects table"))?;
            let mut events = txn
                .open_table(EVENTS)
                .map_err(shared.backend("open the events table"))?;
            let mut meta = txn
                .open_table(META)
                .map_err(shared.backend("open the meta table"))?;
            let mut head =
                meta_value(&meta, REVISION_KEY).map_err(shared.backend("read the revision"))?;
            let mut compacted = meta_value(&meta, COMPACTED_KEY)
                .map_err(shared.backend("read the compacted revision"))?;
            let (start_head, start_compacted) = (head, compacted);
            first_event = head + 1;
            let now = Utc::now();
            for job in jobs {
                let op = match job {
                    Job::Write(op) => *op,
                    Job::Nudge => {
                        outcomes.push(Ok(None));
                        continue;
                    }
                    Job::Compact(rev) => {
                        let target = rev.min(head);
                        if target > compacted {
                            events
                                .retain_in(..=target, |_, _| false)
                                .map_err(shared.backend("compact events"))?;
                            compacted = target;
                        }
                        outcomes.push(Ok(None));
                        continue;
                    }
                };
                if let Op::WriteStatus {
                    key,
                    expected,
                    status,
                } = &op
                {
                    // Spliced into the stored bytes: only the metadata is
                    // decoded; the spec is copied as it is.
                    let storage_key = mutation::storage_key(key);
                    let spliced = match mutation::validate_key(key) {
                        Err(e) => Err(e),
                        Ok(()) => match objects
                            .get(storage_key.as_str())
                            .map_err(shared.backend("read an object"))?
                        {
                            None => Err(StoreError::NotFound { key: key.clone() }),
                            Some(g) => {
                                splice_status(shared, key, g.value(), *expected, head + 1, status)
                            }
                        },
                    };
                    let (json, meta) = match spliced {
                        Ok(done) => done,
                        Err(e) => {
                            outcomes.push(Err(e));
                            continue;
                        }
                    };
                    objects
                        .insert(storage_key.as_str(), json.as_slice())
                        .map_err(shared.backend("write an object"))?;
                    head += 1;
                    let event = encode_event(
                        now,
                        (&key.kind, &key.engine),
                        EventType::Modified,
                        head,
                        &json,
                    );
                    events
                        .insert(head, event.as_slice())
                        .map_err(shared.backend("write an event"))?;
                    logged.push(event);
                    outcomes.push(Ok(Some(OpOutput::Meta(meta))));
                    continue;
                }
                let key = mutation::storage_key(&op.key());
                let current = match objects
                    .get(key.as_str())
                    .map_err(shared.backend("read an object"))?
                {
                    Some(g) => match shared.decode_object(&key, g.value()) {
                        Ok(o) => Some(o),
                        Err(e) => {
                            outcomes.push(Err(e));
                            continue;
                        }
                    },
                    None => None,
                };
                let change = match mutation::plan(op, current, head + 1, now) {
                    Ok(c) => c,
                    Err(e) => {
                        outcomes.push(Err(e));
                        continue;
                    }
                };
                let invalid = |e: serde_json::Error| StoreError::Invalid {
                    kind: String::new(),
                    name: key.clone(),
                    reason: format!("cannot encode as JSON: {e}"),
                };
                let Some(event_type) = change.event_type() else {
                    outcomes.push(Ok(Some(change.output)));
                    continue;
                };
                // The object is encoded once: the stored value, and the event
                // around the same bytes.
                let json = match serde_json::to_vec(change.object()) {
                    Ok(b) => b,
                    Err(e) => {
                        outcomes.push(Err(invalid(e)));
                        continue;
                    }
                };
                match change.persist {
                    Persist::Put(_) => {
                        objects
                            .insert(key.as_str(), json.as_slice())
                            .map_err(shared.backend("write an object"))?;
                    }
                    // (`Nothing` logs no event: it was answered above.)
                    Persist::Remove | Persist::Nothing => {
                        objects
                            .remove(key.as_str())
                            .map_err(shared.backend("remove an object"))?;
                    }
                }
                head += 1;
                let event = encode_event(
                    now,
                    (&change.object().kind, &change.object().metadata.engine),
                    event_type,
                    change.object().metadata.resource_version,
                    &json,
                );
                events
                    .insert(head, event.as_slice())
                    .map_err(shared.backend("write an event"))?;
                logged.push(event);
                outcomes.push(Ok(Some(change.output)));
            }
            let mut target = self.options.retention.count_target(head);
            if let Some(cutoff) = self.options.retention.age_cutoff(now) {
                let cutoff = cutoff.timestamp_millis();
                for entry in events
                    .range(compacted.saturating_add(1)..)
                    .map_err(shared.backend("read events"))?
                {
                    let (rev, bytes) = entry.map_err(shared.backend("read events"))?;
                    match split_event(bytes.value()) {
                        Some(parts) if parts.at < cutoff => target = target.max(rev.value()),
                        _ => break,
                    }
                }
            }
            let target = target.min(head);
            if target > compacted {
                events
                    .retain_in(..=target, |_, _| false)
                    .map_err(shared.backend("compact events"))?;
                compacted = target;
            }
            revision = head;
            compacted_after = compacted;
            wrote = head != start_head || compacted != start_compacted;
            if wrote {
                meta.insert(REVISION_KEY, head)
                    .map_err(shared.backend("write the revision"))?;
                meta.insert(COMPACTED_KEY, compacted)
                    .map_err(shared.backend("write the compacted revision"))?;
            }
        }
        let rider = shared
            .rider
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (rode, settle) = match rider {
            Some(rider) => rider
                .write(&txn)
                .map_err(shared.backend("write rows riding on the commit"))?,
            None => (false, Box::new(|_| {}) as Settle),
        };
        if !wrote && !rode {
            // Nothing was written (every operation failed or was a no-op):
            // skip the fsync.
            txn.abort()
                .map_err(shared.backend("abort an empty batch"))?;
            settle(true);
            return Ok((outcomes, revision));
        }
        if let Err(e) = txn.commit() {
            settle(false);
            return Err(shared.backend("commit a write batch")(e));
        }
        // Before the head moves (the caller moves it): a watch woken by it
        // finds these events in memory.
        shared
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(first_event, logged, compacted_after);
        self.commit_latency.observe(started.elapsed());
        settle(true);
        Ok((outcomes, revision))
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(*self.head.borrow())
    }

    async fn get(&self, key: &ObjectRef) -> Result<Option<DynamicObject>, StoreError> {
        // A point read runs on the caller's thread: redb reads never wait for
        // the writer (MVCC), and one key is a few pages, mostly in redb's
        // cache. The blocking pool's hop cost more than the read (a thread
        // woken, often spawned, per read); lists still take it.
        self.shared.get(key)
    }

    async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError> {
        let query = query.clone();
        self.read(move |s| s.list(&query)).await
    }

    async fn get_encoded(&self, key: &ObjectRef) -> Result<Option<EncodedObject>, StoreError> {
        // On the caller's thread, as `get`.
        self.shared.get_encoded(key)
    }

    async fn write_status_json(
        &self,
        key: &ObjectRef,
        resource_version: Revision,
        status: Box<serde_json::value::RawValue>,
    ) -> Result<ObjectMeta, StoreError> {
        self.write(Op::WriteStatus {
            key: key.clone(),
            expected: resource_version,
            status,
        })
        .await
        .map(OpOutput::into_meta)
    }

    async fn list_encoded(&self, query: &ListQuery) -> Result<EncodedList, StoreError> {
        let query = query.clone();
        self.read(move |s| s.list_encoded(&query)).await
    }

    async fn create(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.write(Op::Create(obj)).await.map(OpOutput::into_object)
    }

    async fn update(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.write(Op::Update(obj)).await.map(OpOutput::into_object)
    }

    async fn update_status(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.write(Op::UpdateStatus(obj))
            .await
            .map(OpOutput::into_object)
    }

    async fn delete(
        &self,
        key: &ObjectRef,
        options: &DeleteOptions,
    ) -> Result<DeleteOutcome, StoreError> {
        self.write(Op::Delete(key.clone(), options.clone()))
            .await
            .map(OpOutput::into_delete)
    }

    async fn watch(
        &self,
        kind: &str,
        engine: Option<&str>,
        from_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        Ok(super::watch::decoded(
            self.watch_encoded(kind, engine, from_revision).await?,
        ))
    }

    async fn watch_encoded(
        &self,
        kind: &str,
        engine: Option<&str>,
        from_revision: Revision,
    ) -> Result<EncodedWatchStream, StoreError> {
        let compacted = self.read(|s| s.compacted()).await?;
        if from_revision < compacted {
            return Err(StoreError::Gone {
                requested: from_revision,
                compacted,
            });
        }
        let log: Arc<dyn EventLog> = self.shared.clone();
        Ok(super::watch::stream(
            log,
            self.head.clone(),
            kind,
            engine,
            from_revision,
        ))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.sender()?
            .send(Command {
                job: Job::Compact(revision),
                reply: Reply::Compact(tx),
            })
            .await
            .map_err(|_| self.closed())?;
        rx.await.map_err(|_| self.closed())?
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.read(|s| s.compacted()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_a_newer_schema_and_names_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        RedbStore::open(dir.path()).unwrap().close().await.unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, u64::from(SCHEMA_VERSION) + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, StoreError::NewerSchema { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{text}"
        );
        assert!(text.contains("upgrade arkline"), "{text}");
        assert!(
            text.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{text}"
        );
    }

    #[tokio::test]
    async fn each_group_commit_is_observed_and_empty_batches_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let latency = store.commit_latency();
        assert_eq!(latency.snapshot().count, 0);
        let object = DynamicObject {
            api_version: crate::model::API_VERSION.into(),
            kind: "Pipeline".into(),
            metadata: crate::model::ObjectMeta::new("e", "p"),
            spec: serde_json::json!({}),
            status: serde_json::Value::Null,
        };
        store.create(object.clone()).await.unwrap();
        assert_eq!(latency.snapshot().count, 1);
        // A refused write commits nothing and costs no fsync.
        assert!(store.create(object).await.is_err());
        let snap = latency.snapshot();
        assert_eq!(snap.count, 1);
        assert!(snap.sum > 0.0);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn close_releases_the_file_while_handles_and_watches_live() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(dir.path()).unwrap());
        let object = DynamicObject {
            api_version: crate::model::API_VERSION.into(),
            kind: "Pipeline".into(),
            metadata: crate::model::ObjectMeta::new("e", "p"),
            spec: serde_json::json!({}),
            status: serde_json::Value::Null,
        };
        store.create(object.clone()).await.unwrap();
        let held = store.clone();
        let mut events = store.watch("Pipeline", Some("e"), 1).await.unwrap();
        store.close().await.unwrap();
        store.close().await.unwrap();
        // The file is free although `held` and `events` are alive.
        let again = RedbStore::open(dir.path()).unwrap();
        let key = ObjectRef::new("Pipeline", "e", "p");
        assert!(again.get(&key).await.unwrap().is_some());
        assert!(matches!(
            held.get(&key).await,
            Err(StoreError::Closed { .. })
        ));
        assert!(matches!(
            held.create(object).await,
            Err(StoreError::Closed { .. })
        ));
        // The watch ends (after an error, at most) instead of hanging.
        while let Some(item) = events.next().await {
            assert!(item.is_err(), "no event after 1 was written: {item:?}");
        }
        again.close().await.unwrap();
    }

    #[tokio::test]
    async fn an_older_schema_is_backed_up_once_then_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let object = DynamicObject {
            api_version: crate::model::API_VERSION.into(),
            kind: "Pipeline".into(),
            metadata: crate::model::ObjectMeta::new("e", "p"),
            spec: serde_json::json!({"kept": true}),
            status: serde_json::Value::Null,
        };
        store.create(object).await.unwrap();
        store.close().await.unwrap();
        let set_version = |v: u64| {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert(SCHEMA_KEY, v).unwrap();
            txn.commit().unwrap();
        };
        set_version(0);
        let store = RedbStore::open(dir.path()).unwrap();
        let key = ObjectRef::new("Pipeline", "e", "p");
        let kept = store.get(&key).await.unwrap().expect("the object survives");
        assert_eq!(kept.spec["kept"], true);
        store.close().await.unwrap();
        let schema_of = |path: &std::path::Path| {
            let db = Database::create(path).unwrap();
            let txn = db.begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            meta_value(&meta, SCHEMA_KEY).unwrap()
        };
        let backup = dir.path().join(format!("{FILE_NAME}.schema0.bak"));
        assert_eq!(schema_of(&backup), 0, "the backup is the old file");
        let backup_bytes = std::fs::read(&backup).expect("a backup was made");
        assert_eq!(
            schema_of(&dir.path().join(FILE_NAME)),
            u64::from(SCHEMA_VERSION)
        );
        // Only once: a later migration from 0 keeps the first backup.
        set_version(0);
        RedbStore::open(dir.path()).unwrap().close().await.unwrap();
        assert!(
            std::fs::read(&backup).unwrap() == backup_bytes,
            "the first backup is kept"
        );
    }

    #[tokio::test]
    async fn writes_the_schema_version_into_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        RedbStore::open(dir.path()).unwrap().close().await.unwrap();
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(
            meta_value(&meta, SCHEMA_KEY).unwrap(),
            u64::from(SCHEMA_VERSION)
        );
    }

    #[test]
    fn event_encoding_round_trips_and_rejects_truncation() {
        let event = WatchEvent {
            event_type: super::super::EventType::Added,
            revision: 7,
            object: DynamicObject {
                api_version: crate::model::API_VERSION.into(),
                kind: "Pipeline".into(),
                metadata: crate::model::ObjectMeta {
                    name: "p".into(),
                    engine: "e".into(),
                    ..Default::default()
                },
                spec: serde_json::Value::Null,
                status: serde_json::Value::Null,
            },
        };
        for event_type in [EventType::Added, EventType::Modified, EventType::Deleted] {
            let event = WatchEvent {
                event_type,
                ..event.clone()
            };
            let object_json = serde_json::to_vec(&event.object).unwrap();
            let bytes = encode_event(
                Utc::now(),
                (&event.object.kind, &event.object.metadata.engine),
                event_type,
                7,
                &object_json,
            );
            let parts = split_event(&bytes).unwrap();
            assert_eq!((parts.kind, parts.engine), (&b"Pipeline"[..], &b"e"[..]));
            // Byte for byte what serde writes, so events written before and after
            // this encoding read alike.
            assert_eq!(parts.json, serde_json::to_vec(&event).unwrap().as_slice());
            assert_eq!(
                serde_json::from_slice::<WatchEvent>(parts.json).unwrap(),
                event
            );
        }
        let object_json = serde_json::to_vec(&event.object).unwrap();
        let bytes = encode_event(
            Utc::now(),
            (&event.object.kind, &event.object.metadata.engine),
            event.event_type,
            7,
            &object_json,
        );
        assert!(split_event(&bytes[..12]).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recent_events_are_served_from_memory_like_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        for i in 0..10 {
            let kind = if i % 2 == 0 {
                "Pipeline"
            } else {
                "PipelineExecution"
            };
            let obj = DynamicObject {
                api_version: crate::model::API_VERSION.into(),
                kind: kind.into(),
                metadata: crate::model::ObjectMeta::new(
                    if i < 5 { "a" } else { "b" },
                    format!("o{i}"),
                ),
                spec: serde_json::json!({ "i": i }),
                status: serde_json::Value::Null,
            };
            store.create(obj).await.unwrap();
        }
        let shared = &store.shared;
        for (after, kind, engine) in [
            (0, "Pipeline", None),
            (3, "Pipeline", Some("b")),
            (4, "PipelineExecution", Some("a")),
            (10, "Pipeline", None),
        ] {
            let memory = shared
                .read_recent(after, kind, engine, 512)
                .unwrap()
                .unwrap();
            let log = shared.read(after, kind, engine, 512).unwrap();
            assert_eq!(memory.events, log.events, "{after} {kind} {engine:?}");
            assert_eq!(memory.scanned_to, log.scanned_to);
            assert_eq!(memory.exhausted, log.exhausted);
        }
        // A page stops at the limit, as the log's does.
        let page = shared.read_recent(0, "Pipeline", None, 3).unwrap().unwrap();
        assert_eq!(
            (page.scanned_to, page.exhausted, page.events.len()),
            (3, false, 2)
        );
        // Older than what memory keeps: the log answers.
        shared.recent.lock().unwrap().start = 4;
        assert!(shared.read_recent(3, "Pipeline", None, 512).is_none());
        shared.recent.lock().unwrap().start = 0;
        // Compacted: gone, in memory too.
        store.compact(6).await.unwrap();
        match shared.read_recent(5, "Pipeline", None, 512) {
            Some(Err(StoreError::Gone {
                requested: 5,
                compacted: 6,
            })) => {}
            other => panic!("expected gone, got {other:?}"),
        }
        let page = shared
            .read_recent(6, "Pipeline", None, 512)
            .unwrap()
            .unwrap();
        assert_eq!(page.events.len(), 2);
    }

    #[test]
    fn recent_events_keep_a_bounded_consecutive_tail() {
        let mut recent = Recent::default();
        recent.extend(1, vec![vec![0u8; 10]; RECENT_EVENTS + 5], 0);
        assert_eq!(recent.events.len(), RECENT_EVENTS);
        assert_eq!(recent.start, 5);
        assert_eq!(recent.bytes, RECENT_EVENTS * 10);
        // A gap (never made by the one writer) starts the tail again.
        recent.extend(RECENT_EVENTS as u64 + 100, vec![vec![1u8; 4]], 2);
        assert_eq!(
            (recent.start, recent.events.len(), recent.compacted),
            (RECENT_EVENTS as u64 + 99, 1, 2)
        );
        // Bytes bound it too.
        recent.extend(RECENT_EVENTS as u64 + 101, vec![vec![2u8; RECENT_BYTES]], 2);
        assert_eq!(recent.events.len(), 1);
        assert_eq!(recent.bytes, RECENT_BYTES);
    }

    #[test]
    fn a_spliced_status_is_byte_for_byte_what_serde_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let mut meta = crate::model::ObjectMeta::new("e", "p");
        meta.resource_version = 4;
        meta.labels.insert("a".into(), "b".into());
        let mut obj = DynamicObject {
            api_version: crate::model::API_VERSION.into(),
            kind: "Pipeline".into(),
            metadata: meta,
            spec: serde_json::json!({ "x": [1, { "y": "z\"\u{e9}" }], "w": null }),
            status: serde_json::json!({ "old": true }),
        };
        let stored = serde_json::to_vec(&obj).unwrap();
        let status = serde_json::value::to_raw_value(&serde_json::json!({ "new": [1] })).unwrap();
        let key = ObjectRef::new("Pipeline", "e", "p");
        let (json, meta) = splice_status(&store.shared, &key, &stored, 4, 9, &status).unwrap();
        obj.metadata.resource_version = 9;
        obj.status = serde_json::json!({ "new": [1] });
        assert_eq!(meta, obj.metadata);
        assert_eq!(
            String::from_utf8(json).unwrap(),
            String::from_utf8(serde_json::to_vec(&obj).unwrap()).unwrap()
        );
        match splice_status(&store.shared, &key, &stored, 3, 9, &status) {
            Err(StoreError::Conflict {
                expected: 3,
                actual: 4,
                ..
            }) => {}
            other => panic!("expected a conflict, got {other:?}"),
        }
        let err = splice_status(&store.shared, &key, b"{not json", 4, 9, &status).unwrap_err();
        assert!(err.to_string().contains("Pipeline/e/p"), "{err}");
    }

    #[test]
    fn event_json_splits_without_decoding_the_object_or_is_left_whole() {
        let object = br#"{"apiVersion":"v","kind":"K","metadata":{"name":"a}"},"spec":"\"}"}"#;
        for (event_type, name) in [
            (EventType::Added, "Added"),
            (EventType::Modified, "Modified"),
            (EventType::Deleted, "Deleted"),
        ] {
            let json = [
                format!(r#"{{"event_type":"{name}","revision":18446744073709551615,"object":"#)
                    .as_bytes(),
                object,
                b"}",
            ]
            .concat();
            assert_eq!(
                split_event_json(&json),
                Some((event_type, u64::MAX, &object[..]))
            );
        }
        // Any other shape is not split (the reader then decodes it whole).
        for odd in [
            &br#"{"revision":1,"event_type":"Added","object":{}}"#[..],
            br#"{"event_type":"Added","revision":1,"object":{}"#,
            br#"{"event_type":"Renamed","revision":1,"object":{}}"#,
            br#"{"event_type":"Added","revision":-1,"object":{}}"#,
            br#"{"event_type":"Added","revision":99999999999999999999,"object":{}}"#,
            br#"{"event_type":"Added","revision":1,"object":null}"#,
            br#"{ "event_type":"Added","revision":1,"object":{}}"#,
        ] {
            assert_eq!(
                split_event_json(odd),
                None,
                "{}",
                String::from_utf8_lossy(odd)
            );
        }
    }
}
