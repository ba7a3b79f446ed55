//! `arkline ctl`: a thin client of the `arkline serve` admin API.
//!
//! The server, token and engine come from `--server`/`ARKLINE_SERVER`,
//! `--token`/`ARKLINE_TOKEN` and `--engine`/`ARKLINE_ENGINE`. Results are tables
//! on stdout (`--json` prints the API's JSON instead); an error the API answers
//! is printed as `error[<code>]: <message>` with exit status 1; a failure to
//! reach the server exits with 2.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use arkline::host::terminal::escape_line;
use arkline::model::{ExecutionPhase, Pipeline, PipelineExecution};
use clap::{Args, Subcommand};
use reqwest::Method;

use crate::serve::api::{
    BizView, DeployedView, EngineView, LogEnd, LogLine, SecretNames, UninstallView,
};

pub mod client;
pub mod provenance;

use client::{ApiFailure, Client, read_events};

/// How often `exec start --wait` looks at the execution.
const WAIT_POLL: Duration = Duration::from_millis(300);

/// Arguments of `arkline ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The server's URL.
    #[arg(
        long,
        env = "ARKLINE_SERVER",
        default_value = "http://127.0.0.1:8740",
        global = true
    )]
    pub server: String,
    /// The bearer token.
    #[arg(long, env = "ARKLINE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The engine the command is about.
    #[arg(long, short = 'e', env = "ARKLINE_ENGINE", global = true)]
    pub engine: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Engines: list, add from a .arkc, remove.
    #[command(subcommand)]
    Engine(EngineCmd),
    /// Bizes of the engine: list, install, switch, uninstall.
    #[command(subcommand)]
    Biz(BizCmd),
    /// Pipelines of the engine: apply, list, delete.
    #[command(subcommand)]
    Pipeline(PipelineCmd),
    /// Executions of the engine: start, get, list, logs, abort.
    #[command(subcommand)]
    Exec(ExecCmd),
    /// Secrets of the engine (values are write-only): set, list, delete.
    #[command(subcommand)]
    Secret(SecretCmd),
    /// Check the signed provenance a pipeline attached to an image in its
    /// registry (talks to the registry only, not to an arkline server).
    VerifyProvenance(provenance::VerifyProvenanceArgs),
}

/// `ctl engine …`
#[derive(Debug, Subcommand)]
pub enum EngineCmd {
    /// The engines the token may see.
    List,
    /// Deploy a container archive (.arkc): creates or updates its engines.
    Add {
        /// The .arkc file.
        archive: PathBuf,
    },
    /// Remove an engine with everything in it.
    Remove {
        /// Engine name.
        name: String,
    },
    /// The engine's settings (JSON), or replace them with `--set FILE`.
    Settings {
        /// A JSON file with the whole settings (`-` for stdin).
        #[arg(long)]
        set: Option<PathBuf>,
    },
    /// The public key that verifies the engine's build provenance (for
    /// `ctl verify-provenance --key`).
    ProvenanceKey,
}

/// `ctl biz …`
#[derive(Debug, Subcommand)]
pub enum BizCmd {
    /// Installed biz versions.
    List,
    /// Install a .ark in the engine.
    Install {
        /// The .ark file.
        archive: PathBuf,
        /// A capability granted to it (`process=sh`, `http=example.com`, `cache`, `host-call=n`); repeatable.
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Keep the active version as it is (the first version of a name is activated anyway).
        #[arg(long)]
        no_activate: bool,
        /// Answer once the archive is checked and recorded, and let the server
        /// compile it in the background (`ctl biz list` shows it `installing`).
        #[arg(long)]
        no_wait: bool,
    },
    /// Make a version the one new executions resolve to.
    Switch {
        /// Biz name.
        name: String,
        /// Installed version.
        version: String,
    },
    /// Uninstall a version (it goes when the executions holding it end).
    Uninstall {
        /// Biz name.
        name: String,
        /// Version.
        version: String,
        /// Cancel the steps running on it instead of waiting.
        #[arg(long)]
        force: bool,
    },
}

