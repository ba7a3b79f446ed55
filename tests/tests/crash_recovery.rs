//! Crash recovery of executions, with real processes on a real redb file.
//!
//! The parent re-runs this binary as a child (`ARKLINE_CRASH_RECOVERY_CHILD=<data
//! dir>`). The child opens a container on the data dir, installs the faults biz,
//! triggers one execution of a pipeline (only when none exists yet) and prints
//! each step's state as it sees it change in the store, flushed. The parent
//! SIGKILLs it a random time after some step (or some `append` step) started,
//! six times, then lets a last child finish the execution; between rounds it
//! reads the store file itself. Every child resumes the previous one's crash.
//! (`harness = false`: this file is its own `main`.)
//!
//! The pipeline interleaves `append` steps with slow `sleep` steps; each append
//! step appends `<its name>;` and a newline to `/workspace/count.txt` (with fsync)
//! and outputs `lines`, the file's line count afterwards; a last step reads the
//! file back. Every step has retries to spare, as an interrupted attempt counts.
//!
//! The guarantee checked: **a step is at-least-once while it is interrupted, and
//! exactly-once from the moment its completion is recorded.**
//!
//! - A step cut off by a kill runs again (a new attempt) in the next process, so
//!   its side effect may happen more than once: the kill can land between the
//!   guest's fsync and the write of `Succeeded` (and even between the guest's
//!   write of the text and of the newline, so a line may hold a cut-off attempt's
//!   `x;` followed by its retry's `x;`). Each attempt writes at most once, so a
//!   step's writes never outnumber its attempts, and a step never found cut off
//!   wrote exactly once.
//! - Once `Succeeded` is recorded (with its outputs, in the same write) the step
//!   never runs again: the `lines`-th line of the file ends with its write and it
//!   wrote nothing after that line; its success, attempts and outputs never change
//!   again, whoever looks (the child's acknowledgements, the parent's reads
//!   between rounds, the final state); and no step of a later stage wrote before
//!   that line.
//! - A step found `Running` in the store after a kill was interrupted: it ends
//!   `Succeeded` with more attempts and `interruptions: 1` (the first cut
//!   attempt is given back; later ones use its retries), and its log says the
//!   attempt was cut off by a restart. Every step's log is numbered on across restarts.
//! - The execution ends `Succeeded`, nothing is left `Running`, and there is one
//!   execution (a restart never triggers a second one).
//!
//! The child starts the engine before it installs the biz again (bizes are not
//! persisted yet), so a resumed execution also exercises waiting for the exact
//! biz version it resolved before the crash.
//!
//! Then three short scenarios (`ARKLINE_CRASH_SCENARIO`), each on its own data
//! dir, with one step that has **no retries** and sleeps for ten minutes in its
//! first attempt only (`faults/sleep-first`): the first child is killed once the
//! step is `Running`, a second child resumes the execution.
//!
//! - By default a restart gives the cut attempt back once: the step runs again
//!   (attempt 2), the execution ends `Succeeded` and the step records
//!   `interruptions: 1`.
//! - With the engine's `interrupted_retries: 0`, the step fails with reason
//!   `interrupted` (the behaviour before interruptions were given back).
//! - A step marked `repeat_on_restart: false` fails with reason `interrupted`.
//!
//! Last, a burst (`ARKLINE_CRASH_SCENARIO=burst`, its own data dir): the child
//! triggers 200 executions of a pipeline of two `append` steps around a short
//! sleep, and is killed once 20 have finished, with the rest in flight. A
//! second child resumes them all. Every execution ends `Succeeded` with no
//! step left `Running`; a step the store held as `Succeeded` when the first
//! child was killed wrote its line exactly once and kept its attempts (it never
//! ran again); any other wrote at least once and at most once per attempt.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use arkline::ark::Ark;
use arkline::host::Capabilities;
use arkline::model::{
    ExecutionPhase, PipelineExecution, PipelineSettingSpec, StepPhase, StepStatus,
};
use arkline::store::{Api, LabelSelector, RedbStore, Store};
use arkline::{Container, TriggerRequest};
use futures::StreamExt;

const CHILD_ENV: &str = "ARKLINE_CRASH_RECOVERY_CHILD";
const ARK_ENV: &str = "ARKLINE_CRASH_RECOVERY_ARK";
const SEED_ENV: &str = "ARKLINE_CRASH_SEED";
/// Set for a child of one of the interruption scenarios: its name.
const SCENARIO_ENV: &str = "ARKLINE_CRASH_SCENARIO";
const ENGINE: &str = "crash";
const PIPELINE: &str = "crash";
/// Children killed before the one allowed to finish.
const KILLS: u32 = 6;
/// The longest one child may run before the test fails instead of hanging (the
/// first one compiles the faults component; each takes a few seconds).
const ROUND_LIMIT: Duration = Duration::from_secs(120);
/// The longest the final checks may take.
const CHECK_LIMIT: Duration = Duration::from_secs(60);

