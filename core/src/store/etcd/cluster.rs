//! The nodes on one etcd prefix as a [`Cluster`]: membership is the list of
//! node registrations (`<prefix>/nodes/<id>`, each under its node's lease),
//! followed by a watch; each engine's leader is elected with etcd's election
//! API (`<prefix>/elections/<engine>`), campaigning with the node's lease, so
//! leadership ends with the lease: when the node dies, is cut off for longer
//! than its TTL, or revokes its lease on a clean stop.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use futures::StreamExt as _;
use tokio::sync::watch;

use super::{EtcdStore, NodeInfo, NodeRegistration};
use crate::store::cluster::{Cluster, Member, Membership};

/// The nodes registered on an etcd prefix, and this node's leaderships.
/// Background tasks stop when the cluster is dropped or the registration
/// is lost (leaderships then read `false`).
#[derive(Debug)]
pub struct EtcdCluster {
    store: EtcdStore,
    node: String,
    lease: i64,
    lost: watch::Receiver<bool>,
    members: watch::Sender<Option<Arc<Membership>>>,
    leaderships: Mutex<HashMap<String, watch::Sender<bool>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().unwrap_or_else(|p| p.into_inner()) {
            task.abort();
        }
    }
}

impl EtcdCluster {
    /// The cluster as `registration`'s node sees it. Starts following the
    /// registrations at once.
    pub fn new(store: &EtcdStore, registration: &NodeRegistration) -> Arc<Self> {
        let cluster = Arc::new(Self {
            store: store.clone(),
            node: registration.node().to_owned(),
            lease: registration.lease(),
            lost: registration.lost(),
            members: watch::Sender::new(None),
            leaderships: Mutex::default(),
            tasks: Mutex::default(),
        });
        let follow = tokio::spawn(follow_members(
            store.clone(),
            cluster.members.clone(),
            registration.lost(),
        ));
        cluster
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(follow);
        cluster
    }

    fn election(&self, engine: &str) -> String {
        format!("{}/elections/{engine}", self.store.options.prefix)
    }
}

impl Cluster for EtcdCluster {
    fn node(&self) -> &str {
        &self.node
    }

    fn members(&self) -> watch::Receiver<Option<Arc<Membership>>> {
        self.members.subscribe()
    }

    fn leadership(&self, engine: &str) -> watch::Receiver<bool> {
        let mut leaderships = self.leaderships.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(leads) = leaderships.get(engine) {
            return leads.subscribe();
        }
        let leads = watch::Sender::new(false);
        let task = tokio::spawn(campaign(
            self.store.clone(),
            self.election(engine),
            self.node.clone(),
            self.lease,
            leads.clone(),
            self.lost.clone(),
        ));
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(task);
        let receiver = leads.subscribe();
        leaderships.insert(engine.to_owned(), leads);
        receiver
    }
}

/// Campaigns in `election` until elected, then holds leadership until the
/// lease is lost. A campaign request ends at the store's request timeout
/// (etcd withdraws the candidacy then) and is simply made again.
async fn campaign(
    store: EtcdStore,
    election: String,
    node: String,
    lease: i64,
    leads: watch::Sender<bool>,
    mut lost: watch::Receiver<bool>,
) {
    let mut client = store.client.election_client();
    loop {
        if *lost.borrow() {
            leads.send_replace(false);
            return;
        }
        let attempt = tokio::select! {
            r = client.campaign(election.as_str(), node.as_str(), lease) => r,
            _ = lost.wait_for(|l| *l) => {
                leads.send_replace(false);
                return;
            }
        };
        match attempt {
            Ok(_) => break,
            Err(e) => {
                let timed_out = matches!(&e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Cancelled || s.code() == tonic::Code::DeadlineExceeded);
                if !timed_out {
                    tracing::debug!(election, error = %e, "campaign failed; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    tracing::info!(election, node, "this node leads the engine");
    leads.send_replace(true);
    let _ = lost.wait_for(|l| *l).await;
    leads.send_replace(false);
}

/// Lists the registrations, then follows them with a watch; relists after
/// any watch error. Stops once the registration is lost.
async fn follow_members(
    store: EtcdStore,
    members: watch::Sender<Option<Arc<Membership>>>,
    mut lost: watch::Receiver<bool>,
) {
    let prefix = format!("{}/nodes/", store.options.prefix);
    let mut failures = 0u32;
    loop {
        if *lost.borrow() {
            return;
        }
        if failures > 0 {
            let delay = Duration::from_millis(100 << failures.min(4));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = lost.wait_for(|l| *l) => return,
            }
        }
        let session = async {
            let listed = store
                .client
                .kv_client()
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await?;
            let revision = listed.header().map_or(0, |h| h.revision());
            let mut nodes = BTreeMap::new();
            for kv in listed.kvs() {
                if let Some(info) = read(kv.key(), kv.value()) {
                    nodes.insert(info.id.clone(), info);
                }
            }
            publish(&members, &nodes);
            let watch = store
                .client
                .watch_client()
                .watch(
                    prefix.as_str(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(revision + 1),
                    ),
                )
                .await?;
            // The sender lives as long as the stream: dropping it cancels the watch.
            let (_sender, mut events) = watch.split();
            while let Some(response) = events.next().await {
                let response = response?;
                if response.canceled() || response.compact_revision() > 0 {
                    break;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let id = String::from_utf8_lossy(kv.key())
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    match event.event_type() {
                        EventType::Put => {
                            if let Some(info) = read(kv.key(), kv.value()) {
                                nodes.insert(info.id.clone(), info);
                            }
                        }
                        EventType::Delete => {
                            nodes.remove(&id);
                        }
                    }
                }
                publish(&members, &nodes);
            }
            Ok::<(), etcd_client::Error>(())
        };
        tokio::select! {
            r = session => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "following the node registrations failed; listing them again");
                }
                failures = failures.saturating_add(1);
            }
            _ = lost.wait_for(|l| *l) => return,
        }
    }
}

/// A registration's value; `None` (logged) for keys that are not one.
fn read(key: &[u8], value: &[u8]) -> Option<NodeInfo> {
    if key.ends_with(b"/.sole") {
        return None;
    }
    match serde_json::from_slice(value) {
        Ok(info) => Some(info),
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "a node registration does not decode; it is left out");
            None
        }
    }
}

fn publish(members: &watch::Sender<Option<Arc<Membership>>>, nodes: &BTreeMap<String, NodeInfo>) {
    let membership = Membership {
        nodes: nodes
            .values()
            .map(|info| Member {
                id: info.id.clone(),
                capacity: Some(info.capacity),
                engines: Some(info.engines.clone()),
            })
            .collect(),
        complete: true,
    };
    members.send_if_modified(|current| {
        if current.as_deref() == Some(&membership) {
            return false;
        }
        *current = Some(Arc::new(membership));
        true
    });
}
