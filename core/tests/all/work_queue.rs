//! Property tests of the controller work queue: deduplication, never the same key
//! twice at once, re-run after a change during a run, backoff that grows and resets.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arkline::controller::{Backoff, RunOutcome, WorkQueue};
use proptest::prelude::*;
use tokio::time::Instant;

const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(10),
    max: Duration::from_millis(200),
};

#[derive(Debug, Clone)]
enum Step {
    Schedule { key: u8, delay_ms: u64 },
    Advance { ms: u64 },
    Pop,
    Finish { pick: usize, outcome: Outcome },
}

#[derive(Debug, Clone)]
enum Outcome {
    Success { requeue_ms: Option<u64> },
    Failure { retry: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..6, 0u64..50).prop_map(|(key, delay_ms)| Step::Schedule { key, delay_ms }),
        2 => (0u64..300).prop_map(|ms| Step::Advance { ms }),
        3 => Just(Step::Pop),
        3 => (any::<usize>(), prop_oneof![
            proptest::option::of(0u64..100).prop_map(|requeue_ms| Outcome::Success { requeue_ms }),
            any::<bool>().prop_map(|retry| Outcome::Failure { retry }),
        ])
            .prop_map(|(pick, outcome)| Step::Finish { pick, outcome }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn queue_keeps_its_rules(steps in proptest::collection::vec(step(), 1..200)) {
        let start = Instant::now();
        let mut now = start;
        let mut q = WorkQueue::new(BACKOFF);
        // The model: what is running, what was changed while running, failures.
        let mut running: BTreeSet<u8> = BTreeSet::new();
        let mut dirty: BTreeSet<u8> = BTreeSet::new();
        let mut failures: BTreeMap<u8, u32> = BTreeMap::new();

        for step in steps {
            match step {
                Step::Schedule { key, delay_ms } => {
                    q.schedule(key, now + Duration::from_millis(delay_ms));
                    if running.contains(&key) {
                        dirty.insert(key);
                    }
                }
                Step::Advance { ms } => now += Duration::from_millis(ms),
                Step::Pop => {
                    if let Some(key) = q.pop_ready(now) {
                        prop_assert!(running.insert(key), "key {key} handed out while running");
                    } else if let Some(due) = q.next_due() {
                        prop_assert!(due > now, "a due key was not handed out");
                    }
                }
                Step::Finish { pick, outcome } => {
                    if running.is_empty() {
                        continue;
                    }
                    let key = *running.iter().nth(pick % running.len()).unwrap();
                    running.remove(&key);
                    let (run_outcome, expect_delay) = match outcome {
                        Outcome::Success { requeue_ms } => {
                            failures.remove(&key);
                            (RunOutcome::Succeeded { requeue_after: requeue_ms.map(Duration::from_millis) }, None)
                        }
                        Outcome::Failure { retry } => {
                            let n = failures.entry(key).or_insert(0);
                            *n += 1;
                            let expected = BACKOFF.base
                                .saturating_mul(1 << (*n - 1).min(20))
                                .min(BACKOFF.max);
                            (RunOutcome::Failed { retry, requeue_after: None }, retry.then_some(expected))
                        }
                    };
                    let delay = q.finish(&key, run_outcome, now);
                    prop_assert_eq!(delay, expect_delay);
                    prop_assert_eq!(q.failures(&key), failures.get(&key).copied().unwrap_or(0));
                    let should_rerun = dirty.remove(&key)
                        || expect_delay.is_some()
                        || matches!(outcome, Outcome::Success { requeue_ms: Some(_) });
                    if should_rerun {
                        prop_assert!(q.is_scheduled(&key), "key {key} lost its re-run");
                    }
                }
            }
            // Invariants after every step.
            prop_assert_eq!(q.running_len(), running.len());
            for key in 0u8..6 {
                prop_assert_eq!(q.is_running(&key), running.contains(&key));
                prop_assert!(
                    !(q.is_running(&key) && q.is_scheduled(&key)),
                    "key {key} both running and scheduled"
                );
            }
            prop_assert!(q.scheduled_len() <= 6, "keys are deduplicated");
        }
    }

    #[test]
    fn scheduling_a_key_many_times_runs_it_once(key in 0u32..1000, times in 1usize..50, spread in 0u64..100) {
        let now = Instant::now();
        let mut q = WorkQueue::new(BACKOFF);
        for i in 0..times {
            q.schedule(key, now + Duration::from_millis(spread * i as u64 % 37));
        }
        let later = now + Duration::from_secs(1);
        prop_assert_eq!(q.pop_ready(later), Some(key));
        prop_assert_eq!(q.pop_ready(later), None);
        // Scheduled while running: once more, after it finishes, and not before.
        q.schedule(key, now);
        q.schedule(key, now);
        prop_assert_eq!(q.pop_ready(later), None);
        q.finish(&key, RunOutcome::Succeeded { requeue_after: None }, later);
        prop_assert_eq!(q.pop_ready(later), Some(key));
        prop_assert_eq!(q.pop_ready(later), None);
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets_on_success(failures in 1u32..40) {
        let now = Instant::now();
        let mut q = WorkQueue::new(BACKOFF);
        let mut last = Duration::ZERO;
        let mut at = now;
        for n in 1..=failures {
            q.schedule("k", at);
            prop_assert_eq!(q.pop_ready(at), Some("k"));
            let delay = q
                .finish(&"k", RunOutcome::Failed { retry: true, requeue_after: None }, at)
                .expect("a retry delay");
            prop_assert!(delay >= last, "backoff shrank: {last:?} then {delay:?}");
            prop_assert!(delay <= BACKOFF.max);
            if n == 1 {
                prop_assert_eq!(delay, BACKOFF.base);
            }
            // The retry is not handed out before its delay.
            prop_assert_eq!(q.pop_ready(at + delay - Duration::from_nanos(1)), None);
            at += delay;
            last = delay;
        }
        prop_assert_eq!(q.pop_ready(at), Some("k"));
        q.finish(&"k", RunOutcome::Succeeded { requeue_after: None }, at);
        prop_assert_eq!(q.failures(&"k"), 0);
        q.schedule("k", at);
        prop_assert_eq!(q.pop_ready(at), Some("k"));
        let delay = q.finish(&"k", RunOutcome::Failed { retry: true, requeue_after: None }, at);
        prop_assert_eq!(delay, Some(BACKOFF.base), "backoff resets after a success");
    }
}

#[test]
fn error_policy_delay_longer_than_backoff_wins() {
    let now = Instant::now();
    let mut q = WorkQueue::new(BACKOFF);
    q.schedule(1, now);
    assert_eq!(q.pop_ready(now), Some(1));
    let delay = q.finish(
        &1,
        RunOutcome::Failed {
            retry: true,
            requeue_after: Some(Duration::from_secs(9)),
        },
        now,
    );
    assert_eq!(delay, Some(Duration::from_secs(9)));
    assert_eq!(q.next_due(), Some(now + Duration::from_secs(9)));
}
