//! The controller runtime: level-triggered reconcile loops driven by store watches
//! (kube-rs `Controller` / controller-runtime semantics).
//!
//! A [`Controller`] watches a primary kind (and, through mapper functions, related
//! kinds), turns every event into the keys of primary objects to reconcile, and
//! runs the reconciler through a [`WorkQueue`]: keys are deduplicated, a key never
//! runs twice at once, failures back off exponentially per key, and at most
//! `concurrency` reconciles run together. After a watch answers `Gone` the kind is
//! listed again and every object re-queued (a resync).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use arkline::controller::{Action, Controller};
//! use arkline::model::DynamicObject;
//! use arkline::store::{MemoryStore, Store};
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("reconcile failed")]
//! struct Error;
//!
//! async fn reconcile(obj: Arc<DynamicObject>, _ctx: Arc<()>) -> Result<Action, Error> {
//!     // Look at obj.spec, write obj.status …
//!     let _ = obj;
//!     Ok(Action::await_change())
//! }
//!
//! fn error_policy(_obj: Arc<DynamicObject>, _err: &Error, _ctx: Arc<()>) -> Action {
//!     Action::requeue(Duration::from_secs(5))
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! Controller::new(store, "Pipeline")
//!     .owns("PipelineExecution")
//!     .concurrency(4)
//!     .graceful_shutdown_on(async {})
//!     .run(reconcile, error_policy, Arc::new(()))
//!     .await;
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::model::{DynamicObject, Resource};
use crate::store::{ListQuery, ObjectRef, Store, StoreError};

mod queue;

pub use queue::{Backoff, RunOutcome, WorkQueue};

/// What to do after a reconcile.
#[must_use = "an Action says when to reconcile again; return it from the reconciler"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Reconcile again after `delay` (sooner if something changes).
    pub fn requeue(delay: Duration) -> Self {
        Self {
            requeue_after: Some(delay),
        }
    }

    /// Reconcile again only when a watched object changes.
    pub fn await_change() -> Self {
        Self {
            requeue_after: None,
        }
    }

    /// The requeue delay, if any.
    pub fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// Maps an object of a watched kind to the primary objects to reconcile.
pub type Mapper = Arc<dyn Fn(&DynamicObject) -> Vec<ObjectRef> + Send + Sync>;

/// Tuning of a [`Controller`].
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Most reconciles running at once (at least 1).
    pub concurrency: usize,
    /// Per-key backoff after failures.
    pub backoff: Backoff,
    /// Backoff between attempts to list/watch again after a store error.
    pub watch_backoff: Backoff,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            backoff: Backoff::default(),
            watch_backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(30),
            },
        }
    }
}

struct Source {
    kind: String,
    mapper: Mapper,
    /// For a related kind: the primary kind, fully re-queued after this kind's
    /// watch answered `Gone` (changes missed in the gap, deletions included, may
    /// concern any primary).
    primary: Option<String>,
}

