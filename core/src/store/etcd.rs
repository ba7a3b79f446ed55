//! The etcd backend: the store Kubernetes itself runs on, for several arkline
//! nodes sharing one deployment.
//!
//! - Objects live under `<prefix>/<kind>/<engine>/<name>` (default prefix
//!   `/arkline`), as the JSON of a [`DynamicObject`] without its
//!   `resource_version`: that is the key's etcd `mod_revision`, filled in on
//!   every read, so the store's revision is etcd's.
//! - Every write is planned by the shared rules (`mutation::plan`)
//!   against the key as read, then committed by a transaction conditioned on
//!   the key's `mod_revision` being unchanged (0: still absent). A lost race
//!   re-reads and plans again, so a caller's own compare-and-swap is checked
//!   against the latest object, never a stale one.
//! - Watches are etcd watches on the kind's (or the kind-and-engine's) key
//!   prefix, filtered by the server, with the previous value for deletions.
//! - [`Store::compact`] is etcd's compaction (cluster-wide, as in Kubernetes);
//!   [`Retention`] drives it from the nodes' writes.
//! - The prefix is claimed by a marker key, `<prefix>/.arkline`: a prefix
//!   that holds other keys and no marker is refused, nothing written.
//!
//! etcd 3.4 or newer is required (checked at connect).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType as EtcdEventType, GetOptions, KeyValue,
    Txn, TxnOp, WatchOptions,
};
use futures::StreamExt as _;

use super::mutation::{self, Op, OpOutput, Persist};

mod cluster;
mod nodes;
use super::{
    DeleteOptions, DeleteOutcome, EventType, ListQuery, ObjectList, ObjectRef, Retention, Revision,
    Store, StoreError, WatchEvent, WatchStream,
};
use crate::model::DynamicObject;
pub use cluster::EtcdCluster;
pub use nodes::{DEFAULT_NODE_TTL, NodeInfo, NodeRegistration, NodeUpdater};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/arkline";

/// The marker key's value: who owns the prefix, and the layout version.
const MARKER_VALUE: &str = r#"{"owner":"arkline","layout":1}"#;

/// Keys read per page of a list.
const LIST_PAGE: i64 = 500;

/// Oldest etcd this backend speaks to (major, minor).
const MIN_VERSION: (u64, u64) = (3, 4);

/// TLS material for the etcd connection (PEM).
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// The CA certificate(s) that sign the etcd members' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate and key, for clusters that require them.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// How to reach and use an etcd cluster.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs of the members, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix every object lives under (no trailing `/`).
    pub prefix: String,
    /// How many revisions of history to keep (drives etcd compaction).
    pub retention: Retention,
    /// User name and password, for clusters with authentication on.
    pub user: Option<(String, String)>,
    /// TLS, for `https` endpoints.
    pub tls: Option<EtcdTls>,
    /// How long to wait for the cluster when connecting.
    pub connect_timeout: Duration,
    /// How long one request may take before it fails.
    pub request_timeout: Duration,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl EtcdOptions {
    /// Options for these client URLs, with the default prefix and retention.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            retention: Retention::default(),
            user: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
        }
    }

    /// Parses a store URL: `etcd://host:port[,host:port…][/prefix]`
    /// (`etcds://` for TLS). The prefix defaults to [`DEFAULT_PREFIX`].
    pub fn from_url(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("etcd://") {
            ("http", rest)
        } else if let Some(rest) = url.strip_prefix("etcds://") {
            ("https", rest)
        } else {
            return Err(format!(
                "`{url}` is not an etcd store URL: write etcd://host:port[,host:port…][/prefix] (etcds:// for TLS)"
            ));
        };
        let (hosts, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, DEFAULT_PREFIX),
        };
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(format!(
                "`{url}` names the root as key prefix: give one, e.g. {DEFAULT_PREFIX}"
            ));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(format!(
                    "`{host}` in `{url}` is not host:port: list the members as etcd://10.0.0.1:2379,10.0.0.2:2379"
                ));
            }
            endpoints.push(format!("{scheme}://{host}"));
        }
        let mut options = Self::new(endpoints);
        options.prefix = prefix.to_owned();
        if scheme == "https" {
            options.tls = Some(EtcdTls::default());
        }
        Ok(options)
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the retention.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The endpoints, comma-separated, for messages.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Revisions seen over time, to compact by age.
#[derive(Debug, Default)]
struct Compaction {
    /// (when, revision) samples, oldest first, at most one per second.
    samples: VecDeque<(chrono::DateTime<Utc>, Revision)>,
    /// The highest revision this handle compacted to (or found compacted).
    done: Revision,
    /// A compaction is under way.
    running: bool,
}

