//! The `shell` biz: runs a script with a granted shell through the `process`
//! capability.
//!
//! ```yaml
//! - name: build
//!   uses: shell
//!   with:
//!     script: |
//!       cargo build --release
//!       echo "binary=target/release/app" >> "$ARKLINE_OUTPUT"
//! ```
//!
//! Outputs: every `key=value` line the script appends to the file named by
//! `$ARKLINE_OUTPUT` (GitHub Actions style; `key<<DELIM` … `DELIM` for multi-line
//! values), plus `exit_code`.

use std::collections::BTreeMap;
use std::fs;

use arkline_sdk::prelude::*;
use arkline_sdk::workspace::WORKSPACE;

/// Configuration of the `run` step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// The script to run.
    pub script: String,
    /// The shell to run it with; it must be granted to the biz (`process`).
    #[serde(default = "default_shell")]
    pub shell: Shell,
    /// Extra environment variables for the script.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory relative to the workspace root (default: the root).
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Stop at the first failing command (`-e`), as CI shells do. Default: true.
    #[serde(default = "default_true")]
    pub errexit: bool,
}

/// A supported shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Shell {
    /// POSIX `sh`.
    Sh,
    /// GNU `bash`.
    Bash,
}

impl Shell {
    fn program(self) -> &'static str {
        match self {
            Shell::Sh => "sh",
            Shell::Bash => "bash",
        }
    }
}

fn default_shell() -> Shell {
    Shell::Sh
}

fn default_true() -> bool {
    true
}

/// Runs the `run` step.
pub fn run(ctx: &Context, config: Run) -> StepResult {
    let cwd = match &config.working_dir {
        Some(dir) => workspace_path(dir).ok_or_else(|| {
            StepError::invalid_config(
                "working_dir",
                format!("`{dir}` leaves the workspace; give a path relative to the workspace root"),
            )
        })?,
        None => WORKSPACE.to_owned(),
    };
    let output_file = format!(
        "{WORKSPACE}/.arkline/output-{}-{}",
        sanitize(&ctx.step_name),
        ctx.attempt
    );
    fs::create_dir_all(format!("{WORKSPACE}/.arkline"))
        .and_then(|()| fs::write(&output_file, b""))
        .map_err(|e| StepError::failed(format!("cannot create {output_file}: {e}")))?;

    let mut args = Vec::new();
    if config.errexit {
        args.push("-e".to_owned());
    }
    args.extend(["-c".to_owned(), config.script.clone()]);
    let out = process::Command::new(config.shell.program())
        .args(args)
        .envs(ctx.env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .envs(config.env.iter().map(|(k, v)| (k.clone(), v.clone())))
        .env("ARKLINE_OUTPUT", output_file.clone())
        .current_dir(cwd)
        .output()?;

    let written = fs::read_to_string(&output_file).unwrap_or_default();
    let _ = fs::remove_file(&output_file);
    let mut outcome = Outcome::new();
    for (key, value) in parse_outputs(&written).map_err(StepError::failed)? {
        outcome = outcome.output(key, value);
    }
    match out.status {
        process::ExitStatus::Exited(0) => Ok(outcome.output("exit_code", "0")),
        status => Err(StepError::failed(format!(
            "{} script ended with {status}{}",
            config.shell.program(),
            stderr_tail(&out.stderr)
        ))),
    }
}

/// Joins a relative path onto the workspace, refusing anything that climbs out.
fn workspace_path(dir: &str) -> Option<String> {
    arkline_sdk::workspace::relative_path(dir).map(|r| arkline_sdk::workspace::guest_path(&r))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{}", tail.join("\n"))
    }
}

/// Parses `key=value` lines and `key<<DELIM` heredocs, as GitHub Actions does.
pub fn parse_outputs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut outputs = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some((key, delim)) = line.split_once("<<") {
            let mut value = Vec::new();
            let mut closed = false;
            for (_, l) in lines.by_ref() {
                if l == delim {
                    closed = true;
                    break;
                }
                value.push(l);
            }
            if !closed {
                return Err(format!(
                    "$ARKLINE_OUTPUT line {}: `{key}<<{delim}` is never closed by a `{delim}` line",
                    n + 1
                ));
            }
            outputs.push((checked_key(key, n)?, value.join("\n")));
        } else if let Some((key, value)) = line.split_once('=') {
            outputs.push((checked_key(key, n)?, value.to_owned()));
        } else {
            return Err(format!(
                "$ARKLINE_OUTPUT line {}: `{line}` is not `key=value` or `key<<DELIMITER`",
                n + 1
            ));
        }
    }
    Ok(outputs)
}

fn checked_key(key: &str, n: usize) -> Result<String, String> {
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!(
            "$ARKLINE_OUTPUT line {}: output name `{key}` may hold only letters, digits, `_` and `-`",
            n + 1
        ))
    }
}

arkline_sdk::steps! {
    /// Runs a shell script in the workspace; outputs come from `$ARKLINE_OUTPUT`.
    "run" => run,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_heredocs() {
        let text = "image=app:1.2\n\nnotes<<EOF\nline one\nline two\nEOF\nempty=\n";
        let outputs = parse_outputs(text).expect("valid");
        assert_eq!(
            outputs,
            vec![
                ("image".to_owned(), "app:1.2".to_owned()),
                ("notes".to_owned(), "line one\nline two".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn value_may_contain_equals() {
        let outputs = parse_outputs("url=https://x/?a=b").expect("valid");
        assert_eq!(outputs[0].1, "https://x/?a=b");
    }

    #[test]
    fn unclosed_heredoc_is_an_error() {
        let err = parse_outputs("a=1\nnotes<<EOF\nx\n").expect_err("unclosed");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("never closed"), "{err}");
    }

    #[test]
    fn malformed_line_is_an_error() {
        let err = parse_outputs("just text").expect_err("malformed");
        assert!(err.contains("line 1"), "{err}");
        let err = parse_outputs("bad key=1").expect_err("bad key");
        assert!(err.contains("`bad key`"), "{err}");
    }

    #[test]
    fn working_dir_stays_in_workspace() {
        assert_eq!(
            workspace_path("src/app").as_deref(),
            Some("/workspace/src/app")
        );
        assert_eq!(workspace_path("./a/../b").as_deref(), Some("/workspace/b"));
        assert_eq!(
            workspace_path("/workspace/x").as_deref(),
            Some("/workspace/x")
        );
        assert_eq!(workspace_path("../etc"), None);
        assert_eq!(workspace_path("/etc"), None);
        assert_eq!(workspace_path("/workspacex"), None);
    }
}
