//! `arkline validate`: checks pipeline YAML files and container archives and
//! prints every diagnostic, for people (rustc-style, with the source line) or for
//! editors and CI (`--json`).
//!
//! A `.yaml` file is parsed and validated by the model (every error at once, each
//! with file, line, column and a hint). A `.arkc` (recognised by its extension or
//! its zip signature) is read with the hardened archive reader, which checks the
//! archive itself (entries, digests, nested bizes, signature policies) and every
//! pipeline of every engine: it parses, its `uses` name bizes the engine has, and
//! its step configs match their step types' schemas. Diagnostics of a pipeline
//! inside an archive name it `<archive>!/<entry>`, e.g.
//! `app.arkc!/engines/team-a/pipelines/build.yaml`.
//!
//! `--json` prints one JSON array on stdout; each element has the stable fields
//! `file`, `line`, `column` (1-based; `null` when the problem has no position, such
//! as an archive error), `end_line`, `end_column`, `severity` (`error` or
//! `warning`), `code` (kebab-case, e.g. `unknown-field`, `archive`), `message`,
//! `hint` (`null` when there is none) and `text` (the offending source text).
//!
//! Exit status: 0 when every file is valid (warnings allowed), 1 when any has an
//! error (an unreadable file included).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use arkline::container::archive::{ContainerArchive, ContainerArchiveError};
use arkline::model::{Diagnostic, Diagnostics, Severity, Span};
use serde::Serialize;

/// Arguments of `arkline validate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 when every file is valid, 1 when any has an error.")]
pub struct ValidateArgs {
    /// Pipeline files (`.yaml`/`.yml`) and container archives (`.arkc`) to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print the diagnostics as one JSON array on stdout (fields: file, line,
    /// column, end_line, end_column, severity, code, message, hint, text).
    #[arg(long)]
    pub json: bool,
    /// Biz archives (`.ark`) whose step schemas check the `with:` of steps in
    /// pipeline files (an `.arkc` carries its own bizes). Repeatable.
    #[arg(long = "ark", value_name = "FILE")]
    pub arks: Vec<PathBuf>,
}

/// What checking one file found.
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The file as given.
    pub file: String,
    /// Its diagnostics (errors and warnings), in source order per file.
    pub diagnostics: Vec<Diagnostic>,
    /// Sources to render the diagnostics with, by diagnostic file name.
    pub sources: Vec<(String, String)>,
    /// A pre-rendered explanation for people, when the diagnostics alone do not
    /// carry the source lines (a pipeline refused inside an archive).
    pub rendered: Option<String>,
    /// What was checked, for the "ok" line (e.g. `3 pipelines in 2 engines`).
    pub checked: String,
}

impl FileReport {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// One diagnostic as `--json` prints it.
#[derive(Debug, Serialize)]
struct JsonDiagnostic<'a> {
    file: &'a str,
    line: Option<usize>,
    column: Option<usize>,
    end_line: Option<usize>,
    end_column: Option<usize>,
    severity: Severity,
    code: &'a str,
    message: &'a str,
    hint: Option<&'a str>,
    text: &'a str,
}

impl ValidateArgs {
    /// Runs the subcommand.
    pub fn exec(self, color: crate::color::ColorChoice) -> anyhow::Result<ExitCode> {
        let mut arks = Vec::new();
        for path in &self.arks {
            let ark = arkline::ark::Ark::open(path).with_context(|| {
                format!(
                    "cannot use {} with --ark: it must be a biz archive made by `cargo ark package`",
                    path.display()
                )
            })?;
            arks.push(ark);
        }
        let reports: Vec<FileReport> = self.files.iter().map(|f| check_path(f, &arks)).collect();
        let failed = reports.iter().any(FileReport::has_errors);
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        if self.json {
            let all: Vec<JsonDiagnostic<'_>> = reports
                .iter()
                .flat_map(|r| r.diagnostics.iter())
                .map(|d| json_diagnostic(d, &reports))
                .collect();
            serde_json::to_writer_pretty(&mut out, &all).context("cannot write to stdout")?;
            writeln!(out).context("cannot write to stdout")?;
        } else {
            let color = color.stdout();
            for report in &reports {
                write!(out, "{}", render_report(report, color))
                    .context("cannot write to stdout")?;
            }
            let errors: usize = reports
                .iter()
                .flat_map(|r| &r.diagnostics)
                .filter(|d| d.severity == Severity::Error)
                .count();
            let warnings: usize = reports
                .iter()
                .flat_map(|r| &r.diagnostics)
                .filter(|d| d.severity == Severity::Warning)
                .count();
            let bad = reports.iter().filter(|r| r.has_errors()).count();
            if bad > 0 {
                writeln!(
                    out,
                    "{bad} of {} file(s) invalid: {errors} error(s), {warnings} warning(s)",
                    reports.len()
                )
                .context("cannot write to stdout")?;
            }
        }
        out.flush().context("cannot write to stdout")?;
        Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        })
    }
}

