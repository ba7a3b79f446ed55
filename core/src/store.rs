//! The resource store: Kubernetes-over-etcd semantics behind one async trait.
//!
//! Every write bumps a store-wide **revision**; an object's
//! `metadata.resource_version` is the revision of its last write. Updates are
//! compare-and-swap on that field, `watch` replays every event after a revision
//! and then follows live ones, and `compact` forgets old events (a watch from a
//! compacted revision answers [`StoreError::Gone`], after which a client relists).
//!
//! Backends: [`MemoryStore`] (tests, ephemeral engines), [`RedbStore`], the
//! embedded default (one file, group commit), and with the `etcd` feature
//! `EtcdStore`, for several nodes on one etcd cluster. All are used through
//! `Arc<dyn Store>`; [`Api`] adds typed access for any [`Resource`].
//! Over both, [`watcher`](watcher()) is the one list/watch/relist loop every
//! controller, admission queue and wait is built on.
//!
//! ```
//! use std::sync::Arc;
//! use arkline::model::{DynamicObject, ObjectMeta, API_VERSION};
//! use arkline::store::{ListQuery, MemoryStore, Store};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! let created = store
//!     .create(DynamicObject {
//!         api_version: API_VERSION.into(),
//!         kind: "Pipeline".into(),
//!         metadata: ObjectMeta { name: "build".into(), engine: "ci".into(), ..Default::default() },
//!         spec: serde_json::json!({ "stages": [] }),
//!         status: serde_json::Value::Null,
//!     })
//!     .await?;
//! assert_eq!(created.metadata.generation, 1);
//! let list = store.list(&ListQuery::kind("Pipeline").engine("ci")).await?;
//! assert_eq!(list.items.len(), 1);
//! # Ok::<(), arkline::store::StoreError>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::model::{DynamicObject, ObjectMeta, Resource};

mod api;
pub mod cluster;
mod embedded;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod memory;
mod mutation;
mod selector;
mod watch;
pub mod watcher;

pub use api::{Api, TypedEvent};
pub use cluster::{Cluster, Member, Membership, SoloCluster};
pub use embedded::{RedbOptions, RedbStore, SCHEMA_VERSION};
pub(crate) use embedded::{Rider, Settle};
pub use error::StoreError;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdOptions, EtcdStore};
pub use memory::MemoryStore;
pub use selector::{LabelSelector, Requirement, SelectorError};
pub use watcher::{await_condition, watcher};

/// How many watch events a backend keeps before compacting automatically. Events
/// older than either limit are compacted after each write; `None` disables a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most the events of the last this many revisions.
    pub max_revisions: Option<u64>,
    /// Keep events at most this old.
    pub max_age: Option<std::time::Duration>,
}

impl Default for Retention {
    /// The last 100 000 revisions, whatever their age.
    fn default() -> Self {
        Self {
            max_revisions: Some(100_000),
            max_age: None,
        }
    }
}

impl Retention {
    /// Keeps every event until [`Store::compact`] is called.
    pub fn unlimited() -> Self {
        Self {
            max_revisions: None,
            max_age: None,
        }
    }

    /// Keeps the last `n` revisions.
    pub fn revisions(mut self, n: u64) -> Self {
        self.max_revisions = Some(n);
        self
    }

    /// Keeps events at most `age` old.
    pub fn max_age(mut self, age: std::time::Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// The revision up to which to compact by count, given the head.
    pub(crate) fn count_target(&self, head: Revision) -> Revision {
        self.max_revisions.map_or(0, |n| head.saturating_sub(n))
    }

    /// Events written before this time are compacted by age.
    pub(crate) fn age_cutoff(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let age = chrono::Duration::from_std(self.max_age?).ok()?;
        now.checked_sub_signed(age)
    }
}

/// A store-wide revision. Every write increments it by one; 0 means "before any write".
pub type Revision = u64;

/// The identity of an object: kind, engine and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Kind, e.g. `Pipeline`.
    pub kind: String,
    /// Engine (namespace).
    pub engine: String,
    /// Name, unique per (engine, kind).
    pub name: String,
}

impl ObjectRef {
    /// Builds a reference from its three parts.
    pub fn new(
        kind: impl Into<String>,
        engine: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Self {
            kind: kind.into(),
            engine: engine.into(),
            name: name.into(),
        }
    }

    /// The reference of an object, typed (`ObjectRef::of(&pipeline)`) or not.
    pub fn of<O: Object + ?Sized>(obj: &O) -> Self {
        let meta = obj.metadata();
        Self::new(obj.kind(), &meta.engine, &meta.name)
    }
}

/// What the store layer reads of any object, typed or not: its kind and
/// metadata. Implemented for [`DynamicObject`] and every [`Resource`].
pub trait Object {
    /// The kind, e.g. `Pipeline`.
    fn kind(&self) -> &str;
    /// The metadata.
    fn metadata(&self) -> &ObjectMeta;
}