/// Each `append` step appends its own name; with the index of its stage.
const APPENDS: [(&str, usize); 4] = [("a", 0), ("b", 2), ("c", 4), ("d", 5)];
/// The step that reads the file back, and its output.
const READER: &str = "count";

const PIPELINE_YAML: &str = r#"
name: crash
stages:
  - name: first
    steps:
      - name: a
        uses: faults/append
        with: { path: /workspace/count.txt, line: "a;" }
        retries: 20
  - name: nap1
    steps:
      - name: sleep1
        uses: faults/sleep
        with: { ms: 400 }
        retries: 20
  - name: second
    steps:
      - name: b
        uses: faults/append
        with: { path: /workspace/count.txt, line: "b;" }
        retries: 20
  - name: nap2
    steps:
      - name: sleep2
        uses: faults/sleep
        with: { ms: 400 }
        retries: 20
  - name: third
    steps:
      - name: c
        uses: faults/append
        with: { path: /workspace/count.txt, line: "c;" }
        retries: 20
  - name: last
    steps:
      - name: sleep3
        uses: faults/sleep
        with: { ms: 400 }
        retries: 20
      - name: d
        uses: faults/append
        with: { path: /workspace/count.txt, line: "d;" }
        retries: 20
  - name: check
    steps:
      - name: count
        uses: faults/read-file
        with: { path: /workspace/count.txt }
        retries: 20
"#;

/// The burst scenario: its name, how many executions it triggers, and after
/// how many have finished its first child is killed.
const BURST: &str = "burst";
const BURST_EXECUTIONS: usize = 200;
const BURST_KILL_AFTER: usize = 20;

const BURST_YAML: &str = r#"
name: crash
stages:
  - name: one
    steps:
      - name: a
        uses: faults/append
        with: { path: /workspace/count.txt, line: "a;" }
        retries: 5
  - name: two
    steps:
      - name: nap
        uses: faults/sleep
        with: { ms: 50 }
        retries: 5
  - name: three
    steps:
      - name: b
        uses: faults/append
        with: { path: /workspace/count.txt, line: "b;" }
        retries: 5
  - name: check
    steps:
      - name: count
        uses: faults/read-file
        with: { path: /workspace/count.txt }
        retries: 5
"#;

/// The interruption scenarios: name, engine settings, pipeline. The pipeline
/// is named like the main one, so the child code is shared.
fn scenario(name: &str) -> (PipelineSettingSpec, String) {
    let step = |extra: &str| {
        format!(
            r#"
name: crash
stages:
  - name: only
    steps:
      - name: once
        uses: faults/sleep-first
        with: {{ ms: 600000 }}{extra}
"#
        )
    };
    match name {
        "default" => (PipelineSettingSpec::default(), step("")),
        "no-interrupted-retries" => (
            PipelineSettingSpec {
                interrupted_retries: Some(0),
                ..PipelineSettingSpec::default()
            },
            step(""),
        ),
        "not-repeatable" => (
            PipelineSettingSpec::default(),
            step("\n        repeat_on_restart: false"),
        ),
        BURST => (PipelineSettingSpec::default(), BURST_YAML.to_owned()),
        other => panic!("unknown scenario {other}"),
    }
}

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(Path::new(&dir)),
        Err(_) => parent(),
    }
}

// ---- the child ----

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent reads these; if the pipe is gone we are being killed anyway.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn steps(exec: &PipelineExecution) -> impl Iterator<Item = &StepStatus> {
    exec.status
        .stages
        .iter()
        .flat_map(|s| s.steps.iter())
        .chain(exec.status.finally.iter())
}

/// `STEP <name> <phase> <attempts> <lines output or ->`.
fn step_line(exec: &PipelineExecution, step: &StepStatus) -> String {
    let lines = exec
        .status
        .outputs
        .get(&step.name)
        .and_then(|o| o.get("lines"))
        .map_or("-", String::as_str);
    format!(
        "STEP {} {} {} {lines}",
        step.name,
        step.phase.as_str(),
        step.attempts
    )
}

