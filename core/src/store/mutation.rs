//! The write semantics every backend shares: given an operation and the current
//! object, decide the new object, the event and the answer. Backends only read the
//! current object and persist what is decided here, so CAS, generation and
//! finalizer rules are identical everywhere.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{DeleteOptions, DeleteOutcome, EventType, ObjectRef, Revision, StoreError, WatchEvent};
use crate::model::{API_VERSION, DynamicObject, ObjectMeta};

/// A write operation.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Create(DynamicObject),
    Update(DynamicObject),
    UpdateStatus(DynamicObject),
    /// A status already encoded, with the compare-and-swap of `UpdateStatus`
    /// on `expected` (see [`super::Store::write_status_json`]).
    WriteStatus {
        key: ObjectRef,
        expected: Revision,
        status: Box<serde_json::value::RawValue>,
    },
    Delete(ObjectRef, DeleteOptions),
}

impl Op {
    /// The object the operation addresses.
    pub(crate) fn key(&self) -> ObjectRef {
        match self {
            Op::Create(o) | Op::Update(o) | Op::UpdateStatus(o) => ObjectRef::of(o),
            Op::WriteStatus { key, .. } | Op::Delete(key, _) => key.clone(),
        }
    }
}

/// The answer to a write.
#[derive(Debug, Clone)]
pub(crate) enum OpOutput {
    Object(DynamicObject),
    /// A status write's answer: the metadata stored.
    Meta(ObjectMeta),
    Delete(DeleteOutcome),
}

impl OpOutput {
    /// The object written (for an update that removed the last finalizer of an
    /// object being deleted: its last state).
    pub(crate) fn into_object(self) -> DynamicObject {
        match self {
            OpOutput::Object(o)
            | OpOutput::Delete(DeleteOutcome::Deleted(o))
            | OpOutput::Delete(DeleteOutcome::Pending(o)) => o,
            // Not asked of a status write; its metadata is what there is.
            OpOutput::Meta(metadata) => DynamicObject {
                api_version: API_VERSION.to_owned(),
                kind: String::new(),
                metadata,
                spec: serde_json::Value::Null,
                status: serde_json::Value::Null,
            },
        }
    }

    /// The metadata of the object written.
    pub(crate) fn into_meta(self) -> ObjectMeta {
        match self {
            OpOutput::Meta(meta) => meta,
            other => other.into_object().metadata,
        }
    }

    /// The outcome of a delete.
    pub(crate) fn into_delete(self) -> DeleteOutcome {
        match self {
            OpOutput::Delete(d) => d,
            other => DeleteOutcome::Pending(other.into_object()),
        }
    }
}

/// What to persist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persist {
    /// Nothing changed (no revision is used).
    Nothing,
    /// Store [`Change::object`] under its key; the event is of this type
    /// (`Added` or `Modified`).
    Put(EventType),
    /// Remove the key; the event is `Deleted`, with [`Change::object`] as the
    /// last state.
    Remove,
}

/// The decision for one operation. The object written (or removed) lives once,
/// in `output`: a backend encodes it from there, and copies it only where it
/// keeps objects in memory.
#[derive(Debug)]
pub(crate) struct Change {
    pub persist: Persist,
    pub output: OpOutput,
}

impl Change {
    /// The object after the write: the one stored by `Put`, the last state for
    /// `Remove` (for `Nothing`, the object as it is).
    pub(crate) fn object(&self) -> &DynamicObject {
        match &self.output {
            OpOutput::Object(o)
            | OpOutput::Delete(DeleteOutcome::Deleted(o))
            | OpOutput::Delete(DeleteOutcome::Pending(o)) => o,
            OpOutput::Meta(_) => unreachable!("`plan` answers every write with its object"),
        }
    }

    /// The type of the event to log; `None` exactly when nothing is persisted.
    pub(crate) fn event_type(&self) -> Option<EventType> {
        match self.persist {
            Persist::Nothing => None,
            Persist::Put(t) => Some(t),
            Persist::Remove => Some(EventType::Deleted),
        }
    }

    /// The watch event of this change (a copy of the object), if it logs one.
    pub(crate) fn watch_event(&self) -> Option<WatchEvent> {
        let object = self.object();
        Some(WatchEvent {
            event_type: self.event_type()?,
            revision: object.metadata.resource_version,
            object: object.clone(),
        })
    }
}

/// An event as kept in an event log (with its time, for age-based compaction).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoggedEvent {
    pub at: DateTime<Utc>,
    pub event: WatchEvent,
}

/// The storage key of an object: `kind/engine/name`. Parts never contain `/`.
pub(crate) fn storage_key(key: &ObjectRef) -> String {
    format!("{}/{}/{}", key.kind, key.engine, key.name)
}

/// Range bounds covering every key a query can match: a kind, an engine's
/// objects of it, or with both an engine and a name the one key.
pub(crate) fn storage_range(query: &super::ListQuery) -> (String, String) {
    let kind = &query.kind;
    // `0` is the byte after `/`, so [prefix/, prefix0) holds exactly the prefix;
    // names hold no NUL, so [key, key\0) holds exactly the key.
    match (query.engine.as_deref(), query.name.as_deref()) {
        (Some(e), Some(n)) => (format!("{kind}/{e}/{n}"), format!("{kind}/{e}/{n}\0")),
        (Some(e), None) => (format!("{kind}/{e}/"), format!("{kind}/{e}0")),
        (None, _) => (format!("{kind}/"), format!("{kind}0")),
    }
}

