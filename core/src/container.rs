//! The container: the process-wide part (one isolation runtime, one store, the
//! node's identity and secret key) and the engines merged into it.
//!
//! ```no_run
//! use arkline::{Container, TriggerRequest};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let container = Container::builder().data_dir("/var/lib/arkline").build()?;
//! let engine = container.engine("team-a").await?;
//! engine
//!     .install(arkline::Ark::open("shell-0.1.0.ark")?, &arkline::host::parse_grant("process=sh")?)
//!     .await?;
//! engine
//!     .apply_pipeline_yaml(
//!         "hello.yaml",
//!         "name: hello\nstages:\n  - name: greet\n    steps:\n      - name: say\n        uses: shell\n        with: { script: echo hi }\n",
//!     )
//!     .await?;
//! let exec = engine.trigger("hello", TriggerRequest::manual()).await?;
//! let done = engine.wait(&exec.metadata.name).await?;
//! println!("{:?}", done.status.phase);
//! for line in engine.logs(&exec.metadata.name, "say").await? {
//!     println!("{}", line.message);
//! }
//! container.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! This one runs as it is (on a memory store, with no biz installed, so the
//! execution fails at resolution and says why):
//!
//! ```
//! use std::sync::Arc;
//! use arkline::model::ExecutionPhase;
//! use arkline::{Container, MemoryStore, TriggerRequest};
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let container = Container::builder().store(Arc::new(MemoryStore::new())).build()?;
//! let engine = container.engine("team-a").await?;
//! engine.set_secret("deploy-token", "s3cr3t").await?;
//! engine
//!     .apply_pipeline_yaml(
//!         "deploy.yaml",
//!         "name: deploy\nsecrets: [deploy-token]\nstages:\n  - name: go\n    steps:\n      - name: push\n        uses: shell\n        with: { script: \"deploy --token ${{ secrets.deploy-token }}\" }\n",
//!     )
//!     .await?;
//! let exec = engine.trigger("deploy", TriggerRequest::manual().branch("main")).await?;
//! assert_eq!(exec.metadata.name, "deploy-1");
//! let done = engine.wait(&exec.metadata.name).await?;
//! assert_eq!(done.status.phase, ExecutionPhase::Failed);
//! assert!(done.status.reason.contains("biz `shell` is not installed"));
//! container.shutdown().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub mod archive;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{Engine, EngineError};
use crate::host::cache::BlobCache;
use crate::metrics::Metrics;
use crate::model::{EngineRecord, EngineRecordSpec};
use crate::pipeline::EngineCore;
use crate::pipeline::logs::LogStore;
use crate::pipeline::schedule::Timers;
use crate::pipeline::secrets::Secrets;
use crate::pipeline::workspace::Workspaces;
pub use crate::pipeline::{Clock, ExecOptions, LogArchive, ManualClock, SecretKey, SystemClock};
use crate::runtime::{
    BizRegistry, CancelToken, ComponentError, Runtime, RuntimeConfig, RuntimeError,
};
use crate::store::{Cluster, RedbStore, SoloCluster, Store, StoreError};

