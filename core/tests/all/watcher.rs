//! The watcher layer: list, watch, relist after compaction; typed watchers;
//! `await_condition`; and the engine's waits built on them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arkline::model::{API_VERSION, DynamicObject, ExecutionPhase, ObjectMeta, Resource};
use arkline::store::watcher::{self, Event, WatcherStreamExt};
use arkline::store::{
    Api, DeleteOptions, DeleteOutcome, ListQuery, MemoryStore, ObjectList, ObjectRef, RedbOptions,
    RedbStore, Retention, Revision, Store, StoreError, WatchStream, await_condition,
};
use arkline::{Container, EngineError, TriggerRequest};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// A guard against a hang: tests synchronise on store events, never on time.
const GUARD: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WidgetSpec {
    size: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct Widget {
    metadata: ObjectMeta,
    spec: WidgetSpec,
}

impl Resource for Widget {
    const KIND: &'static str = "Widget";
    type Spec = WidgetSpec;
    type Status = serde_json::Value;

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn to_dynamic(&self) -> Result<DynamicObject, serde_json::Error> {
        Ok(DynamicObject {
            api_version: API_VERSION.into(),
            kind: Self::KIND.into(),
            metadata: self.metadata.clone(),
            spec: serde_json::to_value(&self.spec)?,
            status: serde_json::Value::Null,
        })
    }

    fn from_dynamic(obj: DynamicObject) -> Result<Self, serde_json::Error> {
        if obj.kind != Self::KIND {
            return Err(serde::de::Error::custom("not a Widget"));
        }
        Ok(Self {
            metadata: obj.metadata,
            spec: serde_json::from_value(obj.spec)?,
        })
    }
}

fn object(kind: &str, engine: &str, name: &str, spec: serde_json::Value) -> DynamicObject {
    DynamicObject {
        api_version: API_VERSION.into(),
        kind: kind.into(),
        metadata: ObjectMeta::new(engine, name),
        spec,
        status: serde_json::Value::Null,
    }
}

fn widget(name: &str, size: u32) -> DynamicObject {
    object("Widget", "ci", name, json!({ "size": size }))
}

/// Replaces the spec of `obj` (read fresh) with `{size}`.
async fn resize(store: &Arc<dyn Store>, name: &str, size: u32) -> DynamicObject {
    let mut obj = store
        .get(&ObjectRef::new("Widget", "ci", name))
        .await
        .unwrap()
        .expect("exists");
    obj.spec = json!({ "size": size });
    store.update(obj).await.unwrap()
}

async fn next<S: Stream + Unpin>(events: &mut S) -> S::Item {
    tokio::time::timeout(GUARD, events.next())
        .await
        .expect("an event in time")
        .expect("watchers never end")
}

/// The stores under test, keeping events as `retention` says.
fn stores(retention: Retention) -> Vec<(&'static str, Arc<dyn Store>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open_with(
        dir.path(),
        RedbOptions::default().retention(retention.clone()),
    )
    .unwrap();
    vec![
        (
            "memory",
            Arc::new(MemoryStore::with_retention(retention)),
            None,
        ),
        ("redb", Arc::new(redb), Some(dir)),
    ]
}

/// Stores that compact on every write (they keep one revision of events).
fn compacting_stores() -> Vec<(&'static str, Arc<dyn Store>, Option<tempfile::TempDir>)> {
    stores(Retention::unlimited().revisions(1))
}

/// A store whose first watch (when gated) reads nothing until the gate opens,
/// so a test can write and compact under it; it reports every watch opened.
#[derive(Debug)]
struct Gated {
    inner: Arc<dyn Store>,
    gate: Mutex<Option<oneshot::Receiver<()>>>,
    watches: AtomicUsize,
    watching: mpsc::UnboundedSender<Revision>,
}

