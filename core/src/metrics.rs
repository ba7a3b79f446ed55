//! Counters and histograms the container keeps about itself, for an exporter
//! (`arkline serve`'s Prometheus `/metrics`) or an embedder to read.
//!
//! One [`Metrics`] per container ([`Container::metrics`](crate::Container::metrics)).
//! It is fed where things happen: the biz registry counts instantiations and
//! faults per step call, the execution driver observes step attempt durations,
//! each engine's blob cache counts hits and misses, and the redb store's writer
//! observes the latency of each group commit. [`Metrics::snapshot`] reads them
//! all at once; gauges that are facts of the store (executions by phase, the
//! queue depth) are not kept here but read from the store when scraped.
//!
//! Everything is plain atomics and one mutexed map: recording costs a lock and a
//! map lookup keyed by borrowed strings (no allocation once a series exists).
//!
//! ```
//! use std::time::Duration;
//! use arkline::metrics::Metrics;
//!
//! let metrics = Metrics::new();
//! metrics.record_call("team-a", "faults", true, Some("trap"));
//! metrics.observe_step("team-a", "faults", Duration::from_millis(30));
//! let snap = metrics.snapshot();
//! assert_eq!(snap.bizes[0].instantiations, 1);
//! assert_eq!(snap.bizes[0].faults.get("trap"), Some(&1));
//! assert_eq!(snap.bizes[0].step_duration.count, 1);
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Upper bounds (seconds) of the step duration buckets: from a trivial step
/// (tens of µs) to a long build (an hour).
pub const STEP_DURATION_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
];

/// Upper bounds (seconds) of the store commit latency buckets: an fsync takes
/// from tens of µs (a fast NVMe) to tens of ms (a busy disk).
pub const COMMIT_DURATION_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// A histogram with fixed buckets, recorded with atomics (no lock): cheap enough
/// for the store's writer thread. Cheap to share as `Arc<Histogram>`.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// One count per bound (not cumulative), then the `+Inf` overflow.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these bucket upper bounds (seconds, ascending).
    pub fn new(bounds: &[f64]) -> Self {
        let mut bounds = bounds.to_vec();
        bounds.retain(|b| b.is_finite());
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            counts,
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The histogram as it is now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let overflow = self.counts.last().map_or(0, |c| c.load(Ordering::Relaxed));
        HistogramSnapshot {
            buckets,
            count: cumulative + overflow,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
    }
}

/// A histogram read at one moment, in Prometheus' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations ≤ bound)`, cumulative and ascending;
    /// the `+Inf` bucket is [`HistogramSnapshot::count`].
    pub buckets: Vec<(f64, u64)>,
    /// Every observation.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum: f64,
}

