//! What every handler of `arkline serve` gets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arkline::model::ByteSize;
use arkline::{Container, Engine};
use tokio::sync::{Semaphore, watch};

use super::auth::Auth;
use super::error::ApiError;

/// Request body caps of the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `.ark` / `.arkc` upload.
    pub max_upload: ByteSize,
    /// Largest JSON or YAML body.
    pub max_body: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload: ByteSize::mib(64),
            max_body: ByteSize::mib(1),
        }
    }
}

/// Most pipeline or archive parses running at once; further requests wait.
const PARSE_CONCURRENCY: usize = 2;

/// Shared state of the server. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The container every engine lives in.
    pub container: Container,
    pub(crate) auth: Arc<Auth>,
    /// The dashboard's signed-in sessions.
    pub(crate) sessions: Arc<super::auth::Sessions>,
    pub(crate) limits: Limits,
    pub(crate) webhook_dedup_window: Duration,
    /// Permits for CPU-bound parsing (pipelines, archives), which runs on
    /// blocking threads so that no request can hold up the async workers, and
    /// at most this many at once so that a burst of them cannot take every core.
    parsing: Arc<Semaphore>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
    shutdown_tx: Arc<watch::Sender<bool>>,
    /// The other nodes on the etcd prefix (their registered addresses), for
    /// requests about executions they run.
    pub(crate) peers: Option<arkline::store::EtcdStore>,
}

impl AppState {
    /// State over `container`: ready, default [`Limits`], and no tokens (every
    /// `/api/v1` request is refused until [`AppState::with_auth`] gives some).
    pub fn new(container: Container) -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            container,
            auth: Arc::new(Auth::Tokens(Vec::new())),
            sessions: Arc::default(),
            limits: Limits::default(),
            webhook_dedup_window: super::hooks::replay::DEFAULT_WINDOW,
            parsing: Arc::new(Semaphore::new(PARSE_CONCURRENCY)),
            ready: Arc::new(AtomicBool::new(true)),
            shutdown: rx,
            peers: None,
            shutdown_tx: Arc::new(tx),
        }
    }

    /// Requests about an execution another node runs (its live step logs)
    /// are forwarded to that node, found in `store`'s registrations.
    pub fn with_peers(mut self, store: arkline::store::EtcdStore) -> Self {
        self.peers = Some(store);
        self
    }

    /// The registered address of live node `id`, if it is another node.
    pub(crate) async fn peer_address(&self, id: &str) -> Option<String> {
        if id == self.container.node() {
            return None;
        }
        let nodes = self.peers.as_ref()?.nodes().await.ok()?;
        nodes.into_iter().find(|n| n.id == id).map(|n| n.address)
    }

    /// Uses `auth` for the admin API.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// Uses `limits` for request bodies.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Remembers webhook delivery ids for `window` (a delivery seen again within
    /// it starts nothing).
    pub fn with_webhook_dedup_window(mut self, window: Duration) -> Self {
        self.webhook_dedup_window = window;
        self
    }

    /// Runs CPU-bound `work` (parsing a pipeline or reading an archive) on a
    /// blocking thread, at most [`PARSE_CONCURRENCY`] at a time, so the async
    /// workers keep serving other requests (`/healthz` included) meanwhile.
    pub(crate) async fn parse_off_workers<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self
            .parsing
            .acquire()
            .await
            .map_err(|_| ApiError::internal("the server is shutting down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::internal(format!("parsing failed: {e}")))
    }

    /// One of the [`PARSE_CONCURRENCY`] slots, for work that goes off the
    /// workers by itself (a biz upload: `Engine::deploy_biz` reads the archive
    /// on a blocking thread).
    pub(crate) async fn parse_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.parsing
            .acquire()
            .await
            .map_err(|_| ApiError::internal("the server is shutting down"))
    }

    /// Whether the admin API answers (the engines are restored and the server is
    /// not shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Marks the server ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Starts shutting down: not ready any more, and long-lived responses (log
    /// streams) end.
    pub fn begin_shutdown(&self) {
        self.set_ready(false);
        self.shutdown_tx.send_replace(true);
    }

    /// Whether [`AppState::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves when [`AppState::begin_shutdown`] was called.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.clone();
        // An error means the sender is gone, which is a shutdown too.
        let _ = rx.wait_for(|down| *down).await;
    }

    /// The running engine named `name` (never creates one); 404 otherwise.
    pub(crate) fn engine(&self, name: &str) -> Result<Engine, ApiError> {
        self.container
            .engines()
            .into_iter()
            .find(|e| e.name() == name)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "engine `{name}` does not exist: list engines with `GET /api/v1/engines`, or add it by uploading a .arkc that declares it (`POST /api/v1/engines`)"
                ))
            })
    }
}