impl Gated {
    fn new(
        inner: Arc<dyn Store>,
        gated: bool,
    ) -> (
        Arc<Self>,
        Option<oneshot::Sender<()>>,
        mpsc::UnboundedReceiver<Revision>,
    ) {
        let (open, gate) = oneshot::channel();
        let (watching, watched) = mpsc::unbounded_channel();
        let store = Arc::new(Self {
            inner,
            gate: Mutex::new(gated.then_some(gate)),
            watches: AtomicUsize::new(0),
            watching,
        });
        (store, gated.then_some(open), watched)
    }
}

#[async_trait::async_trait]
impl Store for Gated {
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    async fn get(&self, key: &ObjectRef) -> Result<Option<DynamicObject>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError> {
        self.inner.list(query).await
    }
    async fn create(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.inner.create(obj).await
    }
    async fn update(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.inner.update(obj).await
    }
    async fn update_status(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.inner.update_status(obj).await
    }
    async fn delete(
        &self,
        key: &ObjectRef,
        options: &DeleteOptions,
    ) -> Result<DeleteOutcome, StoreError> {
        self.inner.delete(key, options).await
    }
    async fn watch(
        &self,
        kind: &str,
        engine: Option<&str>,
        from: Revision,
    ) -> Result<WatchStream, StoreError> {
        let stream = self.inner.watch(kind, engine, from).await?;
        self.watches.fetch_add(1, Ordering::SeqCst);
        let _ = self.watching.send(from);
        let gate = self.gate.lock().unwrap().take();
        Ok(match gate {
            Some(gate) => Box::pin(
                futures::stream::once(async move {
                    let _ = gate.await;
                    stream
                })
                .flatten(),
            ),
            None => stream,
        })
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }
}