/// An engine's blob cache lookups. Shared by the cache and [`Metrics`].
#[derive(Debug, Default)]
pub struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl CacheCounters {
    /// Counts a lookup that found its key.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a lookup that did not.
    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    /// `(hits, misses)` so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

/// What one biz did in one engine (all its versions together).
#[derive(Debug)]
struct BizSeries {
    instantiations: u64,
    faults: BTreeMap<&'static str, u64>,
    step_duration: Histogram,
}

impl Default for BizSeries {
    fn default() -> Self {
        Self {
            instantiations: 0,
            faults: BTreeMap::new(),
            step_duration: Histogram::new(&STEP_DURATION_BUCKETS),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// engine → biz name → series.
    bizes: Mutex<BTreeMap<String, BTreeMap<String, BizSeries>>>,
    /// engine → its cache's counters.
    caches: Mutex<BTreeMap<String, Arc<CacheCounters>>>,
    store_commit: Mutex<Option<Arc<Histogram>>>,
    /// Per engine: commit statuses posted, and those given up.
    forge: Mutex<BTreeMap<String, (u64, u64)>>,
}

/// The container's counters. Cheap to clone; clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_biz<R>(&self, engine: &str, biz: &str, f: impl FnOnce(&mut BizSeries) -> R) -> R {
        let mut bizes = lock(&self.inner.bizes);
        // Look up by borrowed keys first: no allocation on the hot path.
        if let Some(series) = bizes.get_mut(engine).and_then(|m| m.get_mut(biz)) {
            return f(series);
        }
        let series = bizes
            .entry(engine.to_owned())
            .or_default()
            .entry(biz.to_owned())
            .or_default();
        f(series)
    }

    /// Counts one step call of `biz` (its name, not its version) in `engine`:
    /// an instantiation when a fresh instance was created for it, and the
    /// fault's kind ([`StepFault::kind`](crate::runtime::StepFault::kind)) when the
    /// host stopped the guest.
    pub fn record_call(
        &self,
        engine: &str,
        biz: &str,
        instantiated: bool,
        fault: Option<&'static str>,
    ) {
        self.with_biz(engine, biz, |s| {
            if instantiated {
                s.instantiations += 1;
            }
            if let Some(kind) = fault {
                *s.faults.entry(kind).or_insert(0) += 1;
            }
        });
    }

    /// Observes the duration of one step attempt of `biz` in `engine`.
    pub fn observe_step(&self, engine: &str, biz: &str, elapsed: Duration) {
        self.with_biz(engine, biz, |s| s.step_duration.observe(elapsed));
    }

    /// The cache counters of `engine`, created on first use; give them to the
    /// engine's [`BlobCache`](crate::host::BlobCache).
    pub fn cache_counters(&self, engine: &str) -> Arc<CacheCounters> {
        lock(&self.inner.caches)
            .entry(engine.to_owned())
            .or_default()
            .clone()
    }

    /// Counts a commit status (an execution's, or a stage's with the forge
    /// setting's `stages`) posted to the forge (`ok`) or given up after
    /// retries.
    pub fn count_forge_status(&self, engine: &str, ok: bool) {
        let mut forge = lock(&self.inner.forge);
        let entry = forge.entry(engine.to_owned()).or_default();
        if ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    /// Reports the store's commit latency from this histogram (the one
    /// [`RedbStore::commit_latency`](crate::RedbStore::commit_latency) feeds).
    pub fn set_store_commit_latency(&self, histogram: Arc<Histogram>) {
        *lock(&self.inner.store_commit) = Some(histogram);
    }

    /// Forgets an engine's series (it was removed from the container).
    pub fn forget_engine(&self, engine: &str) {
        lock(&self.inner.bizes).remove(engine);
        lock(&self.inner.caches).remove(engine);
        lock(&self.inner.forge).remove(engine);
    }

    /// Every counter as it is now, sorted by engine then biz.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let bizes = lock(&self.inner.bizes)
            .iter()
            .flat_map(|(engine, bizes)| {
                bizes.iter().map(move |(biz, s)| BizMetrics {
                    engine: engine.clone(),
                    biz: biz.clone(),
                    instantiations: s.instantiations,
                    faults: s
                        .faults
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), *v))
                        .collect(),
                    step_duration: s.step_duration.snapshot(),
                })
            })
            .collect();
        let caches = lock(&self.inner.caches)
            .iter()
            .map(|(engine, c)| {
                let (hits, misses) = c.get();
                CacheMetrics {
                    engine: engine.clone(),
                    hits,
                    misses,
                }
            })
            .collect();
        let store_commit = lock(&self.inner.store_commit)
            .as_ref()
            .map(|h| h.snapshot());
        let forge = lock(&self.inner.forge)
            .iter()
            .map(|(engine, (posted, failed))| ForgeMetrics {
                engine: engine.clone(),
                posted: *posted,
                failed: *failed,
            })
            .collect();
        MetricsSnapshot {
            bizes,
            caches,
            store_commit,
            forge,
        }
    }
}

/// All counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// Per engine and biz.
    pub bizes: Vec<BizMetrics>,
    /// Per engine.
    pub caches: Vec<CacheMetrics>,
    /// The store's group-commit latency; `None` when the container's store does
    /// not report it (a store given by the embedder, the memory store).
    pub store_commit: Option<HistogramSnapshot>,
    /// Per engine, commit statuses.
    pub forge: Vec<ForgeMetrics>,
}

