//! Admission: the engine's `executor_quota` and its FIFO queue.
//!
//! One task per engine follows the engine's executions and settings through
//! store watches, **in revision order**, and keeps the queue of `Queued`
//! executions in creation order and the set of admitted ones (`Pending` or
//! `Running`). Whenever there is room it admits the head of the queue: it picks a
//! node (cache affinity) and writes `Pending` with the `Admitted` condition. The
//! execution reconciler then starts the driver on that node. Admission decisions
//! are made by this one task, so two executions never race for the last slot,
//! and the order is the order in which executions were created, whatever order
//! their reconciles happen to run in.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::model::resources::set_condition;
use crate::model::{
    Condition, ConditionStatus, ConditionType, ExecutionPhase, Pipeline, PipelineExecution,
    PipelineSetting, Resource,
};
use crate::pipeline::core::{EngineCore, SETTINGS_NAME};
use crate::store::{Api, EventType, LabelSelector, StoreError};

/// Chooses where an execution runs: the most recent of the pipeline's
/// `recent_nodes` that has room (its cache is likely warm there), otherwise the
/// first candidate with room. Never pins: a recent node without room is passed
/// over. `None` when no candidate has room.
pub fn choose_node(recent: &[String], candidates: &[(String, bool)]) -> Option<String> {
    let has_room = |n: &str| candidates.iter().any(|(c, room)| c == n && *room);
    recent.iter().find(|n| has_room(n)).cloned().or_else(|| {
        candidates
            .iter()
            .find(|(_, room)| *room)
            .map(|(c, _)| c.clone())
    })
}

#[derive(Debug, Default)]
struct Queue {
    /// `(created, run, name)` of `Queued` executions.
    queued: BTreeSet<(DateTime<Utc>, u64, String)>,
    /// Names of admitted, unfinished executions.
    active: HashSet<String>,
    quota: Option<u64>,
}

impl Queue {
    fn observe(&mut self, exec: &PipelineExecution, deleted: bool) {
        let name = &exec.metadata.name;
        let key = (
            exec.metadata.created.unwrap_or_default(),
            exec.spec.run,
            name.clone(),
        );
        self.queued.remove(&key);
        self.active.remove(name);
        if deleted {
            return;
        }
        match exec.status.phase {
            ExecutionPhase::Queued if !exec.spec.abort => {
                self.queued.insert(key);
            }
            ExecutionPhase::Pending | ExecutionPhase::Running => {
                self.active.insert(name.clone());
            }
            _ => {}
        }
    }

    fn room(&self) -> bool {
        self.quota.is_none_or(|q| (self.active.len() as u64) < q)
    }
}

