//! `arkline run`: deploys a container archive (`.arkc`) on an embedded store and
//! runs its pipelines, every engine at once, in this process.
//!
//! - **Which pipelines**: by default every pipeline with a manual trigger (no
//!   `triggers`, or a `manual` one) in every engine. `--pipeline ENGINE/NAME`
//!   picks one; a bare `--pipeline NAME` picks that pipeline in every engine
//!   that has it. Cron and webhook triggers do not fire-and-wait here: `run`
//!   follows only the executions it starts or resumes (use `arkline serve` for
//!   long-running triggers).
//! - **Params**: `--param key=value`, converted to the type each pipeline
//!   declares (`number`, `bool`, `array` as a JSON array or comma-separated,
//!   `string`); given to each selected pipeline that declares `key`. A param no
//!   selected pipeline declares, or a required one missing, is a usage error.
//! - **Data dir**: `--data-dir`, else `$ARKLINE_DATA_DIR`, else
//!   `.arkline/<container name>/` next to the archive. It is kept: the store
//!   (redb), step logs, the compiled-code cache and the deployed bizes live
//!   there, so a second run starts fast and can resume.
//! - **Resume**: executions of the archive's engines left unfinished on this
//!   data dir (the process was killed, or stopped with a second Ctrl-C) resume
//!   when the engines start; completed steps are not run again. `run` follows
//!   them, reports them as resumed, and does not start a new execution of a
//!   pipeline that has one: the resumed execution is that pipeline's run.
//! - **Ctrl-C**: the first aborts every execution `run` follows (running steps
//!   are interrupted, `finally` steps run, the phase becomes `Aborted`) and
//!   waits for them; a second (or SIGTERM) stops the process at once, leaving
//!   the executions `Running` in the store to resume on the next `run` with the
//!   same data dir.
//! - **Output**: live spinners per execution and step on a terminal (stderr),
//!   plain status lines when stderr is not a terminal, or with `--json` one
//!   JSON object per event on stdout (see [`progress::Event`] for the fields).
//!   A failed step's last log lines are shown with its failure. People get a
//!   summary table on stdout at the end (engine, pipeline, execution, phase,
//!   duration, steps ok/total); `--json` ends with the `execution_finished`
//!   events instead.
//! - **Exit status**: 0 when every execution succeeded; 1 when any failed or was
//!   aborted; 2 for a usage error, an archive that cannot be read or deployed,
//!   or a data dir that cannot be opened; 130 when stopped by a second Ctrl-C
//!   or SIGTERM before the executions finished.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use tokio::sync::mpsc;

use arkline::container::archive::ContainerArchive;
use arkline::model::{ParamType, PipelineSpec, Trigger};
use arkline::{Container, Engine, PipelineExecution, TriggerRequest};

use crate::color::{ColorChoice, ColorEnv};

pub mod progress;

use progress::{Event, EventKind, ExecutionId, LOG_TAIL_LINES, Progress, SummaryRow};

/// Arguments of `arkline run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: 0 when every execution succeeded, 1 when any failed or was aborted,
2 for usage, archive or data-dir errors, 130 when stopped before the end
(the executions then resume on the next run with the same data dir).

With --json, stdout has one JSON object per line: event (execution_started,
execution_phase, step, execution_finished), time, engine, pipeline, execution,
run, stage, step, phase, attempt, duration_ms, reason; and resumed
(execution_started), steps_ok and steps_total (execution_finished), log_tail
(a failed step).")]
pub struct RunArgs {
    /// The container archive to deploy and run (built by `cargo ark container`).
    #[arg(value_name = "ARCHIVE.arkc")]
    pub archive: PathBuf,
    /// Where the store, logs and compiled code are kept (default:
    /// `.arkline/<container name>/` next to the archive). Reusing it resumes
    /// executions an earlier run left unfinished.
    #[arg(long, env = "ARKLINE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A pipeline to run, as `ENGINE/PIPELINE` or a bare `PIPELINE` (in every
    /// engine that has it); repeatable (default: every pipeline with a manual
    /// trigger).
    #[arg(long = "pipeline", short = 'p', value_name = "[ENGINE/]PIPELINE")]
    pub pipelines: Vec<String>,
    /// A param for the pipelines that declare it, as `KEY=VALUE`; repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Print one JSON object per event on stdout instead of progress for people.
    #[arg(long)]
    pub json: bool,
    /// Fail every `process` run whose sandbox (namespaces, per-run cgroup)
    /// cannot be built, instead of running it with weaker confinement.
    #[arg(long)]
    pub require_sandbox: bool,
}