/// Why a container could not be built or an engine added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    /// The store did not open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The isolation runtime did not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The data dir is unusable.
    #[error("data dir {path}: {message}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The secret key is unusable.
    #[error(transparent)]
    Secret(#[from] crate::pipeline::secrets::SecretError),
    /// A bad engine name.
    #[error(
        "`{0}` is not a valid engine name: use 1 to 63 lowercase letters, digits and `-`, starting with a letter"
    )]
    EngineName(String),
    /// A biz of a container archive does not compile: nothing was changed.
    #[error("cannot deploy the container archive: {biz} does not compile: {source}")]
    Compile {
        /// `name@version`.
        biz: String,
        /// Why.
        source: ComponentError,
    },
    /// The archive names a biz for an engine that it does not carry.
    #[error(
        "cannot deploy the container archive: engine `{engine}` needs {biz}, which is not in the archive"
    )]
    MissingBiz {
        /// The engine.
        engine: String,
        /// `name@version`.
        biz: String,
    },
    /// Applying an engine's settings, bizes or pipelines failed; the engines
    /// before it in the archive are deployed.
    #[error("cannot deploy the container archive: {source}")]
    Engine {
        /// The engine.
        engine: String,
        /// What failed.
        source: Box<EngineError>,
    },
    /// The builder requires the `process` sandbox but was given a shared
    /// runtime that does not.
    #[error(
        "the container requires the process sandbox, but the shared runtime it was given does not: set `RuntimeConfig::process_limits.require_sandbox` on that runtime, or let the builder create the runtime"
    )]
    SandboxNotRequired,
    /// [`Container::join_cluster`] refused the cluster: an engine already
    /// runs (it would go on without the cluster's leadership and
    /// membership), or the cluster is another node's.
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
    /// The remote archive store's URL is unusable.
    #[error("the archive store {0}")]
    ArchiveStore(String),
    /// Neither a data dir nor a store was given.
    #[error(
        "a container needs a data dir (`Container::builder().data_dir(..)`) or a store (`.store(..)`)"
    )]
    NoStore,
}

/// Builds a [`Container`].
pub struct ContainerBuilder {
    data_dir: Option<PathBuf>,
    store: Option<Arc<dyn Store>>,
    runtime: Option<Runtime>,
    runtime_config: Option<RuntimeConfig>,
    secret_key: Option<SecretKey>,
    clock: Arc<dyn Clock>,
    node: Option<String>,
    options: ExecOptions,
    blob_cache_cap: u64,
    require_process_sandbox: bool,
    shared_dir: Option<PathBuf>,
    log_archive: Option<LogArchive>,
    archive_store: Option<String>,
}