/// A reconcile loop for one kind. Build with [`Controller::new`], finish with
/// [`Controller::run`].
pub struct Controller {
    store: Arc<dyn Store>,
    kind: String,
    engine: Option<String>,
    sources: Vec<Source>,
    config: ControllerConfig,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    triggers: Vec<Pin<Box<dyn futures::Stream<Item = ObjectRef> + Send>>>,
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("kind", &self.kind)
            .field("engine", &self.engine)
            .field(
                "watches",
                &self.sources.iter().map(|s| &s.kind).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How one reconcile task ended.
enum Ran<E> {
    Reconciled(Arc<DynamicObject>, Result<Action, E>),
    Missing,
    StoreFailed(StoreError),
    Panicked,
}

impl Controller {
    /// A controller of the objects of `kind` in `store` (every engine).
    pub fn new(store: Arc<dyn Store>, kind: impl Into<String>) -> Self {
        let kind = kind.into();
        let primary = Source {
            kind: kind.clone(),
            mapper: Arc::new(|obj: &DynamicObject| vec![ObjectRef::of(obj)]),
            primary: None,
        };
        Self {
            store,
            kind,
            engine: None,
            sources: vec![primary],
            config: ControllerConfig::default(),
            shutdown: Box::pin(std::future::pending()),
            triggers: Vec::new(),
        }
    }

    /// A controller of the objects of the typed resource `R` (kind `R::KIND`);
    /// finish with [`Controller::run_typed`].
    pub fn for_resource<R: Resource>(store: Arc<dyn Store>) -> Self {
        Self::new(store, R::KIND)
    }

    /// Only objects of this engine (for the primary and every watched kind).
    pub fn engine(mut self, engine: impl Into<String>) -> Self {
        self.engine = Some(engine.into());
        self
    }

    /// Also reconcile when an object of `kind` changes: `mapper` names the primary
    /// objects concerned.
    pub fn watches<F, I>(mut self, kind: impl Into<String>, mapper: F) -> Self
    where
        F: Fn(&DynamicObject) -> I + Send + Sync + 'static,
        I: IntoIterator<Item = ObjectRef>,
    {
        let primary = Some(self.kind.clone());
        self.sources.push(Source {
            kind: kind.into(),
            mapper: Arc::new(move |obj| mapper(obj).into_iter().collect()),
            primary,
        });
        self
    }

    /// Also reconcile an owner when an object of `kind` it owns (per
    /// `metadata.owners`) changes.
    pub fn owns(self, kind: impl Into<String>) -> Self {
        let owner_kind = self.kind.clone();
        self.watches(kind, move |obj: &DynamicObject| {
            obj.metadata
                .owners
                .iter()
                .filter(|o| o.kind == owner_kind)
                .map(|o| ObjectRef::new(&owner_kind, &obj.metadata.engine, &o.name))
                .collect::<Vec<_>>()
        })
    }

    /// Also reconcile the objects named by `trigger` as they come (kube-rs
    /// `reconcile_on`): for changes outside the store, such as a timer or a biz
    /// installed in the runtime. Keys of other kinds are ignored.
    pub fn reconcile_on(
        mut self,
        trigger: impl futures::Stream<Item = ObjectRef> + Send + 'static,
    ) -> Self {
        self.triggers.push(Box::pin(trigger));
        self
    }

    /// Reconciles an object of the primary kind seen by its list or watch only
    /// when `keep` says so (controller-runtime's event predicates); the full
    /// resync after a `Gone` is not filtered. Use it to skip events that cannot
    /// change the outcome, e.g. status writes of work already running.
    pub fn filter(mut self, keep: impl Fn(&DynamicObject) -> bool + Send + Sync + 'static) -> Self {
        if let Some(primary) = self.sources.first_mut() {
            primary.mapper = Arc::new(move |obj: &DynamicObject| {
                if keep(obj) {
                    vec![ObjectRef::of(obj)]
                } else {
                    vec![]
                }
            });
        }
        self
    }

    /// At most `n` reconciles at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n.max(1);
        self
    }

    /// Per-key backoff after failed reconciles.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: ControllerConfig) -> Self {
        self.config = config;
        self.config.concurrency = self.config.concurrency.max(1);
        self
    }

    /// Stops when `signal` completes: no new reconcile starts, running ones finish,
    /// then [`Controller::run`] returns.
    pub fn graceful_shutdown_on(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown = Box::pin(signal);
        self
    }

