//! The controller runtime driven by real store watches.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arkline::controller::{Action, Backoff, Controller, ReconcileFailure};
use arkline::model::{API_VERSION, DynamicObject, ObjectMeta, OwnerRef, Resource};
use arkline::store::{
    DeleteOptions, DeleteOutcome, ListQuery, MemoryStore, ObjectList, ObjectRef, RedbStore,
    Revision, Store, StoreError, WatchStream,
};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// A guard against a hang: tests synchronise on store events, never on time.
const GUARD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("reconcile failed: {0}")]
struct Error(String);

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error(e.to_string())
    }
}

/// A resource `$ty` of kind `$kind` with typed spec and status.
macro_rules! resource {
    ($ty:ident, $kind:literal, $spec:ty, $status:ty) => {
        #[derive(Debug, Clone, PartialEq)]
        struct $ty {
            metadata: ObjectMeta,
            spec: $spec,
            status: $status,
        }

        impl Resource for $ty {
            const KIND: &'static str = $kind;
            type Spec = $spec;
            type Status = $status;

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
                    status: serde_json::to_value(&self.status)?,
                })
            }

            fn from_dynamic(obj: DynamicObject) -> Result<Self, serde_json::Error> {
                if obj.kind != Self::KIND {
                    return Err(serde::de::Error::custom(format!("not a {}", Self::KIND)));
                }
                let status = if obj.status.is_null() {
                    <$status>::default()
                } else {
                    serde_json::from_value(obj.status)?
                };
                Ok(Self {
                    metadata: obj.metadata,
                    spec: serde_json::from_value(obj.spec)?,
                    status,
                })
            }
        }
    };
}

