//! Admission: the engine's `executor_quota` and its FIFO queue.
//!
//! One task per engine follows the engine's executions and settings through
//! [watchers](mod@crate::store::watcher), **in revision order**, and keeps the queue of `Queued`
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

use crate::model::Resource;
use crate::model::resources::set_condition;
use crate::model::{
    Condition, ConditionStatus, ConditionType, ExecutionPhase, Pipeline, PipelineExecution,
    PipelineSetting,
};
use crate::pipeline::ExecutionView;
use crate::pipeline::context::{EngineCore, SETTINGS_NAME};
use crate::store::watcher::{self, Event};
use crate::store::{Api, EncodedObject, StoreError};

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
    /// The last state seen of each queued execution (what admission writes from).
    last: std::collections::HashMap<String, PipelineExecution>,
}

/// What admission reads of every execution event: most are status writes of
/// running executions, decoded no further than this.
#[derive(Debug)]
struct Seen {
    name: String,
    created: DateTime<Utc>,
    run: u64,
    phase: ExecutionPhase,
    abort: bool,
}

impl Seen {
    fn of(exec: &PipelineExecution) -> Self {
        Seen {
            name: exec.metadata.name.clone(),
            created: exec.metadata.created.unwrap_or_default(),
            run: exec.spec.run,
            phase: exec.status.phase,
            abort: exec.spec.abort,
        }
    }

    fn from_view(view: ExecutionView) -> Self {
        Seen {
            name: view.metadata.name,
            created: view.metadata.created.unwrap_or_default(),
            run: view.spec.run,
            phase: view.status.phase,
            abort: view.spec.abort,
        }
    }

    /// Whether admission keeps the whole execution (it writes from it).
    fn queued(&self) -> bool {
        self.phase == ExecutionPhase::Queued && !self.abort
    }
}

impl Queue {
    /// `whole` is the execution itself when `seen` is queued (admission writes
    /// from it); without it a queued execution is left out.
    fn observe(&mut self, seen: Seen, whole: Option<PipelineExecution>, deleted: bool) {
        let key = (seen.created, seen.run, seen.name);
        self.queued.remove(&key);
        self.active.remove(&key.2);
        self.last.remove(&key.2);
        if deleted {
            return;
        }
        match seen.phase {
            ExecutionPhase::Queued if !seen.abort => {
                if let Some(whole) = whole {
                    self.last.insert(key.2.clone(), whole);
                    self.queued.insert(key);
                }
            }
            ExecutionPhase::Pending | ExecutionPhase::Running => {
                self.active.insert(key.2);
            }
            _ => {}
        }
    }

    /// As [`Queue::observe`], from a whole execution.
    fn observe_whole(&mut self, exec: &PipelineExecution) {
        let seen = Seen::of(exec);
        let whole = seen.queued().then(|| exec.clone());
        self.observe(seen, whole, false);
    }

    fn seen(&self, name: &str) -> Option<PipelineExecution> {
        self.last.get(name).cloned()
    }
}

/// Reads an execution event's object: its view, and the whole execution only
/// when it is queued. `None` (logged) when it does not decode: an execution
/// that does not convert is left out of the queue.
fn read_event(obj: EncodedObject, engine: &str) -> Option<(Seen, Option<PipelineExecution>)> {
    let seen = match obj.view::<ExecutionView>() {
        Ok(view) => Seen::from_view(view),
        Err(e) => {
            tracing::warn!(engine, error = %e, "admission cannot read an execution; it is left out of the queue");
            return None;
        }
    };
    if !seen.queued() {
        return Some((seen, None));
    }
    match obj.decode::<PipelineExecution>() {
        Ok(whole) => Some((seen, Some(whole))),
        Err(e) => {
            tracing::warn!(engine, error = %e, "admission cannot read an execution; it is left out of the queue");
            Some((seen, None))
        }
    }
}