fn json_diagnostic<'a>(d: &'a Diagnostic, reports: &'a [FileReport]) -> JsonDiagnostic<'a> {
    let end = d.span.and_then(|span| {
        let source = reports
            .iter()
            .flat_map(|r| &r.sources)
            .find(|(f, _)| *f == d.file)
            .map(|(_, s)| s.as_str())?;
        end_position(source, span)
    });
    JsonDiagnostic {
        file: &d.file,
        line: d.span.map(|s| s.line),
        column: d.span.map(|s| s.column),
        end_line: end.map(|(l, _)| l),
        end_column: end.map(|(_, c)| c),
        severity: d.severity,
        code: &d.code,
        message: &d.message,
        hint: d.hint.as_deref(),
        text: &d.text,
    }
}

/// 1-based line and column (in characters) of the end of `span` in `source`.
fn end_position(source: &str, span: Span) -> Option<(usize, usize)> {
    let before = source.get(..span.end)?;
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..)?.chars().count() + 1;
    Some((line, column))
}

fn render_report(report: &FileReport, color: bool) -> String {
    if report.diagnostics.is_empty() {
        return format!("{}: ok ({})\n", report.file, report.checked);
    }
    let mut out = String::new();
    if let Some(rendered) = &report.rendered {
        out.push_str(rendered);
        if !rendered.ends_with('\n') {
            out.push('\n');
        }
    } else {
        for d in &report.diagnostics {
            let source = report
                .sources
                .iter()
                .find(|(f, _)| *f == d.file)
                .map_or("", |(_, s)| s.as_str());
            out.push_str(&if color {
                d.render_colored(source)
            } else {
                d.render(source)
            });
            out.push('\n');
        }
    }
    if !report.has_errors() {
        out.push_str(&format!("{}: ok ({})\n", report.file, report.checked));
    }
    out
}

/// Checks one file, by kind: a container archive or a pipeline file (whose
/// steps' `with:` are checked against the schemas of `arks`).
pub fn check_path(path: &Path, arks: &[arkline::ark::Ark]) -> FileReport {
    let file = path.display().to_string();
    let bytes = match read_file(path) {
        Ok(b) => b,
        Err(e) => {
            return FileReport {
                diagnostics: vec![
                    Diagnostic::error("io", format!("cannot read {file}: {e}"))
                        .with_hint("check the path and its permissions")
                        .at(&file, "", None),
                ],
                file,
                sources: Vec::new(),
                rendered: None,
                checked: String::new(),
            };
        }
    };
    let is_archive =
        path.extension().is_some_and(|e| e == "arkc") || bytes.starts_with(b"PK\x03\x04");
    if is_archive {
        check_archive(&file, &bytes)
    } else {
        check_pipeline(&file, &bytes, arks)
    }
}

fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        return Ok(buf);
    }
    std::fs::read(path)
}

/// The archive among `arks` that a step's `uses` resolves to: the biz of that
/// name with the highest version its requirement accepts.
fn resolve_ark<'a>(
    arks: &'a [arkline::ark::Ark],
    uses: &arkline::model::Uses,
) -> Option<&'a arkline::ark::Ark> {
    arks.iter()
        .filter(|a| a.manifest.name == uses.biz)
        .filter(|a| {
            uses.req
                .as_ref()
                .is_none_or(|r| r.matches(&a.manifest.version))
        })
        .max_by(|a, b| a.manifest.version.cmp(&b.manifest.version))
}

