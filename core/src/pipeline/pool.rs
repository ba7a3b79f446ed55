//! The container's worker pool: how many step calls run at once (at most the
//! runtime's instance slots, so a burst of executions waits for a slot instead of
//! failing with a `Capacity` fault), shared fairly by the engines.
//!
//! Fairness: each engine has its own FIFO of waiting calls, and a freed slot goes
//! to the next engine in round-robin order that has a waiter. An engine with a
//! thousand queued calls therefore gets one slot in turn like an engine with one:
//! a flood in one engine delays another engine's call by at most one call per
//! busy engine, not by the flood.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Shares step-call slots among engines, round-robin. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkerPool {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    free: usize,
    /// Engine → its waiting calls, oldest first.
    waiting: BTreeMap<String, VecDeque<oneshot::Sender<Slot>>>,
    /// Engines with waiters, in the order they are served next.
    turn: VecDeque<String>,
}

/// A slot: the call may run while it is held.
#[derive(Debug)]
pub struct Slot {
    pool: Option<WorkerPool>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release();
        }
    }
}

impl WorkerPool {
    /// A pool of `size` slots (at least 1).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        Self {
            inner: Arc::new(Mutex::new(State {
                free: size,
                waiting: BTreeMap::new(),
                turn: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    /// Calls waiting for a slot, per engine.
    pub fn waiting(&self) -> BTreeMap<String, usize> {
        self.lock()
            .waiting
            .iter()
            .map(|(e, q)| (e.clone(), q.len()))
            .collect()
    }

    /// Waits for a slot for a call of `engine`. Cancel-safe: dropping the future
    /// gives up the place in the queue.
    pub async fn acquire(&self, engine: &str) -> Slot {
        let rx = {
            let mut state = self.lock();
            if state.free > 0 && state.turn.is_empty() {
                state.free -= 1;
                return Slot {
                    pool: Some(self.clone()),
                };
            }
            let (tx, rx) = oneshot::channel();
            let queue = state.waiting.entry(engine.to_owned()).or_default();
            if queue.is_empty() {
                state.turn.push_back(engine.to_owned());
            }
            if let Some(q) = state.waiting.get_mut(engine) {
                q.push_back(tx);
            }
            rx
        };
        match rx.await {
            Ok(slot) => slot,
            // The pool hands out slots only through live senders; a dropped sender
            // means the pool is gone, so run without one rather than hang.
            Err(_) => Slot { pool: None },
        }
    }

    fn release(&self) {
        let mut state = self.lock();
        loop {
            let Some(engine) = state.turn.pop_front() else {
                state.free += 1;
                return;
            };
            let Some(queue) = state.waiting.get_mut(&engine) else {
                continue;
            };
            let Some(tx) = queue.pop_front() else {
                state.waiting.remove(&engine);
                continue;
            };
            if queue.is_empty() {
                state.waiting.remove(&engine);
            } else {
                state.turn.push_back(engine);
            }
            let slot = Slot {
                pool: Some(self.clone()),
            };
            match tx.send(slot) {
                Ok(()) => return,
                Err(mut slot) => {
                    // The waiter gave up; hand the slot to the next one instead
                    // of letting its drop re-enter this lock.
                    slot.pool = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_handed_out_round_robin_across_engines() {
        let pool = WorkerPool::new(1);
        let held = pool.acquire("a").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Engine a floods first, then b asks once.
        for (engine, i) in [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("a", 4)] {
            let (shared, order) = (pool.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = shared.acquire(engine).await;
                order
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!("{engine}{i}"));
            }));
            tokio::task::yield_now().await;
            while pool.waiting().values().sum::<usize>() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap_or_else(|e| panic!("{e}"));
        }
        let order = order.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(order, ["a1", "b1", "a2", "a3", "a4"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_lose_the_slot() {
        let pool = WorkerPool::new(1);
        let held = pool.acquire("a").await;
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(10), pool.acquire("b"));
        assert!(gave_up.await.is_err());
        let next = tokio::spawn({
            let pool = pool.clone();
            async move { drop(pool.acquire("c").await) }
        });
        while !pool.waiting().contains_key("c") {
            tokio::task::yield_now().await;
        }
        drop(held);
        next.await.unwrap_or_else(|e| panic!("{e}"));
        // Every slot came back.
        let again = pool.acquire("d").await;
        drop(again);
        assert_eq!(pool.lock().free, 1);
    }
}
