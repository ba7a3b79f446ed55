//! The YAML front end: a positioned YAML tree decoded into the typed spec,
//! collecting every structural error instead of stopping at the first.
//!
//! serde's derived deserializers stop at the first error and lose positions, so
//! this decoder is written by hand against the same field names; the round-trip
//! tests (serde → YAML → this decoder) keep the two in step.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::diagnostic::{Collector, Diagnostic, Severity, Span, did_you_mean};
use crate::model::limits::Limits;
use crate::model::meta::{API_VERSION, ObjectMeta, check_object_name};
use crate::model::pipeline::{
    ApprovalSpec, CacheSpec, Concurrency, DurationSpec, Filter, MATRIX_KEYS, Matrix, ParamSpec,
    ParamType, PipelineCall, PipelineSpec, Retry, SourceSpec, Stage, Step, Trigger, Uses,
    UsesError, When,
};
use crate::model::position::SourceIndex;
use crate::model::resources::Pipeline;
use crate::model::yaml::{self, Loaded, Node, NodeKind};

/// Where each decoded value came from, keyed by its path in the spec
/// (`stages[0].steps[1].with.image`), so checks that run on the typed spec can
/// still point at the source.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    /// File name as given to the parser.
    pub file: String,
    /// The file's text.
    pub source: String,
    spans: BTreeMap<String, Loc>,
    /// Lines and characters of `source`, for positions inside scalars.
    index: Arc<SourceIndex>,
}

#[derive(Debug, Clone, Copy)]
struct Loc {
    span: Span,
    /// Offset of the scalar's value inside its span when it is verbatim.
    inner: Option<usize>,
}

impl SourceMap {
    /// A map for a spec that did not come from a file: diagnostics get no span.
    pub fn detached(name: &str) -> Self {
        Self {
            file: name.to_owned(),
            ..Self::default()
        }
    }

    /// The span of the value at `path`.
    pub fn span(&self, path: &str) -> Option<Span> {
        self.spans.get(path).map(|l| l.span)
    }

    /// The span of `range` (byte offsets in the scalar's value) inside the value
    /// at `path`; the whole value when the value is not verbatim source text.
    pub fn span_in(&self, path: &str, range: std::ops::Range<usize>) -> Option<Span> {
        let loc = self.spans.get(path)?;
        let Some(inner) = loc.inner else {
            return Some(loc.span);
        };
        // What `Span::narrow` does, with the column from the index: counting
        // characters from the scalar's start for each reference would make a
        // scalar with many references quadratic.
        let span = loc.span;
        let mut start = (span.start + inner + range.start).min(span.end);
        while !self.source.is_char_boundary(start) {
            start -= 1;
        }
        let end = (start + range.len()).min(span.end).max(start);
        let chars = self.index.chars_before(&self.source, start)
            - self.index.chars_before(&self.source, span.start);
        Some(Span {
            start,
            end,
            line: span.line,
            column: span.column + chars,
        })
    }

    /// A diagnostic located at `span`.
    pub fn locate(&self, d: Diagnostic, span: Option<Span>) -> Diagnostic {
        d.at(&self.file, &self.source, span)
    }
}

/// Suffix of the source-map path under which a mapping key's own span is kept
/// (for "unknown setting" errors, which point at the key, not its value).
pub const KEY_SUFFIX: &str = "#key";

/// Spec field names, shared by the bare and the resource forms.
const SPEC_FIELDS: [&str; 11] = [
    "description",
    "concurrency",
    "params",
    "secrets",
    "source",
    "triggers",
    "env",
    "timeout",
    "fail_fast",
    "stages",
    "finally",
];
const STEP_FIELDS: [&str; 15] = [
    "name",
    "uses",
    "approval",
    "pipeline",
    "with",
    "env",
    "when",
    "if",
    "timeout",
    "retries",
    "cache",
    "repeat_on_restart",
    "continue_on_error",
    "needs",
    "matrix",
];

struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node)>,
    span: Span,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) struct Decoder<'s> {
    pub(crate) map: SourceMap,
    pub(crate) diags: Collector,
    source: &'s str,
    limits: Limits,
}

impl<'s> Decoder<'s> {
    fn new(file: &str, source: &'s str, limits: &Limits) -> Self {
        Self {
            map: SourceMap {
                file: file.to_owned(),
                source: String::new(),
                spans: BTreeMap::new(),
                index: Arc::default(),
            },
            diags: Collector::new(limits.max_diagnostics),
            source,
            limits: *limits,
        }
    }

    fn err(&mut self, code: &str, message: impl Into<String>, span: Span, hint: Option<String>) {
        if self.diags.full() {
            return self.diags.count(Severity::Error);
        }
        let mut d = Diagnostic::error(code, message).at(&self.map.file, self.source, Some(span));
        d.hint = hint;
        self.diags.push(d);
    }

    fn warn(&mut self, code: &str, message: impl Into<String>, span: Span, hint: &str) {
        if self.diags.full() {
            return self.diags.count(Severity::Warning);
        }
        let mut d = Diagnostic::error(code, message).at(&self.map.file, self.source, Some(span));
        d.severity = Severity::Warning;
        d.hint = Some(hint.to_owned());
        self.diags.push(d);
    }

    /// A name of a stage, step, param or secret: a string of at most
    /// `max_name_len` bytes.
    fn name(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        let name = self.string(node, path, what)?;
        if name.len() > self.limits.max_name_len {
            self.err(
                "limit-exceeded",
                format!(
                    "{what} is {} bytes long, more than the limit of {} (`max_name_len`)",
                    name.len(),
                    self.limits.max_name_len
                ),
                node.span,
                Some("use a shorter name".into()),
            );
            return None;
        }
        Some(name)
    }