impl std::fmt::Debug for ContainerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerBuilder")
            .field("data_dir", &self.data_dir)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl ContainerBuilder {
    /// Keeps everything under `dir`: the redb store (`store.redb`), the node id,
    /// the secret key (`secret.key`, 0600), compiled components, logs,
    /// workspaces and step caches.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Uses this store instead of the data dir's redb file. Without a data dir,
    /// logs are kept in memory and workspaces in a temporary directory.
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Runtime settings (pooling, default limits); the compiled cache goes in the
    /// data dir unless set.
    pub fn runtime_config(mut self, config: RuntimeConfig) -> Self {
        self.runtime_config = Some(config);
        self
    }

    /// Refuses every `process` run whose sandbox (namespaces, per-run cgroup)
    /// cannot be built, instead of falling back to weaker confinement: sets
    /// `ProcessLimits::require_sandbox` on the runtime this builder creates (a
    /// shared runtime given to [`ContainerBuilder::runtime`] must require it
    /// already, or `build` fails). `false` leaves the runtime config as it is.
    pub fn require_process_sandbox(mut self, require: bool) -> Self {
        self.require_process_sandbox = require;
        self
    }

    /// Shares an existing runtime.
    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The key secrets are encrypted with (instead of the data dir's key file).
    pub fn secret_key(mut self, key: SecretKey) -> Self {
        self.secret_key = Some(key);
        self
    }

    /// The clock schedules and timestamps use (tests pass a
    /// [`ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The node's name (default: kept in the data dir, generated on first start).
    pub fn node_name(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// A directory every node of the cluster shares (a network file
    /// system): the uploaded archives (`arks/`, by digest, so any node
    /// installs a biz another node was given) and the secret key
    /// (`secret.key`, unless [`ContainerBuilder::secret_key`] gives one, so
    /// any node reads the secrets another node wrote) go there instead of
    /// the data dir. Finished step logs are shipped to its `logs/` unless
    /// [`ContainerBuilder::log_archive`] names another archive.
    pub fn shared_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.shared_dir = Some(dir.into());
        self
    }

    /// Keeps uploaded archives in the object store at `url` as well
    /// (`s3://bucket/prefix` with the `s3` feature, or `file:///dir`;
    /// credentials from the `AWS_*` environment variables): a node that
    /// lacks one, because another node was given it, fetches it from there.
    pub fn archive_store(mut self, url: impl Into<String>) -> Self {
        self.archive_store = Some(url.into());
        self
    }

    /// Ships every finished step log to `archive` (an object store every
    /// node reads, such as S3), where any node's API reads the logs of steps
    /// another node ran, after that node is gone too.
    pub fn log_archive(mut self, archive: LogArchive) -> Self {
        self.log_archive = Some(archive);
        self
    }

    /// Execution knobs.
    pub fn exec_options(mut self, options: ExecOptions) -> Self {
        self.options = options;
        self
    }

    /// Size cap of each engine's blob cache (the `cache` capability and step caches).
    pub fn blob_cache_cap(mut self, bytes: u64) -> Self {
        self.blob_cache_cap = bytes;
        self
    }

    /// Opens the store and starts the runtime. Must be called inside a tokio
    /// runtime (engines spawn their controllers on it).
    ///
    /// # Errors
    ///
    /// [`ContainerError::NoStore`] without a data dir or store; [`ContainerError::DataDir`]
    /// when the data dir is unusable; [`ContainerError::Store`] when the store does not
    /// open (a newer schema, a corrupt file); [`ContainerError::Runtime`] when the
    /// isolation runtime does not start; [`ContainerError::Secret`] when the node key is
    /// unusable.
    pub fn build(self) -> Result<Container, ContainerError> {
        let (data_dir, temp) = match &self.data_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| ContainerError::DataDir {
                    path: d.clone(),
                    message: format!("cannot create it: {e}"),
                })?;
                (d.clone(), false)
            }
            None => {
                if self.store.is_none() {
                    return Err(ContainerError::NoStore);
                }
                let d = std::env::temp_dir().join(format!("arkline-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&d).map_err(|e| ContainerError::DataDir {
                    path: d.clone(),
                    message: format!("cannot create a temporary directory: {e}"),
                })?;
                (d, true)
            }
        };
        let metrics = Metrics::new();
        let (store, redb): (Arc<dyn Store>, _) = match self.store {
            Some(s) => (s, None),
            None => {
                let store = Arc::new(RedbStore::open(&data_dir)?);
                metrics.set_store_commit_latency(store.commit_latency());
                (store.clone(), Some(store))
            }
        };
        let runtime = match self.runtime {
            Some(r) => {
                if self.require_process_sandbox && !r.config().process_limits.require_sandbox {
                    return Err(ContainerError::SandboxNotRequired);
                }
                r
            }
            None => {
                let mut config = self.runtime_config.unwrap_or_default();
                config.process_limits.require_sandbox |= self.require_process_sandbox;
                if config.cache_dir.is_none() && !temp {
                    config = config.cache_dir(data_dir.join("compiled"));
                }
                Runtime::new(config)?
            }
        };
        if let Some(shared) = &self.shared_dir {
            std::fs::create_dir_all(shared).map_err(|e| ContainerError::DataDir {
                path: shared.clone(),
                message: format!("cannot create the shared dir: {e}"),
            })?;
        }
        let key = match (self.secret_key, &self.shared_dir) {
            (Some(k), _) => k,
            (None, Some(shared)) => SecretKey::load_or_create(&shared.join("secret.key"))?,
            (None, None) if temp => SecretKey::generate()?,
            (None, None) => SecretKey::load_or_create(&data_dir.join("secret.key"))?,
        };
        let mut arks = crate::pipeline::ArkStore::new(
            self.shared_dir.as_ref().unwrap_or(&data_dir).join("arks"),
        );
        if let Some(url) = &self.archive_store {
            arks = arks
                .with_remote(url, None)
                .map_err(|e| ContainerError::ArchiveStore(format!("{url}: {e}")))?;
        }
        let node = match self.node {
            Some(n) => n,
            None if temp => format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            None => node_id(&data_dir)?,
        };
        let logs = match &redb {
            _ if temp => LogStore::in_memory(),
            // Log lines ride on the store's commits.
            Some(redb) => LogStore::in_store(redb.clone(), &data_dir.join("logs")),
            None => LogStore::open(data_dir.join("logs")).map_err(|e| ContainerError::DataDir {
                path: data_dir.join("logs"),
                message: e.to_string(),
            })?,
        };
        let archive = match (self.log_archive, &self.shared_dir) {
            (Some(archive), _) => Some(archive),
            (None, Some(shared)) => {
                let dir = shared.join("logs");
                let url = url::Url::from_directory_path(&dir)
                    .map_err(|()| ContainerError::DataDir {
                        path: dir.clone(),
                        message: "the shared dir must be an absolute path".into(),
                    })?
                    .to_string();
                Some(LogArchive::open(&url).map_err(|e| ContainerError::DataDir {
                    path: dir,
                    message: e.to_string(),
                })?)
            }
            (None, None) => None,
        };
        if let Some(archive) = archive {
            logs.set_archive(archive);
        }
        let pool = crate::pipeline::pool::WorkerPool::new(runtime.config().max_instances as usize);
        Ok(Container {
            inner: Arc::new(Inner {
                store,
                redb,
                runtime,
                key: Arc::new(key),
                node: node.clone(),
                clock: self.clock,
                options: self.options,
                logs,
                workspaces: Workspaces::new(data_dir.join("workspaces")),
                data_dir,
                arks,
                temp,
                blob_cache_cap: self.blob_cache_cap,
                pool,
                metrics,
                starting: tokio::sync::Mutex::new(()),
                engines: Mutex::new(BTreeMap::new()),
                cluster: Mutex::new(Arc::new(SoloCluster::new(node.clone()))),
            }),
        })
    }
}

