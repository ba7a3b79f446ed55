//! What `arkline run` reports while executions run: events computed from
//! successive states of an execution, and their three renderings — live
//! spinners on a terminal, plain lines otherwise, JSON lines with `--json` — and
//! the summary table at the end.

use std::collections::HashMap;
use std::io::Write as _;
use std::time::Duration;

use anstyle::{AnsiColor, Style};
use chrono::{DateTime, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use arkline::PipelineExecution;
use arkline::host::terminal::escape_line;
use arkline::model::{ExecutionPhase, StepPhase, StepStatus};

/// Lines of a failed step's log shown with its failure.
pub const LOG_TAIL_LINES: usize = 10;

const GREEN: Style = AnsiColor::Green.on_default();
const RED: Style = AnsiColor::Red.on_default();
const DIM: Style = Style::new().dimmed();
const BOLD: Style = Style::new().bold();
const VERB: Style = AnsiColor::Green.on_default().bold();
const BAD_VERB: Style = AnsiColor::Red.on_default().bold();

/// `text` in `style` when colouring, else as it is.
fn paint(style: Style, text: &str, color: bool) -> String {
    if color {
        format!("{style}{text}{style:#}")
    } else {
        text.to_owned()
    }
}

/// A status verb right-aligned to 12 columns (cargo style), painted after
/// padding so the columns line up either way.
fn verb(style: Style, verb: &str, color: bool) -> String {
    paint(style, &format!("{verb:>12}"), color)
}

/// What an event is about. Serialized in snake_case (`execution_started`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// First time `run` sees an execution (triggered now, or resumed).
    ExecutionStarted,
    /// The execution's phase changed (`Queued` → `Pending` → `Running`).
    ExecutionPhase,
    /// A step's phase or attempt changed.
    Step,
    /// The execution is over (`Succeeded`, `Failed` or `Aborted`).
    ExecutionFinished,
}

/// One event, as `--json` prints it (one object per line). The fields are
/// stable: always present (`null` when not relevant to the event) except the
/// event-specific ones marked optional.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// `execution_started`, `execution_phase`, `step` or `execution_finished`.
    pub event: EventKind,
    /// When `run` saw the change (RFC 3339, UTC).
    pub time: DateTime<Utc>,
    /// Engine name.
    pub engine: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Execution name (`<pipeline>-<run>`).
    pub execution: String,
    /// Run number.
    pub run: u64,
    /// The step's stage; `null` for a `finally` step and for execution events.
    pub stage: Option<String>,
    /// The step; `null` for execution events.
    pub step: Option<String>,
    /// The execution's phase (`Queued`, `Pending`, `Running`, `Succeeded`,
    /// `Failed`, `Aborted`) or the step's (`Running`, `Succeeded`, `Failed`,
    /// `Skipped`, `Aborted`).
    pub phase: String,
    /// The step's attempt (from 1); `null` for execution events.
    pub attempt: Option<u32>,
    /// Duration of a finished step (first start to last finish) or execution;
    /// `null` otherwise.
    pub duration_ms: Option<u64>,
    /// Why a step or execution failed, was skipped or aborted; `null` when none.
    pub reason: Option<String>,
    /// `execution_started` only: whether the execution was left unfinished by an
    /// earlier run on this data dir and is being resumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed: Option<bool>,
    /// `execution_finished` only: steps that succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_ok: Option<usize>,
    /// `execution_finished` only: steps of the pipeline (stages and `finally`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_total: Option<usize>,
    /// Failed `step` events only: the last lines of the step's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<Vec<String>>,
}

/// The identity of an execution `run` follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionId {
    /// Engine name.
    pub engine: String,
    /// Pipeline name.
    pub pipeline: String,
    /// Execution name.
    pub execution: String,
    /// Run number.
    pub run: u64,
}

impl ExecutionId {
    /// `engine/execution`, how people are shown an execution.
    pub fn label(&self) -> String {
        format!("{}/{}", self.engine, self.execution)
    }

