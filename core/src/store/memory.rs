//! The in-memory backend: for tests and ephemeral engines. Nothing survives the
//! process.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::watch;

use super::mutation::{self, LoggedEvent, Op, OpOutput, Persist};
use super::watch::{EventLog, EventPage};
use super::{
    DeleteOptions, DeleteOutcome, EncodedObject, EncodedWatchEvent, EncodedWatchStream, ListQuery,
    ObjectList, ObjectRef, Retention, Revision, Store, StoreError, WatchStream,
};
use crate::model::DynamicObject;

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, DynamicObject>,
    events: VecDeque<LoggedEvent>,
    revision: Revision,
    compacted: Revision,
}

impl State {
    fn compact(&mut self, revision: Revision) {
        let target = revision.min(self.revision);
        if target <= self.compacted {
            return;
        }
        while self
            .events
            .front()
            .is_some_and(|e| e.event.revision <= target)
        {
            self.events.pop_front();
        }
        self.compacted = target;
    }

    fn auto_compact(&mut self, retention: &Retention) {
        let mut target = retention.count_target(self.revision);
        if let Some(cutoff) = retention.age_cutoff(Utc::now()) {
            for e in self.events.iter().take_while(|e| e.at < cutoff) {
                target = target.max(e.event.revision);
            }
        }
        self.compact(target);
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written:
        // every write is planned before anything is changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EventLog for Shared {
    fn read(
        &self,
        after: Revision,
        kind: &str,
        engine: Option<&str>,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        let state = self.lock();
        if after < state.compacted {
            return Err(StoreError::Gone {
                requested: after,
                compacted: state.compacted,
            });
        }
        let start = state.events.partition_point(|e| e.event.revision <= after);
        let mut page = EventPage {
            scanned_to: after,
            exhausted: true,
            ..EventPage::default()
        };
        for (i, logged) in state.events.iter().skip(start).enumerate() {
            if i == limit {
                page.exhausted = false;
                break;
            }
            let e = &logged.event;
            page.scanned_to = e.revision;
            if e.object.kind == kind && engine.is_none_or(|en| e.object.metadata.engine == en) {
                page.events.push(EncodedWatchEvent {
                    event_type: e.event_type,
                    revision: e.revision,
                    object: EncodedObject::Decoded(Box::new(e.object.clone())),
                });
            }
        }
        Ok(page)
    }

    fn blocking(&self) -> bool {
        false
    }
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    head: watch::Sender<Revision>,
    retention: Retention,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with the default [`Retention`].
    pub fn new() -> Self {
        Self::with_retention(Retention::default())
    }

    /// An empty store that keeps watch events as `retention` says.
    pub fn with_retention(retention: Retention) -> Self {
        Self {
            shared: Arc::default(),
            head: watch::Sender::new(0),
            retention,
        }
    }

    fn apply(&self, op: Op) -> Result<OpOutput, StoreError> {
        let mut state = self.shared.lock();
        let key = mutation::storage_key(&op.key());
        let current = state.objects.get(&key).cloned();
        let change = mutation::plan(op, current, state.revision + 1, Utc::now())?;
        match change.persist {
            Persist::Nothing => return Ok(change.output),
            Persist::Put(_) => {
                state.objects.insert(key, change.object().clone());
            }
            Persist::Remove => {
                state.objects.remove(&key);
            }
        }
        state.revision += 1;
        if let Some(event) = change.watch_event() {
            state.events.push_back(LoggedEvent {
                at: Utc::now(),
                event,
            });
        }
        state.auto_compact(&self.retention);
        let revision = state.revision;
        drop(state);
        self.head.send_replace(revision);
        Ok(change.output)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.lock().revision)
    }

    async fn get(&self, key: &ObjectRef) -> Result<Option<DynamicObject>, StoreError> {
        Ok(self
            .shared
            .lock()
            .objects
            .get(&mutation::storage_key(key))
            .cloned())
    }

    async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError> {
        let (from, to) = mutation::storage_range(query);
        let state = self.shared.lock();
        let mut items: Vec<DynamicObject> = state
            .objects
            .range(from..to)
            .map(|(_, o)| o)
            .filter(|o| query.matches(o))
            .cloned()
            .collect();
        let revision = state.revision;
        drop(state);
        mutation::sort_items(&mut items, query);
        Ok(ObjectList { items, revision })
    }

    async fn create(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.apply(Op::Create(obj)).map(OpOutput::into_object)
    }

    async fn update(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.apply(Op::Update(obj)).map(OpOutput::into_object)
    }

    async fn update_status(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.apply(Op::UpdateStatus(obj)).map(OpOutput::into_object)
    }

    async fn delete(
        &self,
        key: &ObjectRef,
        options: &DeleteOptions,
    ) -> Result<DeleteOutcome, StoreError> {
        self.apply(Op::Delete(key.clone(), options.clone()))
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
        let compacted = self.shared.lock().compacted;
        if from_revision < compacted {
            return Err(StoreError::Gone {
                requested: from_revision,
                compacted,
            });
        }
        let log: Arc<dyn EventLog> = self.shared.clone();
        Ok(super::watch::stream(
            log,
            self.head.subscribe(),
            kind,
            engine,
            from_revision,
        ))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.shared.lock().compact(revision);
        Ok(())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.lock().compacted)
    }
}
