//! `arkline serve`: the admin HTTP API, webhooks and metrics over one container.
//!
//! Module map (one writer each while this is being built):
//! - `state`: [`AppState`], what every handler gets;
//! - `api`: the `/api/v1` admin API (engines, bizes, pipelines, executions, logs,
//!   secrets), `/healthz`, `/readyz`; `auth`: tokens and scopes; `error`: the
//!   JSON error shape; `openapi`: the document built from `api`'s route table;
//! - `hooks`: `POST /hooks/<engine>/<pipeline>` (GitHub/GitLab-compatible webhooks),
//!   `POST /hooks/<engine>` (pipelines as code), `POST /registry-hooks/<engine>`
//!   (image pushes from a registry);
//! - `metrics`: Prometheus `/metrics`;
//! - `connections`: the accept loop with the connection cap and the header,
//!   body and idle timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arkline::Container;
use arkline::container::archive::ContainerArchive;
use arkline::model::ByteSize;
use axum::Router;

pub mod api;
pub mod auth;
pub mod connections;
pub mod error;
pub mod hooks;
pub mod listing;
pub mod metrics;
pub mod openapi;
pub mod state;
pub mod ui;

pub use connections::ConnectionLimits;
pub use state::{AppState, Limits};

/// Default listening address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8740";

/// Arguments of `arkline serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A container archive (.arkc) to deploy once the recorded engines are restored.
    pub archive: Option<PathBuf>,
    /// The data dir: the embedded store, archives, logs, workspaces, keys.
    #[arg(long, env = "ARKLINE_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The tokens file (TOML: `[[tokens]]` with name, token or sha256, engines, access).
    #[arg(long, env = "ARKLINE_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Serve the admin API without authentication (only on a loopback address).
    #[arg(long, conflicts_with = "tokens")]
    pub insecure_no_auth: bool,
    /// Largest .ark / .arkc upload (B, K/KiB, M/MiB, G/GiB, or KB, MB, GB).
    #[arg(long, default_value = "64MiB", value_name = "SIZE")]
    pub max_upload: ByteSize,
    /// Largest JSON or YAML request body (same units).
    #[arg(long, default_value = "1MiB", value_name = "SIZE")]
    pub max_body: ByteSize,
    /// Time a client has to send a request's head (request line and headers),
    /// from the connection or from the first byte of a later request.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    pub header_timeout: Duration,
    /// Time a client has to send a whole request body once its head arrived
    /// (slow uploads of large archives may need more).
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    pub body_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request.
    #[arg(long, default_value = "60s", value_parser = parse_timeout)]
    pub idle_timeout: Duration,
    /// Connections served at once; new ones past it get a 503 and are closed.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long webhook delivery ids are remembered: a delivery sent again within
    /// it (a replay or a redelivery) starts nothing.
    #[arg(long, default_value = "72h", value_parser = parse_timeout)]
    pub webhook_dedup_window: Duration,
    /// Fail every `process` run whose sandbox (namespaces, per-run cgroup)
    /// cannot be built, instead of running it with weaker confinement.
    #[arg(long)]
    pub require_sandbox: bool,
    /// The store: `etcd://host:port[,host:port…][/prefix]` (`etcds://` for
    /// TLS) keeps the deployment and executions in an etcd cluster (3.4 or
    /// newer) instead of the data dir's embedded redb file (the default).
    #[arg(long, env = "ARKLINE_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// etcd: the CA certificate (PEM) that signs the members' certificates.
    #[arg(long, value_name = "FILE", requires = "store")]
    pub etcd_ca: Option<PathBuf>,
    /// etcd: this node's client certificate (PEM), with --etcd-key.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// etcd: the client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd: the user name, for clusters with authentication on; the
    /// password is read from ARKLINE_ETCD_PASSWORD (never a flag: flags are
    /// visible to every user of the machine).
    #[arg(
        long,
        env = "ARKLINE_ETCD_USER",
        value_name = "USER",
        requires = "store"
    )]
    pub etcd_user: Option<String>,
    /// etcd: the TTL of this node's registration lease; a node that stops
    /// renewing it (dead, or cut off from the cluster) is gone after it.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    pub node_ttl: Duration,
    /// A directory all nodes on the etcd prefix share (a network file
    /// system): uploaded archives and the secret key are kept there, so a
    /// biz or secret given to one node works on every node. Without it,
    /// each node keeps them in its data dir and runs only what it was given.
    #[arg(
        long,
        env = "ARKLINE_SHARED_DIR",
        value_name = "DIR",
        requires = "store"
    )]
    pub shared_dir: Option<PathBuf>,
    /// Where finished step logs are shipped, so any node serves them, after
    /// the node that ran the step is gone too: `file:///dir` or
    /// `s3://bucket/prefix` (builds with the `s3` feature; credentials from
    /// the `AWS_*` environment variables). Default with --shared-dir: its
    /// `logs/`.
    #[arg(long, env = "ARKLINE_LOG_ARCHIVE", value_name = "URL")]
    pub log_archive: Option<String>,
    /// An object store uploaded archives are kept in as well, so every node
    /// installs a biz any node was given without a shared file system:
    /// `s3://bucket/prefix` (credentials from the `AWS_*` environment
    /// variables) or `file:///dir`.
    #[arg(long, env = "ARKLINE_ARCHIVE_STORE", value_name = "URL")]
    pub archive_store: Option<String>,
    /// The key secrets are encrypted with (a file of 64 hex digits, as the
    /// data dir's `secret.key`): give every node the same one, so a secret
    /// written through one node is read on all. Default: the shared dir's,
    /// or the data dir's, created on first start.
    #[arg(long, env = "ARKLINE_SECRET_KEY_FILE", value_name = "FILE")]
    pub secret_key: Option<PathBuf>,
    /// etcd: the URL other nodes reach this node's API at (default: the
    /// listening address).
    #[arg(
        long,
        env = "ARKLINE_ADVERTISE",
        value_name = "URL",
        requires = "store"
    )]
    pub advertise: Option<String>,
}

