//! The controller runtime: level-triggered reconcile loops driven by store watches
//! (kube-rs `Controller` / controller-runtime semantics).
//!
//! A [`Controller<R>`](Controller) follows the objects of the typed resource `R`
//! (and, through mapper functions, related kinds) with
//! [watchers](mod@crate::store::watcher), turns every event into the keys of `R`
//! objects to reconcile, and runs the reconciler through a [`WorkQueue`]: keys
//! are deduplicated, a key never runs twice at once, failures back off
//! exponentially per key, and at most `concurrency` reconciles run together.
//! When a watcher lists again (after `Gone` or a store error) its objects are
//! re-queued; when a related kind's watcher lists again, every `R` object is
//! re-queued (a resync: changes missed in the gap may concern any of them).
//!
//! [`Controller::run`] returns a stream of outcomes, one per finished reconcile;
//! the loop runs while the stream is polled, so drive it even if the outcomes do
//! not matter (`.for_each(|_| async {})`).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use futures::StreamExt;
//! use arkline::controller::{Action, Controller};
//! use arkline::model::{Pipeline, PipelineExecution};
//! use arkline::store::{MemoryStore, Store};
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("reconcile failed")]
//! struct Error;
//!
//! async fn reconcile(pipeline: Arc<Pipeline>, _ctx: Arc<()>) -> Result<Action, Error> {
//!     // Look at pipeline.spec, write pipeline.status …
//!     let _ = pipeline;
//!     Ok(Action::await_change())
//! }
//!
//! fn error_policy(_pipeline: Arc<Pipeline>, _err: &Error, _ctx: Arc<()>) -> Action {
//!     Action::requeue(Duration::from_secs(5))
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! Controller::<Pipeline>::new(store)
//!     .owns::<PipelineExecution>()
//!     .filter(|p: &Pipeline| !p.spec.stages.is_empty())
//!     .concurrency(4)
//!     .graceful_shutdown_on(async {})
//!     .run(reconcile, error_policy, Arc::new(()))
//!     .for_each(|outcome| async move {
//!         if let Err(e) = outcome {
//!             eprintln!("{e}");
//!         }
//!     })
//!     .await;
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use crate::model::Resource;
use crate::store::watcher::{self, Event};
use crate::store::{EncodedObject, ListQuery, ObjectRef, Store, StoreError};

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

/// Tuning of a [`Controller`].
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Most reconciles running at once (at least 1).
    pub concurrency: usize,
    /// Per-key backoff after failures.
    pub backoff: Backoff,
    /// How the controller's watchers list again after a store error.
    pub watcher: watcher::Config,
    /// How long a key queued by an event of a related kind
    /// ([`Controller::watches`], [`Controller::watches_view`],
    /// [`Controller::owns`]) waits before it runs, so that a burst of changes
    /// is reconciled once, not once per change. A key already due sooner keeps
    /// its time; the primary kind's own events and [`Controller::reconcile_on`]
    /// triggers run at once. Zero (the default): every key runs at once.
    pub debounce: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            backoff: Backoff::default(),
            watcher: watcher::Config::default(),
            debounce: Duration::ZERO,
        }
    }
}

/// Maps a stored object of a watched kind to the keys to reconcile (typed
/// mappers and filters convert it inside).
/// Maps a watched object, as the store handed it over, to the keys it
/// queues; each mapper decodes only what it needs.
type KeyMapper = Arc<dyn Fn(EncodedObject) -> Vec<ObjectRef> + Send + Sync>;

/// The key of a watched object, from its metadata alone; `None` (logged) when
/// even that does not decode.
fn key_of(obj: &EncodedObject) -> Option<ObjectRef> {
    /// The fields of a key (the kind comes with the object).
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        metadata: KeyMeta,
    }
    #[derive(serde::Deserialize)]
    struct KeyMeta {
        name: String,
        #[serde(default)]
        engine: String,
    }
    match obj.view::<KeyOnly>() {
        Ok(KeyOnly { metadata }) => {
            Some(ObjectRef::new(obj.kind(), metadata.engine, metadata.name))
        }
        Err(e) => {
            tracing::warn!(error = %e, "controller cannot read a watched object; it triggers nothing");
            None
        }
    }
}

