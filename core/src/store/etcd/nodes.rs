//! Node registration: each process serving engines on an etcd store keeps
//! `<prefix>/nodes/<id>` alive under an etcd lease, with what it can do and is
//! doing. The key disappears when the lease is revoked (graceful shutdown) or
//! expires (a node that died or lost the cluster for longer than the TTL),
//! so the list of keys is the list of live nodes, as etcd sees it.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::GetOptions;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{EtcdStore, etcd_error};
use crate::store::StoreError;

/// Default lease TTL of a node registration.
pub const DEFAULT_NODE_TTL: Duration = Duration::from_secs(10);

/// What a node says about itself in its registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id (its name in the container).
    pub id: String,
    /// The address other nodes reach its API at (e.g. `http://10.0.0.5:8740`).
    pub address: String,
    /// How many step instances it runs at once (the runtime's
    /// `max_instances`).
    pub capacity: u32,
    /// The engines it serves.
    pub engines: Vec<String>,
    /// The executions it drives now (refreshed at most every second).
    #[serde(default)]
    pub load: u32,
    /// When it registered (RFC 3339).
    pub started: String,
    /// The arkline version it runs.
    pub version: String,
}

/// A live registration. Its lease is kept alive in the background until
/// [`NodeRegistration::revoke`] (or drop, which leaves the lease to expire).
#[derive(Debug)]
pub struct NodeRegistration {
    store: EtcdStore,
    key: String,
    lease: i64,
    info: Arc<std::sync::Mutex<NodeInfo>>,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl EtcdStore {
    fn node_key(&self, id: &str) -> String {
        format!("{}/nodes/{id}", self.options.prefix)
    }

    /// Registers this node under a lease of `ttl` (whole seconds, at least
    /// 2) and keeps it alive. Fails when another live node holds the id, or,
    /// with `sole`, when any other node is registered (the prefix is then
    /// held by this node alone until its lease ends: without execution
    /// claims, two nodes would run the same executions).
    pub async fn register_node(
        &self,
        info: NodeInfo,
        ttl: Duration,
        sole: bool,
    ) -> Result<NodeRegistration, StoreError> {
        let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
        let key = self.node_key(&info.id);
        let mut lease_client = self.client.lease_client();
        let lease = lease_client
            .grant(ttl_secs, None)
            .await
            .map_err(etcd_error(&self.options, "grant the node lease"))?
            .id();
        let value = encode(&info)?;
        // Create only: a live node with the same id keeps its key.
        let sole_key = format!("{}/nodes/.sole", self.options.prefix);
        let leased = || Some(etcd_client::PutOptions::new().with_lease(lease));
        let mut when = vec![etcd_client::Compare::create_revision(
            key.clone(),
            etcd_client::CompareOp::Equal,
            0,
        )];
        let mut then = vec![etcd_client::TxnOp::put(key.clone(), value, leased())];
        if sole {
            when.push(etcd_client::Compare::create_revision(
                sole_key.clone(),
                etcd_client::CompareOp::Equal,
                0,
            ));
            then.push(etcd_client::TxnOp::put(
                sole_key.clone(),
                info.id.clone(),
                leased(),
            ));
        }
        let txn = etcd_client::Txn::new()
            .when(when)
            .and_then(then)
            .or_else([etcd_client::TxnOp::get(sole_key.clone(), None)]);
        let created = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(etcd_error(&self.options, "register the node"))?;
        if !created.succeeded() {
            let _ = lease_client.revoke(lease).await;
            let holder = created.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            });
            if let Some(holder) = holder.filter(|h| sole && *h != info.id) {
                return Err(StoreError::Refused {
                    location: format!(
                        "etcd {} prefix {}",
                        self.options.endpoints_text(),
                        self.options.prefix
                    ),
                    reason: format!(
                        "node {holder:?} serves this prefix: this version runs one node per prefix \
                         (several need execution claims, not built yet); stop that node, wait for its \
                         lease to end, or give this node another prefix"
                    ),
                });
            }
            return Err(StoreError::Refused {
                location: key,
                reason: format!(
                    "a live node already registered as {:?}: give this node another name, or wait for that one's lease to end",
                    info.id
                ),
            });
        }
        let (lost_tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(self.clone(), lease, ttl_secs, lost_tx));
        Ok(NodeRegistration {
            store: self.clone(),
            key,
            lease,
            info: Arc::new(std::sync::Mutex::new(info)),
            lost,
            keeper,
        })
    }

    /// The nodes registered now (live leases), ordered by id.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let prefix = format!("{}/nodes/", self.options.prefix);
        let response = self
            .client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_error(&self.options, "list the nodes"))?;
        response
            .kvs()
            .iter()
            .filter(|kv| !kv.key().ends_with(b"/.sole"))
            .map(|kv| {
                serde_json::from_slice(kv.value()).map_err(|source| StoreError::Conversion {
                    kind: "Node".into(),
                    name: String::from_utf8_lossy(kv.key()).into_owned(),
                    source,
                })
            })
            .collect()
    }
}