/// A pipeline of the archive.
#[derive(Debug, Clone)]
pub struct ArchivePipeline {
    /// Its engine.
    pub engine: String,
    /// Its name.
    pub name: String,
    /// Its spec.
    pub spec: PipelineSpec,
}

/// A pipeline `run` will run, with the params of its trigger.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its engine.
    pub engine: String,
    /// Its name.
    pub pipeline: String,
    /// Params (as given, converted to the declared types).
    pub params: BTreeMap<String, serde_json::Value>,
}

/// The pipelines of every engine of `archive`, in manifest then file order.
pub fn archive_pipelines(archive: &ContainerArchive) -> anyhow::Result<Vec<ArchivePipeline>> {
    let mut out = Vec::new();
    for engine in &archive.manifest.engines {
        for (path, yaml) in archive.engine_pipelines(&engine.name) {
            // The reader has already parsed and validated every pipeline.
            let pipeline = arkline::model::parse_pipeline(path, yaml).map_err(|d| {
                anyhow::anyhow!("pipeline `{path}` of engine `{}`: {d}", engine.name)
            })?;
            out.push(ArchivePipeline {
                engine: engine.name.clone(),
                name: pipeline.metadata.name,
                spec: pipeline.spec,
            });
        }
    }
    Ok(out)
}

fn is_manual(spec: &PipelineSpec) -> bool {
    spec.triggers.is_empty() || spec.triggers.iter().any(|t| matches!(t, Trigger::Manual))
}