fn node_id(dir: &Path) -> Result<String, ContainerError> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Ok(_) | Err(_) => {
            let id = format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
            let tmp = dir.join(".node-id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| ContainerError::DataDir {
                    path: path.clone(),
                    message: format!("cannot write the node id: {e}"),
                })?;
            Ok(id)
        }
    }
}

/// A started engine and its controller tasks.
type Running = (Engine, Vec<tokio::task::JoinHandle<()>>);

struct Inner {
    store: Arc<dyn Store>,
    /// The data dir's store when the container opened it: closed by `shutdown`.
    redb: Option<Arc<RedbStore>>,
    runtime: Runtime,
    key: Arc<SecretKey>,
    node: String,
    clock: Arc<dyn Clock>,
    options: ExecOptions,
    logs: LogStore,
    data_dir: PathBuf,
    /// The execution workspaces of every engine: one instance, so the
    /// engines share its pool of spare directories (an instance per engine
    /// cleared and overwrote the others' spares in the one spare dir).
    workspaces: Workspaces,
    /// Where uploaded archives are kept (the shared dir's, or the data
    /// dir's; and the remote archive store).
    arks: crate::pipeline::ArkStore,
    temp: bool,
    blob_cache_cap: u64,
    pool: crate::pipeline::pool::WorkerPool,
    metrics: Metrics,
    starting: tokio::sync::Mutex<()>,
    engines: Mutex<BTreeMap<String, Running>>,
    /// The nodes sharing the store; engines started later use it.
    cluster: Mutex<Arc<dyn Cluster>>,
}

/// The process-wide container of engines. Cheap to clone.
#[derive(Clone)]
pub struct Container {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("node", &self.inner.node)
            .field("data_dir", &self.inner.data_dir)
            .finish_non_exhaustive()
    }
}

