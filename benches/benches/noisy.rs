//! Noisy neighbour: one engine's step latency while another engine's guests spin
//! until their deadlines, against the same figure measured quiet in the same run.
//!
//! Two engines, `quiet` and `noisy`, merged in one container over one runtime
//! (one wasmtime engine, one epoch ticker, one tokio runtime of 2 workers — what
//! `arkline serve` runs on a 2-core machine). `noisy` keeps `ARKLINE_NOISY_SPINNERS`
//! (default 4: two per worker) `faults/spin` calls in flight, each a CPU loop that
//! makes no host call and only ends when its deadline (`ARKLINE_NOISY_DEADLINE_MS`,
//! default 200 ms) stops it. `quiet` calls `faults/upper`, one call at a time:
//!
//! - **runtime**: `BizLease::invoke` on the two engines' leases (the isolation
//!   runtime alone: instantiate, call, drop);
//! - **runtime, a call longer than a slice**: `faults/burn` of ~40 ms of CPU,
//!   which moves to the guest threads after its first slice and competes there
//!   with the spinners: the engines' CPU shares (equal weights, then the quiet
//!   engine at weight 400);
//! - **executions**: durable one-step executions (data dir: redb and file logs)
//!   triggered one at a time and waited for; the step's own latency (its
//!   recorded start → end) and the execution's (trigger → seen finished). The
//!   noise is durable `spin` executions of `noisy`, four in flight.
//!
//! Budget (issue): the quiet engine's p99 step latency with the noise ≤ 2× quiet.
//!
//! `cargo bench -p arkline-benches --bench noisy -- --measurement-time 5`
//! (unset `RUST_BACKTRACE` first). Prints a table, no criterion: the figure is a
//! tail percentile under a background load, not a per-iteration mean.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::{ExecutionPhase, PipelineSettingSpec};
use arkline::runtime::{BizLease, Runtime, RuntimeConfig, StepCall, StepFailure, StepFault};
use arkline::{Container, Engine, TriggerRequest};
use arkline_benches::{Latencies, arg_secs, ms, us};
use serde_json::json;

const QUIET: &str = r#"
name: one
stages:
  - name: s
    steps: [{ name: a, uses: faults/upper, with: { text: x } }]
"#;