/// The etcd store. Cheap to clone (one connection, shared).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    options: Arc<EtcdOptions>,
    compaction: Arc<Mutex<Compaction>>,
    /// When set, every write is conditioned on this key still being held by
    /// this lease (the node's registration): see [`EtcdStore::fence`].
    fence: Arc<Mutex<Option<Fence>>>,
}

/// The condition of a fenced store's writes.
#[derive(Debug, Clone)]
struct Fence {
    key: String,
    lease: i64,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.options.endpoints)
            .field("prefix", &self.options.prefix)
            .finish_non_exhaustive()
    }
}

/// An etcd client error as a store error.
fn etcd_error<'a>(
    options: &'a EtcdOptions,
    operation: &'static str,
) -> impl FnOnce(etcd_client::Error) -> StoreError + 'a {
    move |e| StoreError::Etcd {
        operation,
        endpoints: options.endpoints_text(),
        cause: Box::new(e),
    }
}

impl EtcdStore {
    /// Connects to the cluster, checks its version and claims the prefix.
    ///
    /// Fails with [`StoreError::Etcd`] naming the endpoints when no member
    /// answers within the connect timeout, and with [`StoreError::Refused`]
    /// (nothing written) when etcd is older than 3.4 or the prefix holds keys
    /// arkline did not write.
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Refused {
                location: "etcd".into(),
                reason: "no endpoints given: list the members as etcd://host:port[,host:port…]"
                    .into(),
            });
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // A member cut off from its cluster's leader answers nothing: a
            // partitioned node must not read stale state or think it wrote.
            .with_require_leader(true);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &options.tls {
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(t);
        }
        let unreachable = |cause: Box<dyn std::error::Error + Send + Sync>| StoreError::Etcd {
            operation: "connect",
            endpoints: options.endpoints_text(),
            cause,
        };
        // `connect` itself may not touch the network; the status call does.
        let attempt = async {
            let mut client = Client::connect(&options.endpoints, Some(connect))
                .await
                .map_err(|e| unreachable(Box::new(e)))?;
            let status = client
                .status()
                .await
                .map_err(|e| unreachable(Box::new(e)))?;
            Ok::<_, StoreError>((client, status.version().to_owned()))
        };
        let (client, version) = tokio::time::timeout(options.connect_timeout * 2, attempt)
            .await
            .map_err(|_| {
                unreachable(
                    format!(
                        "no member answered within {:?}",
                        options.connect_timeout * 2
                    )
                    .into(),
                )
            })??;
        check_version(&options, &version)?;
        let store = Self {
            client,
            options: Arc::new(options),
            compaction: Arc::default(),
            fence: Arc::default(),
        };
        store.claim_prefix().await?;
        Ok(store)
    }

    /// Fences every later write of this store (and of its clones) on
    /// `key` still being held by `lease`: once the lease is gone (revoked, or
    /// expired while this node was cut off), writes fail with
    /// [`StoreError::Fenced`] and change nothing, so a node that lost its
    /// registration cannot overwrite what another node did since.
    pub fn fence(&self, key: impl Into<String>, lease: i64) {
        *self.fence.lock().unwrap_or_else(PoisonError::into_inner) = Some(Fence {
            key: key.into(),
            lease,
        });
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    /// The etcd client, for the parts of a node beside the store (leases,
    /// elections) to share the connection.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn marker_key(&self) -> String {
        format!("{}/.arkline", self.options.prefix)
    }

    /// Writes the marker when the prefix is empty; refuses a prefix that holds
    /// other keys and no marker, or a marker that is not arkline's.
    async fn claim_prefix(&self) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let marker = self.marker_key();
        let location = format!(
            "etcd {} prefix {}",
            self.options.endpoints_text(),
            self.options.prefix
        );
        let found = kv
            .get(marker.clone(), None)
            .await
            .map_err(etcd_error(&self.options, "read the prefix marker"))?;
        if let Some(existing) = found.kvs().first() {
            return check_marker(&location, existing.value());
        }
        let prefix = format!("{}/", self.options.prefix);
        let others = kv
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(etcd_error(&self.options, "count the keys under the prefix"))?;
        if others.count() > 0 {
            return Err(StoreError::Refused {
                location,
                reason: format!(
                    "the prefix holds {} keys that arkline did not write (no {marker} marker): \
                     choose another prefix (etcd://host:port/<prefix>) instead of sharing one",
                    others.count()
                ),
            });
        }
        // Create the marker only if both it and every other key are still absent.
        let txn = Txn::new()
            .when([Compare::create_revision(
                marker.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(marker.clone(), MARKER_VALUE, None)])
            .or_else([TxnOp::get(marker.clone(), None)]);
        let response = kv
            .txn(txn)
            .await
            .map_err(etcd_error(&self.options, "write the prefix marker"))?;
        if !response.succeeded() {
            // Another node claimed it first: check what it wrote.
            for op in response.op_responses() {
                if let etcd_client::TxnOpResponse::Get(get) = op
                    && let Some(existing) = get.kvs().first()
                {
                    return check_marker(&location, existing.value());
                }
            }
        }
        Ok(())
    }

    fn key(&self, key: &ObjectRef) -> String {
        format!("{}/{}", self.options.prefix, mutation::storage_key(key))
    }

    /// Reads one key: the object (with its `resource_version`) and its
    /// `mod_revision` (0 when absent).
    async fn read(&self, key: &ObjectRef) -> Result<(Option<DynamicObject>, i64), StoreError> {
        let etcd_key = self.key(key);
        let response = self
            .retry("read an object", || {
                let (mut kv, key) = (self.client.kv_client(), etcd_key.clone());
                async move { kv.get(key, None).await }
            })
            .await?;
        match response.kvs().first() {
            None => Ok((None, 0)),
            Some(kv) => Ok((Some(self.decode(kv)?), kv.mod_revision())),
        }
    }

    fn decode(&self, kv: &KeyValue) -> Result<DynamicObject, StoreError> {
        decode_at(kv, kv.mod_revision())
    }

    /// Plans `op` against the key as stored and commits it, re-planning after
    /// a lost race.
    async fn apply(&self, op: Op) -> Result<OpOutput, StoreError> {
        let key = op.key();
        mutation::validate_key(&key)?;
        let etcd_key = self.key(&key);
        let (mut current, mut mod_revision) = self.read(&key).await?;
        loop {
            let change = mutation::plan(op.clone(), current, 0, Utc::now())?;
            let put = match change.persist {
                Persist::Nothing => return Ok(change.output),
                Persist::Put(_) => {
                    let mut stored = change.object().clone();
                    stored.metadata.resource_version = 0;
                    let json =
                        serde_json::to_vec(&stored).map_err(|source| StoreError::Conversion {
                            kind: key.kind.clone(),
                            name: key.name.clone(),
                            source,
                        })?;
                    TxnOp::put(etcd_key.clone(), json, None)
                }
                Persist::Remove => TxnOp::delete(etcd_key.clone(), None),
            };
            let fence = self
                .fence
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let mut when = vec![Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                mod_revision,
            )];
            let mut otherwise = vec![TxnOp::get(etcd_key.clone(), None)];
            if let Some(fence) = &fence {
                when.push(Compare::lease(
                    fence.key.clone(),
                    CompareOp::Equal,
                    fence.lease,
                ));
                otherwise.push(TxnOp::get(fence.key.clone(), None));
            }
            let txn = Txn::new().when(when).and_then([put]).or_else(otherwise);
            let response = self
                .retry("commit a write", || {
                    let (mut kv, txn) = (self.client.kv_client(), txn.clone());
                    async move { kv.txn(txn).await }
                })
                .await?;
            if response.succeeded() {
                let revision = response
                    .header()
                    .map_or(0, |h| h.revision())
                    .max(0)
                    .unsigned_abs();
                self.after_write(revision);
                return Ok(with_revision(change.output, revision));
            }
            // Fenced off, or lost the race: then plan again against what is
            // there now.
            let mut reads = response.op_responses().into_iter().map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            });
            let object = reads.next().flatten();
            if let Some(fence) = &fence {
                let held = reads.next().flatten();
                if held.is_none_or(|kv| kv.lease() != fence.lease) {
                    return Err(StoreError::Fenced {
                        holder: fence.key.clone(),
                    });
                }
            }
            (current, mod_revision) = (None, 0);
            if let Some(kv) = object {
                current = Some(self.decode(&kv)?);
                mod_revision = kv.mod_revision();
            }
        }
    }

    /// Records the head and starts a retention compaction when one is due.
    fn after_write(&self, head: Revision) {
        let retention = &self.options.retention;
        let now = Utc::now();
        let mut target = retention.count_target(head);
        let mut state = self
            .compaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if retention.max_age.is_some() {
            if state
                .samples
                .back()
                .is_none_or(|(at, _)| (now - *at).num_seconds() >= 1)
            {
                state.samples.push_back((now, head));
            }
            if let Some(cutoff) = retention.age_cutoff(now) {
                while let Some(&(at, revision)) = state.samples.front() {
                    if at >= cutoff {
                        break;
                    }
                    target = target.max(revision);
                    state.samples.pop_front();
                }
            }
        }
        // Compact in steps of at least a thousand revisions, not after every write.
        if state.running || target < state.done + 1000.min(retention.max_revisions.unwrap_or(1000))
        {
            return;
        }
        state.running = true;
        drop(state);
        let store = self.clone();
        tokio::spawn(async move {
            let result = store.compact_to(target).await;
            let mut state = store
                .compaction
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.running = false;
            match result {
                Ok(()) => state.done = state.done.max(target),
                Err(e) => tracing::warn!(error = %e, target, "etcd compaction by retention failed"),
            }
        });
    }

    /// Compacts etcd's history to `revision` (already compacted is not an error).
    async fn compact_to(&self, revision: Revision) -> Result<(), StoreError> {
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        match self.client.kv_client().compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("compacted") => Ok(()),
            Err(e) => Err(etcd_error(&self.options, "compact")(e)),
        }
    }

    /// The revision etcd has compacted to: a watch from revision 1 of the
    /// marker key answers either with the compaction revision or with the
    /// marker's creation (nothing compacted).
    async fn etcd_compacted(&self) -> Result<Revision, StoreError> {
        let mut stream = self
            .retry("read the compaction revision", || {
                let (mut watch, key) = (self.client.watch_client(), self.marker_key());
                async move {
                    watch
                        .watch(key, Some(WatchOptions::new().with_start_revision(1)))
                        .await
                }
            })
            .await?;
        loop {
            let Some(response) = stream
                .message()
                .await
                .map_err(etcd_error(&self.options, "read the compaction revision"))?
            else {
                return Err(StoreError::Etcd {
                    operation: "read the compaction revision",
                    endpoints: self.options.endpoints_text(),
                    cause: "the watch ended without an answer".into(),
                });
            };
            if response.compact_revision() > 0 {
                return Ok(response.compact_revision().unsigned_abs());
            }
            if !response.events().is_empty() {
                let _ = stream.cancel(response.watch_id()).await;
                return Ok(0);
            }
        }
    }

    /// Runs a request, again while the cluster answers "unavailable" (a
    /// member down, the client not yet moved to another), within the request
    /// timeout. Such a request did not reach a member, so a retried write
    /// applies at most once (and every write is conditioned anyway).
    async fn retry<T, Fut>(
        &self,
        operation: &'static str,
        mut request: impl FnMut() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.options.request_timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            match request().await {
                Ok(v) => return Ok(v),
                Err(e) if unavailable(&e) && tokio::time::Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(etcd_error(&self.options, operation)(e)),
            }
        }
    }

    /// `Gone` when events after `from` were compacted. A read at revision
    /// `from` fails exactly then, and answers at once; the compaction
    /// revision itself (a watch from revision 1, which etcd answers only when
    /// it next syncs its lagging watchers, up to 100 ms later) is read only
    /// for the error, or for `from == 0`.
    async fn check_not_compacted(&self, from: Revision) -> Result<(), StoreError> {
        let gone = |compacted| StoreError::Gone {
            requested: from,
            compacted,
        };
        if from == 0 {
            let compacted = self.etcd_compacted().await?;
            return if compacted > 0 {
                Err(gone(compacted))
            } else {
                Ok(())
            };
        }
        let at = i64::try_from(from).unwrap_or(i64::MAX);
        let read = self
            .retry("check the watch start against compaction", || {
                let (mut kv, key) = (self.client.kv_client(), self.marker_key());
                async move {
                    kv.get(
                        key,
                        Some(GetOptions::new().with_revision(at).with_count_only()),
                    )
                    .await
                }
            })
            .await;
        match read {
            Ok(_) => Ok(()),
            Err(StoreError::Etcd { cause, .. })
                if cause.to_string().contains("future revision") =>
            {
                Ok(())
            }
            Err(StoreError::Etcd { cause, .. })
                if cause.to_string().contains("has been compacted") =>
            {
                Err(gone(self.etcd_compacted().await?))
            }
            Err(e) => Err(e),
        }
    }

    fn watch_prefix(&self, kind: &str, engine: Option<&str>) -> String {
        match engine {
            Some(engine) => format!("{}/{kind}/{engine}/", self.options.prefix),
            None => format!("{}/{kind}/", self.options.prefix),
        }
    }
}