impl Container {
    /// A builder; give it a data dir or a store.
    pub fn builder() -> ContainerBuilder {
        ContainerBuilder {
            data_dir: None,
            store: None,
            runtime: None,
            runtime_config: None,
            secret_key: None,
            clock: Arc::new(SystemClock),
            node: None,
            options: ExecOptions::default(),
            blob_cache_cap: 1 << 30,
            require_process_sandbox: false,
            shared_dir: None,
            log_archive: None,
            archive_store: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The isolation runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The container's counters: step calls, faults, step durations, cache
    /// lookups and (with the data dir's redb store) commit latency.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Joins the nodes that share this container's store: engines started
    /// from now on take admission, cron triggers, pipeline status and
    /// retention in turn with the other nodes (whoever `cluster` says
    /// leads), and run the executions admission gives this node. Without
    /// it, the container is alone ([`SoloCluster`]).
    ///
    /// # Errors
    ///
    /// [`ContainerError::Cluster`] when an engine already runs, or when
    /// the cluster sees itself as another node than this container.
    pub fn join_cluster(&self, cluster: Arc<dyn Cluster>) -> Result<(), ContainerError> {
        if cluster.node() != self.inner.node {
            return Err(ContainerError::Cluster(format!(
                "it is node `{}`'s view, and this container is node `{}`",
                cluster.node(),
                self.inner.node
            )));
        }
        let engines = self.inner.engines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = engines.keys().next() {
            return Err(ContainerError::Cluster(format!(
                "engine `{name}` already runs; join before `restore`, `engine` or `deploy_archive` start one"
            )));
        }
        *self.inner.cluster.lock().unwrap_or_else(|p| p.into_inner()) = cluster;
        Ok(())
    }

    /// The data dir (a temporary one when the container was built with a store only).
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The engine named `name`, started on first use: its controllers run until
    /// [`Container::shutdown`]. Executions it was running before a restart resume.
    ///
    /// # Errors
    ///
    /// [`ContainerError::EngineName`] for a name that is not a valid engine name;
    /// [`ContainerError::Store`] when the engine cannot be recorded or started.
    pub async fn engine(&self, name: &str) -> Result<Engine, ContainerError> {
        self.start_engine(name, true)
            .await
            .map(|e| e.expect("started when the record may be created"))
    }

    /// Starts `name` unless it runs; records it first when `record`, or
    /// starts nothing (`None`) when it is not recorded.
    async fn start_engine(
        &self,
        name: &str,
        record: bool,
    ) -> Result<Option<Engine>, ContainerError> {
        if !valid_engine_name(name) {
            return Err(ContainerError::EngineName(name.to_owned()));
        }
        // One engine starts at a time; the map itself is locked only briefly.
        let _starting = self.inner.starting.lock().await;
        if let Some((engine, _)) = self
            .inner
            .engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(Some(engine.clone()));
        }
        let inner = &self.inner;
        // The engine is part of the deployment from now on: a restart's
        // `restore` starts it again.
        let records = crate::store::Api::<EngineRecord>::new(inner.store.clone());
        if records.get("", name).await?.is_none() {
            if !record {
                return Ok(None);
            }
            match records
                .create(&EngineRecord::new(
                    crate::model::ObjectMeta::new("", name),
                    EngineRecordSpec::default(),
                ))
                .await
            {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let registry = BizRegistry::new(inner.runtime.clone(), name);
        let cache_dir = inner.data_dir.join("cache").join(name);
        let cache = BlobCache::open(&cache_dir, inner.blob_cache_cap)
            .map_err(|e| ContainerError::DataDir {
                path: cache_dir.clone(),
                message: e.to_string(),
            })?
            .with_counters(inner.metrics.cache_counters(name));
        registry.set_blob_cache(cache);
        registry.set_metrics(inner.metrics.clone());
        let (timers, timer_keys) = Timers::start(inner.clock.clone());
        let (pokes, poked) = tokio::sync::mpsc::unbounded_channel();
        let cluster = inner
            .cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let core = Arc::new(EngineCore {
            name: name.to_owned(),
            node: inner.node.clone(),
            leads: cluster.leadership(name),
            cluster,
            store: inner.store.clone(),
            registry,
            logs: inner.logs.clone(),
            workspaces: inner.workspaces.clone(),
            secrets: Secrets::new(inner.store.clone(), name, inner.key.clone()),
            clock: inner.clock.clone(),
            options: inner.options.clone(),
            timers,
            runs: Mutex::new(Default::default()),
            drivers: Mutex::new(tokio::task::JoinSet::new()),
            shutdown: CancelToken::new(),
            pokes,
            started: chrono::Utc::now(),
            pool: inner.pool.clone(),
            arks: inner.arks.clone(),
            run_counters: Mutex::new(Default::default()),
            finished_runs: Mutex::new(Default::default()),
            metrics: inner.metrics.clone(),
            deploy_lock: tokio::sync::Mutex::new(()),
            pending: Mutex::default(),
        });
        // Install the engine's deployed bizes before anything runs, so executions
        // triggered (or resumed) right after a restart find them.
        if let Ok(Some(dep)) =
            crate::store::Api::<crate::model::BizDeployment>::new(inner.store.clone())
                .get(name, crate::pipeline::deployment::DEPLOYMENT_NAME)
                .await
            && let Err(e) =
                crate::pipeline::deployment::reconcile_deployment(Arc::new(dep), core.clone()).await
        {
            tracing::warn!(engine = %name, error = %e, "restoring the engine's bizes failed; the reconciler retries");
        }
        let tasks = crate::pipeline::start(core.clone(), timer_keys, poked);
        let engine = Engine { core };
        self.inner
            .engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), (engine.clone(), tasks));
        Ok(Some(engine))
    }

    /// Starts every engine of the deployment (those created with
    /// [`Container::engine`] and not removed), as after a restart: their bizes
    /// are installed again and their unfinished executions resume.
    ///
    /// # Errors
    ///
    /// [`ContainerError::Store`] when the recorded engines cannot be read or started.
    pub async fn restore(&self) -> Result<Vec<Engine>, ContainerError> {
        let (records, _) = crate::store::Api::<EngineRecord>::new(self.inner.store.clone())
            .list(Some(""), crate::store::LabelSelector::default())
            .await?;
        let mut engines = Vec::new();
        for record in records {
            engines.push(self.engine(&record.metadata.name).await?);
        }
        Ok(engines)
    }

    /// Follows the engines recorded in the store, as other nodes sharing it
    /// add and remove them: an engine recorded there starts here (its bizes
    /// installed from the archive store, which the nodes must share: see
    /// [`ContainerBuilder::shared_dir`]); an engine removed there stops here
    /// and its bizes are uninstalled. Runs until the container shuts down
    /// or the task is aborted.
    pub fn follow_engines(&self) -> tokio::task::JoinHandle<()> {
        let container = self.clone();
        tokio::spawn(async move {
            use futures::StreamExt as _;
            let records = crate::store::Api::<EngineRecord>::new(container.inner.store.clone())
                .watcher(Some(""), crate::store::watcher::Config::default());
            let mut records = std::pin::pin!(records);
            while let Some(event) = records.next().await {
                use crate::store::watcher::Event;
                let started = match event {
                    Ok(Event::Apply(r) | Event::InitApply(r)) => {
                        // Only while it is recorded: an engine removed since
                        // is not brought back.
                        container
                            .start_engine(&r.metadata.name, false)
                            .await
                            .map(drop)
                    }
                    Ok(Event::Delete(r)) => {
                        let name = r.metadata.name;
                        let _starting = container.inner.starting.lock().await;
                        let running = container
                            .inner
                            .engines
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&name);
                        if let Some(running) = running {
                            tracing::info!(engine = %name, "engine removed by another node: stopped here");
                            container.inner.metrics.forget_engine(&name);
                            stop_and_uninstall(running).await;
                        }
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "following the recorded engines failed; it goes on");
                        Ok(())
                    }
                };
                if let Err(e) = started {
                    tracing::warn!(error = %e, "cannot start an engine another node added");
                }
            }
        })
    }

    /// Removes an engine while the container runs: its running executions are
    /// interrupted, its bizes uninstalled (forced), and its pipelines,
    /// executions, settings, secrets, logs, workspaces and cache deleted. Other
    /// engines are not disturbed. `false` when there was no such engine.
    ///
    /// # Errors
    ///
    /// [`ContainerError::Store`] when the engine's objects cannot be deleted.
    pub async fn remove_engine(&self, name: &str) -> Result<bool, ContainerError> {
        let _starting = self.inner.starting.lock().await;
        let running = self
            .inner
            .engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        let records = crate::store::Api::<EngineRecord>::new(self.inner.store.clone());
        let recorded = records.get("", name).await?.is_some();
        if running.is_none() && !recorded {
            return Ok(false);
        }
        self.inner.metrics.forget_engine(name);
        if let Some(running) = running {
            stop_and_uninstall(running).await;
        }
        let store = &self.inner.store;
        for kind in [
            "PipelineExecution",
            "Pipeline",
            "PipelineSetting",
            "Secret",
            "BizDeployment",
        ] {
            let list = store
                .list(&crate::store::ListQuery::kind(kind).engine(name))
                .await?;
            for obj in list.items {
                match store
                    .delete(&crate::store::ObjectRef::of(&obj), &Default::default())
                    .await
                {
                    Ok(_) | Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        match records.delete("", name, &Default::default()).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if let Err(e) = self.inner.logs.remove_engine(name).await {
            tracing::warn!(engine = %name, error = %e, "cannot remove a removed engine's logs");
        }
        let data = &self.inner.data_dir;
        for dir in [
            data.join("workspaces").join(name),
            data.join("cache").join(name),
        ] {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(engine = %name, dir = %dir.display(), error = %e, "cannot remove a removed engine's files");
            }
        }
        Ok(true)
    }

    /// Deploys a container archive: for each of its engines, the engine is
    /// created (or reused), its settings applied, its bizes (own and shared)
    /// deployed with their grants, and its pipelines applied.
    ///
    /// The archive was verified when it was read (entries, digests, nested
    /// archives, signatures under each engine's policy, pipelines parse and
    /// name bizes the engine has). Before anything changes, every biz is also
    /// compiled (or found in the compiled cache): a bad archive changes nothing.
    /// Deploying the same archive again converges to the same state.
    ///
    /// # Errors
    ///
    /// [`ContainerError::Compile`] when a biz does not compile (nothing changed);
    /// [`ContainerError::MissingBiz`] when the archive lacks a biz an engine names;
    /// [`ContainerError::Engine`] when applying an engine's settings, bizes or pipelines
    /// fails (the engines before it are deployed); [`ContainerError::EngineName`] or
    /// [`ContainerError::Store`] as for [`Container::engine`].
    pub async fn deploy_archive(
        &self,
        archive: &crate::container::archive::ContainerArchive,
    ) -> Result<Vec<Engine>, ContainerError> {
        // Pre-flight: every component compiles.
        for ((name, version), ark) in &archive.bizes {
            let (runtime, ark) = (self.inner.runtime.clone(), ark.clone());
            let compiled = tokio::task::spawn_blocking(move || runtime.prepare(&ark).map(|_| ()))
                .await
                .unwrap_or_else(|e| {
                    Err(ComponentError::Compile(format!(
                        "the compile task failed: {e}"
                    )))
                });
            compiled.map_err(|source| ContainerError::Compile {
                biz: format!("{name}@{version}"),
                source,
            })?;
        }
        let mut engines = Vec::new();
        for spec in &archive.manifest.engines {
            let engine = self.engine(&spec.name).await?;
            let fail = |e: EngineError| ContainerError::Engine {
                engine: spec.name.clone(),
                source: Box::new(e),
            };
            engine
                .apply_settings(spec.settings.clone())
                .await
                .map_err(fail)?;
            for biz in archive.engine_bizes(&spec.name) {
                let bytes = archive.biz_bytes(&biz.name, &biz.version).ok_or_else(|| {
                    ContainerError::MissingBiz {
                        engine: spec.name.clone(),
                        biz: format!("{}@{}", biz.name, biz.version),
                    }
                })?;
                engine
                    .deploy_biz(bytes, &biz.grants, biz.active)
                    .await
                    .map_err(fail)?;
            }
            for (path, yaml) in archive.engine_pipelines(&spec.name) {
                engine.apply_pipeline_yaml(path, yaml).await.map_err(fail)?;
            }
            engines.push(engine);
        }
        Ok(engines)
    }

    /// The engines started so far.
    pub fn engines(&self) -> Vec<Engine> {
        let engines = self.inner.engines.lock().unwrap_or_else(|p| p.into_inner());
        engines.values().map(|(e, _)| e.clone()).collect()
    }

    /// How many executions this container's engines drive now (its load, as
    /// a node registration reports it).
    pub fn running_executions(&self) -> usize {
        let engines = self.inner.engines.lock().unwrap_or_else(|p| p.into_inner());
        engines.values().map(|(e, _)| e.core.runs().len()).sum()
    }

    /// Stops every engine: controllers end, running steps are interrupted and
    /// their executions stay `Running` in the store, to resume on the next start
    /// (see `PipelineSettingSpec::interrupted_retries`). Waits for every
    /// controller and driver task (drivers get 10 s to record where they
    /// stopped, then are aborted), then closes the data dir's store: when this
    /// returns, the data dir can be opened again, and this container's (and
    /// its engines') store calls answer `StoreError::Closed`. A store passed to
    /// the builder is left open (its owner closes it).
    pub async fn shutdown(&self) {
        let all: Vec<Running> = {
            let mut engines = self.inner.engines.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *engines).into_values().collect()
        };
        for (engine, _) in &all {
            engine.core.shutdown.cancel();
        }
        for (engine, tasks) in all {
            stop(&engine, tasks).await;
        }
        self.inner.logs.close().await;
        if let Some(redb) = &self.inner.redb
            && let Err(e) = redb.close().await
        {
            tracing::warn!(error = %e, "closing the store");
        }
        if self.inner.temp {
            let _ = std::fs::remove_dir_all(&self.inner.data_dir);
        }
    }
}

/// Stops an engine here (its executions are interrupted) and uninstalls its
/// bizes; its objects stay in the store.
async fn stop_and_uninstall((engine, tasks): Running) {
    stop(&engine, tasks).await;
    for biz in engine.core.registry.list() {
        let _ = engine
            .core
            .registry
            .uninstall(
                &biz.name,
                &biz.version,
                crate::runtime::UninstallMode::Force,
            )
            .await;
    }
}

/// Stops one engine's controllers and waits (up to 10 s) for its drivers to
/// record where they stopped.
async fn stop(engine: &Engine, tasks: Vec<tokio::task::JoinHandle<()>>) {
    engine.core.shutdown.cancel();
    // The controllers first: once they have ended, no new driver starts.
    for t in tasks {
        let _ = t.await;
    }
    let mut drivers = engine.core.take_drivers();
    let joined = tokio::time::timeout(Duration::from_secs(10), async {
        while drivers.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        tracing::warn!(engine = %engine.core.name, left = drivers.len(), "drivers did not record where they stopped within 10 s; aborting them");
        drivers.shutdown().await;
    }
}

fn valid_engine_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}