    fn event(&self, event: EventKind, phase: String) -> Event {
        Event {
            event,
            time: Utc::now(),
            engine: self.engine.clone(),
            pipeline: self.pipeline.clone(),
            execution: self.execution.clone(),
            run: self.run,
            stage: None,
            step: None,
            phase,
            attempt: None,
            duration_ms: None,
            reason: None,
            resumed: None,
            steps_ok: None,
            steps_total: None,
            log_tail: None,
        }
    }
}

/// Every step of an execution's status with its stage (`None` for `finally`).
fn steps(exec: &PipelineExecution) -> impl Iterator<Item = (Option<&str>, &StepStatus)> {
    exec.status
        .stages
        .iter()
        .flat_map(|st| st.steps.iter().map(move |s| (Some(st.name.as_str()), s)))
        .chain(exec.status.finally.iter().map(|s| (None, s)))
}

/// Steps that succeeded, and steps the pipeline has.
pub fn step_counts(exec: &PipelineExecution) -> (usize, usize) {
    let ok = steps(exec)
        .filter(|(_, s)| s.phase == StepPhase::Succeeded)
        .count();
    let spec = &exec.spec.pipeline_spec;
    let total = spec.stages.iter().map(|s| s.steps.len()).sum::<usize>() + spec.finally.len();
    (ok, total.max(steps(exec).count()))
}