impl ServeArgs {
    /// Connects to the store `--store` names (only etcd is remote).
    async fn open_store(&self, url: &str) -> anyhow::Result<arkline::store::EtcdStore> {
        use arkline::store::etcd::{EtcdOptions, EtcdStore, EtcdTls};
        let mut options =
            EtcdOptions::from_url(url).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .with_context(|| format!("cannot read the etcd {what} {}", path.display()))
        };
        if self.etcd_ca.is_some() || self.etcd_cert.is_some() {
            if options.tls.is_none() {
                anyhow::bail!(
                    "--etcd-ca and --etcd-cert are for TLS: write the store as etcds://… instead of etcd://…"
                );
            }
            options.tls = Some(EtcdTls {
                ca_pem: self
                    .etcd_ca
                    .as_ref()
                    .map(|p| read(p, "CA certificate"))
                    .transpose()?,
                identity: match (&self.etcd_cert, &self.etcd_key) {
                    (Some(c), Some(k)) => {
                        Some((read(c, "client certificate")?, read(k, "client key")?))
                    }
                    _ => None,
                },
            });
        }
        if let Some(user) = &self.etcd_user {
            let password = std::env::var("ARKLINE_ETCD_PASSWORD").map_err(|_| {
                anyhow::anyhow!(
                    "--etcd-user {user} needs its password in the environment variable ARKLINE_ETCD_PASSWORD"
                )
            })?;
            options.user = Some((user.clone(), password));
        }
        let endpoints = options.endpoints_text();
        let store = EtcdStore::connect(options)
            .await
            .with_context(|| format!("cannot use the etcd store at {endpoints}"))?;
        tracing::info!(endpoints = %endpoints, prefix = %store.options().prefix, "store: etcd");
        Ok(store)
    }

    /// Registers this node in etcd under its lease, and keeps the list of
    /// engines it serves current.
    async fn register_node(
        &self,
        store: &arkline::store::EtcdStore,
        container: &Container,
        addr: SocketAddr,
    ) -> anyhow::Result<(
        arkline::store::etcd::NodeRegistration,
        tokio::task::JoinHandle<()>,
    )> {
        let engines = |c: &Container| {
            let mut names: Vec<String> = c.engines().iter().map(|e| e.name().to_owned()).collect();
            names.sort();
            names
        };
        let info = arkline::store::etcd::NodeInfo {
            id: container.node().to_owned(),
            address: self
                .advertise
                .clone()
                .unwrap_or_else(|| format!("http://{addr}")),
            capacity: container.runtime().config().max_instances,
            engines: engines(container),
            load: 0,
            started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let registration = store
            .register_node(info, self.node_ttl, false)
            .await
            .context("cannot register this node in etcd")?;
        tracing::info!(
            node = container.node(),
            lease = registration.lease(),
            "node registered"
        );
        let refresher = {
            let (registration_info, container) = (registration.lost(), container.clone());
            let handle = registration.updater();
            // Checked every second: admission gives a node an engine's executions
            // only once its registration lists the engine.
            let period = Duration::from_secs(1);
            let load = |c: &Container| u32::try_from(c.running_executions()).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                let mut served = (engines(&container), 0);
                loop {
                    tokio::time::sleep(period).await;
                    if *registration_info.borrow() {
                        return;
                    }
                    // Written only when it changed: an idle node writes nothing.
                    let now = (engines(&container), load(&container));
                    if now != served {
                        let (names, running) = now.clone();
                        match handle
                            .update(move |i| {
                                i.engines = names;
                                i.load = running;
                            })
                            .await
                        {
                            Ok(()) => served = now,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot update the node registration")
                            }
                        }
                    }
                }
            })
        };
        Ok((registration, refresher))
    }
}

