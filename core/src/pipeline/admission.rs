//! Admission: the engine's `executor_quota` and its FIFO queue, and where
//! each execution runs.
//!
//! It runs on one node at a time, the engine's leader (see
//! [`Cluster`](crate::store::Cluster)); on the others it waits to be elected.
//! One task per engine follows the engine's executions and settings through
//! [watchers](mod@crate::store::watcher), **in revision order**, and keeps the queue of `Queued`
//! executions in creation order and the set of admitted ones (`Pending` or
//! `Running`). Whenever there is room it admits the head of the queue: it picks a
//! node (cache affinity) and writes `Pending` with the `Admitted` condition. The
//! execution reconciler then starts the driver on that node. Admission decisions
//! are made by this one task, so two executions never race for the last slot,
//! and the order is the order in which executions were created, whatever order
//! their reconciles happen to run in.

use std::collections::{BTreeSet, HashMap, HashSet};
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
use crate::pipeline::context::{CALLED_BY_LABEL, EngineCore, SETTINGS_NAME};
use crate::store::watcher::{self, Event};
use crate::store::{Api, EncodedObject, Membership, StoreError};

/// Chooses where an execution runs: the most recent of the pipeline's
/// `recent_nodes` that has room (its cache is likely warm there), otherwise the
/// candidate with room running the fewest of the engine's executions (the
/// first of those on a tie). Never pins: a recent node without room is passed
/// over. `None` when no candidate has room.
pub fn choose_node(recent: &[String], candidates: &[Candidate]) -> Option<String> {
    let has_room = |n: &str| candidates.iter().any(|c| c.id == n && c.has_room());
    recent.iter().find(|n| has_room(n)).cloned().or_else(|| {
        candidates
            .iter()
            .filter(|c| c.has_room())
            .min_by_key(|c| c.load)
            .map(|c| c.id.clone())
    })
}

/// A node admission may give an execution to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node's id.
    pub id: String,
    /// The engine's admitted, unfinished executions on it.
    pub load: usize,
    /// Most it takes at once (`None`: no limit but the engine's quota).
    pub capacity: Option<u32>,
}

impl Candidate {
    fn has_room(&self) -> bool {
        self.capacity.is_none_or(|c| self.load < c as usize)
    }
}

/// The candidates: the live nodes that serve the engine, and this node
/// (which runs the engine, even before its registration says so).
fn candidates(core: &EngineCore, queue: &Queue, members: &Membership) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = members
        .nodes
        .iter()
        .filter(|m| m.id == core.node || m.serves(&core.name))
        .map(|m| Candidate {
            id: m.id.clone(),
            load: 0,
            capacity: m.capacity,
        })
        .collect();
    if !out.iter().any(|c| c.id == core.node) {
        out.push(Candidate {
            id: core.node.clone(),
            load: 0,
            capacity: None,
        });
    }
    for node in queue.active.values().flatten() {
        if let Some(c) = out.iter_mut().find(|c| c.id == *node) {
            c.load += 1;
        }
    }
    out
}

#[derive(Debug, Default)]
struct Queue {
    /// `(created, run, name)` of `Queued` executions.
    queued: BTreeSet<(DateTime<Utc>, u64, String)>,
    /// Admitted, unfinished executions, with the node each runs on.
    active: HashMap<String, Option<String>>,
    /// Executions of gone nodes admitted again, until their write is seen.
    readmitted: HashSet<String>,
    quota: Option<u64>,
    /// The last state seen of each queued execution (what admission writes from).
    last: HashMap<String, PipelineExecution>,
    /// The concurrency group of each queued or admitted execution that has one.
    groups: HashMap<String, (QueueKey, String)>,
    /// Executions asked to give way to a newer one of their group, until
    /// they are seen to end.
    superseding: HashSet<String>,
}

/// An execution's place in the queue: `(created, run, name)`.
type QueueKey = (DateTime<Utc>, u64, String);

/// What admission reads of every execution event: most are status writes of
/// running executions, decoded no further than this.
#[derive(Debug)]
struct Seen {
    name: String,
    created: DateTime<Utc>,
    run: u64,
    phase: ExecutionPhase,
    abort: bool,
    node: Option<String>,
    group: Option<String>,
}

impl Seen {
    fn of(exec: &PipelineExecution) -> Self {
        Seen {
            name: exec.metadata.name.clone(),
            created: exec.metadata.created.unwrap_or_default(),
            run: exec.spec.run,
            phase: exec.status.phase,
            abort: exec.spec.abort,
            node: exec.status.node.clone(),
            group: exec.spec.concurrency.clone(),
        }
    }