/// One watched kind.
struct Source {
    kind: &'static str,
    map: KeyMapper,
    /// A related kind: when its watcher lists again, every primary object is
    /// re-queued (changes missed in the gap, deletions included, may concern any).
    related: bool,
}

/// A reconcile loop for the typed resource `R` (kind `R::KIND`). Build with
/// [`Controller::new`], finish with [`Controller::run`].
pub struct Controller<R> {
    store: Arc<dyn Store>,
    engine: Option<String>,
    related: Vec<Source>,
    /// The primary kind's mapper when a filter is set.
    filter: Option<KeyMapper>,
    config: ControllerConfig,
    kind: std::marker::PhantomData<fn() -> R>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    triggers: Vec<Pin<Box<dyn Stream<Item = ObjectRef> + Send>>>,
}

impl<R: Resource> fmt::Debug for Controller<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("kind", &R::KIND)
            .field("engine", &self.engine)
            .field(
                "watches",
                &self.related.iter().map(|s| s.kind).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a reconcile produced no [`Action`]; an item of [`Controller::run`]'s stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileFailure<E> {
    /// The reconciler returned an error (the error policy decided what follows).
    #[error("reconciling {key} failed: {error}")]
    Reconciler {
        /// The object reconciled.
        key: ObjectRef,
        /// The reconciler's error.
        error: E,
    },
    /// The object could not be read, or does not convert to the controller's
    /// type (`StoreError::Conversion`: retried only when the object changes).
    #[error("cannot read {key} to reconcile it: {source}")]
    Store {
        /// The object to reconcile.
        key: ObjectRef,
        /// What the store answered.
        source: StoreError,
    },
    /// The reconciler panicked (retried with backoff).
    #[error("reconciling {key} panicked")]
    Panicked {
        /// The object reconciled.
        key: ObjectRef,
    },
}

impl<E> ReconcileFailure<E> {
    /// The object whose reconcile failed.
    pub fn key(&self) -> &ObjectRef {
        match self {
            Self::Reconciler { key, .. } | Self::Store { key, .. } | Self::Panicked { key } => key,
        }
    }
}

/// How one reconcile task ended.
enum Ran<R, E> {
    Reconciled(Arc<R>, Result<Action, E>),
    Missing,
    Unreadable(StoreError),
    StoreFailed(StoreError),
    Panicked,
}

