//! The nodes that share a store, and which of them leads each engine.
//!
//! Every node runs every engine it serves, but some of an engine's work must
//! happen on exactly one node at a time: admission (the quota queue, and
//! where each execution runs), cron triggers, the pipeline status and
//! retention. A [`Cluster`] says which nodes are alive and whether this node
//! leads an engine. [`SoloCluster`] is one node alone (the embedded redb
//! store, or any store no other node shares); with the `etcd` feature,
//! `EtcdCluster` follows the nodes registered under their leases and elects
//! a leader per engine with etcd's election API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// A live node, as admission sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node's id.
    pub id: String,
    /// Most executions it is given at once per engine (`None`: no limit
    /// besides the engine's quota).
    pub capacity: Option<u32>,
    /// The engines it serves (`None`: every engine).
    pub engines: Option<Vec<String>>,
}

impl Member {
    /// Whether this node serves `engine`.
    pub fn serves(&self, engine: &str) -> bool {
        self.engines
            .as_ref()
            .is_none_or(|e| e.iter().any(|n| n == engine))
    }
}

/// The live nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    /// The nodes known to be alive, ordered by id.
    pub nodes: Vec<Member>,
    /// The list is the whole truth: a node not in it is gone, and the
    /// executions it was running are admitted again elsewhere. `false` for a
    /// node that sees only itself ([`SoloCluster`]): another node's
    /// executions are then left alone (it may be alive and share the store).
    pub complete: bool,
}

impl Membership {
    /// Whether `node` is known to be gone.
    pub fn is_gone(&self, node: &str) -> bool {
        self.complete && !self.nodes.iter().any(|m| m.id == node)
    }
}

/// The nodes that share this node's store, and the leader of each engine.
pub trait Cluster: Send + Sync + std::fmt::Debug + 'static {
    /// This node's id.
    fn node(&self) -> &str;

    /// The live nodes, as they change; `None` until first known.
    fn members(&self) -> watch::Receiver<Option<Arc<Membership>>>;

    /// Whether this node leads `engine` (runs its admission, cron triggers,
    /// pipeline status and retention), as it changes. Asking the first time
    /// enters this node in the engine's election.
    fn leadership(&self, engine: &str) -> watch::Receiver<bool>;
}

/// One node alone: it is the only member and leads every engine.
#[derive(Debug)]
pub struct SoloCluster {
    node: String,
    members: watch::Sender<Option<Arc<Membership>>>,
    leader: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl SoloCluster {
    /// The cluster of `node` alone.
    pub fn new(node: impl Into<String>) -> Self {
        let node = node.into();
        let membership = Membership {
            nodes: vec![Member {
                id: node.clone(),
                capacity: None,
                engines: None,
            }],
            complete: false,
        };
        Self {
            node,
            members: watch::Sender::new(Some(Arc::new(membership))),
            leader: Mutex::default(),
        }
    }
}

impl Cluster for SoloCluster {
    fn node(&self) -> &str {
        &self.node
    }

    fn members(&self) -> watch::Receiver<Option<Arc<Membership>>> {
        self.members.subscribe()
    }

    fn leadership(&self, engine: &str) -> watch::Receiver<bool> {
        let mut leader = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        leader
            .entry(engine.to_owned())
            .or_insert_with(|| watch::Sender::new(true))
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solo_node_leads_everything_and_declares_no_one_gone() {
        let solo = SoloCluster::new("a");
        assert!(*solo.leadership("eng").borrow());
        let members = solo.members().borrow().clone().expect("known at once");
        assert_eq!(members.nodes.len(), 1);
        assert!(members.nodes[0].serves("anything"));
        assert!(!members.is_gone("b"), "another node may share the store");
        let complete = Membership {
            complete: true,
            ..(*members).clone()
        };
        assert!(complete.is_gone("b"));
        assert!(!complete.is_gone("a"));
    }
}