/// Runs the engine's admission until shutdown. A failed admission write starts
/// a new session from fresh lists after a backoff.
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
            Err(e) => {
                tracing::warn!(engine = %core.name, error = %e, "admission failed to write; relisting");
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// The engine's quota as followed by the settings watcher.
#[derive(Debug, Default)]
struct QuotaView {
    /// `Some` once the first list is complete; `Err` while the settings named
    /// `default` do not convert (admission waits rather than admit without a quota).
    current: Option<Result<Option<u64>, ()>>,
    /// While a list is read: what it found so far.
    listing: Option<Result<Option<u64>, ()>>,
}

impl QuotaView {
    fn observe(&mut self, item: Result<Event<PipelineSetting>, StoreError>, engine: &str) {
        let is_default = |s: &PipelineSetting| s.metadata.name == SETTINGS_NAME;
        match item {
            Ok(Event::Init) => self.listing = Some(Ok(None)),
            Ok(Event::InitApply(s)) if is_default(&s) => self.listing = Some(Ok(s.spec.quota())),
            Ok(Event::InitDone { .. }) => {
                self.current = Some(self.listing.take().unwrap_or(Ok(None)))
            }
            Ok(Event::Apply(s)) if is_default(&s) => self.current = Some(Ok(s.spec.quota())),
            Ok(Event::Delete(s)) if is_default(&s) => self.current = Some(Ok(None)),
            Ok(_) => {}
            Err(e) if matches!(&e, StoreError::Conversion { name, .. } if name == SETTINGS_NAME) => {
                tracing::warn!(engine, error = %e, "the engine's settings are unreadable; admission waits until they are fixed");
                match &mut self.listing {
                    Some(listed) => *listed = Err(()),
                    None => self.current = Some(Err(())),
                }
            }
            Err(e) => tracing::warn!(engine, error = %e, "admission's settings watch failed"),
        }
    }
}

/// The queue as followed by the executions watcher: a list (after a relist,
/// e.g. past a compaction) rebuilds it from the listed executions.
#[derive(Debug, Default)]
struct QueueView {
    queue: Queue,
    /// While a list is read: the queue it becomes.
    listing: Option<Queue>,
    synced: bool,
}

impl QueueView {
    fn observe(&mut self, item: Result<Event<EncodedObject>, StoreError>, engine: &str) {
        match item {
            Ok(Event::Init) => self.listing = Some(Queue::default()),
            Ok(Event::InitApply(obj)) => {
                if let Some((seen, whole)) = read_event(obj, engine) {
                    match &mut self.listing {
                        Some(listing) => listing.observe(seen, whole, false),
                        None => self.queue.observe(seen, whole, false),
                    }
                }
            }
            Ok(Event::InitDone { .. }) => {
                if let Some(listed) = self.listing.take() {
                    self.queue = listed;
                }
                self.synced = true;
            }
            Ok(Event::Apply(obj)) => {
                if let Some((seen, whole)) = read_event(obj, engine) {
                    self.queue.observe(seen, whole, false);
                }
            }
            Ok(Event::Delete(obj)) => {
                if let Some((seen, _)) = read_event(obj, engine) {
                    self.queue.observe(seen, None, true);
                }
            }
            Err(e) => tracing::warn!(engine, error = %e, "admission's executions watch failed"),
        }
    }

    /// The queue, once it reflects a complete list.
    fn ready(&mut self) -> Option<&mut Queue> {
        (self.synced && self.listing.is_none()).then_some(&mut self.queue)
    }
}

/// One session over watchers of the engine's executions and settings; returns
/// `Ok` on shutdown, `Err` when an admission write failed.
async fn session(core: &Arc<EngineCore>) -> Result<(), StoreError> {
    // Objects as stored: most events are viewed, not decoded (`read_event`).
    let execs = watcher::encoded_watcher(
        core.store.clone(),
        PipelineExecution::KIND,
        Some(&core.name),
        watcher::Config::default(),
    );
    let settings = Api::<PipelineSetting>::new(core.store.clone())
        .watcher(Some(&core.name), watcher::Config::default());
    let mut exec_events = std::pin::pin!(execs);
    let mut setting_events = std::pin::pin!(settings);
    let mut queue = QueueView::default();
    let mut quota = QuotaView::default();
    loop {
        tokio::select! {
            () = core.shutdown.cancelled() => return Ok(()),
            Some(item) = exec_events.next() => {
                queue.observe(item, &core.name);
                // Drain what is already there before admitting: fewer writes, same order.
                while let Some(Some(more)) = futures::FutureExt::now_or_never(exec_events.next()) {
                    queue.observe(more, &core.name);
                }
            }
            Some(item) = setting_events.next() => quota.observe(item, &core.name),
        }
        if let (Some(queue), Some(Ok(quota))) = (queue.ready(), quota.current) {
            queue.quota = quota;
            admit(core, queue).await?;
        }
    }
}

/// Admits queue heads while there is room: every head that fits is admitted in
/// one pass, their writes issued together (the store commits them as a group).
async fn admit(core: &Arc<EngineCore>, queue: &mut Queue) -> Result<(), StoreError> {
    loop {
        let mut batch = Vec::new();
        let free = queue.quota.map_or(usize::MAX, |q| {
            (q as usize).saturating_sub(queue.active.len())
        });
        while batch.len() < free.min(256) {
            let Some(head) = queue.queued.pop_first() else {
                break;
            };
            batch.push(head.2);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let results =
            futures::future::join_all(batch.iter().map(|name| admit_one(core, queue.seen(name))))
                .await;
        let mut failed = None;
        for (name, result) in batch.iter().zip(results) {
            match result {
                Ok(Some(admitted)) => {
                    // Admitted here: the driver starts now, from the admitted
                    // state (whose first write carries the admission when it
                    // runs on this node), not when the execution controller
                    // sees a write come back through its watch.
                    crate::pipeline::reconcile::ensure_driver(core, &admitted, true);
                    queue.observe_whole(&admitted);
                }
                Ok(None) => {
                    queue.last.remove(name);
                }
                Err(e) => {
                    // Back in its place; the session restarts from a fresh list.
                    if let Some(exec) = queue.last.get(name).cloned() {
                        queue.observe_whole(&exec);
                    }
                    failed = Some(e);
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
}

/// Admits one execution: `Pending` on the node chosen, with the `Admitted`
/// condition, from the state last seen on the watch. `None` when it is no
/// longer `Queued`.
///
/// Admitted on this node, nothing is written here: the driver starts from the
/// admitted state and its first write (the first step's start, or the finish)
/// carries the admission, one durable write fewer in series per execution. A
/// crash before that write finds the execution `Queued` again, and it is
/// admitted again. Admitted on another node, `Pending` is written
/// (compare-and-swap, re-read on conflict): that write hands it over.
async fn admit_one(
    core: &Arc<EngineCore>,
    seen: Option<PipelineExecution>,
) -> Result<Option<PipelineExecution>, StoreError> {
    let execs = Api::<PipelineExecution>::new(core.store.clone());
    let Some(mut exec) = seen else {
        return Ok(None);
    };
    loop {
        if exec.status.phase != ExecutionPhase::Queued || exec.spec.abort {
            return Ok(None);
        }
        // One node today: this one. A multi-node store adds the others (with
        // whether they have room) and reads the pipeline's recent nodes here.
        let candidates = [(core.node.clone(), true)];
        let recent = if candidates.len() > 1 {
            Api::<Pipeline>::new(core.store.clone())
                .get(&core.name, &exec.spec.pipeline)
                .await?
                .map(|p| p.status.recent_nodes)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let node = choose_node(&recent, &candidates).unwrap_or_else(|| core.node.clone());
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
        if node == core.node {
            return Ok(Some(exec));
        }
        match execs.update_status(&exec).await {
            Ok(stored) => return Ok(Some(stored)),
            Err(StoreError::Conflict { .. }) => {
                match execs.get(&core.name, &exec.metadata.name).await? {
                    Some(latest) => exec = latest,
                    None => return Ok(None),
                }
            }
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
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