fn name_of(event: &Event<DynamicObject>) -> Option<&str> {
    event.object().map(|o| o.metadata.name.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_a_list_then_changes_in_revision_order() {
    for (backend, store, _dir) in stores(Retention::default()) {
        let a = store.create(widget("a", 1)).await.unwrap();
        store.create(widget("b", 2)).await.unwrap();
        // Another engine and another kind: never seen.
        store
            .create(object("Widget", "other", "x", json!({ "size": 9 })))
            .await
            .unwrap();
        store
            .create(object("Gadget", "ci", "g", json!({})))
            .await
            .unwrap();
        let listed_at = store.revision().await.unwrap();
        let mut events = watcher::watcher(
            store.clone(),
            "Widget",
            Some("ci"),
            watcher::Config::default(),
        )
        .boxed();

        assert_eq!(next(&mut events).await.unwrap(), Event::Init, "{backend}");
        let first = next(&mut events).await.unwrap();
        assert!(matches!(first, Event::InitApply(_)), "{backend}: {first:?}");
        assert_eq!(name_of(&first), Some("a"));
        assert_eq!(first.revision(), Some(a.metadata.resource_version));
        assert_eq!(name_of(&next(&mut events).await.unwrap()), Some("b"));
        let done = next(&mut events).await.unwrap();
        assert_eq!(
            done,
            Event::InitDone {
                revision: listed_at
            },
            "{backend}"
        );
        assert_eq!(done.revision(), Some(listed_at));

        let a2 = resize(&store, "a", 10).await;
        let DeleteOutcome::Deleted(b_last) = store
            .delete(
                &ObjectRef::new("Widget", "ci", "b"),
                &DeleteOptions::default(),
            )
            .await
            .unwrap()
        else {
            panic!("b has no finalizers")
        };
        store
            .create(object("Widget", "other", "y", json!({ "size": 9 })))
            .await
            .unwrap();
        let c = store.create(widget("c", 3)).await.unwrap();

        let mut revisions = Vec::new();
        match next(&mut events).await.unwrap() {
            Event::Apply(obj) => {
                assert_eq!(obj, a2, "{backend}");
                revisions.push(a2.metadata.resource_version);
            }
            other => panic!("{backend}: expected a's change, got {other:?}"),
        }
        let deleted = next(&mut events).await.unwrap();
        assert_eq!(deleted, Event::Delete(b_last.clone()), "{backend}");
        revisions.push(deleted.revision().unwrap());
        let created = next(&mut events).await.unwrap();
        assert_eq!(created, Event::Apply(c.clone()), "{backend}");
        revisions.push(created.revision().unwrap());
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]) && revisions[0] > listed_at,
            "{backend}: {revisions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_makes_the_watcher_list_again_and_nothing_is_lost() {
    for (backend, inner, _dir) in compacting_stores() {
        let (gated, open, _watched) = Gated::new(inner, true);
        let store: Arc<dyn Store> = gated.clone();
        store.create(widget("a", 1)).await.unwrap();
        store.create(widget("b", 2)).await.unwrap();
        let mut events = watcher::watcher(
            store.clone(),
            "Widget",
            Some("ci"),
            watcher::Config::default(),
        )
        .boxed();
        let mut first = Vec::new();
        loop {
            let event = next(&mut events).await.unwrap();
            if let Event::InitDone { .. } = event {
                break;
            }
            first.push(event);
        }
        assert_eq!(first.len(), 3, "{backend}: Init and two objects");

        // While the watcher is not reading: a change, a deletion and a creation,
        // then their events are compacted away.
        let a2 = resize(&store, "a", 10).await;
        store
            .delete(
                &ObjectRef::new("Widget", "ci", "b"),
                &DeleteOptions::default(),
            )
            .await
            .unwrap();
        let c = store.create(widget("c", 3)).await.unwrap();
        let head = store.revision().await.unwrap();
        store.compact(head).await.unwrap();
        open.unwrap().send(()).unwrap();

        // A fresh batch: the state after the gap, without `b`.
        assert_eq!(next(&mut events).await.unwrap(), Event::Init, "{backend}");
        assert_eq!(
            next(&mut events).await.unwrap(),
            Event::InitApply(a2),
            "{backend}"
        );
        assert_eq!(
            next(&mut events).await.unwrap(),
            Event::InitApply(c),
            "{backend}"
        );
        assert_eq!(
            next(&mut events).await.unwrap(),
            Event::InitDone { revision: head },
            "{backend}"
        );
        assert_eq!(gated.watches.load(Ordering::SeqCst), 2, "{backend}");
        // And it follows the new watch.
        let c2 = resize(&store, "c", 30).await;
        assert_eq!(next(&mut events).await.unwrap(), Event::Apply(c2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_conversion_errors_are_items_and_the_stream_goes_on() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store.create(widget("a", 1)).await.unwrap();
    store
        .create(object("Widget", "ci", "b-bad", json!({ "size": "big" })))
        .await
        .unwrap();
    store.create(widget("c", 3)).await.unwrap();
    let api = Api::<Widget>::new(store.clone());
    let mut events = api.watcher(Some("ci"), watcher::Config::default()).boxed();
    let conversion_of = |item: Result<Event<Widget>, StoreError>| match item {
        Err(StoreError::Conversion { kind, name, .. }) => (kind, name),
        other => panic!("expected a conversion error, got {other:?}"),
    };

    assert_eq!(next(&mut events).await.unwrap(), Event::Init);
    match next(&mut events).await.unwrap() {
        Event::InitApply(w) => assert_eq!((w.metadata.name.as_str(), w.spec.size), ("a", 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        conversion_of(next(&mut events).await),
        ("Widget".to_owned(), "b-bad".to_owned())
    );
    match next(&mut events).await.unwrap() {
        Event::InitApply(w) => assert_eq!(w.metadata.name, "c"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        next(&mut events).await.unwrap(),
        Event::InitDone { .. }
    ));

    store
        .create(object("Widget", "ci", "d-bad", json!({})))
        .await
        .unwrap();
    store.create(widget("e", 5)).await.unwrap();
    assert_eq!(
        conversion_of(next(&mut events).await),
        ("Widget".to_owned(), "d-bad".to_owned())
    );
    match next(&mut events).await.unwrap() {
        Event::Apply(w) => assert_eq!((w.metadata.name.as_str(), w.spec.size), ("e", 5)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_and_touched_objects_drop_list_boundaries() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store.create(widget("a", 1)).await.unwrap();
    let api = Api::<Widget>::new(store.clone());
    let mut applied = api
        .watcher(Some("ci"), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut touched = api
        .watcher(Some("ci"), watcher::Config::default())
        .touched_objects()
        .boxed();
    let name = |item: Result<Widget, StoreError>| item.unwrap().metadata.name;
    assert_eq!(name(next(&mut applied).await), "a");
    assert_eq!(name(next(&mut touched).await), "a");
    store
        .delete(
            &ObjectRef::new("Widget", "ci", "a"),
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
    store.create(widget("b", 2)).await.unwrap();
    // The deletion of `a` is touched, not applied.
    assert_eq!(name(next(&mut applied).await), "b");
    assert_eq!(name(next(&mut touched).await), "a");
    assert_eq!(name(next(&mut touched).await), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_condition_answers_at_once_from_the_current_state() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store.create(widget("w", 3)).await.unwrap();
    store
        .create(object("Widget", "ci", "bad", json!({})))
        .await
        .unwrap();
    let api = Api::<Widget>::new(store.clone());
    let found = tokio::time::timeout(
        GUARD,
        await_condition(&api, "ci", "w", |w| w.is_some_and(|w| w.spec.size == 3)),
    )
    .await
    .expect("in time")
    .unwrap();
    assert_eq!(found.map(|w| w.spec.size), Some(3));
    // An absent object is `None` to the condition.
    let absent = tokio::time::timeout(GUARD, await_condition(&api, "ci", "nope", |w| w.is_none()))
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(absent, None);
    // The named object not converting is an error; others are never converted.
    let err = await_condition(&api, "ci", "bad", |_| true)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conversion { name, .. } if name == "bad"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_condition_returns_when_the_condition_becomes_true() {
    for (backend, inner, _dir) in stores(Retention::default()) {
        let (gated, _, mut watched) = Gated::new(inner, false);
        let store: Arc<dyn Store> = gated.clone();
        store.create(widget("w", 1)).await.unwrap();
        let api = Api::<Widget>::new(store.clone());
        let waiting = tokio::spawn({
            let api = api.clone();
            async move {
                await_condition(&api, "ci", "w", |w| w.is_some_and(|w| w.spec.size == 3)).await
            }
        });
        // Watching (its list saw size 1): every change from now is an event.
        tokio::time::timeout(GUARD, watched.recv())
            .await
            .expect("the wait watches")
            .unwrap();
        resize(&store, "w", 2).await;
        store.create(widget("other", 3)).await.unwrap();
        resize(&store, "w", 3).await;
        let found = tokio::time::timeout(GUARD, waiting)
            .await
            .expect("the wait ends")
            .unwrap()
            .unwrap();
        assert_eq!(found.map(|w| w.spec.size), Some(3), "{backend}");
        assert_eq!(
            gated.watches.load(Ordering::SeqCst),
            1,
            "{backend}: seen on the watch"
        );

        // Waiting for a deletion.
        let waiting = tokio::spawn({
            let api = api.clone();
            async move { await_condition(&api, "ci", "w", |w| w.is_none()).await }
        });
        tokio::time::timeout(GUARD, watched.recv())
            .await
            .expect("the second wait watches")
            .unwrap();
        store
            .delete(
                &ObjectRef::new("Widget", "ci", "w"),
                &DeleteOptions::default(),
            )
            .await
            .unwrap();
        let gone = tokio::time::timeout(GUARD, waiting)
            .await
            .expect("the wait ends")
            .unwrap()
            .unwrap();
        assert_eq!(gone, None, "{backend}");
        assert_eq!(gated.watches.load(Ordering::SeqCst), 2, "{backend}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_condition_holds_across_a_compaction() {
    for (backend, inner, _dir) in compacting_stores() {
        let (gated, open, mut watched) = Gated::new(inner, true);
        let store: Arc<dyn Store> = gated.clone();
        store.create(widget("w", 1)).await.unwrap();
        let api = Api::<Widget>::new(store.clone());
        let waiting = tokio::spawn({
            let api = api.clone();
            async move {
                await_condition(&api, "ci", "w", |w| w.is_some_and(|w| w.spec.size == 3)).await
            }
        });
        tokio::time::timeout(GUARD, watched.recv())
            .await
            .expect("the wait watches")
            .unwrap();
        // Its watch reads nothing until the gate opens: the change to 3 is only
        // in events that are compacted first.
        resize(&store, "w", 2).await;
        resize(&store, "w", 3).await;
        store.create(widget("other", 1)).await.unwrap();
        store
            .compact(store.revision().await.unwrap())
            .await
            .unwrap();
        open.unwrap().send(()).unwrap();
        let found = tokio::time::timeout(GUARD, waiting)
            .await
            .expect("the wait ends")
            .unwrap()
            .unwrap();
        assert_eq!(found.map(|w| w.spec.size), Some(3), "{backend}");
        assert_eq!(
            gated.watches.load(Ordering::SeqCst),
            2,
            "{backend}: listed again after Gone"
        );
    }
}

/// `Engine::wait` and `Engine::watch_execution` on the watcher: an execution
/// with no biz installed fails at resolution, quickly and without wasm.
async fn engine_follows_an_execution(store: Arc<dyn Store>) {
    let container = Container::builder().store(store).build().unwrap();
    let engine = container.engine("team-a").await.unwrap();
    engine
        .apply_pipeline_yaml(
            "hello.yaml",
            "name: hello\nstages:\n  - name: greet\n    steps:\n      - name: say\n        uses: shell\n        with: { script: echo hi }\n",
        )
        .await
        .unwrap();
    let exec = engine
        .trigger("hello", TriggerRequest::manual())
        .await
        .unwrap();
    let name = exec.metadata.name.clone();

    let mut states = engine.watch_execution(&name).await.unwrap();
    let states: Vec<_> = tokio::time::timeout(GUARD, async {
        let mut seen = Vec::new();
        while let Some(state) = states.next().await {
            seen.push(state.expect("a state"));
        }
        seen
    })
    .await
    .expect("the stream ends after the finished state");
    let (last, before) = states.split_last().expect("at least the current state");
    assert_eq!(last.status.phase, ExecutionPhase::Failed);
    assert!(before.iter().all(|s| !s.status.phase.is_finished()));
    let versions: Vec<_> = states.iter().map(|s| s.metadata.resource_version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "each state once, in order: {versions:?}"
    );
    assert!(versions[0] >= exec.metadata.resource_version);

    let done = tokio::time::timeout(GUARD, engine.wait(&name))
        .await
        .expect("already finished: answered at once")
        .unwrap();
    assert_eq!(done, *last);
    assert!(
        done.status.reason.contains("biz `shell` is not installed"),
        "{}",
        done.status.reason
    );
    // A finished execution's watch is its one state.
    let again: Vec<_> = engine.watch_execution(&name).await.unwrap().collect().await;
    assert_eq!(again.len(), 1);

    for missing in [
        engine.wait("hello-99").await.unwrap_err(),
        engine.watch_execution("hello-99").await.err().unwrap(),
    ] {
        assert!(
            matches!(&missing, EngineError::NotFound { name, .. } if name == "hello-99"),
            "{missing}"
        );
    }
    container.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_wait_and_watch_execution_follow_an_execution() {
    engine_follows_an_execution(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_waits_hold_when_every_write_compacts() {
    // Every watcher of the engine (controllers, admission, the waits) keeps
    // falling behind compaction and lists again.
    engine_follows_an_execution(Arc::new(MemoryStore::with_retention(
        Retention::unlimited().revisions(1),
    )))
    .await;
}
