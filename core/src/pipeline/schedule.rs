//! Time for the engine: a [`Clock`] (the system's, or a [`ManualClock`] tests move
//! by hand), cron arithmetic with the missed-run policy, and [`Timers`], which
//! wake a reconciler at a given time of that clock.
//!
//! **Missed runs.** When the engine was down (or a pipeline's schedule fired
//! several times between two reconciles), the fire times missed are collapsed
//! into **one** catch-up run, for the most recent of them, started as soon as the
//! pipeline is reconciled, like a Kubernetes `CronJob` with
//! `concurrencyPolicy: Allow` counting missed schedules. A schedule first seen
//! (a new pipeline, or a changed schedule) starts counting from now: it never
//! fires for times before it existed.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc, watch};

/// A source of the current time, and sleeps measured against it.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
    /// Completes when [`Clock::now`] reaches `deadline`.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            // Re-check after waking: the wall clock may have been stepped.
            loop {
                let left = deadline - Utc::now();
                let Ok(left) = left.to_std() else { return };
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left).await;
            }
        })
    }
}

/// A clock that moves only when told to, for tests of schedules.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Sets the time (it may go backwards; sleepers wake when it reaches their deadline).
    pub fn set(&self, now: DateTime<Utc>) {
        self.now.send_replace(now);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.now
            .send_modify(|now| *now = now.checked_add_signed(by).unwrap_or(*now));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current value first, then every change.
            let _ = rx.wait_for(|now| *now >= deadline).await;
        })
    }
}

/// What a schedule asks for at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronDue {
    /// The most recent fire time in `(last, now]`, to run now (missed ones collapsed).
    pub run: Option<DateTime<Utc>>,
    /// How many fire times in `(last, now]` are collapsed into that one run.
    pub missed: u64,
    /// The next fire time after `now`, if the schedule has one.
    pub next: Option<DateTime<Utc>>,
}

/// The most fire times counted when collapsing missed runs (a `* * * * *`
/// schedule down for a year would otherwise iterate half a million times).
const MAX_COUNTED: u64 = 10_000;

/// Applies the missed-run policy: fire times after `last` and at or before `now`
/// collapse into one run at the latest of them.
pub fn cron_due(schedule: &croner::Cron, last: DateTime<Utc>, now: DateTime<Utc>) -> CronDue {
    let mut run = None;
    let mut missed = 0u64;
    let mut cursor = last;
    while let Ok(t) = schedule.find_next_occurrence(&cursor, false) {
        if t > now {
            return CronDue {
                run,
                missed,
                next: Some(t),
            };
        }
        missed += 1;
        run = Some(t);
        cursor = t;
        if missed >= MAX_COUNTED {
            // Jump: only the latest fire time at or before `now` matters.
            let latest = latest_at_or_before(schedule, now).unwrap_or(t);
            run = Some(latest.max(t));
            cursor = now;
        }
    }
    CronDue {
        run,
        missed,
        next: None,
    }
}

/// The latest fire time at or before `t`, if any (searching backwards).
fn latest_at_or_before(schedule: &croner::Cron, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.find_previous_occurrence(&t, true).ok()
}

/// Wakes keys at times of a [`Clock`]: the pipeline reconciler registers when a
/// pipeline's next cron run is due, and the key comes out of the stream at that
/// time, to be reconciled.
#[derive(Debug, Clone)]
pub struct Timers<K> {
    inner: Arc<TimersInner<K>>,
}

#[derive(Debug)]
struct TimersInner<K> {
    pending: Mutex<BTreeMap<DateTime<Utc>, Vec<K>>>,
    changed: Arc<Notify>,
}