/// Chooses the pipelines to run (see the module docs) and their params.
pub fn select(
    pipelines: &[ArchivePipeline],
    requested: &[String],
    params: &[String],
) -> anyhow::Result<Vec<Target>> {
    let available = || {
        pipelines
            .iter()
            .map(|p| format!("{}/{}", p.engine, p.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut chosen: Vec<&ArchivePipeline> = Vec::new();
    if requested.is_empty() {
        chosen.extend(pipelines.iter().filter(|p| is_manual(&p.spec)));
        if chosen.is_empty() {
            bail!(
                "the archive has no pipeline with a manual trigger; name one with --pipeline (it has: {})",
                if pipelines.is_empty() {
                    "none".to_owned()
                } else {
                    available()
                }
            );
        }
    } else {
        for want in requested {
            let found: Vec<&ArchivePipeline> = match want.split_once('/') {
                Some((engine, name)) => pipelines
                    .iter()
                    .filter(|p| p.engine == engine && p.name == name)
                    .collect(),
                None => pipelines.iter().filter(|p| &p.name == want).collect(),
            };
            if found.is_empty() {
                bail!(
                    "--pipeline {want}: the archive has no such pipeline (it has: {}); use ENGINE/PIPELINE or a pipeline name",
                    available()
                );
            }
            for p in found {
                if !chosen.iter().any(|c| std::ptr::eq(*c, p)) {
                    chosen.push(p);
                }
            }
        }
        // Archive order, whatever the order of the flags.
        chosen.sort_by_key(|c| pipelines.iter().position(|p| std::ptr::eq(p, *c)));
    }

    let mut given: Vec<(&str, &str)> = Vec::new();
    for param in params {
        let Some((key, value)) = param.split_once('=') else {
            bail!("--param {param}: expected KEY=VALUE");
        };
        if key.is_empty() {
            bail!("--param {param}: the key is empty; expected KEY=VALUE");
        }
        given.push((key, value));
    }
    for (key, _) in &given {
        if !chosen
            .iter()
            .any(|p| p.spec.params.iter().any(|d| d.name == *key))
        {
            bail!(
                "--param {key}: none of the selected pipelines ({}) declares a param `{key}`",
                chosen
                    .iter()
                    .map(|p| format!("{}/{}", p.engine, p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut targets = Vec::new();
    for p in chosen {
        let mut values = BTreeMap::new();
        for (key, raw) in &given {
            if let Some(decl) = p.spec.params.iter().find(|d| d.name == *key) {
                let value = param_value(decl.kind, raw)
                    .with_context(|| format!("--param {key}: pipeline {}/{}", p.engine, p.name))?;
                values.insert((*key).to_owned(), value);
            }
        }
        if let Err(problems) = p.spec.resolve_params(&values) {
            bail!(
                "pipeline {}/{} cannot start with these params: {}; pass them with --param KEY=VALUE",
                p.engine,
                p.name,
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        targets.push(Target {
            engine: p.engine.clone(),
            pipeline: p.name.clone(),
            params: values,
        });
    }
    Ok(targets)
}

/// Converts a `--param` value to the declared type.
pub fn param_value(kind: ParamType, raw: &str) -> anyhow::Result<serde_json::Value> {
    use serde_json::Value;
    Ok(match kind {
        ParamType::String => Value::String(raw.to_owned()),
        ParamType::Number => {
            if let Ok(i) = raw.trim().parse::<i64>() {
                Value::from(i)
            } else {
                let f: f64 = raw
                    .trim()
                    .parse()
                    .ok()
                    .filter(|f: &f64| f.is_finite())
                    .with_context(|| format!("`{raw}` is not a number"))?;
                Value::from(f)
            }
        }
        ParamType::Bool => match raw.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => bail!("`{raw}` is not a bool: use true or false"),
        },
        ParamType::Array => {
            if raw.trim_start().starts_with('[') {
                let items: Vec<String> = serde_json::from_str(raw)
                    .with_context(|| format!("`{raw}` is not a JSON array of strings"))?;
                Value::from(items)
            } else if raw.is_empty() {
                Value::Array(Vec::new())
            } else {
                Value::from(raw.split(',').map(str::to_owned).collect::<Vec<_>>())
            }
        }
    })
}

/// The default data dir: `.arkline/<container name>/` next to the archive.
pub fn default_data_dir(archive_path: &Path, container: &str) -> PathBuf {
    let dir = archive_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    dir.join(".arkline").join(container)
}

impl RunArgs {
    /// Runs the subcommand.
    pub fn exec(self, color: ColorChoice) -> anyhow::Result<ExitCode> {
        let archive = ContainerArchive::open(&self.archive).with_context(|| {
            format!(
                "cannot use {} as a container archive",
                self.archive.display()
            )
        })?;
        let pipelines = archive_pipelines(&archive)?;
        let targets = select(&pipelines, &self.pipelines, &self.params)?;
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir(&self.archive, &archive.manifest.name));
        // Spinners redraw with escape codes, so they need a terminal that takes
        // them and a colour choice that allows them (not `never`, not NO_COLOR).
        let env = ColorEnv::from_process();
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let colored = color.resolve(terminal, env);
        let progress = if self.json {
            Progress::Json
        } else if terminal && !env.dumb_term && colored {
            Progress::Tty(progress::Tty::new())
        } else {
            Progress::Plain { color: colored }
        };
        init_tracing(colored);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(run(
            archive,
            targets,
            data_dir,
            self.require_sandbox,
            progress,
        ))
    }
}

fn init_tracing(color: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ARKLINE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .try_init();
}

/// One execution `run` follows.
struct Followed {
    id: ExecutionId,
    engine: Engine,
    resumed: bool,
    last: Option<PipelineExecution>,
}

impl Followed {
    fn done(&self) -> bool {
        self.last
            .as_ref()
            .is_some_and(|e| e.status.phase.is_finished())
    }
}

/// A new state of followed execution `.0`, or why following it failed.
type Update = (usize, Result<PipelineExecution, String>);

async fn run(
    archive: ContainerArchive,
    targets: Vec<Target>,
    data_dir: PathBuf,
    require_sandbox: bool,
    mut progress: Progress,
) -> anyhow::Result<ExitCode> {
    let container = Container::builder()
        .data_dir(&data_dir)
        .require_process_sandbox(require_sandbox)
        .build()
        .with_context(|| format!("cannot open the data dir {}", data_dir.display()))?;
    progress.status(
        "Deploying",
        &format!(
            "{} {} ({} engine(s)) on {}",
            archive.manifest.name,
            archive.manifest.version,
            archive.manifest.engines.len(),
            data_dir.display()
        ),
    );
    let engines: HashMap<String, Engine> = match container.deploy_archive(&archive).await {
        Ok(list) => list.into_iter().map(|e| (e.name().to_owned(), e)).collect(),
        Err(e) => {
            container.shutdown().await;
            return Err(anyhow::Error::new(e).context("the archive did not deploy"));
        }
    };
    let outcome = follow_all(&engines, &archive, &targets, &mut progress).await;
    if !matches!(outcome, Ok(Outcome::Stopped)) {
        container.shutdown().await;
    }
    match outcome {
        Ok(Outcome::Finished(rows, all_ok)) => {
            progress.finish();
            if !matches!(progress, Progress::Json) {
                print!("{}", progress::summary_table(&rows));
            }
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Ok(Outcome::Stopped) => {
            progress.finish();
            progress.status(
                "Stopping",
                "interrupted steps are recorded; run again with the same data dir to resume",
            );
            container.shutdown().await;
            Ok(ExitCode::from(130))
        }
        Err(e) => {
            progress.finish();
            Err(e)
        }
    }
}

enum Outcome {
    /// Every followed execution finished: the summary, and whether all succeeded.
    Finished(Vec<SummaryRow>, bool),
    /// Stopped by a second Ctrl-C or SIGTERM.
    Stopped,
}

async fn follow_all(
    engines: &HashMap<String, Engine>,
    archive: &ContainerArchive,
    targets: &[Target],
    progress: &mut Progress,
) -> anyhow::Result<Outcome> {
    let mut followed: Vec<Followed> = Vec::new();
    // Executions an earlier run left unfinished resume as the engines start;
    // follow them, and let them stand for their pipeline's run.
    for spec in &archive.manifest.engines {
        let Some(engine) = engines.get(&spec.name) else {
            continue;
        };
        let mut unfinished: Vec<PipelineExecution> = engine
            .executions(None)
            .await
            .with_context(|| format!("cannot list the executions of engine `{}`", spec.name))?
            .into_iter()
            .filter(|e| !e.status.phase.is_finished())
            .collect();
        unfinished.sort_by_key(|e| (e.spec.pipeline.clone(), e.spec.run));
        for exec in unfinished {
            followed.push(Followed {
                id: ExecutionId {
                    engine: spec.name.clone(),
                    pipeline: exec.spec.pipeline.clone(),
                    execution: exec.metadata.name.clone(),
                    run: exec.spec.run,
                },
                engine: engine.clone(),
                resumed: true,
                last: None,
            });
        }
    }
    for target in targets {
        let engine = engines
            .get(&target.engine)
            .with_context(|| format!("engine `{}` was not deployed", target.engine))?;
        if let Some(r) = followed
            .iter()
            .find(|f| f.resumed && f.id.engine == target.engine && f.id.pipeline == target.pipeline)
        {
            progress.status(
                "Skipping",
                &format!(
                    "a new run of {}/{}: {} was left unfinished and resumes instead",
                    target.engine, target.pipeline, r.id.execution
                ),
            );
            continue;
        }
        let mut request = TriggerRequest::manual();
        request.params = target.params.clone();
        let exec = engine
            .trigger(&target.pipeline, request)
            .await
            .with_context(|| format!("cannot start {}/{}", target.engine, target.pipeline))?;
        followed.push(Followed {
            id: ExecutionId {
                engine: target.engine.clone(),
                pipeline: target.pipeline.clone(),
                execution: exec.metadata.name.clone(),
                run: exec.spec.run,
            },
            engine: engine.clone(),
            resumed: false,
            last: None,
        });
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    for f in &followed {
        progress.register(&f.id);
    }
    for (i, f) in followed.iter().enumerate() {
        tokio::spawn(watch(
            i,
            f.engine.clone(),
            f.id.execution.clone(),
            tx.clone(),
        ));
    }
    drop(tx);

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot handle Ctrl-C")?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let mut aborting = false;
    while !followed.iter().all(Followed::done) {
        tokio::select! {
            update = rx.recv() => {
                let Some((i, state)) = update else {
                    bail!("lost track of the executions: the store's watch ended");
                };
                let next = state.map_err(|e| {
                    anyhow::anyhow!("cannot follow {}: {e}", followed[i].id.label())
                })?;
                let f = &mut followed[i];
                for mut event in progress::diff(&f.id, f.last.as_ref(), &next, f.resumed) {
                    if event.event == EventKind::Step && event.phase == "Failed" {
                        event.log_tail = Some(log_tail(&f.engine, &event).await);
                    }
                    progress.event(&event).context("cannot write the progress")?;
                }
                f.last = Some(next);
            }
            _ = sigint.recv() => {
                if aborting {
                    return Ok(Outcome::Stopped);
                }
                aborting = true;
                progress.status(
                    "Aborting",
                    "every execution (finally steps still run); press Ctrl-C again to stop at once and resume on the next run",
                );
                for f in followed.iter().filter(|f| !f.done()) {
                    if let Err(e) = f.engine.abort(&f.id.execution).await {
                        progress.status("Warning", &format!("cannot abort {}: {e}", f.id.label()));
                    }
                }
            }
            _ = sigterm.recv() => return Ok(Outcome::Stopped),
        }
    }

    let mut all_ok = true;
    let rows = followed
        .iter()
        .filter_map(|f| {
            let e = f.last.as_ref()?;
            all_ok &= e.status.phase == arkline::model::ExecutionPhase::Succeeded;
            let (ok, total) = progress::step_counts(e);
            Some(SummaryRow {
                engine: f.id.engine.clone(),
                pipeline: f.id.pipeline.clone(),
                execution: if f.resumed {
                    format!("{} (resumed)", f.id.execution)
                } else {
                    f.id.execution.clone()
                },
                phase: format!("{:?}", e.status.phase),
                duration: progress::execution_millis(e)
                    .map(progress::human_duration)
                    .unwrap_or_else(|| "-".into()),
                steps: format!("{ok}/{total}"),
            })
        })
        .collect();
    Ok(Outcome::Finished(rows, all_ok))
}

/// Sends every state of one execution until it finishes, re-watching when the
/// watch fell behind the store's compaction.
async fn watch(i: usize, engine: Engine, execution: String, tx: mpsc::UnboundedSender<Update>) {
    loop {
        let mut stream = match engine.watch_execution(&execution).await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send((i, Err(e.to_string())));
                return;
            }
        };
        let mut gone = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(state) => {
                    let finished = state.status.phase.is_finished();
                    if tx.send((i, Ok(state))).is_err() || finished {
                        return;
                    }
                }
                Err(e) if e.is_gone() => {
                    gone = true;
                    break;
                }
                Err(e) => {
                    let _ = tx.send((i, Err(e.to_string())));
                    return;
                }
            }
        }
        if !gone {
            // The watch ended without a finished state: the engine is stopping.
            return;
        }
    }
}

/// The last lines of a failed step's log (empty when it has none).
async fn log_tail(engine: &Engine, event: &Event) -> Vec<String> {
    let Some(step) = &event.step else {
        return Vec::new();
    };
    match engine.logs(&event.execution, step).await {
        Ok(lines) => {
            let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines.into_iter().skip(skip).map(|l| l.message).collect()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(engine: &str, name: &str, yaml_extra: &str) -> ArchivePipeline {
        let yaml = format!(
            "name: {name}\n{yaml_extra}stages:\n  - name: s\n    steps:\n      - name: a\n        uses: faults/upper\n        with: {{ text: x }}\n"
        );
        let p = arkline::model::parse_pipeline("p.yaml", &yaml).expect("valid");
        ArchivePipeline {
            engine: engine.into(),
            name: name.into(),
            spec: p.spec,
        }
    }

    fn names(targets: &[Target]) -> Vec<String> {
        targets
            .iter()
            .map(|t| format!("{}/{}", t.engine, t.pipeline))
            .collect()
    }

    #[test]
    fn default_selection_is_every_manual_pipeline() {
        let all = [
            pipeline("team-a", "build", ""),
            pipeline(
                "team-a",
                "nightly",
                "triggers:\n  - type: cron\n    schedule: \"0 2 * * *\"\n",
            ),
            pipeline("team-b", "report", "triggers:\n  - type: manual\n"),
        ];
        assert_eq!(
            names(&select(&all, &[], &[]).expect("selects")),
            ["team-a/build", "team-b/report"]
        );
        // Named explicitly, a cron-only pipeline runs too; archive order is kept.
        let picked = select(&all, &["report".into(), "team-a/nightly".into()], &[]).expect("ok");
        assert_eq!(names(&picked), ["team-a/nightly", "team-b/report"]);
        let err = select(&all, &["team-b/build".into()], &[]).expect_err("no such");
        assert!(err.to_string().contains("has no such pipeline"), "{err}");
        assert!(err.to_string().contains("team-a/build"), "{err}");
    }

    #[test]
    fn params_are_typed_and_checked() {
        let all = [
            pipeline(
                "team-a",
                "build",
                "params:\n  - name: n\n    type: number\n  - name: tags\n    type: array\n    default: []\n",
            ),
            pipeline("team-b", "other", ""),
        ];
        let t = select(&all, &[], &["n=3".into(), "tags=a,b".into()]).expect("ok");
        assert_eq!(t[0].params["n"], serde_json::json!(3));
        assert_eq!(t[0].params["tags"], serde_json::json!(["a", "b"]));
        assert!(
            t[1].params.is_empty(),
            "only pipelines declaring a param get it"
        );

        let err = select(&all, &[], &["n=three".into()]).expect_err("not a number");
        assert!(
            format!("{err:#}").contains("`three` is not a number"),
            "{err:#}"
        );
        let err = select(&all, &[], &[]).expect_err("n is required");
        assert!(err.to_string().contains("param `n` is required"), "{err}");
        let err = select(&all, &[], &["n=1".into(), "zz=1".into()]).expect_err("unknown");
        assert!(err.to_string().contains("declares a param `zz`"), "{err}");
        assert_eq!(param_value(ParamType::Bool, "true").expect("bool"), true);
        assert_eq!(
            param_value(ParamType::Array, r#"["x,y"]"#).expect("json"),
            serde_json::json!(["x,y"])
        );
    }

    #[test]
    fn default_data_dir_is_next_to_the_archive() {
        assert_eq!(
            default_data_dir(Path::new("target/ark/q-0.1.0.arkc"), "q"),
            Path::new("target/ark/.arkline/q")
        );
        assert_eq!(
            default_data_dir(Path::new("q.arkc"), "q"),
            Path::new("./.arkline/q")
        );
    }
}
