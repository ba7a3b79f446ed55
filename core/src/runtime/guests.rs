//! The guest threads, and how engines share them.
//!
//! A step call whose first poll does not finish it (a guest that used up its
//! epoch slice and yields, or one waiting on a host call) runs on these threads,
//! never on the embedder's async workers. They are a small executor of their
//! own rather than a tokio runtime's workers because tokio serves runnable tasks
//! first come, first served: four spinning guests of one engine would get four
//! slices for each slice of another engine's guest, so one engine could take
//! every guest thread while another has work.
//!
//! Here each engine has a FIFO of runnable calls and a **virtual time**: the
//! CPU time its calls used on these threads, divided by its weight. A free
//! thread polls the next call of the runnable engine with the lowest virtual
//! time (weighted fair queueing, as Linux's CFS does between cgroups with
//! `cpu.weight`). A guest yields at every epoch tick, so a poll lasts one slice
//! at most; an engine that becomes runnable again starts from the current
//! virtual time, so idling banks no credit. With two busy engines of equal
//! weight, each gets half of the guest threads, however many calls each has
//! runnable; with weights 300 and 100, three quarters and one quarter.
//!
//! The guest futures still use tokio (timers, sockets, child processes): a
//! tokio runtime of one worker drives their I/O and timers, and every guest
//! thread enters it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The weight of an engine whose settings give none (as cgroup v2's
/// `cpu.weight` default).
pub const DEFAULT_CPU_WEIGHT: u32 = 100;

/// The largest weight (as cgroup v2's `cpu.weight`).
pub const MAX_CPU_WEIGHT: u32 = 10_000;

type BoxedCall = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the guest threads did for one engine since the runtime started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineCpu {
    /// Polls of its calls on the guest threads (about one per slice).
    pub polls: u64,
    /// Time its calls ran on the guest threads.
    pub busy: Duration,
    /// Its current weight.
    pub weight: u32,
}

/// The guest threads: `threads` OS threads polling calls fairly by engine.
pub(crate) struct GuestThreads {
    shared: Arc<Shared>,
    driver: Option<tokio::runtime::Runtime>,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    engines: HashMap<Arc<str>, EngineQueue>,
    /// The virtual time of the call polled last: where an engine that becomes
    /// runnable starts, so time spent idle is not credit.
    virtual_now: u128,
    stopping: bool,
}

struct EngineQueue {
    weight: u32,
    /// Nanoseconds of guest-thread time used, times 100, divided by the weight.
    vtime: u128,
    runnable: VecDeque<Arc<Task>>,
    cpu: EngineCpu,
}

struct Task {
    engine: Arc<str>,
    shared: Arc<Shared>,
    slot: Mutex<Slot>,
    panicked: AtomicBool,
}

#[derive(Default)]
struct Slot {
    call: Option<BoxedCall>,
    /// In its engine's runnable queue.
    queued: bool,
    /// Being polled by a guest thread.
    running: bool,
    /// Woken while being polled: queue it again when the poll returns.
    notified: bool,
    /// Its handle was dropped: drop the call instead of polling it.
    aborted: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn push(&self, task: Arc<Task>) {
        let mut state = lock(&self.state);
        if state.stopping {
            drop(state);
            // The threads are gone: drop the call, so its handle reports it
            // cancelled instead of waiting forever.
            let call = lock(&task.slot).call.take();
            drop(call);
            return;
        }
        let now = state.virtual_now;
        let queue = state
            .engines
            .entry(task.engine.clone())
            .or_insert_with(|| EngineQueue::new(DEFAULT_CPU_WEIGHT));
        if queue.runnable.is_empty() {
            queue.vtime = queue.vtime.max(now);
        }
        queue.runnable.push_back(task);
        drop(state);
        self.ready.notify_one();
    }