fn encode(info: &NodeInfo) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(info).map_err(|source| StoreError::Conversion {
        kind: "Node".into(),
        name: info.id.clone(),
        source,
    })
}

/// Sends a keep-alive every third of the TTL. Marks the registration lost
/// when the cluster says the lease is gone, or when no renewal sent in the
/// last three quarters of the TTL was answered: the cluster counts the TTL
/// from when it received the last renewal, which was after it was sent, so
/// this node knows it is gone (and stops its steps) a quarter of a TTL
/// before another node can be given its work.
async fn keep_alive(store: EtcdStore, lease: i64, ttl_secs: i64, lost: watch::Sender<bool>) {
    let ttl = Duration::from_secs(ttl_secs.unsigned_abs());
    let period = ttl / 3;
    let grace = ttl * 3 / 4;
    // The lease was granted just before: its TTL started no earlier than now.
    let mut renewed = tokio::time::Instant::now();
    let mut stream = None;
    loop {
        let sent = tokio::time::Instant::now();
        let attempt = tokio::time::timeout_at(renewed + grace, async {
            if stream.is_none() {
                stream = Some(store.client.lease_client().keep_alive(lease).await?);
            }
            let Some((keeper, responses)) = stream.as_mut() else {
                return Ok(None);
            };
            keeper.keep_alive().await?;
            responses.message().await
        })
        .await;
        match attempt {
            Err(_) => {
                tracing::error!(
                    lease,
                    "no lease renewal answered for three quarters of the TTL: this node counts as gone"
                );
                lost.send_replace(true);
                return;
            }
            Ok(Ok(Some(r))) if r.ttl() > 0 => renewed = sent,
            Ok(Ok(Some(_))) => {
                // TTL 0: the cluster no longer knows the lease.
                tracing::error!(
                    lease,
                    "the node's lease expired: this node is no longer registered"
                );
                lost.send_replace(true);
                return;
            }
            Ok(Ok(None) | Err(_)) => {
                // The stream ended or failed: open another one soon.
                stream = None;
                tokio::time::sleep(period.min(Duration::from_millis(500))).await;
                continue;
            }
        }
        tokio::time::sleep_until(sent + period).await;
    }
}

impl Drop for NodeRegistration {
    /// Stops renewing the lease, without revoking it: the registration ends
    /// when the lease expires, as if the node had died.
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Updates a registration from another task (see [`NodeRegistration::updater`]).
#[derive(Debug, Clone)]
pub struct NodeUpdater {
    store: EtcdStore,
    key: String,
    lease: i64,
    info: Arc<std::sync::Mutex<NodeInfo>>,
}

impl NodeRegistration {
    /// A handle that rewrites this registration (under its lease) from
    /// another task.
    pub fn updater(&self) -> NodeUpdater {
        NodeUpdater {
            store: self.store.clone(),
            key: self.key.clone(),
            lease: self.lease,
            info: self.info.clone(),
        }
    }

    /// Rewrites the registration (e.g. the engines served), under the same lease.
    pub async fn update(&self, change: impl FnOnce(&mut NodeInfo)) -> Result<(), StoreError> {
        self.updater().update(change).await
    }

    /// Fences every later write of `store` (and its clones) on this
    /// registration ([`EtcdStore::fence`]).
    pub fn fence(&self, store: &EtcdStore) {
        store.fence(self.key.clone(), self.lease);
    }

    /// The node's id.
    pub fn node(&self) -> String {
        self.info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .id
            .clone()
    }

    /// The lease id (for writes fenced on it).
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Becomes `true` once the lease is known lost (expired or unrenewable).
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Ends the registration now (graceful shutdown): the key is deleted.
    pub async fn revoke(self) -> Result<(), StoreError> {
        self.keeper.abort();
        self.store
            .client
            .lease_client()
            .revoke(self.lease)
            .await
            .map_err(etcd_error(&self.store.options, "revoke the node lease"))?;
        Ok(())
    }
}

impl NodeUpdater {
    /// Rewrites the registration, under its lease; refused once the lease is gone.
    pub async fn update(&self, change: impl FnOnce(&mut NodeInfo)) -> Result<(), StoreError> {
        let value = {
            let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut info);
            encode(&info)?
        };
        // Only while the key is still ours: a lost lease writes nothing.
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::lease(
                self.key.clone(),
                etcd_client::CompareOp::Equal,
                self.lease,
            )])
            .and_then([etcd_client::TxnOp::put(
                self.key.clone(),
                value,
                Some(etcd_client::PutOptions::new().with_lease(self.lease)),
            )]);
        let done = self
            .store
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(etcd_error(
                &self.store.options,
                "update the node registration",
            ))?;
        if done.succeeded() {
            Ok(())
        } else {
            Err(StoreError::Refused {
                location: self.key.clone(),
                reason: "the node's lease is gone; it is no longer registered".into(),
            })
        }
    }
}