/// `ctl pipeline …`
#[derive(Debug, Subcommand)]
pub enum PipelineCmd {
    /// Create or replace pipelines from YAML files.
    Apply {
        /// Pipeline YAML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The engine's pipelines.
    List,
    /// Delete a pipeline.
    Delete {
        /// Pipeline name.
        name: String,
    },
}

/// `ctl exec …`
#[derive(Debug, Subcommand)]
pub enum ExecCmd {
    /// Start an execution of a pipeline.
    Start {
        /// Pipeline name.
        pipeline: String,
        /// A string param, `name=value`; repeatable.
        #[arg(long = "param", short = 'p', value_parser = key_value)]
        params: Vec<(String, String)>,
        /// A param as JSON (numbers, booleans, lists), `name=<json>`; repeatable.
        #[arg(long = "param-json", value_parser = key_value)]
        json_params: Vec<(String, String)>,
        /// Branch built.
        #[arg(long, default_value = "")]
        branch: String,
        /// Commit built.
        #[arg(long, default_value = "")]
        commit: String,
        /// Event (`push`, `pull_request`, `tag`, `manual`).
        #[arg(long, default_value = "")]
        event: String,
        /// Run the pipeline file as it is at this branch or commit of the
        /// engine's repository (`pipelines_from_repo`), not the stored pipeline.
        #[arg(long = "ref", default_value = "", conflicts_with_all = ["branch", "commit"])]
        reference: String,
        /// Wait until it finishes; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// One execution with its stages and steps.
    Get {
        /// Execution name (`<pipeline>-<run>`).
        name: String,
    },
    /// Executions, newest first.
    List {
        /// Only this pipeline's.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only those whose labels match (`app=web,tier!=db`).
        #[arg(long, short = 'l')]
        selector: Option<String>,
        /// After the list, print each execution again as it changes, until
        /// interrupted (with `--json`: one `{"type", "object"}` line per change).
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// A step's log.
    Logs {
        /// Execution name.
        execution: String,
        /// Step name.
        step: String,
        /// Follow new lines until the step ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Start an execution again: same pipeline, params, event, branch and
    /// commit (labelled `arkline.dev/rerun-of`).
    Rerun {
        /// Execution name.
        name: String,
        /// Wait until the new execution finishes; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Abort an execution.
    Abort {
        /// Execution name.
        name: String,
    },
    /// Approve an approval step that is waiting (as this token).
    Approve {
        /// Execution name.
        execution: String,
        /// The approval step's name.
        step: String,
        /// What you say, kept with the decision.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject an approval step that is waiting: the step fails.
    Reject {
        /// Execution name.
        execution: String,
        /// The approval step's name.
        step: String,
        /// Why, kept with the decision.
        #[arg(long, default_value = "")]
        comment: String,
    },
}

/// `ctl secret …`
#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Create or replace a secret; the value comes from --value or stdin.
    Set {
        /// Secret name.
        name: String,
        /// The value (prefer stdin: command lines are visible to other users).
        #[arg(long)]
        value: Option<String>,
    },
    /// Secret names (values are never shown).
    List,
    /// Delete a secret.
    Delete {
        /// Secret name.
        name: String,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{text}` is not `name=value`")),
    }
}

impl CtlArgs {
    /// Runs the subcommand.
    pub fn exec(self) -> anyhow::Result<ExitCode> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        match runtime.block_on(self.run()) {
            Ok(code) => Ok(code),
            Err(e) => match e.downcast_ref::<ApiFailure>() {
                Some(f) => {
                    eprintln!("error[{}]: {}", f.code, f.message);
                    Ok(ExitCode::from(1))
                }
                None => Err(e),
            },
        }
    }

    fn engine(&self) -> anyhow::Result<&str> {
        self.engine.as_deref().ok_or_else(|| {
            anyhow::anyhow!("this command is about one engine: give --engine NAME or set ARKLINE_ENGINE (`arkline ctl engine list` shows them)")
        })
    }

    fn engine_path(&self, rest: &str) -> anyhow::Result<String> {
        Ok(format!("/api/v1/engines/{}{rest}", seg(self.engine()?)))
    }

    async fn run(&self) -> anyhow::Result<ExitCode> {
        if let CtlCommand::VerifyProvenance(args) = &self.command {
            return args.run(self.json).await;
        }
        let client = Client::new(&self.server, self.token.clone())?;
        match &self.command {
            CtlCommand::Engine(cmd) => self.engine_cmd(&client, cmd).await,
            CtlCommand::Biz(cmd) => self.biz_cmd(&client, cmd).await,
            CtlCommand::Pipeline(cmd) => self.pipeline_cmd(&client, cmd).await,
            CtlCommand::Exec(cmd) => self.exec_cmd(&client, cmd).await,
            CtlCommand::Secret(cmd) => self.secret_cmd(&client, cmd).await,
            CtlCommand::VerifyProvenance(args) => args.run(self.json).await,
        }
    }

    /// Prints `value` as JSON when `--json`, else calls `human`.
    fn print<T: serde::Serialize>(&self, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            human(value);
        }
        Ok(())
    }

    async fn engine_cmd(&self, client: &Client, cmd: &EngineCmd) -> anyhow::Result<ExitCode> {
        match cmd {
            EngineCmd::List => {
                let engines: Vec<EngineView> = client
                    .json(client.request(Method::GET, "/api/v1/engines"))
                    .await?;
                self.print(&engines, |engines| {
                    table(
                        &["NAME", "BIZES", "PIPELINES"],
                        engines.iter().map(|e| {
                            vec![e.name.clone(), e.bizes.to_string(), e.pipelines.to_string()]
                        }),
                    )
                })?;
            }
            EngineCmd::Add { archive } => {
                let bytes = read_file(archive)?;
                let deployed: DeployedView = client
                    .json(
                        client
                            .request(Method::POST, "/api/v1/engines")
                            .header("content-type", "application/vnd.arkline.arkc")
                            .body(bytes),
                    )
                    .await?;
                self.print(&deployed, |d| {
                    let names: Vec<&str> = d.engines.iter().map(|e| e.name.as_str()).collect();
                    println!("deployed {}: engines {}", d.archive, names.join(", "));
                })?;
            }
            EngineCmd::Remove { name } => {
                client
                    .send(client.request(Method::DELETE, &format!("/api/v1/engines/{}", seg(name))))
                    .await?;
                if !self.json {
                    println!("removed engine {name}");
                }
            }
            EngineCmd::Settings { set } => {
                let path = self.engine_path("/settings")?;
                let settings: serde_json::Value = match set {
                    None => client.json(client.request(Method::GET, &path)).await?,
                    Some(file) => {
                        let text = if file.as_os_str() == "-" {
                            std::io::read_to_string(std::io::stdin())
                                .context("reading the settings from stdin")?
                        } else {
                            std::fs::read_to_string(file)
                                .with_context(|| format!("reading {}", file.display()))?
                        };
                        let body: serde_json::Value = serde_json::from_str(&text)
                            .with_context(|| format!("{} is not JSON", file.display()))?;
                        client
                            .json(client.request(Method::PUT, &path).json(&body))
                            .await?
                    }
                };
                println!("{}", serde_json::to_string_pretty(&settings)?);
            }
            EngineCmd::ProvenanceKey => {
                let path = self.engine_path("/provenance-key")?;
                let key: serde_json::Value =
                    client.json(client.request(Method::GET, &path)).await?;
                if self.json {
                    println!("{}", serde_json::to_string_pretty(&key)?);
                } else {
                    println!("{}", key["public_key"].as_str().unwrap_or_default());
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn biz_cmd(&self, client: &Client, cmd: &BizCmd) -> anyhow::Result<ExitCode> {
        match cmd {
            BizCmd::List => {
                let bizes: Vec<BizView> = client
                    .json(client.request(Method::GET, &self.engine_path("/bizes")?))
                    .await?;
                self.print(&bizes, |bizes| {
                    table(
                        &["NAME", "VERSION", "STATE", "LEASES", "STEPS", "GRANTS"],
                        bizes.iter().map(|b| {
                            vec![
                                b.name.clone(),
                                b.version.clone(),
                                b.broken
                                    .as_ref()
                                    .map_or(b.state.clone(), |r| format!("broken: {r}")),
                                b.leases.to_string(),
                                b.step_types.join(","),
                                b.grants.join(" "),
                            ]
                        }),
                    )
                })?;
            }
            BizCmd::Install {
                archive,
                grants,
                no_activate,
                no_wait,
            } => {
                let bytes = read_file(archive)?;
                let mut query: Vec<(&str, String)> =
                    grants.iter().map(|g| ("grant", g.clone())).collect();
                query.push(("activate", (!no_activate).to_string()));
                if *no_wait {
                    query.push(("wait", "false".to_owned()));
                }
                let biz: BizView = client
                    .json(
                        client
                            .request(Method::POST, &self.engine_path("/bizes")?)
                            .query(&query)
                            .header("content-type", "application/vnd.arkline.ark")
                            .body(bytes),
                    )
                    .await?;
                self.print(&biz, |b| match b.state.as_str() {
                    "installing" => println!(
                        "installing {}@{} in the background (`ctl biz list` shows when it is ready)",
                        b.name, b.version
                    ),
                    _ => println!("installed {}@{} ({})", b.name, b.version, b.state),
                })?;
            }
            BizCmd::Switch { name, version } => {
                let biz: BizView = client
                    .json(
                        client
                            .request(
                                Method::POST,
                                &self.engine_path(&format!("/bizes/{}/switch", seg(name)))?,
                            )
                            .json(&serde_json::json!({ "version": version })),
                    )
                    .await?;
                self.print(&biz, |b| {
                    println!("{}@{} is {}", b.name, b.version, b.state)
                })?;
            }
            BizCmd::Uninstall {
                name,
                version,
                force,
            } => {
                let view: UninstallView = client
                    .json(
                        client
                            .request(
                                Method::DELETE,
                                &self.engine_path(&format!(
                                    "/bizes/{}/{}",
                                    seg(name),
                                    seg(version)
                                ))?,
                            )
                            .query(&[("force", force.to_string())]),
                    )
                    .await?;
                self.print(&view, |v| match v.state.as_str() {
                    "draining" => println!(
                        "{}@{} is draining: it goes when the executions holding it end",
                        v.name, v.version
                    ),
                    _ => println!("uninstalled {}@{}", v.name, v.version),
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn pipeline_cmd(&self, client: &Client, cmd: &PipelineCmd) -> anyhow::Result<ExitCode> {
        match cmd {
            PipelineCmd::Apply { files } => {
                let mut applied = Vec::new();
                for file in files {
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let pipeline: Pipeline = client
                        .json(
                            client
                                .request(Method::POST, &self.engine_path("/pipelines")?)
                                .header("content-type", "application/yaml")
                                .body(text),
                        )
                        .await
                        .with_context(|| format!("{} was not applied", file.display()))?;
                    if !self.json {
                        println!(
                            "applied pipeline {} ({})",
                            pipeline.metadata.name,
                            file.display()
                        );
                    }
                    applied.push(pipeline);
                }
                if self.json {
                    println!("{}", serde_json::to_string_pretty(&applied)?);
                }
            }
            PipelineCmd::List => {
                let pipelines: Vec<Pipeline> = client
                    .json(client.request(Method::GET, &self.engine_path("/pipelines")?))
                    .await?;
                self.print(&pipelines, |ps| {
                    table(
                        &["NAME", "STAGES", "LAST EXECUTION", "LAST STATE"],
                        ps.iter().map(|p| {
                            vec![
                                p.metadata.name.clone(),
                                p.spec.stages.len().to_string(),
                                p.status
                                    .last_execution
                                    .clone()
                                    .unwrap_or_else(|| "-".into()),
                                p.status.last_state.map_or("-".into(), |s| format!("{s:?}")),
                            ]
                        }),
                    )
                })?;
            }
            PipelineCmd::Delete { name } => {
                client
                    .send(client.request(
                        Method::DELETE,
                        &self.engine_path(&format!("/pipelines/{}", seg(name)))?,
                    ))
                    .await?;
                if !self.json {
                    println!("deleted pipeline {name}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn exec_cmd(&self, client: &Client, cmd: &ExecCmd) -> anyhow::Result<ExitCode> {
        match cmd {
            ExecCmd::Start {
                pipeline,
                params,
                json_params,
                branch,
                commit,
                event,
                reference,
                wait,
            } => {
                let mut values: BTreeMap<String, serde_json::Value> = params
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect();
                for (k, v) in json_params {
                    let value = serde_json::from_str(v)
                        .with_context(|| format!("--param-json {k}={v}: the value is not JSON"))?;
                    values.insert(k.clone(), value);
                }
                let body = serde_json::json!({"params": values, "branch": branch, "commit": commit, "event": event, "ref": reference});
                let exec: PipelineExecution = client
                    .json(
                        client
                            .request(
                                Method::POST,
                                &self.engine_path(&format!(
                                    "/pipelines/{}/executions",
                                    seg(pipeline)
                                ))?,
                            )
                            .json(&body),
                    )
                    .await?;
                if !*wait {
                    self.print(&exec, |e| {
                        println!("started {} ({:?})", e.metadata.name, e.status.phase)
                    })?;
                    return Ok(ExitCode::SUCCESS);
                }
                if !self.json {
                    eprintln!("started {}; waiting for it to finish", exec.metadata.name);
                }
                return self.wait_until_finished(client, &exec).await;
            }
            ExecCmd::Get { name } => {
                let exec: PipelineExecution = client
                    .json(client.request(
                        Method::GET,
                        &self.engine_path(&format!("/executions/{}", seg(name)))?,
                    ))
                    .await?;
                self.print(&exec, print_execution)?;
            }
            ExecCmd::List {
                pipeline,
                selector,
                watch,
            } => {
                let mut query: Vec<(&str, String)> = Vec::new();
                if let Some(p) = pipeline {
                    query.push(("pipeline", p.clone()));
                }
                if let Some(l) = selector {
                    query.push(("labelSelector", l.clone()));
                }
                let response = client
                    .send(
                        client
                            .request(Method::GET, &self.engine_path("/executions")?)
                            .query(&query),
                    )
                    .await?;
                let version = response
                    .headers()
                    .get("x-resource-version")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let execs: Vec<PipelineExecution> = serde_json::from_slice(
                    &response
                        .bytes()
                        .await
                        .context("the server's answer was cut off")?,
                )
                .context("the server's answer is not the JSON expected")?;
                if !*watch {
                    self.print(&execs, |execs| {
                        table(EXEC_COLUMNS, execs.iter().map(exec_row))
                    })?;
                    return Ok(ExitCode::SUCCESS);
                }
                if !self.json {
                    table(EXEC_COLUMNS, execs.iter().map(exec_row));
                }
                let Some(version) = version else {
                    anyhow::bail!(
                        "the server gave no X-Resource-Version to watch from; is it older than this ctl?"
                    );
                };
                query.push(("watch", "true".to_owned()));
                query.push(("resourceVersion", version));
                let response = client
                    .send(
                        client
                            .request(Method::GET, &self.engine_path("/executions")?)
                            .query(&query)
                            .header("accept", "text/event-stream"),
                    )
                    .await?;
                read_events(response, |event| {
                    if event.event == "ERROR" {
                        anyhow::bail!("the watch ended: {}", event.data);
                    }
                    let changed: PipelineExecution = serde_json::from_str(&event.data)
                        .context("a watch event is not the JSON expected")?;
                    if self.json {
                        let line = serde_json::json!({"type": event.event, "object": changed});
                        println!("{line}");
                    } else {
                        println!("{}", exec_row(&changed).join("  ").trim_end());
                    }
                    Ok(true)
                })
                .await?;
            }
            ExecCmd::Logs {
                execution,
                step,
                follow,
            } => {
                let path = self.engine_path(&format!(
                    "/executions/{}/steps/{}/logs",
                    seg(execution),
                    seg(step)
                ))?;
                if !*follow {
                    let lines: Vec<LogLine> =
                        client.json(client.request(Method::GET, &path)).await?;
                    for line in &lines {
                        self.print_line(line)?;
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                let response = client
                    .send(
                        client
                            .request(Method::GET, &path)
                            .query(&[("follow", "true")])
                            .header("accept", "text/event-stream"),
                    )
                    .await?;
                let mut end: Option<LogEnd> = None;
                read_events(response, |event| match event.event.as_str() {
                    "line" => {
                        let line: LogLine = serde_json::from_str(&event.data)
                            .context("a log line from the server is not the JSON expected")?;
                        self.print_line(&line)?;
                        Ok(true)
                    }
                    "end" => {
                        end = Some(serde_json::from_str(&event.data).context("a bad end event")?);
                        Ok(false)
                    }
                    "error" => {
                        let body: crate::serve::error::ErrorBody =
                            serde_json::from_str(&event.data).context("a bad error event")?;
                        Err(ApiFailure {
                            status: reqwest::StatusCode::INTERNAL_SERVER_ERROR,
                            code: body.code,
                            message: body.message,
                        }
                        .into())
                    }
                    _ => Ok(true),
                })
                .await?;
                let Some(end) = end else {
                    anyhow::bail!(
                        "the server ended the log stream before the step finished (was it shut down?); run the command again to read the rest"
                    );
                };
                if !self.json {
                    eprintln!("step {step} ended: {}", end.phase);
                }
            }
            ExecCmd::Approve {
                execution,
                step,
                comment,
            }
            | ExecCmd::Reject {
                execution,
                step,
                comment,
            } => {
                let approve = matches!(cmd, ExecCmd::Approve { .. });
                let body = serde_json::json!({
                    "decision": if approve { "approve" } else { "reject" },
                    "comment": comment,
                });
                let exec: PipelineExecution = client
                    .json(
                        client
                            .request(
                                Method::POST,
                                &self.engine_path(&format!(
                                    "/executions/{}/approvals/{}",
                                    seg(execution),
                                    seg(step)
                                ))?,
                            )
                            .json(&body),
                    )
                    .await?;
                self.print(&exec, |e| {
                    println!(
                        "{} `{step}` of {}",
                        if approve { "approved" } else { "rejected" },
                        e.metadata.name
                    )
                })?;
            }
            ExecCmd::Rerun { name, wait } => {
                let exec: PipelineExecution = client
                    .json(client.request(
                        Method::POST,
                        &self.engine_path(&format!("/executions/{}/rerun", seg(name)))?,
                    ))
                    .await?;
                if !*wait {
                    self.print(&exec, |e| {
                        println!(
                            "started {} ({:?}), a rerun of {name}",
                            e.metadata.name, e.status.phase
                        )
                    })?;
                    return Ok(ExitCode::SUCCESS);
                }
                if !self.json {
                    eprintln!(
                        "started {}, a rerun of {name}; waiting for it to finish",
                        exec.metadata.name
                    );
                }
                return self.wait_until_finished(client, &exec).await;
            }
            ExecCmd::Abort { name } => {
                let exec: PipelineExecution = client
                    .json(client.request(
                        Method::POST,
                        &self.engine_path(&format!("/executions/{}/abort", seg(name)))?,
                    ))
                    .await?;
                self.print(&exec, |e| {
                    if e.status.phase.is_finished() {
                        println!(
                            "{} had already finished ({:?})",
                            e.metadata.name, e.status.phase
                        )
                    } else {
                        println!("aborting {}", e.metadata.name)
                    }
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Waits until `exec`, as the server answered its start, finishes; prints
    /// it and exits 0 only when it succeeded (`exec start|rerun --wait`).
    async fn wait_until_finished(
        &self,
        client: &Client,
        exec: &PipelineExecution,
    ) -> anyhow::Result<ExitCode> {
        let name = exec.metadata.name.as_str();
        // Watched from the version the start answered, so no change is
        // missed; polled if the watch ends first (a server restart,
        // compaction).
        let mut done = None;
        let watch = client
            .send(
                client
                    .request(Method::GET, &self.engine_path("/executions")?)
                    .query(&[
                        ("watch", "true".to_owned()),
                        (
                            "resourceVersion",
                            exec.metadata.resource_version.to_string(),
                        ),
                        ("pipeline", exec.spec.pipeline.clone()),
                    ])
                    .header("accept", "text/event-stream"),
            )
            .await;
        if let Ok(response) = watch {
            let watched = read_events(response, |event| {
                if event.event == "ERROR" {
                    return Ok(false);
                }
                let Ok(changed) = serde_json::from_str::<PipelineExecution>(&event.data) else {
                    return Ok(true);
                };
                if changed.metadata.name == name
                    && (changed.status.phase.is_finished() || event.event == "DELETED")
                {
                    done = Some(changed);
                    return Ok(false);
                }
                Ok(true)
            })
            .await;
            if let Err(e) = watched {
                tracing::debug!(error = %e, "the watch ended; polling");
            }
        }
        let path = self.engine_path(&format!("/executions/{}", seg(name)))?;
        let done = match done {
            Some(done) => done,
            None => loop {
                let exec: PipelineExecution =
                    client.json(client.request(Method::GET, &path)).await?;
                if exec.status.phase.is_finished() {
                    break exec;
                }
                tokio::time::sleep(WAIT_POLL).await;
            },
        };
        self.print(&done, print_execution)?;
        Ok(if done.status.phase == ExecutionPhase::Succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }

    fn print_line(&self, line: &LogLine) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(line)?);
        } else {
            let message = line.message.trim_end_matches('\n');
            // On a terminal, what the guest wrote cannot drive it; piped, the
            // lines go out as written (`--json` keeps them exact either way).
            if std::io::stdout().is_terminal() {
                println!("{}", escape_line(message));
            } else {
                println!("{message}");
            }
        }
        Ok(())
    }

    async fn secret_cmd(&self, client: &Client, cmd: &SecretCmd) -> anyhow::Result<ExitCode> {
        match cmd {
            SecretCmd::Set { name, value } => {
                let value = match value {
                    Some(v) => v.clone(),
                    None => {
                        let mut text = String::new();
                        std::io::stdin()
                            .read_to_string(&mut text)
                            .context("cannot read the secret value from stdin")?;
                        // One trailing newline is what `echo` and editors add.
                        let trimmed = text.strip_suffix('\n').unwrap_or(&text);
                        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
                    }
                };
                client
                    .send(
                        client
                            .request(
                                Method::PUT,
                                &self.engine_path(&format!("/secrets/{}", seg(name)))?,
                            )
                            .json(&serde_json::json!({ "value": value })),
                    )
                    .await?;
                if !self.json {
                    println!("set secret {name}");
                }
            }
            SecretCmd::List => {
                let names: SecretNames = client
                    .json(client.request(Method::GET, &self.engine_path("/secrets")?))
                    .await?;
                self.print(&names, |n| {
                    table(&["NAME"], n.names.iter().map(|s| vec![s.clone()]))
                })?;
            }
            SecretCmd::Delete { name } => {
                client
                    .send(client.request(
                        Method::DELETE,
                        &self.engine_path(&format!("/secrets/{}", seg(name)))?,
                    ))
                    .await?;
                if !self.json {
                    println!("deleted secret {name}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// A path segment, percent-encoded.
fn seg(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn read_file(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn print_execution(e: &PipelineExecution) {
    println!("{}  {:?}", e.metadata.name, e.status.phase);
    if !e.status.reason.is_empty() {
        println!("  reason: {}", e.status.reason);
    }
    let mut rows = Vec::new();
    for stage in &e.status.stages {
        for step in &stage.steps {
            rows.push(vec![
                stage.name.clone(),
                step.name.clone(),
                format!("{:?}", step.phase),
                step.attempts.to_string(),
                step.reason.clone(),
            ]);
        }
    }
    for step in &e.status.finally {
        rows.push(vec![
            "finally".into(),
            step.name.clone(),
            format!("{:?}", step.phase),
            step.attempts.to_string(),
            step.reason.clone(),
        ]);
    }
    if !rows.is_empty() {
        table(
            &["STAGE", "STEP", "PHASE", "ATTEMPTS", "REASON"],
            rows.into_iter(),
        );
    }
}

/// Prints rows under a header, columns padded to their widest cell.
const EXEC_COLUMNS: &[&str] = &["NAME", "PIPELINE", "RUN", "PHASE", "STARTED", "REASON"];

/// An execution as a row of `exec list`.
fn exec_row(e: &PipelineExecution) -> Vec<String> {
    vec![
        e.metadata.name.clone(),
        e.spec.pipeline.clone(),
        e.spec.run.to_string(),
        format!("{:?}", e.status.phase),
        e.status.started.map_or("-".into(), |t| t.to_rfc3339()),
        e.status.reason.clone(),
    ]
}

fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}
