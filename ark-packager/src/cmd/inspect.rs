//! `cargo ark inspect`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use arkline::ark::{Ark, Manifest};
use clap::Args;
use serde_json::json;

use crate::shell::Shell;

/// Show what an .ark archive holds: identity, host API, step types with their config
/// schemas summarised, capabilities, entries with sizes and digests, signature.
#[derive(Debug, Clone, Args)]
pub struct InspectCmd {
    /// The archive.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl InspectCmd {
    /// Reads, verifies and prints the archive.
    pub fn exec(&self, shell: &Shell) -> anyhow::Result<()> {
        let ark = Ark::open(&self.file)
            .with_context(|| format!("cannot read {}", self.file.display()))?;
        let mut out = anstream::AutoStream::new(std::io::stdout(), shell.color_choice()).lock();
        if self.json {
            let value = to_json(&ark);
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        } else {
            write_text(&mut out, &ark)?;
        }
        Ok(())
    }
}

fn signature_status(ark: &Ark) -> String {
    match ark.verify_signature(&arkline::ark::SignaturePolicy::default()) {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    }
}

fn to_json(ark: &Ark) -> serde_json::Value {
    let m = &ark.manifest;
    json!({
        "name": m.name,
        "version": m.version.to_string(),
        "description": m.description,
        "authors": m.authors,
        "license": m.license,
        "host_api": m.host_api.to_string(),
        "sha256": ark.sha256,
        "steps": m.steps.iter().map(|s| json!({
            "id": s.id,
            "description": s.description,
            "schema": ark.step_schema(&s.id),
        })).collect::<Vec<_>>(),
        "capabilities": m.capabilities,
        "component": m.component,
        "files": m.files,
        "build": m.build,
        "signature": signature_status(ark),
    })
}

fn write_text(out: &mut impl Write, ark: &Ark) -> anyhow::Result<()> {
    let bold = anstyle::Style::new().bold();
    let m: &Manifest = &ark.manifest;
    writeln!(
        out,
        "{bold}{} {}{bold:#}  {}",
        m.name, m.version, m.description
    )?;
    if !m.authors.is_empty() {
        writeln!(out, "authors:     {}", m.authors.join(", "))?;
    }
    if let Some(license) = &m.license {
        writeln!(out, "license:     {license}")?;
    }
    writeln!(out, "host API:    arkline:step {}", m.host_api)?;
    writeln!(
        out,
        "built with:  {} ({}, {} profile, {})",
        m.build.packager, m.build.target, m.build.profile, m.build.rustc
    )?;
    writeln!(out, "sha256:      {}", ark.sha256)?;
    writeln!(out, "signature:   {}", signature_status(ark))?;

    writeln!(out, "\n{bold}steps{bold:#}")?;
    for step in &m.steps {
        writeln!(out, "  {}/{}  {}", m.name, step.id, step.description)?;
        if let Some(schema) = ark.step_schema(&step.id) {
            for line in summarise_schema(&schema) {
                writeln!(out, "      {line}")?;
            }
        }
    }

    writeln!(out, "\n{bold}capabilities requested{bold:#}")?;
    let caps = &m.capabilities;
    if caps.is_empty() {
        writeln!(out, "  none (log only)")?;
    }
    if !caps.process.is_empty() {
        writeln!(out, "  process:   {}", caps.process.join(", "))?;
    }
    if !caps.http.is_empty() {
        writeln!(out, "  http:      {}", caps.http.join(", "))?;
    }
    if caps.cache {
        writeln!(out, "  cache")?;
    }
    if !caps.host_call.is_empty() {
        writeln!(out, "  host-call: {}", caps.host_call.join(", "))?;
    }

    writeln!(out, "\n{bold}entries{bold:#}")?;
    writeln!(
        out,
        "  {:<32} {:>10}  {}",
        m.component.path, m.component.size, m.component.sha256
    )?;
    for f in &m.files {
        writeln!(out, "  {:<32} {:>10}  {}", f.path, f.size, f.sha256)?;
    }
    Ok(())
}

/// One line per config property: name, type, required, description.
fn summarise_schema(schema: &serde_json::Value) -> Vec<String> {
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return vec!["(no properties)".to_owned()];
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    props
        .iter()
        .map(|(name, prop)| {
            let ty = match prop.get("type") {
                Some(serde_json::Value::String(t)) => t.clone(),
                Some(serde_json::Value::Array(ts)) => ts
                    .iter()
                    .filter_map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join("|"),
                _ if prop.get("$ref").is_some() || prop.get("enum").is_some() => "enum".to_owned(),
                _ => "any".to_owned(),
            };
            let req = if required.contains(&name.as_str()) {
                "required"
            } else {
                "optional"
            };
            let desc = prop
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("");
            format!("{name}: {ty} ({req}) {desc}").trim_end().to_owned()
        })
        .collect()
}