/// Runs (or resumes) the execution and reports what it sees until it finishes.
fn child(dir: &Path) {
    let ark = std::env::var(ARK_ENV).expect("the parent names the faults archive");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let faults = Ark::open(&ark).expect("the faults archive reads back");
        // The engine starts before the biz is installed again (bizes are not
        // persisted yet): a resumed execution waits for its exact version.
        let container = Container::builder()
            .data_dir(dir)
            .build()
            .expect("the container builds on the data dir");
        let engine = container.engine(ENGINE).await.expect("the engine starts");
        let (settings, yaml) = match std::env::var(SCENARIO_ENV) {
            Ok(name) => scenario(&name),
            Err(_) => (PipelineSettingSpec::default(), PIPELINE_YAML.to_owned()),
        };
        engine
            .apply_settings(settings)
            .await
            .expect("the settings apply");
        engine
            .install(faults, &Capabilities::default())
            .await
            .expect("faults installs");
        if std::env::var(SCENARIO_ENV).as_deref() == Ok(BURST) {
            burst_child(&engine, &yaml).await;
            container.shutdown().await;
            return;
        }
        let existing = engine
            .executions(Some(PIPELINE))
            .await
            .expect("list executions");
        let name = match existing.first() {
            Some(exec) => exec.metadata.name.clone(),
            None => {
                engine
                    .apply_pipeline_yaml("crash.yaml", &yaml)
                    .await
                    .unwrap_or_else(|e| panic!("the pipeline applies: {e}"));
                engine
                    .trigger(PIPELINE, TriggerRequest::manual())
                    .await
                    .expect("trigger")
                    .metadata
                    .name
            }
        };
        say(&format!("READY {name}"));
        let mut states = engine.watch_execution(&name).await.expect("watch");
        let mut said: BTreeMap<String, String> = BTreeMap::new();
        let mut phase = None;
        let mut first = true;
        let last = loop {
            let exec = match states.next().await {
                Some(Ok(exec)) => exec,
                Some(Err(e)) => panic!("watching {name}: {e}"),
                None => panic!("the watch of {name} ended before it finished"),
            };
            for step in steps(&exec) {
                let line = step_line(&exec, step);
                if said.get(&step.name) != Some(&line) {
                    say(&line);
                    said.insert(step.name.clone(), line);
                }
            }
            if phase != Some(exec.status.phase) {
                phase = Some(exec.status.phase);
                say(&format!("EXEC {:?}", exec.status.phase));
            }
            if first {
                // What follows happened in this process.
                say("WATCHING");
                first = false;
            }
            if exec.status.phase.is_finished() {
                break exec;
            }
        };
        say(&format!("DONE {:?}", last.status.phase));
        container.shutdown().await;
    });
}

/// The burst's child: triggers the executions (unless an earlier child did),
/// then says `FINISHED <n>` as executions finish and `DONE <phase>` once all
/// have (`Succeeded` only when every one did).
async fn burst_child(engine: &arkline::Engine, yaml: &str) {
    let existing = engine
        .executions(Some(PIPELINE))
        .await
        .expect("list executions");
    if existing.is_empty() {
        engine
            .apply_pipeline_yaml("crash.yaml", yaml)
            .await
            .unwrap_or_else(|e| panic!("the pipeline applies: {e}"));
        for _ in 0..BURST_EXECUTIONS {
            engine
                .trigger(PIPELINE, TriggerRequest::manual())
                .await
                .expect("trigger");
        }
    }
    say("TRIGGERED");
    let mut said = None;
    loop {
        let execs = engine
            .executions(Some(PIPELINE))
            .await
            .expect("list executions");
        let finished = execs
            .iter()
            .filter(|e| e.status.phase.is_finished())
            .count();
        if said != Some(finished) {
            say(&format!("FINISHED {finished}"));
            said = Some(finished);
        }
        if finished == execs.len() {
            let all_ok = execs
                .iter()
                .all(|e| e.status.phase == ExecutionPhase::Succeeded);
            say(if all_ok {
                "DONE Succeeded"
            } else {
                "DONE Failed"
            });
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- the parent ----

/// A small deterministic PRNG (xorshift64*), seeded per run and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

/// One `STEP` line of a child, or a step status read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    phase: String,
    attempts: u32,
    lines: Option<String>,
}

impl Seen {
    fn parse(line: &str) -> Option<(String, Self)> {
        let mut parts = line.split(' ');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("STEP"), Some(name), Some(phase), Some(attempts), Some(lines), None) => Some((
                name.to_owned(),
                Self {
                    phase: phase.to_owned(),
                    attempts: attempts.parse().ok()?,
                    lines: Some(lines).filter(|l| *l != "-").map(str::to_owned),
                },
            )),
            _ => None,
        }
    }

    fn of(exec: &PipelineExecution, step: &StepStatus) -> Self {
        Self {
            phase: step.phase.as_str().to_owned(),
            attempts: step.attempts,
            lines: exec
                .status
                .outputs
                .get(&step.name)
                .and_then(|o| o.get("lines"))
                .cloned(),
        }
    }
}

/// Everything observed of the steps across rounds.
#[derive(Debug, Default)]
struct Ledger {
    /// Step → how it was when its success was first observed.
    completed: BTreeMap<String, (Seen, String)>,
    /// Step → the attempt it was on when a kill cut it off (the highest one).
    interrupted: BTreeMap<String, u32>,
}