/// One engine's commit statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeMetrics {
    /// Engine.
    pub engine: String,
    /// Executions whose statuses were all posted.
    pub posted: u64,
    /// Executions whose statuses could not be posted after retries.
    pub failed: u64,
}

/// One biz in one engine.
#[derive(Debug, Clone, PartialEq)]
pub struct BizMetrics {
    /// Engine.
    pub engine: String,
    /// Biz name (every version together).
    pub biz: String,
    /// Fresh instances created for step calls.
    pub instantiations: u64,
    /// Faults by kind (`trap`, `timeout`, …).
    pub faults: BTreeMap<String, u64>,
    /// Step attempt durations as the execution driver saw them.
    pub step_duration: HistogramSnapshot,
}

/// One engine's blob cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMetrics {
    /// Engine.
    pub engine: String,
    /// Lookups that found their key.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::new(&[0.5, 0.1, 1.0, f64::INFINITY]);
        h.observe(Duration::from_millis(100)); // on a bound: counted in it
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(2)); // past every bound: only +Inf
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.1, 1), (0.5, 2), (1.0, 2)]);
        assert_eq!(s.count, 3);
        assert!((s.sum - 2.4).abs() < 1e-9, "sum {}", s.sum);
    }

    #[test]
    fn calls_are_counted_per_engine_and_biz_with_faults_by_kind() {
        let m = Metrics::new();
        m.record_call("a", "faults", true, None);
        m.record_call("a", "faults", true, Some("trap"));
        m.record_call("a", "faults", true, Some("trap"));
        m.record_call("a", "faults", false, Some("instantiate"));
        m.record_call("b", "faults", true, Some("timeout"));
        m.record_call("a", "shell", true, None);
        m.observe_step("a", "shell", Duration::from_secs(3));
        let s = m.snapshot();
        let names: Vec<(&str, &str)> = s
            .bizes
            .iter()
            .map(|b| (b.engine.as_str(), b.biz.as_str()))
            .collect();
        assert_eq!(names, [("a", "faults"), ("a", "shell"), ("b", "faults")]);
        assert_eq!(s.bizes[0].instantiations, 3);
        assert_eq!(
            s.bizes[0].faults,
            BTreeMap::from([("instantiate".into(), 1), ("trap".into(), 2)])
        );
        assert_eq!(s.bizes[1].step_duration.count, 1);
        assert_eq!(s.bizes[1].step_duration.buckets[8], (1.0, 0));
        assert_eq!(s.bizes[1].step_duration.buckets[9], (5.0, 1));
        assert_eq!(s.bizes[2].faults.get("timeout"), Some(&1));
        assert_eq!(s.store_commit, None);
    }

    #[test]
    fn cache_counters_are_shared_and_forgotten_with_their_engine() {
        let m = Metrics::new();
        let c = m.cache_counters("a");
        c.hit();
        c.miss();
        c.miss();
        m.cache_counters("a").hit();
        m.record_call("a", "faults", true, None);
        assert_eq!(
            m.snapshot().caches,
            vec![CacheMetrics {
                engine: "a".into(),
                hits: 2,
                misses: 2
            }]
        );
        m.forget_engine("a");
        let s = m.snapshot();
        assert!(s.caches.is_empty() && s.bizes.is_empty());
    }

    #[test]
    fn the_store_histogram_is_read_live() {
        let m = Metrics::new();
        let h = Arc::new(Histogram::new(&COMMIT_DURATION_BUCKETS));
        m.set_store_commit_latency(h.clone());
        h.observe(Duration::from_micros(700));
        let s = m.snapshot().store_commit.expect("set");
        assert_eq!(s.count, 1);
        assert_eq!(s.buckets[3], (0.000_5, 0));
        assert_eq!(s.buckets[4], (0.001, 1));
    }
}
