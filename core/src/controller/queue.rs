//! The keyed work queue behind a controller, as a plain state machine (time is
//! passed in, nothing is spawned) so its rules can be tested exhaustively.
//!
//! Rules:
//! - a key is either idle, scheduled (once, at its earliest due time), or running;
//! - a running key is never handed out again; scheduling it while it runs marks it
//!   to run again after it finishes (at the earliest time asked for);
//! - a failure schedules the key after its backoff (`base * 2^(failures-1)`,
//!   capped at `max`); a success resets the failure count.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff for failed reconciles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 minutes.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (`failures >= 1`).
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// How a run of a key ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Success; run again after the delay, if any.
    Succeeded {
        /// `Action::requeue` delay.
        requeue_after: Option<Duration>,
    },
    /// Failure; retried after the backoff delay (or later, when the error policy asks
    /// for a longer delay), unless `retry` is false.
    Failed {
        /// Retry at all (false when the error policy answered `await_change`).
        retry: bool,
        /// A delay asked by the error policy; the backoff delay is the minimum.
        requeue_after: Option<Duration>,
    },
}

/// A keyed work queue with deduplication, exclusive running and per-key backoff.
#[derive(Debug)]
pub struct WorkQueue<K> {
    due: HashMap<K, (Instant, u64)>,
    order: BTreeSet<(Instant, u64, K)>,
    running: BTreeMap<K, Option<Instant>>,
    failures: HashMap<K, u32>,
    backoff: Backoff,
    seq: u64,
}

impl<K: Ord + Hash + Clone> WorkQueue<K> {
    /// An empty queue.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            due: HashMap::new(),
            order: BTreeSet::new(),
            running: BTreeMap::new(),
            failures: HashMap::new(),
            backoff,
            seq: 0,
        }
    }

    /// Asks for `key` to run at `at` (or earlier, if already asked).
    pub fn schedule(&mut self, key: K, at: Instant) {
        if let Some(rerun) = self.running.get_mut(&key) {
            *rerun = Some(rerun.map_or(at, |t| t.min(at)));
            return;
        }
        if let Some(&(t, seq)) = self.due.get(&key) {
            if t <= at {
                return;
            }
            self.order.remove(&(t, seq, key.clone()));
        }
        self.seq += 1;
        self.due.insert(key.clone(), (at, self.seq));
        self.order.insert((at, self.seq, key));
    }

    /// The earliest due key not running whose time has come; it is now running.
    pub fn pop_ready(&mut self, now: Instant) -> Option<K> {
        let first = self.order.first()?;
        if first.0 > now {
            return None;
        }
        let (_, _, key) = self.order.pop_first()?;
        self.due.remove(&key);
        self.running.insert(key.clone(), None);
        Some(key)
    }

    /// When the next scheduled key is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.order.first().map(|(t, _, _)| *t)
    }

    /// Records the end of a run of `key` at `now` and schedules what follows.
    /// Answers the delay of the retry when the run failed.
    pub fn finish(&mut self, key: &K, outcome: RunOutcome, now: Instant) -> Option<Duration> {
        // Finishing a key that is not running is a no-op.
        let rerun = self.running.remove(key)?;
        let mut next = rerun;
        let mut retry_delay = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        match outcome {
            RunOutcome::Succeeded { requeue_after } => {
                self.failures.remove(key);
                if let Some(d) = requeue_after {
                    at(now + d);
                }
            }
            RunOutcome::Failed {
                retry,
                requeue_after,
            } => {
                let failures = self.failures.entry(key.clone()).or_insert(0);
                *failures = failures.saturating_add(1);
                let delay = self
                    .backoff
                    .delay(*failures)
                    .max(requeue_after.unwrap_or_default());
                if retry {
                    at(now + delay);
                    retry_delay = Some(delay);
                }
            }
        }
        if let Some(t) = next {
            self.schedule(key.clone(), t);
        }
        retry_delay
    }

    /// Whether `key` is running.
    pub fn is_running(&self, key: &K) -> bool {
        self.running.contains_key(key)
    }

    /// Whether `key` is scheduled (not counting a re-run asked while it runs).
    pub fn is_scheduled(&self, key: &K) -> bool {
        self.due.contains_key(key)
    }

    /// Consecutive failures of `key`.
    pub fn failures(&self, key: &K) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
    }

    /// Number of running keys.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Number of scheduled keys.
    pub fn scheduled_len(&self) -> usize {
        self.due.len()
    }
}
