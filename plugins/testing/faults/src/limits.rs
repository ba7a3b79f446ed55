//! Steps that never finish on their own, or end in a trap: each one is stopped only
//! by the host limit it exercises (fuel or epoch deadline, call timeout, memory
//! limit, stack limit, trap handling).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use arkline_sdk::prelude::*;

/// Configuration of the `burn` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Burn {
    /// Loop iterations to run (a fixed amount of CPU work).
    pub iterations: u64,
}

/// Runs the `burn` step: `iterations` turns of a CPU loop that makes no host
/// call, then outputs `iterations`. A bounded `spin`: CPU-share tests and
/// benchmarks give it more work than one epoch slice.
pub fn burn(_ctx: &Context, config: Burn) -> StepResult {
    let mut counter: u64 = 0;
    for _ in 0..config.iterations {
        counter = black_box(counter.wrapping_add(1));
    }
    Ok(Outcome::new().output("iterations", counter.to_string()))
}

/// Configuration of the `spin` step (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spin {}

/// Runs the `spin` step: a CPU loop that never ends and makes no host call, so only
/// fuel or an epoch deadline can interrupt it.
pub fn spin(_ctx: &Context, _config: Spin) -> StepResult {
    // One line first, so a test (or a benchmark) knows the guest is running.
    arkline_sdk::info!("spinning");
    let mut counter: u64 = 0;
    loop {
        // `black_box` keeps the optimiser from proving the loop has no effect and
        // reducing it to a bare `loop {}` (or removing it).
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Configuration of the `sleep` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

/// Runs the `sleep` step: sleeps `ms` milliseconds, then outputs `slept_ms` (the
/// requested time) and `elapsed_ms` (as the guest's monotonic clock measured it).
///
/// The sleep is a WASI clock call, so the guest waits inside the host, where fuel is
/// not consumed: it tests the wall-clock limit, not the CPU one.
pub fn sleep(_ctx: &Context, config: Sleep) -> StepResult {
    // One line first, so a test knows the guest is running (and now waiting).
    arkline_sdk::info!("sleeping {} ms", config.ms);
    let start = Instant::now();
    thread::sleep(Duration::from_millis(config.ms));
    Ok(Outcome::new()
        .output("slept_ms", config.ms.to_string())
        .output("elapsed_ms", start.elapsed().as_millis().to_string()))
}

/// Runs the `sleep-first` step: like `sleep` in attempt 1, at once in later
/// attempts; outputs `attempt`. A test that kills the host during attempt 1
/// sees the step run again and end without waiting.
pub fn sleep_first(ctx: &Context, config: Sleep) -> StepResult {
    if ctx.attempt <= 1 {
        arkline_sdk::info!("sleeping {} ms", config.ms);
        thread::sleep(Duration::from_millis(config.ms));
    }
    Ok(Outcome::new().output("attempt", ctx.attempt.to_string()))
}

/// Configuration of the `memory-bomb` step (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryBomb {}

/// Size of each chunk `memory-bomb` allocates.
const CHUNK: usize = 1024 * 1024;

/// Runs the `memory-bomb` step: allocates 1 MiB chunks and keeps them all, forever.
/// When the host refuses to grow memory the allocator aborts, which traps.
pub fn memory_bomb(_ctx: &Context, _config: MemoryBomb) -> StepResult {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        // A non-zero fill writes every byte, so the memory is really used, and an
        // allocator cannot satisfy the request with untouched zeroed pages.
        kept.push(vec![0xA5; CHUNK]);
        black_box(&mut kept);
    }
}

/// Configuration of the `recurse` step (none).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Recurse {}

/// Runs the `recurse` step: recursion without bound until the guest's wasm stack
/// overflows, which traps.
pub fn recurse(_ctx: &Context, _config: Recurse) -> StepResult {
    descend();
    // Not reached: `descend` returns only after 2^64 levels.
    Err(StepError::failed(format!(
        "recursion returned at depth {}",
        DEPTH.load(Ordering::Relaxed)
    )))
}

/// How deep `recurse` is. A global rather than a local array: a frame whose locals
/// live in linear memory would exhaust the 1 MiB shadow stack first, and that ends
/// in an out-of-bounds access trap; frames with nothing in memory use only the wasm
/// stack, so its limit is what stops the recursion.
static DEPTH: AtomicU64 = AtomicU64::new(0);

/// One level of `recurse`. The atomic updates are side effects the optimiser must
/// keep on every level, and the one after the call keeps it out of tail position,
/// so the recursion can become neither a loop nor an endless-loop shortcut.
#[inline(never)]
fn descend() {
    if DEPTH.fetch_add(1, Ordering::Relaxed) == u64::MAX {
        return;
    }
    descend();
    DEPTH.fetch_sub(1, Ordering::Relaxed);
}

/// Configuration of the `panic` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Panic {
    /// The panic message.
    pub message: String,
}

/// Runs the `panic` step: panics with `message`. Guests are built with
/// `panic = "abort"`, so the panic message goes to stderr and the call traps.
pub fn panic(_ctx: &Context, config: Panic) -> StepResult {
    panic!("{}", config.message)
}