/// Whether a request failed without reaching a member (connection refused or
/// reset, no leader yet): worth sending again.
fn unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.code() == tonic::Code::Unavailable,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Refuses a marker that is not arkline's.
fn check_marker(location: &str, value: &[u8]) -> Result<(), StoreError> {
    #[derive(serde::Deserialize)]
    struct Marker {
        owner: String,
        layout: u32,
    }
    match serde_json::from_slice::<Marker>(value) {
        Ok(m) if m.owner == "arkline" && m.layout == 1 => Ok(()),
        Ok(m) if m.owner == "arkline" => Err(StoreError::Refused {
            location: location.to_owned(),
            reason: format!(
                "the prefix was written with key layout {}, this arkline knows layout 1: upgrade arkline",
                m.layout
            ),
        }),
        _ => Err(StoreError::Refused {
            location: location.to_owned(),
            reason: format!(
                "the prefix marker holds {:?}, not arkline's: the prefix belongs to something else; choose another",
                String::from_utf8_lossy(value)
            ),
        }),
    }
}

/// Refuses an etcd older than [`MIN_VERSION`].
fn check_version(options: &EtcdOptions, version: &str) -> Result<(), StoreError> {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    let found = (parts.next().flatten(), parts.next().flatten());
    match found {
        (Some(major), Some(minor)) if (major, minor) >= MIN_VERSION => Ok(()),
        _ => Err(StoreError::Refused {
            location: format!("etcd {}", options.endpoints_text()),
            reason: format!(
                "the cluster runs etcd {version:?}; arkline needs etcd {}.{} or newer: upgrade the cluster",
                MIN_VERSION.0, MIN_VERSION.1
            ),
        }),
    }
}