fn check_part(
    obj_kind: &str,
    name: &str,
    what: &str,
    value: &str,
    allow_empty: bool,
) -> Result<(), StoreError> {
    // One rule for names everywhere: the pipeline parser applies the same one.
    let bad =
        !(allow_empty && value.is_empty()) && crate::model::meta::check_object_name(value).is_err();
    if bad {
        return Err(StoreError::Invalid {
            kind: obj_kind.to_string(),
            name: name.to_string(),
            reason: format!(
                "{what} {value:?} must be {}at most 253 characters, without `/` or control characters",
                if allow_empty { "" } else { "non-empty, " }
            ),
        });
    }
    Ok(())
}

/// Orders listed objects by engine, then name. Storage order already is that
/// within one engine; across engines `/` sorts after some name characters.
pub(crate) fn sort_items(items: &mut [DynamicObject], query: &super::ListQuery) {
    if query.engine.is_none() {
        items.sort_by(|a, b| {
            (&a.metadata.engine, &a.metadata.name).cmp(&(&b.metadata.engine, &b.metadata.name))
        });
    }
}

pub(crate) fn validate_key(key: &ObjectRef) -> Result<(), StoreError> {
    check_part(&key.kind, &key.name, "kind", &key.kind, false)?;
    check_part(&key.kind, &key.name, "engine", &key.engine, true)?;
    check_part(&key.kind, &key.name, "name", &key.name, false)
}

/// Decides the outcome of `op` against `current` (the object stored under
/// `op.key()`), where `next` is the revision a write would take.
pub(crate) fn plan(
    op: Op,
    current: Option<DynamicObject>,
    next: Revision,
    now: DateTime<Utc>,
) -> Result<Change, StoreError> {
    let key = op.key();
    validate_key(&key)?;
    match op {
        Op::Create(mut obj) => {
            if current.is_some() {
                return Err(StoreError::AlreadyExists { key });
            }
            if obj.api_version.is_empty() {
                obj.api_version = API_VERSION.to_string();
            } else if obj.api_version != API_VERSION {
                return Err(StoreError::Invalid {
                    kind: key.kind,
                    name: key.name,
                    reason: format!(
                        "apiVersion {:?} is not supported; use {API_VERSION:?}",
                        obj.api_version
                    ),
                });
            }
            let meta = &mut obj.metadata;
            meta.uid = uuid::Uuid::new_v4().to_string();
            meta.created = Some(now);
            meta.resource_version = next;
            meta.generation = 1;
            meta.deletion_requested = None;
            Ok(written(EventType::Added, obj))
        }
        Op::Update(obj) => {
            let old = current.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
            check_cas(&key, obj.metadata.resource_version, &old)?;
            if old.metadata.deletion_requested.is_some()
                && obj
                    .metadata
                    .finalizers
                    .iter()
                    .any(|f| !old.metadata.finalizers.contains(f))
            {
                return Err(StoreError::Invalid {
                    kind: key.kind,
                    name: key.name,
                    reason: "no finalizer can be added once deletion was requested".into(),
                });
            }
            let mut new = old;
            if new.spec != obj.spec {
                new.metadata.generation += 1;
            }
            new.spec = obj.spec;
            new.metadata.labels = obj.metadata.labels;
            new.metadata.annotations = obj.metadata.annotations;
            new.metadata.finalizers = obj.metadata.finalizers;
            new.metadata.owners = obj.metadata.owners;
            new.metadata.resource_version = next;
            if new.metadata.deletion_requested.is_some() && new.metadata.finalizers.is_empty() {
                return Ok(removed(new));
            }
            Ok(written(EventType::Modified, new))
        }
        Op::UpdateStatus(obj) => {
            let old = current.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
            check_cas(&key, obj.metadata.resource_version, &old)?;
            let mut new = old;
            new.status = obj.status;
            new.metadata.resource_version = next;
            Ok(written(EventType::Modified, new))
        }
        Op::WriteStatus {
            key,
            expected,
            status,
        } => {
            // The generic path: as `UpdateStatus` (a backend that keeps encoded
            // objects splices the status in instead; see the redb writer).
            let old = current.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
            check_cas(&key, expected, &old)?;
            let status = serde_json::from_str(status.get()).map_err(|e| StoreError::Invalid {
                kind: key.kind.clone(),
                name: key.name.clone(),
                reason: format!("the status is not JSON: {e}"),
            })?;
            let mut new = old;
            new.status = status;
            new.metadata.resource_version = next;
            Ok(written(EventType::Modified, new))
        }
        Op::Delete(_, options) => {
            let old = current.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
            if let Some(expected) = options.resource_version {
                check_cas(&key, expected, &old)?;
            }
            if old.metadata.finalizers.is_empty() {
                let mut last = old;
                last.metadata.resource_version = next;
                return Ok(removed(last));
            }
            if old.metadata.deletion_requested.is_some() {
                // Already terminating: nothing to write.
                return Ok(Change {
                    persist: Persist::Nothing,
                    output: OpOutput::Delete(DeleteOutcome::Pending(old)),
                });
            }
            let mut new = old;
            new.metadata.deletion_requested = Some(now);
            new.metadata.resource_version = next;
            Ok(Change {
                persist: Persist::Put(EventType::Modified),
                output: OpOutput::Delete(DeleteOutcome::Pending(new)),
            })
        }
    }
}

fn check_cas(key: &ObjectRef, expected: Revision, old: &DynamicObject) -> Result<(), StoreError> {
    let actual = old.metadata.resource_version;
    if expected != actual {
        return Err(StoreError::Conflict {
            key: key.clone(),
            expected,
            actual,
        });
    }
    Ok(())
}

fn written(event_type: EventType, obj: DynamicObject) -> Change {
    Change {
        persist: Persist::Put(event_type),
        output: OpOutput::Object(obj),
    }
}

fn removed(last: DynamicObject) -> Change {
    Change {
        persist: Persist::Remove,
        output: OpOutput::Delete(DeleteOutcome::Deleted(last)),
    }
}