impl Ledger {
    /// Records one observation; a completed step must never change again.
    fn observe(&mut self, step: &str, seen: &Seen, whence: &str) {
        match self.completed.get(step) {
            Some((done, when)) => assert_eq!(
                seen, done,
                "{whence}: step {step} was seen Succeeded ({when}) and has changed since: a completed step ran again or its record was lost"
            ),
            None if seen.phase == StepPhase::Succeeded.as_str() => {
                self.completed
                    .insert(step.to_owned(), (seen.clone(), whence.to_owned()));
            }
            None => {}
        }
    }
}

/// A child whose stdout lines arrive on a channel (complete lines only: a
/// fragment cut by the kill was never acknowledged).
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
    deadline: Instant,
}

/// What reading a child's output gave.
enum Heard {
    Line(String),
    /// The time asked for came first.
    Tick,
    /// The output ended: the child exited or was killed.
    End,
}

impl Running {
    fn spawn(exe: &Path, data: &Path, ark: &Path, stderr: PathBuf) -> Self {
        Self::start(
            Command::new(exe).env(CHILD_ENV, data).env(ARK_ENV, ark),
            stderr,
        )
    }

    /// A child of interruption scenario `name`.
    fn spawn_scenario(exe: &Path, data: &Path, ark: &Path, stderr: PathBuf, name: &str) -> Self {
        Self::start(
            Command::new(exe)
                .env(CHILD_ENV, data)
                .env(ARK_ENV, ark)
                .env(SCENARIO_ENV, name),
            stderr,
        )
    }