/// A duration flag: `10s`, `500ms`, `72h`; never zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| {
        format!("`{text}` is not a duration ({e}): write e.g. `10s`, `500ms` or `72h`")
    })?;
    if d.is_zero() {
        return Err("a zero duration would refuse every request; give a positive one".into());
    }
    Ok(d)
}

impl ServeArgs {
    /// Runs the subcommand.
    pub fn exec(self, color: crate::color::ColorChoice) -> anyhow::Result<ExitCode> {
        init_tracing(color);
        let auth = match (&self.tokens, self.insecure_no_auth) {
            (Some(path), _) => auth::Auth::load(path)?,
            (None, true) => {
                if !self.listen.ip().is_loopback() {
                    anyhow::bail!(
                        "--insecure-no-auth serves the admin API to anyone who can connect, so it is only allowed on a loopback address (not {}); give --tokens FILE to listen there",
                        self.listen
                    );
                }
                auth::Auth::Disabled
            }
            (None, false) => anyhow::bail!(
                "the admin API needs tokens: give --tokens FILE (TOML with `[[tokens]]` entries: name, token, engines, access), or --insecure-no-auth on a loopback address for local experiments"
            ),
        };
        // Read and check the archive before anything starts: a bad one stops here.
        let archive = match &self.archive {
            Some(path) => {
                let bytes = std::fs::read(path).with_context(|| {
                    format!("cannot read the container archive {}", path.display())
                })?;
                Some(ContainerArchive::from_bytes(&bytes).with_context(|| {
                    format!("the container archive {} is refused", path.display())
                })?)
            }
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(self.serve(auth, archive))
    }

    async fn serve(
        self,
        auth: auth::Auth,
        archive: Option<ContainerArchive>,
    ) -> anyhow::Result<ExitCode> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create the data dir {}", self.data_dir.display()))?;
        let mut builder = Container::builder()
            .data_dir(&self.data_dir)
            .require_process_sandbox(self.require_sandbox);
        let etcd = match &self.store {
            Some(url) => Some(self.open_store(url).await?),
            None => None,
        };
        if let Some(store) = &etcd {
            builder = builder.store(std::sync::Arc::new(store.clone()));
        }
        if let Some(shared) = &self.shared_dir {
            let shared = std::path::absolute(shared)
                .with_context(|| format!("--shared-dir {}: not a usable path", shared.display()))?;
            builder = builder.shared_dir(shared);
        }
        if let Some(url) = &self.archive_store {
            builder = builder.archive_store(url);
        }
        if let Some(path) = &self.secret_key {
            let key = arkline::container::SecretKey::load(path)
                .with_context(|| format!("--secret-key {}", path.display()))?;
            builder = builder.secret_key(key);
        }
        if let Some(url) = &self.log_archive {
            builder = builder.log_archive(
                arkline::container::LogArchive::open(url)
                    .map_err(|e| anyhow::anyhow!("--log-archive: {e}"))?,
            );
        }
        let container = builder
            .build()
            .with_context(|| format!("cannot open the data dir {}", self.data_dir.display()))?;
        let mut state = AppState::new(container.clone());
        if let Some(store) = &etcd {
            state = state.with_peers(store.clone());
        }
        let state = state
            .with_auth(auth)
            .with_limits(Limits {
                max_upload: self.max_upload,
                max_body: self.max_body,
            })
            .with_webhook_dedup_window(self.webhook_dedup_window);
        let connection_limits = ConnectionLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections as usize,
        };
        state.set_ready(false);
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let addr = listener
            .local_addr()
            .context("cannot read the listening address")?;
        eprintln!("listening on http://{addr}");
        let app = router(state.clone());
        let signals = {
            let state = state.clone();
            async move {
                shutdown_signal().await;
                tracing::info!("shutting down: no new connections; stopping the engines");
                state.begin_shutdown();
            }
        };
        let server = tokio::spawn({
            let state = state.clone();
            async move {
                connections::serve(listener, app, connection_limits, async move {
                    state.shutting_down().await
                })
                .await;
            }
        });
        let signal_task = tokio::spawn(signals);
        let registered = match &etcd {
            Some(store) if !state.is_shutting_down() => {
                match self.register_node(store, &container, addr).await {
                    Ok(r) => {
                        // Every write from here on holds only while this
                        // node's registration does.
                        r.0.fence(store);
                        // The engines about to start share admission, cron
                        // and retention with the other nodes on the prefix.
                        let cluster = arkline::store::etcd::EtcdCluster::new(store, &r.0);
                        if let Err(e) = container.join_cluster(cluster) {
                            state.begin_shutdown();
                            let _ = server.await;
                            container.shutdown().await;
                            return Err(e.into());
                        }
                        Some(r)
                    }
                    Err(e) => {
                        state.begin_shutdown();
                        let _ = server.await;
                        container.shutdown().await;
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        // A node that lost its registration stops: another node may own its
        // work now, and its writes are refused by the fence anyway.
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some((registration, _)) = &registered {
            let (mut gone, state, lost) = (registration.lost(), state.clone(), lost.clone());
            let container = container.clone();
            tokio::spawn(async move {
                if gone.wait_for(|lost| *lost).await.is_ok() {
                    eprintln!(
                        "this node lost its etcd registration (lease expired or unrenewable): stopping; another node may take over its work"
                    );
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    state.begin_shutdown();
                    // Its steps stop now, not after the HTTP connections
                    // drain: it learns of the loss a quarter of a TTL before
                    // another node can be given its executions.
                    container.shutdown().await;
                }
            });
        }
        let started = async {
            let engines = container
                .restore()
                .await
                .context("cannot restore the engines recorded in the data dir")?;
            tracing::info!(engines = engines.len(), "engines restored");
            if let Some(archive) = &archive {
                let deployed = container
                    .deploy_archive(archive)
                    .await
                    .context("cannot deploy the container archive")?;
                tracing::info!(
                    archive = %format!("{}@{}", archive.manifest.name, archive.manifest.version),
                    engines = deployed.len(),
                    "container archive deployed"
                );
            }
            anyhow::Ok(())
        };
        let outcome = tokio::select! {
            r = started => r,
            () = state.shutting_down() => Ok(()),
        };
        if let Err(e) = outcome {
            state.begin_shutdown();
            let _ = server.await;
            container.shutdown().await;
            return Err(e);
        }
        // Engines other nodes add or remove start or stop here too.
        let follower = etcd.as_ref().map(|_| container.follow_engines());
        if !state.is_shutting_down() {
            state.set_ready(true);
            eprintln!("ready");
        }
        let sweeper = tokio::spawn(hooks::replay::sweep_periodically(
            container.store().clone(),
            self.webhook_dedup_window,
        ));
        let served = server.await.context("the HTTP server task failed");
        signal_task.abort();
        sweeper.abort();
        if let Some(follower) = follower {
            follower.abort();
        }
        container.shutdown().await;
        if let Some((registration, refresher)) = registered {
            refresher.abort();
            // Leave at once rather than after the TTL.
            if let Err(e) = registration.revoke().await {
                tracing::warn!(error = %e, "cannot revoke the node lease; it expires by itself");
            }
        }
        served?;
        eprintln!("stopped");
        if lost.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn init_tracing(color: crate::color::ColorChoice) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARKLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color.stderr())
        .try_init();
}

/// The whole HTTP surface of `arkline serve` over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(api::routes().0)
        .merge(ui::routes())
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(state)
}