/// Decodes a stored object, setting its `resource_version`.
fn decode_at(kv: &KeyValue, revision: i64) -> Result<DynamicObject, StoreError> {
    let mut obj: DynamicObject =
        serde_json::from_slice(kv.value()).map_err(|source| StoreError::Conversion {
            kind: String::from_utf8_lossy(kv.key()).into_owned(),
            name: String::new(),
            source,
        })?;
    obj.metadata.resource_version = revision.max(0).unsigned_abs();
    Ok(obj)
}

/// Sets the revision of the write on the object a write answers with.
fn with_revision(output: OpOutput, revision: Revision) -> OpOutput {
    match output {
        OpOutput::Object(mut o) => {
            o.metadata.resource_version = revision;
            OpOutput::Object(o)
        }
        OpOutput::Meta(mut m) => {
            m.resource_version = revision;
            OpOutput::Meta(m)
        }
        OpOutput::Delete(DeleteOutcome::Deleted(mut o)) => {
            o.metadata.resource_version = revision;
            OpOutput::Delete(DeleteOutcome::Deleted(o))
        }
        OpOutput::Delete(DeleteOutcome::Pending(mut o)) => {
            o.metadata.resource_version = revision;
            OpOutput::Delete(DeleteOutcome::Pending(o))
        }
    }
}

