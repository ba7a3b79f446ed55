//! `cargo ark inspect`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use arkline::ark::{Ark, Manifest};
use arkline::container::archive::ContainerArchive;
use arkline::host::Capabilities;
use clap::Args;
use serde_json::json;

use crate::shell::Shell;

/// Show what an .ark archive holds: identity, host API, step types with their config
/// schemas summarised, capabilities, entries with sizes and digests, signature.
/// For an .arkc (by its extension): each engine's settings, signature policy,
/// bizes (version, grants, what they request, signature status) and pipelines,
/// the shared bizes, and the entries.
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
        if super::container::is_container(&self.file) {
            let arkc = super::container::open(&self.file)?;
            let mut out = anstream::AutoStream::new(std::io::stdout(), shell.color_choice()).lock();
            if self.json {
                let value = container_json(&arkc);
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            } else {
                write_container_text(&mut out, &arkc)?;
            }
            return Ok(());
        }
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

/// The source language: as recorded when packaged, else from the
/// component's `producers` sections.
fn language_of(ark: &Ark) -> Option<String> {
    ark.manifest
        .build
        .language
        .clone()
        .or_else(|| arkline::ark::producers::source_language(&ark.component))
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
        "language": language_of(ark),
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
    let toolchain = if m.build.rustc.is_empty() {
        String::new()
    } else {
        format!(", {}", m.build.rustc)
    };
    writeln!(
        out,
        "built with:  {} ({}, {} profile{toolchain})",
        m.build.packager, m.build.target, m.build.profile
    )?;
    writeln!(
        out,
        "language:    {}",
        language_of(ark).unwrap_or_else(|| "unknown".to_owned())
    )?;
    if ark.component.len() > super::package::LARGE_COMPONENT {
        writeln!(
            out,
            "warning:     a {} MiB component: each node compiles it once when it is \
             installed (seconds for a language runtime inside a component), then loads it \
             from its compiled cache",
            ark.component.len() >> 20
        )?;
    }
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

/// A pipeline's name and shape, for listing (it was validated when read).
fn pipeline_summary(path: &str, text: &str) -> (String, usize, usize) {
    match arkline::model::parse_pipeline(path, text) {
        Ok(p) => (
            p.metadata.name,
            p.spec.stages.len(),
            p.spec.all_steps().count(),
        ),
        Err(_) => ("?".to_owned(), 0, 0),
    }
}

fn requested(caps: &Capabilities) -> String {
    let mut parts = Vec::new();
    if !caps.process.is_empty() {
        parts.push(format!("process={}", caps.process.join(",")));
    }
    if !caps.http.is_empty() {
        parts.push(format!("http={}", caps.http.join(",")));
    }
    if caps.cache {
        parts.push("cache".to_owned());
    }
    if !caps.host_call.is_empty() {
        parts.push(format!("host-call={}", caps.host_call.join(",")));
    }
    if parts.is_empty() {
        "nothing (log only)".to_owned()
    } else {
        parts.join(" ")
    }
}

/// `key=value` for every set leaf of the settings, dotted paths for nested ones.
fn flatten_settings(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_settings(&key, v, out);
            }
        }
        serde_json::Value::Null => {}
        serde_json::Value::String(s) => out.push(format!("{prefix}={s}")),
        other => out.push(format!("{prefix}={other}")),
    }
}