impl<K: Clone + PartialEq + Send + 'static> Timers<K> {
    /// A timer set driven by `clock`; due keys are sent to the returned receiver
    /// by a task running until every `Timers` clone is dropped.
    pub fn start(clock: Arc<dyn Clock>) -> (Self, mpsc::UnboundedReceiver<K>) {
        let inner = Arc::new(TimersInner {
            pending: Mutex::new(BTreeMap::new()),
            changed: Arc::new(Notify::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let weak = Arc::downgrade(&inner);
        let changed = inner.changed.clone();
        tokio::spawn(async move {
            loop {
                let notified = changed.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                let Some(inner) = weak.upgrade() else { return };
                let now = clock.now();
                let (due, next) = {
                    let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
                    let later = pending.split_off(&(now + chrono::Duration::nanoseconds(1)));
                    let due: Vec<K> = std::mem::replace(&mut *pending, later)
                        .into_values()
                        .flatten()
                        .collect();
                    (due, pending.keys().next().copied())
                };
                drop(inner);
                for key in due {
                    if tx.send(key).is_err() {
                        return;
                    }
                }
                let sleep = async {
                    match next {
                        Some(at) => clock.sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                // Re-check the owner now and then so the task ends when it is gone.
                tokio::select! {
                    () = sleep => {}
                    () = notified => {}
                    () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
                }
            }
        });
        (Self { inner }, rx)
    }

    /// Wakes `key` at `at` (immediately when `at` has passed). A key already
    /// waiting for the same time is not added twice.
    pub fn wake_at(&self, key: K, at: DateTime<Utc>) {
        {
            let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            let slot = pending.entry(at).or_default();
            if slot.contains(&key) {
                return;
            }
            slot.push(key);
        }
        self.inner.changed.notify_one();
    }

    #[cfg(test)]
    /// How many wake-ups are pending.
    pub fn len(&self) -> usize {
        let pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.values().map(Vec::len).sum()
    }

    #[cfg(test)]
    /// Whether no wake-up is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn cron(s: &str) -> croner::Cron {
        crate::model::pipeline::parse_cron(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn nothing_due_before_the_first_fire() {
        let due = cron_due(
            &cron("0 * * * *"),
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T10:30:00Z"),
        );
        assert_eq!(
            due,
            CronDue {
                run: None,
                missed: 0,
                next: Some(at("2026-01-01T11:00:00Z"))
            }
        );
    }

    #[test]
    fn a_fire_time_at_now_is_due() {
        let due = cron_due(
            &cron("0 * * * *"),
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T11:00:00Z"),
        );
        assert_eq!(due.run, Some(at("2026-01-01T11:00:00Z")));
        assert_eq!(due.missed, 1);
        assert_eq!(due.next, Some(at("2026-01-01T12:00:00Z")));
    }

    #[test]
    fn missed_runs_collapse_into_the_latest() {
        let due = cron_due(
            &cron("*/15 * * * *"),
            at("2026-01-01T10:00:00Z"),
            at("2026-01-01T12:07:00Z"),
        );
        assert_eq!(due.run, Some(at("2026-01-01T12:00:00Z")));
        assert_eq!(due.missed, 8);
        assert_eq!(due.next, Some(at("2026-01-01T12:15:00Z")));
    }

    #[test]
    fn a_long_outage_is_counted_up_to_a_cap() {
        let due = cron_due(
            &cron("* * * * *"),
            at("2025-01-01T00:00:00Z"),
            at("2026-01-01T00:00:30Z"),
        );
        assert_eq!(due.run, Some(at("2026-01-01T00:00:00Z")));
        assert!(due.missed >= MAX_COUNTED);
        assert_eq!(due.next, Some(at("2026-01-01T00:01:00Z")));
    }

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_moved() {
        let clock = ManualClock::new(at("2026-01-01T00:00:00Z"));
        let sleeper = tokio::spawn(clock.sleep_until(at("2026-01-01T00:01:00Z")));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(30));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(30));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .map_err(|_| "sleeper did not wake")
            .and_then(|r| r.map_err(|_| "sleeper panicked"))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn timers_fire_in_clock_order() {
        let clock = ManualClock::new(at("2026-01-01T00:00:00Z"));
        let (timers, mut rx) = Timers::start(Arc::new(clock.clone()));
        timers.wake_at("late", at("2026-01-01T00:10:00Z"));
        timers.wake_at("early", at("2026-01-01T00:05:00Z"));
        timers.wake_at("early", at("2026-01-01T00:05:00Z"));
        timers.wake_at("past", at("2025-12-31T00:00:00Z"));
        async fn next(rx: &mut mpsc::UnboundedReceiver<&'static str>) -> Option<&'static str> {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .ok()
                .flatten()
        }
        assert_eq!(next(&mut rx).await, Some("past"));
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "a key fired before its time");
        clock.advance(Duration::from_secs(6 * 60));
        assert_eq!(next(&mut rx).await, Some("early"));
        clock.advance(Duration::from_secs(6 * 60));
        assert_eq!(
            next(&mut rx).await,
            Some("late"),
            "a duplicate wake-up was kept or the late one lost"
        );
        assert!(timers.is_empty());
    }
}