    /// The next call to poll: the head of the runnable engine with the lowest
    /// virtual time; `None` when stopping.
    fn next(&self) -> Option<Arc<Task>> {
        let mut state = lock(&self.state);
        loop {
            if state.stopping {
                return None;
            }
            let best = state
                .engines
                .iter()
                .filter(|(_, q)| !q.runnable.is_empty())
                .min_by_key(|(_, q)| q.vtime)
                .map(|(name, q)| (name.clone(), q.vtime));
            if let Some((engine, vtime)) = best {
                state.virtual_now = state.virtual_now.max(vtime);
                let queue = state.engines.get_mut(&engine)?;
                return queue.runnable.pop_front();
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn charge(&self, engine: &str, used: Duration) {
        let mut state = lock(&self.state);
        if let Some(queue) = state.engines.get_mut(engine) {
            queue.vtime += used.as_nanos() * 100 / u128::from(queue.weight.max(1));
            queue.cpu.polls += 1;
            queue.cpu.busy += used;
        }
    }
}

impl EngineQueue {
    fn new(weight: u32) -> Self {
        EngineQueue {
            weight,
            vtime: 0,
            runnable: VecDeque::new(),
            cpu: EngineCpu {
                weight,
                ..EngineCpu::default()
            },
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut slot = lock(&self.slot);
        if slot.running {
            slot.notified = true;
            return;
        }
        if slot.queued || slot.call.is_none() {
            return;
        }
        slot.queued = true;
        drop(slot);
        self.shared.push(self.clone());
    }
}

/// A call running on the guest threads. Awaiting it gives the call's output;
/// dropping it aborts the call (the call is dropped, here or on the thread
/// polling it once that poll returns).
pub(crate) struct GuestHandle<T> {
    task: Arc<Task>,
    /// The call's output, or `Err` when it panicked.
    output: oneshot::Receiver<Result<T, ()>>,
}

impl<T> Future for GuestHandle<T> {
    type Output = Result<T, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.output).poll(cx) {
            Poll::Ready(Ok(Ok(output))) => Poll::Ready(Ok(output)),
            Poll::Ready(Ok(Err(()))) => {
                Poll::Ready(Err("the host panicked running the step".into()))
            }
            Poll::Ready(Err(_)) if self.task.panicked.load(Ordering::Acquire) => {
                Poll::Ready(Err("the host panicked running the step".into()))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Err("the step call was cancelled".into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for GuestHandle<T> {
    fn drop(&mut self) {
        let call = {
            let mut slot = lock(&self.task.slot);
            slot.aborted = true;
            if slot.running { None } else { slot.call.take() }
        };
        // Dropped outside the lock: dropping a call may wake tasks.
        drop(call);
    }
}

impl GuestThreads {
    /// Starts `threads` guest threads (at least one) at `nice` and the tokio
    /// runtime that drives their I/O and timers.
    pub(crate) fn start(threads: usize, nice: i32) -> std::io::Result<Self> {
        let driver = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("arkline-guest-io")
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        });
        for _ in 0..threads.max(1) {
            let shared = shared.clone();
            let handle = driver.handle().clone();
            std::thread::Builder::new()
                .name("arkline-guest".into())
                .spawn(move || {
                    super::lower_priority(nice);
                    let _entered = handle.enter();
                    work(&shared);
                })?;
        }
        Ok(GuestThreads {
            shared,
            driver: Some(driver),
        })
    }

    /// Runs `call` on the guest threads as a call of `engine`, at `weight`
    /// (the engine's weight from then on).
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        engine: &str,
        weight: u32,
        call: impl Future<Output = T> + Send + 'static,
    ) -> GuestHandle<T> {
        let weight = weight.clamp(1, MAX_CPU_WEIGHT);
        let engine: Arc<str> = {
            let mut state = lock(&self.shared.state);
            let name = match state.engines.get_key_value(engine) {
                Some((name, _)) => name.clone(),
                None => Arc::from(engine),
            };
            let queue = state
                .engines
                .entry(name.clone())
                .or_insert_with(|| EngineQueue::new(weight));
            queue.weight = weight;
            queue.cpu.weight = weight;
            name
        };
        let (tx, output) = oneshot::channel();
        let task = Arc::new(Task {
            engine,
            shared: self.shared.clone(),
            slot: Mutex::new(Slot {
                call: Some(Box::pin(async move {
                    use futures::FutureExt as _;
                    let out = AssertUnwindSafe(call).catch_unwind().await.map_err(|_| ());
                    let _ = tx.send(out);
                })),
                queued: true,
                ..Slot::default()
            }),
            panicked: AtomicBool::new(false),
        });
        self.shared.push(task.clone());
        GuestHandle { task, output }
    }

    /// What the guest threads did for each engine so far.
    pub(crate) fn cpu(&self) -> Vec<(String, EngineCpu)> {
        let state = lock(&self.shared.state);
        let mut all: Vec<_> = state
            .engines
            .iter()
            .map(|(name, q)| (name.to_string(), q.cpu.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        let queued: Vec<_> = {
            let mut state = lock(&self.shared.state);
            state.stopping = true;
            state
                .engines
                .values_mut()
                .flat_map(|q| q.runnable.drain(..))
                .collect()
        };
        self.shared.ready.notify_all();
        // Queued calls hold the shared state: break the cycle.
        for task in queued {
            let call = lock(&task.slot).call.take();
            drop(call);
        }
        // The last clone of a `Runtime` may be dropped inside an async task,
        // where a blocking shutdown panics.
        if let Some(driver) = self.driver.take() {
            driver.shutdown_background();
        }
    }
}

fn work(shared: &Shared) {
    while let Some(task) = shared.next() {
        let call = {
            let mut slot = lock(&task.slot);
            slot.queued = false;
            match slot.call.take() {
                Some(call) if !slot.aborted => {
                    slot.running = true;
                    Some(call)
                }
                other => {
                    drop(slot);
                    drop(other);
                    None
                }
            }
        };
        let Some(mut call) = call else { continue };
        let waker = Waker::from(task.clone());
        let started = Instant::now();
        let polled = catch_unwind(AssertUnwindSafe(|| {
            call.as_mut().poll(&mut Context::from_waker(&waker))
        }));
        shared.charge(&task.engine, started.elapsed());
        match polled {
            Ok(Poll::Ready(())) => {
                lock(&task.slot).running = false;
                drop(call);
            }
            Ok(Poll::Pending) => {
                let mut slot = lock(&task.slot);
                slot.running = false;
                if slot.aborted {
                    drop(slot);
                    drop(call);
                    continue;
                }
                slot.call = Some(call);
                if std::mem::take(&mut slot.notified) {
                    slot.queued = true;
                    drop(slot);
                    shared.push(task.clone());
                }
            }
            Err(_) => {
                task.panicked.store(true, Ordering::Release);
                lock(&task.slot).running = false;
                // A call that panicked may panic again when dropped.
                let _ = catch_unwind(AssertUnwindSafe(|| drop(call)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A call that burns `slice` of CPU per poll and yields, forever or until
    /// `polls` polls, counting its polls.
    struct Burn {
        slice: Duration,
        left: Option<u64>,
        counter: Arc<AtomicU64>,
    }

    impl Future for Burn {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let start = Instant::now();
            while start.elapsed() < self.slice {
                std::hint::spin_loop();
            }
            self.counter.fetch_add(1, Ordering::Relaxed);
            if let Some(left) = &mut self.left {
                *left -= 1;
                if *left == 0 {
                    return Poll::Ready(());
                }
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn burn(slice: Duration, polls: Option<u64>) -> (Burn, Arc<AtomicU64>) {
        let counter = Arc::new(AtomicU64::new(0));
        (
            Burn {
                slice,
                left: polls,
                counter: counter.clone(),
            },
            counter,
        )
    }

    #[tokio::test]
    async fn a_busy_engine_gets_its_share_not_one_slice_per_call() {
        let threads = GuestThreads::start(1, 0).expect("guest threads");
        let slice = Duration::from_millis(2);
        // `noisy` has four calls that never end; `quiet` one call of 20 polls.
        let noisy: Vec<_> = (0..4)
            .map(|_| {
                let (call, counter) = burn(slice, None);
                (threads.spawn("noisy", DEFAULT_CPU_WEIGHT, call), counter)
            })
            .collect();
        let (call, quiet_polls) = burn(slice, Some(20));
        threads
            .spawn("quiet", DEFAULT_CPU_WEIGHT, call)
            .await
            .expect("quiet call ends");
        let noisy_polls: u64 = noisy.iter().map(|(_, c)| c.load(Ordering::Relaxed)).sum();
        drop(noisy);
        assert_eq!(quiet_polls.load(Ordering::Relaxed), 20);
        // First come, first served would give the four noisy calls 80 polls
        // while quiet ran its 20; equal shares give them about 20 in all.
        assert!(
            noisy_polls <= 30,
            "noisy got {noisy_polls} polls while quiet ran 20: not an equal share"
        );
        let cpu = threads.cpu();
        assert_eq!(cpu[1].0, "quiet");
        // The last poll is counted just after it sent the output: 19 or 20.
        assert!((19..=20).contains(&cpu[1].1.polls), "{:?}", cpu[1]);
    }

    #[tokio::test]
    async fn weights_divide_the_threads() {
        let threads = GuestThreads::start(1, 0).expect("guest threads");
        let slice = Duration::from_millis(1);
        let (call, heavy) = burn(slice, None);
        let heavy_call = threads.spawn("heavy", 300, call);
        let (call, light) = burn(slice, Some(40));
        threads
            .spawn("light", 100, call)
            .await
            .expect("light call ends");
        let heavy = heavy.load(Ordering::Relaxed);
        drop(heavy_call);
        assert_eq!(light.load(Ordering::Relaxed), 40);
        // Weight 300 against 100: three polls for each of light's, give or take
        // the polls before light started.
        assert!(
            (70..=220).contains(&heavy),
            "heavy (weight 300) got {heavy} polls while light (100) ran 40"
        );
    }

    #[tokio::test]
    async fn dropping_the_handle_drops_the_call_and_a_panic_is_reported() {
        let threads = GuestThreads::start(1, 0).expect("guest threads");
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let handle = threads.spawn("e", DEFAULT_CPU_WEIGHT, async move {
            let _flag = flag;
            std::future::pending::<()>().await;
        });
        // Let it be polled once and park.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!dropped.load(Ordering::SeqCst));
        drop(handle);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the parked call was dropped"
        );

        let err = threads
            .spawn("e", DEFAULT_CPU_WEIGHT, async { panic!("boom") })
            .await
            .expect_err("a panicking call fails");
        assert!(err.contains("panicked"), "{err}");

        // Tokio timers work on the guest threads.
        let slept = threads
            .spawn("e", DEFAULT_CPU_WEIGHT, async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                7
            })
            .await
            .expect("sleeping call ends");
        assert_eq!(slept, 7);
    }
}