resource!(Parent, "Pipeline", serde_json::Value, serde_json::Value);
resource!(
    Child,
    "PipelineExecution",
    serde_json::Value,
    serde_json::Value
);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct WidgetSpec {
    size: u32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct PartSpec {
    widget: String,
    done: bool,
}

resource!(Widget, "Widget", WidgetSpec, serde_json::Value);
resource!(Part, "Part", PartSpec, serde_json::Value);

fn object(kind: &str, name: &str, spec: serde_json::Value) -> DynamicObject {
    DynamicObject {
        api_version: API_VERSION.into(),
        kind: kind.into(),
        metadata: ObjectMeta {
            name: name.into(),
            engine: "ci".into(),
            ..Default::default()
        },
        spec,
        status: serde_json::Value::Null,
    }
}

/// Waits, by watching the store, until `kind/name` satisfies `done`.
async fn wait_for(
    store: &Arc<dyn Store>,
    kind: &str,
    name: &str,
    done: impl Fn(&DynamicObject) -> bool,
) -> DynamicObject {
    let work = async {
        let list = store
            .list(&ListQuery::kind(kind).engine("ci"))
            .await
            .unwrap();
        if let Some(o) = list
            .items
            .iter()
            .find(|o| o.metadata.name == name && done(o))
        {
            return o.clone();
        }
        let mut events = store.watch(kind, Some("ci"), list.revision).await.unwrap();
        loop {
            let e = events
                .next()
                .await
                .expect("watch ended")
                .expect("watch failed");
            if e.object.metadata.name == name && done(&e.object) {
                return e.object;
            }
        }
    };
    tokio::time::timeout(GUARD, work)
        .await
        .unwrap_or_else(|_| panic!("{kind} {name} never reached the expected state"))
}

/// Keeps `spec.replicas` executions per pipeline and reports them in status.
async fn replicate(pipeline: Arc<Parent>, store: Arc<Arc<dyn Store>>) -> Result<Action, Error> {
    let want = pipeline.spec["replicas"].as_u64().unwrap_or(0);
    let owned: Vec<_> = store
        .list(&ListQuery::kind("PipelineExecution").engine(&pipeline.metadata.engine))
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.metadata
                .owners
                .iter()
                .any(|o| o.uid == pipeline.metadata.uid)
        })
        .collect();
    let have: HashSet<_> = owned.iter().map(|e| e.metadata.name.clone()).collect();
    for i in 0..want {
        let name = format!("{}-{i}", pipeline.metadata.name);
        if !have.contains(&name) {
            let mut exec = object("PipelineExecution", &name, json!({ "run": i }));
            exec.metadata.owners.push(OwnerRef {
                kind: "Pipeline".into(),
                name: pipeline.metadata.name.clone(),
                uid: pipeline.metadata.uid.clone(),
            });
            match store.create(exec).await {
                Ok(_) => {}
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let count = store
        .list(&ListQuery::kind("PipelineExecution").engine(&pipeline.metadata.engine))
        .await?
        .items
        .iter()
        .filter(|e| {
            e.metadata
                .owners
                .iter()
                .any(|o| o.uid == pipeline.metadata.uid)
        })
        .count();
    let status = json!({ "executions": count, "observedGeneration": pipeline.metadata.generation });
    if pipeline.status != status {
        let mut updated = pipeline.to_dynamic().expect("JSON");
        updated.status = status;
        match store.update_status(updated).await {
            // A newer version is on its way to us through the watch.
            Err(e) if e.is_conflict() => return Ok(Action::await_change()),
            other => {
                other?;
            }
        }
    }
    Ok(Action::await_change())
}

async fn reconcile_loop_converges(store: Arc<dyn Store>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(
        Controller::<Parent>::new(store.clone())
            .owns::<Child>()
            .concurrency(2)
            .graceful_shutdown_on(async {
                let _ = stopped.await;
            })
            .run(
                replicate,
                |_obj, _err: &Error, _ctx| Action::requeue(Duration::from_millis(1)),
                Arc::new(store.clone()),
            )
            .for_each(|_| async {}),
    );

    let p = store
        .create(object("Pipeline", "build", json!({ "replicas": 3 })))
        .await
        .unwrap();
    wait_for(&store, "Pipeline", "build", |o| o.status["executions"] == 3).await;

    let mut more = store.get(&ObjectRef::of(&p)).await.unwrap().unwrap();
    more.spec = json!({ "replicas": 5 });
    store.update(more).await.unwrap();
    let done = wait_for(&store, "Pipeline", "build", |o| {
        o.status["executions"] == 5 && o.status["observedGeneration"] == 2
    })
    .await;
    assert_eq!(done.metadata.generation, 2);

    // Deleting an owned object triggers the owner, which recreates it.
    let deleted = store
        .delete(
            &ObjectRef::new("PipelineExecution", "ci", "build-4"),
            &DeleteOptions::default(),
        )
        .await
        .unwrap();
    assert!(matches!(deleted, DeleteOutcome::Deleted(_)));
    wait_for(&store, "PipelineExecution", "build-4", |_| true).await;

    stop.send(()).unwrap();
    tokio::time::timeout(GUARD, controller)
        .await
        .expect("controller stops")
        .expect("controller task");
    let executions = store
        .list(&ListQuery::kind("PipelineExecution"))
        .await
        .unwrap();
    assert_eq!(executions.items.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_loop_converges_on_memory() {
    reconcile_loop_converges(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_loop_converges_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    reconcile_loop_converges(Arc::new(RedbStore::open(dir.path()).unwrap())).await;
}

/// Records overlap: a key running twice at once, or more than the bound in flight.
struct Tracker {
    active: Mutex<HashSet<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    overlaps: AtomicUsize,
    runs: AtomicUsize,
    seen: mpsc::UnboundedSender<(String, u64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_never_runs_twice_at_once_and_concurrency_is_bounded() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let tracker = Arc::new(Tracker {
        active: Mutex::default(),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        overlaps: AtomicUsize::new(0),
        runs: AtomicUsize::new(0),
        seen: seen_tx,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(
        Controller::<Parent>::new(store.clone())
            .concurrency(3)
            .graceful_shutdown_on(async {
                let _ = stopped.await;
            })
            .run(
                |obj: Arc<Parent>, t: Arc<Tracker>| async move {
                    let name = obj.metadata.name.clone();
                    if !t.active.lock().unwrap().insert(name.clone()) {
                        t.overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    let now = t.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    t.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    for _ in 0..10 {
                        tokio::task::yield_now().await;
                    }
                    t.in_flight.fetch_sub(1, Ordering::SeqCst);
                    t.active.lock().unwrap().remove(&name);
                    t.runs.fetch_add(1, Ordering::SeqCst);
                    let _ = t.seen.send((name, obj.spec["n"].as_u64().unwrap_or(0)));
                    Ok::<_, Error>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                tracker.clone(),
            )
            .for_each(|_| async {}),
    );

    // Many updates to a few keys, from several writers at once.
    let mut writers = Vec::new();
    for k in 0..6 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut obj = store
                .create(object("Pipeline", &format!("p{k}"), json!({ "n": 0 })))
                .await
                .unwrap();
            for n in 1..=30u64 {
                obj.spec = json!({ "n": n });
                obj = store.update(obj).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // Level-triggered: every key is eventually reconciled at its final state.
    let mut final_seen = HashSet::new();
    tokio::time::timeout(GUARD, async {
        while final_seen.len() < 6 {
            let (name, n) = seen_rx.recv().await.unwrap();
            if n == 30 {
                final_seen.insert(name);
            }
        }
    })
    .await
    .expect("every key reconciled at its last version");
    stop.send(()).unwrap();
    controller.await.unwrap();

    assert_eq!(tracker.overlaps.load(Ordering::SeqCst), 0);
    assert!(tracker.max_in_flight.load(Ordering::SeqCst) <= 3);
    assert!(tracker.runs.load(Ordering::SeqCst) >= 6, "every key ran");
}

#[derive(Default)]
struct Flaky {
    attempts: AtomicUsize,
    policy_calls: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_with_backoff_until_success() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (done_tx, done_rx) = oneshot::channel();
    let flaky = Arc::new(Flaky {
        done: Mutex::new(Some(done_tx)),
        ..Default::default()
    });
    store
        .create(object("Pipeline", "p", json!({})))
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(
        Controller::<Parent>::new(store.clone())
            .backoff(Backoff {
                base: Duration::from_millis(1),
                max: Duration::from_millis(4),
            })
            .graceful_shutdown_on(async {
                let _ = stopped.await;
            })
            .run(
                |_obj, f: Arc<Flaky>| async move {
                    let n = f.attempts.fetch_add(1, Ordering::SeqCst) + 1;
                    if n <= 3 {
                        return Err(Error(format!("attempt {n}")));
                    }
                    if let Some(tx) = f.done.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    Ok(Action::await_change())
                },
                |obj, err: &Error, f: Arc<Flaky>| {
                    assert_eq!(obj.metadata.name, "p");
                    assert!(err.0.starts_with("attempt"));
                    f.policy_calls.fetch_add(1, Ordering::SeqCst);
                    Action::requeue(Duration::from_millis(1))
                },
                flaky.clone(),
            )
            .for_each(|_| async {}),
    );
    tokio::time::timeout(GUARD, done_rx)
        .await
        .expect("succeeds after retries")
        .unwrap();
    stop.send(()).unwrap();
    controller.await.unwrap();
    assert_eq!(flaky.attempts.load(Ordering::SeqCst), 4);
    assert_eq!(flaky.policy_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_reconciles_finish() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store
        .create(object("Pipeline", "p", json!({})))
        .await
        .unwrap();
    struct Ctx {
        started: Mutex<Option<oneshot::Sender<()>>>,
        release: tokio::sync::Semaphore,
        finished: AtomicBool,
    }
    let ctx = Arc::new(Ctx {
        started: Mutex::new(None),
        release: tokio::sync::Semaphore::new(0),
        finished: AtomicBool::new(false),
    });
    let (started_tx, started_rx) = oneshot::channel();
    *ctx.started.lock().unwrap() = Some(started_tx);
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(
        Controller::<Parent>::new(store.clone())
            .graceful_shutdown_on(async {
                let _ = stopped.await;
            })
            .run(
                |_obj, c: Arc<Ctx>| async move {
                    if let Some(tx) = c.started.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    let _permit = c.release.acquire().await.unwrap();
                    c.finished.store(true, Ordering::SeqCst);
                    Ok::<_, Error>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                ctx.clone(),
            )
            .for_each(|_| async {}),
    );
    tokio::time::timeout(GUARD, started_rx)
        .await
        .expect("reconcile starts")
        .unwrap();
    stop.send(()).unwrap();
    ctx.release.add_permits(1);
    tokio::time::timeout(GUARD, controller)
        .await
        .expect("controller stops")
        .unwrap();
    assert!(
        ctx.finished.load(Ordering::SeqCst),
        "the running reconcile was cancelled instead of finishing"
    );
}

/// A store whose first watch of `trip_kind` swallows events and then answers Gone.
#[derive(Debug)]
struct GoneOnce {
    inner: MemoryStore,
    trip_kind: &'static str,
    lists: AtomicUsize,
    trip: Mutex<Option<oneshot::Receiver<()>>>,
    watching: Mutex<Option<oneshot::Sender<()>>>,
}

#[async_trait::async_trait]
impl Store for GoneOnce {
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    async fn get(&self, key: &ObjectRef) -> Result<Option<DynamicObject>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError> {
        if query.kind == "Pipeline" {
            self.lists.fetch_add(1, Ordering::SeqCst);
        }
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
        // Taken only by a watch of the tripping kind: a concurrent watch of
        // another kind must not hold it even briefly (it once did, and the
        // tripping watch, finding it gone, never tripped).
        let trip = if kind == self.trip_kind {
            self.trip.lock().unwrap().take()
        } else {
            None
        };
        match trip {
            Some(trip) => {
                if let Some(tx) = self.watching.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                Ok(Box::pin(futures::stream::once(async move {
                    let _ = trip.await;
                    Err(StoreError::Gone {
                        requested: from,
                        compacted: from + 1,
                    })
                })))
            }
            None => self.inner.watch(kind, engine, from).await,
        }
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_triggers_a_relist_that_catches_up() {
    let (trip_tx, trip_rx) = oneshot::channel();
    let (watching_tx, watching_rx) = oneshot::channel();
    let gone_once = Arc::new(GoneOnce {
        inner: MemoryStore::new(),
        trip_kind: "Pipeline",
        lists: AtomicUsize::new(0),
        trip: Mutex::new(Some(trip_rx)),
        watching: Mutex::new(Some(watching_tx)),
    });
    let store: Arc<dyn Store> = gone_once.clone();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<String>();
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(
        Controller::<Parent>::new(store.clone())
            .graceful_shutdown_on(async {
                let _ = stopped.await;
            })
            .run(
                |obj: Arc<Parent>, seen: Arc<mpsc::UnboundedSender<String>>| async move {
                    let _ = seen.send(obj.metadata.name.clone());
                    Ok::<_, Error>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                Arc::new(seen_tx),
            )
            .for_each(|_| async {}),
    );
    tokio::time::timeout(GUARD, watching_rx)
        .await
        .expect("the controller watches")
        .unwrap();
    // This create's event is swallowed by the broken watch.
    store
        .create(object("Pipeline", "missed", json!({})))
        .await
        .unwrap();
    trip_tx.send(()).unwrap();
    let name = tokio::time::timeout(GUARD, seen_rx.recv())
        .await
        .expect("reconciled after the relist")
        .unwrap();
    assert_eq!(name, "missed");
    assert_eq!(
        gone_once.lists.load(Ordering::SeqCst),
        2,
        "relisted once after Gone"
    );
    stop.send(()).unwrap();
    controller.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_on_a_related_kind_resyncs_every_primary() {
    let (trip_tx, trip_rx) = oneshot::channel();
    let (watching_tx, watching_rx) = oneshot::channel();
    let store: Arc<dyn Store> = Arc::new(GoneOnce {
        inner: MemoryStore::new(),
        trip_kind: "PipelineExecution",
        lists: AtomicUsize::new(0),
        trip: Mutex::new(Some(trip_rx)),
        watching: Mutex::new(Some(watching_tx)),
    });
    // Each reconcile reports the store revision it started at.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<Revision>();
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(
        Controller::<Parent>::new(store.clone())
            .owns::<Child>()
            .graceful_shutdown_on(async {
                let _ = stopped.await;
            })
            .run(
                |_obj: Arc<Parent>,
                 ctx: Arc<(Arc<dyn Store>, mpsc::UnboundedSender<Revision>)>| async move {
                    let revision = ctx.0.revision().await?;
                    let _ = ctx.1.send(revision);
                    Ok::<_, Error>(Action::await_change())
                },
                |_, _, _| Action::await_change(),
                Arc::new((store.clone(), seen_tx)),
            )
            .for_each(|_| async {}),
    );
    tokio::time::timeout(GUARD, watching_rx)
        .await
        .expect("the controller watches executions")
        .unwrap();
    let p = store
        .create(object("Pipeline", "p", json!({})))
        .await
        .unwrap();
    let mut exec = object("PipelineExecution", "p-1", json!({}));
    exec.metadata.owners.push(OwnerRef {
        kind: "Pipeline".into(),
        name: "p".into(),
        uid: p.metadata.uid.clone(),
    });
    let exec = store.create(exec).await.unwrap();
    // The one trigger of `p` so far is its own creation.
    tokio::time::timeout(GUARD, seen_rx.recv())
        .await
        .expect("p reconciled")
        .unwrap();
    // This deletion's event is swallowed: only a resync can tell `p`.
    store
        .delete(&ObjectRef::of(&exec), &DeleteOptions::default())
        .await
        .unwrap();
    let deleted_at = store.revision().await.unwrap();
    trip_tx.send(()).unwrap();
    tokio::time::timeout(GUARD, async {
        while seen_rx.recv().await.unwrap() < deleted_at {}
    })
    .await
    .expect("p reconciled again after the executions watch was gone");
    stop.send(()).unwrap();
    controller.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_runs_a_key_again_without_any_change() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store
        .create(object("Pipeline", "p", json!({})))
        .await
        .unwrap();
    let revision = store.revision().await.unwrap();
    let (runs_tx, mut runs_rx) = mpsc::unbounded_channel::<usize>();
    let (stop, stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(
        Controller::<Parent>::new(store.clone())
            .graceful_shutdown_on(async {
                let _ = stopped.await;
            })
            .run(
                |_obj, ctx: Arc<(AtomicUsize, mpsc::UnboundedSender<usize>)>| async move {
                    let n = ctx.0.fetch_add(1, Ordering::SeqCst) + 1;
                    let _ = ctx.1.send(n);
                    Ok::<_, Error>(if n < 3 {
                        Action::requeue(Duration::from_millis(1))
                    } else {
                        Action::await_change()
                    })
                },
                |_, _, _| Action::await_change(),
                Arc::new((AtomicUsize::new(0), runs_tx)),
            )
            .for_each(|_| async {}),
    );
    let runs: Vec<usize> = tokio::time::timeout(GUARD, async {
        let mut runs = Vec::new();
        while runs.len() < 3 {
            runs.push(runs_rx.recv().await.unwrap());
        }
        runs
    })
    .await
    .expect("three runs");
    assert_eq!(runs, [1, 2, 3]);
    assert_eq!(
        store.revision().await.unwrap(),
        revision,
        "nothing was written"
    );
    stop.send(()).unwrap();
    controller.await.unwrap();
    // `await_change` on the third run: no fourth run was started before shutdown
    // unless something changed (nothing did).
    assert!(runs_rx.try_recv().is_err());
}

/// The next outcome of a controller's stream, within the guard.
async fn next_outcome<S>(outcomes: &mut S) -> S::Item
where
    S: futures::Stream + Unpin,
{
    tokio::time::timeout(GUARD, outcomes.next())
        .await
        .expect("an outcome in time")
        .expect("the controller is still running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_filter_and_mapper_see_typed_objects_and_run_yields_outcomes() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let filtered = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let mapped = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let policy_saw = Arc::new(Mutex::new(Vec::<u32>::new()));
    let (stop, stopped) = oneshot::channel::<()>();
    let outcomes = Controller::<Widget>::new(store.clone())
        .engine("ci")
        .concurrency(1)
        .filter({
            let filtered = filtered.clone();
            move |w: &Widget| {
                filtered
                    .lock()
                    .unwrap()
                    .push((w.metadata.name.clone(), w.spec.size));
                w.spec.size > 0
            }
        })
        .watches({
            let mapped = mapped.clone();
            move |p: &Part| {
                mapped
                    .lock()
                    .unwrap()
                    .push((p.metadata.name.clone(), p.spec.done));
                if p.spec.done {
                    vec![ObjectRef::new(
                        Widget::KIND,
                        &p.metadata.engine,
                        &p.spec.widget,
                    )]
                } else {
                    vec![]
                }
            }
        })
        .graceful_shutdown_on(async {
            let _ = stopped.await;
        })
        .run(
            |w: Arc<Widget>, _ctx: Arc<()>| async move {
                if w.spec.size == 13 {
                    return Err(Error(format!("{} is unlucky", w.metadata.name)));
                }
                Ok(Action::requeue(Duration::from_secs(3600)))
            },
            {
                let policy_saw = policy_saw.clone();
                move |w: Arc<Widget>, _err: &Error, _ctx: Arc<()>| {
                    policy_saw.lock().unwrap().push(w.spec.size);
                    Action::await_change()
                }
            },
            Arc::new(()),
        );
    let mut outcomes = Box::pin(outcomes);
    let create = |name: &str, spec: serde_json::Value| {
        let store = store.clone();
        let obj = object("Widget", name, spec);
        async move { store.create(obj).await.unwrap() }
    };
    let key = |kind: &str, name: &str| ObjectRef::new(kind, "ci", name);

    // The filter skips `small` (size 0); with one reconcile at a time and keys
    // in arrival order, `big` being first shows `small` was never queued.
    create("small", json!({ "size": 0 })).await;
    create("big", json!({ "size": 2 })).await;
    let (reconciled, action) = next_outcome(&mut outcomes).await.expect("big reconciles");
    assert_eq!(reconciled, key("Widget", "big"));
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));

    // The mapper sees typed parts; a done part triggers its (filtered) widget.
    let part = store
        .create(object(
            "Part",
            "p1",
            json!({ "widget": "small", "done": false }),
        ))
        .await
        .unwrap();
    let mut done = part.clone();
    done.spec = json!({ "widget": "small", "done": true });
    store.update(done).await.unwrap();
    let (reconciled, _) = next_outcome(&mut outcomes).await.expect("small reconciles");
    assert_eq!(reconciled, key("Widget", "small"));
    assert_eq!(
        *mapped.lock().unwrap(),
        [("p1".to_owned(), false), ("p1".to_owned(), true)]
    );
    let mut filtered = filtered.lock().unwrap().clone();
    filtered.sort();
    assert_eq!(filtered, [("big".to_owned(), 2), ("small".to_owned(), 0)]);

    // A stored widget that is not a `Widget` is reported, not handed to the
    // reconciler or the error policy.
    create("broken", json!({ "size": "large" })).await;
    match next_outcome(&mut outcomes).await {
        Err(ReconcileFailure::Store { key: k, source }) => {
            assert_eq!(k, key("Widget", "broken"));
            assert!(matches!(source, StoreError::Conversion { .. }), "{source}");
        }
        other => panic!("expected a conversion failure, got {other:?}"),
    }

    // A reconciler error is an item too; the policy gets the typed object.
    create("unlucky", json!({ "size": 13 })).await;
    match next_outcome(&mut outcomes).await {
        Err(ReconcileFailure::Reconciler { key: k, error }) => {
            assert_eq!(k, key("Widget", "unlucky"));
            assert_eq!(error.0, "unlucky is unlucky");
        }
        other => panic!("expected the reconciler's error, got {other:?}"),
    }
    assert_eq!(*policy_saw.lock().unwrap(), [13]);

    stop.send(()).unwrap();
    let end = tokio::time::timeout(GUARD, outcomes.next())
        .await
        .expect("the stream ends after shutdown");
    assert!(end.is_none(), "nothing was running: {end:?}");
}

/// The fields of a widget a view filter reads.
#[derive(serde::Deserialize)]
struct SizeView {
    spec: SizeOnly,
}

#[derive(serde::Deserialize)]
struct SizeOnly {
    size: u32,
}

/// The fields of a part a view mapper reads.
#[derive(serde::Deserialize)]
struct PartView {
    metadata: NameOnly,
    spec: PartSpec,
}

#[derive(serde::Deserialize)]
struct NameOnly {
    name: String,
    engine: String,
}

async fn view_filter_and_mapper_read_only_their_fields(store: Arc<dyn Store>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let mapped = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let outcomes = Controller::<Widget>::new(store.clone())
        .engine("ci")
        .concurrency(1)
        .filter_view(|w: &SizeView| w.spec.size > 0)
        .watches_view::<Part, _, _, _>({
            let mapped = mapped.clone();
            move |p: &PartView| {
                mapped
                    .lock()
                    .unwrap()
                    .push((p.metadata.name.clone(), p.spec.done));
                p.spec
                    .done
                    .then(|| ObjectRef::new(Widget::KIND, &p.metadata.engine, &p.spec.widget))
            }
        })
        .graceful_shutdown_on(async {
            let _ = stopped.await;
        })
        .run(
            |_: Arc<Widget>, _ctx: Arc<()>| async move {
                Ok::<_, Error>(Action::requeue(Duration::from_secs(3600)))
            },
            |_: Arc<Widget>, _err: &Error, _ctx: Arc<()>| Action::await_change(),
            Arc::new(()),
        );
    let mut outcomes = Box::pin(outcomes);
    let key = |name: &str| ObjectRef::new(Widget::KIND, "ci", name);

    // `small` is filtered out by its view: `big`, created after it, comes first.
    store
        .create(object("Widget", "small", json!({ "size": 0 })))
        .await
        .unwrap();
    store
        .create(object("Widget", "big", json!({ "size": 2 })))
        .await
        .unwrap();
    let (reconciled, _) = next_outcome(&mut outcomes).await.expect("big reconciles");
    assert_eq!(reconciled, key("big"));

    // A part's view maps it to its widget once it is done.
    let part = store
        .create(object(
            "Part",
            "p1",
            json!({ "widget": "small", "done": false }),
        ))
        .await
        .unwrap();
    let mut done = part.clone();
    done.spec = json!({ "widget": "small", "done": true });
    store.update(done).await.unwrap();
    let (reconciled, _) = next_outcome(&mut outcomes).await.expect("small reconciles");
    assert_eq!(reconciled, key("small"));
    assert_eq!(
        *mapped.lock().unwrap(),
        [("p1".to_owned(), false), ("p1".to_owned(), true)]
    );

    // A widget whose view does not decode is not filtered out: its reconcile
    // reports that it does not convert.
    store
        .create(object("Widget", "broken", json!({ "size": "large" })))
        .await
        .unwrap();
    match next_outcome(&mut outcomes).await {
        Err(ReconcileFailure::Store { key: k, source }) => {
            assert_eq!(k, key("broken"));
            assert!(matches!(source, StoreError::Conversion { .. }), "{source}");
        }
        other => panic!("expected a conversion failure, got {other:?}"),
    }
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_filter_and_mapper_on_memory() {
    view_filter_and_mapper_read_only_their_fields(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_filter_and_mapper_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    view_filter_and_mapper_read_only_their_fields(Arc::new(RedbStore::open(dir.path()).unwrap()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debounced_watch_events_wait_and_a_trigger_runs_at_once() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store
        .create(object("Pipeline", "p", json!({})))
        .await
        .unwrap();
    let (trigger_tx, trigger_rx) = mpsc::unbounded_channel::<ObjectRef>();
    // Each reconcile reports how many executions it saw.
    let (runs_tx, mut runs_rx) = mpsc::unbounded_channel::<usize>();
    let (stop, stopped) = oneshot::channel::<()>();
    let controller =
        tokio::spawn(
            Controller::<Parent>::new(store.clone())
                .engine("ci")
                .owns::<Child>()
                // Longer than any test: executions' events alone never run `p`.
                .debounce(Duration::from_secs(3600))
                .reconcile_on(futures::stream::unfold(trigger_rx, |mut rx| async move {
                    rx.recv().await.map(|k| (k, rx))
                }))
                .graceful_shutdown_on(async {
                    let _ = stopped.await;
                })
                .run(
                    |_obj: Arc<Parent>,
                     ctx: Arc<(Arc<dyn Store>, mpsc::UnboundedSender<usize>)>| async move {
                        let list = ctx
                            .0
                            .list(&ListQuery::kind("PipelineExecution").engine("ci"))
                            .await?;
                        let _ = ctx.1.send(list.items.len());
                        Ok::<_, Error>(Action::await_change())
                    },
                    |_, _, _| Action::await_change(),
                    Arc::new((store.clone(), runs_tx)),
                )
                .for_each(|_| async {}),
        );
    // The primary kind's events are not held: `p` runs for its listing.
    let first = tokio::time::timeout(GUARD, runs_rx.recv())
        .await
        .expect("p ran for its own event")
        .unwrap();
    assert_eq!(first, 0);
    let p = store.get(&ObjectRef::new("Pipeline", "ci", "p")).await;
    let uid = p.unwrap().unwrap().metadata.uid;
    for i in 0..20 {
        let mut exec = object("PipelineExecution", &format!("p-{i}"), json!({}));
        exec.metadata.owners.push(OwnerRef {
            kind: "Pipeline".into(),
            name: "p".into(),
            uid: uid.clone(),
        });
        store.create(exec).await.unwrap();
    }
    trigger_tx
        .send(ObjectRef::new("Pipeline", "ci", "p"))
        .unwrap();
    let seen = tokio::time::timeout(GUARD, runs_rx.recv())
        .await
        .expect("the trigger ran p")
        .unwrap();
    assert_eq!(
        seen, 20,
        "the trigger's run is the next one and sees every execution"
    );
    stop.send(()).unwrap();
    controller.await.unwrap();
    // The events of the 20 executions were held, not run.
    assert!(runs_rx.try_recv().is_err(), "only the trigger ran p");
}