    /// The pipeline's `name` or `engine`: the store's rule for object names, so
    /// every entrance refuses what the API refuses.
    fn object_name(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        let name = self.string(node, path, what)?;
        // An empty engine means "the one it is applied to", as in the store.
        let empty_engine = name.is_empty() && path.ends_with("engine");
        match check_object_name(&name) {
            Ok(()) => Some(name),
            Err(_) if empty_engine => Some(name),
            Err(e) => {
                let shown = if name.len() > 64 {
                    format!("{what} ({} bytes)", name.len())
                } else {
                    format!("{what} {name:?}")
                };
                self.err(
                    "invalid-name",
                    format!("{shown} {e}"),
                    node.span,
                    Some(format!(
                        "use 1 to {} bytes without `/` or control characters, e.g. `build-and-deploy`",
                        crate::model::meta::MAX_NAME_LEN
                    )),
                );
                None
            }
        }
    }

    /// Warns about keys a file may carry (it was copied from the API: `GET /api/v1/engines/{engine}/pipelines/{name}`)
    /// but that only the store or controllers set, so they are ignored.
    fn ignored_keys(&mut self, node: &Node, keys: &[&str]) {
        if let NodeKind::Map(entries) = &node.kind {
            for (k, _) in entries {
                if let Some(key) = k.scalar_text()
                    && keys.contains(&key)
                {
                    self.warn(
                        "ignored-field",
                        format!("`{key}` is ignored in a pipeline file"),
                        k.span,
                        "it is set by the store or by controllers; remove it",
                    );
                }
            }
        }
    }

    fn mark(&mut self, path: &str, node: &Node) {
        let inner = node.verbatim_offset(self.source);
        self.map.spans.insert(
            path.to_owned(),
            Loc {
                span: node.span,
                inner,
            },
        );
    }

    fn type_error(&mut self, node: &Node, what: &str, expected: &str) {
        let found = node.type_name();
        let hint = match expected {
            "a mapping" => "write `key: value` lines indented under it".to_owned(),
            "a list" => "start each item on its own line with `- `, or write `[a, b]`".to_owned(),
            "a string" => {
                "write a single value; quote it if it contains `:` or starts with a symbol"
                    .to_owned()
            }
            other => format!("write {other}"),
        };
        self.err(
            "wrong-type",
            format!("{what} must be {expected}, found {found}"),
            node.span,
            Some(hint),
        );
    }

