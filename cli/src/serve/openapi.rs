//! The OpenAPI 3.1 document of the admin API, built from the same route table
//! that builds the router (see [`super::api::operations`]), so the two cannot
//! drift apart.

use std::collections::BTreeMap;

use axum::http::Method;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Value, json};

use super::auth::Access;

/// Makes the schema of one body type, registering what it refers to.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T` (a `$ref` into `components/schemas` for named types).
pub fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// What a request carries.
#[derive(Clone, Copy)]
pub enum Payload {
    /// No body.
    None,
    /// A JSON body of this schema.
    Json(SchemaFn),
    /// A pipeline YAML file.
    Yaml,
    /// Archive bytes of this media type.
    Binary(&'static str),
}

/// What a success looks like.
#[derive(Clone, Copy)]
pub enum Reply {
    /// This status with a JSON body of this schema.
    Json(u16, SchemaFn),
    /// This status without a body.
    Empty(u16),
    /// A JSON array of log lines, or a `text/event-stream` of them.
    LogLines(SchemaFn),
    /// This status with a text body of this media type.
    Text(u16, &'static str),
}

/// One query parameter.
#[derive(Clone, Copy)]
pub struct QueryParam {
    /// Name.
    pub name: &'static str,
    /// JSON type: `string`, `boolean` or `integer`.
    pub ty: &'static str,
    /// Whether it may be repeated.
    pub repeated: bool,
    /// What it does.
    pub description: &'static str,
}

/// One operation of the API: its route, what it needs and what it answers.
#[derive(Clone)]
pub struct Operation {
    /// HTTP method.
    pub method: Method,
    /// Path in axum's syntax (`/api/v1/engines/{engine}`), also OpenAPI's.
    pub path: &'static str,
    /// `operationId`.
    pub id: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Grouping tag.
    pub tag: &'static str,
    /// The token access needed; `None` when unauthenticated.
    pub access: Option<Access>,
    /// Query parameters.
    pub query: &'static [QueryParam],
    /// Request body.
    pub request: Payload,
    /// Success response.
    pub reply: Reply,
}

/// Error responses an operation may give, by status.
fn errors(op: &Operation) -> Vec<(u16, &'static str)> {
    let mut out = Vec::new();
    if op.access.is_some() {
        out.push((401, "No token, or an unknown one (`unauthorized`)."));
        out.push((
            403,
            "The token is not scoped to the engine, or is read-only (`forbidden`).",
        ));
        out.push((
            503,
            "The server is starting or shutting down (`not_ready`).",
        ));
    }
    if op.path.contains('{') || matches!(op.request, Payload::Binary(_)) {
        out.push((404, "No such engine or object (`not_found`)."));
    }
    if op.path.ends_with("/logs") {
        out.push((
            502,
            "The step runs on another node, which does not answer (`peer_unavailable`).",
        ));
    }
    if !matches!(op.request, Payload::None) {
        out.push((400, "Malformed request (`bad_request`)."));
        out.push((
            408,
            "The body did not arrive within `--body-timeout` (`request_timeout`).",
        ));
        out.push((
            413,
            "The body is larger than the server's limit (`payload_too_large`).",
        ));
    }
    match op.request {
        Payload::Yaml => out.push((422, "The pipeline does not validate (`invalid_pipeline`).")),
        Payload::Binary(_) => out.push((422, "The archive is refused (`invalid_archive`).")),
        _ => {}
    }
    if op.access == Some(Access::Write) {
        out.push((
            409,
            "The change conflicts with the current state (`conflict`).",
        ));
    }
    out.sort_unstable();
    out.dedup_by_key(|(s, _)| *s);
    out
}

/// The OpenAPI 3.1 document for `ops`.
pub fn document(ops: &[Operation]) -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let error_schema = schema::<super::error::ErrorBody>(&mut generator);
    let mut paths: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    for op in ops {
        let mut parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        for q in op.query {
            let schema = if q.repeated {
                json!({"type": "array", "items": {"type": q.ty}})
            } else {
                json!({"type": q.ty})
            };
            let mut p = json!({"name": q.name, "in": "query", "required": false, "description": q.description, "schema": schema});
            if q.repeated {
                p["explode"] = json!(true);
            }
            parameters.push(p);
        }
        let mut operation = json!({
            "operationId": op.id,
            "summary": op.summary,
            "tags": [op.tag],
        });
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        match op.access {
            Some(access) => {
                operation["security"] = json!([{"bearer": []}]);
                operation["x-arkline-access"] = json!(match access {
                    Access::Read => "read",
                    Access::Write => "write",
                });
            }
            None => operation["security"] = json!([]),
        }
        match op.request {
            Payload::None => {}
            Payload::Json(schema_fn) => {
                operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema_fn(&mut generator)}}});
            }
            Payload::Yaml => {
                operation["requestBody"] = json!({"required": true, "content": {"application/yaml": {"schema": {"type": "string"}}}});
            }
            Payload::Binary(media) => {
                operation["requestBody"] = json!({"required": true, "content": {media: {"schema": {"type": "string", "contentMediaType": media}}}});
            }
        }
        let mut responses = serde_json::Map::new();
        match op.reply {
            Reply::Json(status, schema_fn) => {
                responses.insert(
                    status.to_string(),
                    json!({"description": "Success.", "content": {"application/json": {"schema": schema_fn(&mut generator)}}}),
                );
            }
            Reply::Empty(status) => {
                responses.insert(status.to_string(), json!({"description": "Success."}));
            }
            Reply::Text(status, media) => {
                responses.insert(
                    status.to_string(),
                    json!({"description": "Success.", "content": {media: {"schema": {"type": "string"}}}}),
                );
            }
            Reply::LogLines(schema_fn) => {
                let line = schema_fn(&mut generator);
                responses.insert(
                    "200".into(),
                    json!({
                        "description": "The lines so far as a JSON array; with `follow=true` or `Accept: text/event-stream`, a server-sent event stream: one `line` event per line (data: the line as JSON, id: its seq), then one `end` event (data: {\"phase\": <the step's final phase>}) when the step has finished; with `format=text`, the messages as plain text, one per line, as an attachment `<execution>-<step>.log`.",
                        "content": {
                            "application/json": {"schema": {"type": "array", "items": line}},
                            "text/event-stream": {"schema": {"type": "string"}},
                            "text/plain": {"schema": {"type": "string"}}
                        }
                    }),
                );
            }
        }
        for (status, description) in errors(op) {
            responses.insert(
                status.to_string(),
                json!({"description": description, "content": {"application/json": {"schema": error_schema.clone()}}}),
            );
        }
        operation["responses"] = Value::Object(responses);
        paths
            .entry(op.path)
            .or_default()
            .insert(op.method.as_str().to_ascii_lowercase(), operation);
    }
    let schemas = generator.take_definitions(true);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "arkline admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Engines, bizes, pipelines, executions, logs and secrets of one `arkline serve`. Every error is JSON `{code, message}`; `code` is stable.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token of the server's tokens file, scoped to engines and to read or write."}},
        },
    })
}
