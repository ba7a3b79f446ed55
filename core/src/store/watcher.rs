//! The one list/watch/relist loop (kube-runtime's `watcher`), under every
//! controller, the admission queue and every wait.
//!
//! A watcher lists a kind (in one engine or all), yields the list as
//! [`Event::Init`], one [`Event::InitApply`] per object and [`Event::InitDone`],
//! then follows the store's watch from the list's revision as [`Event::Apply`] /
//! [`Event::Delete`]. When the watch falls behind compaction (`Gone`), ends, or the
//! store fails, it lists again: a new `Init` … `InitDone` batch that replaces
//! whatever the consumer knew (objects deleted in the gap are simply absent from
//! it). A consumer that keeps state rebuilds it from each batch; one that only
//! reacts to changes treats the batch as "everything may have changed".
//!
//! **Errors are items, and the stream goes on** (as in kube): a failed list or a
//! failed watch is yielded as `Err` and the watcher lists again after a backoff
//! (exponential, reset once a relist succeeds; see [`Config`]). `Gone` is not an
//! error here — it is handled by relisting — so it is never yielded. The stream
//! never ends; drop it to stop watching. An object that does not decode (to `R`
//! with the typed form, [`Api::watcher`](super::Api::watcher)) is yielded as
//! `Err(StoreError::Conversion)` in place of its event, and the stream goes on
//! with the next one.
//!
//! Objects are decoded once, by the consumer: the watcher passes on what
//! [`Store::watch_encoded`] hands over (the redb store's stored JSON), and the
//! typed form decodes it straight into `R` ([`Resource::from_json`]), with no
//! `serde_json::Value` tree between.
//!
//! ```
//! use std::sync::Arc;
//! use futures::StreamExt;
//! use arkline::model::{DynamicObject, ObjectMeta, API_VERSION};
//! use arkline::store::watcher::{self, Event};
//! use arkline::store::{MemoryStore, Store};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! let mut events = watcher::watcher(store.clone(), "Pipeline", Some("ci"), watcher::Config::default()).boxed();
//! assert!(matches!(events.next().await, Some(Ok(Event::Init))));
//! assert!(matches!(events.next().await, Some(Ok(Event::InitDone { revision: 0 }))));
//! store
//!     .create(DynamicObject {
//!         api_version: API_VERSION.into(),
//!         kind: "Pipeline".into(),
//!         metadata: ObjectMeta::new("ci", "build"),
//!         spec: serde_json::json!({}),
//!         status: serde_json::Value::Null,
//!     })
//!     .await?;
//! match events.next().await {
//!     Some(Ok(Event::Apply(obj))) => assert_eq!(obj.metadata.name, "build"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), arkline::store::StoreError>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};

use super::{
    Api, EncodedObject, EncodedWatchStream, EventType, ListQuery, Object, Revision, Store,
    StoreError,
};
use crate::model::{DynamicObject, Resource};

/// One step of a watcher's view of a kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<K> {
    /// A list starts: the objects up to [`Event::InitDone`] are the whole set,
    /// replacing whatever was known before.
    Init,
    /// One listed object.
    InitApply(K),
    /// The list is complete; it was read at `revision`, and the watch events that
    /// follow are the writes after it.
    InitDone {
        /// The revision of the list.
        revision: Revision,
    },
    /// An object was created or changed (a deletion requested while finalizers
    /// remain is a change).
    Apply(K),
    /// An object was removed; this is its last state.
    Delete(K),
}

impl<K> Event<K> {
    /// The object of an `InitApply`, `Apply` or `Delete`.
    pub fn object(&self) -> Option<&K> {
        match self {
            Event::InitApply(o) | Event::Apply(o) | Event::Delete(o) => Some(o),
            Event::Init | Event::InitDone { .. } => None,
        }
    }

    /// The object of an `InitApply`, `Apply` or `Delete`.
    pub fn into_object(self) -> Option<K> {
        match self {
            Event::InitApply(o) | Event::Apply(o) | Event::Delete(o) => Some(o),
            Event::Init | Event::InitDone { .. } => None,
        }
    }

    /// The same event with its object converted by `f`.
    pub fn try_map<T, E>(self, f: impl FnOnce(K) -> Result<T, E>) -> Result<Event<T>, E> {
        Ok(match self {
            Event::Init => Event::Init,
            Event::InitApply(o) => Event::InitApply(f(o)?),
            Event::InitDone { revision } => Event::InitDone { revision },
            Event::Apply(o) => Event::Apply(f(o)?),
            Event::Delete(o) => Event::Delete(f(o)?),
        })
    }
}