fn container_json(arkc: &ContainerArchive) -> serde_json::Value {
    let m = &arkc.manifest;
    let biz_json = |name: &str, version: &semver::Version| {
        let ark = arkc.biz(name, version);
        json!({
            "requests": ark.map(|a| &a.manifest.capabilities),
            "steps": ark.map(|a| a.manifest.steps.iter().map(|s| s.id.clone()).collect::<Vec<_>>()),
        })
    };
    json!({
        "name": m.name,
        "version": m.version.to_string(),
        "format_version": m.format_version,
        "sha256": arkc.sha256,
        "engines": m.engines.iter().map(|e| json!({
            "name": e.name,
            "settings": e.settings,
            "require_signed": e.require_signed || e.settings.require_signed_bizes,
            "trusted_keys": e.trusted_keys,
            "bizes": arkc.engine_bizes(&e.name).iter().map(|b| {
                let mut v = biz_json(&b.name, &b.version);
                v["name"] = json!(b.name);
                v["version"] = json!(b.version.to_string());
                v["grants"] = json!(b.grants);
                v["active"] = json!(b.active);
                v["shared"] = json!(b.shared);
                v["signature"] = json!(b.signature.to_string());
                v
            }).collect::<Vec<_>>(),
            "pipelines": e.pipelines.iter().map(|p| {
                let text = arkc.pipelines.get(&(e.name.clone(), p.path.clone()));
                let (name, stages, steps) = text.map(|t| pipeline_summary(&p.path, t)).unwrap_or_default();
                json!({ "name": name, "path": p.path, "stages": stages, "steps": steps, "sha256": p.sha256, "size": p.size })
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "shared_bizes": m.shared_bizes.iter().map(|s| json!({
            "name": s.name, "version": s.version.to_string(), "active": s.active,
        })).collect::<Vec<_>>(),
        "files": m.files,
    })
}

fn write_container_text(out: &mut impl Write, arkc: &ContainerArchive) -> anyhow::Result<()> {
    let bold = anstyle::Style::new().bold();
    let m = &arkc.manifest;
    writeln!(
        out,
        "{bold}{} {}{bold:#}  container, format {}",
        m.name, m.version, m.format_version
    )?;
    writeln!(out, "sha256:      {}", arkc.sha256)?;
    for engine in &m.engines {
        writeln!(out, "\n{bold}engine {}{bold:#}", engine.name)?;
        let mut settings = Vec::new();
        flatten_settings("", &serde_json::to_value(&engine.settings)?, &mut settings);
        writeln!(out, "  settings:    {}", settings.join(" "))?;
        let required = engine.require_signed || engine.settings.require_signed_bizes;
        let keys = if engine.trusted_keys.is_empty() {
            "any key".to_owned()
        } else {
            let ids: Vec<String> = engine
                .trusted_keys
                .iter()
                .map(|k| k.get(..16).unwrap_or(k).to_owned())
                .collect();
            format!("trusted keys {}", ids.join(", "))
        };
        writeln!(
            out,
            "  signatures:  {}, {keys}",
            if required { "required" } else { "optional" }
        )?;
        writeln!(out, "  bizes:")?;
        for b in arkc.engine_bizes(&engine.name) {
            let grants = if b.grants.is_empty() {
                "nothing granted".to_owned()
            } else {
                format!("grants {}", b.grants.join(" "))
            };
            let requests = arkc
                .biz(&b.name, &b.version)
                .map(|a| requested(&a.manifest.capabilities))
                .unwrap_or_default();
            writeln!(
                out,
                "    {:<24} {:<8} {}{}; requests {requests}; {}",
                format!("{} {}", b.name, b.version),
                if b.active { "active" } else { "inactive" },
                if b.shared { "shared, " } else { "" },
                grants,
                b.signature
            )?;
        }
        writeln!(out, "  pipelines:")?;
        if engine.pipelines.is_empty() {
            writeln!(out, "    none")?;
        }
        for p in &engine.pipelines {
            let text = arkc.pipelines.get(&(engine.name.clone(), p.path.clone()));
            let (name, stages, steps) = text
                .map(|t| pipeline_summary(&p.path, t))
                .unwrap_or_default();
            writeln!(
                out,
                "    {name:<24} {} ({stages} stage{}, {steps} step{})",
                p.path,
                if stages == 1 { "" } else { "s" },
                if steps == 1 { "" } else { "s" }
            )?;
        }
    }
    writeln!(out, "\n{bold}shared bizes{bold:#}")?;
    if m.shared_bizes.is_empty() {
        writeln!(out, "  none")?;
    }
    for s in &m.shared_bizes {
        writeln!(
            out,
            "  {} {}{}",
            s.name,
            s.version,
            if s.active { "" } else { " (inactive)" }
        )?;
    }
    writeln!(out, "\n{bold}entries{bold:#}")?;
    let pinned = m
        .files
        .iter()
        .chain(m.engines.iter().flat_map(|e| e.pipelines.iter()));
    for f in pinned {
        writeln!(out, "  {:<44} {:>10}  {}", f.path, f.size, f.sha256)?;
    }
    Ok(())
}