/// Runs the engine's admission until shutdown. Store errors are retried.
pub(crate) async fn run(core: Arc<EngineCore>) {
    let mut failures = 0u32;
    while !core.shutdown.is_cancelled() {
        if failures > 0 {
            let delay = std::time::Duration::from_millis(100 << failures.min(8));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = core.shutdown.cancelled() => return,
            }
        }
        match session(&core).await {
            Ok(()) => return,
            Err(e) if e.is_gone() => failures = 0,
            Err(e) => {
                tracing::warn!(engine = %core.name, error = %e, "admission lost its watch; relisting");
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// One list + watch session; returns `Ok` on shutdown.
async fn session(core: &Arc<EngineCore>) -> Result<(), StoreError> {
    let execs = Api::<PipelineExecution>::new(core.store.clone());
    let settings = Api::<PipelineSetting>::new(core.store.clone());
    let mut queue = Queue::default();
    let (items, revision) = execs
        .list(Some(&core.name), LabelSelector::default())
        .await?;
    for exec in &items {
        queue.observe(exec, false);
    }
    queue.quota = settings
        .get(&core.name, SETTINGS_NAME)
        .await?
        .and_then(|s| s.spec.quota());
    let exec_events = execs.watch(Some(&core.name), revision).await?;
    let setting_events = settings.watch(Some(&core.name), revision).await?;
    let mut exec_events = std::pin::pin!(exec_events);
    let mut setting_events = std::pin::pin!(setting_events);
    admit(core, &mut queue).await?;
    loop {
        tokio::select! {
            () = core.shutdown.cancelled() => return Ok(()),
            event = exec_events.next() => {
                let Some(event) = event else { return Err(StoreError::Gone { requested: 0, compacted: 0 }) };
                let event = event?;
                queue.observe(&event.object, event.event_type == EventType::Deleted);
                // Drain what is already there before admitting: fewer writes, same order.
                while let Some(Some(more)) = futures::FutureExt::now_or_never(exec_events.next()) {
                    let more = more?;
                    queue.observe(&more.object, more.event_type == EventType::Deleted);
                }
            }
            event = setting_events.next() => {
                let Some(event) = event else { return Err(StoreError::Gone { requested: 0, compacted: 0 }) };
                let event = event?;
                if event.object.meta().name == SETTINGS_NAME {
                    queue.quota = if event.event_type == EventType::Deleted {
                        None
                    } else {
                        event.object.spec.quota()
                    };
                }
            }
        }
        admit(core, &mut queue).await?;
    }
}

/// Admits queue heads while there is room.
async fn admit(core: &Arc<EngineCore>, queue: &mut Queue) -> Result<(), StoreError> {
    let execs = Api::<PipelineExecution>::new(core.store.clone());
    let pipelines = Api::<Pipeline>::new(core.store.clone());
    while queue.room() {
        let Some(head) = queue.queued.pop_first() else {
            return Ok(());
        };
        let name = head.2;
        // Re-read: the watch may lag behind an abort or a delete.
        loop {
            let Some(mut exec) = execs.get(&core.name, &name).await? else {
                break;
            };
            if exec.status.phase != ExecutionPhase::Queued {
                queue.observe(&exec, false);
                break;
            }
            if exec.spec.abort {
                break;
            }
            let recent = pipelines
                .get(&core.name, &exec.spec.pipeline)
                .await?
                .map(|p| p.status.recent_nodes)
                .unwrap_or_default();
            // One node today: this one. A multi-node store adds the others here.
            let node = choose_node(&recent, &[(core.node.clone(), true)])
                .unwrap_or_else(|| core.node.clone());
            let now = core.clock.now();
            exec.status.phase = ExecutionPhase::Pending;
            exec.status.node = Some(node.clone());
            set_condition(
                &mut exec.status.conditions,
                Condition {
                    kind: ConditionType::Admitted,
                    status: ConditionStatus::True,
                    reason: "QuotaAvailable".into(),
                    message: format!("admitted on node `{node}`"),
                    last_transition: Some(now),
                },
            );
            match execs.update_status(&exec).await {
                Ok(stored) => {
                    queue.observe(&stored, false);
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => break,
                Err(e) => {
                    // Put it back at its place before giving up this session.
                    queue.observe(&exec_queued(exec), false);
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn exec_queued(mut exec: PipelineExecution) -> PipelineExecution {
    exec.status.phase = ExecutionPhase::Queued;
    exec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn node_choice_prefers_recent_nodes_with_room_and_never_pins() {
        let candidates = vec![
            ("a".to_owned(), true),
            ("b".to_owned(), false),
            ("c".to_owned(), true),
        ];
        assert_eq!(choose_node(&s(&["c", "a"]), &candidates), Some("c".into()));
        assert_eq!(
            choose_node(&s(&["b", "a"]), &candidates),
            Some("a".into()),
            "a recent node without room is passed over"
        );
        assert_eq!(
            choose_node(&s(&["b", "z"]), &candidates),
            Some("a".into()),
            "falls back to any node with room"
        );
        assert_eq!(choose_node(&s(&[]), &candidates), Some("a".into()));
        assert_eq!(choose_node(&s(&["a"]), &[("a".into(), false)]), None);
    }
}