impl Object for DynamicObject {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
}

impl<R: Resource> Object for R {
    fn kind(&self) -> &str {
        R::KIND
    }

    fn metadata(&self) -> &ObjectMeta {
        self.meta()
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.engine.is_empty() {
            write!(f, "{} {:?}", self.kind, self.name)
        } else {
            write!(
                f,
                "{} {:?} in engine {:?}",
                self.kind, self.name, self.engine
            )
        }
    }
}

/// What to list: a kind, optionally one engine, and a label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Kind to list.
    pub kind: String,
    /// Only this engine, or every engine when `None`.
    pub engine: Option<String>,
    /// Only objects whose labels match.
    pub selector: LabelSelector,
    /// Only the object of this name (Kubernetes' `fieldSelector=metadata.name=`):
    /// a list of one or none, which with an engine reads that one object
    /// instead of the whole kind. A watcher waiting for one object lists this
    /// way.
    pub name: Option<String>,
}

impl ListQuery {
    /// Every object of `kind` in every engine.
    pub fn kind(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            ..Self::default()
        }
    }

    /// Restricts the query to one engine.
    pub fn engine(mut self, engine: impl Into<String>) -> Self {
        self.engine = Some(engine.into());
        self
    }

    /// Restricts the query to objects whose labels match `selector`.
    pub fn selector(mut self, selector: LabelSelector) -> Self {
        self.selector = selector;
        self
    }

    /// Restricts the query to the object named `name` (see [`ListQuery::name`]).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether `obj` (of this query's kind and engine range) matches the
    /// query's name and selector.
    pub(crate) fn matches(&self, obj: &DynamicObject) -> bool {
        self.name.as_ref().is_none_or(|n| *n == obj.metadata.name)
            && self.selector.matches(&obj.metadata.labels)
    }
}

/// The answer to a list: matching objects (ordered by engine, then name) and the
/// revision they were read at — start a watch from it to miss nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectList {
    /// Matching objects.
    pub items: Vec<DynamicObject>,
    /// Store revision of the snapshot.
    pub revision: Revision,
}

/// The answer to [`Store::list_encoded`]: as [`ObjectList`], objects not yet
/// decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedList {
    /// Matching objects, ordered as in [`ObjectList`].
    pub items: Vec<EncodedObject>,
    /// Store revision of the snapshot.
    pub revision: Revision,
}

/// Preconditions of a delete. More (e.g. a fencing token for the etcd backend) may
/// be added; build with `DeleteOptions::default()` and the setters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeleteOptions {
    /// Delete only when the object is still at this `resource_version`.
    pub resource_version: Option<Revision>,
}

impl DeleteOptions {
    /// Deletes only when the object is still at `revision`.
    pub fn resource_version(mut self, revision: Revision) -> Self {
        self.resource_version = Some(revision);
        self
    }
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteOutcome {
    /// The object is gone; this is its last state.
    Deleted(DynamicObject),
    /// Finalizers remain: `deletion_requested` is set and the object disappears when
    /// an update removes the last finalizer.
    Pending(DynamicObject),
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object was updated (spec, metadata, status, or deletion requested).
    Modified,
    /// The object was removed; the event carries its last state.
    Deleted,
}

/// One change, as delivered by [`Store::watch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// What happened.
    pub event_type: EventType,
    /// The revision of the write.
    pub revision: Revision,
    /// The object after the write (for `Deleted`, its last state).
    pub object: DynamicObject,
}

/// The stream returned by [`Store::watch`]: events in revision order. An
/// `Err(StoreError::Gone)` item means the watcher fell behind compaction: relist.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// An object as [`Store::watch_encoded`] hands it over: the JSON a backend
/// stored, not yet decoded, or an object a backend keeps decoded. Decoding it
/// once, straight into the form a consumer needs ([`EncodedObject::decode`]
/// for a typed [`Resource`]), skips the `serde_json::Value` tree of a
/// [`DynamicObject`].
#[derive(Debug, Clone, PartialEq)]
pub enum EncodedObject {
    /// The stored JSON of a [`DynamicObject`] of `kind` (the redb store).
    Json {
        /// The object's kind, from the event's header.
        kind: String,
        /// The object's JSON.
        json: Vec<u8>,
    },
    /// An object kept decoded (the memory store, and stores that do not
    /// implement [`Store::watch_encoded`]).
    Decoded(Box<DynamicObject>),
}