    /// Runs the loop until the shutdown signal.
    ///
    /// `reconcile` gets the current object (read from the store when the key
    /// runs; keys whose object no longer exists are skipped). On error,
    /// `error_policy` is called: `Action::await_change()` stops retrying;
    /// `Action::requeue(d)` retries after `d` or the key's backoff delay, whichever
    /// is longer.
    pub async fn run<Ctx, E, R, RFut, P>(self, reconcile: R, error_policy: P, ctx: Arc<Ctx>)
    where
        Ctx: Send + Sync + 'static,
        E: fmt::Display + Send + 'static,
        R: Fn(Arc<DynamicObject>, Arc<Ctx>) -> RFut + Send + Sync + 'static,
        RFut: Future<Output = Result<Action, E>> + Send + 'static,
        P: Fn(Arc<DynamicObject>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
    {
        let Self {
            store,
            kind,
            engine,
            sources,
            config,
            mut shutdown,
            triggers,
        } = self;
        let reconcile = Arc::new(reconcile);
        let (keys_tx, mut keys_rx) = mpsc::channel::<ObjectRef>(1024);
        let mut feeds = JoinSet::new();
        for source in sources {
            feeds.spawn(feed(
                store.clone(),
                source,
                engine.clone(),
                config.watch_backoff,
                keys_tx.clone(),
            ));
        }
        for mut trigger in triggers {
            let (keys_tx, kind, engine) = (keys_tx.clone(), kind.clone(), engine.clone());
            feeds.spawn(async move {
                while let Some(key) = trigger.next().await {
                    let wanted =
                        key.kind == kind && engine.as_ref().is_none_or(|e| *e == key.engine);
                    if wanted && keys_tx.send(key).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(keys_tx);

        let mut queue: WorkQueue<ObjectRef> = WorkQueue::new(config.backoff);
        let mut running: JoinSet<(ObjectRef, Ran<E>)> = JoinSet::new();
        let controller_kind = kind.clone();
        loop {
            let now = Instant::now();
            while running.len() < config.concurrency {
                let Some(key) = queue.pop_ready(now) else {
                    break;
                };
                let span = tracing::info_span!(
                    "reconcile",
                    kind = %key.kind,
                    engine = %key.engine,
                    name = %key.name,
                );
                let (store, reconcile, ctx) = (store.clone(), reconcile.clone(), ctx.clone());
                running.spawn(
                    async move {
                        let ran = AssertUnwindSafe(async {
                            match store.get(&key).await {
                                Ok(Some(obj)) => {
                                    let obj = Arc::new(obj);
                                    let result = reconcile(obj.clone(), ctx).await;
                                    Ran::Reconciled(obj, result)
                                }
                                Ok(None) => Ran::Missing,
                                Err(e) => Ran::StoreFailed(e),
                            }
                        })
                        .catch_unwind()
                        .await
                        .unwrap_or(Ran::Panicked);
                        (key, ran)
                    }
                    .instrument(span),
                );
            }
            let next_due = queue.next_due();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(joined) = running.join_next() => {
                    if let Ok((key, ran)) = joined {
                        let outcome = outcome_of(&key, ran, &error_policy, &ctx);
                        queue.finish(&key, outcome, Instant::now());
                    }
                }
                Some(key) = keys_rx.recv() => {
                    queue.schedule(key, Instant::now());
                }
                () = sleep_until(next_due), if next_due.is_some() => {}
            }
        }
        tracing::info!(kind = %controller_kind, running = running.len(), "controller shutting down; waiting for running reconciles");
        feeds.abort_all();
        while let Some(joined) = running.join_next().await {
            if let Ok((key, ran)) = joined {
                let outcome = outcome_of(&key, ran, &error_policy, &ctx);
                queue.finish(&key, outcome, Instant::now());
            }
        }
        while feeds.join_next().await.is_some() {}
    }
}

impl Controller {
    /// [`Controller::run`] with a typed reconciler: each object is converted to `R`
    /// first. A conversion failure is a reconcile error (`E::from` a
    /// [`StoreError::Conversion`]); the error policy sees the untyped object,
    /// since the typed one may not exist.
    pub async fn run_typed<R, Ctx, E, F, Fut, P>(self, reconcile: F, error_policy: P, ctx: Arc<Ctx>)
    where
        R: Resource,
        Ctx: Send + Sync + 'static,
        E: From<StoreError> + fmt::Display + Send + 'static,
        F: Fn(Arc<R>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        P: Fn(Arc<DynamicObject>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
    {
        let reconcile = Arc::new(reconcile);
        self.run(
            move |obj: Arc<DynamicObject>, ctx: Arc<Ctx>| {
                let reconcile = reconcile.clone();
                async move {
                    let name = obj.metadata.name.clone();
                    let typed = R::from_dynamic((*obj).clone()).map_err(|source| {
                        E::from(StoreError::Conversion {
                            kind: R::KIND.to_string(),
                            name,
                            source,
                        })
                    })?;
                    reconcile(Arc::new(typed), ctx).await
                }
            },
            error_policy,
            ctx,
        )
        .await
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn outcome_of<Ctx, E: fmt::Display>(
    key: &ObjectRef,
    ran: Ran<E>,
    error_policy: &impl Fn(Arc<DynamicObject>, &E, Arc<Ctx>) -> Action,
    ctx: &Arc<Ctx>,
) -> RunOutcome {
    match ran {
        Ran::Reconciled(_, Ok(action)) => RunOutcome::Succeeded {
            requeue_after: action.requeue_after(),
        },
        Ran::Reconciled(obj, Err(e)) => {
            tracing::warn!(%key, error = %e, "reconcile failed");
            let action = error_policy(obj, &e, ctx.clone());
            RunOutcome::Failed {
                retry: action.requeue_after().is_some(),
                requeue_after: action.requeue_after(),
            }
        }
        Ran::Missing => RunOutcome::Succeeded {
            requeue_after: None,
        },
        Ran::StoreFailed(e) => {
            tracing::warn!(%key, error = %e, "cannot read the object to reconcile");
            RunOutcome::Failed {
                retry: true,
                requeue_after: None,
            }
        }
        Ran::Panicked => {
            tracing::error!(%key, "reconcile panicked");
            RunOutcome::Failed {
                retry: true,
                requeue_after: None,
            }
        }
    }
}

/// Lists and watches one kind forever, sending the keys its objects map to.
/// Relists after `Gone` (and after store errors, with backoff); for a related
/// kind, a `Gone` also re-queues every primary object.
async fn feed(
    store: Arc<dyn Store>,
    source: Source,
    engine: Option<String>,
    backoff: Backoff,
    keys: mpsc::Sender<ObjectRef>,
) {
    let mut failures = 0u32;
    let mut resync_primary = false;
    let mut query = ListQuery::kind(&source.kind);
    query.engine = engine.clone();
    loop {
        if failures > 0 {
            tokio::time::sleep(backoff.delay(failures)).await;
        }
        if let (true, Some(primary)) = (resync_primary, &source.primary) {
            let mut all = ListQuery::kind(primary);
            all.engine = engine.clone();
            match store.list(&all).await {
                Ok(list) => {
                    for obj in &list.items {
                        if keys.send(ObjectRef::of(obj)).await.is_err() {
                            return;
                        }
                    }
                    resync_primary = false;
                }
                Err(e) => {
                    tracing::warn!(kind = %primary, error = %e, "controller cannot list for a resync; retrying");
                    failures = failures.saturating_add(1);
                    continue;
                }
            }
        }
        let list = match store.list(&query).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(kind = %source.kind, error = %e, "controller cannot list; retrying");
                failures = failures.saturating_add(1);
                continue;
            }
        };
        for obj in &list.items {
            for key in (source.mapper)(obj) {
                if keys.send(key).await.is_err() {
                    return;
                }
            }
        }
        let mut events = match store
            .watch(&source.kind, engine.as_deref(), list.revision)
            .await
        {
            Ok(stream) => stream,
            Err(e) => {
                if e.is_gone() {
                    resync_primary = true;
                } else {
                    tracing::warn!(kind = %source.kind, error = %e, "controller cannot watch; retrying");
                    failures = failures.saturating_add(1);
                }
                continue;
            }
        };
        failures = 0;
        loop {
            match events.next().await {
                Some(Ok(event)) => {
                    for key in (source.mapper)(&event.object) {
                        if keys.send(key).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Err(e)) if e.is_gone() => {
                    tracing::info!(kind = %source.kind, error = %e, "watch fell behind compaction; relisting");
                    resync_primary = true;
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(kind = %source.kind, error = %e, "watch failed; relisting");
                    failures = failures.saturating_add(1);
                    break;
                }
                // The store was closed: nothing more will come.
                None => return,
            }
        }
    }
}