    fn start(command: &mut Command, stderr: PathBuf) -> Self {
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("spawn the child");
        let mut out = BufReader::new(child.stdout.take().expect("child stdout"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = Vec::new();
            loop {
                line.clear();
                match out.read_until(b'\n', &mut line) {
                    Ok(n) if n > 0 && line.last() == Some(&b'\n') => {
                        let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                        if tx.send(text).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
        Self {
            child,
            lines,
            stderr,
            deadline: Instant::now() + ROUND_LIMIT,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Reads the child's output to its end; the phase of its `DONE` line, if any.
    fn done(&mut self, context: &str) -> Option<String> {
        let mut done = None;
        loop {
            match self.next_line(None, context) {
                Heard::Line(line) => {
                    if let Some(phase) = line.strip_prefix("DONE ") {
                        done = Some(phase.to_owned());
                    }
                }
                Heard::Tick => {}
                Heard::End => return done,
            }
        }
    }

    /// The next line of output, waiting at most until `until`; a child that runs
    /// past [`ROUND_LIMIT`] is killed and fails the test.
    fn next_line(&mut self, until: Option<Instant>, context: &str) -> Heard {
        let wait = until.map_or(self.deadline, |u| u.min(self.deadline));
        match self
            .lines
            .recv_timeout(wait.saturating_duration_since(Instant::now()))
        {
            Ok(line) => Heard::Line(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => Heard::End,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < self.deadline => Heard::Tick,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{context}: the child ran for more than {ROUND_LIMIT:?}: a hang; its stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }
}

impl Drop for Running {
    /// A failed check must not leave the child running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How one round went.
#[derive(Debug, Default)]
struct Round {
    killed: bool,
    done: Option<String>,
    acks: usize,
}

/// Which steps a [`KillPlan`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Any,
    Appends,
    Sleeps,
}

impl Target {
    fn matches(self, step: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Appends => APPENDS.iter().any(|(s, _)| *s == step),
            Self::Sleeps => step.starts_with("sleep"),
        }
    }
}

/// When to SIGKILL a child: `delay` after the `nth` step of `target` it starts.
#[derive(Debug, Clone, Copy)]
struct KillPlan {
    nth: u32,
    target: Target,
    delay: Duration,
}

impl KillPlan {
    /// The first round surely cuts a step off (a sleep is 400 ms); the others
    /// are random.
    fn for_round(round: u32, rng: &mut Rng) -> Self {
        match if round == 0 { 2 } else { rng.next(3) } {
            // Anywhere: mid-step, or between steps.
            0 => Self {
                nth: 1 + rng.next(2) as u32,
                target: Target::Any,
                delay: Duration::from_millis(rng.next(450)),
            },
            // Right as an append runs: before, during or after its write.
            1 => Self {
                nth: 1,
                target: Target::Appends,
                delay: Duration::from_micros(rng.next(5000)),
            },
            _ => Self {
                nth: 1,
                target: Target::Sleeps,
                delay: Duration::from_millis(50 + rng.next(250)),
            },
        }
    }
}

/// Reads one child's output, recording it in `ledger`; with a plan, SIGKILLs the
/// child as it says.
fn follow(child: &mut Running, round: u32, plan: Option<KillPlan>, ledger: &mut Ledger) -> Round {
    let context = format!("round {round}");
    let mut result = Round::default();
    let mut fresh = false;
    let mut started = 0u32;
    let mut kill_at: Option<Instant> = None;
    loop {
        if let Some(at) = kill_at
            && Instant::now() >= at
            && !result.killed
            && result.done.is_none()
        {
            // std's Child::kill sends SIGKILL on Unix.
            child.child.kill().expect("SIGKILL the child");
            result.killed = true;
        }
        let until = kill_at.filter(|_| !result.killed && result.done.is_none());
        let line = match child.next_line(until, &context) {
            Heard::Line(line) => line,
            Heard::Tick => continue,
            Heard::End => break,
        };
        result.acks += 1;
        if line == "WATCHING" {
            fresh = true;
        } else if let Some(phase) = line.strip_prefix("DONE ") {
            result.done = Some(phase.to_owned());
        } else if let Some((step, seen)) = Seen::parse(&line) {
            let whence = format!(
                "round {round}, acknowledged by the child{}",
                if fresh { "" } else { " at its start" }
            );
            ledger.observe(&step, &seen, &whence);
            if let Some(plan) = plan
                && fresh
                && seen.phase == StepPhase::Running.as_str()
                && plan.target.matches(&step)
            {
                started += 1;
                if started == plan.nth {
                    kill_at = Some(Instant::now() + plan.delay);
                }
            }
        }
    }
    let status = child.child.wait().expect("wait for the child");
    if !result.killed {
        assert!(
            status.success() && result.done.is_some(),
            "round {round}: the child ended on its own ({status}) without finishing; stderr:\n{}",
            child.stderr()
        );
    }
    result
}

/// Reads the execution straight from the store file while no process runs it:
/// what a kill left behind.
fn inspect(
    runtime: &tokio::runtime::Runtime,
    data: &Path,
    round: u32,
    ledger: &mut Ledger,
) -> String {
    runtime.block_on(async {
        let store = Arc::new(RedbStore::open(data).unwrap_or_else(|e| {
            panic!("round {round}: the store does not open after SIGKILL: {e}")
        }));
        let api = Api::<PipelineExecution>::new(store.clone() as Arc<dyn Store>);
        let (execs, _) = api
            .list(Some(ENGINE), LabelSelector::default())
            .await
            .expect("list executions");
        drop(api);
        assert!(
            execs.len() <= 1,
            "round {round}: a restart started another execution: {:?}",
            execs.iter().map(|e| &e.metadata.name).collect::<Vec<_>>()
        );
        for exec in &execs {
            for step in steps(exec) {
                let seen = Seen::of(exec, step);
                ledger.observe(
                    &step.name,
                    &seen,
                    &format!("after round {round}, in the store"),
                );
                if step.phase == StepPhase::Running {
                    let at = ledger.interrupted.entry(step.name.clone()).or_default();
                    *at = (*at).max(step.attempts);
                }
            }
        }
        let store = Arc::into_inner(store).expect("no other handle on the store");
        store.close().await.expect("close the store");
        match execs.first() {
            Some(e) if e.status.reason.is_empty() => format!("{:?}", e.status.phase),
            Some(e) => format!("{:?} ({})", e.status.phase, e.status.reason),
            None => "not triggered".to_owned(),
        }
    })
}

fn parent() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("crash_recovery: seed {seed} (rerun with {SEED_ENV}={seed})");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // Packaged once here: a child packaging it would run cargo on every start.
    let ark = arkline_testkit::plugin("faults");
    let exe = std::env::current_exe().expect("own executable");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let mut ledger = Ledger::default();
    let mut kills = 0;
    for round in 0..=KILLS {
        let last = round == KILLS;
        let mut child = Running::spawn(
            &exe,
            &data,
            &ark,
            dir.path().join(format!("child-{round}.stderr")),
        );
        let plan = (!last).then(|| KillPlan::for_round(round, &mut rng));
        let result = follow(&mut child, round, plan, &mut ledger);
        if result.killed {
            kills += 1;
        }
        let state = inspect(&runtime, &data, round, &mut ledger);
        println!(
            "crash_recovery: round {round}: {} after {} lines (kill plan {plan:?}); execution {state}; cut off so far: {:?}",
            if result.killed {
                "killed".to_owned()
            } else {
                format!("finished {}", result.done.as_deref().unwrap_or("?"))
            },
            result.acks,
            ledger.interrupted
        );
        assert!(
            !state.starts_with("Failed") && !state.starts_with("Aborted"),
            "round {round}: the execution ended {state} (seed {seed}); child stderr:\n{}",
            child.stderr()
        );
        if last {
            assert_eq!(
                result.done.as_deref(),
                Some("Succeeded"),
                "the last child did not see the execution succeed; stderr:\n{}",
                child.stderr()
            );
        }
    }

    runtime.block_on(async {
        tokio::time::timeout(CHECK_LIMIT, check(&data, &ledger))
            .await
            .unwrap_or_else(|_| panic!("the final checks took more than {CHECK_LIMIT:?}"));
    });
    assert!(
        !ledger.interrupted.is_empty(),
        "no kill landed mid-step in {kills} kills (seed {seed}): recovery of a running step was not exercised"
    );
    println!(
        "crash_recovery: ok ({kills} kills, {} steps cut off, {:.1?})",
        ledger.interrupted.len(),
        started.elapsed()
    );

    let once = interrupted_once(&runtime, &exe, &ark, dir.path(), "default");
    assert_eq!(
        (once.phase, once.attempts, once.interruptions),
        (StepPhase::Succeeded, 2, 1),
        "by default the attempt cut by the kill runs again, beyond the step's (no) retries: {once:?}"
    );
    for name in ["no-interrupted-retries", "not-repeatable"] {
        let once = interrupted_once(&runtime, &exe, &ark, dir.path(), name);
        assert_eq!(
            (once.phase, once.attempts, once.interruptions),
            (StepPhase::Failed, 1, 0),
            "{name}: the cut attempt is not run again: {once:?}"
        );
        assert!(
            once.reason.starts_with("interrupted"),
            "{name}: the reason says it was interrupted: {once:?}"
        );
    }
    println!("crash_recovery: interruption scenarios ok");

    let (in_flight, held) = burst_in_flight(&runtime, &exe, &ark, dir.path());
    println!(
        "crash_recovery: burst ok ({BURST_EXECUTIONS} executions, killed with {in_flight} in flight and {held} steps recorded Succeeded)"
    );
}

/// The executions of the engine, read from the store file of `data`.
fn stored_executions(runtime: &tokio::runtime::Runtime, data: &Path) -> Vec<PipelineExecution> {
    runtime.block_on(async {
        let store = Arc::new(RedbStore::open(data).expect("the store opens after the run"));
        let api = Api::<PipelineExecution>::new(store as Arc<dyn Store>);
        let (execs, _) = api
            .list(Some(ENGINE), LabelSelector::default())
            .await
            .expect("list executions");
        execs
    })
}

/// The burst scenario (see the module documentation). Returns how many
/// executions were in flight at the kill and how many steps the store held as
/// `Succeeded` then.
fn burst_in_flight(
    runtime: &tokio::runtime::Runtime,
    exe: &Path,
    ark: &Path,
    dir: &Path,
) -> (usize, usize) {
    let data = dir.join("scenario-burst");
    let mut first =
        Running::spawn_scenario(exe, &data, ark, dir.join("scenario-burst-0.stderr"), BURST);
    loop {
        match first.next_line(None, BURST) {
            Heard::Line(line) => {
                if let Some(n) = line.strip_prefix("FINISHED ") {
                    if n.parse::<usize>().expect("a count") >= BURST_KILL_AFTER {
                        break;
                    }
                } else if line.starts_with("DONE") {
                    panic!("burst: every execution finished before the kill: {line}");
                }
            }
            Heard::Tick => {}
            Heard::End => panic!(
                "burst: the first child ended before the kill; stderr:\n{}",
                first.stderr()
            ),
        }
    }
    first.child.kill().expect("SIGKILL the child");
    let _ = first.child.wait();

    // What the store file holds after the kill: the steps recorded Succeeded.
    let before = stored_executions(runtime, &data);
    assert_eq!(before.len(), BURST_EXECUTIONS, "every trigger was stored");
    let in_flight = before
        .iter()
        .filter(|e| !e.status.phase.is_finished())
        .count();
    assert!(
        in_flight > 0,
        "burst: the kill found no execution in flight"
    );
    let held: BTreeMap<(String, String), u32> = before
        .iter()
        .flat_map(|e| {
            steps(e)
                .filter(|s| s.phase == StepPhase::Succeeded)
                .map(|s| ((e.metadata.name.clone(), s.name.clone()), s.attempts))
        })
        .collect();

    let mut second =
        Running::spawn_scenario(exe, &data, ark, dir.join("scenario-burst-1.stderr"), BURST);
    let done = second.done(BURST);
    let status = second.child.wait().expect("wait for the child");
    assert!(
        status.success() && done.as_deref() == Some("Succeeded"),
        "burst: the resuming child ended ({status}, {done:?}); stderr:\n{}",
        second.stderr()
    );

    let after = stored_executions(runtime, &data);
    assert_eq!(after.len(), BURST_EXECUTIONS, "a restart triggers nothing");
    for exec in &after {
        let name = &exec.metadata.name;
        assert_eq!(
            exec.status.phase,
            ExecutionPhase::Succeeded,
            "{name}: {:#?}",
            exec.status
        );
        for step in steps(exec) {
            assert_eq!(
                step.phase,
                StepPhase::Succeeded,
                "{name}: nothing is left Running: {step:#?}"
            );
        }
        let content = exec
            .status
            .outputs
            .get("count")
            .and_then(|o| o.get("content"))
            .unwrap_or_else(|| panic!("{name}: no content read back: {:#?}", exec.status));
        for (step_name, line) in [("a", "a;"), ("b", "b;")] {
            let step = steps(exec)
                .find(|s| s.name == step_name)
                .unwrap_or_else(|| panic!("{name}: no step {step_name}"));
            // A cut attempt may leave its text without the newline, so count
            // the text, not lines.
            let writes = content.matches(line).count();
            match held.get(&(name.clone(), step_name.to_owned())) {
                Some(&attempts) => {
                    assert_eq!(
                        writes, 1,
                        "{name}/{step_name} was recorded Succeeded before the kill and ran again: {content:?}"
                    );
                    assert_eq!(
                        step.attempts, attempts,
                        "{name}/{step_name}: its attempts changed after its success was recorded"
                    );
                }
                None => assert!(
                    (1..=step.attempts as usize).contains(&writes),
                    "{name}/{step_name}: {writes} writes in {} attempts: {content:?}",
                    step.attempts
                ),
            }
        }
    }
    (in_flight, held.len())
}

/// Runs scenario `name` on a data dir of its own: a child killed once the
/// step `once` is `Running` (its first attempt sleeps ten minutes, so the kill
/// surely cuts it off), then a child that resumes and finishes the execution.
/// Returns the step's final status, read from the store file.
fn interrupted_once(
    runtime: &tokio::runtime::Runtime,
    exe: &Path,
    ark: &Path,
    dir: &Path,
    name: &str,
) -> StepStatus {
    let data = dir.join(format!("scenario-{name}"));
    let mut first = Running::spawn_scenario(
        exe,
        &data,
        ark,
        dir.join(format!("scenario-{name}-0.stderr")),
        name,
    );
    loop {
        match first.next_line(None, name) {
            Heard::Line(line) if line == "STEP once Running 1 -" => break,
            Heard::Line(line) if line.starts_with("DONE") => {
                panic!("{name}: the execution ended before the kill: {line}")
            }
            Heard::Line(_) | Heard::Tick => {}
            Heard::End => panic!(
                "{name}: the first child ended before the step ran; stderr:\n{}",
                first.stderr()
            ),
        }
    }
    first.child.kill().expect("SIGKILL the child");
    let _ = first.child.wait();
    let mut second = Running::spawn_scenario(
        exe,
        &data,
        ark,
        dir.join(format!("scenario-{name}-1.stderr")),
        name,
    );
    let done = second.done(name);
    let status = second.child.wait().expect("wait for the child");
    assert!(
        status.success() && done.is_some(),
        "{name}: the resuming child ended ({status}) without finishing; stderr:\n{}",
        second.stderr()
    );
    let execs = stored_executions(runtime, &data);
    let [exec] = execs.as_slice() else {
        panic!("{name}: one execution, not {}", execs.len());
    };
    let expected = if done.as_deref() == Some("Succeeded") {
        ExecutionPhase::Succeeded
    } else {
        ExecutionPhase::Failed
    };
    assert_eq!(exec.status.phase, expected, "{name}: {:#?}", exec.status);
    steps(exec)
        .find(|s| s.name == "once")
        .cloned()
        .unwrap_or_else(|| panic!("{name}: no step `once` in {:#?}", exec.status))
}

/// The final checks, through the public API of a new container on the data dir.
async fn check(data: &Path, ledger: &Ledger) {
    let container = Container::builder()
        .data_dir(data)
        .build()
        .expect("the container builds on the data dir");
    let engine = container.engine(ENGINE).await.expect("the engine starts");
    let execs = engine
        .executions(Some(PIPELINE))
        .await
        .expect("list executions");
    assert_eq!(
        execs.len(),
        1,
        "one execution: {:?}",
        execs.iter().map(|e| &e.metadata.name).collect::<Vec<_>>()
    );
    let exec = &execs[0];
    let name = &exec.metadata.name;
    assert_eq!(
        exec.status.phase,
        ExecutionPhase::Succeeded,
        "{:#?}",
        exec.status
    );
    for stage in &exec.status.stages {
        assert_eq!(stage.phase, StepPhase::Succeeded, "stage {stage:#?}");
    }
    let all: Vec<&StepStatus> = steps(exec).collect();
    let mut names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len(), "a step appears twice: {all:#?}");
    assert_eq!(all.len(), 8, "{all:#?}");
    for step in &all {
        assert_eq!(
            step.phase,
            StepPhase::Succeeded,
            "nothing is left Running or failed: {step:#?}"
        );
        assert!(step.attempts >= 1, "{step:#?}");
        // The final state is the one first observed when it completed.
        if let Some((first, when)) = ledger.completed.get(&step.name) {
            assert_eq!(
                &Seen::of(exec, step),
                first,
                "step {} changed after its success was seen ({when})",
                step.name
            );
        }
    }

    // Each step's log survived the kills: numbered on across attempts and
    // restarts, and ending with the attempt that succeeded.
    for step in &all {
        let log = engine.logs(name, &step.name).await.expect("log");
        let seqs: Vec<u64> = log.iter().map(|l| l.seq).collect();
        assert_eq!(
            seqs,
            (0..log.len() as u64).collect::<Vec<_>>(),
            "the log of {} is not numbered on by one: {log:#?}",
            step.name
        );
        let done = format!("attempt {} succeeded", step.attempts);
        assert!(
            log.iter()
                .any(|l| l.attempt == step.attempts && l.message == done),
            "the log of {} lacks `{done}`: {:#?}",
            step.name,
            log.iter().map(|l| &l.message).collect::<Vec<_>>()
        );
    }

    // Interrupted steps ran again, and say so.
    for (step, cut) in &ledger.interrupted {
        let status = all
            .iter()
            .find(|s| &s.name == step)
            .unwrap_or_else(|| panic!("no step {step}"));
        assert!(
            status.attempts > *cut,
            "step {step} was cut off on attempt {cut} and ended with {} attempts",
            status.attempts
        );
        // The first interruption is given back (`interrupted_retries`, 1 by
        // default); later ones use the step's retries.
        assert_eq!(
            status.interruptions, 1,
            "step {step} was cut off; its status counts one interruption given back: {status:?}"
        );
        let log = engine.logs(name, step).await.expect("log");
        let note = format!("attempt {cut} was cut off by a restart; ");
        assert!(
            log.iter().any(|l| l.message.starts_with(&note)),
            "the log of {step} lacks `{note}`: {:#?}",
            log.iter().map(|l| &l.message).collect::<Vec<_>>()
        );
    }

    // The counter. Each write of an append step is `<name>;`; its newline is a
    // second write, so a kill can tear an append after the name: the retry's
    // `<name>;` then completes that line. Tokens are writes, lines are appends
    // that completed in the file.
    let content = exec
        .status
        .outputs
        .get(READER)
        .and_then(|o| o.get("content"))
        .unwrap_or_else(|| panic!("no content output: {:#?}", exec.status.outputs));
    let lines: Vec<Vec<&str>> = content
        .lines()
        .map(|l| {
            l.strip_suffix(';')
                .unwrap_or_else(|| panic!("a line of the file is not `<step>;`…: {content:?}"))
                .split(';')
                .collect()
        })
        .collect();
    assert!(
        lines
            .iter()
            .flatten()
            .all(|t| APPENDS.iter().any(|(s, _)| s == t)),
        "only append steps write to the file: {content:?}"
    );
    let mut recorded_at: BTreeMap<&str, usize> = BTreeMap::new();
    for (step, _) in APPENDS {
        let status = all
            .iter()
            .find(|s| s.name == step)
            .unwrap_or_else(|| panic!("no step {step}"));
        let at: usize = exec
            .status
            .outputs
            .get(step)
            .and_then(|o| o.get("lines"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no lines output of {step}: {:#?}", exec.status.outputs));
        // The (1-based) line of each write of the step.
        let writes: Vec<usize> = (1..=lines.len())
            .flat_map(|n| lines[n - 1].iter().filter(|t| **t == step).map(move |_| n))
            .collect();
        assert_eq!(
            lines
                .get(at.wrapping_sub(1))
                .and_then(|l| l.last())
                .copied(),
            Some(step),
            "line {at}, which {step}'s recorded attempt completed, does not end with it: {content:?}"
        );
        assert!(
            writes.iter().all(|&n| n <= at),
            "{step} completed at line {at} and wrote again afterwards (lines {writes:?}): a completed step ran twice; file {content:?}"
        );
        assert!(
            writes.len() <= status.attempts as usize,
            "{step} wrote {} times in {} attempts: {content:?}",
            writes.len(),
            status.attempts
        );
        if !ledger.interrupted.contains_key(step) {
            assert_eq!(
                writes.len(),
                1,
                "{step} was never found cut off, yet wrote {} times: {content:?}",
                writes.len()
            );
        }
        recorded_at.insert(step, at);
    }
    // Stage order: a step of a later stage wrote only after an earlier one completed.
    for (x, xs) in APPENDS {
        for (y, ys) in APPENDS {
            if ys > xs {
                let first_y = lines
                    .iter()
                    .position(|l| l.contains(&y))
                    .map_or(0, |p| p + 1);
                assert!(
                    first_y > recorded_at[x],
                    "{y} (stage {ys}) wrote on line {first_y}, before {x} (stage {xs}) completed on line {}: {content:?}",
                    recorded_at[x]
                );
            }
        }
    }
    assert_eq!(
        lines.len(),
        recorded_at["d"],
        "the reader ran after the last append: {content:?}"
    );
    println!("crash_recovery: the file: {content:?}");
    container.shutdown().await;
}