impl EncodedObject {
    /// The untyped object.
    pub fn into_dynamic(self) -> Result<DynamicObject, StoreError> {
        match self {
            EncodedObject::Decoded(obj) => Ok(*obj),
            EncodedObject::Json { kind, json } => {
                serde_json::from_slice(&json).map_err(|source| StoreError::Conversion {
                    kind,
                    name: String::new(),
                    source,
                })
            }
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> &str {
        match self {
            EncodedObject::Json { kind, .. } => kind,
            EncodedObject::Decoded(obj) => obj.kind.as_str(),
        }
    }

    /// Whether the object's `metadata.name` is `name`; stored JSON is only
    /// scanned for it, nothing else is kept (an undecodable object has no name).
    pub fn is_named(&self, name: &str) -> bool {
        match self {
            EncodedObject::Decoded(obj) => obj.metadata.name == name,
            EncodedObject::Json { json, .. } => {
                serde_json::from_slice::<NameOnly>(json).is_ok_and(|o| o.metadata.name == name)
            }
        }
    }

    /// The object's kind and metadata, without decoding spec and status.
    pub fn meta(&self) -> Result<(std::borrow::Cow<'_, str>, ObjectMeta), StoreError> {
        match self {
            EncodedObject::Decoded(obj) => Ok((obj.kind.as_str().into(), obj.metadata.clone())),
            EncodedObject::Json { kind, json } => serde_json::from_slice::<MetaOnly>(json)
                .map(|o| (kind.as_str().into(), o.metadata))
                .map_err(|source| StoreError::Conversion {
                    kind: kind.clone(),
                    name: String::new(),
                    source,
                }),
        }
    }

    /// Only the fields the view `V` declares (a `#[derive(Deserialize)]` struct
    /// of the few fields a consumer needs): stored JSON is scanned and every
    /// other field skipped, not kept. Much cheaper than [`EncodedObject::decode`]
    /// for a filter that looks at a phase or a flag before deciding whether the
    /// whole object is worth decoding.
    pub fn view<V: serde::de::DeserializeOwned>(&self) -> Result<V, StoreError> {
        let conversion = |kind: &str, source| StoreError::Conversion {
            kind: kind.to_owned(),
            name: String::new(),
            source,
        };
        match self {
            EncodedObject::Json { kind, json } => {
                serde_json::from_slice(json).map_err(|e| conversion(kind, e))
            }
            EncodedObject::Decoded(obj) => serde_json::to_value(obj)
                .and_then(serde_json::from_value)
                .map_err(|e| conversion(obj.kind.as_str(), e)),
        }
    }

    /// The typed object, decoded once ([`Resource::from_json`]).
    pub fn decode<R: Resource>(self) -> Result<R, StoreError> {
        match self {
            EncodedObject::Decoded(obj) => watcher::convert(*obj),
            EncodedObject::Json { json, .. } => R::from_json(&json).map_err(|source| {
                // Only on failure: the name, for the message.
                let name = serde_json::from_slice::<NameOnly>(&json)
                    .map(|o| o.metadata.name)
                    .unwrap_or_default();
                StoreError::Conversion {
                    kind: R::KIND.to_string(),
                    name,
                    source,
                }
            }),
        }
    }
}

/// An object's metadata alone (spec and status are skipped, not kept).
#[derive(Deserialize)]
struct MetaOnly {
    metadata: ObjectMeta,
}

/// Just enough of an object to name it in an error.
#[derive(Deserialize)]
struct NameOnly {
    metadata: NameOnlyMeta,
}

#[derive(Deserialize)]
struct NameOnlyMeta {
    #[serde(default)]
    name: String,
}

/// One change, as delivered by [`Store::watch_encoded`].
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedWatchEvent {
    /// What happened.
    pub event_type: EventType,
    /// The revision of the write.
    pub revision: Revision,
    /// The object after the write (for `Deleted`, its last state).
    pub object: EncodedObject,
}

impl EncodedWatchEvent {
    /// The event with its object decoded untyped.
    pub fn into_dynamic(self) -> Result<WatchEvent, StoreError> {
        Ok(WatchEvent {
            event_type: self.event_type,
            revision: self.revision,
            object: self.object.into_dynamic()?,
        })
    }
}

/// The stream returned by [`Store::watch_encoded`]; as [`WatchStream`].
pub type EncodedWatchStream =
    Pin<Box<dyn Stream<Item = Result<EncodedWatchEvent, StoreError>> + Send>>;

/// A resource store with Kubernetes-over-etcd semantics. Object-safe: use it as
/// `Arc<dyn Store>`.
///
/// Writes are not cancelled by dropping their future: a write already handed to
/// the backend may still be applied. Per-handle concerns of future backends (an
/// etcd lease or fencing token) belong to the store handle, not to each call, so
/// callers of this trait do not change when such a backend is added.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The current store-wide revision.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// One object, or `None` when it does not exist.
    async fn get(&self, key: &ObjectRef) -> Result<Option<DynamicObject>, StoreError>;

    /// Objects of a kind, filtered by engine and labels, with the snapshot revision.
    async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError>;

    /// Creates an object. The store sets `uid`, `created`, `resource_version` and
    /// `generation = 1`, ignores `deletion_requested`, and keeps `status` as given.
    /// An empty `api_version` is set to [`API_VERSION`](crate::model::API_VERSION).
    /// Fails with [`StoreError::AlreadyExists`] when the name is taken.
    async fn create(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError>;

    /// Replaces spec and metadata (labels, annotations, finalizers, owners) when
    /// `obj.metadata.resource_version` is still current, else
    /// [`StoreError::Conflict`]. `status` is ignored (see [`Store::update_status`]).
    /// `generation` is bumped only when the spec changed. When deletion was
    /// requested and this update removes the last finalizer, the object is removed.
    async fn update(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError>;

    /// Replaces only `status`, with the same compare-and-swap as [`Store::update`].
    /// Never bumps `generation`.
    async fn update_status(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError>;

    /// Deletes an object, or marks it for deletion while finalizers remain.
    async fn delete(
        &self,
        key: &ObjectRef,
        options: &DeleteOptions,
    ) -> Result<DeleteOutcome, StoreError>;

    /// Writes `status`, already encoded, as the status of `key`, with the
    /// compare-and-swap of [`Store::update_status`] on `resource_version`, and
    /// returns the metadata stored (the new `resource_version`). For a writer
    /// that keeps its own copy of the object: nothing of the spec is sent,
    /// decoded, encoded again or returned. The default wraps
    /// [`Store::update_status`]; a backend that keeps encoded objects
    /// overrides it to splice the status into the stored bytes.
    async fn write_status_json(
        &self,
        key: &ObjectRef,
        resource_version: Revision,
        status: Box<serde_json::value::RawValue>,
    ) -> Result<ObjectMeta, StoreError> {
        let status = serde_json::from_str(status.get()).map_err(|e| StoreError::Invalid {
            kind: key.kind.clone(),
            name: key.name.clone(),
            reason: format!("the status is not JSON: {e}"),
        })?;
        let mut metadata = ObjectMeta::new(&key.engine, &key.name);
        metadata.resource_version = resource_version;
        let request = DynamicObject {
            api_version: crate::model::API_VERSION.to_owned(),
            kind: key.kind.clone(),
            metadata,
            spec: serde_json::Value::Null,
            status,
        };
        Ok(self.update_status(request).await?.metadata)
    }

    /// As [`Store::get`], with the object as the backend holds it, for the
    /// caller to decode once into the form it needs ([`EncodedObject::decode`]).
    /// The default wraps [`Store::get`]; a backend that keeps encoded objects
    /// overrides it.
    async fn get_encoded(&self, key: &ObjectRef) -> Result<Option<EncodedObject>, StoreError> {
        Ok(self
            .get(key)
            .await?
            .map(|obj| EncodedObject::Decoded(Box::new(obj))))
    }

    /// As [`Store::list`], with each object as the backend holds it (see
    /// [`Store::get_encoded`]). The default wraps [`Store::list`].
    async fn list_encoded(&self, query: &ListQuery) -> Result<EncodedList, StoreError> {
        let list = self.list(query).await?;
        Ok(EncodedList {
            items: list
                .items
                .into_iter()
                .map(|obj| EncodedObject::Decoded(Box::new(obj)))
                .collect(),
            revision: list.revision,
        })
    }

    /// Every event of `kind` (in `engine`, or every engine) after `from_revision`,
    /// in order, then live events. Fails with [`StoreError::Gone`] when events after
    /// `from_revision` were compacted.
    async fn watch(
        &self,
        kind: &str,
        engine: Option<&str>,
        from_revision: Revision,
    ) -> Result<WatchStream, StoreError>;

    /// As [`Store::watch`], with each object as the backend holds it, so a
    /// consumer decodes it once into the form it needs. The default wraps
    /// [`Store::watch`]; a backend that keeps encoded objects overrides it.
    async fn watch_encoded(
        &self,
        kind: &str,
        engine: Option<&str>,
        from_revision: Revision,
    ) -> Result<EncodedWatchStream, StoreError> {
        use futures::StreamExt as _;
        let events = self.watch(kind, engine, from_revision).await?;
        Ok(Box::pin(events.map(|item| {
            item.map(|e| EncodedWatchEvent {
                event_type: e.event_type,
                revision: e.revision,
                object: EncodedObject::Decoded(Box::new(e.object)),
            })
        })))
    }

    /// Forgets the events at or before `revision` (objects are kept). Compacting
    /// beyond the current revision compacts up to it.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The revision up to which events have been compacted (0 when none were).
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;
}