fn to_revision(revision: i64) -> Revision {
    revision.max(0).unsigned_abs()
}

#[async_trait]
impl Store for EtcdStore {
    async fn revision(&self) -> Result<Revision, StoreError> {
        let response = self
            .retry("read the revision", || {
                let (mut kv, key) = (self.client.kv_client(), self.marker_key());
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(to_revision(response.header().map_or(0, |h| h.revision())))
    }

    async fn get(&self, key: &ObjectRef) -> Result<Option<DynamicObject>, StoreError> {
        Ok(self.read(key).await?.0)
    }

    async fn list(&self, query: &ListQuery) -> Result<ObjectList, StoreError> {
        let (from, to) = mutation::storage_range(query);
        let prefix = &self.options.prefix;
        let (mut from, to) = (format!("{prefix}/{from}"), format!("{prefix}/{to}"));
        let kv = self.client.kv_client();
        let mut items = Vec::new();
        // Pages read at the first page's revision: one consistent snapshot.
        let mut at = 0i64;
        loop {
            let mut options = GetOptions::new()
                .with_range(to.clone())
                .with_limit(LIST_PAGE);
            if at > 0 {
                options = options.with_revision(at);
            }
            let response = self
                .retry("list objects", || {
                    let (mut kv, from, options) = (kv.clone(), from.clone(), options.clone());
                    async move { kv.get(from, Some(options)).await }
                })
                .await?;
            if at == 0 {
                at = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                let obj = self.decode(kv)?;
                if query.matches(&obj) {
                    items.push(obj);
                }
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    let mut next = last.key().to_vec();
                    next.push(0);
                    from = String::from_utf8(next).map_err(|_| StoreError::Invalid {
                        kind: query.kind.clone(),
                        name: String::new(),
                        reason: "a stored key is not UTF-8".into(),
                    })?;
                }
                _ => break,
            }
        }
        mutation::sort_items(&mut items, query);
        Ok(ObjectList {
            items,
            revision: to_revision(at),
        })
    }

    async fn create(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.apply(Op::Create(obj)).await.map(OpOutput::into_object)
    }

    async fn update(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.apply(Op::Update(obj)).await.map(OpOutput::into_object)
    }

    async fn update_status(&self, obj: DynamicObject) -> Result<DynamicObject, StoreError> {
        self.apply(Op::UpdateStatus(obj))
            .await
            .map(OpOutput::into_object)
    }

    async fn delete(
        &self,
        key: &ObjectRef,
        options: &DeleteOptions,
    ) -> Result<DeleteOutcome, StoreError> {
        self.apply(Op::Delete(key.clone(), options.clone()))
            .await
            .map(OpOutput::into_delete)
    }

    async fn watch(
        &self,
        kind: &str,
        engine: Option<&str>,
        from_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        self.check_not_compacted(from_revision).await?;
        let start = i64::try_from(from_revision.saturating_add(1)).unwrap_or(i64::MAX);
        let prefix = self.watch_prefix(kind, engine);
        let stream = self
            .retry("watch", || {
                let (mut watch, prefix) = (self.client.watch_client(), prefix.clone());
                async move {
                    let options = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(start)
                        .with_prev_key();
                    watch.watch(prefix, Some(options)).await
                }
            })
            .await?;
        let (sender, responses) = stream.split();
        let options = self.options.clone();
        struct State {
            // Dropping the sender cancels the watch: it lives as long as the stream.
            _sender: etcd_client::WatchRequestSender,
            responses: etcd_client::WatchResponseStream,
            buffer: VecDeque<WatchEvent>,
            from: Revision,
            done: bool,
            options: Arc<EtcdOptions>,
        }
        let state = State {
            _sender: sender,
            responses,
            buffer: VecDeque::new(),
            from: from_revision,
            done: false,
            options,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut s| async move {
                loop {
                    if let Some(event) = s.buffer.pop_front() {
                        s.from = event.revision;
                        return Some((Ok(event), s));
                    }
                    if s.done {
                        return None;
                    }
                    let response = match s.responses.next().await {
                        None => return None,
                        Some(Err(e)) => {
                            s.done = true;
                            return Some((Err(etcd_error(&s.options, "watch")(e)), s));
                        }
                        Some(Ok(response)) => response,
                    };
                    if response.compact_revision() > 0 {
                        s.done = true;
                        let compacted = to_revision(response.compact_revision());
                        let gone = StoreError::Gone {
                            requested: s.from,
                            compacted,
                        };
                        return Some((Err(gone), s));
                    }
                    if response.canceled() {
                        s.done = true;
                        let reason = response.cancel_reason().to_owned();
                        return Some((
                            Err(StoreError::Etcd {
                                operation: "watch",
                                endpoints: s.options.endpoints_text(),
                                cause: format!("the cluster cancelled the watch: {reason}").into(),
                            }),
                            s,
                        ));
                    }
                    for event in response.events() {
                        let decoded = match (event.event_type(), event.kv()) {
                            (EtcdEventType::Put, Some(kv)) => {
                                decode_at(kv, kv.mod_revision()).map(|o| {
                                    let event_type = if kv.version() == 1 {
                                        EventType::Added
                                    } else {
                                        EventType::Modified
                                    };
                                    WatchEvent {
                                        event_type,
                                        revision: to_revision(kv.mod_revision()),
                                        object: o,
                                    }
                                })
                            }
                            (EtcdEventType::Delete, Some(kv)) => match event.prev_kv() {
                                Some(prev) => {
                                    decode_at(prev, kv.mod_revision()).map(|o| WatchEvent {
                                        event_type: EventType::Deleted,
                                        revision: to_revision(kv.mod_revision()),
                                        object: o,
                                    })
                                }
                                // The previous value was compacted away: nothing to report.
                                None => continue,
                            },
                            _ => continue,
                        };
                        match decoded {
                            Ok(e) => s.buffer.push_back(e),
                            Err(e) => {
                                s.done = true;
                                s.buffer.clear();
                                return Some((Err(e), s));
                            }
                        }
                    }
                }
            },
        )))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let head = self.revision().await?;
        let target = revision.min(head);
        if target <= self.compacted_revision().await? {
            return Ok(());
        }
        self.compact_to(target).await?;
        let mut state = self
            .compaction
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.done = state.done.max(target);
        Ok(())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.etcd_compacted().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_3_4_are_refused_with_what_to_do() {
        let options = EtcdOptions::new(["http://127.0.0.1:2379"]);
        for ok in ["3.4.23", "3.5.0", "3.6.1", "4.0.0"] {
            assert!(check_version(&options, ok).is_ok(), "{ok}");
        }
        for old in ["3.3.27", "3.2.0", "2.3.8", "", "garbage"] {
            let err = check_version(&options, old).unwrap_err().to_string();
            assert!(err.contains("needs etcd 3.4 or newer"), "{old}: {err}");
            assert!(err.contains("http://127.0.0.1:2379"), "{old}: {err}");
        }
    }