impl<R: Resource> Controller<R> {
    /// A controller of the objects of kind `R::KIND` in `store` (every engine).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            engine: None,
            related: Vec::new(),
            filter: None,
            config: ControllerConfig::default(),
            kind: std::marker::PhantomData,
            shutdown: Box::pin(std::future::pending()),
            triggers: Vec::new(),
        }
    }

    /// Only objects of this engine (for the primary and every watched kind).
    pub fn engine(mut self, engine: impl Into<String>) -> Self {
        self.engine = Some(engine.into());
        self
    }

    /// Also reconcile when an object of kind `O::KIND` changes: `mapper` names
    /// the `R` objects concerned. An object that does not convert to `O` triggers
    /// nothing (logged).
    pub fn watches<O, F, I>(mut self, mapper: F) -> Self
    where
        O: Resource,
        F: Fn(&O) -> I + Send + Sync + 'static,
        I: IntoIterator<Item = ObjectRef>,
    {
        self.related.push(Source {
            kind: O::KIND,
            map: Arc::new(move |obj: EncodedObject| {
                let key = key_of(&obj);
                match obj.decode::<O>() {
                    Ok(obj) => mapper(&obj).into_iter().collect(),
                    Err(e) => {
                        tracing::warn!(key = ?key, error = %e, "controller cannot read a watched object; it triggers nothing");
                        Vec::new()
                    }
                }
            }),
            related: true,
        });
        self
    }

    /// As [`Controller::watches`], with the mapper given only the fields the
    /// view `V` declares ([`EncodedObject::view`]): for a kind written often
    /// whose changes mostly trigger nothing, decoding a phase instead of the
    /// whole object is most of the cost saved. An object whose view does not
    /// decode triggers nothing (logged).
    pub fn watches_view<O, V, F, I>(mut self, mapper: F) -> Self
    where
        O: Resource,
        V: serde::de::DeserializeOwned,
        F: Fn(&V) -> I + Send + Sync + 'static,
        I: IntoIterator<Item = ObjectRef>,
    {
        self.related.push(Source {
            kind: O::KIND,
            map: Arc::new(move |obj: EncodedObject| match obj.view::<V>() {
                Ok(view) => mapper(&view).into_iter().collect(),
                Err(e) => {
                    tracing::warn!(key = ?key_of(&obj), error = %e, "controller cannot read a watched object; it triggers nothing");
                    Vec::new()
                }
            }),
            related: true,
        });
        self
    }

    /// Also reconcile an owner when an object of kind `C::KIND` it owns (per
    /// `metadata.owners`) changes. Only metadata is read: the object is not
    /// converted to `C`.
    pub fn owns<C: Resource>(mut self) -> Self {
        self.related.push(Source {
            kind: C::KIND,
            map: Arc::new(|obj: EncodedObject| {
                let meta = match obj.meta() {
                    Ok((_, meta)) => meta,
                    Err(e) => {
                        tracing::warn!(error = %e, "controller cannot read a watched object; it triggers nothing");
                        return Vec::new();
                    }
                };
                meta.owners
                    .iter()
                    .filter(|o| o.kind == R::KIND)
                    .map(|o| ObjectRef::new(R::KIND, &meta.engine, &o.name))
                    .collect()
            }),
            related: true,
        });
        self
    }

    /// Also reconcile the objects named by `trigger` as they come (kube-rs
    /// `reconcile_on`): for changes outside the store, such as a timer or a biz
    /// installed in the runtime. Keys of other kinds or engines are ignored.
    pub fn reconcile_on(mut self, trigger: impl Stream<Item = ObjectRef> + Send + 'static) -> Self {
        self.triggers.push(Box::pin(trigger));
        self
    }

    /// Reconciles an object seen by the primary watcher (listed or changed) only
    /// when `keep` says so (controller-runtime's event predicates); the resync
    /// after a related kind lists again, triggers and requeues are not filtered.
    /// Use it to skip events that cannot change the outcome, e.g. status writes
    /// of work already running. An object that does not convert to `R` is not
    /// filtered: its reconcile reports the conversion error.
    pub fn filter(mut self, keep: impl Fn(&R) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(move |obj: EncodedObject| {
            let key = key_of(&obj);
            match obj.decode::<R>() {
                Ok(obj) if keep(&obj) => vec![ObjectRef::of(&obj)],
                Ok(_) => Vec::new(),
                // Reconciled anyway: the reconcile reports the conversion error.
                Err(_) => key.into_iter().collect(),
            }
        }));
        self
    }

    /// As [`Controller::filter`], with `keep` given only the fields the view `V`
    /// declares ([`EncodedObject::view`]) rather than the whole `R`: the
    /// predicate of a kind written often (an execution's status) then costs a
    /// scan of the stored JSON, not a decode of it. An object whose view does
    /// not decode is not filtered.
    pub fn filter_view<V: serde::de::DeserializeOwned>(
        mut self,
        keep: impl Fn(&V) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(Arc::new(move |obj: EncodedObject| {
            let key = key_of(&obj);
            match obj.view::<V>() {
                Ok(view) if !keep(&view) => Vec::new(),
                _ => key.into_iter().collect(),
            }
        }));
        self
    }

    /// At most `n` reconciles at once (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n.max(1);
        self
    }

    /// Holds keys queued by events of related kinds for `window` (see
    /// [`ControllerConfig::debounce`]).
    pub fn debounce(mut self, window: Duration) -> Self {
        self.config.debounce = window;
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

    /// Stops when `signal` completes: no new reconcile starts, running ones
    /// finish (their outcomes are still yielded), then the stream of
    /// [`Controller::run`] ends.
    pub fn graceful_shutdown_on(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown = Box::pin(signal);
        self
    }

    /// The reconcile loop, as a stream with one item per finished reconcile:
    /// `Ok((key, action))`, or a [`ReconcileFailure`]. The loop runs while the
    /// stream is polled — drive it even when the outcomes do not matter, e.g.
    /// `.for_each(|_| async {})` — and ends after the shutdown signal once the
    /// running reconciles have finished. Dropping the stream stops everything at
    /// once (running reconciles are cancelled). Failures are also logged.
    ///
    /// `reconcile` gets the current object, read from the store and converted
    /// to `R` when the key runs; a key whose object no longer exists is skipped
    /// (no item). On error, `error_policy` is called: `Action::await_change()`
    /// stops retrying; `Action::requeue(d)` retries after `d` or the key's
    /// backoff delay, whichever is longer. A stored object that does not convert
    /// to `R` never reaches either: it is logged, yielded as
    /// [`ReconcileFailure::Store`] with [`StoreError::Conversion`], and retried
    /// only when it changes (its stored form cannot change otherwise).
    pub fn run<Ctx, E, F, Fut, P>(
        self,
        reconcile: F,
        error_policy: P,
        ctx: Arc<Ctx>,
    ) -> impl Stream<Item = Result<(ObjectRef, Action), ReconcileFailure<E>>> + Send
    where
        Ctx: Send + Sync + 'static,
        E: fmt::Display + Send + 'static,
        F: Fn(Arc<R>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        P: Fn(Arc<R>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
    {
        let Self {
            store,
            engine,
            related,
            filter,
            config,
            shutdown,
            triggers,
            kind: _,
        } = self;
        let primary: KeyMapper = filter
            .unwrap_or_else(|| Arc::new(|obj: EncodedObject| key_of(&obj).into_iter().collect()));
        let mut sources = vec![Source {
            kind: R::KIND,
            map: primary,
            related: false,
        }];
        sources.extend(related);
        let queue = WorkQueue::new(config.backoff);
        let runner = Runner {
            store,
            engine,
            config,
            sources,
            triggers,
            shutdown,
            stopping: false,
            reconcile: Arc::new(reconcile),
            error_policy,
            ctx,
            keys: None,
            feeds: JoinSet::new(),
            queue,
            running: JoinSet::new(),
        };
        futures::stream::unfold(runner, |mut runner| async move {
            let item = runner.next().await?;
            Some((item, runner))
        })
    }
}

/// What woke the reconcile loop.
enum Wake<R, E> {
    Shutdown,
    Finished(Result<(ObjectRef, Ran<R, E>), tokio::task::JoinError>),
    Key((ObjectRef, bool)),
    Due,
}

/// The state of a running controller (the stream of [`Controller::run`]).
struct Runner<R, Ctx, E, F, P> {
    store: Arc<dyn Store>,
    engine: Option<String>,
    config: ControllerConfig,
    /// Watched kinds, until the feeds are started.
    sources: Vec<Source>,
    triggers: Vec<Pin<Box<dyn Stream<Item = ObjectRef> + Send>>>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
    stopping: bool,
    reconcile: Arc<F>,
    error_policy: P,
    ctx: Arc<Ctx>,
    /// Keys from the feeds, each with whether an event of a related kind
    /// queued it (debounced) or the primary kind or a trigger did (at once);
    /// `None` until the first poll starts them.
    keys: Option<mpsc::Receiver<(ObjectRef, bool)>>,
    feeds: JoinSet<()>,
    queue: WorkQueue<ObjectRef>,
    running: JoinSet<(ObjectRef, Ran<R, E>)>,
}

impl<R, Ctx, E, F, Fut, P> Runner<R, Ctx, E, F, P>
where
    R: Resource,
    Ctx: Send + Sync + 'static,
    E: fmt::Display + Send + 'static,
    F: Fn(Arc<R>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    P: Fn(Arc<R>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
{
    /// The next outcome; `None` once stopped.
    async fn next(&mut self) -> Option<Result<(ObjectRef, Action), ReconcileFailure<E>>> {
        if self.keys.is_none() {
            self.start();
        }
        loop {
            if self.stopping {
                match self.running.join_next().await {
                    Some(Ok((key, ran))) => match self.finish(key, ran) {
                        Some(item) => return Some(item),
                        None => continue,
                    },
                    Some(Err(_)) => continue,
                    None => {
                        while self.feeds.join_next().await.is_some() {}
                        return None;
                    }
                }
            }
            self.spawn_ready();
            let next_due = self.queue.next_due();
            let keys = self.keys.as_mut()?;
            let wake = tokio::select! {
                biased;
                () = &mut self.shutdown => Wake::Shutdown,
                Some(joined) = self.running.join_next() => Wake::Finished(joined),
                Some(key) = keys.recv() => Wake::Key(key),
                () = sleep_until(next_due), if next_due.is_some() => Wake::Due,
            };
            match wake {
                Wake::Shutdown => {
                    tracing::info!(
                        kind = R::KIND,
                        running = self.running.len(),
                        "controller shutting down; waiting for running reconciles"
                    );
                    self.stopping = true;
                    self.feeds.abort_all();
                }
                Wake::Finished(Ok((key, ran))) => {
                    if let Some(item) = self.finish(key, ran) {
                        return Some(item);
                    }
                }
                // Reconcile tasks catch panics; a join error is a cancelled task.
                Wake::Finished(Err(_)) => {}
                Wake::Key((key, watched)) => {
                    let now = Instant::now();
                    let at = if watched {
                        now + self.config.debounce
                    } else {
                        now
                    };
                    self.queue.schedule(key, at);
                }
                Wake::Due => {}
            }
        }
    }

    /// Starts a watcher feed per watched kind and one task per trigger.
    fn start(&mut self) {
        let (keys_tx, keys_rx) = mpsc::channel::<(ObjectRef, bool)>(1024);
        for source in std::mem::take(&mut self.sources) {
            self.feeds.spawn(feed(
                self.store.clone(),
                source,
                R::KIND,
                self.engine.clone(),
                self.config.watcher.clone(),
                keys_tx.clone(),
            ));
        }
        for mut trigger in std::mem::take(&mut self.triggers) {
            let (keys_tx, engine) = (keys_tx.clone(), self.engine.clone());
            self.feeds.spawn(async move {
                while let Some(key) = trigger.next().await {
                    let wanted =
                        key.kind == R::KIND && engine.as_ref().is_none_or(|e| *e == key.engine);
                    if wanted && keys_tx.send((key, false)).await.is_err() {
                        return;
                    }
                }
            });
        }
        self.keys = Some(keys_rx);
    }

    /// Starts the due keys while there is room.
    fn spawn_ready(&mut self) {
        let now = Instant::now();
        while self.running.len() < self.config.concurrency {
            let Some(key) = self.queue.pop_ready(now) else {
                break;
            };
            let span = tracing::info_span!(
                "reconcile",
                kind = %key.kind,
                engine = %key.engine,
                name = %key.name,
            );
            let (store, reconcile, ctx) =
                (self.store.clone(), self.reconcile.clone(), self.ctx.clone());
            self.running.spawn(
                async move {
                    let ran = AssertUnwindSafe(async {
                        match store.get_encoded(&key).await {
                            Ok(Some(obj)) => match obj.decode::<R>() {
                                Ok(obj) => {
                                    let obj = Arc::new(obj);
                                    let result = reconcile(obj.clone(), ctx).await;
                                    Ran::Reconciled(obj, result)
                                }
                                Err(e) => Ran::Unreadable(e),
                            },
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
    }

    /// Records the end of a reconcile in the queue; the item to yield, if any.
    fn finish(
        &mut self,
        key: ObjectRef,
        ran: Ran<R, E>,
    ) -> Option<Result<(ObjectRef, Action), ReconcileFailure<E>>> {
        let (outcome, item) = match ran {
            Ran::Reconciled(_, Ok(action)) => (
                RunOutcome::Succeeded {
                    requeue_after: action.requeue_after(),
                },
                Some(Ok((key.clone(), action))),
            ),
            Ran::Reconciled(obj, Err(error)) => {
                tracing::warn!(%key, %error, "reconcile failed");
                let action = (self.error_policy)(obj, &error, self.ctx.clone());
                (
                    RunOutcome::Failed {
                        retry: action.requeue_after().is_some(),
                        requeue_after: action.requeue_after(),
                    },
                    Some(Err(ReconcileFailure::Reconciler {
                        key: key.clone(),
                        error,
                    })),
                )
            }
            Ran::Missing => (
                RunOutcome::Succeeded {
                    requeue_after: None,
                },
                None,
            ),
            Ran::Unreadable(source) => {
                tracing::warn!(%key, error = %source, "cannot convert the object to reconcile; retrying when it changes");
                (
                    RunOutcome::Failed {
                        retry: false,
                        requeue_after: None,
                    },
                    Some(Err(ReconcileFailure::Store {
                        key: key.clone(),
                        source,
                    })),
                )
            }
            Ran::StoreFailed(source) => {
                tracing::warn!(%key, error = %source, "cannot read the object to reconcile");
                (
                    RunOutcome::Failed {
                        retry: true,
                        requeue_after: None,
                    },
                    Some(Err(ReconcileFailure::Store {
                        key: key.clone(),
                        source,
                    })),
                )
            }
            Ran::Panicked => {
                tracing::error!(%key, "reconcile panicked");
                (
                    RunOutcome::Failed {
                        retry: true,
                        requeue_after: None,
                    },
                    Some(Err(ReconcileFailure::Panicked { key: key.clone() })),
                )
            }
        };
        self.queue.finish(&key, outcome, Instant::now());
        item
    }
}

/// Follows one watched kind with a [watcher](watcher::watcher) and sends the
/// keys its objects map to. When a related kind's watcher lists again (after
/// the first list), every object of the primary kind is re-queued.
async fn feed(
    store: Arc<dyn Store>,
    source: Source,
    primary: &'static str,
    engine: Option<String>,
    config: watcher::Config,
    keys: mpsc::Sender<(ObjectRef, bool)>,
) {
    // Objects as the store hands them over: each mapper decodes what it needs.
    let events = watcher::encoded_watcher(
        store.clone(),
        source.kind,
        engine.as_deref(),
        config.clone(),
    );
    let mut events = std::pin::pin!(events);
    let mut synced = false;
    while let Some(item) = events.next().await {
        let found = match item {
            Ok(Event::Init) => {
                if synced
                    && source.related
                    && !resync(&*store, primary, engine.as_deref(), &config, &keys).await
                {
                    return;
                }
                continue;
            }
            Ok(Event::InitDone { .. }) => {
                synced = true;
                continue;
            }
            Ok(Event::InitApply(obj) | Event::Apply(obj) | Event::Delete(obj)) => (source.map)(obj),
            Err(e) => {
                tracing::warn!(kind = source.kind, error = %e, "controller watch failed; relisting");
                continue;
            }
        };
        for key in found {
            if keys.send((key, source.related)).await.is_err() {
                return;
            }
        }
    }
}

/// Sends the key of every object of `kind`, listing until it succeeds; `false`
/// when the controller is gone.
async fn resync(
    store: &dyn Store,
    kind: &str,
    engine: Option<&str>,
    config: &watcher::Config,
    keys: &mpsc::Sender<(ObjectRef, bool)>,
) -> bool {
    let mut query = ListQuery::kind(kind);
    query.engine = engine.map(str::to_owned);
    let mut failures = 0u32;
    loop {
        match store.list(&query).await {
            Ok(list) => {
                for obj in &list.items {
                    if keys.send((ObjectRef::of(obj), true)).await.is_err() {
                        return false;
                    }
                }
                return true;
            }
            Err(e) => {
                tracing::warn!(kind, error = %e, "controller cannot list for a resync; retrying");
                failures = failures.saturating_add(1);
                tokio::time::sleep(config.delay(failures)).await;
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