impl<K: Object> Event<K> {
    /// The store revision this event brings the consumer to: the list's for
    /// `InitDone`, the write's for `Apply` and `Delete` (the object's
    /// `resource_version`), the object's last write for `InitApply`; `None` for
    /// `Init`. Resuming a raw [`Store::watch`] after the revision of an
    /// `InitDone`, `Apply` or `Delete` misses nothing.
    pub fn revision(&self) -> Option<Revision> {
        match self {
            Event::Init => None,
            Event::InitDone { revision } => Some(*revision),
            Event::InitApply(o) | Event::Apply(o) | Event::Delete(o) => {
                Some(o.metadata().resource_version)
            }
        }
    }
}

/// Tuning of a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Delay before listing again after the first failure; it doubles with each
    /// further failure in a row, and a successful relist resets it.
    pub backoff_base: Duration,
    /// Longest delay between two attempts.
    pub backoff_max: Duration,
}

impl Default for Config {
    /// 100 ms doubling up to 30 s.
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Sets the backoff between attempts after failures.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// The delay after `failures` failures in a row (`failures >= 1`).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.backoff_base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

/// Watches the objects of `kind` in `engine` (every engine when `None`): see the
/// [module documentation](self) for the events and how errors are reported.
/// Nothing is read until the stream is first polled.
pub fn watcher(
    store: Arc<dyn Store>,
    kind: &str,
    engine: Option<&str>,
    config: Config,
) -> impl Stream<Item = Result<Event<DynamicObject>, StoreError>> + Send + use<> {
    encoded_watcher(store, kind, engine, config)
        .map(|item| item.and_then(|event| event.try_map(EncodedObject::into_dynamic)))
}

/// The watcher loop with objects as the store hands them over, for each
/// consumer to decode once into its own form.
pub(crate) fn encoded_watcher(
    store: Arc<dyn Store>,
    kind: &str,
    engine: Option<&str>,
    config: Config,
) -> impl Stream<Item = Result<Event<EncodedObject>, StoreError>> + Send + use<> {
    let watcher = Watcher::new(store, kind, engine, config);
    futures::stream::unfold(watcher, |mut w| async move {
        let item = w.next().await;
        Some((item, w))
    })
}

impl<R: Resource> Api<R> {
    /// A [`watcher`](watcher()) of this kind yielding typed objects. An object
    /// that does not convert to `R` is yielded as `Err(StoreError::Conversion)`
    /// instead of its event (so an `Init` batch may lack it), and the stream goes on.
    pub fn watcher(
        &self,
        engine: Option<&str>,
        config: Config,
    ) -> impl Stream<Item = Result<Event<R>, StoreError>> + Send + use<R> {
        // Each stored object is decoded once, straight into `R`.
        encoded_watcher(self.store().clone(), R::KIND, engine, config)
            .map(|item| item.and_then(|event| event.try_map(EncodedObject::decode::<R>)))
    }
}

/// Stream adapters over watcher events (kube's `WatchStreamExt`).
pub trait WatcherStreamExt<K>: Stream<Item = Result<Event<K>, StoreError>> + Sized {
    /// The objects listed, created or changed; deletions and list boundaries
    /// are dropped, errors kept.
    fn applied_objects(self) -> impl Stream<Item = Result<K, StoreError>> {
        self.filter_map(|item| {
            futures::future::ready(match item {
                Ok(Event::InitApply(o) | Event::Apply(o)) => Some(Ok(o)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
        })
    }

    /// Every object an event is about, deleted ones included; list boundaries
    /// are dropped, errors kept.
    fn touched_objects(self) -> impl Stream<Item = Result<K, StoreError>> {
        self.filter_map(|item| {
            futures::future::ready(match item {
                Ok(event) => event.into_object().map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
    }
}

impl<K, S: Stream<Item = Result<Event<K>, StoreError>>> WatcherStreamExt<K> for S {}

/// Waits until `cond` holds for the object `name` of kind `R` in `engine`
/// (kube-runtime's `await_condition`) and returns it; `cond` sees `None` while
/// the object does not exist (so `|o| o.is_none()` waits for a deletion).
///
/// The condition is checked against the current state first, so an object that
/// already satisfies it is returned at once, then after each change. It
/// survives compaction (the watcher lists again and the condition is checked on
/// the fresh state). Fails on the first store error, or when this object does
/// not convert to `R`; other objects of the kind are never converted.
pub async fn await_condition<R: Resource>(
    api: &Api<R>,
    engine: &str,
    name: &str,
    cond: impl Fn(Option<&R>) -> bool,
) -> Result<Option<R>, StoreError> {
    let mut watcher = Watcher::new(
        api.store().clone(),
        R::KIND,
        Some(engine),
        Config::default(),
    );
    // Lists the one object, not the whole kind: waiting for one execution
    // among thousands must not read them all.
    watcher.query.name = Some(name.to_owned());
    // The named object as listed by the batch in progress.
    let mut listed: Option<EncodedObject> = None;
    loop {
        let current = match watcher.next().await? {
            Event::Init => {
                listed = None;
                continue;
            }
            Event::InitApply(obj) => {
                if obj.is_named(name) {
                    listed = Some(obj);
                }
                continue;
            }
            Event::InitDone { .. } => listed.take(),
            Event::Apply(obj) if obj.is_named(name) => Some(obj),
            Event::Delete(obj) if obj.is_named(name) => None,
            Event::Apply(_) | Event::Delete(_) => continue,
        };
        let current = current.map(EncodedObject::decode::<R>).transpose()?;
        if cond(current.as_ref()) {
            return Ok(current);
        }
    }
}

/// Converts a stored object to `R`, naming it in the error
/// ([`StoreError::Conversion`]).
pub(crate) fn convert<R: Resource>(obj: DynamicObject) -> Result<R, StoreError> {
    let name = obj.metadata.name.clone();
    R::from_dynamic(obj).map_err(|source| StoreError::Conversion {
        kind: R::KIND.to_string(),
        name,
        source,
    })
}

/// The state machine behind [`watcher`](watcher()).
struct Watcher {
    store: Arc<dyn Store>,
    query: ListQuery,
    config: Config,
    /// Failed attempts since the last successful relist.
    failures: u32,
    state: State,
}

enum State {
    /// List (after the backoff, if the last attempt failed) and open the watch.
    Relist,
    /// Yielding the listed objects; the watch from the list's revision is open.
    Listing {
        items: std::vec::IntoIter<EncodedObject>,
        revision: Revision,
        events: EncodedWatchStream,
    },
    /// Following the watch.
    Watching(EncodedWatchStream),
}

impl Watcher {
    fn new(store: Arc<dyn Store>, kind: &str, engine: Option<&str>, config: Config) -> Self {
        let mut query = ListQuery::kind(kind);
        query.engine = engine.map(str::to_owned);
        Self {
            store,
            query,
            config,
            failures: 0,
            state: State::Relist,
        }
    }

    /// The next event; never the end. Cancel-safe only as part of the stream
    /// (the stream keeps an unfinished call alive).
    async fn next(&mut self) -> Result<Event<EncodedObject>, StoreError> {
        loop {
            match std::mem::replace(&mut self.state, State::Relist) {
                State::Relist => {
                    if self.failures > 0 {
                        tokio::time::sleep(self.config.delay(self.failures)).await;
                    }
                    match relist(&*self.store, &self.query).await {
                        Ok(state) => {
                            self.failures = 0;
                            self.state = state;
                            return Ok(Event::Init);
                        }
                        Err(e) => {
                            self.failures = self.failures.saturating_add(1);
                            if e.is_gone() {
                                // Compacted between the list and the watch: list again.
                                tracing::debug!(kind = %self.query.kind, error = %e, "watcher: list revision already compacted; listing again");
                                continue;
                            }
                            tracing::debug!(kind = %self.query.kind, error = %e, "watcher: cannot list and watch; retrying");
                            return Err(e);
                        }
                    }
                }
                State::Listing {
                    mut items,
                    revision,
                    events,
                } => {
                    return Ok(match items.next() {
                        Some(obj) => {
                            self.state = State::Listing {
                                items,
                                revision,
                                events,
                            };
                            Event::InitApply(obj)
                        }
                        None => {
                            self.state = State::Watching(events);
                            Event::InitDone { revision }
                        }
                    });
                }
                State::Watching(mut events) => match events.next().await {
                    Some(Ok(event)) => {
                        self.state = State::Watching(events);
                        return Ok(match event.event_type {
                            EventType::Deleted => Event::Delete(event.object),
                            EventType::Added | EventType::Modified => Event::Apply(event.object),
                        });
                    }
                    Some(Err(e)) if e.is_gone() => {
                        tracing::info!(kind = %self.query.kind, error = %e, "watch fell behind compaction; relisting");
                    }
                    Some(Err(e)) => {
                        self.failures = self.failures.saturating_add(1);
                        tracing::debug!(kind = %self.query.kind, error = %e, "watch failed; relisting");
                        return Err(e);
                    }
                    None => {
                        self.failures = self.failures.saturating_add(1);
                        tracing::debug!(kind = %self.query.kind, "watch ended; relisting");
                    }
                },
            }
        }
    }
}

/// Lists, then opens the watch from the list's revision.
async fn relist(store: &dyn Store, query: &ListQuery) -> Result<State, StoreError> {
    let list = store.list_encoded(query).await?;
    let events = store
        .watch_encoded(&query.kind, query.engine.as_deref(), list.revision)
        .await?;
    Ok(State::Listing {
        items: list.items.into_iter(),
        revision: list.revision,
        events,
    })
}
