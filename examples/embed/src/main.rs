//! arkline embedded in a Rust program: two teams' pipeline engines merged into
//! one process, each with its own grants, quota, secrets and pipelines, sharing
//! one isolation runtime, one store and one worker pool.
//!
//! ```sh
//! cargo ark package -p shell                                   # → target/ark/shell-0.1.0.ark
//! cargo run -p arkline-example-embed -- target/ark/shell-0.1.0.ark
//! ```
//!
//! `team-a` grants the `shell` biz the `sh` program; `team-b` deploys the same
//! biz and grants it nothing, so its step is refused by the host.

use std::error::Error;

use arkline::model::{ExecutionPhase, PipelineSettingSpec};
use arkline::{Container, TriggerRequest};
use futures::StreamExt;

const PIPELINE: &str = r#"
name: build
secrets: [registry-token]
stages:
  - name: compile
    steps:
      - name: make
        uses: shell
        with:
          script: |
            echo "building for $TEAM"
            echo "pushing with token ${{ secrets.registry-token }}"
            echo "artifact=app-$TEAM.tar" >> "$ARKLINE_OUTPUT"
          env:
            TEAM: "${{ params.team }}"
params:
  - name: team
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let ark = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/ark/shell-0.1.0.ark".to_owned());
    let bytes = std::fs::read(&ark).map_err(|e| {
        format!("cannot read {ark}: {e} (package it first: cargo ark package -p shell)")
    })?;
    let data = std::env::temp_dir().join(format!("arkline-embed-{}", std::process::id()));
    let container = Container::builder().data_dir(&data).build()?;

    for (team, grants, quota) in [
        ("team-a", vec!["process=sh".to_owned()], 2),
        ("team-b", vec![], 1),
    ] {
        let engine = container.engine(team).await?;
        engine
            .apply_settings(PipelineSettingSpec {
                executor_quota: quota,
                ..PipelineSettingSpec::default()
            })
            .await?;
        engine.deploy_biz(&bytes, &grants, true).await?;
        engine
            .set_secret("registry-token", &format!("{team}-s3cr3t"))
            .await?;
        engine.apply_pipeline_yaml("build.yaml", PIPELINE).await?;
    }

    // Both engines run at once, in this one process.
    let mut runs = Vec::new();
    for engine in container.engines() {
        let exec = engine
            .trigger(
                "build",
                TriggerRequest::manual().param("team", engine.name()),
            )
            .await?;
        runs.push((engine, exec.metadata.name));
    }
    println!("{:<8} {:<10} {:<10} detail", "engine", "execution", "phase");
    let mut ok = true;
    for (engine, name) in runs {
        let done = engine.wait(&name).await?;
        let mut log = engine.follow_logs(&name, "make");
        let mut lines = Vec::new();
        while let Some(line) = log.next().await {
            lines.push(line?.message);
        }
        let detail = match done.status.phase {
            ExecutionPhase::Succeeded => format!(
                "artifact={}; log: {}",
                done.status.outputs["make"]["artifact"],
                lines
                    .iter()
                    .find(|l| l.contains("token"))
                    .cloned()
                    .unwrap_or_default()
            ),
            _ => done.status.reason.clone(),
        };
        println!(
            "{:<8} {:<10} {:<10} {detail}",
            engine.name(),
            name,
            format!("{:?}", done.status.phase)
        );
        let expected = if engine.name() == "team-a" {
            ExecutionPhase::Succeeded
        } else {
            ExecutionPhase::Failed
        };
        ok &= done.status.phase == expected;
    }
    container.shutdown().await;
    drop(container);
    let _ = std::fs::remove_dir_all(&data);
    if ok {
        println!(
            "team-a ran with `sh` granted; team-b's identical step was refused: grants are per engine"
        );
        Ok(())
    } else {
        Err("an engine did not behave as its grants say".into())
    }
}