fn spin_pipeline(deadline: Duration) -> String {
    format!(
        r#"
name: spin
stages:
  - name: s
    steps: [{{ name: a, uses: faults/spin, timeout: {}ms }}]
"#,
        deadline.as_millis()
    )
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `one` for `warm_up`, then for `measure`, returning each measured sample.
async fn sample<T, F, Fut>(warm_up: Duration, measure: Duration, mut one: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let start = Instant::now();
    while start.elapsed() < warm_up {
        one().await;
    }
    let start = Instant::now();
    let mut all = Vec::new();
    while start.elapsed() < measure {
        all.push(one().await);
    }
    all
}

/// Background spinners: `n` tasks, each calling `spin` until stopped.
struct Noise {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Noise {
    fn runtime(lease: Arc<BizLease>, n: usize, deadline: Duration) -> Self {
        Self::spawn(n, move || {
            let lease = lease.clone();
            async move {
                let report = lease
                    .invoke(StepCall::new("spin", json!({})).timeout(deadline))
                    .await;
                match report.result {
                    Err(StepFailure::Fault(StepFault::Timeout { .. })) => {}
                    other => panic!("a spin should end at its deadline, not with {other:?}"),
                }
            }
        })
    }

    fn executions(engine: Engine, n: usize) -> Self {
        Self::spawn(n, move || {
            let engine = engine.clone();
            async move {
                let exec = engine
                    .trigger("spin", TriggerRequest::manual())
                    .await
                    .expect("noisy trigger");
                let done = engine.wait(&exec.metadata.name).await.expect("noisy wait");
                assert_eq!(
                    done.status.phase,
                    ExecutionPhase::Failed,
                    "a spin execution ends at its step deadline"
                );
            }
        })
    }

    fn spawn<F, Fut>(n: usize, call: F) -> Self
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let tasks = (0..n)
            .map(|_| {
                let (stop, calls, call) = (stop.clone(), calls.clone(), call.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        call().await;
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Noise { stop, calls, tasks }
    }

    /// Stops the spinners, returning how many calls they made.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("noise task");
        }
        self.calls.load(Ordering::Relaxed)
    }
}

struct Row {
    what: &'static str,
    quiet: Latencies,
    noisy: Latencies,
    samples: (usize, usize),
    noise_calls: u64,
}

impl Row {
    fn print(&self, fmt: fn(Duration) -> String) {
        let ratio = self.noisy.p99.as_secs_f64() / self.quiet.p99.as_secs_f64();
        println!(
            "| {} | {} / {} | {} / {} | {:.2}× | {:.2}× {} | {} / {} | {} |",
            self.what,
            fmt(self.quiet.p50),
            fmt(self.quiet.p99),
            fmt(self.noisy.p50),
            fmt(self.noisy.p99),
            self.noisy.p50.as_secs_f64() / self.quiet.p50.as_secs_f64(),
            ratio,
            if ratio <= 2.0 { "✓" } else { "✗" },
            self.samples.0,
            self.samples.1,
            self.noise_calls,
        );
    }
}

async fn container(
    dir: &std::path::Path,
    runtime: &Runtime,
    ark: &Ark,
    deadline: Duration,
) -> (Container, Engine, Engine) {
    let container = Container::builder()
        .runtime(runtime.clone())
        .data_dir(dir)
        .build()
        .expect("container builds");
    let mut engines = Vec::new();
    for (name, yaml) in [
        ("quiet", QUIET.to_owned()),
        ("noisy", spin_pipeline(deadline)),
    ] {
        let engine = container.engine(name).await.expect("engine starts");
        engine
            .install(ark.clone(), &Capabilities::default())
            .await
            .expect("faults installs");
        engine
            .apply_settings(PipelineSettingSpec {
                executor_quota: 0,
                ..PipelineSettingSpec::default()
            })
            .await
            .expect("settings apply");
        engine
            .apply_pipeline_yaml("bench.yaml", &yaml)
            .await
            .unwrap_or_else(|e| panic!("{yaml} applies: {e}"));
        engines.push(engine);
    }
    let noisy = engines.pop().expect("two engines");
    let quiet = engines.pop().expect("two engines");
    (container, quiet, noisy)
}

/// Runtime level: `call` on the quiet lease, one at a time, quiet and then
/// while the noisy lease's spinners run. `upper` is the isolation runtime's
/// own cost; `burn` (~40 ms of CPU, past its first slice) competes with the
/// spinners on the guest threads, at the weight the call carries: the engines'
/// CPU shares (with equal weights the quiet call gets half the guest threads,
/// not one slice in five).
#[allow(clippy::too_many_arguments)]
async fn call_row(
    what: &'static str,
    quiet: Arc<BizLease>,
    noisy: Arc<BizLease>,
    call: StepCall,
    spinners: usize,
    deadline: Duration,
    warm_up: Duration,
    measure: Duration,
) -> Row {
    let one = || {
        let (quiet, call) = (quiet.clone(), call.clone());
        async move {
            let at = Instant::now();
            let report = quiet.invoke(call).await;
            assert!(report.result.is_ok(), "{:?}", report.result);
            at.elapsed()
        }
    };
    let calm = sample(warm_up, measure, one).await;
    let noise = Noise::runtime(noisy, spinners, deadline);
    let loud = sample(warm_up, measure, one).await;
    let noise_calls = noise.stop().await;
    Row {
        what,
        samples: (calm.len(), loud.len()),
        quiet: Latencies::of(calm),
        noisy: Latencies::of(loud),
        noise_calls,
    }
}

/// Loop iterations of `burn` that take about `target` on this machine.
async fn calibrate(lease: &BizLease, target: Duration) -> u64 {
    let probe = 20_000_000u64;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let at = Instant::now();
        let report = lease
            .invoke(StepCall::new("burn", json!({ "iterations": probe })))
            .await;
        assert!(report.result.is_ok(), "{:?}", report.result);
        best = best.min(at.elapsed());
    }
    (probe as f64 * target.as_secs_f64() / best.as_secs_f64()) as u64
}

/// Execution level: durable one-step executions of `quiet`, while `noisy` runs
/// spin executions. Returns the step row and the execution row.
async fn execution_rows(
    quiet: Engine,
    noisy: Engine,
    spinners: usize,
    deadline: Duration,
    warm_up: Duration,
    measure: Duration,
) -> (Row, Row) {
    let one = || {
        let quiet = quiet.clone();
        async move {
            let at = Instant::now();
            let exec = quiet
                .trigger("one", TriggerRequest::manual())
                .await
                .expect("trigger");
            let done = quiet.wait(&exec.metadata.name).await.expect("wait");
            let elapsed = at.elapsed();
            assert_eq!(
                done.status.phase,
                ExecutionPhase::Succeeded,
                "{}",
                done.status.reason
            );
            let step = &done.status.stages[0].steps[0];
            let (Some(started), Some(finished)) = (step.started, step.finished) else {
                panic!("a finished step has its times: {step:?}");
            };
            let step = (finished - started).to_std().unwrap_or_default();
            (step, elapsed)
        }
    };
    // Both figures come from the same executions.
    let split = |all: Vec<(Duration, Duration)>| -> (Vec<Duration>, Vec<Duration>) {
        all.into_iter().unzip()
    };
    let calm = sample(warm_up, measure, one).await;
    // `ARKLINE_NOISY_EXEC_NOISE=calls`: the same spinners as bare calls (no
    // store writes, no logs): tells CPU contention from the shared store.
    let noise = if std::env::var("ARKLINE_NOISY_EXEC_NOISE").as_deref() == Ok("calls") {
        Noise::runtime(
            Arc::new(noisy.lease("faults").expect("resolves")),
            spinners,
            deadline,
        )
    } else {
        Noise::executions(noisy, spinners)
    };
    let loud = sample(warm_up, measure, one).await;
    let noise_calls = noise.stop().await;
    let samples = (calm.len(), loud.len());
    let (calm_step, calm_exec) = split(calm);
    let (loud_step, loud_exec) = split(loud);
    (
        Row {
            what: "durable execution: the step (recorded start → end)",
            quiet: Latencies::of(calm_step),
            noisy: Latencies::of(loud_step),
            samples,
            noise_calls,
        },
        Row {
            what: "durable execution: trigger → finished",
            quiet: Latencies::of(calm_exec),
            noisy: Latencies::of(loud_exec),
            samples,
            noise_calls,
        },
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let warm_up = arg_secs("--warm-up-time", 1.0);
    let measure = arg_secs("--measurement-time", 5.0);
    let spinners = env_number("ARKLINE_NOISY_SPINNERS", 4) as usize;
    let deadline = Duration::from_millis(env_number("ARKLINE_NOISY_DEADLINE_MS", 200));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ark = Ark::open(arkline_testkit::plugin("faults")).expect("faults archive");
    let cache = tempfile::tempdir().expect("tempdir");
    let mut config = RuntimeConfig::default().cache_dir(cache.path());
    if let Ok(tick) = std::env::var("ARKLINE_NOISY_TICK_US") {
        let tick = tick.parse().expect("ARKLINE_NOISY_TICK_US: microseconds");
        config = config.epoch_tick(Duration::from_micros(tick));
    }
    if let Ok(threads) = std::env::var("ARKLINE_NOISY_GUEST_THREADS") {
        let threads = threads
            .parse()
            .expect("ARKLINE_NOISY_GUEST_THREADS: a count");
        config = config.guest_threads(threads);
    }
    if let Ok(fuel) = std::env::var("ARKLINE_NOISY_SLICE_FUEL") {
        let fuel: u64 = fuel
            .parse()
            .expect("ARKLINE_NOISY_SLICE_FUEL: fuel (0: none)");
        config = config.slice_fuel((fuel > 0).then_some(fuel));
    }
    if let Ok(nice) = std::env::var("ARKLINE_NOISY_GUEST_NICE") {
        let nice = nice
            .parse()
            .expect("ARKLINE_NOISY_GUEST_NICE: a nice value");
        config = config.guest_nice(nice);
    }
    let tick = config.epoch_tick;
    let config_threads = config.guest_threads;
    let config_nice = config.guest_nice;
    let config_fuel = config.slice_fuel;
    let runtime = Runtime::new(config).expect("runtime");
    runtime.prepare(&ark).expect("warms the compiled cache");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "noisy neighbour: {} CPUs (load average before: {}), tokio 2 workers, epoch tick {tick:?}, guest threads {config_threads} (0: one per CPU but one) at nice {config_nice}, slice fuel {config_fuel:?}; {spinners} spinners, deadline {deadline:?}; warm-up {warm_up:?}, measurement {measure:?} each side",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let rows = rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (container, quiet, noisy) = container(dir.path(), &runtime, &ark, deadline).await;
        let quiet_lease = Arc::new(quiet.lease("faults").expect("resolves"));
        let noisy_lease = Arc::new(noisy.lease("faults").expect("resolves"));
        let runtime_row = call_row(
            "runtime: `upper` call (BizLease::invoke)",
            quiet_lease.clone(),
            noisy_lease.clone(),
            StepCall::new("upper", json!({ "text": "x" })),
            spinners,
            deadline,
            warm_up,
            measure,
        )
        .await;
        let iterations = calibrate(&quiet_lease, Duration::from_millis(40)).await;
        let mut burn_rows = Vec::new();
        for (what, weight) in [
            ("runtime: `burn` call, ~40 ms of CPU, equal weights", 100),
            ("runtime: `burn` call, ~40 ms of CPU, quiet weight 400", 400),
        ] {
            burn_rows.push(
                call_row(
                    what,
                    quiet_lease.clone(),
                    noisy_lease.clone(),
                    StepCall::new("burn", json!({ "iterations": iterations })).cpu_weight(weight),
                    spinners,
                    deadline,
                    warm_up,
                    measure,
                )
                .await,
            );
        }
        drop((quiet_lease, noisy_lease));
        let (step_row, exec_row) = execution_rows(
            quiet.clone(),
            noisy.clone(),
            spinners,
            deadline,
            warm_up,
            measure,
        )
        .await;
        container.shutdown().await;
        println!("guest threads by engine: {:?}", runtime.guest_cpu());
        let [equal, weighted] = <[Row; 2]>::try_from(burn_rows).ok().expect("two burn rows");
        [runtime_row, equal, weighted, step_row, exec_row]
    });
    println!();
    println!(
        "| quiet engine's latency | quiet p50 / p99 | with noise p50 / p99 | p50 ratio | p99 ratio (budget ≤ 2×) | samples quiet / noisy | noise calls |"
    );
    println!("|---|---|---|---|---|---|---|");
    rows[0].print(us);
    rows[1].print(ms);
    rows[2].print(ms);
    rows[3].print(ms);
    rows[4].print(ms);
}