    #[test]
    fn store_urls_name_members_and_an_optional_prefix() {
        let o = EtcdOptions::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap();
        assert_eq!(
            o.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(o.prefix, DEFAULT_PREFIX);
        assert!(o.tls.is_none());
        let o = EtcdOptions::from_url("etcds://etcd.internal:2379/ci/prod/").unwrap();
        assert_eq!(o.endpoints, ["https://etcd.internal:2379"]);
        assert_eq!(o.prefix, "/ci/prod");
        assert!(o.tls.is_some());
        for (bad, needle) in [
            ("http://10.0.0.1:2379", "not an etcd store URL"),
            ("etcd://10.0.0.1", "is not host:port"),
            ("etcd://10.0.0.1:0", "is not host:port"),
            ("etcd://:2379", "is not host:port"),
            ("etcd://10.0.0.1:2379/", "names the root"),
        ] {
            let err = EtcdOptions::from_url(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn a_marker_that_is_not_arklines_is_refused() {
        assert!(check_marker("x", MARKER_VALUE.as_bytes()).is_ok());
        let err = check_marker("x", br#"{"owner":"arkline","layout":2}"#).unwrap_err();
        assert!(err.to_string().contains("layout 2"), "{err}");
        let err = check_marker("x", b"someone else's").unwrap_err();
        assert!(
            err.to_string().contains("belongs to something else"),
            "{err}"
        );
    }
}