fn millis(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Option<u64> {
    let (from, to) = (from?, to?);
    u64::try_from((to - from).num_milliseconds()).ok()
}

/// How long an execution took: from its start (or creation, when it never
/// started) to its finish, or to now while it runs.
pub fn execution_millis(exec: &PipelineExecution) -> Option<u64> {
    let from = exec.status.started.or(exec.metadata.created);
    millis(from, Some(exec.status.finished.unwrap_or_else(Utc::now)))
}

fn phase_name<T: Serialize + std::fmt::Debug>(phase: T) -> String {
    match serde_json::to_value(&phase) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{phase:?}"),
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The events between two successive states of one execution: started (when
/// there was no previous state), a phase change, each step whose phase or
/// attempt changed (in pipeline order), then finished. Failed steps' log tails
/// are filled in by the caller.
pub fn diff(
    id: &ExecutionId,
    prev: Option<&PipelineExecution>,
    next: &PipelineExecution,
    resumed: bool,
) -> Vec<Event> {
    let mut out = Vec::new();
    let finished = next.status.phase.is_finished();
    match prev {
        None => {
            // A run seen for the first time already finished still reports that it
            // started; its phase then is the one it had before it finished.
            let phase = if finished {
                ExecutionPhase::Running
            } else {
                next.status.phase
            };
            let mut e = id.event(EventKind::ExecutionStarted, phase_name(phase));
            e.resumed = Some(resumed);
            out.push(e);
        }
        Some(p) if p.status.phase != next.status.phase && !finished => {
            out.push(id.event(EventKind::ExecutionPhase, phase_name(next.status.phase)));
        }
        Some(_) => {}
    }
    for (stage, step) in steps(next) {
        if step.phase == StepPhase::Waiting {
            continue;
        }
        let before = prev.and_then(|p| {
            steps(p)
                .find(|(st, s)| *st == stage && s.name == step.name)
                .map(|(_, s)| (s.phase, s.attempts))
        });
        if before == Some((step.phase, step.attempts)) {
            continue;
        }
        // A step that started and ended between two observed states (its
        // start and its end written together) still reports that it ran; not
        // the steps a resumed run had finished before this process.
        let ran = step.started.is_some() && step.phase != StepPhase::Running;
        let earlier = resumed && prev.is_none();
        if ran && !earlier && before != Some((StepPhase::Running, step.attempts)) {
            let mut e = id.event(EventKind::Step, phase_name(StepPhase::Running));
            e.stage = stage.map(str::to_owned);
            e.step = Some(step.name.clone());
            e.attempt = Some(step.attempts.max(1));
            out.push(e);
        }
        let mut e = id.event(EventKind::Step, phase_name(step.phase));
        e.stage = stage.map(str::to_owned);
        e.step = Some(step.name.clone());
        e.attempt = Some(step.attempts.max(1));
        if step.phase != StepPhase::Running {
            e.duration_ms = millis(step.started, step.finished);
            e.reason = non_empty(&step.reason);
        }
        out.push(e);
    }
    if finished && prev.is_none_or(|p| !p.status.phase.is_finished()) {
        let mut e = id.event(EventKind::ExecutionFinished, phase_name(next.status.phase));
        e.duration_ms = execution_millis(next);
        e.reason = non_empty(&next.status.reason);
        let (ok, total) = step_counts(next);
        e.steps_ok = Some(ok);
        e.steps_total = Some(total);
        out.push(e);
    }
    out
}

/// A duration for people: `850ms`, `4.2s`, `3m07s`, `1h05m`.
pub fn human_duration(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    let secs = d.as_secs();
    if secs < 1 {
        format!("{ms}ms")
    } else if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// How events are shown.
pub enum Progress {
    /// One JSON object per line on stdout.
    Json,
    /// Plain status lines on stderr (not a terminal, or no escape codes wanted),
    /// their verbs coloured when `color` (`--color always`).
    Plain {
        /// Whether to colour the verbs.
        color: bool,
    },
    /// Live spinners on stderr (a terminal, escape codes allowed).
    Tty(Tty),
}

/// The terminal rendering: per execution a line with a spinner, and under it a
/// line per step that has started.
pub struct Tty {
    multi: MultiProgress,
    executions: HashMap<String, TtyExecution>,
}

struct TtyExecution {
    header: ProgressBar,
    /// The bar new step lines go after.
    last: ProgressBar,
    steps: HashMap<String, ProgressBar>,
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants; a broken one falls back to the default style.
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

const TICK: Duration = Duration::from_millis(120);

impl Tty {
    /// Spinners drawn on stderr.
    pub fn new() -> Tty {
        Tty {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            executions: HashMap::new(),
        }
    }

    fn execution(&mut self, e: &Event) -> &mut TtyExecution {
        let key = format!("{}/{}", e.engine, e.execution);
        let multi = &self.multi;
        self.executions.entry(key.clone()).or_insert_with(|| {
            let header = multi.add(ProgressBar::new_spinner());
            header.set_style(style("{spinner:.cyan} {prefix:.bold} {msg} {elapsed:.dim}"));
            header.set_prefix(key);
            header.enable_steady_tick(TICK);
            TtyExecution {
                last: header.clone(),
                header,
                steps: HashMap::new(),
            }
        })
    }

    fn event(&mut self, e: &Event) {
        let multi = self.multi.clone();
        match e.event {
            EventKind::ExecutionStarted | EventKind::ExecutionPhase => {
                let resumed = if e.resumed == Some(true) {
                    " (resumed)"
                } else {
                    ""
                };
                let x = self.execution(e);
                x.header.set_message(format!("{}{resumed}", e.phase));
            }
            EventKind::Step => {
                let x = self.execution(e);
                let name = e.step.clone().unwrap_or_default();
                let label = match &e.stage {
                    Some(stage) => format!("{stage}/{name}"),
                    None => format!("finally/{name}"),
                };
                let bar = match x.steps.get(&name) {
                    Some(bar) => bar.clone(),
                    None => {
                        let bar = multi.insert_after(&x.last, ProgressBar::new_spinner());
                        bar.set_style(style("  {spinner:.blue} {prefix} {msg} {elapsed:.dim}"));
                        bar.set_prefix(label);
                        bar.enable_steady_tick(TICK);
                        x.last = bar.clone();
                        x.steps.insert(name, bar.clone());
                        bar
                    }
                };
                let attempt = match e.attempt {
                    Some(a) if a > 1 => format!(" (attempt {a})"),
                    _ => String::new(),
                };
                if e.phase == "Running" {
                    bar.set_message(format!("running{attempt}"));
                } else {
                    let mark = match e.phase.as_str() {
                        "Succeeded" => paint(GREEN, "✓", true),
                        "Skipped" => paint(DIM, "-", true),
                        _ => paint(RED, "✗", true),
                    };
                    bar.set_style(style("  {msg}"));
                    bar.finish_with_message(format!(
                        "{mark} {} {}{attempt}{}{}",
                        bar.prefix(),
                        e.phase.to_lowercase(),
                        e.duration_ms
                            .map(|d| format!(" in {}", human_duration(d)))
                            .unwrap_or_default(),
                        e.reason
                            .as_ref()
                            .map(|r| format!(": {}", escape_line(r)))
                            .unwrap_or_default()
                    ));
                }
                if let Some(tail) = &e.log_tail {
                    let _ = multi.println(failure_block(e, tail));
                }
            }
            EventKind::ExecutionFinished => {
                let x = self.execution(e);
                let mark = if e.phase == "Succeeded" {
                    paint(GREEN, "✓", true)
                } else {
                    paint(RED, "✗", true)
                };
                x.header.set_style(style("{msg}"));
                x.header.finish_with_message(format!(
                    "{mark} {} {}{}{}",
                    paint(BOLD, &format!("{}/{}", e.engine, e.execution), true),
                    e.phase,
                    e.duration_ms
                        .map(|d| format!(" in {}", human_duration(d)))
                        .unwrap_or_default(),
                    e.reason
                        .as_ref()
                        .map(|r| format!(": {}", escape_line(r)))
                        .unwrap_or_default()
                ));
            }
        }
    }

    fn println(&self, line: &str) {
        let _ = self.multi.println(line);
    }

    fn finish(&mut self) {
        for x in self.executions.values() {
            for bar in x.steps.values().chain([&x.header]) {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
    }
}

impl Default for Tty {
    fn default() -> Self {
        Tty::new()
    }
}

/// A failed step's log tail, indented under a heading.
fn failure_block(e: &Event, tail: &[String]) -> String {
    let step = match (&e.stage, &e.step) {
        (Some(stage), Some(step)) => format!("{stage}/{step}"),
        (None, Some(step)) => format!("finally/{step}"),
        _ => String::new(),
    };
    let mut out = format!(
        "--- {}/{} {step}: last {} log line(s) ---",
        e.engine,
        e.execution,
        tail.len()
    );
    for line in tail {
        out.push_str("\n    ");
        out.push_str(&escape_line(line));
    }
    out
}

impl Progress {
    /// Shows one event.
    pub fn event(&mut self, e: &Event) -> std::io::Result<()> {
        match self {
            Progress::Json => {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer(&mut out, e)?;
                writeln!(out)?;
                out.flush()
            }
            Progress::Plain { color } => {
                let line = plain_line(e, *color);
                let mut err = std::io::stderr().lock();
                writeln!(err, "{line}")?;
                if let Some(tail) = &e.log_tail {
                    writeln!(err, "{}", failure_block(e, tail))?;
                }
                Ok(())
            }
            Progress::Tty(tty) => {
                tty.event(e);
                Ok(())
            }
        }
    }

    /// A status line for people (`verb` right-aligned, cargo style); nothing
    /// with `--json`, whose stdout carries events only.
    pub fn status(&self, verb: &str, message: &str) {
        match self {
            Progress::Json => {}
            Progress::Plain { color } => eprintln!("{} {message}", self::verb(VERB, verb, *color)),
            Progress::Tty(tty) => {
                tty.println(&format!("{} {message}", self::verb(VERB, verb, true)))
            }
        }
    }

    /// Makes room for an execution before its first event, so the live display
    /// lists executions in the order `run` follows them.
    pub fn register(&mut self, id: &ExecutionId) {
        if let Progress::Tty(tty) = self {
            let e = id.event(EventKind::ExecutionStarted, String::new());
            tty.execution(&e);
        }
    }

    /// Clears the live display before the summary.
    pub fn finish(&mut self) {
        if let Progress::Tty(tty) = self {
            tty.finish();
        }
    }
}

/// One event as a plain line: a cargo-style verb, the execution, the step.
fn plain_line(e: &Event, color: bool) -> String {
    let who = format!("{}/{}", e.engine, e.execution);
    let took = e
        .duration_ms
        .map(|d| format!(" in {}", human_duration(d)))
        .unwrap_or_default();
    let why = e
        .reason
        .as_ref()
        .map(|r| format!(": {}", escape_line(r)))
        .unwrap_or_default();
    let phase_style = match e.phase.as_str() {
        "Failed" | "Aborted" | "Cancelled" => BAD_VERB,
        "Skipped" => DIM,
        _ => VERB,
    };
    match e.event {
        EventKind::ExecutionStarted if e.resumed == Some(true) => {
            format!(
                "{} {who} ({}, left unfinished by an earlier run)",
                verb(VERB, "Resuming", color),
                e.phase
            )
        }
        EventKind::ExecutionStarted => {
            format!("{} {who} ({})", verb(VERB, "Started", color), e.phase)
        }
        EventKind::ExecutionPhase => format!("{} {who}", verb(phase_style, &e.phase, color)),
        EventKind::Step => {
            let step = match &e.stage {
                Some(stage) => format!("{stage}/{}", e.step.as_deref().unwrap_or_default()),
                None => format!("finally/{}", e.step.as_deref().unwrap_or_default()),
            };
            let attempt = match e.attempt {
                Some(a) if a > 1 => format!(" (attempt {a})"),
                _ => String::new(),
            };
            let name = match e.phase.as_str() {
                "Succeeded" => "Ok",
                other => other,
            };
            format!(
                "{} {who} {step}{attempt}{took}{why}",
                verb(phase_style, name, color)
            )
        }
        EventKind::ExecutionFinished => {
            let steps = match (e.steps_ok, e.steps_total) {
                (Some(ok), Some(total)) => format!(" ({ok}/{total} steps ok)"),
                _ => String::new(),
            };
            format!(
                "{} {who} {}{took}{steps}{why}",
                verb(phase_style, "Finished", color),
                e.phase
            )
        }
    }
}

/// One row of the summary table.
#[derive(Debug, Clone)]
pub struct SummaryRow {
    /// Engine.
    pub engine: String,
    /// Pipeline.
    pub pipeline: String,
    /// Execution name (marked when resumed).
    pub execution: String,
    /// Final (or last seen) phase.
    pub phase: String,
    /// Duration for people.
    pub duration: String,
    /// `ok/total` steps.
    pub steps: String,
}

/// The summary table, columns aligned.
pub fn summary_table(rows: &[SummaryRow]) -> String {
    let header = [
        "ENGINE",
        "PIPELINE",
        "EXECUTION",
        "PHASE",
        "DURATION",
        "STEPS",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.engine.as_str(),
                r.pipeline.as_str(),
                r.execution.as_str(),
                r.phase.as_str(),
                r.duration.as_str(),
                r.steps.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[&str; 6]| {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header);
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arkline::model::{ObjectMeta, PipelineExecutionSpec, StageStatus};

    fn exec(phase: ExecutionPhase, steps: &[(&str, StepPhase, u32)]) -> PipelineExecution {
        let mut e = PipelineExecution::new(
            ObjectMeta::new("team-a", "build-1"),
            PipelineExecutionSpec {
                pipeline: "build".into(),
                run: 1,
                ..Default::default()
            },
        );
        e.status.phase = phase;
        e.status.stages.push(StageStatus {
            name: "build".into(),
            steps: steps
                .iter()
                .map(|(n, p, a)| StepStatus {
                    name: (*n).into(),
                    phase: *p,
                    attempts: *a,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        e
    }

    fn id() -> ExecutionId {
        ExecutionId {
            engine: "team-a".into(),
            pipeline: "build".into(),
            execution: "build-1".into(),
            run: 1,
        }
    }

    #[test]
    fn diff_reports_start_steps_and_finish_in_order() {
        let a = exec(ExecutionPhase::Queued, &[]);
        let first = diff(&id(), None, &a, false);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].event, EventKind::ExecutionStarted);
        assert_eq!(first[0].phase, "Queued");
        assert_eq!(first[0].resumed, Some(false));

        let b = exec(
            ExecutionPhase::Running,
            &[
                ("compile", StepPhase::Running, 1),
                ("lint", StepPhase::Waiting, 0),
            ],
        );
        let kinds: Vec<_> = diff(&id(), Some(&a), &b, false)
            .into_iter()
            .map(|e| (e.event, e.step, e.phase))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventKind::ExecutionPhase, None, "Running".to_owned()),
                (EventKind::Step, Some("compile".into()), "Running".into()),
            ]
        );
        // Nothing changed: nothing reported.
        assert!(diff(&id(), Some(&b), &b, false).is_empty());

        let mut c = exec(
            ExecutionPhase::Failed,
            &[
                ("compile", StepPhase::Failed, 2),
                ("lint", StepPhase::Succeeded, 1),
            ],
        );
        c.status.reason = "step `compile` failed".into();
        let events = diff(&id(), Some(&b), &c, false);
        let last = events.last().expect("events");
        assert_eq!(last.event, EventKind::ExecutionFinished);
        assert_eq!(last.phase, "Failed");
        assert_eq!(last.reason.as_deref(), Some("step `compile` failed"));
        assert_eq!((last.steps_ok, last.steps_total), (Some(1), Some(2)));
        assert_eq!(events[0].attempt, Some(2));
        // A finished state seen again reports nothing more.
        assert!(diff(&id(), Some(&c), &c, false).is_empty());
    }

    #[test]
    fn json_events_have_every_stable_field() {
        let e = diff(&id(), None, &exec(ExecutionPhase::Queued, &[]), true).remove(0);
        let v = serde_json::to_value(&e).expect("json");
        for field in [
            "event",
            "time",
            "engine",
            "pipeline",
            "execution",
            "run",
            "stage",
            "step",
            "phase",
            "attempt",
            "duration_ms",
            "reason",
            "resumed",
        ] {
            assert!(v.get(field).is_some(), "missing {field}: {v}");
        }
        assert_eq!(v["event"], "execution_started");
        assert_eq!(v["resumed"], true);
    }

    #[test]
    fn guest_text_in_plain_lines_is_escaped() {
        let mut e = id().event(EventKind::Step, "Failed".into());
        e.stage = Some("build".into());
        e.step = Some("compile".into());
        e.reason = Some("boom\x1b[2K\rall good".into());
        assert_eq!(
            plain_line(&e, false),
            "      Failed team-a/build-1 build/compile: boom\\u{1b}[2K\\rall good"
        );
        let block = failure_block(&e, &["\x1b]0;owned\x07line".into()]);
        assert!(!block.contains('\x1b'), "{block:?}");
        assert!(
            block.ends_with("\n    \\u{1b}]0;owned\\u{7}line"),
            "{block:?}"
        );
    }

    #[test]
    fn durations_and_table_read_well() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(4_210), "4.2s");
        assert_eq!(human_duration(187_000), "3m07s");
        assert_eq!(human_duration(3_900_000), "1h05m");
        let table = summary_table(&[SummaryRow {
            engine: "team-a".into(),
            pipeline: "build".into(),
            execution: "build-1".into(),
            phase: "Succeeded".into(),
            duration: "1.2s".into(),
            steps: "3/3".into(),
        }]);
        assert_eq!(
            table,
            "ENGINE  PIPELINE  EXECUTION  PHASE      DURATION  STEPS\n\
             team-a  build     build-1    Succeeded  1.2s      3/3\n"
        );
    }
}