    /// Checks a mapping: keys are scalars, known and not repeated.
    fn fields<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
        known: &[&str],
    ) -> Option<Fields<'n>> {
        self.mark(path, node);
        let NodeKind::Map(entries) = &node.kind else {
            self.type_error(node, what, "a mapping");
            return None;
        };
        let mut out: Vec<(&'n str, &'n Node)> = Vec::new();
        for (k, v) in entries {
            let Some(key) = k.scalar_text() else {
                self.type_error(k, &format!("a key of {what}"), "a string");
                continue;
            };
            if !known.contains(&key) {
                if self.diags.full() {
                    self.diags.count(Severity::Error);
                    continue;
                }
                let hint = match did_you_mean(key, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("{what} fields are: {}", known.join(", ")),
                };
                self.err(
                    "unknown-field",
                    format!("unknown field `{key}` in {what}"),
                    k.span,
                    Some(hint),
                );
                continue;
            }
            if out.iter().any(|(seen, _)| *seen == key) {
                self.err(
                    "duplicate-key",
                    format!("`{key}` is set twice in {what}"),
                    k.span,
                    Some("remove one of them; YAML would silently keep only the last".into()),
                );
                continue;
            }
            out.push((key, v));
        }
        Some(Fields {
            entries: out,
            span: node.span,
        })
    }

    fn required<'n>(&mut self, f: &Fields<'n>, key: &str, what: &str) -> Option<&'n Node> {
        let node = f.get(key);
        if node.is_none() {
            self.err(
                "missing-field",
                format!("{what} is missing `{key}`"),
                f.span,
                Some(format!("add `{key}:`")),
            );
        }
        node
    }

    fn string(&mut self, node: &Node, path: &str, what: &str) -> Option<String> {
        self.mark(path, node);
        match &node.kind {
            NodeKind::Scalar { value, .. } if !node.is_null() => Some(value.clone()),
            _ => {
                self.type_error(node, what, "a string");
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, path: &str, what: &str) -> Option<bool> {
        self.mark(path, node);
        match node.to_json() {
            serde_json::Value::Bool(b)
                if !matches!(node.kind, NodeKind::Scalar { quoted: true, .. }) =>
            {
                Some(b)
            }
            _ => {
                self.type_error(node, what, "`true` or `false`");
                None
            }
        }
    }

    fn count(&mut self, node: &Node, path: &str, what: &str) -> Option<u32> {
        self.mark(path, node);
        let n = match (&node.kind, node.to_json()) {
            (NodeKind::Scalar { quoted: false, .. }, serde_json::Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        let n = n.and_then(|n| u32::try_from(n).ok());
        if n.is_none() {
            self.type_error(node, what, "a whole number ≥ 0");
        }
        n
    }

    fn duration(&mut self, node: &Node, path: &str, what: &str) -> Option<DurationSpec> {
        let text = self.string(node, path, what)?;
        match text.parse::<DurationSpec>() {
            Ok(d) if d.0.is_zero() => {
                self.err(
                    "bad-duration",
                    format!("{what} must be longer than zero"),
                    node.span,
                    Some("remove it for no limit".into()),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    "bad-duration",
                    format!("`{text}` is not a duration: {e}"),
                    node.span,
                    Some("write durations like `90s`, `10m` or `1h 30m`".into()),
                );
                None
            }
        }
    }

    fn seq<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Vec<(String, &'n Node)> {
        self.mark(path, node);
        match &node.kind {
            NodeKind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{path}[{i}]"), n))
                .collect(),
            _ if node.is_null() => Vec::new(),
            _ => {
                self.type_error(node, what, "a list");
                Vec::new()
            }
        }
    }

    /// Decodes the items of the list at `path` with `decode`, dropping those
    /// that fail (their errors are recorded). The items after a dropped one
    /// move up, and checks on the typed spec name the k-th kept item
    /// `path[k]`: its source positions are copied under that path, so those
    /// checks still point at it.
    fn items<T>(
        &mut self,
        path: &str,
        items: Vec<(String, &Node)>,
        mut decode: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(items.len());
        let mut moved = Vec::new();
        for (i, (p, n)) in items.into_iter().enumerate() {
            if let Some(value) = decode(self, n, &p) {
                if out.len() != i {
                    moved.push((i, out.len()));
                }
                out.push(value);
            }
        }
        // In ascending order: an item's new place held a dropped or an
        // already moved item.
        for (from, to) in moved {
            let src = format!("{path}[{from}]");
            let dst = format!("{path}[{to}]");
            let copies: Vec<(String, Loc)> = self
                .map
                .spans
                .range(src.clone()..)
                .take_while(|(k, _)| k.starts_with(&src))
                .filter(|(k, _)| {
                    matches!(k.as_bytes().get(src.len()), None | Some(b'.' | b'[' | b'#'))
                })
                .map(|(k, loc)| (format!("{dst}{}", &k[src.len()..]), *loc))
                .collect();
            self.map.spans.extend(copies);
        }
        out
    }

    fn string_list(&mut self, node: &Node, path: &str, what: &str) -> Vec<String> {
        let items = self.seq(node, path, what);
        self.items(path, items, |d, n, p| {
            d.string(n, p, &format!("an item of {what}"))
        })
    }

    fn string_map(&mut self, node: &Node, path: &str, what: &str) -> BTreeMap<String, String> {
        self.mark(path, node);
        let mut out = BTreeMap::new();
        let NodeKind::Map(entries) = &node.kind else {
            if !node.is_null() {
                self.type_error(node, what, "a mapping");
            }
            return out;
        };
        for (k, v) in entries {
            let Some(key) = k.scalar_text() else {
                self.type_error(k, &format!("a key of {what}"), "a string");
                continue;
            };
            if out.contains_key(key) {
                self.err(
                    "duplicate-key",
                    format!("`{key}` is set twice in {what}"),
                    k.span,
                    None,
                );
                continue;
            }
            if let Some(value) = self.string(v, &join(path, key), &format!("`{key}` in {what}")) {
                out.insert(key.to_owned(), value);
            }
        }
        out
    }

    /// Any value, recording the position of every nested value.
    fn json(&mut self, node: &Node, path: &str) -> serde_json::Value {
        self.mark(path, node);
        match &node.kind {
            NodeKind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| self.json(n, &format!("{path}[{i}]")))
                .collect(),
            NodeKind::Map(entries) => {
                let mut out = serde_json::Map::new();
                for (k, v) in entries {
                    let key = k.scalar_text().unwrap_or_default().to_owned();
                    if out.contains_key(&key) {
                        self.err(
                            "duplicate-key",
                            format!("`{key}` is set twice"),
                            k.span,
                            None,
                        );
                        continue;
                    }
                    let child = join(path, &key);
                    self.mark(&format!("{child}{KEY_SUFFIX}"), k);
                    let value = self.json(v, &child);
                    out.insert(key, value);
                }
                out.into()
            }
            NodeKind::Scalar { .. } => node.to_json(),
        }
    }

    fn filter(&mut self, node: &Node, path: &str, what: &str) -> Filter {
        match &node.kind {
            // `branch: main` and `branch: [main, dev]` are shorthands for `include`.
            NodeKind::Scalar { .. } => Filter {
                include: self
                    .string(node, &format!("{path}.include[0]"), what)
                    .into_iter()
                    .collect(),
                exclude: Vec::new(),
            },
            NodeKind::Seq(_) => Filter {
                include: self.string_list(node, &join(path, "include"), what),
                exclude: Vec::new(),
            },
            NodeKind::Map(_) => {
                let Some(f) = self.fields(node, path, what, &["include", "exclude"]) else {
                    return Filter::default();
                };
                Filter {
                    include: f
                        .get("include")
                        .map(|n| self.string_list(n, &join(path, "include"), what))
                        .unwrap_or_default(),
                    exclude: f
                        .get("exclude")
                        .map(|n| self.string_list(n, &join(path, "exclude"), what))
                        .unwrap_or_default(),
                }
            }
        }
    }

    /// A step's or stage's `when`, with `if:` (short for `when: {if: …}`,
    /// GitHub's form) folded into it. Its expression is positioned as
    /// `<path>.when.if`, where checks of the typed spec look for it. Both
    /// forms at once are an error.
    fn condition(&mut self, f: &Fields<'_>, path: &str, what: &str) -> Option<When> {
        let mut when = f
            .get("when")
            .and_then(|n| self.when(n, &join(path, "when")));
        if let Some(n) = f.get("if") {
            if when.as_ref().is_some_and(|w| w.if_expr.is_some()) {
                self.err(
                    "duplicate-condition",
                    format!("this {what}'s condition is given twice, as `if` and as `when.if`"),
                    n.span,
                    Some("keep one: `if: …` is short for `when: { if: … }`".into()),
                );
            } else if let Some(text) = self.string(n, &join(path, "when.if"), "`if`") {
                when.get_or_insert_with(When::default).if_expr = Some(text);
            }
        }
        when
    }

    fn when(&mut self, node: &Node, path: &str) -> Option<When> {
        let f = self.fields(node, path, "`when`", &["branch", "event", "if"])?;
        Some(When {
            branch: f
                .get("branch")
                .map(|n| self.filter(n, &join(path, "branch"), "`when.branch`"))
                .unwrap_or_default(),
            event: f
                .get("event")
                .map(|n| self.filter(n, &join(path, "event"), "`when.event`"))
                .unwrap_or_default(),
            if_expr: f
                .get("if")
                .and_then(|n| self.string(n, &join(path, "if"), "`when.if`")),
        })
    }

    fn retry(&mut self, node: &Node, path: &str) -> Option<Retry> {
        if let NodeKind::Scalar { .. } = node.kind {
            // `retries: 3` is shorthand for `retries: {count: 3}`.
            let count = self.count(node, &join(path, "count"), "`retries`")?;
            self.mark(path, node);
            return Some(Retry {
                count,
                backoff: None,
            });
        }
        let f = self.fields(node, path, "`retries`", &["count", "backoff"])?;
        let count = self.required(&f, "count", "`retries`");
        let count = count.and_then(|n| self.count(n, &join(path, "count"), "`retries.count`"));
        let backoff = f
            .get("backoff")
            .and_then(|n| self.duration(n, &join(path, "backoff"), "`retries.backoff`"));
        Some(Retry {
            count: count?,
            backoff,
        })
    }

    fn cache(&mut self, node: &Node, path: &str) -> Option<CacheSpec> {
        let f = self.fields(node, path, "`cache`", &["key", "paths"])?;
        let key = self.required(&f, "key", "`cache`");
        let key = key.and_then(|n| self.string(n, &join(path, "key"), "`cache.key`"));
        let paths = self.required(&f, "paths", "`cache`");
        let paths = paths.map(|n| self.string_list(n, &join(path, "paths"), "`cache.paths`"));
        Some(CacheSpec {
            key: key?,
            paths: paths?,
        })
    }

    fn uses(&mut self, node: &Node, path: &str) -> Option<Uses> {
        let text = self.string(node, path, "`uses`")?;
        match text.parse::<Uses>() {
            Ok(u) => Some(u),
            Err(UsesError::BadReq { req, reason }) => {
                // Point at the requirement, not the whole `uses`.
                let offset = text.find('@').map_or(0, |i| i + 1);
                let span = self.map.span_in(path, offset..text.len());
                self.err(
                    "bad-semver",
                    format!("`{req}` is not a semver requirement: {reason}"),
                    span.unwrap_or(node.span),
                    Some(
                        "write requirements like `1`, `^1.2`, `~1.4.0`, `>=1.2, <2` or `=1.4.2`"
                            .into(),
                    ),
                );
                None
            }
            Err(e @ UsesError::BadName(_)) => {
                self.err(
                    "bad-uses",
                    e.to_string(),
                    node.span,
                    Some("write `biz`, `biz@req` or `biz/step@req`".into()),
                );
                None
            }
        }
    }

    fn step(&mut self, node: &Node, path: &str) -> Option<Step> {
        let f = self.fields(node, path, "a step", &STEP_FIELDS)?;
        let name = self.required(&f, "name", "a step");
        let name = name.and_then(|n| self.name(n, &join(path, "name"), "a step name"));
        let what = name
            .as_deref()
            .map_or_else(|| "this step".to_owned(), |n| format!("step `{n}`"));
        // Exactly one of `uses`, `approval` and `pipeline` says what it does.
        let kinds: Vec<&str> = ["uses", "approval", "pipeline"]
            .into_iter()
            .filter(|k| f.get(k).is_some())
            .collect();
        match kinds.as_slice() {
            [] => self.err(
                "missing-field",
                format!("{what} has no `uses`"),
                f.span,
                Some("name the biz step it calls with `uses: biz/step`, or make it an `approval` gate or a `pipeline` call".into()),
            ),
            [_] => {}
            [_, second, ..] => {
                let node = f.get(second).map_or(f.span, |n| n.span);
                self.err(
                    "step-kind",
                    format!("{what} has both `{}` and `{second}`", kinds[0]),
                    node,
                    Some("a step calls a biz (`uses`), waits for an `approval`, or calls a `pipeline`: keep one".into()),
                );
            }
        }
        let uses_given = f.get("uses").is_some();
        let uses = f
            .get("uses")
            .and_then(|n| self.uses(n, &join(path, "uses")));
        let approval = f
            .get("approval")
            .and_then(|n| self.approval(n, &join(path, "approval")));
        let pipeline = f
            .get("pipeline")
            .and_then(|n| self.pipeline_call(n, &join(path, "pipeline")));
        let with = match f.get("with") {
            Some(n) => match self.json(n, &join(path, "with")) {
                serde_json::Value::Object(m) => m.into_iter().collect(),
                serde_json::Value::Null => BTreeMap::new(),
                _ => {
                    self.type_error(n, "`with`", "a mapping");
                    BTreeMap::new()
                }
            },
            None => BTreeMap::new(),
        };
        let env = f
            .get("env")
            .map(|n| self.string_map(n, &join(path, "env"), "`env`"))
            .unwrap_or_default();
        let when = self.condition(&f, path, "step");
        let timeout = f
            .get("timeout")
            .and_then(|n| self.duration(n, &join(path, "timeout"), "a step `timeout`"));
        let retries = f
            .get("retries")
            .and_then(|n| self.retry(n, &join(path, "retries")));
        let cache = f
            .get("cache")
            .and_then(|n| self.cache(n, &join(path, "cache")));
        let repeat_on_restart = f
            .get("repeat_on_restart")
            .and_then(|n| self.bool(n, &join(path, "repeat_on_restart"), "`repeat_on_restart`"))
            .unwrap_or(true);
        let continue_on_error = f
            .get("continue_on_error")
            .and_then(|n| self.bool(n, &join(path, "continue_on_error"), "`continue_on_error`"))
            .unwrap_or(false);
        // `needs: a` is shorthand for `needs: [a]`.
        let needs = match f.get("needs") {
            Some(n) if matches!(n.kind, NodeKind::Scalar { .. }) && !n.is_null() => {
                self.mark(&join(path, "needs"), n);
                self.string(n, &join(path, "needs[0]"), "`needs`")
                    .into_iter()
                    .collect()
            }
            Some(n) => self.string_list(n, &join(path, "needs"), "`needs`"),
            None => Vec::new(),
        };
        let matrix = f
            .get("matrix")
            .and_then(|n| self.matrix(n, &join(path, "matrix")));
        // A step whose `uses` is broken is kept (with the error reported) so that
        // references to it from later steps do not cause follow-on errors.
        let uses = uses.or_else(|| {
            (uses_given || kinds.is_empty()).then(|| Uses {
                biz: String::new(),
                step: None,
                req: None,
            })
        });
        Some(Step {
            name: name.unwrap_or_default(),
            uses,
            with,
            env,
            when,
            timeout,
            retries,
            cache,
            repeat_on_restart,
            continue_on_error,
            needs,
            matrix,
            approval,
            pipeline,
        })
    }

    fn approval(&mut self, node: &Node, path: &str) -> Option<ApprovalSpec> {
        let f = self.fields(
            node,
            path,
            "`approval`",
            &["message", "approvers", "timeout"],
        )?;
        let message = f
            .get("message")
            .and_then(|n| self.string(n, &join(path, "message"), "`approval.message`"))
            .unwrap_or_default();
        let approvers = match f.get("approvers") {
            Some(n) => self.string_list(n, &join(path, "approvers"), "`approval.approvers`"),
            None => Vec::new(),
        };
        if approvers.is_empty() {
            self.err(
                "approval-without-approvers",
                "an `approval` names no approvers",
                f.get("approvers").map_or(f.span, |n| n.span),
                Some("list who may decide: API token names, or `group:<name>`".into()),
            );
        }
        let timeout = f
            .get("timeout")
            .and_then(|n| self.duration(n, &join(path, "timeout"), "`approval.timeout`"));
        Some(ApprovalSpec {
            message,
            approvers,
            timeout,
        })
    }

    fn pipeline_call(&mut self, node: &Node, path: &str) -> Option<PipelineCall> {
        if let NodeKind::Scalar { .. } = node.kind {
            // `pipeline: name` is short for `pipeline: {name: name}`.
            let name = self.object_name(node, &join(path, "name"), "the called pipeline")?;
            self.mark(path, node);
            return Some(PipelineCall {
                name,
                params: BTreeMap::new(),
                wait: true,
            });
        }
        let f = self.fields(node, path, "`pipeline`", &["name", "params", "wait"])?;
        let name = self.required(&f, "name", "`pipeline`");
        let name =
            name.and_then(|n| self.object_name(n, &join(path, "name"), "the called pipeline"));
        let params = match f.get("params") {
            Some(n) => match self.json(n, &join(path, "params")) {
                serde_json::Value::Object(m) => m.into_iter().collect(),
                serde_json::Value::Null => BTreeMap::new(),
                _ => {
                    self.type_error(n, "`pipeline.params`", "a mapping");
                    BTreeMap::new()
                }
            },
            None => BTreeMap::new(),
        };
        let wait = f
            .get("wait")
            .and_then(|n| self.bool(n, &join(path, "wait"), "`pipeline.wait`"))
            .unwrap_or(true);
        Some(PipelineCall {
            name: name?,
            params,
            wait,
        })
    }

    /// A matrix value: a string, number or boolean.
    fn matrix_value(&mut self, node: &Node, path: &str, what: &str) -> Option<serde_json::Value> {
        let v = self.json(node, path);
        match v {
            serde_json::Value::String(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::Bool(_) => Some(v),
            _ => {
                self.type_error(node, what, "a string, number or boolean");
                None
            }
        }
    }

    /// An `include`/`exclude` entry: key → value.
    fn matrix_entry(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
    ) -> Option<BTreeMap<String, serde_json::Value>> {
        self.mark(path, node);
        let NodeKind::Map(entries) = &node.kind else {
            self.type_error(node, what, "a mapping");
            return None;
        };
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            let Some(key) = k.scalar_text() else {
                self.type_error(k, &format!("a key of {what}"), "a string");
                continue;
            };
            if let Some(value) =
                self.matrix_value(v, &join(path, key), &format!("`{key}` in {what}"))
            {
                out.insert(key.to_owned(), value);
            }
        }
        Some(out)
    }

    fn matrix(&mut self, node: &Node, path: &str) -> Option<Matrix> {
        self.mark(path, node);
        let NodeKind::Map(entries) = &node.kind else {
            self.type_error(node, "`matrix`", "a mapping");
            return None;
        };
        let mut m = Matrix {
            axes: BTreeMap::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            max_parallel: None,
            fail_fast: true,
        };
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in entries {
            let Some(key) = k.scalar_text() else {
                self.type_error(k, "a key of `matrix`", "a string");
                continue;
            };
            if seen.contains(&key) {
                self.err(
                    "duplicate-key",
                    format!("`{key}` is set twice in `matrix`"),
                    k.span,
                    None,
                );
                continue;
            }
            seen.push(key);
            let at = join(path, key);
            match key {
                "include" | "exclude" => {
                    let items = self.seq(v, &at, &format!("`matrix.{key}`"));
                    let list: Vec<_> = self.items(&at, items, |d, n, p| {
                        d.matrix_entry(n, p, &format!("an entry of `matrix.{key}`"))
                    });
                    if key == "include" {
                        m.include = list;
                    } else {
                        m.exclude = list;
                    }
                }
                "max_parallel" => {
                    m.max_parallel = self.count(v, &at, "`matrix.max_parallel`");
                    if m.max_parallel == Some(0) {
                        self.err(
                            "wrong-type",
                            "`matrix.max_parallel` must be at least 1",
                            v.span,
                            Some("leave it out to run every cell at once".into()),
                        );
                        m.max_parallel = None;
                    }
                }
                "fail_fast" => {
                    if let Some(b) = self.bool(v, &at, "`matrix.fail_fast`") {
                        m.fail_fast = b;
                    }
                }
                axis => {
                    debug_assert!(!MATRIX_KEYS.contains(&axis));
                    let items = self.seq(v, &at, &format!("matrix axis `{axis}`"));
                    if items.is_empty() && !v.is_null() && matches!(v.kind, NodeKind::Seq(_)) {
                        self.err(
                            "empty-matrix-axis",
                            format!("matrix axis `{axis}` has no values"),
                            v.span,
                            Some("give it at least one value, or remove it".into()),
                        );
                    }
                    let values: Vec<_> = self.items(&at, items, |d, n, p| {
                        d.matrix_value(n, p, &format!("a value of matrix axis `{axis}`"))
                    });
                    m.axes.insert(axis.to_owned(), values);
                }
            }
        }
        Some(m)
    }

    fn steps(&mut self, node: &Node, path: &str, what: &str) -> Vec<Step> {
        let items = self.seq(node, path, what);
        self.items(path, items, |d, n, p| d.step(n, p))
    }

    fn stage(&mut self, node: &Node, path: &str) -> Option<Stage> {
        let f = self.fields(
            node,
            path,
            "a stage",
            &[
                "name",
                "when",
                "if",
                "timeout",
                "steps",
                "continue_on_error",
            ],
        )?;
        let when = self.condition(&f, path, "stage");
        let name = self.required(&f, "name", "a stage");
        let name = name.and_then(|n| self.name(n, &join(path, "name"), "a stage name"));
        let what = name
            .as_deref()
            .map_or_else(|| "this stage".to_owned(), |n| format!("stage `{n}`"));
        let steps = self.required(&f, "steps", &what);
        let steps = steps
            .map(|n| self.steps(n, &join(path, "steps"), "`steps`"))
            .unwrap_or_default();
        Some(Stage {
            name: name.unwrap_or_default(),
            when,
            timeout: f
                .get("timeout")
                .and_then(|n| self.duration(n, &join(path, "timeout"), "a stage `timeout`")),
            steps,
            continue_on_error: f
                .get("continue_on_error")
                .and_then(|n| self.bool(n, &join(path, "continue_on_error"), "`continue_on_error`"))
                .unwrap_or(false),
        })
    }

    fn param(&mut self, node: &Node, path: &str) -> Option<ParamSpec> {
        let f = self.fields(
            node,
            path,
            "a param",
            &["name", "type", "default", "description"],
        )?;
        let name = self.required(&f, "name", "a param");
        let name = name.and_then(|n| self.name(n, &join(path, "name"), "a param name"));
        let kind = match f.get("type") {
            None => ParamType::String,
            Some(n) => {
                let text = self.string(n, &join(path, "type"), "a param `type`")?;
                match serde_json::from_value::<ParamType>(serde_json::Value::String(text.clone())) {
                    Ok(k) => k,
                    Err(_) => {
                        // Names from other schema languages, mapped to ours.
                        let alias = match text.as_str() {
                            "boolean" => Some("bool"),
                            "int" | "integer" | "float" => Some("number"),
                            "str" | "text" => Some("string"),
                            "list" => Some("array"),
                            _ => None,
                        };
                        let hint = match alias.or_else(|| did_you_mean(&text, ParamType::ALL)) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!("types are: {}", ParamType::ALL.join(", ")),
                        };
                        self.err(
                            "unknown-param-type",
                            format!("unknown param type `{text}`"),
                            n.span,
                            Some(hint),
                        );
                        return None;
                    }
                }
            }
        };
        let default = f
            .get("default")
            .map(|n| self.json(n, &join(path, "default")));
        let description = f
            .get("description")
            .and_then(|n| self.string(n, &join(path, "description"), "a description"))
            .unwrap_or_default();
        Some(ParamSpec {
            name: name?,
            kind,
            default,
            description,
        })
    }

    fn trigger(&mut self, node: &Node, path: &str) -> Option<Trigger> {
        const TYPES: [&str; 4] = ["manual", "cron", "webhook", "image_push"];
        let NodeKind::Map(entries) = &node.kind else {
            self.type_error(node, "a trigger", "a mapping");
            return None;
        };
        let type_node = entries
            .iter()
            .find(|(k, _)| k.scalar_text() == Some("type"))
            .map(|(_, v)| v);
        let Some(type_node) = type_node else {
            self.err(
                "missing-field",
                "a trigger is missing `type`",
                node.span,
                Some(
                    "add `type: manual`, `type: cron`, `type: webhook` or `type: image_push`"
                        .into(),
                ),
            );
            return None;
        };
        let kind = self.string(type_node, &join(path, "type"), "a trigger `type`")?;
        let known: &[&str] = match kind.as_str() {
            "manual" => &["type"],
            "cron" => &["type", "schedule", "branch"],
            "webhook" => &["type", "events", "branch", "secret"],
            "image_push" => &["type", "repository", "tags", "self"],
            other => {
                let hint = match did_you_mean(other, TYPES) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("trigger types are: {}", TYPES.join(", ")),
                };
                self.err(
                    "unknown-trigger",
                    format!("unknown trigger type `{other}`"),
                    type_node.span,
                    Some(hint),
                );
                return None;
            }
        };
        let what = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
            format!("an {kind} trigger")
        } else {
            format!("a {kind} trigger")
        };
        let f = self.fields(node, path, &what, known)?;
        match kind.as_str() {
            "manual" => Some(Trigger::Manual),
            "cron" => {
                let schedule = self.required(&f, "schedule", &what);
                let schedule =
                    schedule.and_then(|n| self.string(n, &join(path, "schedule"), "`schedule`"))?;
                let branch = f
                    .get("branch")
                    .and_then(|n| self.string(n, &join(path, "branch"), "`branch`"));
                Some(Trigger::Cron { schedule, branch })
            }
            "image_push" => {
                let repository = self.required(&f, "repository", &what);
                let repository = repository
                    .and_then(|n| self.string(n, &join(path, "repository"), "`repository`"))?;
                Some(Trigger::ImagePush {
                    repository,
                    tags: f
                        .get("tags")
                        .map(|n| self.filter(n, &join(path, "tags"), "`tags`"))
                        .unwrap_or_default(),
                    own: f
                        .get("self")
                        .and_then(|n| self.bool(n, &join(path, "self"), "`self`"))
                        .unwrap_or(false),
                })
            }
            _ => Some(Trigger::Webhook {
                events: f
                    .get("events")
                    .map(|n| self.string_list(n, &join(path, "events"), "`events`"))
                    .unwrap_or_default(),
                branch: f
                    .get("branch")
                    .map(|n| self.filter(n, &join(path, "branch"), "`branch`"))
                    .unwrap_or_default(),
                secret: f
                    .get("secret")
                    .and_then(|n| self.string(n, &join(path, "secret"), "`secret`")),
            }),
        }
    }

    fn source_spec(&mut self, node: &Node, path: &str) -> Option<SourceSpec> {
        let f = self.fields(
            node,
            path,
            "`source`",
            &["repository", "branch", "credential", "depth"],
        )?;
        let repo = self.required(&f, "repository", "`source`");
        let repository =
            repo.and_then(|n| self.string(n, &join(path, "repository"), "`repository`"))?;
        Some(SourceSpec {
            repository,
            branch: f
                .get("branch")
                .and_then(|n| self.string(n, &join(path, "branch"), "`branch`")),
            credential: f
                .get("credential")
                .and_then(|n| self.string(n, &join(path, "credential"), "`credential`")),
            depth: f
                .get("depth")
                .and_then(|n| self.count(n, &join(path, "depth"), "`depth`")),
        })
    }

    fn spec(&mut self, f: &Fields<'_>) -> PipelineSpec {
        let mut spec = PipelineSpec {
            description: f
                .get("description")
                .and_then(|n| self.string(n, "description", "`description`"))
                .unwrap_or_default(),
            ..PipelineSpec::default()
        };
        if let Some(n) = f.get("params") {
            let items = self.seq(n, "params", "`params`");
            spec.params = self.items("params", items, |d, n, p| d.param(n, p));
        }
        if let Some(n) = f.get("secrets") {
            let items = self.seq(n, "secrets", "`secrets`");
            spec.secrets = self.items("secrets", items, |d, n, p| d.name(n, p, "a secret name"));
        }
        spec.source = f.get("source").and_then(|n| self.source_spec(n, "source"));
        if let Some(n) = f.get("triggers") {
            let items = self.seq(n, "triggers", "`triggers`");
            spec.triggers = self.items("triggers", items, |d, n, p| d.trigger(n, p));
        }
        if let Some(n) = f.get("env") {
            spec.env = self.string_map(n, "env", "`env`");
        }
        spec.timeout = f
            .get("timeout")
            .and_then(|n| self.duration(n, "timeout", "the pipeline `timeout`"));
        spec.fail_fast = f
            .get("fail_fast")
            .and_then(|n| self.bool(n, "fail_fast", "`fail_fast`"))
            .unwrap_or(false);
        spec.concurrency = f
            .get("concurrency")
            .and_then(|n| self.concurrency(n, "concurrency"));
        match f.get("stages") {
            Some(n) => {
                let items = self.seq(n, "stages", "`stages`");
                spec.stages = self.items("stages", items, |d, n, p| d.stage(n, p));
            }
            None => {
                self.err(
                    "missing-field",
                    "the pipeline has no `stages`",
                    f.span,
                    Some("add `stages:` with at least one stage".into()),
                );
            }
        }
        if let Some(n) = f.get("finally") {
            spec.finally = self.steps(n, "finally", "`finally`");
        }
        spec
    }

    /// `concurrency`: `{group, cancel_in_progress}`, or a group alone.
    fn concurrency(&mut self, node: &Node, path: &str) -> Option<Concurrency> {
        if let NodeKind::Scalar { .. } = node.kind {
            let group = self.string(node, &join(path, "group"), "`concurrency`")?;
            self.mark(path, node);
            return Some(Concurrency {
                group,
                cancel_in_progress: false,
            });
        }
        let f = self.fields(
            node,
            path,
            "`concurrency`",
            &["group", "cancel_in_progress"],
        )?;
        let group = self.required(&f, "group", "`concurrency`");
        let group = group.and_then(|n| self.string(n, &join(path, "group"), "`concurrency.group`"));
        let cancel_in_progress = f
            .get("cancel_in_progress")
            .and_then(|n| {
                self.bool(
                    n,
                    &join(path, "cancel_in_progress"),
                    "`concurrency.cancel_in_progress`",
                )
            })
            .unwrap_or(false);
        Some(Concurrency {
            group: group?,
            cancel_in_progress,
        })
    }

    fn metadata(&mut self, node: &Node) -> ObjectMeta {
        let mut meta = ObjectMeta::default();
        const STORE_OWNED: [&str; 7] = [
            "uid",
            "resource_version",
            "generation",
            "created",
            "deletion_requested",
            "finalizers",
            "owners",
        ];
        self.ignored_keys(node, &STORE_OWNED);
        let mut known = vec!["name", "engine", "labels", "annotations"];
        known.extend(STORE_OWNED);
        let Some(f) = self.fields(node, "metadata", "`metadata`", &known) else {
            return meta;
        };
        self.meta_fields(&f, "metadata", &mut meta);
        meta
    }

    fn meta_fields(&mut self, f: &Fields<'_>, path: &str, meta: &mut ObjectMeta) {
        if let Some(n) = self.required(f, "name", "the pipeline") {
            meta.name = self
                .object_name(n, &join(path, "name"), "the pipeline name")
                .unwrap_or_default();
        }
        if let Some(n) = f.get("engine") {
            meta.engine = self
                .object_name(n, &join(path, "engine"), "the engine name")
                .unwrap_or_default();
        }
        if let Some(n) = f.get("labels") {
            meta.labels = self.string_map(n, &join(path, "labels"), "`labels`");
        }
        if let Some(n) = f.get("annotations") {
            meta.annotations = self.string_map(n, &join(path, "annotations"), "`annotations`");
        }
    }

    fn file(&mut self, root: &Node) -> Option<Pipeline> {
        let NodeKind::Map(entries) = &root.kind else {
            self.type_error(root, "a pipeline file", "a mapping");
            return None;
        };
        let is_resource = entries.iter().any(|(k, _)| {
            matches!(
                k.scalar_text(),
                Some("apiVersion" | "kind" | "metadata" | "spec")
            )
        });
        if is_resource {
            self.ignored_keys(root, &["status"]);
            let f = self.fields(
                root,
                "",
                "a Pipeline resource",
                &["apiVersion", "kind", "metadata", "spec", "status"],
            )?;
            if let Some(n) = self.required(&f, "apiVersion", "a Pipeline resource")
                && let Some(v) = self.string(n, "apiVersion", "`apiVersion`")
                && v != API_VERSION
            {
                self.err(
                    "bad-api-version",
                    format!("unsupported apiVersion `{v}`"),
                    n.span,
                    Some(format!("use `apiVersion: {API_VERSION}`")),
                );
            }
            if let Some(n) = self.required(&f, "kind", "a Pipeline resource")
                && let Some(v) = self.string(n, "kind", "`kind`")
                && v != "Pipeline"
            {
                self.err(
                    "bad-kind",
                    format!("a pipeline file holds a `Pipeline`, found kind `{v}`"),
                    n.span,
                    Some("use `kind: Pipeline`".into()),
                );
            }
            let metadata = match self.required(&f, "metadata", "a Pipeline resource") {
                Some(n) => self.metadata(n),
                None => ObjectMeta::default(),
            };
            let spec_node = self.required(&f, "spec", "a Pipeline resource")?;
            // Spec paths are relative to the spec in both forms, so the source map
            // is keyed the same way whichever form the file uses.
            let spec_fields = self.fields(spec_node, "", "`spec`", &SPEC_FIELDS)?;
            let spec = self.spec(&spec_fields);
            Some(Pipeline::new(metadata, spec))
        } else {
            let mut known = vec!["name", "engine", "labels", "annotations"];
            known.extend(SPEC_FIELDS);
            let f = self.fields(root, "", "a pipeline", &known)?;
            let mut meta = ObjectMeta::default();
            self.meta_fields(&f, "metadata", &mut meta);
            let spec = self.spec(&f);
            Some(Pipeline::new(meta, spec))
        }
    }
}