/// Checks one pipeline file; with `arks`, its steps' `with:` against their
/// schemas too.
pub fn check_pipeline(file: &str, bytes: &[u8], arks: &[arkline::ark::Ark]) -> FileReport {
    let mut report = FileReport {
        file: file.to_owned(),
        diagnostics: Vec::new(),
        sources: Vec::new(),
        rendered: None,
        checked: "pipeline".into(),
    };
    let Ok(source) = std::str::from_utf8(bytes) else {
        report.diagnostics.push(
            Diagnostic::error("not-utf8", "the file is not UTF-8 text")
                .with_hint("pipeline files are YAML in UTF-8; re-save it as UTF-8")
                .at(file, "", None),
        );
        return report;
    };
    match arkline::model::parse_pipeline_file(file, source) {
        Ok(parsed) => {
            report.checked = format!("pipeline `{}`", parsed.pipeline.metadata.name);
            report.diagnostics = parsed.warnings;
            if !arks.is_empty() {
                let schema_for = |uses: &arkline::model::Uses| {
                    let ark = resolve_ark(arks, uses)?;
                    let step = match &uses.step {
                        Some(step) => step.clone(),
                        None => match ark.manifest.steps.as_slice() {
                            [only] => only.id.clone(),
                            _ => return None,
                        },
                    };
                    ark.step_schema(&step)
                };
                report
                    .diagnostics
                    .extend(arkline::model::validate_with_schemas(
                        &parsed.pipeline.spec,
                        &parsed.source_map,
                        &schema_for,
                    ));
                report.checked = format!(
                    "pipeline `{}`, step configs checked against {} biz archive(s)",
                    parsed.pipeline.metadata.name,
                    arks.len()
                );
            }
        }
        Err(diags) => report.diagnostics = diags.0,
    }
    // A file over the size cap is refused without a position: no need to keep
    // a copy of it for rendering.
    if source.len() <= arkline::model::Limits::default().max_bytes {
        report.sources.push((file.to_owned(), source.to_owned()));
    }
    report
}

/// Checks one container archive with the hardened reader.
pub fn check_archive(file: &str, bytes: &[u8]) -> FileReport {
    let mut report = FileReport {
        file: file.to_owned(),
        diagnostics: Vec::new(),
        sources: Vec::new(),
        rendered: None,
        checked: String::new(),
    };
    let entry_name = |entry: &str| format!("{file}!/{entry}");
    match ContainerArchive::from_bytes(bytes) {
        Ok(archive) => {
            // The reader refuses errors; warnings are found by parsing again.
            let mut pipelines = 0;
            for ((_, path), text) in &archive.pipelines {
                pipelines += 1;
                let name = entry_name(path);
                if let Ok(parsed) = arkline::model::parse_pipeline_file(&name, text) {
                    report.diagnostics.extend(parsed.warnings);
                }
                report.sources.push((name, text.clone()));
            }
            let engines = archive.manifest.engines.len();
            report.checked = format!(
                "container {} {}: {engines} engine(s), {pipelines} pipeline(s), {} biz(es)",
                archive.manifest.name,
                archive.manifest.version,
                archive.bizes.len()
            );
        }
        Err(err) => {
            let diagnostics = match &err {
                ContainerArchiveError::Pipeline { diagnostics, .. }
                | ContainerArchiveError::UnsatisfiedUses { diagnostics, .. }
                | ContainerArchiveError::PipelineConfig { diagnostics, .. } => Some(diagnostics),
                _ => None,
            };
            match diagnostics {
                Some(Diagnostics(list)) => {
                    report.diagnostics = list
                        .iter()
                        .cloned()
                        .map(|mut d| {
                            d.file = entry_name(&d.file);
                            d
                        })
                        .collect();
                    report.rendered = Some(format!("{file}: {err}"));
                }
                None => {
                    let mut d = Diagnostic::error("archive", err.to_string()).at(file, "", None);
                    d.hint = archive_hint(&err).map(str::to_owned);
                    report.diagnostics.push(d);
                }
            }
        }
    }
    report
}

/// A hint for archive errors whose message does not already say what to do.
fn archive_hint(err: &ContainerArchiveError) -> Option<&'static str> {
    match err {
        ContainerArchiveError::Archive(_)
        | ContainerArchiveError::UnlistedEntry(_)
        | ContainerArchiveError::MissingEntry(_)
        | ContainerArchiveError::DigestMismatch { .. }
        | ContainerArchiveError::Biz { .. }
        | ContainerArchiveError::BizIdentity { .. } => Some(
            "the archive is damaged or was altered after it was built; rebuild it with `cargo ark container`",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_position_counts_lines_and_characters() {
        let source = "name: p\nstages: é-x\n";
        let span = Span {
            start: 8,
            end: 19,
            line: 2,
            column: 1,
        };
        assert_eq!(end_position(source, span), Some((2, 11)));
        let past = Span {
            start: 0,
            end: 999,
            line: 1,
            column: 1,
        };
        assert_eq!(end_position(source, past), None);
    }
}