    fn from_view(view: ExecutionView) -> Self {
        Seen {
            name: view.metadata.name,
            created: view.metadata.created.unwrap_or_default(),
            run: view.spec.run,
            phase: view.status.phase,
            abort: view.spec.abort,
            node: view.status.node,
            group: view.spec.concurrency,
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
        self.readmitted.remove(&key.2);
        self.groups.remove(&key.2);
        if deleted || seen.phase.is_finished() {
            self.superseding.remove(&key.2);
        }
        if deleted {
            return;
        }
        let waiting = matches!(seen.phase, ExecutionPhase::Queued) && !seen.abort;
        let admitted = matches!(
            seen.phase,
            ExecutionPhase::Pending | ExecutionPhase::Running
        );
        if let Some(group) = seen.group.clone()
            && (waiting || admitted)
        {
            self.groups.insert(key.2.clone(), (key.clone(), group));
        }
        match seen.phase {
            ExecutionPhase::Queued if !seen.abort => {
                if let Some(whole) = whole {
                    self.last.insert(key.2.clone(), whole);
                    self.queued.insert(key);
                }
            }
            ExecutionPhase::Pending | ExecutionPhase::Running => {
                self.active.insert(key.2, seen.node);
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

/// Runs the engine's admission until shutdown, whenever this node leads the
/// engine. A failed admission write starts a new session from fresh lists
/// after a backoff.
pub(crate) async fn run(core: Arc<EngineCore>) {
    let mut failures = 0u32;
    let mut leads = core.leads.clone();
    while !core.shutdown.is_cancelled() {
        if failures > 0 {
            let delay = std::time::Duration::from_millis(100 << failures.min(8));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = core.shutdown.cancelled() => return,
            }
        }
        tokio::select! {
            r = leads.wait_for(|l| *l) => if r.is_err() { return },
            () = core.shutdown.cancelled() => return,
        }
        match session(&core).await {
            Ok(()) => failures = 0,
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

/// One session over watchers of the engine's executions and settings and
/// the cluster's members; returns `Ok` on shutdown or when this node no
/// longer leads, `Err` when an admission write failed.
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
    let mut members = core.cluster.members();
    let mut leads = core.leads.clone();
    let mut queue = QueueView::default();
    let mut quota = QuotaView::default();
    loop {
        tokio::select! {
            () = core.shutdown.cancelled() => return Ok(()),
            r = leads.wait_for(|l| !*l) => {
                tracing::warn!(engine = %core.name, "this node no longer leads the engine: admission stops here");
                let _ = r;
                return Ok(());
            }
            Some(item) = exec_events.next() => {
                queue.observe(item, &core.name);
                // Drain what is already there before admitting: fewer writes, same order.
                while let Some(Some(more)) = futures::FutureExt::now_or_never(exec_events.next()) {
                    queue.observe(more, &core.name);
                }
            }
            Some(item) = setting_events.next() => quota.observe(item, &core.name),
            Ok(()) = members.changed() => {}
        }
        let membership = members.borrow_and_update().clone();
        if let (Some(queue), Some(Ok(quota)), Some(membership)) =
            (queue.ready(), quota.current, membership)
        {
            queue.quota = quota;
            readmit(core, queue, &membership).await?;
            admit(core, queue, &membership).await?;
        }
    }
}

/// Admits queue heads while there is room: every head that fits is admitted in
/// one pass, their writes issued together (the store commits them as a group).
async fn admit(
    core: &Arc<EngineCore>,
    queue: &mut Queue,
    members: &Membership,
) -> Result<(), StoreError> {
    if !queue.groups.is_empty() {
        supersede(core, queue).await?;
    }
    loop {
        let free = queue.quota.map_or(usize::MAX, |q| {
            (q as usize).saturating_sub(queue.active.len())
        });
        // An execution called by a `pipeline:` step is admitted past the
        // quota: its caller holds a slot while it waits for it, and a full
        // quota must not leave both waiting for ever.
        let is_call = |e: &PipelineExecution| e.metadata.labels.contains_key(CALLED_BY_LABEL);
        let calls_waiting = free == 0
            && queue
                .queued
                .iter()
                .any(|k| queue.last.get(&k.2).is_some_and(is_call));
        if queue.queued.is_empty() || (free == 0 && !calls_waiting) {
            return Ok(());
        }
        let mut within_quota = 0usize;
        let mut candidates = candidates(core, queue, members);
        let mut recent = Recent::default();
        let mut batch: Vec<(PipelineExecution, String)> = Vec::new();
        // Groups with an admitted execution: their queued ones wait (and are
        // passed over, so other executions are not held up behind them).
        let mut busy: HashSet<String> = queue
            .active
            .keys()
            .filter_map(|name| queue.groups.get(name).map(|(_, g)| g.clone()))
            .collect();
        // Executions passed over stay queued; the walk goes on after them.
        let mut cursor: Option<QueueKey> = None;
        while batch.len() < 256 && (within_quota < free || calls_waiting) {
            let next = match &cursor {
                None => queue.queued.first(),
                Some(c) => queue
                    .queued
                    .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .next(),
            };
            let Some(head) = next.cloned() else {
                break;
            };
            let Some(exec) = queue.seen(&head.2) else {
                queue.queued.remove(&head);
                continue;
            };
            let call = is_call(&exec);
            if !call && within_quota >= free {
                cursor = Some(head);
                continue;
            }
            if let Some(group) = &exec.spec.concurrency {
                if busy.contains(group) {
                    cursor = Some(head);
                    continue;
                }
                busy.insert(group.clone());
            }
            if !call {
                within_quota += 1;
            }
            let recent = recent
                .of(core, &exec.spec.pipeline, candidates.len())
                .await?;
            // A call goes to the least loaded node even past its capacity:
            // its caller holds a place there while it waits for it.
            let node = choose_node(recent, &candidates).or_else(|| {
                call.then(|| {
                    candidates
                        .iter()
                        .min_by_key(|c| c.load)
                        .map(|c| c.id.clone())
                })
                .flatten()
            });
            let Some(node) = node else {
                if calls_waiting {
                    // Calls behind it may still go past the capacity.
                    cursor = Some(head);
                    continue;
                }
                // No node has room: the head waits (FIFO), and so does the rest.
                break;
            };
            if let Some(c) = candidates.iter_mut().find(|c| c.id == node) {
                c.load += 1;
            }
            queue.queued.remove(&head);
            batch.push((exec, node));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = batch.iter().map(|(e, _)| e.metadata.name.clone()).collect();
        let results = futures::future::join_all(
            batch
                .into_iter()
                .map(|(exec, node)| admit_one(core, exec, node)),
        )
        .await;
        let mut failed = None;
        for (name, result) in names.iter().zip(results) {
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

/// Cancels, for each concurrency group whose newest queued execution's
/// pipeline says `cancel_in_progress`, every older execution of the group
/// (queued or running): `abort` with `superseded_by` naming the newer one.
/// A running one ends `Cancelled` after its `finally`; the newer one is
/// admitted once it has ended (one running execution per group).
async fn supersede(core: &Arc<EngineCore>, queue: &mut Queue) -> Result<(), StoreError> {
    let mut newest: HashMap<String, QueueKey> = HashMap::new();
    for key in queue.queued.iter().rev() {
        let Some(exec) = queue.last.get(&key.2) else {
            continue;
        };
        let (Some(group), Some(c)) = (&exec.spec.concurrency, &exec.spec.pipeline_spec.concurrency)
        else {
            continue;
        };
        if c.cancel_in_progress {
            newest.entry(group.clone()).or_insert_with(|| key.clone());
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let victims: Vec<(String, String)> = queue
        .groups
        .iter()
        .filter(|(name, _)| !queue.superseding.contains(*name))
        .filter_map(|(name, (key, group))| {
            let winner = newest.get(group)?;
            (key < winner).then(|| (name.clone(), winner.2.clone()))
        })
        .collect();
    let execs = Api::<PipelineExecution>::new(core.store.clone());
    for (victim, winner) in victims {
        queue.superseding.insert(victim.clone());
        queue.queued.retain(|k| k.2 != victim);
        loop {
            let Some(mut exec) = execs.get(&core.name, &victim).await? else {
                break;
            };
            if exec.status.phase.is_finished() || exec.spec.abort {
                break;
            }
            exec.spec.abort = true;
            exec.spec.superseded_by = Some(winner.clone());
            match execs.update(&exec).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => break,
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!(engine = %core.name, execution = %victim, by = %winner, "cancelled by a newer execution of its concurrency group");
    }
    Ok(())
}

/// The pipelines' `recent_nodes`, read once per admission pass.
#[derive(Debug, Default)]
struct Recent(HashMap<String, Vec<String>>);

impl Recent {
    /// `pipeline`'s recent nodes; not read when there is one candidate.
    async fn of(
        &mut self,
        core: &EngineCore,
        pipeline: &str,
        candidates: usize,
    ) -> Result<&[String], StoreError> {
        if candidates < 2 {
            return Ok(&[]);
        }
        if !self.0.contains_key(pipeline) {
            let nodes = Api::<Pipeline>::new(core.store.clone())
                .get(&core.name, pipeline)
                .await?
                .map(|p| p.status.recent_nodes)
                .unwrap_or_default();
            self.0.insert(pipeline.to_owned(), nodes);
        }
        Ok(self.0.get(pipeline).map_or(&[], Vec::as_slice))
    }
}

/// Admits one execution: `Pending` on `node`, with the `Admitted`
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
    mut exec: PipelineExecution,
    node: String,
) -> Result<Option<PipelineExecution>, StoreError> {
    let execs = Api::<PipelineExecution>::new(core.store.clone());
    loop {
        if exec.status.phase != ExecutionPhase::Queued || exec.spec.abort {
            return Ok(None);
        }
        exec.status.phase = ExecutionPhase::Pending;
        assign(
            core,
            &mut exec,
            &node,
            "QuotaAvailable",
            format!("admitted on node `{node}`"),
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

/// Gives `exec` to `node`, with the `Admitted` condition saying why.
fn assign(
    core: &EngineCore,
    exec: &mut PipelineExecution,
    node: &str,
    reason: &str,
    message: String,
) {
    exec.status.node = Some(node.to_owned());
    set_condition(
        &mut exec.status.conditions,
        Condition {
            kind: ConditionType::Admitted,
            status: ConditionStatus::True,
            reason: reason.into(),
            message,
            last_transition: Some(core.clock.now()),
        },
    );
}

/// Admits again, on a live node, the unfinished executions of nodes the
/// cluster knows are gone (their lease ended: they write nothing more, and
/// stopped their steps before it ended). The new node resumes each from its
/// recorded state: finished steps are not run again, an interrupted one is.
async fn readmit(
    core: &Arc<EngineCore>,
    queue: &mut Queue,
    members: &Membership,
) -> Result<(), StoreError> {
    if !members.complete {
        // No node is known to be gone (a node alone, or not yet listed).
        return Ok(());
    }
    let orphans: Vec<(String, String)> = queue
        .active
        .iter()
        .filter(|(name, _)| !queue.readmitted.contains(*name))
        .filter_map(|(name, node)| {
            let node = node.as_ref()?;
            (*node != core.node && members.is_gone(node)).then(|| (name.clone(), node.clone()))
        })
        .collect();
    if orphans.is_empty() {
        return Ok(());
    }
    let execs = Api::<PipelineExecution>::new(core.store.clone());
    for (name, gone) in orphans {
        let candidates: Vec<Candidate> = candidates(core, queue, members)
            .into_iter()
            .filter(|c| !members.is_gone(&c.id))
            .collect();
        let Some(node) = choose_node(&[], &candidates) else {
            return Ok(());
        };
        loop {
            let Some(mut exec) = execs.get(&core.name, &name).await? else {
                break;
            };
            if exec.status.phase.is_finished() || exec.status.node.as_deref() != Some(&gone) {
                break;
            }
            assign(
                core,
                &mut exec,
                &node,
                "Readmitted",
                format!("node `{gone}` is gone (its lease ended); admitted again on node `{node}`"),
            );
            match execs.update_status(&exec).await {
                Ok(stored) => {
                    tracing::info!(engine = %core.name, execution = %name, from = %gone, to = %node, "an execution of a gone node admitted again");
                    queue.observe_whole(&stored);
                    queue.readmitted.insert(name.clone());
                    break;
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn c(id: &str, load: usize, capacity: Option<u32>) -> Candidate {
        Candidate {
            id: id.into(),
            load,
            capacity,
        }
    }

    #[test]
    fn node_choice_prefers_recent_nodes_with_room_and_never_pins() {
        let candidates = vec![c("a", 1, Some(4)), c("b", 2, Some(2)), c("c", 3, None)];
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
        assert_eq!(
            choose_node(&s(&[]), &candidates),
            Some("a".into()),
            "the least loaded node with room"
        );
        assert_eq!(
            choose_node(&s(&[]), &[c("a", 5, None), c("b", 0, None)]),
            Some("b".into())
        );
        assert_eq!(choose_node(&s(&["a"]), &[c("a", 3, Some(3))]), None);
    }
}