/// The diagnostic for a pipeline file over `max_bytes`: `size` when it is known
/// (read, or declared by an archive), `None` when a read stopped at the cap. Also
/// given by the `.arkc` reader before it decompresses such a file.
pub(crate) fn too_large(file: &str, size: Option<u64>, max_bytes: usize) -> Diagnostic {
    let size = match size {
        Some(size) => format!("{size} bytes"),
        None => "larger".to_owned(),
    };
    Diagnostic::error(
        "limit-exceeded",
        format!("the pipeline file is {size}, more than the limit of {max_bytes} bytes (`max_bytes`)"),
    )
    .with_hint(
        "split it into several pipelines; a pipeline file this large is usually generated by mistake",
    )
    .at(file, "", None)
}

/// Decodes a file: the pipeline (possibly partial when there are errors), where
/// each value came from, and the structural errors. A file over a cap of
/// `limits` gives that one diagnostic and no pipeline.
pub(crate) fn decode(
    file: &str,
    source: &str,
    limits: &Limits,
) -> (Option<Pipeline>, SourceMap, Collector) {
    let mut d = Decoder::new(file, source, limits);
    if source.len() > limits.max_bytes {
        d.diags
            .push(too_large(file, Some(source.len() as u64), limits.max_bytes));
        return (None, d.map, d.diags);
    }
    let index = Arc::new(SourceIndex::new(source));
    d.map.source = source.to_owned();
    d.map.index = Arc::clone(&index);
    let pipeline = match yaml::load(source, &index, limits) {
        Err(e) => {
            d.err(
                "yaml-syntax",
                format!("invalid YAML: {}", e.message),
                e.span,
                Some("check the indentation above this point and that every bracket and quote is closed".into()),
            );
            None
        }
        Ok(Loaded::Exceeded(ex)) => {
            let noun = ex.what.noun();
            let count = if ex.at_least {
                format!("at least {}", ex.count)
            } else {
                ex.count.to_string()
            };
            d.err(
                "limit-exceeded",
                format!(
                    "the pipeline has {count} {noun}, more than the limit of {} (`{}`)",
                    ex.limit,
                    ex.what.field()
                ),
                ex.span,
                Some(format!(
                    "this is the first one over the limit; {}",
                    ex.what.hint()
                )),
            );
            None
        }
        Ok(Loaded::Tree(None)) => {
            let span = Span {
                start: 0,
                end: 0,
                line: 1,
                column: 1,
            };
            d.err(
                "empty-file",
                "the pipeline file is empty",
                span,
                Some("start with `name:` and `stages:`".into()),
            );
            None
        }
        Ok(Loaded::Tree(Some(root))) => d.file(&root),
    };
    (pipeline, d.map, d.diags)
}
